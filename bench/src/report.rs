//! Raw per-run CSV (written by scripts/bench.sh) → Markdown summary.
//!
//! One CSV row is one (round, workload, proxy) run. Columns are found by
//! header name; empty cells mean "not applicable" (e.g. the proxy CPU of
//! `direct`, latency of `iperf`). The summary gives per (workload, proxy):
//! median and min..max over rounds, ratios to `direct` and to the best peer
//! (best of haproxy / haproxy-splice / nginx for that workload and metric).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The proxies ringlb is compared with.
pub const PEERS: [&str; 3] = ["haproxy", "haproxy-splice", "nginx"];
/// Workloads in the order the tables list them.
pub const WORKLOAD_ORDER: [&str; 6] = ["ka", "close", "bulk", "iperf", "rate", "conc"];

/// One run, as read from the CSV.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    pub round: u32,
    pub workload: String,
    pub proxy: String,
    /// `req` or `MiB`.
    pub unit: String,
    pub throughput: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub cpu_per_unit_us: Option<f64>,
    pub hwm_kib: Option<f64>,
    pub errors: Option<f64>,
    pub rss_before_kib: Option<f64>,
    pub rss_with_kib: Option<f64>,
    pub rss_after_kib: Option<f64>,
    /// `ok` or `failed`.
    pub status: String,
    /// Free text, `key=value` words (e.g. `target=8000 alive=8000`).
    pub note: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// Value of `key=` in the note, as a number.
    pub fn note_value(&self, key: &str) -> Option<f64> {
        self.note.split_whitespace().find_map(|w| {
            w.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        })
    }
}

/// Parses the CSV text (header line first). Unknown columns are ignored,
/// missing ones read as empty.
pub fn parse_csv(text: &str) -> Result<Vec<Run>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    for required in ["round", "workload", "proxy", "status"] {
        if col(required).is_none() {
            return Err(format!("CSV header lacks column {required:?}"));
        }
    }
    let mut runs = Vec::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let get =
            |name: &str| -> &str { col(name).and_then(|i| cells.get(i)).copied().unwrap_or("") };
        let num = |name: &str| -> Result<Option<f64>, String> {
            let v = get(name);
            if v.is_empty() || v == "NA" {
                Ok(None)
            } else {
                v.parse::<f64>()
                    .map(Some)
                    .map_err(|_| format!("CSV line {}: column {name}: not a number: {v:?}", n + 2))
            }
        };
        runs.push(Run {
            round: get("round").parse().unwrap_or(0),
            workload: get("workload").to_string(),
            proxy: get("proxy").to_string(),
            unit: get("unit").to_string(),
            throughput: num("throughput")?,
            p50_us: num("p50_us")?,
            p99_us: num("p99_us")?,
            p999_us: num("p999_us")?,
            cpu_per_unit_us: num("cpu_per_unit_us")?,
            hwm_kib: num("hwm_kib")?,
            errors: num("errors")?,
            rss_before_kib: num("rss_before_kib")?,
            rss_with_kib: num("rss_with_kib")?,
            rss_after_kib: num("rss_after_kib")?,
            status: get("status").to_string(),
            note: get("note").to_string(),
        });
    }
    Ok(runs)
}

/// Median and range of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the two middle values for an even count), min, max.
pub fn stat(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Aggregates of one (workload, proxy) cell over its rounds.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub unit: String,
    pub runs: usize,
    pub failed: usize,
    pub throughput: Option<Stat>,
    pub p50: Option<Stat>,
    pub p99: Option<Stat>,
    pub p999: Option<Stat>,
    pub cpu: Option<Stat>,
    pub hwm: Option<Stat>,
    pub errors: f64,
    pub rss_before: Option<Stat>,
    pub rss_with: Option<Stat>,
    pub rss_after: Option<Stat>,
    pub conc_target: Option<Stat>,
    pub conc_alive: Option<Stat>,
    /// The successful runs by round, for paired (same-round) comparisons.
    pub by_round: BTreeMap<u32, Run>,
}

/// Median and range of `f(a) / f(b)` over the rounds where both have a value:
/// a paired comparison. Machine-wide drifts (a neighbour's build, a host
/// change) hit every proxy of a round alike and cancel out of these ratios.
pub fn paired_ratio(a: &Cell, b: &Cell, f: fn(&Run) -> Option<f64>) -> Option<Stat> {
    stat(a.by_round.iter().filter_map(|(round, ra)| {
        let (x, y) = (f(ra)?, f(b.by_round.get(round)?)?);
        (y > 0.0).then(|| x / y)
    }))
}

