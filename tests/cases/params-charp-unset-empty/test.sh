# An unset string (charp) module parameter reads as an empty line, not "(null)".
# param_get_charp() is exported and shared by every charp parameter.
f=/sys/module/pstore/parameters/backend
[ -r "$f" ] || { echo "no $f"; exit 2; }
v=$(cat "$f")
echo "pstore.backend: [$v]"
[ "$v" = "" ] || { echo "an unset charp parameter does not read as empty"; exit 1; }
n=$(grep -l '^(null)$' /sys/module/*/parameters/* 2>/dev/null | wc -l)
echo "parameters reading (null): $n"
[ "$n" = 0 ] || exit 1
echo ok
