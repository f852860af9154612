# copy_process is redirected and processes are still created.
ls -d /sys/kernel/livepatch/*/vmlinux/copy_process,* >/dev/null 2>&1 || exit 1
sh -c 'exit 7'; [ $? = 7 ]
