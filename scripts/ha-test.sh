#!/usr/bin/env bash
# A tier of ringlb hosts in network namespaces (issue 15, docs/ha.md):
# keepalived (VRRP) active/passive and BGP ECMP (BIRD) active/active, with
# the contrib/ files as shipped (addresses and timers substituted).
#
#   scripts/ha-test.sh            RINGLB=path (default target/debug/ringlb)
#
# Exit 0 only when every scenario holds; each prints its measured figures
# as "FIGURE name: value". Skips (prints SKIPPED, exit 0) when not root or
# when namespaces, keepalived or bird cannot be used. Everything it starts
# is stopped by pid and every namespace it made is deleted on exit.
#
# Namespaces (prefix rha<pid>-):
#   cli  24 client source addresses        be   3 backends b1 b2 b3 (br1)
#   VRRP: lb1, lb2 on the clients' LAN (br0 in cli), VIP 10.77.1.100
#   ECMP: rtr (BIRD, merge paths), lb1..lb3 (BIRD each, VIPs 10.77.9.1 and
#         fd77:9::1 on lo, both announced over one IPv4 BGP session)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RINGLB=${RINGLB:-$ROOT/target/debug/ringlb}
HA=$ROOT/scripts/ha
CONTRIB=$ROOT/contrib
PATH=$PATH:/usr/sbin:/sbin
START=$(date +%s.%N)

skip() {
  echo "ha-test: SKIPPED: $*"
  exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
for tool in ip nft keepalived bird birdc curl python3; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (apt-get install iproute2 nftables keepalived bird2 curl python3)"
done
[ -x "$RINGLB" ] || { echo "ha-test: FAILED: no ringlb binary at $RINGLB (cargo build -p lb-bin)"; exit 1; }

P=rha$$-
WORK=$(mktemp -d /tmp/ringlb-ha.XXXXXX)
NAMESPACES=()
PIDS=()
FAILED=0

cleanup() {
  local pid ns
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ "$FAILED" = 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "ha-test: logs kept in $WORK"; fi
}
trap cleanup EXIT
trap 'echo "ha-test: FAILED: line $LINENO: $BASH_COMMAND"; FAILED=1' ERR

say() { echo "ha-test: [$(elapsed "$START" "$(now)")s] $*"; }
figure() { echo "FIGURE $*"; }
fail() {
  echo "ha-test: FAILED: $*"
  FAILED=1
}
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

mkns() {
  ip netns add "$P$1" || skip "cannot make network namespaces ($P$1)"
  NAMESPACES+=("$P$1")
  ip -n "$P$1" link set lo up
}
x() { local ns=$1; shift; ip netns exec "$P$ns" "$@"; }
# Starts a long-running command in a namespace; its pid goes to PIDS and
# to the variable named $2.
bg() {
  local ns=$1 var=$2 log=$3; shift 3
  ip netns exec "$P$ns" "$@" >"$log" 2>&1 &
  PIDS+=("$!")
  printf -v "$var" '%s' "$!"
}
# wait_for SECONDS DESCRIPTION COMMAND…: polls COMMAND every 50 ms.
wait_for() {
  local limit=$1 what=$2; shift 2
  local end
  end=$(python3 -c "import time,sys; print(time.time() + float(sys.argv[1]))" "$limit")
  while ! "$@" >/dev/null 2>&1; do
    if python3 -c "import time,sys; sys.exit(0 if time.time() > float(sys.argv[1]) else 1)" "$end"; then
      fail "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.05
  done
}

SOURCES=$(python3 -c "print(','.join(f'10.77.1.{i}' for i in range(10, 34)))")
SOURCES_ECMP=$(python3 -c "print(','.join(f'10.77.5.{i}' for i in range(10, 34)))")
SOURCES_ECMP6=$(python3 -c "print(','.join(f'fd77:5::{i}' for i in range(10, 34)))")

# ---------------------------------------------------------------------------
# Backends (shared by both topologies): be with br1, b1..b3 on 10.77.2.1-3.
mkns be
# Every bridge gets a fixed MAC address: by default a bridge takes its
# lowest port's, so adding or removing a host would change it under the
# others' ARP caches (and cut them off for a reachable-time).
ip -n "${P}be" link add br1 address 02:77:00:00:02:01 type bridge
ip -n "${P}be" link set br1 up
for i in 1 2 3; do
  ip -n "${P}be" addr add "10.77.2.$i/24" dev br1
done
for i in 1 2 3; do
  bg be DUMMY "$WORK/b$i.log" python3 "$HA/backend.py" --name "b$i" --bind "10.77.2.$i" --port 8000
done
BACKEND_PIDS=("${PIDS[@]: -3}")

# Joins namespace $1 to the backends' bridge as 10.77.2.$2.
link_backends() {
  local ns=$1 host=$2
  ip link add "k$host-$$" netns "$P$ns" type veth peer name "kb$host-$$" netns "${P}be"
  ip -n "$P$ns" link set "k$host-$$" name kb up
  ip -n "$P$ns" addr add "10.77.2.$host/24" dev kb
  ip -n "${P}be" link set "kb$host-$$" master br1 up
}

# ringlb config of a tier host: service web on $1:80 (freebind), Maglev
# over b1..b3 (tcp health, fast), admin on 127.0.0.1:9090.
ringlb_config() {
  local vip=$1 file=$2 listen="\"$1:80\""
  [ -z "${3:-}" ] || listen="$listen, \"[$3]:80\""
  cat >"$file" <<EOF
[global]
workers = 1
admin = "127.0.0.1:9090"
admin_token = "ha-test-token"
join_key = "ha-test-join-key-0123456789"
drain_announce = "3s"
shutdown_timeout = "20s"

[[service]]
name = "web"
listen = [$listen]
freebind = true
balance = "maglev"
connect_timeout = "500ms"

[service.health]
kind = "tcp"
interval = "500ms"
fast_interval = "200ms"
timeout = "500ms"
fall = 3
rise = 2

[[service.backend]]
name = "b1"
address = "10.77.2.1:8000"

[[service.backend]]
name = "b2"
address = "10.77.2.2:8000"

[[service.backend]]
name = "b3"
address = "10.77.2.3:8000"
EOF
}

healthy() { x "$1" curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:9090/router/api/v1/system/health; }
# Starts ringlb in namespace $1 (config $2); its pid in RINGLB_PID_<ns>.
start_ringlb() {
  local ns=$1 conf=$2 pid
  bg "$ns" pid "$WORK/ringlb-$ns.log" "$RINGLB" --config "$conf"
  printf -v "RINGLB_PID_$ns" '%s' "$pid"
  wait_for 20 "ringlb in $ns to answer 200 on its health" healthy "$ns" \
    || { tail -5 "$WORK/ringlb-$ns.log"; return 1; }
}
ringlb_pid() { local v="RINGLB_PID_$1"; echo "${!v}"; }
metrics() { x "$1" curl -fsS --max-time 2 http://127.0.0.1:9090/metrics; }
fingerprint() { metrics "$1" | sed -n "s/^$2{service=\"web\",fingerprint=\"\([0-9a-f]*\)\"} 1$/\1/p"; }

client() { x cli python3 "$HA/client.py" "$@"; }
# The part of a map (JSON) after "via", as counts; and the backend per source.
via_split() { python3 -c 'import json,sys,collections; m=json.load(open(sys.argv[1])); c=collections.Counter(v.split(" via ")[-1] if not v.startswith("ERR") else "ERR" for v in m.values()); print(" ".join(f"{k}={n}" for k,n in sorted(c.items())))' "$1"; }
map_errors() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(v.startswith("ERR") for v in m.values()))' "$1"; }
# Percentage of sources of map $2 reaching the backend they reached in $1.
same_pct() { python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); k=[s for s in a if not a[s].startswith("ERR")]; same=sum(a[s].split(" via ")[0]==b.get(s,"").split(" via ")[0] for s in k); print(f"{100.0*same/len(k):.1f}" if k else "0.0")' "$1" "$2"; }
json_get() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); [v:=v[k] for k in sys.argv[2:]]; print(v)' "$@"; }

