uname -s | grep -q kpatch
