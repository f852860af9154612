# cgroup v1 memory.soft_limit_in_bytes: writing it logs a deprecation warning, once per boot.
dir=/tmp/memcg-v1
msg='soft_limit_in_bytes is deprecated and will be removed'
mkdir -p "$dir"
grep -q " $dir cgroup " /proc/mounts || mount -t cgroup -o memory none "$dir" || { echo "cannot mount the v1 memory controller"; exit 2; }
mkdir -p "$dir/grp"
for v in 64M 128M 32M; do
	echo "$v" > "$dir/grp/memory.soft_limit_in_bytes" || { echo "write of $v failed"; exit 2; }
done
limit=$(cat "$dir/grp/memory.soft_limit_in_bytes")
rmdir "$dir/grp"
umount "$dir"
n=$(dmesg | grep -c "$msg")
echo "soft limit read back: $limit; deprecation warnings in the log: $n"
[ "$limit" = $((32 * 1024 * 1024)) ] || { echo "the soft limit was not applied"; exit 1; }
[ "$n" = 1 ] || { echo "expected exactly one deprecation warning"; exit 1; }
echo ok
