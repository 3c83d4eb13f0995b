#!/usr/bin/env bash
# ringlb benchmark suite: ringlb against HAProxy and nginx (and no proxy at
# all), on loopback, one pinned CPU for the proxy and one for the load.
# See docs/benchmarks.md for the method and how to read the output.
#
#   scripts/bench.sh                  # full run: 5 interleaved rounds, everything
#   scripts/bench.sh --quick          # one short round (smoke)
#   scripts/bench.sh --quick --workloads ka --proxies direct,haproxy   # CI smoke
#
# Everything it starts listens on 127.0.0.1 only and is stopped by pid on
# exit, Ctrl-C included. It changes no sysctl. Exit status 3 when a run
# failed or a selected proxy did not start (the summary is written anyway).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
# shellcheck source=bench/lib/setup.sh
source "$ROOT/bench/lib/setup.sh"
# shellcheck source=bench/lib/servers.sh
source "$ROOT/bench/lib/servers.sh"
# shellcheck source=bench/lib/workloads.sh
source "$ROOT/bench/lib/workloads.sh"

ALL_PROXIES=direct,ringlb,haproxy,haproxy-splice,nginx
ALL_WORKLOADS=ka,close,bulk,iperf,rate,conc

usage() {
	cat <<EOF
usage: scripts/bench.sh [options]

  --quick               one round of 3 s runs (smoke test)
  --rounds N            interleaved rounds (default 5)
  --duration S          seconds per measured run (default 6)
  --proxies LIST        comma-separated, from: $ALL_PROXIES
                        and ringlb:ENGINE:FORWARDING variants, e.g.
                        ringlb:epoll:splice, ringlb:uring:uring-splice,
                        ringlb:uring:uring-copy, ringlb:auto:copy
                        (default: all five)
  --workloads LIST      comma-separated, from: $ALL_WORKLOADS (default: all)
  --rate R              request rate of the 'rate' workload (default 5000/s)
  --conc N              idle connections of the 'conc' workload (default 8000)
  --ringlb-base PATH    enables proxy 'ringlb-base' (list it in --proxies): ringlb from the binary
                        PATH (e.g. a build of main before a change), with the
                        same config as 'ringlb', for an interleaved A/B
  --ringlb-service-extra FILE
                        lines from FILE added to each [[service]] of the plain
                        'ringlb' proxy only (not 'ringlb-base'), e.g. per-source
                        rules, to A/B their cost against the same binary
  --ringlb-engine E     engine for the plain 'ringlb' proxy: auto|uring|epoll
                        (default: left out of the config, i.e. ringlb's default)
  --ringlb-forwarding F forwarding for it: auto|splice|copy|uring-splice|uring-copy
  --ringlb-access-log L access log of 'ringlb' and 'ringlb:*' (never 'ringlb-base'):
                        a file PATH (appended to; put it on a real disk), stderr, or
                        off (default: the key is left out, which is off)
  --nice N              run servers and load generators at nice N (e.g. -10 on a
                        machine shared with builds; needs root for N < 0)
  --port-base P         ports P..P+12 on 127.0.0.1 are used (default 28080)
  --out DIR             results directory (default bench/results/<UTC timestamp>)
  --no-install          never apt-get install; fail if something is missing
  --no-build            use existing binaries under target/release
  -h, --help            this text

Workloads: ka (wrk keep-alive, 64 conns, 100 B), close (new connection per
request), bulk (4 conns, 1 MiB responses), iperf (one iperf3 stream),
rate (open-loop fixed rate, latency from intended send time), conc (N idle
connections held while a keep-alive wrk run goes through; proxy RSS).
EOF
}

# ---------------------------------------------------------------------------
# Options.
ORIG_ARGS="$*"
ROUNDS=5 DURATION=6 RATE=5000 CONC=8000 PORT_BASE=28080 NICE=0
PROXIES_ARG=$ALL_PROXIES WORKLOADS_ARG=$ALL_WORKLOADS
RINGLB_ENGINE="" RINGLB_FORWARDING="" RINGLB_ACCESS_LOG=off RINGLB_BASE_BIN="" RINGLB_SERVICE_EXTRA="" OUT_DIR="" NO_INSTALL=0 NO_BUILD=0 QUICK=0
while (($#)); do
	case $1 in
	--quick) QUICK=1 ROUNDS=1 DURATION=3 ;;
	--rounds) ROUNDS=${2:?--rounds needs a value} && shift ;;
	--duration) DURATION=${2:?--duration needs a value} && shift ;;
	--proxies) PROXIES_ARG=${2:?--proxies needs a value} && shift ;;
	--workloads) WORKLOADS_ARG=${2:?--workloads needs a value} && shift ;;
	--rate) RATE=${2:?--rate needs a value} && shift ;;
	--conc) CONC=${2:?--conc needs a value} && shift ;;
	--ringlb-base) RINGLB_BASE_BIN=${2:?--ringlb-base needs a path} && shift ;;
	--ringlb-service-extra) RINGLB_SERVICE_EXTRA=${2:?--ringlb-service-extra needs a file} && shift ;;
	--ringlb-engine) RINGLB_ENGINE=${2:?} && shift ;;
	--ringlb-forwarding) RINGLB_FORWARDING=${2:?} && shift ;;
	--ringlb-access-log) RINGLB_ACCESS_LOG=${2:?--ringlb-access-log needs PATH, stderr or off} && shift ;;
	--nice) NICE=${2:?--nice needs a value} && shift ;;
	--port-base) PORT_BASE=${2:?--port-base needs a value} && shift ;;
	--out) OUT_DIR=${2:?--out needs a value} && shift ;;
	--no-install) NO_INSTALL=1 ;;
	--no-build) NO_BUILD=1 ;;
	-h | --help) usage && exit 0 ;;
	*) usage >&2 && die "unknown option: $1" ;;
	esac
	shift