# ===========================================================================
# VRRP: lb1, lb2 on the clients' LAN, keepalived with contrib's config.
vrrp_setup() {
  mkns cli
  ip -n "${P}cli" link add br0 address 02:77:00:00:01:01 type bridge
  ip -n "${P}cli" link set br0 up
  local i
  for i in $(seq 10 33); do ip -n "${P}cli" addr add "10.77.1.$i/24" dev br0; done
  for h in 1 2; do
    mkns "lb$h"
    ip link add "f$h-$$" netns "${P}lb$h" type veth peer name "fb$h-$$" netns "${P}cli"
    ip -n "${P}lb$h" link set "f$h-$$" name eth0 up
    ip -n "${P}lb$h" addr add "10.77.1.$h/24" dev eth0
    ip -n "${P}cli" link set "fb$h-$$" master br0 up
    link_backends "lb$h" "1$h"
    local peer=$((3 - h))
    x "lb$h" sh "$CONTRIB/keepalived/ringlb-ha-setup.sh" 10.77.1.100 80 "10.77.1.$peer" \
      || { fail "ringlb-ha-setup.sh in lb$h"; return 1; }
    x "lb$h" sysctl -qw net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2 net.ipv4.conf.eth0.rp_filter=2
    ringlb_config 10.77.1.100 "$WORK/ringlb-lb$h.toml"
    start_ringlb "lb$h" "$WORK/ringlb-lb$h.toml"
    # keepalived as shipped, with the test's addresses and paths, faster
    # timers (advert 0.2 s in VRRPv3, fall 1; the check interval is whole
    # seconds) and without script security (the test's notify wrapper lives
    # under /tmp).
    cat >"$WORK/notify-lb$h.sh" <<EOF
#!/bin/sh
sh "$CONTRIB/keepalived/ringlb-notify.sh" "\$@"
echo "\$3" > "$WORK/state-lb$h"
EOF
    chmod +x "$WORK/notify-lb$h.sh"
    sed -e "s/192\.0\.2\.10/10.77.1.100/g; s/192\.0\.2\.11/10.77.1.1/g; s/192\.0\.2\.12/10.77.1.2/g" \
      -e "s|/etc/keepalived/ringlb-check.sh|$CONTRIB/keepalived/ringlb-check.sh|" \
      -e "s|\"/etc/keepalived/ringlb-notify.sh\"|\"$WORK/notify-lb$h.sh\"|" \
      -e "s/^\(\s*\)fall 2 .*/\1fall 1/; s/^\(\s*\)advert_int 1$/\1advert_int 0.2/" \
      -e "s/^\(\s*\)router_id .*/&\n\1vrrp_version 3/" \
      -e "/enable_script_security/d" \
      "$CONTRIB/keepalived/keepalived-lb$h.conf" >"$WORK/keepalived-lb$h.conf"
  done
  # lb1 first: it becomes master; lb2 then joins as backup (nopreempt).
  start_keepalived 1
  wait_for 10 "lb1 to become VRRP master" grep -qx MASTER "$WORK/state-lb1"
  start_keepalived 2
  wait_for 10 "lb2 to become VRRP backup" grep -qx BACKUP "$WORK/state-lb2"
}
start_keepalived() {
  local h=$1
  bg "lb$h" DUMMY "$WORK/keepalived-lb$h.log" keepalived -n -l -D -f "$WORK/keepalived-lb$h.conf" \
    -p "$WORK/keepalived-lb$h.pid" -r "$WORK/vrrp-lb$h.pid" -c "$WORK/checkers-lb$h.pid"
}
vip_on() { ip -n "${P}lb$1" -4 addr show dev eth0 | grep -q "10.77.1.100/"; }
# Fresh loop client; $1 = name. Sets LOOP_PID.
start_loop() {
  rm -f "$WORK/stop-$1"
  bg cli LOOP_PID "$WORK/loop-$1.log" python3 "$HA/client.py" loop --dst 10.77.1.100:80 \
    --sources "$SOURCES" --events "$WORK/events-$1.jsonl" --stop "$WORK/stop-$1" --max-seconds 60
}
stop_loop() {
  touch "$WORK/stop-$1"
  wait "$LOOP_PID" 2>/dev/null || true
}
via_seen() { grep -q "via $2" "$WORK/events-$1.jsonl"; }
# Seconds from $2 to the end of the first successful connection of loop $1
# carried by $3 (a ringlb host's backend-side address).
first_via() { python3 -c 'import json,sys; print(min((round(e["t"]+e["took"]-float(sys.argv[2]),3) for e in map(json.loads, open(sys.argv[1])) if e["ok"] and e["t"]>float(sys.argv[2]) and e["what"].endswith("via "+sys.argv[3])), default=None))' "$WORK/events-$1.jsonl" "$2" "$3"; }
# Events of loop $1 after time $2 carried by $3 exist.
via_seen_after() { python3 -c 'import json,sys; sys.exit(0 if any(e["ok"] and e["t"]>float(sys.argv[2]) and e["what"].endswith("via "+sys.argv[3]) for e in map(json.loads, open(sys.argv[1]))) else 1)' "$WORK/events-$1.jsonl" "$2" "$3"; }

