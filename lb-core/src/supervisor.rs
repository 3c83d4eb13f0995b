//! No silent thread death: the boundary of every ringlb thread and
//! control-plane task, and the watchdog's verdict on their heartbeats.
//!
//! [`Supervisor::spawn_thread`] runs a thread's body under
//! `catch_unwind`; [`Supervisor::spawn_task`] wraps a tokio task's future
//! so that a panic in any poll is caught. Either way the end is logged with
//! the thread's (or task's) name and the panic message, and reported as an
//! [`End`] on a channel that `Server::wait` reads on the main thread. A
//! death makes the process exit non-zero at once (the binary's `main`):
//! ringlb does not restart a thread in place, because a dead worker's
//! listening sockets would keep queueing its share of new clients where
//! nobody accepts them, and a fresh process (systemd `Restart=on-failure`)
//! is the one state known to be whole.
//!
//! [`watchdog_verdict`] is the pure decision behind systemd's `WATCHDOG=1`
//! (pinged from the main thread, `server.rs`): ping only while every
//! thread is alive and its heartbeat moves.
//!
//! Threads: the spawning side runs on whoever starts a thread or task (the
//! main thread, the control plane); the wrappers run on the thread or task
//! they guard; the verdict runs on the main thread.

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a thread's body returns: `Err` says why it ended when it should
/// not have (a worker whose engine failed, a runtime that would not start).
pub(crate) type ThreadResult = Result<(), String>;

/// The end of a supervised thread, or the death of a supervised task.
#[derive(Debug)]
pub(crate) struct End {
    /// The thread's name (`ringlb-w0`, `ringlb-control`) or the task's
    /// (`admin server`, `prober art1/web`): what the log and the exit
    /// message name.
    pub(crate) name: String,
    /// A thread that ended normally is `Thread(Ok)`; tasks report only
    /// their deaths.
    pub(crate) what: Ended,
}

/// How a supervised thread or task ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// A thread's body returned (`Err`: it gave up, with the reason) or
    /// panicked (`Err("panicked: …")`).
    Thread(ThreadResult),
    /// A task panicked (its message).
    Task(String),
}

impl End {
    /// Why this end is a death; None for a thread that finished normally.
    pub(crate) fn death(&self) -> Option<&str> {
        match &self.what {
            Ended::Thread(Ok(())) => None,
            Ended::Thread(Err(reason)) | Ended::Task(reason) => Some(reason),
        }
    }
}

/// Starts threads and tasks whose end is reported; cloned into every
/// thread that starts tasks of its own (the control plane).
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    /// Where ends go (`Server::wait` reads them). A std channel: it is sent
    /// on from threads and tasks alike and never blocks.
    ends: mpsc::Sender<End>,
}

impl Supervisor {
    /// A supervisor and the receiving end of its reports. The channel
    /// disconnects once every clone (and so every supervised thread) is
    /// gone.
    pub(crate) fn new() -> (Supervisor, mpsc::Receiver<End>) {
        let (ends, rx) = mpsc::channel();
        (Supervisor { ends }, rx)
    }

    /// Spawns a named thread running `body`, catching a panic at its
    /// boundary; its end (normal, failed or panicked) is reported.
    pub(crate) fn spawn_thread<F>(&self, name: String, body: F) -> io::Result<JoinHandle<()>>
    where
        F: FnOnce() -> ThreadResult + Send + 'static,
    {
        let ends = self.ends.clone();
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let result = match catch_unwind(AssertUnwindSafe(body)) {
                    Ok(result) => result,
                    Err(payload) => Err(format!("panicked: {}", panic_message(payload.as_ref()))),
                };
                if let Err(reason) = &result {
                    tracing::error!(thread = %name, reason = %reason, "thread died");
                }
                let _ = ends.send(End {
                    name,
                    what: Ended::Thread(result),
                });
            })
    }

    /// Spawns `future` as a tokio task on the current runtime; a panic in
    /// it is caught, logged and reported (tokio alone would keep it in the
    /// task's join handle, which nobody reads).
    pub(crate) fn spawn_task<F>(
        &self,
        name: impl Into<String>,
        future: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.guard(name, future))
    }

    /// `future`, with a panic in any of its polls caught and reported.
    pub(crate) fn guard<F>(&self, name: impl Into<String>, future: F) -> Guarded<F>
    where
        F: Future<Output = ()>,
    {
        Guarded {
            name: name.into(),
            ends: self.ends.clone(),
            inner: Box::pin(future),
        }
    }
}

