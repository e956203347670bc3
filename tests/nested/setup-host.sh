#!/bin/bash
# Install what the nested harness needs on the host (Debian 12, as root). Idempotent: apt is
# only called when a package is missing. Kernels, headers and QEMU 10.0 are not installed:
# fetch.sh downloads and extracts them into the cache.
set -euo pipefail
PKGS="qemu-system-x86 seabios bochs bochsbios vgabios busybox-static grub-pc-bin grub-common xorriso
mtools cpio kmod gcc gcc-12 libc6-dev linux-libc-dev make binutils util-linux debian-archive-keyring"
missing=$(dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n' $PKGS 2>/dev/null | awk '$2 != "ii" { print $1 }' || true)
for p in $PKGS; do dpkg-query -W "$p" >/dev/null 2>&1 || missing="$missing $p"; done
missing=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ -n "${missing// /}" ]; then
	echo "[nested] installing: $missing" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
echo "[nested] host packages present" >&2