vrrp_kill() {
  say "VRRP 1: kill -9 of the active ringlb (lb1)"
  client map --dst 10.77.1.100:80 --sources "$SOURCES" --tries 2 >"$WORK/vrrp-before.json"
  [ "$(map_errors "$WORK/vrrp-before.json")" = 0 ] || { fail "VRRP 1: clients failed before the kill: $(cat "$WORK/vrrp-before.json")"; return; }
  say "before: $(via_split "$WORK/vrrp-before.json")"
  # A long transfer through lb1: it will be lost with lb1's ringlb.
  bg cli BULK_PID "$WORK/bulk-kill.log" python3 "$HA/client.py" bulk --dst 10.77.1.100:80 \
    --source 10.77.1.10 --bytes 20000000 --delay-ms 10 --result "$WORK/bulk-kill.json" --started "$WORK/bulk-kill.started"
  wait_for 10 "the long transfer through lb1 to start" test -e "$WORK/bulk-kill.started"
  start_loop kill
  wait_for 10 "the loop client to get through lb1" via_seen kill 10.77.2.11
  local t0
  t0=$(now)
  kill -9 "$(ringlb_pid lb1)"
  wait_for 15 "a new connection through lb2 after the kill" via_seen_after kill "$t0" 10.77.2.12 || true
  wait_for 10 "lb1's VRRP instance to leave MASTER" sh -c "! grep -qx MASTER '$WORK/state-lb1'" || true
  sleep 1 # one more second of new connections after the move, for the same-backend figure
  stop_loop kill
  client map --dst 10.77.1.100:80 --sources "$SOURCES" --tries 2 >"$WORK/vrrp-after.json"
  local report
  report=$(python3 "$HA/client.py" report --events "$WORK/events-kill.jsonl" --since "$t0" --baseline "$WORK/vrrp-before.json")
  say "loop after the kill: $report"
  wait "$BULK_PID" 2>/dev/null || true
  figure "vrrp_kill_to_first_new_connection_via_lb2_s: $(first_via kill "$t0" 10.77.2.12)"
  figure "vrrp_kill_failed_new_connections_during_failover: $(json_get <(echo "$report") failed)"
  figure "vrrp_kill_same_backend_pct (loop after the move): $(json_get <(echo "$report") same_backend_pct)"
  figure "vrrp_kill_same_backend_pct (every source, map after): $(same_pct "$WORK/vrrp-before.json" "$WORK/vrrp-after.json") ($(via_split "$WORK/vrrp-after.json"))"
  figure "vrrp_kill_established_through_dead_host: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("intact" if r["ok"] else "lost ("+str(r["bytes"])+" of "+str(r["expected"])+" bytes: "+str(r["error"])+")")' "$WORK/bulk-kill.json")"
  [ "$(same_pct "$WORK/vrrp-before.json" "$WORK/vrrp-after.json")" = "100.0" ] || fail "VRRP 1: clients changed backend: $(cat "$WORK/vrrp-after.json")"
  [ "$(map_errors "$WORK/vrrp-after.json")" = 0 ] || fail "VRRP 1: clients failed after the move"
  [ "$(json_get <(echo "$report") same_backend_pct)" = "100.0" ] || fail "VRRP 1: a new connection after the move reached another backend"
  vip_on 2 || fail "VRRP 1: the VIP is not on lb2"

  say "VRRP 1b: lb1's ringlb comes back; nopreempt keeps the VIP (and the connections) on lb2"
  bg cli BULK_PID "$WORK/bulk-survivor.log" python3 "$HA/client.py" bulk --dst 10.77.1.100:80 \
    --source 10.77.1.11 --bytes 8000000 --delay-ms 10 --result "$WORK/bulk-survivor.json" --started "$WORK/bulk-survivor.started"
  wait_for 10 "the long transfer through lb2 to start" test -e "$WORK/bulk-survivor.started"
  start_ringlb lb1 "$WORK/ringlb-lb1.toml"
  wait_for 10 "lb1 back to VRRP BACKUP" grep -qx BACKUP "$WORK/state-lb1"
  wait "$BULK_PID" 2>/dev/null || true
  figure "vrrp_established_through_surviving_host: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("intact ("+str(r["bytes"])+" bytes, "+r["greeting"]+")" if r["ok"] else "LOST: "+str(r["error"]))' "$WORK/bulk-survivor.json")"
  [ "$(json_get "$WORK/bulk-survivor.json" ok)" = True ] || fail "VRRP 1b: the transfer through the surviving host broke"
  vip_on 2 || fail "VRRP 1b: the VIP left lb2 when lb1 came back (nopreempt)"
}

