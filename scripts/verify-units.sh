#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify` (needs the systemd
# package; no running systemd): scripts/ringlb.service and
# scripts/ringlb.socket as a source install uses them, and the Debian
# package's copies that scripts/package-units.sh generates from them. The
# units name /usr/local/bin/ringlb or /usr/bin/ringlb, which verify wants
# executable, so each set is checked inside a scratch root holding a stub
# of it and a copy of the system's own units. Any complaint fails the check.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# verify NAME DIR: the two units in DIR.
verify() {
  local root="$scratch/$1"
  mkdir -p "$root/usr/local/bin" "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/lib/systemd" "$root/usr/lib"
  printf '#!/bin/sh\n' > "$root/usr/local/bin/ringlb"
  printf '#!/bin/sh\n' > "$root/usr/bin/ringlb"
  chmod +x "$root/usr/local/bin/ringlb" "$root/usr/bin/ringlb"
  cp /bin/kill "$root/bin/kill"
  cp -r /lib/systemd/system "$root/lib/systemd/"
  cp -r /usr/lib/systemd "$root/usr/lib/" 2>/dev/null || true
  cp "$2/ringlb.service" "$2/ringlb.socket" "$root/etc/systemd/system/"
  local out
  # --man=no: Documentation=man:ringlb(1) is installed with ringlb, not
  # on the machine that checks (scripts/package-test.sh finds it installed).
  out=$(systemd-analyze verify --man=no --root="$root" /etc/systemd/system/ringlb.service /etc/systemd/system/ringlb.socket 2>&1) || { echo "$1: $out" >&2; exit 1; }
  if [ -n "$out" ]; then echo "$1: $out" >&2; exit 1; fi
  echo "$1: $(systemd-analyze security --offline=yes --root="$root" /etc/systemd/system/ringlb.service 2>/dev/null | tail -1)"
}

verify source "$here"
"$here/package-units.sh" "$scratch/package-units"
verify package "$scratch/package-units"
echo "units ok"
