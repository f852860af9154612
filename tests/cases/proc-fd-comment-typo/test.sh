# The fix only corrects a comment: /proc/<pid>/fdinfo behaves exactly as before.
info=$(cat /proc/self/fdinfo/0)
echo "$info"
echo "$info" | grep -q '^pos:' && echo "$info" | grep -q '^flags:' || { echo "fdinfo is broken"; exit 1; }
echo ok
