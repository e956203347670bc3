#!/bin/sh
# Prints the URI of the Debian archive that this machine's apt already uses for bookworm's main
# component, so that test scripts can reach another suite of the same archive (bookworm-backports)
# through a private apt configuration without naming any host themselves.
set -eu
uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
	awk '$2 == "bookworm" && $3 == "main" { print $1; exit }')
if [ -z "$uri" ]; then
	echo "debian-archive.sh: apt has no bookworm main source (run apt-get update?)" >&2
	exit 1
fi
echo "${uri%/}"
