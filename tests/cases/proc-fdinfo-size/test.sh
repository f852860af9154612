# /proc/<pid>/fdinfo/<fd> reports the size of the open file.
f=/tmp/fdinfo-size-file
head -c 12345 /dev/zero > "$f"
exec 3< "$f"
info=$(cat /proc/self/fdinfo/3)
exec 3<&-
rm -f "$f"
echo "$info"
echo "$info" | grep -qx "$(printf 'size:\t12345')" || { echo "no size: 12345 line"; exit 1; }
echo "$info" | grep -q '^ino:' || { echo "the ino: line is gone"; exit 1; }
echo ok