/// A future whose panics are caught at its boundary (see
/// [`Supervisor::guard`]). After a panic it is ready and never polls the
/// inner future again.
pub(crate) struct Guarded<F> {
    /// The task's name, for the log and the report.
    name: String,
    /// Where the death is reported.
    ends: mpsc::Sender<End>,
    /// Boxed, so that pinning needs no projection.
    inner: Pin<Box<F>>,
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = &mut self.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                let reason = format!("panicked: {}", panic_message(payload.as_ref()));
                tracing::error!(task = %self.name, reason = %reason, "task died");
                let _ = self.ends.send(End {
                    name: self.name.clone(),
                    what: Ended::Task(reason),
                });
                Poll::Ready(())
            }
        }
    }
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a
/// `String`; anything else is named as such).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic payload that is not a string".to_owned()
    }
}

/// What the watchdog knows of one thread: its heartbeat (a counter the
/// thread bumps each turn: a worker's event-loop turns, the control
/// plane's runtime ticks) and whether it is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    /// The thread's name, for the reason a ping is withheld.
    pub(crate) name: String,
    /// The counter's value when last seen to move.
    count: u64,
    /// When the counter was last seen to move.
    moved: Instant,
    /// Alive, finished (shutdown) or dead.
    life: Life,
}

/// Whether a watched thread is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Life {
    Running,
    /// Ended normally (a stop was asked for): no longer watched.
    Finished,
    /// Ended when it should not have, with the reason.
    Died(String),
}

impl Heartbeat {
    /// A thread seen at `now` with its counter at `count`.
    pub(crate) fn new(name: impl Into<String>, count: u64, now: Instant) -> Heartbeat {
        Heartbeat {
            name: name.into(),
            count,
            moved: now,
            life: Life::Running,
        }
    }

    /// The counter read at `now`.
    pub(crate) fn observe(&mut self, count: u64, now: Instant) {
        if count != self.count {
            self.count = count;
            self.moved = now;
        }
    }

    /// The thread ended; `death` says why when it should not have.
    pub(crate) fn ended(&mut self, death: Option<&str>) {
        self.life = match death {
            None => Life::Finished,
            Some(reason) => Life::Died(reason.to_owned()),
        };
    }
}

/// The watchdog's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every thread is alive and turning: send `WATCHDOG=1`.
    Ping,
    /// Do not ping, and why (systemd then restarts ringlb).
    Withhold(String),
}

