#!/bin/sh
# Unpacks Debian bookworm-backports' linux-libc-dev (Linux 6.12 uapi headers) into
# <workspace>/target/kvm-abi-oracle, the oracle of kvm_abi/tests/abi_vs_linux.rs.
# Uses a private apt configuration under target/ (no change to the system's apt sources); needs
# apt-get, dpkg-deb and the Debian archive the system's apt uses (tests/debian-archive.sh). Idempotent.
set -eu
ws=$(cd "$(dirname "$0")/../.." && pwd)
out="$ws/target/kvm-abi-oracle"
if [ -f "$out/usr/include/linux/kvm.h" ]; then
	echo "oracle headers already in $out"
	exit 0
fi
apt="$ws/target/kvm-abi-apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
archive=$("$ws/tests/debian-archive.sh")
echo "deb $archive bookworm-backports main" > "$apt/sources.list"
opts="-o Dir::Etc::SourceList=$apt/sources.list -o Dir::Etc::SourceParts=/nonexistent
 -o Dir::State::Lists=$apt/lists -o Dir::Cache=$apt/cache -o APT::Sandbox::User=root"
# shellcheck disable=SC2086
apt-get $opts -qq update
cd "$apt/deb"
rm -f linux-libc-dev_*.deb
# shellcheck disable=SC2086
apt-get $opts -qq download linux-libc-dev/bookworm-backports
rm -rf "$out.tmp"
dpkg-deb -x linux-libc-dev_*.deb "$out.tmp"
mv "$out.tmp" "$out"
echo "oracle headers: $(ls "$apt"/deb/linux-libc-dev_*.deb) unpacked into $out"
