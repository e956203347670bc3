#!/bin/bash
# Build the nested-test images from the packages fetch.sh extracted, reusing every output
# whose inputs did not change (outputs live in $CACHE/<kind>-<hash of inputs>/):
#   progs-*/    kvmsuite, l2init (static, gcc)
#   l2-*/       L2 initramfs (l2init as /init, virtio modules)
#   base-*/     L1 base initramfs: busybox, kvm modules, QEMU 7.2 (host package) at /usr/bin and
#               QEMU 10.0 (bookworm-backports) at /qemu10/bin sharing the same bookworm
#               libraries, each with its own firmware dir, L2 kernel + initramfs
#   extra-*/    small second archive: /init, kvmsuite, okvm.ko (when given) - changes often
#   l1-*/       l1.cpio = base + extra (the kernel unpacks concatenated archives in turn)
#   iso-*/      GRUB BIOS ISO of the L1 kernel and l1.cpio (for Bochs), only with "iso"
# usage: build.sh [iso] ; env OKVM_KO=path/to/okvm.ko adds the okvm module.
# Writes $CACHE/images.env (L1_KERNEL, L1_INITRD, SUITE, [L1_ISO]).
. "$(dirname "$0")/lib.sh"
[ -f "$CACHE/packages.env" ] || die "run fetch.sh first"
. "$CACHE/packages.env"
WANT_ISO=0
[ "${1:-}" = iso ] && WANT_ISO=1

# stage KIND KEY: sets OUT=$CACHE/KIND-KEY; returns 0 when it must be (re)built.
stage() {
	OUT=$CACHE/$1-$2
	if [ -f "$OUT/.done" ]; then touch "$OUT/.used"; return 1; fi
	rm -rf "$OUT" && mkdir -p "$OUT"
	log "building $1 ($2)"
	return 0
}
done_stage() { touch "$OUT/.done" "$OUT/.used"; }

# Outputs not used for 3 days go (each L1 image is ~100 MB).
for d in "$CACHE"/{progs,l2,base,extra,l1,iso,glue}-*; do
	[ -d "$d" ] && [ -n "$(find "$d" -maxdepth 1 -name .used -mtime +3)" ] && rm -rf "$d"
done

tool_version() { dpkg-query -W -f '${Package}=${Version}' "$1" 2>/dev/null || echo "$1=missing"; }

# ---- test programs
P=$NESTED_DIR/progs
key=$(hash_inputs "$P/kvmsuite.c" "$P/guest.S" "$P/l2init.c" "$(gcc --version | head -1)" \
	"$(tool_version libc6-dev)" "$(tool_version linux-libc-dev)")
if stage progs "$key"; then
	gcc -static -O2 -Wall -Wextra -Werror -o "$OUT/kvmsuite" "$P/kvmsuite.c" "$P/guest.S" -lpthread
	gcc -static -O2 -Wall -Wextra -Werror -o "$OUT/l2init" "$P/l2init.c"
	done_stage
fi
PROGS=$OUT

# ---- L2 initramfs (the L2 kernel is the L1's). l2init loads the modules listed in
# /modules/order, in that order, when the L2 command line asks for virtio; the virtio core,
# virtio-pci, virtio-rng and virtio-blk are modules in Debian's 6.1 config (rng-core is built in).
KMOD=$KIMG/lib/modules/$KVER/kernel
L2_MODS="drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_pci_legacy_dev.ko
	drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko drivers/char/hw_random/virtio-rng.ko
	drivers/block/virtio_blk.ko"
key=$(hash_inputs "$PROGS/l2init" l2-v2 "$KVER $KSRCVER" "$L2_MODS")
if stage l2 "$key"; then
	R=$OUT/root
	mkdir -p "$R/dev" "$R/proc" "$R/modules"
	cp "$PROGS/l2init" "$R/init"
	mknod "$R/dev/console" c 5 1
	for m in $L2_MODS; do
		cp "$KMOD/$m" "$R/modules/"
		basename "$m" >> "$R/modules/order"
	done
	mkcpio "$R" "$OUT/initrd.cpio"
	rm -rf "$R"
	done_stage
fi
L2=$OUT

