# Each object's callbacks ran: vmlinux and joydev when the patch was applied, pcspkr when it
# loaded afterwards (still coming).
log=$(dmesg)
for line in 'pre_patch_callback: vmlinux' 'post_patch_callback: vmlinux' \
	'pre_patch_callback: joydev -> [MODULE_STATE_LIVE]' 'post_patch_callback: joydev -> [MODULE_STATE_LIVE]' \
	'pre_patch_callback: pcspkr -> [MODULE_STATE_COMING]' 'post_patch_callback: pcspkr -> [MODULE_STATE_COMING]'; do
	echo "$log" | grep -qF "$line" || { echo "missing: $line"; exit 1; }
done
