#!/usr/bin/env bash
# Long runs of the hostile-input targets (lb-core/src/fuzz.rs).
#   scripts/fuzz.sh TARGET [CASES]     TARGET: config health admin join handover proxy_header all
# CASES per property (default 100000; `cargo test` runs 512). A failure
# prints the shrunk input: commit it as a regression test next to the
# target. RINGLB_FUZZ_PROFILE=release builds optimised (more cases/s,
# longer build).
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh TARGET [CASES] (config health admin join handover proxy_header all)}
cases=${2:-100000}
cd "$(dirname "$0")/.."
profile=()
[[ ${RINGLB_FUZZ_PROFILE:-} == release ]] && profile=(--release)

filter_of() {
    case $1 in
    config) echo "config::fuzz:: --skip the_seeds" ;;
    health) echo "health::probe::fuzz::" ;;
    admin) echo "admin::fuzz:: --skip admin::fuzz::join::" ;;
    join) echo "admin::fuzz::join::" ;;
    handover) echo "handover::fuzz::" ;;
    proxy_header) echo "proxy_header::parse::fuzz::" ;;
    *) echo "unknown target $1 (config health admin join handover proxy_header all)" >&2; exit 2 ;;
    esac
}

run() {
    local start=$SECONDS
    # shellcheck disable=SC2046 # the filter is several words on purpose
    RINGLB_FUZZ_CASES=$cases cargo test -q -p lb-core --lib "${profile[@]}" -- $(filter_of "$1")
    echo "fuzz $1: $cases cases per property in $((SECONDS - start)) s"
}

if [[ $target == all ]]; then
    for t in config health admin join handover proxy_header; do run "$t"; done
else
    run "$target"
fi
