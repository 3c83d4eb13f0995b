# shellcheck shell=bash
# Variables set here are read by scripts/bench.sh and the other helpers.
# shellcheck disable=SC2034
# Common helpers for scripts/bench.sh: logging, process bookkeeping and
# clean-up, /proc sampling, small arithmetic. Sourced, never run.

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[bench %(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; }
die() {
	printf '[bench] ERROR: %s\n' "$*" >&2
	exit 1
}

# Floating point via awk: calc '1/3' → 0.333 (3 decimals unless a format is
# given). The parentheses keep a comparison from turning into a redirection.
calc() { awk -v fmt="${2:-%.3f}" "BEGIN { printf fmt, ($1) }"; }

# pinned CPU CMD...: CMD on CPU only, at the bench's nice level (exec chain,
# so $! of a backgrounded `pinned` is CMD's own pid).
pinned() {
	local cpu=$1
	shift
	nice -n "$NICE" taskset -c "$cpu" "$@"
}

# Value of KEY in a line of `key=value` words: kv LINE KEY.
kv() {
	local w
	for w in $1; do
		if [[ $w == "$2="* ]]; then
			printf '%s' "${w#*=}"
			return 0
		fi
	done
	return 1
}

# ---------------------------------------------------------------------------
# Processes we started. Everything long-lived is started through start_bg so
# that clean-up can stop it by pid (never by name).
STARTED_PIDS=()

# start_bg LOGFILE CPU CMD... : runs CMD in the background, pinned to CPU at
# the bench's nice level, output to LOGFILE. nice and taskset exec, so
# $BG_PID is CMD's own pid.
start_bg() {
	local logfile=$1 cpu=$2
	shift 2
	nice -n "$NICE" taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
	BG_PID=$!
	STARTED_PIDS+=("$BG_PID")
}

# stop_pid PID: SIGTERM, up to 5 s grace, then SIGKILL; reaps it.
stop_pid() {
	local pid=$1 i
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			warn "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${STARTED_PIDS[@]}"; do
		[[ $p == "$pid" ]] || keep+=("$p")
	done
	STARTED_PIDS=("${keep[@]}")
}

# Called from the EXIT trap: stop everything we started (newest first).
stop_all() {
	local i
	for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${STARTED_PIDS[i]}"
	done
}

# ---------------------------------------------------------------------------
# /proc sampling.

CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# proc_tree PID: PID and all its descendants, one per line.
proc_tree() {
	local pid=$1 child
	[[ -d /proc/$pid ]] || return 0
	printf '%s\n' "$pid"
	for child in $(pgrep -P "$pid" 2>/dev/null || true); do
		proc_tree "$child"
	done
}

# cpu_us PID: user+system CPU time of PID and its descendants, in µs
# (utime and stime from /proc/PID/stat: whole thread groups, including
# io_uring/io-wq worker threads).
cpu_us() {
	local total=0 p s f
	for p in $(proc_tree "$1"); do
		s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		s=${s##*) } # drop "pid (comm) ": comm may hold spaces
		read -ra f <<<"$s"
		total=$((total + f[11] + f[12]))
	done
	echo $((total * 1000000 / CLK_TCK))
}

# mem_kib PID FIELD: sum of FIELD (VmRSS, VmHWM) over PID and descendants, KiB.
mem_kib() {
	local total=0 p v
	for p in $(proc_tree "$1"); do
		v=$(awk -v k="$2:" '$1 == k { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
		total=$((total + ${v:-0}))
	done
	echo "$total"
}

# port_busy PORT: true when something listens on 127.0.0.1:PORT (or any addr).
port_busy() {
	[[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
}

# wait_listen PID PORT SECS: wait until PORT listens; fails early if PID dies.
wait_listen() {
	local pid=$1 port=$2 secs=$3 i
	for ((i = 0; i < secs * 20; i++)); do
		kill -0 "$pid" 2>/dev/null || return 1
		port_busy "$port" && return 0
		sleep 0.05
	done
	return 1
}

# wait_file PATH SECS [PID]: wait until PATH exists (and PID, if given, lives).
wait_file() {
	local path=$1 secs=$2 pid=${3:-} i
	for ((i = 0; i < secs * 20; i++)); do
		[[ -s $path ]] && return 0
		if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
			[[ -s $path ]]
			return
		fi
		sleep 0.05
	done
	return 1
}

# wait_pid_exit PID SECS: wait for PID (our child) to exit; fails on timeout.
wait_pid_exit() {
	local pid=$1 secs=$2 i
	for ((i = 0; i < secs * 20; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}
