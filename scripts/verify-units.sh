#!/usr/bin/env bash
# Checks scripts/ringlb.service and scripts/ringlb.socket with
# `systemd-analyze verify` (needs the systemd package; no running systemd).
# The units name /usr/local/bin/ringlb, which verify wants executable, so
# they are checked inside a scratch root holding a stub of it and a copy of
# the system's own units. Any complaint fails the check.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 2; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/systemd/system" "$root/lib/systemd" "$root/usr/lib"
printf '#!/bin/sh\n' > "$root/usr/local/bin/ringlb"
chmod +x "$root/usr/local/bin/ringlb"
cp /bin/kill "$root/bin/kill"
cp -r /lib/systemd/system "$root/lib/systemd/"
cp -r /usr/lib/systemd "$root/usr/lib/" 2>/dev/null || true
cp "$here/ringlb.service" "$here/ringlb.socket" "$root/etc/systemd/system/"
out=$(systemd-analyze verify --root="$root" /etc/systemd/system/ringlb.service /etc/systemd/system/ringlb.socket 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; exit 1; fi
systemd-analyze security --offline=yes --root="$root" /etc/systemd/system/ringlb.service 2>/dev/null | tail -1
echo "units ok"
