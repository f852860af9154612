# The stats file shows the string of the new vmlinux function, and the patched pr_debug works
# under dynamic debug.
grep -q kpatch /sys/fs/xfs/stats/stats || exit 1
echo 'file fs/xfs/xfs_stats.c +p' > /sys/kernel/debug/dynamic_debug/control || exit 1
cat /sys/fs/xfs/stats/stats > /dev/null
dmesg | grep -q 'kpatch: pr_debug() test'
