#!/usr/bin/env bash
# ringlb soak run (issue 12, part 4): hours of steady load with the
# operations an installation sees, printing ringlb's RSS and descriptor
# counts over time with their slope, and every failure. Not run in CI.
#
#   scripts/soak.sh 8          # 8 hours
#   scripts/soak.sh 0.5        # half an hour
#   scripts/soak.sh 10m        # ten minutes (also: 90s)
#
# What runs, all on 127.0.0.1:
#   - three HTTP/1.1 keep-alive backends (python3); b3's health answer flaps
#     between 200 and 503 every --flap seconds, so ringlb takes it out of
#     rotation and back, again and again;
#   - the open-loop client (bench's `openloop`) at a fixed --rate, in
#     60-second runs back to back (each run opens its connections anew);
#   - idle connections (bench's `idleconns`, --idle of them) opened, held
#     for 20 s and closed, over and over;
#   - a reload (SIGHUP, b2's weight alternating) every minute;
#   - b1 drained for 30 s and enabled again every 5 minutes (admin API).
# (--reload-every and --drain-every shorten those for a quick check.)
# Every 10 s it prints ringlb's VmRSS and open descriptors; at the end a
# summary: duration, requests, failures, RSS and fds at start and end with
# their least-squares slope per hour. Exit status 1 if anything failed.
#
# Everything it starts is stopped by pid on exit (Ctrl-C included). It
# changes no sysctl and installs nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
	cat <<EOF
usage: scripts/soak.sh DURATION [options]

  DURATION            hours (fractions allowed: 0.5), or with a unit: 10m, 90s, 2h
  --rate R            open-loop requests per second (default 500)
  --idle N            idle connections per churn round (default 500)
  --flap S            seconds between b3's health flips (default 30)
  --reload-every S    seconds between reloads (default 60)
  --drain-every S     seconds between drain/enable cycles of b1 (default 300; b1 stays drained 30 s)
  --port-base P       ports P..P+9 on 127.0.0.1 (default 29080)
  --engine E          ringlb's engine: auto|uring|epoll (default auto)
  --no-build          use the binaries already in target/release
  --bin-dir DIR       use ringlb, openloop and idleconns from DIR (e.g. target/debug); implies --no-build
  --out DIR           keep logs and samples here (default: a temporary dir, kept on failure)
  -h, --help          this text
EOF
}

log() { printf '[soak %(%H:%M:%S)T +%5ss] %s\n' -1 "$((SECONDS - T0))" "$*"; }
die() {
	printf 'soak: %s\n' "$*" >&2
	exit 2
}

# ---------------------------------------------------------------------------
# Options.
(($#)) || {
	usage >&2
	exit 2
}
case $1 in -h | --help)
	usage
	exit 0
	;;
esac
DURATION_ARG=$1
shift
RATE=500 IDLE=500 FLAP=30 RELOAD_EVERY=60 DRAIN_EVERY=300 PORT_BASE=29080 ENGINE=auto NO_BUILD=0 OUT_DIR="" BIN=$ROOT/target/release
while (($#)); do
	case $1 in
	--rate) RATE=${2:?--rate needs a value} && shift ;;
	--idle) IDLE=${2:?--idle needs a value} && shift ;;
	--flap) FLAP=${2:?--flap needs a value} && shift ;;
	--reload-every) RELOAD_EVERY=${2:?--reload-every needs a value} && shift ;;
	--drain-every) DRAIN_EVERY=${2:?--drain-every needs a value} && shift ;;
	--port-base) PORT_BASE=${2:?--port-base needs a value} && shift ;;
	--engine) ENGINE=${2:?--engine needs a value} && shift ;;
	--no-build) NO_BUILD=1 ;;
	--bin-dir) BIN=$(cd "${2:?--bin-dir needs a directory}" && pwd) NO_BUILD=1 && shift ;;
	--out) OUT_DIR=${2:?--out needs a value} && shift ;;
	-h | --help) usage && exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done

# DURATION in seconds: a number of hours, or a number with h, m or s.
DURATION_S=$(awk -v d="$DURATION_ARG" 'BEGIN {
	unit = 3600
	if (d ~ /[hms]$/) { u = substr(d, length(d)); d = substr(d, 1, length(d) - 1)
		unit = (u == "h") ? 3600 : (u == "m") ? 60 : 1 }
	if (d !~ /^[0-9]*\.?[0-9]+$/) { print "bad"; exit }
	printf "%d", d * unit }')