/// Median and range of `f(a) - f(b)` over the rounds where both have a value.
pub fn paired_diff(a: &Cell, b: &Cell, f: fn(&Run) -> Option<f64>) -> Option<Stat> {
    stat(
        a.by_round
            .iter()
            .filter_map(|(round, ra)| Some(f(ra)? - f(b.by_round.get(round)?)?)),
    )
}

fn cell_of(runs: &[&Run]) -> Cell {
    let ok: Vec<&&Run> = runs.iter().filter(|r| r.ok()).collect();
    let s = |f: &dyn Fn(&Run) -> Option<f64>| stat(ok.iter().filter_map(|r| f(r)));
    Cell {
        unit: runs
            .iter()
            .map(|r| r.unit.clone())
            .find(|u| !u.is_empty())
            .unwrap_or_default(),
        runs: runs.len(),
        failed: runs.len() - ok.len(),
        throughput: s(&|r| r.throughput),
        p50: s(&|r| r.p50_us),
        p99: s(&|r| r.p99_us),
        p999: s(&|r| r.p999_us),
        cpu: s(&|r| r.cpu_per_unit_us),
        hwm: s(&|r| r.hwm_kib),
        errors: runs.iter().filter_map(|r| r.errors).sum(),
        rss_before: s(&|r| r.rss_before_kib),
        rss_with: s(&|r| r.rss_with_kib),
        rss_after: s(&|r| r.rss_after_kib),
        conc_target: s(&|r| r.note_value("target")),
        conc_alive: s(&|r| r.note_value("alive")),
        by_round: ok.iter().map(|r| (r.round, (**r).clone())).collect(),
    }
}

