# /proc/sysrq-trigger: a write starting with '_' runs every following character as a
# sysrq command. Two loglevel commands in one write must both run (the last one wins).
p=/proc/sys/kernel/printk
orig=$(cat "$p")
echo 6 > "$p"
printf '_54' > /proc/sysrq-trigger
level=$(awk '{print $1}' "$p")
echo "$orig" > "$p"
echo "console loglevel after writing '_54': $level (restored: $(cat "$p"))"
[ "$level" = 4 ] || { echo "the bulk sysrq write did not run both commands"; exit 1; }
echo ok
