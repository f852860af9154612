# Writing "name\n" (as echo does) to /proc/<pid>/comm sets the name without the newline.
got=$(sh -c 'echo comm-test > /proc/$$/comm && od -An -c /proc/$$/comm; :')
echo "comm bytes:$got"
want=$(printf 'comm-test\n' | od -An -c)
[ "$got" = "$want" ] || { echo "the newline written by echo ended up in the task name"; exit 1; }
echo ok
