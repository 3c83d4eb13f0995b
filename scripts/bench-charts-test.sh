#!/usr/bin/env bash
# Test of scripts/bench-charts.py: on a committed runs.csv it writes one
# CPU and one throughput chart per workload, each a well-formed SVG whose
# bars carry the median, min and max of the CSV's ok runs (checked against
# Python's statistics module); names that need escaping stay well-formed;
# failed runs and empty cells are left out; --summary twice keeps one
# "## Charts" section; a file that is not a runs.csv is refused with exit
# status 2 and a message, no traceback. Standard library only.
#
#   scripts/bench-charts-test.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

REPO="$repo" WORK="$work" python3 - <<'PY'
import csv, os, shutil, statistics, subprocess, sys
import xml.etree.ElementTree as ET

repo, work = os.environ["REPO"], os.environ["WORK"]
script = os.path.join(repo, "scripts", "bench-charts.py")
NS = "{http://www.w3.org/2000/svg}"

def run(*args):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60)

def bars(path):
    root = ET.parse(path).getroot()  # raises on malformed XML
    assert root.tag == NS + "svg", (path, root.tag)
    assert root.find(NS + "title") is not None and root.find(NS + "desc") is not None, path
    return {g.get("data-proxy"): g for g in root.iter(NS + "g") if g.get("class") == "bar"}

# 1. A committed full run.
src = os.path.join(repo, "bench", "results", "final")
out = os.path.join(work, "final")
os.makedirs(out)
shutil.copy(os.path.join(src, "runs.csv"), out)
shutil.copy(os.path.join(src, "summary.md"), out)
r = run(os.path.join(out, "runs.csv"), "--summary")
assert r.returncode == 0, r.stderr
rows = [x for x in csv.DictReader(open(os.path.join(out, "runs.csv"))) if x["status"] == "ok"]
workloads = sorted({x["workload"] for x in rows})
checked = 0
for w in workloads:
    for key, column in (("cpu", "cpu_per_unit_us"), ("throughput", "throughput")):
        path = os.path.join(out, f"chart-{w}-{key}.svg")
        got = bars(path)
        want = {}
        for x in rows:
            if x["workload"] == w and x[column]:
                want.setdefault(x["proxy"], []).append(float(x[column]))
        assert set(got) == set(want), (path, sorted(got), sorted(want))
        for proxy, values in want.items():
            g = got[proxy]
            assert abs(float(g.get("data-median")) - statistics.median(values)) < 1e-9, (path, proxy)
            assert float(g.get("data-min")) == min(values) and float(g.get("data-max")) == max(values)
            assert int(g.get("data-runs")) == len(values)
            checked += 1
print(f"final/runs.csv: {2 * len(workloads)} charts, {checked} bars match the CSV's medians, mins and maxes")
assert "direct" not in bars(os.path.join(out, "chart-ka-cpu.svg")), "direct has no proxy CPU"

summary = open(os.path.join(out, "summary.md")).read()
assert summary.startswith("# ringlb bench run"), "the summary's own text is kept"
r = run(os.path.join(out, "runs.csv"), "--summary")
assert r.returncode == 0, r.stderr
again = open(os.path.join(out, "summary.md")).read()
assert again == summary and again.count("## Charts") == 1, "--summary twice: one section"
for w in workloads:
    assert f"(chart-{w}-cpu.svg)" in again and f"(chart-{w}-throughput.svg)" in again
print("summary.md links every chart, once")

# 2. Names that need escaping, a failed run, an empty cell.
odd = os.path.join(work, "odd")
os.makedirs(odd)
with open(os.path.join(odd, "runs.csv"), "w") as f:
    f.write("round,workload,proxy,secs,unit,work,throughput,p50_us,p99_us,p999_us,cpu_us,cpu_per_unit_us,hwm_kib,errors,rss_before_kib,rss_with_kib,rss_after_kib,status,note\n")
    f.write('1,ka,"x<y&z""q",6,req,1,100,,,,,12.5,,0,,,,ok,\n')
    f.write('2,ka,"x<y&z""q",6,req,1,300,,,,,,,0,,,,ok,\n')
    f.write("1,ka,ringlb,6,req,1,999999,,,,,1,,0,,,,failed,proxy died\n")
    f.write("1,ka,ringlb,6,req,1,200,,,,,10,,0,,,,ok,\n")
r = run(os.path.join(odd, "runs.csv"))
assert r.returncode == 0, r.stderr
tp = bars(os.path.join(odd, "chart-ka-throughput.svg"))
assert float(tp['x<y&z"q'].get("data-median")) == 200.0, "escaped name, both runs"
assert float(tp["ringlb"].get("data-max")) == 200.0, "the failed run is left out"
cpu = bars(os.path.join(odd, "chart-ka-cpu.svg"))
assert int(cpu['x<y&z"q'].get("data-runs")) == 1, "the empty cell is left out"
print("escaping, failed runs and empty cells: ok")

# 3. Not a runs.csv.
bad = os.path.join(work, "bad.csv")
open(bad, "w").write("a,b\n1,2\n")
for path, words in ((bad, "no column"), (os.path.join(work, "missing.csv"), "cannot read")):
    r = run(path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr)
print("a file that is not a runs.csv: refused with exit 2 and a message")
PY
echo "bench charts test passed"
