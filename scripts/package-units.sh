#!/usr/bin/env bash
# Writes the systemd units as the Debian package installs them into DIR:
# scripts/ringlb.service and scripts/ringlb.socket with a source install's
# prefix /usr/local/ turned into the package's /usr/ (binary, man page,
# docs). One source, so the two cannot drift; scripts/build-deb.sh and
# scripts/verify-units.sh use it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
for unit in ringlb.service ringlb.socket; do
  { echo "# Generated from the ringlb source's scripts/$unit by scripts/package-units.sh."
    sed 's|/usr/local/|/usr/|g' "$here/$unit"; } > "$1/$unit"
done
# A path the package does not install would make the unit fail at start.
if grep -n '^[^#]*/usr/local' "$1"/ringlb.service "$1"/ringlb.socket; then
  echo "$0: /usr/local left in the package's units" >&2; exit 1
fi