vrrp_drain() {
  say "VRRP 2: planned maintenance of the active host (lb2): SIGTERM = withdraw (503) -> drain -> stop"
  client map --dst 10.77.1.100:80 --sources "$SOURCES" --tries 2 >"$WORK/drain-before.json"
  say "before: $(via_split "$WORK/drain-before.json")"
  # ~10 s transfer through lb2: longer than drain_announce and the move.
  bg cli BULK_PID "$WORK/bulk-drain.log" python3 "$HA/client.py" bulk --dst 10.77.1.100:80 \
    --source 10.77.1.12 --bytes 12000000 --delay-ms 10 --result "$WORK/bulk-drain.json" --started "$WORK/bulk-drain.started"
  wait_for 10 "the long transfer through lb2 to start" test -e "$WORK/bulk-drain.started"
  start_loop drain
  wait_for 10 "the loop client to get through lb2" via_seen drain 10.77.2.12
  local t0 pid
  t0=$(now)
  pid=$(ringlb_pid lb2)
  kill -TERM "$pid"
  wait_for 15 "a new connection through lb1 after the drain began" via_seen_after drain "$t0" 10.77.2.11 || true
  local moved
  moved=$(first_via drain "$t0" 10.77.2.11)
  # The drained ringlb exits once its transfer is done (shutdown_timeout 20 s).
  local end=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && fail "VRRP 2: lb2's ringlb did not exit after the drain"
  local stopped
  stopped=$(now)
  sleep 0.5
  stop_loop drain
  wait "$BULK_PID" 2>/dev/null || true
  local report
  report=$(python3 "$HA/client.py" report --events "$WORK/events-drain.jsonl" --since "$t0" --baseline "$WORK/drain-before.json")
  say "loop during the maintenance: $report"
  figure "vrrp_drain_failed_new_connections: $(json_get <(echo "$report") failed) of $(json_get <(echo "$report") attempts) (from SIGTERM to $(elapsed "$t0" "$stopped")s, when the drained ringlb had exited)"
  figure "vrrp_drain_sigterm_to_first_new_connection_via_lb1_s: $moved"
  figure "vrrp_drain_same_backend_pct: $(json_get <(echo "$report") same_backend_pct)"
  figure "vrrp_drain_long_transfer_through_old_host: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(("intact (" if r["ok"] else "BROKEN (")+str(r["bytes"])+" of "+str(r["expected"])+" bytes in "+str(r["seconds"])+"s"+("" if r["ok"] else ": "+str(r["error"]))+")")' "$WORK/bulk-drain.json")"
  [ "$(json_get <(echo "$report") failed)" = 0 ] || fail "VRRP 2: new connections failed during the maintenance"
  [ "$(json_get "$WORK/bulk-drain.json" ok)" = True ] || fail "VRRP 2: the long transfer through the drained host broke"
  [ "$(json_get <(echo "$report") same_backend_pct)" = "100.0" ] || fail "VRRP 2: clients changed backend"
  vip_on 1 || fail "VRRP 2: the VIP is not on lb1 after the maintenance"
}

# Stops everything but the backends, deletes every namespace but theirs.
teardown() {
  local pid ns
  # Everything but the backends.
  for pid in "${PIDS[@]}"; do
    case " ${BACKEND_PIDS[*]} " in *" $pid "*) continue ;; esac
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=("${BACKEND_PIDS[@]}")
  for ns in cli rtr lb1 lb2 lb3; do ip netns del "$P$ns" 2>/dev/null || true; done
}


