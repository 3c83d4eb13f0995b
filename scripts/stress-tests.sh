#!/usr/bin/env bash
# Runs the test suite several times while busy loops take CPUs away from
# it, to bring out races that a quiet machine hides (CI machines are shared
# and noisy). A test that fails here is a bug: in ringlb (this is how an
# io_uring removal race that left closed sockets open was found) or in the
# test (a timing assumption).
#
#   scripts/stress-tests.sh [--rounds N] [--hogs K] [-- cargo test args]
#
# Defaults: 3 rounds, 1 busy loop (of 2 CPUs), the whole workspace. Each
# round's output is kept in $OUT (default: a new directory under /tmp);
# the summary lists every failed test. Exit status: 0 when every round
# passed. Bounded: N rounds of the suite, each under its own time limit.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
hogs=1
round_limit=900
args=(--workspace)
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --hogs) hogs="$2"; shift 2 ;;
    --) shift; args=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ && "$hogs" =~ ^[0-9]+$ ]]; then
  echo "--rounds takes a whole number from 1, --hogs one from 0" >&2; exit 2
fi

out="${OUT:-$(mktemp -d /tmp/ringlb-stress.XXXXXX)}"
mkdir -p "$out"
pids=()
cleanup() { [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# Build first, without the hogs: only the test runs are under pressure.
cargo test --no-run "${args[@]}" >"$out/build.log" 2>&1 || {
  echo "build failed: $out/build.log" >&2; exit 1; }

for _ in $(seq 1 "$hogs"); do
  ( while :; do :; done ) &
  pids+=("$!")
done

failed=0
for i in $(seq 1 "$rounds"); do
  start=$(date +%s)
  rc=0
  timeout "$round_limit" cargo test --no-fail-fast "${args[@]}" >"$out/round$i.log" 2>&1 || rc=$?
  took=$(( $(date +%s) - start ))
  if [ "$rc" -eq 0 ]; then
    echo "round $i: passed (${took}s)"
  else
    failed=$((failed + 1))
    echo "round $i: FAILED, exit $rc (${took}s), $out/round$i.log"
    grep -E '^test .* FAILED$' "$out/round$i.log" | sed 's/^/  /' || true
  fi
done
echo "$((rounds - failed)) of $rounds rounds passed under $hogs busy loop(s); logs in $out"
[ "$failed" -eq 0 ]
