#!/usr/bin/env python3
"""SVG charts of a bench run (scripts/bench.sh's runs.csv), written by hand
with the standard library only (no plotting package, nothing downloaded).

For each workload, two horizontal bar charts, one bar per proxy:
  chart-<workload>-cpu.svg         proxy CPU per unit (µs per request or per
                                   MiB), median bar, min..max whisker
  chart-<workload>-throughput.svg  throughput (req/s or MiB/s), the same
Only runs with status "ok" count; the median is the one benchreport prints
(the mean of the two middle values for an even count). The charts go next
to runs.csv; with --summary, summary.md gets (or has replaced) a
"## Charts" section linking them.

    scripts/bench-charts.py bench/results/final/runs.csv --summary

Exit status 0 when the charts were written, 2 when the CSV cannot be used
(the message says why).
"""

import argparse
import csv
import math
import os
import re
import sys
from xml.sax.saxutils import escape

REQUIRED = ("workload", "proxy", "unit", "throughput", "cpu_per_unit_us", "status")
SECTION = "## Charts"

# Layout of one chart (pixels).
WIDTH = 760
LABEL_W = 200  # proxy names, right-aligned against the plot
PLOT_X = LABEL_W + 10
PLOT_W = 390
VALUE_X = PLOT_X + PLOT_W + 12  # the "median (min..max)" text
ROW_H = 28
TOP = 58
AXIS_H = 34


class BadCsv(Exception):
    """The CSV cannot be charted; the text says why."""


def read_runs(path):
    """The CSV's rows with status "ok", in file order."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise BadCsv(f"{path}: no column {', '.join(missing)} in the header "
                             f"(is this a runs.csv written by scripts/bench.sh?)")
            return [row for row in reader if row.get("status") == "ok"]
    except OSError as e:
        raise BadCsv(f"{path}: cannot read it: {e.strerror}") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise BadCsv(f"{path}: not a CSV file: {e}") from e


def number(text):
    """A finite float, or None for an empty or non-numeric cell."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def stat(values):
    """(median, min, max, n) as benchreport computes them; None if empty."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    median = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return median, v[0], v[-1], n


def fmt(x):
    """benchreport's number format: 3 significant-ish digits."""
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def tick(v):
    """An axis label: whole numbers without decimals."""
    return f"{v:.0f}" if float(v).is_integer() else fmt(v)


