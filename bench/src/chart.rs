//! Aggregated bench cells → an SVG bar chart (std only, no I/O): one panel
//! per workload, each with its own scale (requests and MiB do not share
//! one), one bar per proxy at the median over the rounds, and a whisker
//! from the smallest to the largest round. Used by the `benchreport`
//! binary (`--svg DIR`), which scripts/bench.sh runs at the end of a run.

use std::fmt::Write as _;

use crate::report::{Cell, Stat};

/// What a chart shows of each cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The proxy's CPU time per request or per MiB (lower is better).
    CpuPerUnit,
    /// Requests or MiB per second (higher is better).
    Throughput,
}

impl Metric {
    fn stat(self, cell: &Cell) -> Option<Stat> {
        match self {
            Metric::CpuPerUnit => cell.cpu,
            Metric::Throughput => cell.throughput,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::CpuPerUnit => "proxy CPU per unit (lower is better)",
            Metric::Throughput => "throughput (higher is better)",
        }
    }

    fn unit(self, unit: &str) -> String {
        match self {
            Metric::CpuPerUnit => format!("µs/{unit}"),
            Metric::Throughput => format!("{unit}/s"),
        }
    }
}

/// Bar colours, by the proxy's first appearance (ringlb first in a run).
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
/// One workload panel's size, and the plot area inside it.
const PANEL_W: f64 = 230.0;
const PANEL_H: f64 = 290.0;
const PLOT_TOP: f64 = 40.0;
const PLOT_BOTTOM: f64 = 200.0;
const PLOT_LEFT: f64 = 20.0;
const PLOT_RIGHT: f64 = 210.0;
/// Room above the panels for the title and the legend.
const HEADER_H: f64 = 60.0;

