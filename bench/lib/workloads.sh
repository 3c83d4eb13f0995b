# shellcheck shell=bash
# Variables set here are read by scripts/bench.sh and the other helpers.
# shellcheck disable=SC2034
# The workloads. Each wl_NAME PROXY LOGPREFIX runs one measured run against
# the proxy already started (PROXY_PID, empty for direct) and fills the R_*
# result variables; it returns non-zero (reason in R_NOTE) when the run could
# not be measured. Every external command is bounded by `timeout`.
# Sourced by scripts/bench.sh.

reset_result() {
	R_UNIT=req R_WORK="" R_TP="" R_P50="" R_P99="" R_P999="" R_CPU="" R_CPU_UNIT=""
	R_HWM="" R_ERR="" R_RSS_B="" R_RSS_W="" R_RSS_A="" R_NOTE=""
}

# note WORDS…: appends to the run's note.
note() { R_NOTE+="${R_NOTE:+ }$*"; }

# Hypervisor steal time of the whole machine, in clock ticks.
steal_ticks() { awk '$1 == "cpu" { print $9; exit }' /proc/stat; }

# The measured window: cpu_begin … cpu_end WORK. Gives the proxy's CPU time
# (µs, and per unit of WORK), and notes the window's wall time and the
# machine's steal. A window much longer than planned means the machine was
# paused or starved (seen here: a VM snapshot froze everything for 4 min):
# the run is then discarded (failed) rather than averaged in.
cpu_begin() {
	CPU0=""
	[[ -z $PROXY_PID ]] || CPU0=$(cpu_us "$PROXY_PID")
	T0=$EPOCHREALTIME STEAL0=$(steal_ticks)
}
cpu_end() {
	if [[ -n $CPU0 && -n $PROXY_PID ]]; then
		R_CPU=$(($(cpu_us "$PROXY_PID") - CPU0))
		if [[ -n $1 ]] && [[ $(calc "$1 > 0" %d) == 1 ]]; then
			R_CPU_UNIT=$(calc "$R_CPU / $1" %.2f)
		fi
	fi
	local wall steal
	wall=$(calc "$EPOCHREALTIME - $T0" %.1f)
	steal=$(calc "100 * ($(steal_ticks) - $STEAL0) / ($wall * $NCPU * $CLK_TCK)" %.0f)
	note "wall_s=$wall steal_pct=$steal"
	if [[ $(calc "$wall > $DURATION * 1.5 + 5" %d) == 1 ]]; then
		R_NOTE="stalled: the ${DURATION} s window took ${wall} s (machine paused or starved); $R_NOTE"
		return 1
	fi
}

# run_wrk OUT CONNS SECS URL [WRK ARGS…]: one pinned wrk run; fills W_*
# from the summary line bench/wrk/report.lua prints.
run_wrk() {
	local out=$1 conns=$2 secs=$3 url=$4
	shift 4
	pinned "$CPU_LOAD" timeout --foreground -k 5 $((secs + 30)) \
		wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$WRK_LUA" "$@" "$url" >"$out" 2>&1 || {
		R_NOTE="wrk failed: $(tail -n 2 "$out" | tr '\n' ' ')"
		return 1
	}
	local line
	line=$(grep '^WRK ' "$out") || {
		R_NOTE="no summary line from wrk"
		return 1
	}
	W_REQ=$(kv "$line" requests)
	W_SECS=$(calc "$(kv "$line" duration_us) / 1000000" %.6f)
	W_BYTES=$(kv "$line" bytes)
	W_ERR=$(($(kv "$line" connect) + $(kv "$line" read) + $(kv "$line" write) + $(kv "$line" timeout) + $(kv "$line" status)))
	W_P50=$(kv "$line" p50_us)
	W_P99=$(kv "$line" p99_us)
	W_P999=$(kv "$line" p999_us)
}

# A short unmeasured run so every proxy is measured warm.
warm_http() {
	pinned "$CPU_LOAD" timeout --foreground -k 5 30 \
		wrk -t1 -c16 -d1s "http://127.0.0.1:$(http_port "$1")/" >/dev/null 2>&1 || true
}

# Requests-per-second style result from the last run_wrk.
fill_from_wrk() {
	R_WORK=$W_REQ
	R_TP=$(calc "$W_REQ / $W_SECS" %.1f)
	R_P50=$W_P50 R_P99=$W_P99 R_P999=$W_P999 R_ERR=$W_ERR
}

wl_ka() {
	warm_http "$1"
	cpu_begin
	run_wrk "$2.wrk.txt" 64 "$DURATION" "http://127.0.0.1:$(http_port "$1")/" || return 1
	fill_from_wrk
	cpu_end "$R_WORK"
}

wl_close() {
	warm_http "$1"
	cpu_begin
	run_wrk "$2.wrk.txt" 64 "$DURATION" "http://127.0.0.1:$(http_port "$1")/" \
		-H 'Connection: close' || return 1
	fill_from_wrk
	cpu_end "$R_WORK"
}

