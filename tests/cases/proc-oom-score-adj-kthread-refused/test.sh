# oom_score_adj (and oom_adj) of a kernel thread cannot be set; user processes still can.
before=$(cat /proc/2/oom_score_adj)
echo 100 > /proc/2/oom_score_adj 2>/dev/null
kt=$?
echo 0 > /proc/2/oom_adj 2>/dev/null
ktl=$?
after=$(cat /proc/2/oom_score_adj)
echo 0 > /proc/2/oom_score_adj 2>/dev/null
sh -c 'echo 123 > /proc/$$/oom_score_adj && cat /proc/$$/oom_score_adj' > /tmp/oom-self
self=$(cat /tmp/oom-self)
echo "kthreadd ($(cat /proc/2/comm)): write status $kt (oom_adj: $ktl), value $before -> $after; user process: $self"
[ "$self" = 123 ] || { echo "a user process cannot set its oom_score_adj"; exit 1; }
[ "$kt" != 0 ] && [ "$ktl" != 0 ] || { echo "a kernel thread's OOM score was accepted"; exit 1; }
[ "$after" = "$before" ] || { echo "the kernel thread's oom_score_adj changed"; exit 1; }
echo ok