[[ $DURATION_S =~ ^[0-9]+$ && $DURATION_S -ge 10 ]] ||
	die "DURATION must be hours (e.g. 0.5) or 10m / 90s / 2h, at least 10 s; got '$DURATION_ARG'"
for v in RATE IDLE FLAP RELOAD_EVERY DRAIN_EVERY PORT_BASE; do
	[[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "--${v,,} must be a positive integer, got '${!v}'"
done
command -v python3 >/dev/null || die "python3 is needed for the test backends"
command -v curl >/dev/null || die "curl is needed for the admin API"

P_FRONT=$PORT_BASE P_B1=$((PORT_BASE + 1)) P_B2=$((PORT_BASE + 2)) P_B3=$((PORT_BASE + 3))
P_ADMIN=$((PORT_BASE + 9))
for p in "$P_FRONT" "$P_B1" "$P_B2" "$P_B3" "$P_ADMIN"; do
	if (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
		die "127.0.0.1:$p is in use; pick other ports with --port-base"
	fi
done

# ---------------------------------------------------------------------------
# Binaries.
if ((NO_BUILD == 0)); then
	echo "soak: building ringlb, openloop and idleconns (release)…" >&2
	(cd "$ROOT" && cargo build --release -q -p lb-bin -p bench --bins) || die "build failed"
fi
for b in ringlb openloop idleconns; do
	[[ -x $BIN/$b ]] || die "$BIN/$b is missing (run without --no-build)"
done

WORK=${OUT_DIR:-$(mktemp -d /tmp/ringlb-soak.XXXXXX)}
mkdir -p "$WORK"
PIDS=()
FAILURES=0
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

fail() {
	FAILURES=$((FAILURES + 1))
	log "FAILURE: $*"
}

# ---------------------------------------------------------------------------
# Backends: HTTP/1.1 keep-alive, 100-byte answers; /health answers 200 OK,
# except b3's, which answers 503 every other --flap seconds.
cat >"$WORK/backend.py" <<'EOF'
import http.server, sys, time
name, port, flap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
BODY = (name.encode() + b" " * 100)[:99] + b"\n"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: with Nagle on, the body waits for
    # the client's delayed ACK (40 ms), capping 16 connections at 400/s.
    disable_nagle_algorithm = True
    def do_GET(self):
        status, body = 200, BODY
        if self.path == "/health":
            sick = flap > 0 and int(time.time() / flap) % 2 == 1
            status, body = (503, b"flapping\n") if sick else (200, b"OK")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
S(("127.0.0.1", port), H).serve_forever()
EOF
python3 "$WORK/backend.py" b1 "$P_B1" 0 >"$WORK/b1.log" 2>&1 &
PIDS+=($!)
python3 "$WORK/backend.py" b2 "$P_B2" 0 >"$WORK/b2.log" 2>&1 &
PIDS+=($!)
python3 "$WORK/backend.py" b3 "$P_B3" "$FLAP" >"$WORK/b3.log" 2>&1 &
PIDS+=($!)

# ---------------------------------------------------------------------------
# ringlb: two config files that differ in b2's weight, for the reloads.
write_conf() { # write_conf FILE B2_WEIGHT
	cat >"$1" <<EOF
[global]
workers = 2
engine = "$ENGINE"
admin = "127.0.0.1:$P_ADMIN"

[[service]]
name = "web"
listen = ["127.0.0.1:$P_FRONT"]
balance = "maglev"
connect_timeout = "1s"

[service.health]
kind = "http"
path = "/health"
interval = "1s"
fast_interval = "500ms"
rise = 2
fall = 2

[[service.backend]]
name = "b1"
address = "127.0.0.1:$P_B1"

[[service.backend]]
name = "b2"
address = "127.0.0.1:$P_B2"
weight = $2

[[service.backend]]
name = "b3"
address = "127.0.0.1:$P_B3"
EOF
}
write_conf "$WORK/a.toml" 100
write_conf "$WORK/b.toml" 200
cp "$WORK/a.toml" "$WORK/ringlb.toml"
"$BIN/ringlb" check --config "$WORK/ringlb.toml" >"$WORK/check.txt" 2>&1 ||
	die "ringlb check refused the soak config: $(cat "$WORK/check.txt")"
NO_COLOR=1 "$BIN/ringlb" --config "$WORK/ringlb.toml" >"$WORK/ringlb.log" 2>&1 &
LB_PID=$!
PIDS+=("$LB_PID")

T0=$SECONDS
ready=0
for _ in $(seq 100); do
	if curl -fsS -o /dev/null "http://127.0.0.1:$P_FRONT/" 2>/dev/null; then
		ready=1
		break
	fi
	kill -0 "$LB_PID" 2>/dev/null || break
	sleep 0.2
done
((ready)) || die "ringlb or the backends did not come up in 20 s; see $WORK/ringlb.log"

log "ringlb pid $LB_PID on 127.0.0.1:$P_FRONT, $DURATION_S s at $RATE req/s, $IDLE idle connections churned, work dir $WORK"

# ---------------------------------------------------------------------------
# Background load: open-loop runs back to back, idle-connection rounds.
END=$((T0 + DURATION_S))
(
	while ((SECONDS < END)); do
		left=$((END - SECONDS))
		((left >= 5)) || break
		"$BIN/openloop" --url "http://127.0.0.1:$P_FRONT/" --rate "$RATE" \
			--duration $((left < 60 ? left : 60)) --warmup 0 --connections 16 2>/dev/null |
			grep '^OPENLOOP ' || echo "OPENLOOP crashed=1"
	done
) >"$WORK/openloop.txt" &
PIDS+=($!)
(
	round=0
	while ((SECONDS + 25 < END)); do
		round=$((round + 1))
		rm -f "$WORK/idle.ready" "$WORK/idle.stop"
		"$BIN/idleconns" --addr "127.0.0.1:$P_FRONT" --count "$IDLE" \
			--ready-file "$WORK/idle.ready" --stop-file "$WORK/idle.stop" --max-secs 20 |
			sed "s/^/round=$round /" || echo "IDLECONNS round=$round crashed=1"
	done
) >"$WORK/idle.txt" &
PIDS+=($!)

# ---------------------------------------------------------------------------
# The operator: samples every 10 s, a reload every minute, a drain every 5.
admin_post() { # admin_post PATH
	curl -fsS -m 5 -X POST -o /dev/null "http://127.0.0.1:$P_ADMIN$1"
}
# Adds up the key=value field $2 over every line of file $1 that starts with $3.
sum_field() { awk -v k="$2" -v p="$3" 'index($0, p) == 1 { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) s += kv[2] } } END { printf "%d", s }' "$1"; }
failures_in_load() {
	awk 'index($0, "OPENLOOP") == 1 { bad = 0
		for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] ~ /^(errors|non2xx|unsent|crashed)$/) bad += kv[2] }
		if (bad) n++ }
	index($0, "round=") == 1 || index($0, "IDLECONNS") == 1 { for (i = 1; i <= NF; i++) { split($i, kv, "=")
		if ((kv[1] == "failed" || kv[1] == "closed" || kv[1] == "crashed") && kv[2] > 0) { n++; break } } }
	END { printf "%d", n }' "$WORK/openloop.txt" "$WORK/idle.txt"
}

