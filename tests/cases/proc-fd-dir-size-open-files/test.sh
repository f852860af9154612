# stat() on /proc/<pid>/fd reports the number of open descriptors as the size. The fix
# adds a getattr operation to the existing proc_fd_inode_operations table, which a live
# patch cannot change.
exec 5< /proc/version 6< /proc/version
size=$(stat -c %s /proc/self/fd)
count=$(ls /proc/self/fd | wc -l)
exec 5<&- 6<&-
echo "size of /proc/self/fd: $size, entries seen by ls: $count"
[ "$size" -gt 2 ] || { echo "the size does not count the open descriptors"; exit 1; }
echo ok
