#!/bin/bash
# Build okvm.ko for the L1 kernel: the Linux host glue (okvm_glue.c) linked with the given
# okvm.o, against Debian's linux-headers of that kernel (extracted by fetch.sh, never installed).
# usage: build.sh OKVM_O   - prints the path of okvm.ko as its last line; cached by input hash.
. "$(dirname "$0")/../lib.sh"
OBJ=${1:?usage: build.sh path/to/okvm.o}
[ -f "$OBJ" ] || die "$OBJ does not exist"
. "$CACHE/packages.env"
GLUE=$NESTED_DIR/linux_glue
HDR=${OKVM_H:-$NESTED_DIR/../../kernel/include/okvm.h}
[ -f "$HDR" ] || die "kernel/include/okvm.h is missing"
command -v gcc-12 >/dev/null || die "gcc-12 is needed (the compiler Debian's 6.1 kernel was built with)"

# Debian's per-flavour Makefile includes the common one by its installed absolute path;
# point it at the extracted tree instead.
ROOT=${KHEADERS%/usr/src/*}
sed -i "s|^include /usr/src/|include $ROOT/usr/src/|" "$KHEADERS/Makefile"

key=$(hash_inputs "$GLUE/build.sh" "$GLUE/okvm_glue.c" "$GLUE/Kbuild" "$GLUE/compat/stddef.h" "$GLUE/compat/stdint.h" "$HDR" "$OBJ" "$KVER" glue-v1)
OUT=$CACHE/glue-$key
if [ ! -f "$OUT/.done" ]; then
	log "building okvm.ko ($key) against $KVER"
	rm -rf "$OUT" && mkdir -p "$OUT"
	cp -r "$GLUE/okvm_glue.c" "$GLUE/Kbuild" "$GLUE/compat" "$HDR" "$OUT/"
	# The prebuilt object: drop the stack-size records (the lint's input; a non-allocated
	# section modpost warns about) and give kbuild the .cmd file it keeps for every object
	# (modpost reads it; kbuild would otherwise want to rebuild the object from sources).
	objcopy --remove-section=.stack_sizes "$OBJ" "$OUT/okvm_core.o"
	echo "cmd_$OUT/okvm_core.o := objcopy --remove-section=.stack_sizes $OBJ" > "$OUT/.okvm_core.o.cmd"
	make -s -C "$KHEADERS" M="$OUT" modules >&2
	[ -f "$OUT/okvm.ko" ] || die "no okvm.ko"
	touch "$OUT/.done"
fi
touch "$OUT/.used"
echo "$OUT/okvm.ko"
