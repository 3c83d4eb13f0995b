#!/usr/bin/env bash
# The Debian package, end to end on this machine (root; CI runs it from
# .ci/run): builds it (scripts/build-deb.sh), runs lintian (no error may
# remain), installs it with `dpkg -i`, checks what it put where (stripped
# binary, man page, completions, units, conffile root:ringlb 0640, the
# ringlb user), runs `ringlb check` on the shipped config, then starts the
# installed unit's ExecStart command line as the ringlb user (systemd need
# not be PID 1: /run/ringlb and /var/log/ringlb are made as the unit's
# RuntimeDirectory= and LogsDirectory= would) with a config pointing at a
# backend this script starts on 127.0.0.1, serves a request through it,
# stops it with SIGTERM, and `dpkg --purge`s the package: no file of it may
# be left, nor /etc/ringlb or /var/log/ringlb. The ringlb user is kept on
# purge (packaging/deb/postrm says why); if this script created it, it
# removes it at the end, leaving the machine as it found it.
#
# Everything listens on 127.0.0.1 on ports the kernel picks. Every wait has
# a deadline. Prints SKIPPED and exits 0 when not root or without dpkg.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

if [ "$(id -u)" != 0 ]; then echo "package test SKIPPED: needs root (dpkg -i)"; exit 0; fi
for tool in dpkg dpkg-deb cargo-deb python3 curl setpriv; do
  command -v "$tool" >/dev/null 2>&1 || { echo "package test SKIPPED: $tool not found"; exit 0; }
done
if dpkg-query -W -f='${Status}' ringlb 2>/dev/null | grep -q installed; then
  echo "package test: a ringlb package is installed on this machine; this test would purge it." >&2
  echo "Remove it first (dpkg --purge ringlb) if it is a leftover of an earlier run." >&2
  exit 1
fi

fail() { echo "package test FAILED: $*" >&2; exit 1; }
user_existed=0
getent passwd ringlb >/dev/null && user_existed=1
work=$(mktemp -d)
lb_pid='' backend_pid='' installed=0
cleanup() {
  [ -n "$lb_pid" ] && kill -KILL "$lb_pid" 2>/dev/null || true
  [ -n "$backend_pid" ] && kill -KILL "$backend_pid" 2>/dev/null || true
  if [ "$installed" = 1 ]; then dpkg --purge ringlb >/dev/null 2>&1 || true; fi
  if [ "$user_existed" = 0 ] && getent passwd ringlb >/dev/null; then
    deluser --system ringlb >/dev/null 2>&1 || true
  fi
  rm -rf "$work" /run/ringlb
}
trap cleanup EXIT

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it
# succeeds; fails after SECONDS.
wait_for() {
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within the deadline"
    sleep 0.1
  done
}

echo "== build"
deb=$(scripts/build-deb.sh 2> "$work/build.log") || { cat "$work/build.log" >&2; fail "scripts/build-deb.sh"; }
echo "$deb ($(stat -c %s "$deb") bytes)"
cmp -s LICENSE /usr/share/common-licenses/Apache-2.0 \
  || fail "LICENSE differs from /usr/share/common-licenses/Apache-2.0, which the package's copyright points to"

echo "== lintian"
if command -v lintian >/dev/null 2>&1; then
  lintian --tag-display-limit 0 "$deb" > "$work/lintian.txt" 2>/dev/null || true
  cat "$work/lintian.txt"
  errors=$(grep -c '^E:' "$work/lintian.txt" || true)
  echo "lintian: $errors errors, $(grep -c '^W:' "$work/lintian.txt" || true) warnings"
  [ "$errors" = 0 ] || fail "lintian reports errors"
else
  echo "lintian SKIPPED: not installed (apt-get install lintian)"
fi

echo "== install"
dpkg -i "$deb" > "$work/dpkg-i.log" 2>&1 || { cat "$work/dpkg-i.log" >&2; fail "dpkg -i"; }
installed=1
dpkg -L ringlb | sort > "$work/files"
dpkg-query -W -f='${Installed-Size} KiB installed\n' ringlb
while read -r path; do
  [ -f "$path" ] && printf '%10s  %s\n' "$(stat -c %s "$path")" "$path"
done < "$work/files"
for path in /usr/bin/ringlb /usr/lib/systemd/system/ringlb.service /usr/lib/systemd/system/ringlb.socket \
  /usr/share/man/man1/ringlb.1.gz /usr/share/bash-completion/completions/ringlb \
  /usr/share/zsh/vendor-completions/_ringlb /usr/share/fish/vendor_completions.d/ringlb.fish \
  /usr/share/doc/ringlb/copyright /usr/share/doc/ringlb/docs/deploy.md /etc/logrotate.d/ringlb; do
  [ -f "$path" ] || fail "$path is not installed"
done
if readelf -S /usr/bin/ringlb | grep -q '\.debug_info'; then fail "/usr/bin/ringlb carries debug info"; fi
getent passwd ringlb >/dev/null || fail "the ringlb user was not created"
[ "$(stat -c '%U:%G %a' /etc/ringlb/ringlb.toml)" = "root:ringlb 640" ] \
  || fail "/etc/ringlb/ringlb.toml is $(stat -c '%U:%G %a' /etc/ringlb/ringlb.toml), not root:ringlb 640"
