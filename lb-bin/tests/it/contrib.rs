//! The monitoring files in contrib/ against the real thing: every metric
//! name the Grafana dashboard (contrib/grafana/ringlb.json) and the
//! Prometheus rules (contrib/prometheus/*.yml) query is one a running
//! ringlb exports on `/metrics`. A renamed or misspelt metric would leave
//! a panel empty or an alert silent without anybody noticing; here it
//! fails the suite. (`promtool check rules` and `promtool test rules`
//! check the rules' syntax and logic in CI.)
//!
//! The names are pulled out of the PromQL expressions by a small scanner
//! (below), which the last tests check on its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::harness::{self, Backend, LbConfig, Ringlb};

/// The repository's root (lb-bin's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-bin has a parent directory")
        .to_path_buf()
}

/// Every metric name a scrape offers: each family from its `# TYPE` line
/// (a histogram's or summary's with the `_bucket`, `_sum`, `_count` series
/// PromQL queries), and the name of every sample line.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// PromQL words that are not metric names when they are not followed by
/// `(` (`sum by (x)`, `a and on (x) b`, `x == bool 1`, `offset 5m`).
const KEYWORDS: [&str; 11] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
];

/// Aggregation operators, which may come before their parentheses
/// `by (…)` clause (`sum by (x) (…)`) and so are not always followed by `(`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Clauses whose parenthesised list holds label names, not metrics.
const LABEL_LIST_CLAUSES: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression (or a Grafana
/// `label_values(metric, label)` query) reads: identifiers outside label
/// matchers `{…}`, ranges `[…]`, strings and label lists (`by (…)`), that
/// are neither functions (followed by `(`), keywords, numbers nor Grafana
/// variables (`$service`, `${datasource}`).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // The index just past the bracket that closes the one at `open`.
    let skip_group = |open: usize, close: char| -> usize {
        let opener = chars[open];
        let mut depth = 0;
        let mut j = open;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => {
                    let quote = chars[j];
                    j += 1;
                    while j < chars.len() && chars[j] != quote {
                        j += if chars[j] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == opener => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        chars.len()
    };
    let next_non_space = |from: usize| -> Option<(usize, char)> {
        (from..chars.len())
            .map(|j| (j, chars[j]))
            .find(|(_, c)| !c.is_whitespace())
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '}');
        } else if c == '[' {
            i = skip_group(i, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(i, '}');
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (0.99, 1e3, 0x1f) or a duration (5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_non_space(i);
            let call = next.is_some_and(|(_, c)| c == '(');
            if call && LABEL_LIST_CLAUSES.contains(&word.as_str()) {
                i = skip_group(next.map(|(j, _)| j).unwrap_or(i), ')');
            } else if call && word == "label_values" {
                // Grafana's `label_values(metric{…}, label)`: the metric is
                // the first argument, the label the last.
                let open = next.map(|(j, _)| j).unwrap_or(i);
                let end = skip_group(open, ')');
                let inner: String = chars[open + 1..end.saturating_sub(1)].iter().collect();
                let first = inner.rsplit_once(',').map_or(inner.as_str(), |(m, _)| m);
                names.extend(metric_names(first));
                i = end;
            } else if !call
                && !KEYWORDS.contains(&word.as_str())
                && !AGGREGATIONS.contains(&word.as_str())
            {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression of the dashboard: the panels' `expr`s and the
/// template variables' queries, each with where it is.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                let here = map
                    .get("title")
                    .or_else(|| map.get("name"))
                    .and_then(|t| t.as_str())
                    .map_or_else(|| at.to_owned(), |t| format!("{at} / {t}"));
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("expr" | "definition", Some(expr)) => {
                            out.push((here.clone(), expr.to_owned()))
                        }
                        // A template variable's query object.
                        ("query", Some(expr)) if expr.contains('(') => {
                            out.push((here.clone(), expr.to_owned()))
                        }
                        _ => walk(v, &here, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let mut out = Vec::new();
    walk(&json, "dashboard", &mut out);
    out
}

/// Every `expr:` of a Prometheus rules file, inline (`expr: a > 0`) or a
/// block scalar (`expr: |` and the lines indented below it), with its line
/// number. Rules files are YAML; this reads only the shape they are
/// written in here, and fails on an `expr:` it cannot read.
fn rule_expressions(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let at = format!("{}:{}", path.display(), i + 1);
        i += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut expr = String::new();
            while i < lines.len() {
                let l = lines[i];
                let deeper = l.len() - l.trim_start().len() > indent;
                if !(deeper || l.trim().is_empty()) {
                    break;
                }
                expr.push_str(l.trim());
                expr.push('\n');
                i += 1;
            }
            out.push((at, expr));
        } else {
            assert!(!value.is_empty(), "{at}: an empty expr");
            out.push((at, value.trim_matches(['"', '\'']).to_owned()));
        }
    }
    out
}

/// The contrib files whose queries must name exported metrics: the
/// dashboard, and every rules file (another helper's tier rules included).
fn queries() -> Vec<(String, String)> {
    let mut all = dashboard_queries(&repo().join("contrib/grafana/ringlb.json"));
    let rules_dir = repo().join("contrib/prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&rules_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", rules_dir.display()))
        .map(|entry| entry.expect("read contrib/prometheus").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // The promtool unit tests feed invented series, not queries.
            name.ends_with(".yml") && !name.ends_with(".test.yml")
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no rules file in {}",
        rules_dir.display()
    );
    for file in files {
        all.extend(rule_expressions(&file));
    }
    all
}

/// (where, name) of every metric name in `queries` that `exported` lacks.
fn unknown_names(queries: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut unknown = Vec::new();
    for (at, expr) in queries {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{at}: `{name}` in `{}`", expr.trim()));
            }
        }
    }
    unknown
}

#[test]
fn every_metric_the_dashboard_and_the_alert_rules_query_is_exported() {
    let _shared = harness::shared();
    let queries = queries();
    let backend = Backend::echo("b1");
    let mut config = LbConfig::over("epoll", &[&backend]);
    config.admin = true;
    let lb = Ringlb::start(&config);
    let exported = exported_names(lb.metrics().text());
    // The scanner found the queries' names at all (not an empty pass).
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(
        used.len() >= 20 && used.contains("ringlb_backend_connect_seconds_bucket"),
        "the contrib queries name only {used:?}"
    );
    let unknown = unknown_names(&queries, &exported);
    assert!(
        unknown.is_empty(),
        "contrib/ queries metrics that ringlb does not export (renamed? misspelt?):\n{}\n\nexported: {exported:?}",
        unknown.join("\n")
    );
}

#[test]
fn the_scanner_finds_metric_names_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (backend, le) (rate(ringlb_backend_connect_seconds_bucket{instance=~"$instance",service="$service"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(expr),
        ["ringlb_backend_connect_seconds_bucket"]
    );
    let expr = "ringlb_backend_healthy == 0\nand on (instance, service, backend)\nringlb_backend_admin_state{state=\"enabled\"} == 1";
    assert_eq!(
        metric_names(expr),
        ["ringlb_backend_healthy", "ringlb_backend_admin_state"]
    );
    let expr = "max without (kind) (ringlb_local_errors_total)";
    assert_eq!(metric_names(expr), ["ringlb_local_errors_total"]);
    let expr =
        "sum by (instance, kind) (increase(ringlb_local_errors_total[5m])) > 0.9e1 or vector(0)";
    assert_eq!(metric_names(expr), ["ringlb_local_errors_total"]);
    let expr = r#"label_values(ringlb_service_accepted_total{instance=~"$instance"}, service)"#;
    assert_eq!(metric_names(expr), ["ringlb_service_accepted_total"]);
    assert_eq!(
        metric_names("a_total / ignoring (x) group_left (y) b offset 5m"),
        ["a_total", "b"]
    );
}

#[test]
fn a_misspelt_metric_name_is_reported_with_its_place() {
    let exported = exported_names(
        "# TYPE ringlb_backend_bytes_total counter\n\
         ringlb_backend_bytes_total{service=\"web\"} 5\n\
         # TYPE ringlb_backend_connect_seconds histogram\n\
         ringlb_backend_connect_seconds_bucket{le=\"+Inf\"} 1\n",
    );
    let queries = [
        (
            "panel Bytes/s".to_owned(),
            "rate(ringlb_backend_bytes_total[5m])".to_owned(),
        ),
        (
            "panel Connect time".to_owned(),
            "histogram_quantile(0.5, rate(ringlb_backend_connect_seconds_bucket[5m]))".to_owned(),
        ),
        (
            "rules.yml:12".to_owned(),
            "rate(ringlb_backend_bytes_totl[5m]) > 0".to_owned(),
        ),
    ];
    let unknown = unknown_names(&queries, &exported);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].starts_with("rules.yml:12: `ringlb_backend_bytes_totl`"),
        "{unknown:?}"
    );
}