def nice_step(span, ticks=5):
    """A 1-2-2.5-5 step giving about `ticks` intervals over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def is_ringlb(proxy):
    return proxy == "ringlb" or proxy.startswith("ringlb:") or proxy.startswith("ringlb-")


def chart(workload, what, unit_label, cells, source):
    """One SVG document: `cells` is [(proxy, (median, min, max, n))]."""
    top = max(s[2] for _, s in cells)
    step = nice_step(top)
    scale_max = step * math.ceil(top / step) if top > 0 else 1.0
    x = lambda v: PLOT_X + PLOT_W * (v / scale_max)
    height = TOP + ROW_H * len(cells) + AXIS_H + 22
    runs = sorted({s[3] for _, s in cells})
    runs_text = f"{runs[0]} run{'s' if runs[0] != 1 else ''}" if len(runs) == 1 else f"{runs[0]}..{runs[-1]} runs"
    title = f"{workload}: {what} ({unit_label})"
    desc = (f"{title}; bars are medians over {runs_text} per proxy, whiskers go from min to max. "
            + "; ".join(f"{p}: {fmt(s[0])} ({fmt(s[1])}..{fmt(s[2])})" for p, s in cells))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="t d" '
        f'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="13">',
        f'<title id="t">{escape(title)}</title>',
        f'<desc id="d">{escape(desc)}</desc>',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="24" font-size="15" font-weight="600" fill="#1d2430">{escape(title)}</text>',
        f'<text x="16" y="43" font-size="12" fill="#667085">median bar, min..max whisker, {escape(runs_text)} '
        f'per proxy · {escape(source)}</text>',
    ]
    # Grid and axis.
    bottom = TOP + ROW_H * len(cells)
    ticks = int(round(scale_max / step))
    for i in range(ticks + 1):
        v = step * i
        tx = x(v)
        out.append(f'<line x1="{tx:.1f}" y1="{TOP - 4}" x2="{tx:.1f}" y2="{bottom}" stroke="#e4e7ec"/>')
        out.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11" '
                   f'fill="#667085">{tick(v)}</text>')
    out.append(f'<text x="{PLOT_X + PLOT_W / 2:.1f}" y="{bottom + 31}" text-anchor="middle" '
               f'font-size="11" fill="#667085">{escape(unit_label)}</text>')
    for row, (proxy, (median, lo, hi, n)) in enumerate(cells):
        y = TOP + ROW_H * row
        cy = y + ROW_H / 2
        # ringlb blue (an A/B's ringlb-base a lighter blue), no proxy at all
        # light grey, the other proxies grey.
        colour = ("#9db5ef" if proxy == "ringlb-base" else "#2657d9") if is_ringlb(proxy) else (
            "#98a2b3" if proxy == "direct" else "#667085")
        hover = f"{proxy}: median {fmt(median)} {unit_label}, min {fmt(lo)}, max {fmt(hi)} ({n} run{'s' if n != 1 else ''})"
        attr = escape(proxy, {'"': "&quot;"})
        out.append(f'<g class="bar" data-proxy="{attr}" '
                   f'data-median="{median!r}" data-min="{lo!r}" data-max="{hi!r}" data-runs="{n}">')
        out.append(f'<title>{escape(hover)}</title>')
        weight = ' font-weight="600"' if is_ringlb(proxy) else ""
        out.append(f'<text x="{LABEL_W}" y="{cy + 4:.1f}" text-anchor="end" fill="#1d2430"'
                   f'{weight}>{escape(proxy)}</text>')
        out.append(f'<rect x="{PLOT_X}" y="{y + 6}" width="{max(0.0, x(median) - PLOT_X):.1f}" '
                   f'height="{ROW_H - 12}" rx="2" fill="{colour}" fill-opacity="0.85"/>')
        if n > 1:
            out.append(f'<line x1="{x(lo):.1f}" y1="{cy}" x2="{x(hi):.1f}" y2="{cy}" stroke="#1d2430" stroke-width="1.2"/>')
            for v in (lo, hi):
                out.append(f'<line x1="{x(v):.1f}" y1="{cy - 6}" x2="{x(v):.1f}" y2="{cy + 6}" '
                           f'stroke="#1d2430" stroke-width="1.2"/>')
        label = fmt(median) if n == 1 else f"{fmt(median)} ({fmt(lo)}..{fmt(hi)})"
        out.append(f'<text x="{VALUE_X}" y="{cy + 4:.1f}" fill="#1d2430">{escape(label)}</text>')
        out.append("</g>")
    out.append(f'<line x1="{PLOT_X}" y1="{TOP - 4}" x2="{PLOT_X}" y2="{bottom}" stroke="#667085"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def charts(rows, source):
    """[(file name, workload, what, svg text)] in the CSV's order."""
    workloads, proxies = [], []
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
        if r["proxy"] not in proxies:
            proxies.append(r["proxy"])
    out = []
    for w in workloads:
        mine = [r for r in rows if r["workload"] == w]
        unit = next((r["unit"] for r in mine if r["unit"]), "unit")
        for key, what, unit_label in (
            ("cpu", "proxy CPU per " + ("request" if unit == "req" else unit), f"µs/{unit}"),
            ("throughput", "throughput", f"{unit}/s"),
        ):
            column = "cpu_per_unit_us" if key == "cpu" else "throughput"
            cells = []
            for p in proxies:
                s = stat([v for v in (number(r[column]) for r in mine if r["proxy"] == p) if v is not None])
                if s:
                    cells.append((p, s))
            if cells:
                name = f"chart-{safe(w)}-{key}.svg"
                out.append((name, w, what, chart(w, what, unit_label, cells, source)))
    return out


def safe(name):
    """A workload name fit for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def link_section(written):
    lines = [SECTION, "", "Written by scripts/bench-charts.py from runs.csv: per workload, "
             "median bars with min..max whiskers, one per proxy.", ""]
    for name, w, what, _ in written:
        lines.append(f"![{w}: {what}]({name})")
    return "\n".join(lines) + "\n"


def update_summary(path, section):
    """Puts `section` at the end of summary.md, replacing an earlier one."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    start = text.find("\n" + SECTION + "\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start + 1] + (text[end + 1:] if end >= 0 else "")
    text = text.rstrip("\n") + "\n\n" + section if text.strip() else section
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv):
    ap = argparse.ArgumentParser(description="SVG charts of a scripts/bench.sh runs.csv")
    ap.add_argument("csv", help="runs.csv of a bench run")
    ap.add_argument("--out", help="directory for the charts (default: the CSV's)")
    ap.add_argument("--summary", action="store_true",
                    help="add (or replace) a '## Charts' section in summary.md next to the charts")
    args = ap.parse_args(argv)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.csv))
    try:
        rows = read_runs(args.csv)
        if not rows:
            raise BadCsv(f"{args.csv}: no run with status ok: nothing to chart")
        source = os.path.basename(os.path.dirname(os.path.abspath(args.csv))) + "/runs.csv"
        written = charts(rows, source)
        os.makedirs(out_dir, exist_ok=True)
        for name, _, _, svg in written:
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write(svg)
        if args.summary:
            update_summary(os.path.join(out_dir, "summary.md"), link_section(written))
    except BadCsv as e:
        print(f"bench-charts: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"bench-charts: cannot write the charts in {out_dir}: {e.strerror}", file=sys.stderr)
        return 2
    for name, *_ in written:
        print(os.path.join(out_dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