: >"$WORK/samples.txt"
reloads=0 drains=0 seen_load_lines=0 seen_idle_lines=0 next_sample=$T0 next_reload=$((T0 + RELOAD_EVERY))
next_drain=$((T0 + DRAIN_EVERY)) enable_at=0 gen=0
while ((SECONDS < END)); do
	now=$SECONDS
	if ! kill -0 "$LB_PID" 2>/dev/null; then
		fail "ringlb exited; last lines of its log:"
		tail -n 20 "$WORK/ringlb.log"
		break
	fi
	# New lines of the load's results: print the ones that failed.
	mapfile -t lines < <(tail -n +$((seen_load_lines + 1)) "$WORK/openloop.txt")
	for l in "${lines[@]}"; do
		seen_load_lines=$((seen_load_lines + 1))
		[[ $l =~ (errors|non2xx|unsent|crashed)=[1-9] ]] && fail "open-loop run: $l"
	done
	mapfile -t lines < <(tail -n +$((seen_idle_lines + 1)) "$WORK/idle.txt")
	for l in "${lines[@]}"; do
		seen_idle_lines=$((seen_idle_lines + 1))
		[[ $l =~ (failed|closed|crashed)=[1-9] ]] && fail "idle connections: $l"
	done
	if ((now >= next_sample)); then
		rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$LB_PID/status" 2>/dev/null || echo 0)
		fds=$(find "/proc/$LB_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
		echo "$((now - T0)) $rss $fds" >>"$WORK/samples.txt"
		log "rss=${rss}KiB fds=$fds requests=$(sum_field "$WORK/openloop.txt" sent OPENLOOP) reloads=$reloads drains=$drains failures=$FAILURES"
		next_sample=$((next_sample + 10))
	fi
	if ((now >= next_reload)); then
		gen=$((1 - gen))
		cp "$WORK/$([[ $gen == 1 ]] && echo b || echo a).toml" "$WORK/ringlb.toml"
		before=$(grep -c 'config reloaded' "$WORK/ringlb.log" || true)
		kill -HUP "$LB_PID"
		ok=0
		for _ in $(seq 50); do
			(($(grep -c 'config reloaded' "$WORK/ringlb.log" || true) > before)) && ok=1 && break
			sleep 0.1
		done
		((ok)) || fail "reload $((reloads + 1)): no 'config reloaded' within 5 s of SIGHUP"
		reloads=$((reloads + 1))
		next_reload=$((next_reload + RELOAD_EVERY))
	fi
	if ((now >= next_drain)); then
		admin_post /api/v1/services/web/backends/b1/drain || fail "drain b1: the admin API did not answer 2xx"
		drains=$((drains + 1))
		enable_at=$((now + (DRAIN_EVERY > 60 ? 30 : DRAIN_EVERY / 2)))
		next_drain=$((next_drain + DRAIN_EVERY))
	fi
	if ((enable_at > 0 && now >= enable_at)); then
		admin_post /api/v1/services/web/backends/b1/enable || fail "enable b1: the admin API did not answer 2xx"
		enable_at=0
	fi
	sleep 1
done
((enable_at == 0)) || admin_post /api/v1/services/web/backends/b1/enable || true

# Let the last open-loop run and idle round finish (each is bounded).
for _ in $(seq 90); do
	[[ $(jobs -pr | wc -l) -gt 4 ]] || break
	sleep 1
done
sleep 2
mapfile -t lines < <(tail -n +$((seen_load_lines + 1)) "$WORK/openloop.txt")
for l in "${lines[@]}"; do
	[[ $l =~ (errors|non2xx|unsent|crashed)=[1-9] ]] && fail "open-loop run: $l"
done
mapfile -t lines < <(tail -n +$((seen_idle_lines + 1)) "$WORK/idle.txt")
for l in "${lines[@]}"; do
	[[ $l =~ (failed|closed|crashed)=[1-9] ]] && fail "idle connections: $l"
done
warnings=$(grep -cE ' (WARN|ERROR) ' "$WORK/ringlb.log" || true)

# ---------------------------------------------------------------------------
# Summary.
# The first minute (the load starting, pools and allocator arenas filling)
# is left out of start and slope when the run is long enough to spare it.
WARM=$((DURATION_S >= 300 ? 60 : 0))
slope() { # slope COLUMN: least-squares change per hour of samples.txt's column
	awk -v c="$1" -v w="$WARM" '$1 < w { next } { n++; x += $1; y += $c; xx += $1 * $1; xy += $1 * $c }
	END { d = n * xx - x * x; if (n < 2 || d == 0) { print "n/a"; exit }
		printf "%+.1f", (n * xy - x * y) / d * 3600 }' "$WORK/samples.txt"
}
first() { awk -v c="$1" -v w="$WARM" '$1 >= w { print $c; exit }' "$WORK/samples.txt"; }
last() { awk -v c="$1" 'END { print $c }' "$WORK/samples.txt"; }
echo
echo "=== soak summary ==="
echo "duration:      $((SECONDS - T0)) s of $DURATION_S s asked (engine $ENGINE, $RATE req/s asked)"
echo "requests:      sent $(sum_field "$WORK/openloop.txt" sent OPENLOOP), ok $(sum_field "$WORK/openloop.txt" ok OPENLOOP), errors $(sum_field "$WORK/openloop.txt" errors OPENLOOP), non-2xx $(sum_field "$WORK/openloop.txt" non2xx OPENLOOP), unsent $(sum_field "$WORK/openloop.txt" unsent OPENLOOP)"
echo "idle rounds:   $(grep -c IDLECONNS "$WORK/idle.txt" || true) of $IDLE connections, opened $(sum_field "$WORK/idle.txt" opened round=), failed $(sum_field "$WORK/idle.txt" failed round=)"
echo "operations:    $reloads reloads, $drains drain/enable cycles, b3 flapping every $FLAP s"
echo "(start and slope from ${WARM}s on)"
echo "RSS (KiB):     start $(first 2), end $(last 2), slope $(slope 2) KiB/h"
echo "fds:           start $(first 3), end $(last 3), slope $(slope 3) /h"
echo "ringlb log:    $warnings WARN/ERROR lines, b3's flaps included ($WORK/ringlb.log)"
echo "failures:      $FAILURES (runs with failures: $(failures_in_load))"
echo "samples:       $WORK/samples.txt (seconds, VmRSS KiB, fds)"
echo "work dir:      $WORK (logs, samples; remove when done)"
((FAILURES == 0)) || exit 1