grep -qx '/etc/ringlb/ringlb.toml' /var/lib/dpkg/info/ringlb.conffiles || fail "ringlb.toml is not a conffile"
# Each Documentation= of the unit resolves on the installed system.
for doc in $(sed -n 's/^Documentation=//p' /usr/lib/systemd/system/ringlb.service); do
  case "$doc" in
    man:*) page=${doc#man:}; page=${page%(*}; [ -f "/usr/share/man/man1/$page.1.gz" ] || fail "unit: $doc is not installed" ;;
    file://*) [ -f "${doc#file://}" ] || fail "unit: $doc is not installed" ;;
    *) fail "unit: Documentation=$doc points outside the package" ;;
  esac
done
bash -n /usr/share/bash-completion/completions/ringlb || fail "the bash completion does not parse"

echo "== ringlb check on the shipped config"
/usr/bin/ringlb --version
setpriv --reuid ringlb --regid ringlb --init-groups /usr/bin/ringlb check --config /etc/ringlb/ringlb.toml \
  || fail "ringlb check, as the ringlb user, refuses the shipped /etc/ringlb/ringlb.toml"

echo "== serve a connection through the unit's ExecStart"
# Three free ports on 127.0.0.1 (bound then released; nothing else here
# takes ports from this range in the meantime).
read -r listen_port admin_port backend_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
mkdir "$work/www"
echo "served through the packaged ringlb $$" > "$work/www/hello.txt"
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$backend_port" > "$work/backend.log" 2>&1 &
backend_pid=$!
# The operator's edit of the conffile (purge must remove it all the same).
cat > /etc/ringlb/ringlb.toml <<EOF
[global]
admin = "127.0.0.1:$admin_port"
access_log = "/var/log/ringlb/access.log"

[[service]]
name = "web"
listen = ["127.0.0.1:$listen_port"]

[service.health]
kind = "tcp"
interval = "1s"

[[service.backend]]
name = "b1"
address = "127.0.0.1:$backend_port"
EOF
/usr/bin/ringlb check --config /etc/ringlb/ringlb.toml >/dev/null || fail "the test config is refused"
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/ringlb.service)
[ -n "$exec_start" ] || fail "no ExecStart= in the installed unit"
echo "ExecStart: $exec_start"
# What RuntimeDirectory=ringlb (0700) and LogsDirectory=ringlb (0750) make.
install -d -o ringlb -g ringlb -m 0700 /run/ringlb
install -d -o ringlb -g ringlb -m 0750 /var/log/ringlb
wait_for 10 "the backend on 127.0.0.1:$backend_port" curl -sf "http://127.0.0.1:$backend_port/hello.txt"
# shellcheck disable=SC2086 # the command line splits as systemd splits it (no quotes in it)
setpriv --reuid ringlb --regid ringlb --init-groups $exec_start > "$work/ringlb.log" 2>&1 &
lb_pid=$!
wait_for 10 "ringlb's listener on 127.0.0.1:$listen_port" grep -q "listening service=web" "$work/ringlb.log"
wait_for 10 "a usable backend" sh -c "curl -sf http://127.0.0.1:$admin_port/metrics | grep -qx 'ringlb_service_backends_usable{service=\"web\"} 1'"
got=$(curl -sS --max-time 10 "http://127.0.0.1:$listen_port/hello.txt") || { cat "$work/ringlb.log" >&2; fail "the request through ringlb"; }
[ "$got" = "served through the packaged ringlb $$" ] || fail "through ringlb: got '$got'"
echo "served through ringlb: $got"
if /usr/bin/ringlb ctl --help >/dev/null 2>&1; then
  /usr/bin/ringlb ctl status || fail "ringlb ctl status"
fi
kill -TERM "$lb_pid"
deadline=$(( $(date +%s) + 10 ))
while kill -0 "$lb_pid" 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "ringlb did not stop within 10 s of SIGTERM"
  sleep 0.1
done
status=0; wait "$lb_pid" || status=$?
lb_pid=''
[ "$status" = 0 ] || { cat "$work/ringlb.log" >&2; fail "ringlb exited $status after SIGTERM"; }
[ -s /var/log/ringlb/access.log ] || fail "no access log line in /var/log/ringlb/access.log"
kill -TERM "$backend_pid"; wait "$backend_pid" 2>/dev/null || true; backend_pid=''
rm -rf /run/ringlb   # systemd removes the RuntimeDirectory at stop

echo "== purge"
dpkg --purge ringlb > "$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; fail "dpkg --purge"; }
installed=0
left=()
while read -r path; do
  [ -e "$path" ] || continue
  # A directory the package shared (/usr/bin, …) stays if another package
  # owns it or something else is in it.
  if [ -d "$path" ] && { dpkg -S "$path" >/dev/null 2>&1 || [ -n "$(ls -A "$path")" ]; }; then continue; fi
  left+=("$path")
done < "$work/files"
for path in /etc/ringlb /var/log/ringlb /usr/share/doc/ringlb; do
  [ -e "$path" ] && left+=("$path")
done
[ "${#left[@]}" = 0 ] || fail "left behind after purge: ${left[*]}"
getent passwd ringlb >/dev/null || fail "the ringlb user was removed on purge (postrm says it is kept)"
echo "purged: no file left; the ringlb user is kept, as documented"

echo "package test passed in $(( $(date +%s) - started )) s"
