# The new line shows the new variable's initial value.
grep -q '^kpatch: *5$' /proc/meminfo
