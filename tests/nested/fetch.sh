#!/bin/bash
# Resolve and download the Debian packages the nested images are made of, extract them
# under $CACHE/x/<package>_<version>/, and write $CACHE/packages.env naming what was used:
#   kernel 6.1 image (L1 and L2 kernel, kvm modules), its headers + kbuild (Linux host glue),
#   QEMU 10.0 + its firmware data + SeaBIOS 1.16.3 from bookworm-backports (second L1 QEMU).
# The apt lists are refreshed at most once a day (OKVM_NESTED_REFRESH=1 forces it), so a
# re-run resolves the same versions and downloads nothing.
. "$(dirname "$0")/lib.sh"

mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$CACHE/debs" "$CACHE/x"
[ -f "$APT_DIR/status" ] || : > "$APT_DIR/status"
KEY=/usr/share/keyrings/debian-archive-keyring.gpg
# The archives the system's apt already uses (no host is named here); backports comes from
# the same archive as bookworm.
ARCHIVE="$(dirname "$0")/../debian-archive.sh"
{
	for suite in bookworm bookworm-updates bookworm-security bookworm-backports; do
		echo "deb [signed-by=$KEY] $("$ARCHIVE" "$suite") $suite main"
	done
} > "$APT_DIR/sources.list.new"
changed=0
cmp -s "$APT_DIR/sources.list.new" "$APT_DIR/sources.list" || { mv "$APT_DIR/sources.list.new" "$APT_DIR/sources.list"; changed=1; }
stamp=$APT_DIR/lists/.updated
if [ $changed = 1 ] || [ "${OKVM_NESTED_REFRESH:-0}" = 1 ] || [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
	log "apt-get update (private lists)"
	apt-get "${APT_OPTS[@]}" -qq update
	touch "$stamp"
fi

# Nothing to do when the lists did not change since packages.env was written and everything it
# names is still extracted (resolving through apt-cache costs seconds per call).
if [ -f "$CACHE/packages.env" ] && [ "$CACHE/packages.env" -nt "$stamp" ] && [ "$CACHE/packages.env" -nt "$0" ]; then
	ok=1
	for d in $(grep -E '^(KIMG|Q10|Q10DATA|SEABIOS10)=' "$CACHE/packages.env" | cut -d= -f2); do
		[ -f "$d/.done" ] || ok=0
	done
	kh=$(grep '^KHEADERS=' "$CACHE/packages.env" | cut -d= -f2)
	[ -f "${kh%/usr/src/*}/.done" ] || ok=0
	[ $ok = 1 ] && exit 0
fi

# candidate VERSION of PKG (optionally from RELEASE) in the private lists.
candidate() {
	local pkg=$1 rel=${2:-}
	if [ -n "$rel" ]; then
		apt-cache "${APT_OPTS[@]}" policy "$pkg" | awk -v r="$rel" '
			/^     [^ ]/ || /^ \*\*\* / { v = ($1 == "***") ? $2 : $1 }
			$0 ~ " " r "/" && v != "" { print v; exit }'
	else
		apt-cache "${APT_OPTS[@]}" policy "$pkg" | awk '/Candidate:/ { print $2; exit }'
	fi
}

# download PKG VERSION: fetch the .deb once; prints its path.
download() {
	local pkg=$1 ver=$2 deb
	deb=$CACHE/debs/${pkg}_${ver//:/%3a}_$(apt-cache "${APT_OPTS[@]}" show "$pkg=$ver" | awk '/^Architecture:/ { print $2; exit }').deb
	if [ ! -s "$deb" ]; then
		log "download $pkg=$ver"
		(cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" -qq download "$pkg=$ver")
	fi
	[ -s "$deb" ] || die "download of $pkg=$ver did not produce $deb"
	echo "$deb"
}

# extract DIR DEB...: unpack the .debs into one root DIR once; prints DIR.
extract() {
	local dir=$1 deb
	shift
	if [ ! -f "$dir/.done" ]; then
		rm -rf "$dir" && mkdir -p "$dir"
		for deb in "$@"; do dpkg-deb -x "$deb" "$dir"; done
		touch "$dir/.done"
	fi
	echo "$dir"
}

# fetch PKG VERSION: download and extract one package; prints the extraction dir.
fetch() {
	extract "$CACHE/x/${1}_${2//:/_}" "$(download "$1" "$2")"
}

# The L1/L2 kernel: whatever linux-image-amd64 of bookworm (incl. security) points at.
meta=$(candidate linux-image-amd64)
[ -n "$meta" ] || die "linux-image-amd64 not found in the apt lists"
KPKG=$(apt-cache "${APT_OPTS[@]}" depends "linux-image-amd64=$meta" | awk '/Depends: linux-image-6/ { print $2; exit }')
KVER=${KPKG#linux-image-}             # e.g. 6.1.0-56-amd64
KABI=${KVER%-amd64}                   # e.g. 6.1.0-56
KSRCVER=$(candidate "$KPKG")          # e.g. 6.1.192-2
KIMG=$(fetch "$KPKG" "$KSRCVER")
if [ ! -f "$KIMG/lib/modules/$KVER/modules.dep" ]; then
	depmod -b "$KIMG" "$KVER"
fi
# headers + common headers + kbuild in one root, so that their relative symlinks resolve
KHEADERS=$(extract "$CACHE/x/kheaders_$KSRCVER" "$(download "linux-headers-$KVER" "$KSRCVER")" \
	"$(download "linux-headers-$KABI-common" "$KSRCVER")" "$(download "linux-kbuild-6.1" "$KSRCVER")")
KHEADERS=$KHEADERS/usr/src/linux-headers-$KVER

# QEMU 10.0 from bookworm-backports, with the SeaBIOS and ROMs it was built for.
Q10VER=$(candidate qemu-system-x86 bookworm-backports)
[ -n "$Q10VER" ] || die "qemu-system-x86 not found in bookworm-backports"
Q10=$(fetch qemu-system-x86 "$Q10VER")
Q10DATA=$(fetch qemu-system-data "$(candidate qemu-system-data bookworm-backports)")
SEABIOS10=$(fetch seabios "$(candidate seabios bookworm-backports)")

cat > "$CACHE/packages.env.tmp" <<ENV
KVER=$KVER
KSRCVER=$KSRCVER
KIMG=$KIMG
KHEADERS=$KHEADERS
Q10VER=$Q10VER
Q10=$Q10
Q10DATA=$Q10DATA
SEABIOS10=$SEABIOS10
ENV
mv "$CACHE/packages.env.tmp" "$CACHE/packages.env"
log "packages: kernel $KVER ($KSRCVER), qemu $Q10VER"
