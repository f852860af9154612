# A process started after the patch has a shadow pid.
sh -c 'grep -q "^newpid:" /proc/self/status'