wl_bulk() {
	warm_http "$1"
	cpu_begin
	run_wrk "$2.wrk.txt" 4 "$DURATION" "http://127.0.0.1:$(http_port "$1")/1m" || return 1
	R_UNIT=MiB
	R_WORK=$(calc "$W_BYTES / 1048576" %.1f)
	R_TP=$(calc "$W_BYTES / 1048576 / $W_SECS" %.1f)
	R_P50=$W_P50 R_P99=$W_P99 R_P999=$W_P999 R_ERR=$W_ERR
	cpu_end "$R_WORK"
}

wl_iperf() {
	local out=$2.iperf.json attempt err=""
	R_UNIT=MiB
	for attempt in 1 2 3; do
		cpu_begin
		pinned "$CPU_LOAD" timeout --foreground -k 5 $((DURATION + 30)) \
			iperf3 -c 127.0.0.1 -p "$(iperf_port "$1")" -t "$DURATION" -J >"$out" 2>&1 || true
		err=$(jq -r '.error // empty' "$out" 2>/dev/null) || err="iperf3 printed no JSON: $(head -c 200 "$out")"
		[[ -z $err ]] && break
		# The server may still be finishing the previous test.
		sleep 1
	done
	if [[ -n $err ]]; then
		R_NOTE="iperf3: $err"
		return 1
	fi
	local bytes secs retr
	bytes=$(jq '.end.sum_received.bytes' "$out")
	secs=$(jq '.end.sum_received.seconds' "$out")
	retr=$(jq '.end.sum_sent.retransmits // 0' "$out")
	R_WORK=$(calc "$bytes / 1048576" %.1f)
	R_TP=$(calc "$bytes / 1048576 / $secs" %.1f)
	R_ERR=0
	note "retransmits=$retr attempts=$attempt"
	cpu_end "$R_WORK"
}

wl_rate() {
	warm_http "$1"
	local out=$2.openloop.txt line
	cpu_begin
	pinned "$CPU_LOAD" timeout --foreground -k 5 $((DURATION + 30)) \
		"$TARGET_DIR/release/openloop" --url "http://127.0.0.1:$(http_port "$1")/" \
		--rate "$RATE" --duration "$DURATION" --warmup 0 --connections 16 >"$out" 2>&1 || {
		R_NOTE="openloop failed: $(tail -n 2 "$out" | tr '\n' ' ')"
		return 1
	}
	line=$(grep '^OPENLOOP ' "$out") || {
		R_NOTE="no summary line from openloop"
		return 1
	}
	# The proxy's CPU covers every request sent; errors include requests the
	# schedule could not send before the hard stop.
	R_WORK=$(($(kv "$line" sent) + $(kv "$line" errors)))
	R_TP=$(kv "$line" achieved_rps)
	R_P50=$(kv "$line" p50_us) R_P99=$(kv "$line" p99_us) R_P999=$(kv "$line" p999_us)
	R_ERR=$(($(kv "$line" errors) + $(kv "$line" non2xx) + $(kv "$line" unsent)))
	note "target_rps=$RATE"
	cpu_end "$R_WORK"
}

wl_conc() {
	local ready=$BENCH_TMP/idle.ready stop=$BENCH_TMP/idle.stop log=$2.idleconns.txt pid line a b
	rm -f "$ready" "$stop"
	warm_http "$1"
	[[ -z $PROXY_PID ]] || R_RSS_B=$(mem_kib "$PROXY_PID" VmRSS)
	start_bg "$log" "$CPU_LOAD" "$TARGET_DIR/release/idleconns" \
		--addr "127.0.0.1:$(http_port "$1")" --count "$CONC" \
		--ready-file "$ready" --stop-file "$stop" --max-secs $((DURATION + 150))
	pid=$BG_PID
	if ! wait_file "$ready" 120 "$pid"; then
		R_NOTE="idle connections not opened within 120 s"
		stop_pid "$pid"
		return 1
	fi
	[[ -z $PROXY_PID ]] || a=$(mem_kib "$PROXY_PID" VmRSS)
	cpu_begin
	if ! run_wrk "$2.wrk.txt" 64 "$DURATION" "http://127.0.0.1:$(http_port "$1")/"; then
		stop_pid "$pid"
		return 1
	fi
	fill_from_wrk
	if ! cpu_end "$R_WORK"; then
		stop_pid "$pid"
		return 1
	fi
	if [[ -n $PROXY_PID ]]; then
		b=$(mem_kib "$PROXY_PID" VmRSS)
		R_RSS_W=$((a > b ? a : b))
	fi
	touch "$stop"
	wait_pid_exit "$pid" 60 || warn "idleconns did not exit after its stop file"
	stop_pid "$pid"
	line=$(grep '^IDLECONNS ' "$log") || {
		R_NOTE="no summary line from idleconns: $(tail -c 200 "$log" | tr '\n' ' ')"
		return 1
	}
	note "target=$CONC opened=$(kv "$line" opened) alive=$(kv "$line" alive) open_ms=$(kv "$line" open_ms)"
	# An idle connection lost while held is an error too.
	R_ERR=$((R_ERR + CONC - $(kv "$line" alive)))
	if [[ -n $PROXY_PID ]]; then
		sleep 2
		R_RSS_A=$(mem_kib "$PROXY_PID" VmRSS)
	fi
}