done

# in_range VALUE MIN MAX: VALUE is an integer within MIN..MAX.
in_range() { [[ $1 =~ ^[0-9]{1,9}$ ]] && (($1 >= $2 && $1 <= $3)); }
in_range "$ROUNDS" 1 50 || die "--rounds: 1..50"
in_range "$DURATION" 1 300 || die "--duration: 1..300 seconds"
in_range "$RATE" 1 200000 || die "--rate: 1..200000"
in_range "$CONC" 1 50000 || die "--conc: 1..50000"
in_range "$PORT_BASE" 1024 65000 || die "--port-base: 1024..65000"
if ! [[ $NICE =~ ^-?[0-9]{1,2}$ ]] || ((NICE < -20 || NICE > 19)); then die "--nice: -20..19"; fi
[[ -z $RINGLB_SERVICE_EXTRA || -r $RINGLB_SERVICE_EXTRA ]] || die "--ringlb-service-extra: cannot read $RINGLB_SERVICE_EXTRA"
[[ -z $RINGLB_ENGINE || $RINGLB_ENGINE =~ ^(auto|uring|epoll)$ ]] || die "--ringlb-engine: auto|uring|epoll"
[[ $RINGLB_ACCESS_LOG == off || $RINGLB_ACCESS_LOG == stderr || $RINGLB_ACCESS_LOG == /* ]] ||
	die "--ringlb-access-log: an absolute path, stderr or off"
[[ $RINGLB_ACCESS_LOG != *'"'* && $RINGLB_ACCESS_LOG != *\\* ]] || die "--ringlb-access-log: no quotes or backslashes"
[[ -z $RINGLB_FORWARDING || $RINGLB_FORWARDING =~ ^(auto|splice|uring-splice|copy|uring-copy)$ ]] ||
	die "--ringlb-forwarding: auto|splice|copy|uring-splice|uring-copy"

IFS=, read -ra PROXIES <<<"$PROXIES_ARG"
IFS=, read -ra WORKLOADS <<<"$WORKLOADS_ARG"
((${#PROXIES[@]})) || die "--proxies is empty"
((${#WORKLOADS[@]})) || die "--workloads is empty"
for p in "${PROXIES[@]}"; do valid_proxy "$p" || die "unknown proxy: $p"; done
for w in "${WORKLOADS[@]}"; do [[ ,$ALL_WORKLOADS, == *",$w,"* ]] || die "unknown workload: $w"; done

has_proxy() {
	local p
	for p in "${PROXIES[@]}"; do [[ $p == "$1" || ($1 == ringlb && $p == ringlb:*) ]] && return 0; done
	return 1
}
has_workload() {
	local w
	for w in "${WORKLOADS[@]}"; do [[ $w == "$1" ]] && return 0; done
	return 1
}

# Ports, all on 127.0.0.1.
P_FRONT_HTTP=$PORT_BASE P_B1=$((PORT_BASE + 1)) P_B2=$((PORT_BASE + 2))
P_FRONT_IPERF=$((PORT_BASE + 10)) P_I1=$((PORT_BASE + 11)) P_I2=$((PORT_BASE + 12))

# CPUs: the proxy alone on one, load generator and backends on the other.
if (($(nproc) >= 2)); then
	CPU_PROXY=0 CPU_LOAD=1
else
	warn "only one CPU: proxy and load share CPU 0; numbers will mean little"
	CPU_PROXY=0 CPU_LOAD=0
fi

# File descriptors: raise the soft limit to the hard one. A proxy needs two
# per connection (client and backend side), so the idle-connection count must
# fit in half of it with room for listeners, pipes and wrk's connections.
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
ulimit -n "$hard"
NOFILE=$(ulimit -n)
max_conc=$(((NOFILE - 600) / 2))
if ((CONC > max_conc)); then
	warn "--conc $CONC does not fit in ulimit -n $NOFILE (2 fds per proxied connection); using $max_conc"
	CONC=$max_conc
fi
PROXY_MAXCONN=$((CONC + 500))

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WRK_LUA=$ROOT/bench/wrk/report.lua
RINGLB_BIN=${RINGLB_BIN:-} RINGLB_BROKEN=""
PROXY_PID=""

# ---------------------------------------------------------------------------
# Results directory, temp directory, clean-up.
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-$ROOT/bench/results/$STAMP}
LOG_DIR=$OUT_DIR/logs
mkdir -p "$LOG_DIR"
CSV=$OUT_DIR/runs.csv
BENCH_TMP=$(mktemp -d /tmp/ringlb-bench.XXXXXX)
chmod 0755 "$BENCH_TMP" # nginx workers run as nobody and read the 1 MiB file

on_exit() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	remove_policy_rc
	if [[ -d $BENCH_TMP ]]; then
		# Keep the generated configs and the servers' own logs with the results.
		mkdir -p "$OUT_DIR/configs"
		(cd "$BENCH_TMP" && find . \( -name '*.conf' -o -name '*.cfg' -o -name '*.toml' -o -name 'error.log' \) \
			-exec cp --parents {} "$OUT_DIR/configs/" \;) 2>/dev/null || true
		rm -rf "$BENCH_TMP"
	fi
	((rc == 0)) || warn "exiting with status $rc; logs in $LOG_DIR"
	exit "$rc"
}
trap on_exit EXIT
trap 'warn "interrupted"; exit 130' INT
trap 'warn "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------
# Tools, binaries, ports.
ensure_packages
build_helpers
has_proxy ringlb && build_ringlb
for port in "$P_FRONT_HTTP" "$P_B1" "$P_B2" "$P_FRONT_IPERF" "$P_I1" "$P_I2"; do
	port_busy "$port" && die "127.0.0.1:$port is already in use (pick other ports with --port-base)"
done

start_backends

# Preflight: every proxy must come up and forward one request, else it is
# left out of the run (and the summary says why) instead of failing N times.
declare -A SKIPPED=()
RUN_PROXIES=()
for p in "${PROXIES[@]}"; do
	prepare_proxy "$p"
	if start_proxy "$p" "$LOG_DIR/preflight-${p//:/_}.log"; then
		stop_proxy
		RUN_PROXIES+=("$p")
	else
		SKIPPED[$p]=$PROXY_ERR
		warn "skipping $p: $PROXY_ERR"
	fi
done
((${#RUN_PROXIES[@]})) || die "no proxy came up"

{
	echo "# ringlb bench run $STAMP"
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- machine: $(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), kernel $(uname -r), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
	echo "- tools: $(haproxy -v 2>/dev/null | head -n1 | cut -d' ' -f1-3 || true); $(nginx -v 2>&1 | cut -d' ' -f3); wrk $(wrk --version 2>&1 | head -n1 | cut -d' ' -f2 || true); $(iperf3 --version 2>/dev/null | head -n1 | cut -d' ' -f1-2 || true)"
	echo "- ringlb: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') ($(git -C "$ROOT" rev-parse --abbrev-ref HEAD 2>/dev/null || echo '?'))"
	echo "- parameters: ${ROUNDS} round(s) × ${DURATION} s per run, interleaved; proxy pinned to CPU $CPU_PROXY with one worker/thread; wrk/iperf3/openloop and the nginx backend (one worker) pinned to CPU $CPU_LOAD; rate=${RATE}/s; conc=${CONC} idle connections; ulimit -n $NOFILE; nice $NICE"
	echo "- command: scripts/bench.sh $ORIG_ARGS"
	echo "- load average at start (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
	for p in "${RUN_PROXIES[@]}"; do
		if [[ $(proxy_kind "$p") == ringlb ]]; then
			# ringlb says which engine and forwarding it really runs.
			echo "- $p runs: $(grep -m1 -o 'starting workers.*' "$LOG_DIR/preflight-${p//:/_}.log" || echo '(no "starting workers" line in its log)')"
		fi
	done
	for p in "${!SKIPPED[@]}"; do echo "- **$p skipped**: ${SKIPPED[$p]}"; done
} >"$OUT_DIR/meta.md"

echo "round,workload,proxy,secs,unit,work,throughput,p50_us,p99_us,p999_us,cpu_us,cpu_per_unit_us,hwm_kib,errors,rss_before_kib,rss_with_kib,rss_after_kib,status,note" >"$CSV"

total=$((ROUNDS * ${#WORKLOADS[@]} * ${#RUN_PROXIES[@]}))
log "$total runs: ${ROUNDS} round(s) × [${WORKLOADS[*]}] × [${RUN_PROXIES[*]}], ${DURATION} s each (about $((total * (DURATION + 3) / 60 + 1)) min)"

# run_one ROUND WORKLOAD PROXY: fresh proxy, one measured run, one CSV row.
run_one() {
	local round=$1 w=$2 p=$3 status=ok prefix
	prefix=$LOG_DIR/r$round-$w-${p//:/_}
	reset_result
	if ! start_proxy "$p" "$prefix.proxy.log"; then
		status=failed R_NOTE="proxy did not start: $PROXY_ERR"
	elif ! "wl_$w" "$p" "$prefix"; then
		status=failed
	fi
	if [[ -n $PROXY_PID ]]; then
		if kill -0 "$PROXY_PID" 2>/dev/null; then
			R_HWM=$(mem_kib "$PROXY_PID" VmHWM)
		else
			status=failed R_NOTE="proxy died during the run; $R_NOTE"
		fi
	fi
	stop_proxy
	R_NOTE=${R_NOTE//,/;}
	printf '%s\n' "$round,$w,$p,$DURATION,$R_UNIT,$R_WORK,$R_TP,$R_P50,$R_P99,$R_P999,$R_CPU,$R_CPU_UNIT,$R_HWM,$R_ERR,$R_RSS_B,$R_RSS_W,$R_RSS_A,$status,${R_NOTE//$'\n'/ }" >>"$CSV"
	if [[ $status == ok ]]; then
		log "r$round $w $p: $R_TP $R_UNIT/s p50=${R_P50:-–}µs p99=${R_P99:-–}µs cpu=${R_CPU_UNIT:-–}µs/$R_UNIT errors=$R_ERR ${R_NOTE}"
	else
		warn "r$round $w $p: FAILED: $R_NOTE"
	fi
}

n=0
for ((round = 1; round <= ROUNDS; round++)); do
	for w in "${WORKLOADS[@]}"; do
		for p in "${RUN_PROXIES[@]}"; do
			n=$((n + 1))
			log "[$n/$total] round $round: $w via $p"
			run_one "$round" "$w" "$p"
			sleep 0.3
		done
	done
done

echo "- load average at end (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT_DIR/meta.md"
{
	cat "$OUT_DIR/meta.md"
	echo
	"$TARGET_DIR/release/benchreport" "$CSV"
	echo
	echo "Workloads: ka = wrk -t1 -c64 keep-alive GET of 100 B; close = same with a new connection per request;"
	echo "bulk = wrk -c4 GET of 1 MiB; iperf = one iperf3 TCP stream; rate = open-loop ${RATE} req/s over 16"
	echo "keep-alive connections; conc = wrk -c64 keep-alive while ${CONC} idle connections are held."
	echo "Proxy CPU = utime+stime of the proxy's processes over the measured window, per request or per MiB."
	echo
	echo "Raw runs: ${CSV#"$ROOT"/}"
} >"$OUT_DIR/summary.md"
# SVG charts of the table (CPU per unit and throughput per workload),
# linked from the summary. A chart that cannot be drawn costs no run.
python3 "$ROOT/scripts/bench-charts.py" "$CSV" --summary >/dev/null ||
	warn "no charts: scripts/bench-charts.py failed (the tables above are complete)"
echo
cat "$OUT_DIR/summary.md"
((QUICK)) && log "quick run: one short round; use a full run for numbers to quote"
log "done: $OUT_DIR"

# Exit status for CI: non-zero when a run failed or a selected proxy could not
# be started at all. The last line is the plain "N passed, N failed" count.
passed=$(awk -F, 'NR > 1 && $18 == "ok"' "$CSV" | wc -l)
failed=$(($(awk 'NR > 1' "$CSV" | wc -l) - passed + ${#SKIPPED[@]} * ROUNDS * ${#WORKLOADS[@]}))
echo "bench: $passed passed, $failed failed"
((failed == 0)) || exit 3
