# kernel.bpf_stats_enabled: every change of the setting is logged. The handler keeps the
# current setting in a static local variable; the value an earlier run of this script left
# (enabled) must still be reported, and the static key must stay balanced.
f=/proc/sys/kernel/bpf_stats_enabled
mark=/tmp/bpf-stats-left-enabled
count() { dmesg | grep -c "bpf: run-time statistics $1 by "; }

v0=$(cat "$f")
echo "value at start: $v0"
if [ -e "$mark" ] && [ "$v0" != 1 ]; then
	echo "an earlier run left the statistics enabled, but the sysctl now reads $v0"
	exit 1
fi

on0=$(count enabled)
off0=$(count disabled)
echo 0 > "$f" || { echo "write of 0 failed"; exit 2; }
v1=$(cat "$f")
echo 1 > "$f" || { echo "write of 1 failed"; exit 2; }
v2=$(cat "$f")
touch "$mark"
on1=$(count enabled)
off1=$(count disabled)
echo "after writing 0: $v1, after writing 1: $v2"
echo "enabled lines: $on0 -> $on1, disabled lines: $off0 -> $off1"
[ "$v1" = 0 ] && [ "$v2" = 1 ] || { echo "the sysctl does not read back what was written"; exit 1; }
[ "$on1" = $((on0 + 1)) ] || { echo "enabling was not logged exactly once"; exit 1; }
if [ "$v0" = 1 ] && [ "$off1" != $((off0 + 1)) ]; then
	echo "disabling was not logged exactly once"
	exit 1
fi
echo ok