# ===========================================================================
# ECMP: client -> router (BIRD, merge paths) -> lb1..lb3 (BIRD each,
# announcing the VIP while ringlb's health says 200) -> backends.
VIP_E=10.77.9.1
VIP_E6=fd77:9::1
ecmp_setup() {
  mkns cli
  mkns rtr
  ip link add "c0-$$" netns "${P}cli" type veth peer name "c1-$$" netns "${P}rtr"
  ip -n "${P}cli" link set "c0-$$" name eth0 up
  ip -n "${P}rtr" link set "c1-$$" name eth0 up
  local i h
  for i in $(seq 10 33); do
    ip -n "${P}cli" addr add "10.77.5.$i/24" dev eth0
    ip -n "${P}cli" addr add "fd77:5::$i/64" dev eth0 nodad
  done
  ip -n "${P}cli" route add default via 10.77.5.1
  ip -n "${P}cli" -6 route add default via fd77:5::1
  ip -n "${P}rtr" addr add 10.77.5.1/24 dev eth0
  ip -n "${P}rtr" addr add fd77:5::1/64 dev eth0 nodad
  ip -n "${P}rtr" link add br2 address 02:77:00:00:06:01 type bridge
  ip -n "${P}rtr" link set br2 up
  ip -n "${P}rtr" addr add 10.77.6.1/24 dev br2
  ip -n "${P}rtr" addr add fd77:6::1/64 dev br2 nodad
  x rtr sysctl -q -p "$CONTRIB/bird/sysctl-router.conf" >/dev/null
  for h in 1 2 3; do
    mkns "lb$h"
    ip link add "e$h-$$" netns "${P}lb$h" type veth peer name "eb$h-$$" netns "${P}rtr"
    ip -n "${P}lb$h" link set "e$h-$$" name eth0 up
    ip -n "${P}lb$h" addr add "10.77.6.1$h/24" dev eth0
    ip -n "${P}lb$h" addr add "fd77:6::1$h/64" dev eth0 nodad
    ip -n "${P}lb$h" route add default via 10.77.6.1
    ip -n "${P}lb$h" -6 route add default via fd77:6::1
    ip -n "${P}lb$h" addr add "$VIP_E/32" dev lo
    ip -n "${P}lb$h" addr add "$VIP_E6/128" dev lo nodad
    ip -n "${P}rtr" link set "eb$h-$$" master br2 up
    # (2$h: the VRRP hosts' veths may still be going away.)
    link_backends "lb$h" "2$h"
    ringlb_config "$VIP_E" "$WORK/ringlb-lb$h.toml" "$VIP_E6"
    start_ringlb "lb$h" "$WORK/ringlb-lb$h.toml"
    # BIRD as shipped (IPv4 and IPv6 over one IPv4 session), the test's
    # addresses, short BGP timers.
    sed -e "s/198\.51\.100\.11/10.77.6.1$h/g; s/198\.51\.100\.1\b/10.77.6.1/g; s/192\.0\.2\.10/$VIP_E/g; s/2001:db8::10/$VIP_E6/g" \
      -e "s/hold time 9;/hold time 3;/; s/keepalive time 3;/keepalive time 1;/; s/connect retry time 5;/connect retry time 1; connect delay time 1;/" \
      "$CONTRIB/bird/bird-lb.conf" >"$WORK/bird-lb$h.conf"
    bg "lb$h" DUMMY "$WORK/bird-lb$h.log" bird -f -c "$WORK/bird-lb$h.conf" -s "$WORK/bird-lb$h.ctl"
    bg "lb$h" DUMMY "$WORK/announce-lb$h.log" sh "$CONTRIB/bird/ringlb-announce.sh" \
      "$WORK/bird-lb$h.ctl" http://127.0.0.1:9090 0.2 2 "ringlb_vip ringlb_vip6"
  done
  sed -e "s/198\.51\.100\.1\([123]\)\b/10.77.6.1\1/g; s/198\.51\.100\.1\b/10.77.6.1/g" \
    -e "s/hold time 9;/hold time 3;/; s/keepalive time 3;/keepalive time 1;/; s/connect retry time 5;/connect retry time 1; connect delay time 1;/" \
    "$CONTRIB/bird/bird-router.conf" >"$WORK/bird-rtr.conf"
  bg rtr DUMMY "$WORK/bird-rtr.log" bird -f -c "$WORK/bird-rtr.conf" -s "$WORK/bird-rtr.ctl"
  say "ECMP: ringlb and BIRD started on lb1..lb3; waiting for the router's paths"
  wait_for 30 "the router's route to the VIP over lb1, lb2 and lb3" paths_are 3
  wait_for 30 "the router's route to the IPv6 VIP over lb1, lb2 and lb3" paths6_are 3
  # An operator's check before taking traffic: every host sees every
  # backend up, and the tier agrees (the table fingerprints).
  wait_for 30 "every host to see b1, b2, b3 up" all_see_all_up
  wait_for 10 "the tier to agree (table fingerprints)" fp_all_equal
}
all_see_all_up() { all_see b1 1 && all_see b2 1 && all_see b3 1; }
# The router's next hops for the VIP.
paths() { ip -n "${P}rtr" route show "$VIP_E" | grep -o "via 10\.77\.6\.1[0-9]" | sed 's/via //' | sort | tr '\n' ' '; }
paths_are() { [ "$(paths | wc -w)" = "$1" ]; }
paths6() { ip -n "${P}rtr" -6 route show "$VIP_E6" | grep -o "via fd77:6::1[0-9]" | sed 's/via //' | sort | tr '\n' ' '; }
paths6_are() { [ "$(paths6 | wc -w)" = "$1" ]; }
path6_gone() { ! paths6 | grep -qw "$1"; }
path_gone() { ! paths | grep -qw "$1"; }

