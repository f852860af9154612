# /proc/<pid>/status carries a "Kthread:" line: 0 for a user process, 1 for a kernel thread.
self=$(grep '^Kthread:' /proc/self/status)
kthreadd=$(grep '^Kthread:' /proc/2/status)
echo "self:     [$self]"
echo "kthreadd: [$kthreadd] ($(grep '^Name:' /proc/2/status))"
[ "$self" = "$(printf 'Kthread:\t0')" ] || { echo "no Kthread: 0 line for a user process"; exit 1; }
[ "$kthreadd" = "$(printf 'Kthread:\t1')" ] || { echo "no Kthread: 1 line for kthreadd"; exit 1; }
echo ok
