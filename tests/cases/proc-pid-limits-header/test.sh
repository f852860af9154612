# /proc/<pid>/limits: the header line must end with the last column name, not with blanks.
header=$(head -n 1 /proc/self/limits)
echo "header: [$header]"
case "$header" in
*" ") echo "the header ends with blanks"; exit 1 ;;
*Units) echo "ok" ;;
*) echo "unexpected header"; exit 1 ;;
esac
