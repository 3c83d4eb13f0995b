# shellcheck shell=bash
# Variables set here are read by scripts/bench.sh and the other helpers.
# shellcheck disable=SC2034
# Installing the tools the bench needs and building the Rust helpers (and
# ringlb). Sourced by scripts/bench.sh.

# Set when we created /usr/sbin/policy-rc.d ourselves (removed on exit).
POLICY_RC_CREATED=0

# ensure_packages: installs (Debian packages) whatever the selected proxies
# and workloads need and is not there yet: one `apt-get update`, one install.
ensure_packages() {
	local -a pkgs=()
	need_cmd() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
	need_cmd curl curl
	need_cmd ss iproute2
	need_cmd taskset util-linux
	need_cmd pgrep procps
	need_cmd timeout coreutils
	need_cmd awk gawk
	need_cmd wrk wrk
	need_cmd nginx nginx # the backends
	if has_proxy haproxy || has_proxy haproxy-splice; then need_cmd haproxy haproxy; fi
	if has_proxy nginx && [[ ! -e $NGINX_STREAM_MODULE ]]; then pkgs+=(libnginx-mod-stream); fi
	if has_workload iperf; then
		need_cmd iperf3 iperf3
		need_cmd jq jq
	fi
	((${#pkgs[@]})) || return 0
	if ((NO_INSTALL)); then
		die "missing packages: ${pkgs[*]} (and --no-install was given)"
	fi
	[[ $(id -u) == 0 ]] || die "missing packages: ${pkgs[*]}; run as root or install them"
	command -v apt-get >/dev/null || die "missing packages: ${pkgs[*]} and no apt-get here"
	log "installing: ${pkgs[*]}"
	# Debian starts daemons from postinst scripts; the bench wants no system
	# nginx/haproxy/iperf3 running on the side. policy-rc.d exit 101 forbids it.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOG_DIR/apt-update.log" 2>&1 ||
		die "apt-get update failed (see $LOG_DIR/apt-update.log)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >"$LOG_DIR/apt-install.log" 2>&1 ||
		die "apt-get install failed (see $LOG_DIR/apt-install.log)"
	remove_policy_rc
	if has_proxy nginx && [[ ! -e $NGINX_STREAM_MODULE ]]; then
		die "nginx stream module not found at $NGINX_STREAM_MODULE"
	fi
}

remove_policy_rc() {
	if ((POLICY_RC_CREATED)); then
		rm -f /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=0
	fi
}

# build_helpers: release build of the bench crate's binaries.
build_helpers() {
	if ((NO_BUILD)) && [[ -x $TARGET_DIR/release/openloop ]]; then return 0; fi
	command -v cargo >/dev/null || die "cargo not found (needed to build the bench helpers)"
	log "building bench helpers (cargo build --release -p bench --bins)"
	(cd "$ROOT" && cargo build --release -p bench --bins) >"$LOG_DIR/build-bench.log" 2>&1 ||
		die "building the bench helpers failed (see $LOG_DIR/build-bench.log)"
}

# build_ringlb: release build of ringlb; on failure the ringlb proxies are
# skipped (reported), the rest of the run goes on.
build_ringlb() {
	RINGLB_BIN=${RINGLB_BIN:-$TARGET_DIR/release/ringlb}
	if ((NO_BUILD)); then
		[[ -x $RINGLB_BIN ]] && return 0
		RINGLB_BROKEN="no binary at $RINGLB_BIN (and --no-build)"
		return 0
	fi
	log "building ringlb (cargo build --release -p lb-bin)"
	if ! (cd "$ROOT" && cargo build --release -p lb-bin) >"$LOG_DIR/build-ringlb.log" 2>&1; then
		RINGLB_BROKEN="cargo build --release -p lb-bin failed (see build-ringlb.log)"
	elif [[ ! -x $RINGLB_BIN ]]; then
		RINGLB_BROKEN="no binary at $RINGLB_BIN after the build"
	fi
}
