# zram's comp_algorithm lists the compressors without a blank before the newline.
# The zram module is loaded by the test harness after the fix is applied; this script
# must not load it itself.
f=/sys/block/zram0/comp_algorithm
[ -e "$f" ] || { echo "zram is not loaded (no $f)"; exit 2; }
echo "comp_algorithm:"
od -c "$f" | tail -n 3
case "$(cat "$f")" in
*'['*']'*) ;;
*) echo "no selected compressor in the list"; exit 1 ;;
esac
case "$(cat "$f")" in
*" ") echo "the list ends with a blank"; exit 1 ;;
esac
echo ok
