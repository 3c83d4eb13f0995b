//! The access log: one line per client connection at its end, written so
//! that it never slows or blocks the data plane.
//!
//! Each worker holds an [`AccessLogSender`]: at a connection's end it
//! builds an [`AccessRecord`] (a small struct: no allocation, no
//! formatting, no syscall) and puts it on its own bounded queue with a
//! `try_send` that never waits. When the queue is full the record is
//! dropped and counted (`ringlb_access_log_dropped_total`). One thread,
//! `ringlb-access-log` (started under the supervisor, `writer.rs`), takes
//! the records off every worker's queue, formats them (text or JSON,
//! `record.rs`) and writes them through a buffer flushed at least every
//! 100 ms. With `access_log = "off"` nothing of this exists: no queue, no
//! thread, one branch per connection.
//!
//! The [`AccessLogHandle`] is the rest of the process's way to it: SIGUSR1
//! and `POST /api/v1/log/reopen` ask for the file to be reopened (after
//! logrotate moved it), `/metrics` reads its counters.
//!
//! Runs on: the workers (sending), the writer thread, the control plane
//! (reopen requests, metrics).

mod record;
mod writer;

pub(crate) use record::AccessRecord;
pub use record::{EndCause, EndCounts};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::{AccessLog, AccessLogFormat};
use crate::supervisor::Supervisor;
use crate::{Error, Result};

/// Records one worker's queue holds before new ones are dropped: at the
/// writer's slowest poll (every 10 ms) that is 100 000 connection ends a
/// second per worker, several times what one worker closes, in about
/// 120 KiB of memory.
const QUEUE_RECORDS: usize = 1024;

/// The writer thread's name (logs, `ThreadDied`).
pub(crate) const WRITER_THREAD: &str = "ringlb-access-log";

/// What the workers, the writer and the control plane share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Records dropped because a worker's queue was full.
    dropped: AtomicU64,
    /// Records lost because their write failed.
    write_errors: AtomicU64,
    /// Records written.
    written: AtomicU64,
    /// A reopen was asked for and not yet done.
    reopen: AtomicBool,
}

/// A worker's end of its queue. Never blocks.
#[derive(Debug)]
pub(crate) struct AccessLogSender {
    queue: SyncSender<AccessRecord>,
    shared: Arc<Shared>,
}

impl AccessLogSender {
    /// Queues a record, or drops and counts it when the queue is full.
    #[inline]
    pub(crate) fn send(&self, record: AccessRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            // Disconnected: the writer died, which ends the process anyway.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The running access log, for the control plane and the server.
#[derive(Debug, Clone)]
pub struct AccessLogHandle {
    shared: Arc<Shared>,
    /// The writer thread, to wake it for a reopen.
    thread: std::thread::Thread,
}

impl AccessLogHandle {
    /// Asks the writer to reopen its file (after logrotate moved it). The
    /// outcome is logged; on failure the old file stays in use.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Relaxed);
        self.thread.unpark();
    }

    /// Records dropped because a worker's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// Records lost because their write failed.
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Relaxed)
    }

    /// Records written.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Relaxed)
    }
}

/// What [`start`] gives: a sender per worker, the handle, the thread.
pub(crate) struct Started {
    pub(crate) senders: Vec<AccessLogSender>,
    pub(crate) handle: AccessLogHandle,
    pub(crate) thread: JoinHandle<()>,
}

/// Opens the log and starts its writer, with one queue per worker; None
/// when the log is off. A file that cannot be opened is an error naming
/// the path and the OS error.
pub(crate) fn start(
    target: &AccessLog,
    format: AccessLogFormat,
    workers: usize,
    supervisor: &Supervisor,
) -> Result<Option<Started>> {
    let sink = match target {
        AccessLog::Off => return Ok(None),
        AccessLog::Stderr => writer::Sink::stderr()
            .map_err(|e| Error::io("duplicating stderr for the access log", e))?,
        AccessLog::File(path) => writer::Sink::open(path).map_err(|e| {
            Error::io(
                format!(
                    "opening the access log {} (check the directory exists and ringlb may write there)",
                    path.display()
                ),
                e,
            )
        })?,
    };
    let shared = Arc::new(Shared::default());
    let mut senders = Vec::with_capacity(workers);
    let mut queues = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::sync_channel(QUEUE_RECORDS);
        senders.push(AccessLogSender {
            queue: tx,
            shared: shared.clone(),
        });
        queues.push(rx);
    }
    let writer = writer::Writer::new(sink, format, queues, shared.clone());
    let thread = supervisor
        .spawn_thread(WRITER_THREAD.into(), move || {
            writer.run();
            Ok(())
        })
        .map_err(|e| Error::io("starting the access log thread", e))?;
    let handle = AccessLogHandle {
        shared,
        thread: thread.thread().clone(),
    };
    Ok(Some(Started {
        senders,
        handle,
        thread,
    }))
}
