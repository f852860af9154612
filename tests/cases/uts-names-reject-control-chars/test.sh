# Host names with control characters are refused, both through sethostname() (busybox
# hostname) and through /proc/sys/kernel/hostname; ordinary names still work.
orig=$(hostname)
bad=$(printf 'bad\rname')

hostname "$bad" 2>/dev/null
sys=$?
after_sys=$(hostname)
hostname "$orig"
printf '%s' "$bad" > /proc/sys/kernel/hostname 2>/dev/null
proc=$?
after_proc=$(cat /proc/sys/kernel/hostname)
hostname "$orig"
hostname graft-good-name
good=$(hostname)
hostname "$orig"

echo "sethostname: status $sys, name now $(printf '%s' "$after_sys" | od -An -c | tr -s ' ')"
echo "sysctl write: status $proc, name now $(printf '%s' "$after_proc" | od -An -c | tr -s ' ')"
echo "ordinary name: $good; restored: $(hostname)"
[ "$good" = graft-good-name ] || { echo "an ordinary host name was not set"; exit 1; }
[ "$sys" != 0 ] && [ "$after_sys" = "$orig" ] || { echo "sethostname accepted a control character"; exit 1; }
[ "$proc" != 0 ] && [ "$after_proc" = "$orig" ] || { echo "the hostname sysctl accepted a control character"; exit 1; }
echo ok
