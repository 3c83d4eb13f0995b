#!/bin/sh
# Announces the VIP over BGP only while this host's ringlb takes new
# clients (docs/ha.md): polls ringlb's health (contrib/keepalived/
# ringlb-check.sh) and enables or disables BIRD's static protocols that
# hold the VIP (bird-lb.conf). One failed check withdraws at once (a drain
# answers 503 for drain_announce before ringlb's listeners close); RISE
# good checks in a row announce again.
#
#   ringlb-announce.sh [BIRD_SOCKET] [ADMIN_URL] [INTERVAL] [RISE] [PROTOCOLS]
#   defaults: /run/bird/bird.ctl http://127.0.0.1:9090 0.5 2 "ringlb_vip ringlb_vip6"
#
# Run it as a service next to BIRD (Restart=always). If it dies the
# announcement stays as it was: monitor it, or run it under systemd with
# BindsTo=bird.service.
set -u
sock="${1:-/run/bird/bird.ctl}"
url="${2:-http://127.0.0.1:9090}"
interval="${3:-0.5}"
rise="${4:-2}"
protocols="${5:-ringlb_vip ringlb_vip6}"
check="$(dirname "$0")/ringlb-check.sh"
[ -x "$check" ] || check="$(dirname "$0")/../keepalived/ringlb-check.sh"

announced=unknown good=0
set_state() {
  for p in $protocols; do
    birdc -s "$sock" "$1" "$p" >/dev/null 2>&1 || echo "ringlb-announce: birdc $1 $p failed" >&2
  done
  announced=$2
  echo "ringlb-announce: $2" >&2
}
while :; do
  if "$check" "$url"; then
    good=$((good + 1))
    if [ "$announced" != yes ] && [ "$good" -ge "$rise" ]; then set_state enable yes; fi
  else
    good=0
    if [ "$announced" != no ]; then set_state disable no; fi
  fi
  sleep "$interval"
done