/// Escapes text for SVG content and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number as the tables write it: no more digits than it means.
fn short(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The chart of `metric` over `workloads` (as [`crate::report::aggregate`]
/// returns them): a panel per workload that has a value for some proxy.
/// `caption` goes under the title (the run's date, the machine).
pub fn svg(workloads: &[(String, Vec<(String, Cell)>)], metric: Metric, caption: &str) -> String {
    // Colours by the proxy's place among all the run's proxies, so the
    // CPU and the throughput chart of a run colour each proxy alike.
    let mut all: Vec<&str> = Vec::new();
    for (_, cells) in workloads {
        for (proxy, _) in cells {
            if !all.contains(&proxy.as_str()) {
                all.push(proxy);
            }
        }
    }
    let colour = |proxy: &str| {
        let i = all.iter().position(|p| *p == proxy).unwrap_or(0);
        COLOURS[i % COLOURS.len()]
    };
    // The legend lists those with a value here (`direct` has no CPU).
    let proxies: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| {
            workloads
                .iter()
                .flat_map(|(_, cells)| cells)
                .any(|(proxy, c)| proxy == p && metric.stat(c).is_some())
        })
        .collect();
    let panels: Vec<&(String, Vec<(String, Cell)>)> = workloads
        .iter()
        .filter(|(_, cells)| cells.iter().any(|(_, c)| metric.stat(c).is_some()))
        .collect();
    let width = (panels.len().max(1) as f64 * PANEL_W).max(480.0);
    let height = HEADER_H + PANEL_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(metric.title())
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="34" fill="#555">{} — bar: median over rounds; whisker: min..max</text>"##,
        escape(caption)
    );
    // The legend: a swatch and the name per proxy.
    let mut x = 10.0;
    for proxy in &proxies {
        let _ = writeln!(
            out,
            r#"<rect x="{x:.0}" y="42" width="10" height="10" fill="{}"/><text x="{:.0}" y="51">{}</text>"#,
            colour(proxy),
            x + 14.0,
            escape(proxy)
        );
        x += 24.0 + 7.0 * proxy.chars().count() as f64;
    }
    for (i, (workload, cells)) in panels.iter().enumerate() {
        let left = i as f64 * PANEL_W;
        let bars: Vec<(&str, Stat, &str)> = cells
            .iter()
            .filter_map(|(p, c)| metric.stat(c).map(|s| (p.as_str(), s, c.unit.as_str())))
            .collect();
        let unit = bars.first().map(|(_, _, u)| *u).unwrap_or("");
        let top = bars.iter().map(|(_, s, _)| s.max).fold(0.0_f64, f64::max);
        let scale_max = if top > 0.0 { top * 1.15 } else { 1.0 };
        let y_of =
            |v: f64| HEADER_H + PLOT_BOTTOM - (v.max(0.0) / scale_max) * (PLOT_BOTTOM - PLOT_TOP);
        let _ = writeln!(
            out,
            r#"<g class="panel" data-workload="{}">"#,
            escape(workload)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{} ({})</text>"#,
            left + PANEL_W / 2.0,
            HEADER_H + 22.0,
            escape(workload),
            escape(&metric.unit(unit))
        );
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/>"##,
            left + PLOT_LEFT,
            HEADER_H + PLOT_BOTTOM,
            left + PLOT_RIGHT,
            HEADER_H + PLOT_BOTTOM
        );
        let slot = (PLOT_RIGHT - PLOT_LEFT) / bars.len().max(1) as f64;
        let bar_w = (slot * 0.6).min(40.0);
        for (j, (proxy, s, _)) in bars.iter().enumerate() {
            let centre = left + PLOT_LEFT + slot * (j as f64 + 0.5);
            let (y_med, y_min, y_max) = (y_of(s.median), y_of(s.min), y_of(s.max));
            let _ = writeln!(
                out,
                r#"<rect class="bar" data-proxy="{}" x="{:.1}" y="{y_med:.1}" width="{bar_w:.1}" height="{:.1}" fill="{}"><title>{} {}: median {} ({}..{}) {}, {} rounds</title></rect>"#,
                escape(proxy),
                centre - bar_w / 2.0,
                HEADER_H + PLOT_BOTTOM - y_med,
                colour(proxy),
                escape(workload),
                escape(proxy),
                short(s.median),
                short(s.min),
                short(s.max),
                escape(&metric.unit(unit)),
                s.n
            );
            // The whisker: min..max, with caps.
            let _ = writeln!(
                out,
                r#"<path class="whisker" d="M{c:.1} {y_min:.1}V{y_max:.1}M{l:.1} {y_min:.1}H{r:.1}M{l:.1} {y_max:.1}H{r:.1}" stroke="black" fill="none"/>"#,
                c = centre,
                l = centre - bar_w / 4.0,
                r = centre + bar_w / 4.0
            );
            let _ = writeln!(
                out,
                r#"<text x="{centre:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y_max - 4.0,
                short(s.median)
            );
            // The name under the bar, slanted so that long ones do not meet.
            let label_y = HEADER_H + PLOT_BOTTOM + 12.0;
            let _ = writeln!(
                out,
                r#"<text x="{centre:.1}" y="{label_y:.1}" text-anchor="end" font-size="10" transform="rotate(-35 {centre:.1} {label_y:.1})">{}</text>"#,
                escape(proxy)
            );
        }
        let _ = writeln!(out, "</g>");
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{aggregate, parse_csv};

    const CSV: &str = "round,workload,proxy,unit,throughput,cpu_per_unit_us,status\n\
        1,ka,ringlb,req,20000,14,ok\n\
        2,ka,ringlb,req,22000,12,ok\n\
        3,ka,ringlb,req,21000,13,ok\n\
        1,ka,nginx,req,18000,20,ok\n\
        2,ka,nginx,req,19000,22,ok\n\
        3,ka,nginx,req,17000,21,ok\n\
        1,ka,direct,req,30000,,ok\n\
        1,bulk,ringlb,MiB,900,350,ok\n\
        1,bulk,<odd&name>,MiB,800,400,ok\n";

    /// The numbers after `attr="` of every element holding `class`.
    fn attr(svg: &str, class: &str, attr: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.contains(&format!(r#"class="{class}""#)))
            .filter_map(|l| {
                let rest = l.split(&format!(r#" {attr}=""#)).nth(1)?;
                rest.split('"').next()?.parse().ok()
            })
            .collect()
    }

    #[test]
    fn a_bar_per_proxy_with_a_value_and_a_panel_per_workload() {
        let cells = aggregate(&parse_csv(CSV).expect("csv"));
        let cpu = svg(&cells, Metric::CpuPerUnit, "test");
        // direct has no CPU figure: no bar for it.
        assert_eq!(cpu.matches(r#"class="bar""#).count(), 4, "{cpu}");
        assert_eq!(cpu.matches(r#"class="whisker""#).count(), 4);
        assert_eq!(cpu.matches(r#"class="panel""#).count(), 2);
        assert!(
            cpu.contains("ka (µs/req)") && cpu.contains("bulk (µs/MiB)"),
            "{cpu}"
        );
        let tp = svg(&cells, Metric::Throughput, "test");
        assert_eq!(tp.matches(r#"class="bar""#).count(), 5, "{tp}");
        assert!(tp.contains("ka (req/s)"));
    }

    #[test]
    fn bars_stand_at_the_median_and_whiskers_span_min_to_max() {
        let cells = aggregate(&parse_csv(CSV).expect("csv"));
        let cpu = svg(&cells, Metric::CpuPerUnit, "test");
        let heights = attr(&cpu, "bar", "height");
        // ka: ringlb's median 13 against nginx's 21, one scale.
        let (ringlb, nginx) = (heights[0], heights[1]);
        assert!((ringlb / nginx - 13.0 / 21.0).abs() < 0.01, "{heights:?}");
        // The tallest whisker of a panel stays inside the plot.
        assert!(
            cpu.contains(r#"<title>ka nginx: median 21.0 (20.0..22.0) µs/req, 3 rounds</title>"#),
            "{cpu}"
        );
        for y in attr(&cpu, "bar", "y") {
            assert!(
                (HEADER_H + PLOT_TOP - 1.0..=HEADER_H + PLOT_BOTTOM).contains(&y),
                "{y}"
            );
        }
    }

    #[test]
    fn names_are_escaped() {
        let cells = aggregate(&parse_csv(CSV).expect("csv"));
        let tp = svg(&cells, Metric::Throughput, "a <caption> & more");
        assert!(
            tp.contains("&lt;odd&amp;name&gt;") && !tp.contains("<odd&name>"),
            "{tp}"
        );
        assert!(tp.contains("a &lt;caption&gt; &amp; more"));
    }
}