# Loop of N new connections (spread over the sources), then its report.
ecmp_sample() {
  local name=$1 attempts=$2; shift 2
  start_loop_to "$name" "$VIP_E:80" "$SOURCES_ECMP" --attempts "$attempts"
  wait "$LOOP_PID" 2>/dev/null || true
  python3 "$HA/client.py" report --events "$WORK/events-$name.jsonl" "$@"
}
start_loop_to() {
  local name=$1 dst=$2 sources=$3; shift 3
  rm -f "$WORK/stop-$name"
  bg cli LOOP_PID "$WORK/loop-$name.log" python3 "$HA/client.py" loop --dst "$dst" \
    --sources "$sources" --events "$WORK/events-$name.jsonl" --stop "$WORK/stop-$name" --max-seconds 60 --pause 0.005 "$@"
}
r() { json_get <(echo "$1") "$2"; }
fp_all_equal() { local a b c; a=$(fingerprint lb1 ringlb_table_fingerprint); b=$(fingerprint lb2 ringlb_table_fingerprint); c=$(fingerprint lb3 ringlb_table_fingerprint); [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]; }
backend_healthy_on() { metrics "$1" | grep -q "^ringlb_backend_healthy{service=\"web\",backend=\"$2\"} $3\$"; }
all_see() { local h; for h in 1 2 3; do backend_healthy_on "lb$h" "$1" "$2" || return 1; done; }

ecmp_spread() {
  say "ECMP 1: all hosts up"
  client map --dst "$VIP_E:80" --sources "$SOURCES_ECMP" --tries 2 >"$WORK/ecmp-before.json"
  [ "$(map_errors "$WORK/ecmp-before.json")" = 0 ] || fail "ECMP 1: clients failed: $(cat "$WORK/ecmp-before.json")"
  local rep
  rep=$(ecmp_sample spread 120 --baseline "$WORK/ecmp-before.json")
  say "sample: $rep"
  figure "ecmp_split_over_hosts (120 new connections, 24 sources): $(r "$rep" via)"
  figure "ecmp_sources_carried_by_several_hosts: $(r "$rep" sources_over_several_hosts) of $(r "$rep" sources)"
  figure "ecmp_sources_reaching_several_backends: $(r "$rep" sources_with_several_backends) (same_backend $(r "$rep" same_backend_pct) %)"
  [ "$(r "$rep" failed)" = 0 ] || fail "ECMP 1: new connections failed"
  [ "$(r "$rep" sources_with_several_backends)" = 0 ] || fail "ECMP 1: a client reached several backends"
  [ "$(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])["via"]))' "$rep")" = 3 ] || fail "ECMP 1: flows did not spread over the 3 hosts"
  # The same over IPv6 (the /128 announced by the same BIRD sessions).
  start_loop_to spread6 "[$VIP_E6]:80" "$SOURCES_ECMP6" --attempts 120
  wait "$LOOP_PID" 2>/dev/null || true
  rep=$(python3 "$HA/client.py" report --events "$WORK/events-spread6.jsonl")
  figure "ecmp_ipv6_split_over_hosts (120 new connections to [$VIP_E6]:80): $(r "$rep" via); failed $(r "$rep" failed); sources reaching several backends $(r "$rep" sources_with_several_backends) of $(r "$rep" sources)"
  [ "$(r "$rep" failed)" = 0 ] || fail "ECMP 1: IPv6 connections failed"
  [ "$(r "$rep" sources_with_several_backends)" = 0 ] || fail "ECMP 1: an IPv6 client reached several backends"
  [ "$(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])["via"]))' "$rep")" = 3 ] || fail "ECMP 1: IPv6 flows did not spread over the 3 hosts"
}

ecmp_backend_down() {
  say "ECMP 2: backend b2 down, as every host sees it"
  local t0
  t0=$(now)
  kill -9 "${BACKEND_PIDS[1]}"
  wait_for 15 "every host to see b2 down" all_see b2 0
  figure "ecmp_backend_down_seen_by_all_hosts_s: $(elapsed "$t0" "$(now)")"
  wait_for 10 "the tier to agree (table fingerprints)" fp_all_equal
  local rep
  rep=$(ecmp_sample down 120 --baseline "$WORK/ecmp-before.json" --moved-from b2)
  say "sample: $rep"
  figure "ecmp_b2_clients_moved: $(r "$rep" moved_sources) sources, each to: $(r "$rep" moved_to)"
  figure "ecmp_b2_clients_with_one_replacement_on_every_host: $(( $(r "$rep" sources) - $(r "$rep" sources_with_several_backends) )) of $(r "$rep" sources) sources reach one backend (several hosts carried $(r "$rep" sources_over_several_hosts))"
  figure "ecmp_other_clients_same_backend_pct: $(r "$rep" others_same_backend_pct)"
  [ "$(r "$rep" failed)" = 0 ] || fail "ECMP 2: new connections failed"
  [ "$(r "$rep" sources_with_several_backends)" = 0 ] || fail "ECMP 2: hosts disagree on a replacement backend"
  [ "$(r "$rep" others_same_backend_pct)" = "100.0" ] || fail "ECMP 2: clients of healthy backends moved"
  # b2 back for the next scenarios.
  local pid
  bg be pid "$WORK/b2-again.log" python3 "$HA/backend.py" --name b2 --bind 10.77.2.2 --port 8000
  BACKEND_PIDS[1]=$pid
  wait_for 15 "every host to see b2 up again" all_see b2 1
  wait_for 10 "the tier to agree (table fingerprints)" fp_all_equal
}

