# The livepatch core redirects the function (its message only prints when jiffies is 0).
ls -d /sys/kernel/livepatch/*/vmlinux/__nf_ip6_route,* >/dev/null 2>&1