# copy_with_libs ROOT BIN DEST: copy BIN to ROOT/DEST and every library ldd resolves for it
# to the same path under ROOT (kept when already there with the same content).
copy_with_libs() {
	local root=$1 bin=$2 dest=$3 lib
	mkdir -p "$root$(dirname "$dest")"
	cp "$bin" "$root$dest"
	if ldd "$bin" | grep -q 'not found'; then
		ldd "$bin" | grep 'not found' >&2
		die "$bin needs libraries that are not installed on this host"
	fi
	for lib in $(ldd "$bin" | grep -oE '/[^ ]+\.so[^ ]*'); do
		if [ -e "$root$lib" ]; then
			cmp -s "$lib" "$root$lib" || die "library clash at $lib"
			continue
		fi
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

# ---- L1 base initramfs (large, rarely changes)
MODS="virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko arch/x86/kvm/kvm-intel.ko drivers/crypto/ccp/ccp.ko"
Q72=/usr/bin/qemu-system-x86_64
Q72_FW="/usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin /usr/share/qemu/multiboot_dma.bin"
key=$(hash_inputs "$NESTED_DIR/build.sh" base-v1 "$KVER $KSRCVER" "$Q10VER" "$(tool_version qemu-system-x86)" \
	"$(tool_version busybox-static)" "$(tool_version seabios)" "$(tool_version libc6)" "$L2")
if stage base "$key"; then
	R=$OUT/root
	mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,modules,l2}
	cp /bin/busybox "$R/bin/busybox"
	mknod "$R/dev/console" c 5 1
	mknod "$R/dev/null" c 1 3
	for m in $MODS; do cp "$KMOD/$m" "$R/modules/"; done
	cp "$KIMG/boot/vmlinuz-$KVER" "$R/l2/vmlinuz"
	cp "$L2/initrd.cpio" "$R/l2/initrd.cpio"
	# QEMU 7.2: Debian's firmware path is /usr/share/qemu:/usr/share/seabios.
	copy_with_libs "$R" "$Q72" /usr/bin/qemu-system-x86_64
	for f in $Q72_FW; do mkdir -p "$R$(dirname "$f")" && cp -L "$f" "$R$f"; done
	# QEMU 10.0: built for bookworm, so it runs on the same libraries (copy_with_libs checks
	# that they are identical); its firmware goes to /qemu10/share, passed with -L, which
	# QEMU searches before its built-in path.
	copy_with_libs "$R" "$Q10/usr/bin/qemu-system-x86_64" /qemu10/bin/qemu-system-x86_64
	mkdir -p "$R/qemu10/share"
	cp -L "$SEABIOS10/usr/share/seabios/bios-256k.bin" "$R/qemu10/share/"
	for f in linuxboot_dma.bin kvmvapic.bin multiboot_dma.bin; do
		cp -L "$Q10DATA/usr/share/qemu/$f" "$R/qemu10/share/"
	done
	mkcpio "$R" "$OUT/base.cpio"
	{ du -sm "$R"; du -sm "$R/qemu10"; } | awk '{ printf "%s MiB %s\n", $1, $2 }' > "$OUT/sizes.txt"
	rm -rf "$R"
	done_stage
fi
BASE=$OUT

# ---- small archive: init, suite, okvm.ko
OKVM_KO=${OKVM_KO:-}
[ -z "$OKVM_KO" ] || [ -f "$OKVM_KO" ] || die "OKVM_KO=$OKVM_KO does not exist"
key=$(hash_inputs "$NESTED_DIR/l1/init.sh" "$PROGS/kvmsuite" extra-v1 ${OKVM_KO:+"$OKVM_KO"})
if stage extra "$key"; then
	R=$OUT/root
	mkdir -p "$R/bin" "$R/modules"
	install -m 755 "$NESTED_DIR/l1/init.sh" "$R/init"
	cp "$PROGS/kvmsuite" "$R/bin/kvmsuite"
	[ -z "$OKVM_KO" ] || cp "$OKVM_KO" "$R/modules/okvm.ko"
	mkcpio "$R" "$OUT/extra.cpio"
	rm -rf "$R"
	done_stage
fi
EXTRA=$OUT

key=$(hash_inputs "$BASE" "$EXTRA")
if stage l1 "$key"; then
	cat "$BASE/base.cpio" "$EXTRA/extra.cpio" > "$OUT/l1.cpio"
	cp "$KIMG/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
	done_stage
fi
L1=$OUT

{
	echo "L1_KERNEL=$L1/vmlinuz"
	echo "L1_INITRD=$L1/l1.cpio"
	echo "SUITE=$PROGS/kvmsuite"
	echo "KVER=$KVER"
} > "$CACHE/images.env.tmp"

# ---- GRUB ISO for Bochs: GRUB passes the kernel command line, so there is one ISO per
# command line (OKVM_CMDLINE, from the harness); each costs about a second to build.
if [ $WANT_ISO = 1 ]; then
	CMDLINE=${OKVM_CMDLINE:?OKVM_CMDLINE must be set for the ISO}
	key=$(hash_inputs "$L1" "$CMDLINE" iso-v1)
	if stage iso "$key"; then
		D=$OUT/root
		mkdir -p "$D/boot/grub"
		cp "$L1/vmlinuz" "$D/boot/vmlinuz"
		cp "$BASE/base.cpio" "$D/boot/base.cpio"
		cp "$EXTRA/extra.cpio" "$D/boot/extra.cpio"
		cat > "$D/boot/grub/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "okvm L1" {
	echo "GRUB: loading"
	linux /boot/vmlinuz $CMDLINE
	initrd /boot/base.cpio /boot/extra.cpio
	echo "GRUB: booting"
}
CFG
		grub-mkrescue -o "$OUT/l1.iso" "$D" > "$OUT/grub-mkrescue.log" 2>&1 ||
			{ cat "$OUT/grub-mkrescue.log" >&2; die "grub-mkrescue failed"; }
		rm -rf "$D"
		done_stage
	fi
	echo "L1_ISO=$OUT/l1.iso" >> "$CACHE/images.env.tmp"
fi
mv "$CACHE/images.env.tmp" "$CACHE/images.env"
