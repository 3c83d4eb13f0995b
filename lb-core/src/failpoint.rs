//! Test-only failpoints: panics placed in real code paths so the
//! integration tests can prove what a dying thread does to the process.
//! Compiled only with the cargo feature `failpoints` (lb-bin's tests turn
//! it on through its dev-dependency; a release build has none of this: the
//! [`failpoint!`] macro expands to nothing).
//!
//! Driven by `RINGLB_FAILPOINT`, a comma-separated list of `name=N`: the
//! Nth time (counted over the whole process) the code passes the named
//! point, it panics (or, for a `stall` point, blocks its thread for good).
//! Known points:
//!
//! - `worker-panic-after-accepts=N`: the worker that admits the Nth client
//!   connection panics (both engines share that path).
//! - `worker-stall-after-accepts=N`: that worker stops turning instead (a
//!   stuck thread, for the watchdog).
//! - `control-panic-on-reload=N`: the control plane panics on the Nth
//!   reload (SIGHUP or the admin API).
//!
//! Runs on whichever thread passes a point; the list is read once.

/// Passes the failpoint `$name` (`stall $name`: one that blocks instead
/// of panicking); with the `failpoints` feature off this is nothing at all.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::pass($name, false);
    };
    (stall $name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::pass($name, true);
    };
}
pub(crate) use failpoint;

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::OnceLock;

    /// The environment variable that arms failpoints.
    const VAR: &str = "RINGLB_FAILPOINT";

    /// One armed point: its name, the pass that panics, passes so far.
    struct Point {
        name: String,
        at: u64,
        passes: AtomicU64,
    }

    fn points() -> &'static [Point] {
        static POINTS: OnceLock<Vec<Point>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let Ok(spec) = std::env::var(VAR) else {
                return Vec::new();
            };
            let (points, bad) = parse(&spec);
            for item in bad {
                tracing::warn!(item = %item, "{VAR}: expected name=N with N ≥ 1; ignored");
            }
            points
                .into_iter()
                .map(|(name, at)| Point {
                    name,
                    at,
                    passes: AtomicU64::new(0),
                })
                .collect()
        })
    }

    /// `name=N,…` into the armed points and the items that are not.
    pub(super) fn parse(spec: &str) -> (Vec<(String, u64)>, Vec<String>) {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((name, n)) => match n.trim().parse::<u64>() {
                    Ok(at) if at >= 1 => good.push((name.trim().to_owned(), at)),
                    _ => bad.push(item.to_owned()),
                },
                None => bad.push(item.to_owned()),
            }
        }
        (good, bad)
    }

    /// Counts a pass of `name`; on the armed one panics, or with `stall`
    /// parks the thread for good.
    pub(crate) fn pass(name: &str, stall: bool) {
        for p in points().iter().filter(|p| p.name == name) {
            let n = p.passes.fetch_add(1, Relaxed) + 1;
            if n != p.at {
                continue;
            }
            if !stall {
                panic!("failpoint {name}={} reached", p.at);
            }
            tracing::warn!(point = %name, "failpoint reached: this thread stops here for good");
            loop {
                std::thread::park();
            }
        }
    }
}

#[cfg(feature = "failpoints")]
pub(crate) use armed::pass;

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::armed::parse;

    #[test]
    fn parses_the_list_and_sets_bad_items_aside() {
        let (good, bad) =
            parse(" worker-panic-after-accepts=20, control-panic-on-reload=1 ,x,y=0,z=q,");
        assert_eq!(
            good,
            vec![
                ("worker-panic-after-accepts".to_owned(), 20),
                ("control-panic-on-reload".to_owned(), 1)
            ]
        );
        assert_eq!(bad, vec!["x", "y=0", "z=q"]);
    }
}
