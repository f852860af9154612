# vm.max_map_count defaults to 1048576. Only the initial value of an existing variable
# changes, which a live patch cannot apply to the running kernel.
v=$(cat /proc/sys/vm/max_map_count)
echo "vm.max_map_count: $v"
[ "$v" = 1048576 ] || { echo "expected 1048576"; exit 1; }
echo ok