/// `workload → [(proxy, cell)]`, workloads in [`WORKLOAD_ORDER`] (others
/// after, by name), proxies in order of first appearance in the CSV.
pub fn aggregate(runs: &[Run]) -> Vec<(String, Vec<(String, Cell)>)> {
    let mut proxies: Vec<&str> = Vec::new();
    for r in runs {
        if !proxies.contains(&r.proxy.as_str()) {
            proxies.push(&r.proxy);
        }
    }
    let mut workloads: BTreeMap<(usize, &str), ()> = BTreeMap::new();
    for r in runs {
        let rank = WORKLOAD_ORDER
            .iter()
            .position(|w| *w == r.workload)
            .unwrap_or(WORKLOAD_ORDER.len());
        workloads.insert((rank, &r.workload), ());
    }
    workloads
        .keys()
        .map(|(_, w)| {
            let cells = proxies
                .iter()
                .filter_map(|p| {
                    let rs: Vec<&Run> = runs
                        .iter()
                        .filter(|r| r.workload == *w && r.proxy == *p)
                        .collect();
                    (!rs.is_empty()).then(|| (p.to_string(), cell_of(&rs)))
                })
                .collect();
            (w.to_string(), cells)
        })
        .collect()
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_us(us: f64) -> String {
    if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_signed_us(us: f64) -> String {
    let sign = if us >= 0.0 { "+" } else { "−" };
    format!("{sign}{}", fmt_us(us.abs()))
}

fn fmt_range(s: &Stat) -> String {
    if s.n > 1 {
        format!(
            "{} ({}..{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        )
    } else {
        fmt_num(s.median)
    }
}

fn fmt_mib(kib: Option<&Stat>) -> String {
    kib.map_or("–".to_string(), |s| {
        format!("{:.1} MiB", s.median / 1024.0)
    })
}

fn dash_or<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or("–".to_string(), f)
}

fn errors_cell(c: &Cell) -> String {
    let mut s = format!("{:.0}", c.errors);
    if c.failed > 0 {
        let _ = write!(s, " ({} of {} runs failed)", c.failed, c.runs);
    }
    s
}

/// Renders the Markdown summary: the main table, then the fixed-rate latency
/// table and the idle-connections table when those workloads ran.
pub fn render(runs: &[Run]) -> String {
    let agg = aggregate(runs);
    let mut out = String::new();
    out.push_str(
        "| workload | proxy | throughput, median (min..max) | × direct | × best peer | p50 | p99 \
| proxy CPU per unit, median (min..max) | CPU × best peer | peak RSS | errors |\n\
|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut best_lines = Vec::new();
    for (w, cells) in &agg {
        let get = |name: &str| cells.iter().find(|(p, _)| p == name).map(|(_, c)| c);
        let direct = get("direct");
        // The best peer of this workload: highest median throughput, and
        // (separately) lowest median CPU per unit.
        let pick = |key: fn(&Cell) -> Option<f64>, better: fn(f64, f64) -> bool| {
            let mut best: Option<(&str, &Cell, f64)> = None;
            for p in PEERS {
                if let Some((c, v)) = get(p).and_then(|c| Some((c, key(c)?))) {
                    if best.is_none_or(|(_, _, b)| better(v, b)) {
                        best = Some((p, c, v));
                    }
                }
            }
            best
        };
        let best_tp = pick(|c| c.throughput.map(|s| s.median), |a, b| a > b);
        let best_cpu = pick(|c| c.cpu.map(|s| s.median), |a, b| a < b);
        if best_tp.is_some() || best_cpu.is_some() {
            best_lines.push(format!(
                "{w}: {} (throughput), {} (CPU)",
                best_tp.map_or("–", |b| b.0),
                best_cpu.map_or("–", |b| b.0)
            ));
        }
        for (p, c) in cells {
            let unit = if c.unit.is_empty() {
                "req"
            } else {
                c.unit.as_str()
            };
            let tp = dash_or(c.throughput.as_ref(), |s| {
                format!("{} {unit}/s", fmt_range(s))
            });
            let ratio = |other: Option<&Cell>, f: fn(&Run) -> Option<f64>| {
                other
                    .and_then(|o| paired_ratio(c, o, f))
                    .map_or("–".to_string(), |s| format!("{:.2}×", s.median))
            };
            let vs_direct = if p == "direct" {
                "1.00×".to_string()
            } else {
                ratio(direct, |r| r.throughput)
            };
            let vs_peer = if p == "direct" {
                "–".to_string()
            } else {
                ratio(best_tp.map(|b| b.1), |r| r.throughput)
            };
            let cpu = dash_or(c.cpu.as_ref(), |s| format!("{} µs/{unit}", fmt_range(s)));
            let cpu_peer = ratio(best_cpu.map(|b| b.1), |r| r.cpu_per_unit_us);
            let _ = writeln!(
                out,
                "| {w} | {p} | {tp} | {vs_direct} | {vs_peer} | {} | {} | {cpu} | {cpu_peer} | {} | {} |",
                dash_or(c.p50, |s| fmt_us(s.median)),
                dash_or(c.p99, |s| fmt_us(s.median)),
                fmt_mib(c.hwm.as_ref()),
                errors_cell(c),
            );
        }
    }
    if !best_lines.is_empty() {
        let _ = writeln!(
            out,
            "\nRatios are medians of per-round ratios (each run compared with the same round's run of \
the reference). Best peer per workload: {}.",
            best_lines.join("; ")
        );
    }

    if let Some((_, cells)) = agg.iter().find(|(w, _)| w == "rate") {
        let direct = cells.iter().find(|(p, _)| p == "direct").map(|(_, c)| c);
        let added = |f: fn(&Run) -> Option<f64>, c: &Cell| {
            direct
                .and_then(|d| paired_diff(c, d, f))
                .map_or("–".to_string(), |s| fmt_signed_us(s.median))
        };
        out.push_str(
            "\nFixed-rate latency (open loop, measured from each request's intended send time; \
medians over rounds; added = median of per-round differences):\n\n\
| proxy | achieved req/s | p50 | p99 | p99.9 | added p50 vs direct | added p99 | added p99.9 | proxy CPU µs/req | errors |\n\
|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (p, c) in cells {
            let _ = writeln!(
                out,
                "| {p} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                dash_or(c.throughput, |s| format!("{:.0}", s.median)),
                dash_or(c.p50, |s| fmt_us(s.median)),
                dash_or(c.p99, |s| fmt_us(s.median)),
                dash_or(c.p999, |s| fmt_us(s.median)),
                added(|r| r.p50_us, c),
                added(|r| r.p99_us, c),
                added(|r| r.p999_us, c),
                dash_or(c.cpu, |s| fmt_num(s.median)),
                errors_cell(c),
            );
        }
    }

    if let Some((_, cells)) = agg.iter().find(|(w, _)| w == "conc") {
        out.push_str(
            "\nIdle connections (held open while a short keep-alive wrk run goes through; \
proxy RSS before opening them, while held, and after closing them; medians):\n\n\
| proxy | idle conns held | RSS before | RSS with | RSS after | req/s while held | p99 while held | errors |\n\
|---|---|---|---|---|---|---|---|\n",
        );
        for (p, c) in cells {
            let held = match (c.conc_alive, c.conc_target) {
                (Some(a), Some(t)) => format!("{:.0} / {:.0}", a.min, t.median),
                _ => "–".to_string(),
            };
            let _ = writeln!(
                out,
                "| {p} | {held} | {} | {} | {} | {} | {} | {} |",
                fmt_mib(c.rss_before.as_ref()),
                fmt_mib(c.rss_with.as_ref()),
                fmt_mib(c.rss_after.as_ref()),
                dash_or(c.throughput, |s| format!("{:.0}", s.median)),
                dash_or(c.p99, |s| fmt_us(s.median)),
                errors_cell(c),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CSV: &str = "\
round,workload,proxy,secs,unit,work,throughput,p50_us,p99_us,p999_us,cpu_us,cpu_per_unit_us,hwm_kib,errors,rss_before_kib,rss_with_kib,rss_after_kib,status,note
1,ka,direct,3,req,300,100,50,90,,,,,0,,,,ok,
1,ka,haproxy,3,req,240,80,60,100,,2400,10,8192,0,,,,ok,
1,ka,nginx,3,req,270,90,55,95,,2160,8,4096,0,,,,ok,
2,ka,direct,3,req,330,110,50,90,,,,,0,,,,ok,
2,ka,haproxy,3,req,,,,,,,,,,,,,failed,proxy died
2,ka,nginx,3,req,210,70,55,95,,2100,10,4096,2,,,,ok,
1,rate,direct,3,req,,5000,40,80,120,,,,0,,,,ok,
1,rate,nginx,3,req,,5000,70,130,400,,,,0,,,,ok,
1,conc,nginx,3,req,,900,100,900,,,,,0,1024,40960,2048,ok,target=8000 alive=8000 opened=8000
";

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(stat([3.0, 1.0, 2.0]).unwrap().median, 2.0);
        let s = stat([4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        assert!(stat([]).is_none());
    }

    #[test]
    fn aggregates_and_skips_failed_runs() {
        let runs = parse_csv(CSV).unwrap();
        assert_eq!(runs.len(), 9);
        let agg = aggregate(&runs);
        let names: Vec<&str> = agg.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(names, ["ka", "rate", "conc"]);
        let ka = &agg[0].1;
        let hap = &ka.iter().find(|(p, _)| p == "haproxy").unwrap().1;
        assert_eq!((hap.runs, hap.failed), (2, 1));
        assert_eq!(hap.throughput.unwrap().median, 80.0);
        let ngx = &ka.iter().find(|(p, _)| p == "nginx").unwrap().1;
        assert_eq!(ngx.throughput.unwrap().median, 80.0);
        assert_eq!(ngx.errors, 2.0);
    }

    #[test]
    fn renders_ratios_and_side_tables() {
        let md = render(&parse_csv(CSV).unwrap());
        // Paired with direct: haproxy r1 80/100; nginx r1 90/100, r2 70/110 → median 0.768.
        // Best throughput peer: haproxy (80, tie with nginx, first in PEERS wins);
        // nginx vs haproxy is paired on round 1 only (haproxy's round 2 failed): 90/80.
        assert!(
            md.contains("| ka | haproxy | 80.0 req/s | 0.80× | 1.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| ka | nginx | 80.0 (70.0..90.0) req/s | 0.77× | 1.12× |"),
            "{md}"
        );
        // CPU: best peer nginx (median 9); haproxy r1 10 vs nginx r1 8 → 1.25×.
        assert!(md.contains("10.0 µs/req | 1.25×"), "{md}");
        assert!(md.contains("ka: haproxy (throughput), nginx (CPU)"), "{md}");
        assert!(md.contains("(1 of 2 runs failed)"), "{md}");
        assert!(
            md.contains("| nginx | 5000 | 70 µs | 130 µs | 400 µs | +30 µs | +50 µs | +280 µs |"),
            "{md}"
        );
        assert!(
            md.contains("| nginx | 8000 / 8000 | 1.0 MiB | 40.0 MiB | 2.0 MiB | 900 |"),
            "{md}"
        );
    }

    #[test]
    fn rejects_bad_numbers_and_headers() {
        assert!(parse_csv("a,b\n1,2\n").is_err());
        assert!(parse_csv("round,workload,proxy,status,throughput\n1,ka,x,ok,abc\n").is_err());
    }
}
