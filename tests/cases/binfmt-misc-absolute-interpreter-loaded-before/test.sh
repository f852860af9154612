# binfmt_misc refuses to register a handler whose interpreter is not an absolute path;
# absolute paths keep working.
bm=/proc/sys/fs/binfmt_misc
grep -q '^binfmt_misc ' /proc/modules || { echo "binfmt_misc is not loaded"; exit 2; }
[ -e "$bm/register" ] || mount -t binfmt_misc none "$bm" || { echo "cannot mount binfmt_misc"; exit 2; }
for n in graft-rel graft-abs; do [ -e "$bm/$n" ] && echo -1 > "$bm/$n"; done

echo ':graft-rel:E::graftrel::relative/interp:' > "$bm/register" 2>/dev/null
rel=$?
echo ':graft-abs:E::graftabs::/bin/sh:' > "$bm/register"
abs=$?
echo "register relative interpreter: status $rel; absolute: status $abs"
[ -e "$bm/graft-abs" ] && cat "$bm/graft-abs"
for n in graft-rel graft-abs; do [ -e "$bm/$n" ] && echo -1 > "$bm/$n"; done

[ "$abs" = 0 ] || { echo "an absolute interpreter was refused"; exit 1; }
[ "$rel" != 0 ] || { echo "a relative interpreter was accepted"; exit 1; }
echo ok
