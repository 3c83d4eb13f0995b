//! The standard process collector's families (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` when `/metrics`
//! is scraped: on the control-plane thread (admin server), never in a
//! worker. A figure that cannot be read (no /proc, an odd kernel) leaves
//! its family out rather than failing the scrape.

use super::{Exposition, Kind};
use crate::sys;

/// The process's figures at one scrape; None: could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct ProcessFigures {
    /// User + system CPU time, seconds.
    cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    resident_bytes: Option<u64>,
    /// Entries of /proc/self/fd (the directory's own fd included, as the
    /// other collectors count).
    open_fds: Option<u64>,
    /// The soft open-files limit.
    max_fds: Option<u64>,
    /// Start time since the Unix epoch, seconds.
    start_time_seconds: Option<f64>,
}

/// `/proc/PID/stat` fields the collector needs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Ticks after boot at which the process started.
    starttime: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses: fields are counted after
/// the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field n is n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Resident pages (the second field) from `/proc/PID/statm`.
fn parse_statm_resident(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

impl ProcessFigures {
    /// Reads this process's figures now.
    pub(super) fn read() -> ProcessFigures {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").as_deref().and_then(parse_stat);
        let ticks = sys::clock_ticks();
        let btime = read("/proc/stat").as_deref().and_then(parse_btime);
        let pages = read("/proc/self/statm")
            .as_deref()
            .and_then(parse_statm_resident);
        ProcessFigures {
            cpu_seconds: stat
                .zip(ticks)
                .map(|(s, t)| (s.utime + s.stime) as f64 / t as f64),
            resident_bytes: pages
                .zip(sys::page_size())
                .map(|(p, size)| p.saturating_mul(size)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: sys::nofile_limit().ok().map(|(soft, _)| soft),
            start_time_seconds: match (stat, ticks, btime) {
                (Some(s), Some(t), Some(b)) => Some(b as f64 + s.starttime as f64 / t as f64),
                _ => None,
            },
        }
    }

    /// The families, each only if its figure was read.
    pub(super) fn render(&self, e: &mut Exposition) {
        let families: [(&str, Kind, &str, Option<f64>); 5] = [
            (
                "process_cpu_seconds_total",
                Kind::Counter,
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory size in bytes.",
                self.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                Kind::Gauge,
                "Number of open file descriptors.",
                self.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                Kind::Gauge,
                "Maximum number of open file descriptors (the soft limit).",
                self.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                Kind::Gauge,
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
        ];
        for (name, kind, help, value) in families {
            if let Some(v) = value {
                e.family(name, kind, help);
                e.sample(name, &[], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and parentheses, as a process may
        // choose (prctl PR_SET_NAME).
        let line = "4242 (ring lb) (x) S 1 4242 4242 0 -1 4194560 1016 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 12345678 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 75,
                starttime: 123456
            })
        );
        for bad in [
            "",
            "4242 (x S 1",
            "4242 (x) S 1 2 3",
            "1 (x) S a b c d e f g h i j k l",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn btime_and_statm() {
        let stat = "cpu  1 2 3 4\nintr 5 6\nctxt 7\nbtime 1764850000\nprocesses 9\n";
        assert_eq!(parse_btime(stat), Some(1_764_850_000));
        assert_eq!(parse_btime("cpu 1 2\n"), None);
        assert_eq!(parse_btime("btime x\n"), None);
        assert_eq!(
            parse_statm_resident("5000 2500 300 10 0 400 0\n"),
            Some(2500)
        );
        assert_eq!(parse_statm_resident("5000\n"), None);
    }

    #[test]
    fn this_process_reads_sanely() {
        let p = ProcessFigures::read();
        let open = p.open_fds.expect("open fds");
        assert!(open >= 3, "{p:?}");
        assert!(p.max_fds.expect("max fds") >= open, "{p:?}");
        assert!(p.resident_bytes.expect("rss") > 1 << 20, "{p:?}");
        assert!(p.cpu_seconds.expect("cpu") >= 0.0, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let start = p.start_time_seconds.expect("start time");
        assert!(start <= now + 1.0 && start > now - 86400.0, "{p:?}");
        let mut e = Exposition { out: String::new() };
        p.render(&mut e);
        assert!(e.out.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(e.out.contains("\nprocess_open_fds "));
        // Nothing read, nothing written.
        let mut e = Exposition { out: String::new() };
        ProcessFigures::default().render(&mut e);
        assert!(e.out.is_empty());
    }
}
