# The "runnable tasks" table of the scheduler debug file names all four time columns it
# prints, including sum-block.
f=/sys/kernel/debug/sched/debug
[ -r "$f" ] || { echo "no $f"; exit 2; }
header=$(grep -A1 '^runnable tasks:' "$f" | sed -n 2p)
echo "header: [$header]"
case "$header" in
*wait-time*sum-exec*sum-sleep*sum-block) echo ok ;;
*) echo "the header does not name the sum-block column"; exit 1 ;;
esac