join_node() { # join_node HOST NAME ADDRESS
  x "$1" curl -fsS --max-time 2 -X POST -H "X-Join-Key: ha-test-join-key-0123456789" \
    -H "Content-Type: application/json" -d "{\"name\":\"$2\",\"address\":\"$3\",\"weight\":100}" \
    http://127.0.0.1:9090/api/v1/services/web/join >/dev/null
}
leave_node() {
  x "$1" curl -fsS --max-time 2 -X POST -H "X-Join-Key: ha-test-join-key-0123456789" \
    -H "Content-Type: application/json" -d "{\"name\":\"$2\"}" \
    http://127.0.0.1:9090/api/v1/services/web/leave >/dev/null
}
fp_line() { echo "backends lb1=$(fingerprint lb1 ringlb_backends_fingerprint) lb2=$(fingerprint lb2 ringlb_backends_fingerprint) lb3=$(fingerprint lb3 ringlb_backends_fingerprint); table lb1=$(fingerprint lb1 ringlb_table_fingerprint) lb2=$(fingerprint lb2 ringlb_table_fingerprint) lb3=$(fingerprint lb3 ringlb_table_fingerprint)"; }

ecmp_join() {
  say "ECMP 3: node b4 joins through every instance; b5 through lb1 only"
  local h pid rep
  for h in 4 5; do
    ip -n "${P}be" addr add "10.77.2.$h/24" dev br1
    bg be pid "$WORK/b$h.log" python3 "$HA/backend.py" --name "b$h" --bind "10.77.2.$h" --port 8000
    BACKEND_PIDS+=("$pid")
  done
  for h in 1 2 3; do join_node "lb$h" b4 10.77.2.4:8000 || fail "ECMP 3: join of b4 through lb$h"; done
  wait_for 15 "b4 up on every host" all_see b4 1
  local fps
  fps=$(fp_line)
  figure "ecmp_join_everywhere_fingerprints: $fps"
  fp_all_equal || fail "ECMP 3: fingerprints differ after a join through every instance: $fps"
  rep=$(ecmp_sample join-all 120)
  figure "ecmp_join_everywhere_sources_reaching_several_backends: $(r "$rep" sources_with_several_backends) of $(r "$rep" sources) (split $(r "$rep" via))"
  [ "$(r "$rep" sources_with_several_backends)" = 0 ] || fail "ECMP 3: clients reach several backends although every instance has b4"

  join_node lb1 b5 10.77.2.5:8000 || fail "ECMP 3: join of b5 through lb1"
  wait_for 15 "b5 up on lb1" backend_healthy_on lb1 b5 1
  fps=$(fp_line)
  figure "ecmp_join_one_instance_fingerprints: $fps"
  [ "$(fingerprint lb1 ringlb_backends_fingerprint)" != "$(fingerprint lb2 ringlb_backends_fingerprint)" ] \
    || fail "ECMP 3: lb1's backends fingerprint does not show its extra node"
  [ "$(fingerprint lb2 ringlb_table_fingerprint)" = "$(fingerprint lb3 ringlb_table_fingerprint)" ] \
    || fail "ECMP 3: lb2 and lb3 should still agree"
  rep=$(ecmp_sample join-one 360)
  figure "ecmp_join_one_instance_sources_reaching_several_backends: $(r "$rep" sources_with_several_backends) of $(r "$rep" sources) (e.g. $(r "$rep" several_backends_examples))"
  [ "$(r "$rep" sources_with_several_backends)" != 0 ] || fail "ECMP 3: the disagreement did not show in the clients' backends"
  leave_node lb1 b5 || fail "ECMP 3: b5 leaving lb1"
  wait_for 10 "the tier to agree again" fp_all_equal
}