/// Ping only while no watched thread has died and every running one's
/// heartbeat moved within `stuck_after` of `now`. Pure: the caller reads
/// the counters and the clock.
pub(crate) fn watchdog_verdict(
    beats: &[Heartbeat],
    now: Instant,
    stuck_after: Duration,
) -> Verdict {
    let mut reasons = Vec::new();
    for beat in beats {
        match &beat.life {
            Life::Died(reason) => reasons.push(format!("{} is gone ({reason})", beat.name)),
            Life::Finished => {}
            Life::Running => {
                let still = now.saturating_duration_since(beat.moved);
                if still > stuck_after {
                    reasons.push(format!(
                        "{} has not turned for {} ms",
                        beat.name,
                        still.as_millis()
                    ));
                }
            }
        }
    }
    if reasons.is_empty() {
        Verdict::Ping
    } else {
        Verdict::Withhold(reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    fn beats(t0: Instant) -> Vec<Heartbeat> {
        vec![
            Heartbeat::new("ringlb-control", 0, t0),
            Heartbeat::new("ringlb-w0", 0, t0),
            Heartbeat::new("ringlb-w1", 7, t0),
        ]
    }

    #[test]
    fn pings_while_every_heartbeat_moves() {
        let t0 = Instant::now();
        let mut b = beats(t0);
        assert_eq!(watchdog_verdict(&b, t0, LIMIT), Verdict::Ping);
        for step in 1..10u64 {
            let now = t0 + Duration::from_secs(4 * step);
            for beat in &mut b {
                beat.observe(step * 100, now);
            }
            assert_eq!(watchdog_verdict(&b, now, LIMIT), Verdict::Ping);
        }
    }

    #[test]
    fn withholds_once_a_heartbeat_stands_still_too_long() {
        let t0 = Instant::now();
        let mut b = beats(t0);
        // w0 keeps its count; the others move.
        let now = t0 + Duration::from_secs(3);
        b[0].observe(1, now);
        b[1].observe(0, now);
        b[2].observe(8, now);
        // At the limit exactly it is still alive.
        assert_eq!(watchdog_verdict(&b, t0 + LIMIT, LIMIT), Verdict::Ping);
        let late = t0 + LIMIT + Duration::from_millis(1);
        match watchdog_verdict(&b, late, LIMIT) {
            Verdict::Withhold(why) => {
                assert!(
                    why.contains("ringlb-w0 has not turned for 5001 ms"),
                    "{why}"
                );
                assert!(
                    !why.contains("ringlb-w1") && !why.contains("control"),
                    "{why}"
                );
            }
            Verdict::Ping => panic!("a stuck worker was pinged for"),
        }
        // It turns again: pings resume.
        b[1].observe(1, late);
        assert_eq!(watchdog_verdict(&b, late, LIMIT), Verdict::Ping);
    }

    #[test]
    fn a_stuck_control_plane_withholds_too() {
        let t0 = Instant::now();
        let mut b = beats(t0);
        let now = t0 + Duration::from_secs(6);
        b[1].observe(1, now);
        b[2].observe(9, now);
        assert!(matches!(
            watchdog_verdict(&b, now, LIMIT),
            Verdict::Withhold(why) if why.starts_with("ringlb-control has not turned")
        ));
    }

    #[test]
    fn withholds_at_once_when_a_thread_is_gone() {
        let t0 = Instant::now();
        let mut b = beats(t0);
        b[2].ended(Some("panicked: boom"));
        // No waiting for its heartbeat to go stale.
        assert_eq!(
            watchdog_verdict(&b, t0, LIMIT),
            Verdict::Withhold("ringlb-w1 is gone (panicked: boom)".into())
        );
    }

    #[test]
    fn a_thread_that_finished_on_request_is_not_watched() {
        let t0 = Instant::now();
        let mut b = beats(t0);
        b[1].ended(None);
        let now = t0 + Duration::from_secs(60);
        b[0].observe(5, now);
        b[2].observe(5, now);
        assert_eq!(watchdog_verdict(&b, now, LIMIT), Verdict::Ping);
    }

    #[test]
    fn a_panicking_thread_reports_its_name_and_message() {
        let (sup, ends) = Supervisor::new();
        let t = sup
            .spawn_thread("ringlb-test".into(), || panic!("worker lost its mind"))
            .unwrap();
        let end = ends.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(end.name, "ringlb-test");
        assert_eq!(end.death(), Some("panicked: worker lost its mind"));
        // The panic was caught at the boundary: the thread itself ended well.
        assert!(t.join().is_ok());

        let _t = sup.spawn_thread("ringlb-ok".into(), || Ok(())).unwrap();
        let end = ends.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((end.name.as_str(), end.death()), ("ringlb-ok", None));
        let _t = sup
            .spawn_thread("ringlb-gave-up".into(), || Err("no ring".into()))
            .unwrap();
        let end = ends.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(end.death(), Some("no ring"));
    }

    #[test]
    fn a_panicking_task_reports_and_the_runtime_goes_on() {
        let (sup, ends) = Supervisor::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = rt.block_on(async {
            let n = 3;
            let h = sup.spawn_task("prober web/b1", async move {
                tokio::task::yield_now().await;
                if n == 3 {
                    panic!("probe exploded: {n}");
                }
            });
            h.await.unwrap(); // caught: the task itself completed
            sup.spawn_task("fine", async {}).await.unwrap();
            42
        });
        assert_eq!(answer, 42);
        let end = ends.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(end.name, "prober web/b1");
        assert_eq!(end.death(), Some("panicked: probe exploded: 3"));
        // A task that ends normally reports nothing.
        assert!(ends.try_recv().is_err());
    }

    #[test]
    fn panic_messages_of_every_payload() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(
            panic_message(&17u32),
            "a panic payload that is not a string"
        );
    }
}
