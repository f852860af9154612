# meminfo_proc_show is redirected and calls the new function without harm.
ls -d /sys/kernel/livepatch/*/vmlinux/meminfo_proc_show,* >/dev/null 2>&1 || exit 1
grep -q '^MemTotal:' /proc/meminfo
