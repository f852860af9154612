# Writes to the deprecated /proc/<pid>/oom_adj are reported for the first 5 writes of the
# boot (a new counter initialised to 5), instead of only once.
msg='oom_adj is deprecated and will be removed'
for i in 1 2 3 4 5 6 7; do
	echo 0 > /proc/self/oom_adj || { echo "write $i failed"; exit 2; }
done
n=$(dmesg | grep -c "$msg")
echo "warnings: $n"
dmesg | grep 'oom_adj is deprecated' | tail -n 2
[ "$n" = 5 ] || { echo "expected exactly 5 warnings after 7 writes"; exit 1; }
echo ok
