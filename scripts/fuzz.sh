#!/usr/bin/env bash
# Long runs of the hostile-input targets.
#   scripts/fuzz.sh TARGET [CASES]           proptest mode (lb-core/src/fuzz.rs)
#   scripts/fuzz.sh --afl TARGET SECONDS     coverage-guided mode (fuzz/, afl)
# TARGET: config health admin join handover proxy_header tls_hello all.
#
# proptest mode: CASES per property (default 100000; `cargo test` runs
# 512). A failure prints the shrunk input: commit it as a regression test
# next to the target. RINGLB_FUZZ_PROFILE=release builds optimised (more
# cases/s, longer build).
#
# afl mode: needs cargo-afl (`cargo install cargo-afl`; it builds its own
# AFL++). Builds fuzz/ with `cargo afl build --release`, seeds afl from
# lb-core/src/fuzz/corpus/TARGET/ with the target's dictionary, fuzzes for
# SECONDS (output in target/afl/TARGET, fresh each run), then prints the
# executions, the corpus size, crashes and hangs, and minimises each crash
# (target/afl/TARGET/min/). Exit 1 on any crash or hang. Worth keeping:
# small new entries of target/afl/TARGET/default/queue/ copied into the
# committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(config health admin join handover proxy_header tls_hello)

# ---- proptest mode ----
filter_of() {
    case $1 in
    config) echo "config::fuzz:: --skip the_seeds" ;;
    health) echo "health::probe::fuzz::" ;;
    admin) echo "admin::fuzz:: --skip admin::fuzz::join::" ;;
    join) echo "admin::fuzz::join::" ;;
    handover) echo "handover::fuzz::" ;;
    proxy_header) echo "proxy_header::parse::fuzz::" ;;
    tls_hello) echo "tls_hello::fuzz::" ;;
    *) echo "unknown target $1 (${targets[*]} all)" >&2; exit 2 ;;
    esac
}

run_proptest() {
    local cases=$2 start=$SECONDS profile=()
    [[ ${RINGLB_FUZZ_PROFILE:-} == release ]] && profile=(--release)
    # shellcheck disable=SC2046 # the filter is several words on purpose
    RINGLB_FUZZ_CASES=$cases cargo test -q -p lb-core --lib "${profile[@]}" -- $(filter_of "$1")
    echo "fuzz $1: $cases cases per property in $((SECONDS - start)) s"
}

# ---- afl mode ----
# The Rust source holding a target's dictionary (`static DICT`).
dict_source() {
    case $1 in
    config) echo lb-core/src/config/fuzz.rs ;;
    health) echo lb-core/src/health/fuzz.rs ;;
    admin) echo lb-core/src/admin/fuzz.rs ;;
    join) echo lb-core/src/admin/fuzz/join.rs ;;
    handover) echo lb-core/src/handover/fuzz.rs ;;
    proxy_header) echo lb-core/src/proxy_header/parse_fuzz.rs ;;
    tls_hello) echo lb-core/src/tls_hello/fuzz.rs ;;
    *) echo "unknown target $1 (${targets[*]} all)" >&2; exit 2 ;;
    esac
}

# Writes the `static DICT` byte strings of $1's source as an afl -x file
# (one "…" token a line, \xNN for anything not plain ASCII).
write_dict() {
    python3 - "$(dict_source "$1")" "$2" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
block = src[src.index("static DICT"):]
block = block[:block.index("];")]
esc = {"n": 10, "r": 13, "t": 9, "0": 0, "\\": 92, '"': 34, "'": 39}
with open(sys.argv[2], "w") as out:
    for i, lit in enumerate(re.findall(r'b"((?:[^"\\]|\\.)*)"', block)):
        data, j = bytearray(), 0
        while j < len(lit):
            if lit[j] == "\\":
                if lit[j + 1] == "x":
                    data.append(int(lit[j + 2:j + 4], 16)); j += 4
                else:
                    data.append(esc[lit[j + 1]]); j += 2
            else:
                data += lit[j].encode(); j += 1
        shown = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else "\\x%02x" % b for b in data)
        out.write('w%d="%s"\n' % (i, shown))
PY
}

stat_of() { sed -n "s/^$1 *: *//p" "$2"; }

run_afl() {
    local target=$1 seconds=$2
    dict_source "$target" >/dev/null
    local out=target/afl/$target
    rm -rf "$out"
    mkdir -p "$out"
    write_dict "$target" "$out/dict"
    # -t: an input judged in over 2 s is a hang (the proptest PER_INPUT);
    # -m: over 1 GiB of address space is a crash (bounded memory).
    AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
        AFL_NO_UI=1 AFL_QUIET=1 \
        cargo afl fuzz -V "$seconds" -t 2000 -m 1024 \
        -i "lb-core/src/fuzz/corpus/$target" -o "$out" -x "$out/dict" \
        "fuzz/target/release/$target" >"$out/afl.log" 2>&1 || {
        echo "afl-fuzz failed on $target; its log:" >&2
        tail -30 "$out/afl.log" >&2
        return 2
    }
    local stats=$out/default/fuzzer_stats
    local execs paths crashes hangs
    execs=$(stat_of execs_done "$stats")
    paths=$(stat_of corpus_count "$stats")
    crashes=$(stat_of saved_crashes "$stats")
    hangs=$(stat_of saved_hangs "$stats")
    echo "afl $target: $execs executions in $(stat_of run_time "$stats") s" \
        "($(stat_of execs_per_sec "$stats")/s), corpus $paths paths," \
        "$crashes crashes, $hangs hangs (output in $out)"
    if ((crashes > 0)); then
        mkdir -p "$out/min"
        for crash in "$out"/default/crashes/id:*; do
            local min
            min=$out/min/$(basename "$crash" | cut -d, -f1 | tr : _)
            AFL_NO_AFFINITY=1 cargo afl tmin -t 2000 -m 1024 -i "$crash" -o "$min" \
                -- "fuzz/target/release/$target" >/dev/null 2>&1 || cp "$crash" "$min"
            echo "  crash: $min"
        done
    fi
    if ((hangs > 0)); then
        for hang in "$out"/default/hangs/id:*; do echo "  hang: $hang"; done
    fi
    ((crashes == 0 && hangs == 0))
}

if [[ ${1:-} == --afl ]]; then
    target=${2:?usage: scripts/fuzz.sh --afl TARGET SECONDS (${targets[*]} all)}
    seconds=${3:?usage: scripts/fuzz.sh --afl TARGET SECONDS}
    command -v cargo-afl >/dev/null || {
        echo "cargo-afl is not installed: cargo install cargo-afl" >&2
        exit 2
    }
    (cd fuzz && cargo afl build --release --quiet)
    status=0
    if [[ $target == all ]]; then
        for t in "${targets[@]}"; do run_afl "$t" "$seconds" || status=1; done
    else
        run_afl "$target" "$seconds" || status=1
    fi
    exit $status
fi

target=${1:?usage: scripts/fuzz.sh TARGET [CASES] | --afl TARGET SECONDS (${targets[*]} all)}
cases=${2:-100000}
if [[ $target == all ]]; then
    for t in "${targets[@]}"; do run_proptest "$t" "$cases"; done
else
    run_proptest "$target" "$cases"
fi
