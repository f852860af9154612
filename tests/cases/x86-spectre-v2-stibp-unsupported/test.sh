# /sys/devices/system/cpu/vulnerabilities/spectre_v2 says nothing about STIBP on a CPU
# without STIBP (as it already does for IBPB). The lab's emulated CPU has neither.
f=/sys/devices/system/cpu/vulnerabilities/spectre_v2
v=$(cat "$f")
echo "spectre_v2: $v"
if grep -m1 '^flags' /proc/cpuinfo | grep -qw stibp; then
	echo "this CPU has STIBP, cannot check"; exit 2
fi
case "$v" in
Mitigation:*) ;;
*) echo "unexpected spectre_v2 state"; exit 2 ;;
esac
case "$v" in
*STIBP*) echo "STIBP state reported on a CPU without STIBP"; exit 1 ;;
esac
echo ok
