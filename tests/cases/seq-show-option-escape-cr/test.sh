# Mount option values shown through seq_show_option() escape carriage returns as \015.
# Checked on a cgroup v1 hierarchy (release_agent, vmlinux) and on an overlay mount
# (lowerdir, overlay module, loaded before the fix is applied).
grep -q '^overlay ' /proc/modules || { echo "overlay is not loaded"; exit 2; }
status=0

dir=/tmp/cgroup-v1-named
mkdir -p "$dir"
grep -q " $dir cgroup " /proc/mounts || mount -t cgroup -o none,name=graftesc cgroup "$dir" || { echo "cannot mount a named cgroup v1 hierarchy"; exit 2; }
printf '/sbin/agent\rx' > "$dir/release_agent" || { echo "cannot set release_agent"; exit 2; }
line=$(grep " $dir cgroup " /proc/mounts)
echo "" > "$dir/release_agent"
umount "$dir"
echo "cgroup line:"
printf '%s\n' "$line" | od -c | tail -n 4
case "$line" in
*',release_agent=/sbin/agent\015x,'* | *',release_agent=/sbin/agent\015x '*) ;;
*) echo "the carriage return in release_agent is not escaped"; status=1 ;;
esac

base=/tmp/ovl-escape
lower="$base/low$(printf '\r')er"
mkdir -p "$lower" "$base/upper" "$base/work" "$base/mnt"
grep -q " $base/mnt overlay " /proc/mounts && umount "$base/mnt"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$base/upper,workdir=$base/work" "$base/mnt" || { echo "cannot mount overlay"; exit 2; }
line=$(grep " $base/mnt overlay " /proc/mounts)
umount "$base/mnt"
echo "overlay line:"
printf '%s\n' "$line" | od -c | head -n 5
case "$line" in
*",lowerdir=$base/low\\015er,"*) ;;
*) echo "the carriage return in lowerdir is not escaped"; status=1 ;;
esac

[ "$status" = 0 ] && echo ok
exit "$status"
