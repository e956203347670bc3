#!/bin/sh
# Prints the URI of the Debian archive that this machine's apt already uses for SUITE's main
# component (default: bookworm), so that test scripts can reach suites through a private apt
# configuration without naming any host themselves. A suite the system does not list (such as
# bookworm-backports) is served by the same archive as bookworm.
set -eu
suite=${1:-bookworm}
find_uri() {
	apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
		awk -v s="$1" '$2 == s && $3 == "main" { print $1; exit }'
}
uri=$(find_uri "$suite")
[ -n "$uri" ] || uri=$(find_uri bookworm)
if [ -z "$uri" ]; then
	echo "debian-archive.sh: apt has no bookworm main source (run apt-get update?)" >&2
	exit 1
fi
echo "${uri%/}"
