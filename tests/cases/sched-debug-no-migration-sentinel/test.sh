# /proc/<pid>/sched: with schedstats on, a task that never migrated reports avg_per_cpu as -1
# (not as the misleading 0.000001); with schedstats off the line is absent. The block is
# guarded by a static key (sched_schedstats) that this script flips at run time.
sw=/proc/sys/kernel/sched_schedstats
old=$(cat "$sw")
restore() { echo "$old" > "$sw"; }

# A child of a shell pinned to CPU 0 starts on CPU 0 and never migrates.
read_sched() { taskset 1 sh -c 'cat /proc/self/sched; :'; }

echo 0 > "$sw"
off=$(read_sched)
echo 1 > "$sw"
on=$(read_sched)
restore

migr=$(echo "$on" | grep '^se.nr_migrations ' | awk '{print $NF}')
line=$(echo "$on" | grep '^avg_per_cpu ')
echo "schedstats on:  nr_migrations=$migr, [$line]"
echo "schedstats off: [$(echo "$off" | grep '^avg_per_cpu ')]"
[ "$migr" = 0 ] || { echo "the reader migrated ($migr), cannot check"; exit 2; }
echo "$off" | grep -q '^avg_per_cpu ' && { echo "avg_per_cpu shown with schedstats off"; exit 1; }
[ "$(echo "$line" | awk '{print $NF}')" = -1 ] || { echo "avg_per_cpu is not -1 for a task that never migrated"; exit 1; }
echo ok
