# Common helpers for the nested-VM harness scripts (sourced, not run).
# Everything built or downloaded lives under $OKVM_NESTED_CACHE (default /var/tmp/okvm-nested);
# outputs are kept in directories named by a hash of their inputs, so a re-run reuses them.
set -euo pipefail

NESTED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${OKVM_NESTED_CACHE:-/var/tmp/okvm-nested}
mkdir -p "$CACHE"

log() { printf '[nested %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# hash_inputs ARG...: short content hash of files (by content) and plain strings (as given).
hash_inputs() {
	local a
	for a in "$@"; do
		if [ -f "$a" ]; then printf 'F %s\n' "$(sha256sum < "$a")"; else printf 'S %s\n' "$a"; fi
	done | sha256sum | cut -c1-16
}

# mkcpio DIR OUT: pack DIR as an uncompressed newc initramfs owned by root.
mkcpio() {
	(cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) > "$2.tmp"
	mv "$2.tmp" "$2"
}

# Private apt state: bookworm (+updates, security) and bookworm-backports, used only to
# resolve and download .debs (never to install), so the host's sources stay untouched.
APT_DIR=$CACHE/apt
APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
	-o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
	-o "Dir::State::status=$APT_DIR/status" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
