# /proc/kallsyms is readable by root only (mode 0400). The mode is set once at boot, by an
# __init function, so a live patch cannot change it.
mode=$(stat -c %a /proc/kallsyms)
echo "/proc/kallsyms mode: $mode"
[ "$mode" = 400 ] || { echo "expected mode 400"; exit 1; }
echo ok
