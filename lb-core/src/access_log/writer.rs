//! The `ringlb-access-log` thread: takes records off every worker's queue,
//! formats them and writes them to the log's file (or stderr), and
//! reopens the file when asked.
//!
//! It polls the queues (every 10 ms when they are empty) rather than have
//! a worker wake it: a `try_send` onto a queue nobody sleeps on is a few
//! atomic operations, with no futex call on the worker. Lines are gathered
//! in a buffer written when it holds 64 KiB, when 100 ms have passed since
//! the last write, or when the queues are empty. A write that fails loses
//! the buffered lines: they are counted, the error is logged at most once
//! a second, and writing goes on. A write that blocks (a FIFO nobody
//! reads, a stalled disk) blocks only this thread; the workers' queues
//! fill up and further records are dropped and counted.
//!
//! The file is opened for appending (created 0640) non-blocking, so that a
//! FIFO without a reader is an error instead of a hang, and written
//! blocking after that.
//!
//! Runs on the `ringlb-access-log` thread only.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AccessRecord, Shared};
use crate::config::AccessLogFormat;
use crate::sys;

/// How long the writer sleeps when every queue is empty.
const POLL: Duration = Duration::from_millis(10);
/// Longest a formatted line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffer size at which it is written at once.
const FLUSH_AT: usize = 64 << 10;
/// Most often a failed write is logged.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

/// Where lines go.
pub(super) struct Sink {
    file: File,
    /// The file's path (reopened on request); None for stderr.
    path: Option<PathBuf>,
}

impl Sink {
    /// A duplicate of fd 2.
    pub(super) fn stderr() -> io::Result<Sink> {
        let fd = io::stderr().as_fd().try_clone_to_owned()?;
        Ok(Sink {
            file: File::from(fd),
            path: None,
        })
    }

    /// The file at `path`, opened for appending.
    pub(super) fn open(path: &Path) -> io::Result<Sink> {
        Ok(Sink {
            file: open_file(path)?,
            path: Some(path.to_owned()),
        })
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    sys::set_blocking(file.as_raw_fd())?;
    Ok(file)
}

/// The writer thread's state.
pub(super) struct Writer {
    sink: Sink,
    format: AccessLogFormat,
    /// One per worker; a queue is done once its worker has gone.
    queues: Vec<Receiver<AccessRecord>>,
    shared: Arc<Shared>,
    /// Formatted lines not yet written, and how many.
    buf: Vec<u8>,
    lines: u64,
    last_write: Instant,
    /// When a failed write was last logged.
    error_logged: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        sink: Sink,
        format: AccessLogFormat,
        queues: Vec<Receiver<AccessRecord>>,
        shared: Arc<Shared>,
    ) -> Writer {
        Writer {
            sink,
            format,
            queues,
            shared,
            buf: Vec::with_capacity(FLUSH_AT + 1024),
            lines: 0,
            last_write: Instant::now(),
            error_logged: None,
        }
    }

    /// Runs until every worker's queue is gone and drained.
    pub(super) fn run(mut self) {
        loop {
            if self.shared.reopen.swap(false, Relaxed) {
                self.write_out();
                self.reopen();
            }
            let mut got = false;
            let mut open = 0;
            for i in 0..self.queues.len() {
                // At most a queue's worth per pass, so no busy worker
                // keeps the others waiting.
                for _ in 0..super::QUEUE_RECORDS {
                    match self.queues[i].try_recv() {
                        Ok(record) => {
                            got = true;
                            match self.format {
                                AccessLogFormat::Text => record.write_text(&mut self.buf),
                                AccessLogFormat::Json => record.write_json(&mut self.buf),
                            }
                            self.lines += 1;
                            if self.buf.len() >= FLUSH_AT {
                                self.write_out();
                            }
                        }
                        Err(TryRecvError::Empty) => {
                            open += 1;
                            break;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            }
            if open == 0 && !got {
                self.write_out();
                return;
            }
            if !got {
                self.write_out();
                std::thread::park_timeout(POLL);
            } else if self.last_write.elapsed() >= FLUSH_EVERY {
                self.write_out();
            }
        }
    }

    /// Writes the buffered lines (counting them written or lost).
    fn write_out(&mut self) {
        self.last_write = Instant::now();
        if self.buf.is_empty() {
            return;
        }
        match self.sink.file.write_all(&self.buf) {
            Ok(()) => {
                self.shared.written.fetch_add(self.lines, Relaxed);
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(self.lines, Relaxed);
                let now = Instant::now();
                if self
                    .error_logged
                    .is_none_or(|at| now.duration_since(at) >= ERROR_LOG_EVERY)
                {
                    self.error_logged = Some(now);
                    tracing::error!(
                        error = %e,
                        lost = self.lines,
                        path = %self.sink.path.as_deref().map_or("stderr".into(), |p| p.display().to_string()),
                        "cannot write the access log (lines lost; check the disk or the reader of the log)"
                    );
                }
            }
        }
        self.buf.clear();
        self.lines = 0;
    }

    /// Opens the file's path again; keeps the old file if that fails.
    fn reopen(&mut self) {
        let Some(path) = &self.sink.path else {
            tracing::info!("the access log goes to stderr: nothing to reopen");
            return;
        };
        match open_file(path) {
            Ok(file) => {
                self.sink.file = file;
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(e) => tracing::error!(
                path = %path.display(),
                error = %e,
                "cannot reopen the access log; writing on to the file open before"
            ),
        }
    }
}
