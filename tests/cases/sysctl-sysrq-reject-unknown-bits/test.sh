# kernel.sysrq accepts 0, 1 or a mask of the known SYSRQ_ENABLE_* bits (up to 0x1ff);
# values with unknown bits or negative values are refused and leave the setting alone.
f=/proc/sys/kernel/sysrq
orig=$(cat "$f")
echo 4096 > "$f" 2>/dev/null
big=$?
after_big=$(cat "$f")
echo -1 > "$f" 2>/dev/null
neg=$?
after_neg=$(cat "$f")
echo 176 > "$f"
mask=$?
after_mask=$(cat "$f")
echo "$orig" > "$f"
echo "start $orig; 4096: status $big -> $after_big; -1: status $neg -> $after_neg; 176: status $mask -> $after_mask; restored $(cat "$f")"
[ "$mask" = 0 ] && [ "$after_mask" = 176 ] || { echo "a valid mask was refused"; exit 1; }
[ "$big" != 0 ] && [ "$after_big" = "$orig" ] || { echo "a value with unknown bits was accepted"; exit 1; }
[ "$neg" != 0 ] && [ "$after_neg" = "$orig" ] || { echo "a negative value was accepted"; exit 1; }
echo ok