ecmp_kill_drain() {
  say "ECMP 4: lb1's ringlb killed (kill -9), then lb2 drained (SIGTERM)"
  client map --dst "$VIP_E:80" --sources "$SOURCES_ECMP" --tries 2 >"$WORK/ecmp-kd-before.json"
  [ "$(map_errors "$WORK/ecmp-kd-before.json")" = 0 ] || fail "ECMP 4: clients failed before"
  # Long transfers from 8 sources, spread over the hosts: what becomes of
  # established connections when hosts leave the ECMP group?
  local i bulk_pids=()
  for i in 10 11 12 13 14 15 16 17; do
    bg cli pid "$WORK/bulk-ecmp-$i.log" python3 "$HA/client.py" bulk --dst "$VIP_E:80" \
      --source "10.77.5.$i" --bytes 12000000 --delay-ms 10 --result "$WORK/bulk-ecmp-$i.json" \
      --started "$WORK/bulk-ecmp-$i.started"
    bulk_pids+=("$pid")
  done
  for i in 10 11 12 13 14 15 16 17; do
    wait_for 10 "long transfer $i to start" test -e "$WORK/bulk-ecmp-$i.started"
  done
  start_loop_to killdrain "$VIP_E:80" "$SOURCES_ECMP"
  wait_for 10 "the loop to start" test -s "$WORK/events-killdrain.jsonl"
  local t_kill t_gone1 t_term t_gone2 pid2 pid
  t_kill=$(now)
  kill -9 "$(ringlb_pid lb1)"
  wait_for 10 "the router to withdraw lb1" path_gone 10.77.6.11
  t_gone1=$(now)
  wait_for 10 "the router to withdraw lb1's IPv6 route" path6_gone fd77:6::11
  t_term=$(now)
  pid2=$(ringlb_pid lb2)
  kill -TERM "$pid2"
  wait_for 10 "the router to withdraw lb2" path_gone 10.77.6.12
  t_gone2=$(now)
  wait_for 10 "the router to withdraw lb2's IPv6 route" path6_gone fd77:6::12
  figure "ecmp_ipv6_paths_after_kill_and_drain: $(paths6)"
  # New connections on past the drain's drain_announce (3 s: lb2's
  # listeners close) and a second more.
  python3 -c "import time,sys; time.sleep(max(0.0, float(sys.argv[1]) + 4.0 - time.time()))" "$t_term"
  stop_loop killdrain
  for pid in "${bulk_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  figure "ecmp_long_transfers_established_before: $(python3 -c '
import json, sys
out = []
for f in sys.argv[1:]:
    r = json.load(open(f))
    via = {"10.77.2.21": "lb1(killed)", "10.77.2.22": "lb2(drained)", "10.77.2.23": "lb3(stayed)"}.get((r["greeting"] or " via ?").split(" via ")[-1], "?")
    out.append(f"{via}:" + ("intact" if r["ok"] else "lost"))
print(" ".join(sorted(out)))' "$WORK"/bulk-ecmp-*.json)"
  client map --dst "$VIP_E:80" --sources "$SOURCES_ECMP" --tries 1 >"$WORK/ecmp-kd-after.json"
  local before after
  before=$(python3 "$HA/client.py" report --events "$WORK/events-killdrain.jsonl" --since "$t_kill" --until "$t_gone1")
  after=$(python3 "$HA/client.py" report --events "$WORK/events-killdrain.jsonl" --since "$t_gone1" --baseline "$WORK/ecmp-kd-before.json")
  say "between the kill and lb1's withdrawal: $before"
  say "after lb1's withdrawal (lb2's drain included): $after"
  figure "ecmp_kill_to_withdraw_s: $(elapsed "$t_kill" "$t_gone1")"
  figure "ecmp_drain_sigterm_to_withdraw_s: $(elapsed "$t_term" "$t_gone2")"
  figure "ecmp_failed_between_kill_and_withdraw: $(r "$before" failed) of $(r "$before" attempts)"
  figure "ecmp_failed_after_withdraw (drain of lb2 included): $(r "$after" failed) of $(r "$after" attempts); split $(r "$after" via)"
  figure "ecmp_same_backend_after_pct: loop $(r "$after" same_backend_pct), map $(same_pct "$WORK/ecmp-kd-before.json" "$WORK/ecmp-kd-after.json") ($(via_split "$WORK/ecmp-kd-after.json"))"
  [ "$(r "$after" failed)" = 0 ] || fail "ECMP 4: new connections failed after the withdrawal"
  [ "$(map_errors "$WORK/ecmp-kd-after.json")" = 0 ] || fail "ECMP 4: clients failed at the end"
  [ "$(same_pct "$WORK/ecmp-kd-before.json" "$WORK/ecmp-kd-after.json")" = "100.0" ] || fail "ECMP 4: clients changed backend"
  [ "$(r "$after" same_backend_pct)" = "100.0" ] || fail "ECMP 4: clients changed backend during the withdrawal"
}

# The tier's Prometheus rules (contrib/prometheus), where promtool is.
if command -v promtool >/dev/null 2>&1; then
  promtool check rules "$CONTRIB/prometheus/ringlb-tier.rules.yml" >/dev/null \
    && (cd "$CONTRIB/prometheus" && promtool test rules ringlb-tier.rules.test.yml >/dev/null) \
    && say "contrib/prometheus rules: promtool check and test passed" \
    || fail "contrib/prometheus/ringlb-tier.rules.yml: promtool check or test failed"
else
  say "contrib/prometheus rules not checked: promtool is not installed"
fi

# SCENARIOS="vrrp ecmp" (default): which topologies to run.
for topology in ${SCENARIOS:-vrrp ecmp}; do
  case $topology in
    vrrp)
      vrrp_setup
      vrrp_kill
      vrrp_drain
      teardown
      ;;
    ecmp)
      ecmp_setup
      ecmp_spread
      ecmp_backend_down
      ecmp_join
      ecmp_kill_drain
      teardown
      ;;
    *) fail "unknown topology $topology (vrrp, ecmp)" ;;
  esac
done

say "run time $(elapsed "$START" "$(now)")s"
if [ "$FAILED" = 0 ]; then
  say "PASSED"
else
  say "FAILED"
  exit 1
fi
