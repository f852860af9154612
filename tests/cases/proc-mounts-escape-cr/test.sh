# A mount source containing a carriage return is escaped as \015 in /proc/mounts and
# /proc/self/mountinfo (like space, tab, newline, backslash and '#').
dir=/tmp/escape-cr-mnt
mkdir -p "$dir"
umount "$dir" 2>/dev/null
mount -t tmpfs "$(printf 'cr\rsource')" "$dir" || { echo "mount failed"; exit 2; }
mounts=$(grep " $dir " /proc/mounts)
info=$(grep " $dir " /proc/self/mountinfo)
umount "$dir"
echo "/proc/mounts line:"
printf '%s\n' "$mounts" | od -c | head -n 3
echo "mountinfo line:"
printf '%s\n' "$info" | od -c | tail -n 4
case "$mounts" in
'cr\015source '*) ;;
*) echo "/proc/mounts does not escape the carriage return"; exit 1 ;;
esac
case "$info" in
*' cr\015source '*) ;;
*) echo "/proc/self/mountinfo does not escape the carriage return"; exit 1 ;;
esac
echo ok
