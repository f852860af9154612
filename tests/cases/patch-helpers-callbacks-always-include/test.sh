# The post-patch callback ran, and the unchanged function is replaced all the same.
set -e
dmesg | grep -q 'cmdline-fix: live, cmdline_proc_show replaced' || { echo "post-patch callback did not run"; exit 1; }
ls -d /sys/kernel/livepatch/*/vmlinux/cmdline_proc_show,* || { echo "cmdline_proc_show is not replaced"; exit 1; }
grep -q rdinit /proc/cmdline
