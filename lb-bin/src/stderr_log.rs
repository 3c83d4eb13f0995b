//! The process's stderr, written by one thread: logging never panics and
//! never blocks the thread that logs.
//!
//! tracing's formatter hands each formatted record to a [`LogSink`], which
//! puts it on a bounded queue without waiting; the `ringlb-log` thread
//! takes records off the queue and writes them to a duplicate of fd 2.
//! When the queue is full (the reader of stderr is slower than the log, or
//! stopped reading and the pipe filled up) a record is dropped and counted
//! in lb-core's `LOG_LOSS` (exported on /metrics); when a write fails (a closed pipe: EPIPE; a full disk)
//! the record is counted and the thread goes on with the next one. So a
//! `ringlb … 2>&1 | head` whose reader exits, or a journal that stalls,
//! costs log lines, never a worker or the control plane.
//!
//! Why not tracing-subscriber's writer on `std::io::stderr`: on a write
//! error the fmt layer reports it with `eprintln!`, which panics on a closed
//! pipe (Rust ignores SIGPIPE, so the write returns EPIPE), and a full pipe
//! blocks whichever thread logged. Why not tracing-appender's `non_blocking`:
//! its writer thread reports a failed flush with `eprintln!` as well (the
//! same panic), and it would be one more dependency for ~100 lines.
//!
//! The writer thread owns a `dup` of fd 2 rather than `std::io::stderr()`,
//! so it never holds std's stderr lock while blocked in write(2): a panic
//! message (the default hook takes that lock) can still be written.
//!
//! Runs on: every logging thread (enqueue only) and the `ringlb-log` thread.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lb_core::LOG_LOSS;
use tracing_subscriber::fmt::MakeWriter;

/// Records the queue holds before new ones are dropped: about 1 MiB of
/// typical ~200-byte lines, several seconds of a busy control plane.
const QUEUE_RECORDS: usize = 4096;

/// Longest wait, at exit, for the queued records to reach stderr: a reader
/// that is stuck must not keep ringlb from exiting.
pub(crate) const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the queue carries to the writer thread.
enum Msg {
    /// One formatted record (or a line of [`StderrLog::print`]).
    Record(Vec<u8>),
    /// Everything queued before this has been written: answer on the channel.
    Flush(Sender<()>),
}

/// Stderr through the writer thread. Lives in `main` until it returns:
/// dropping it waits (up to [`EXIT_FLUSH_TIMEOUT`]) for the queued records
/// to be written, so the last lines of a run are not lost.
pub(crate) struct StderrLog {
    queue: Sender<Msg>,
}

impl StderrLog {
    /// Starts the writer thread on a duplicate of fd 2. If fd 2 cannot be
    /// duplicated (it is closed), records are discarded as written.
    pub(crate) fn start() -> io::Result<StderrLog> {
        let out: Box<dyn Write + Send> = match io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => Box::new(File::from(fd)),
            Err(_) => Box::new(io::sink()),
        };
        let (queue, records) = crossbeam_channel::bounded(QUEUE_RECORDS);
        std::thread::Builder::new()
            .name("ringlb-log".into())
            .spawn(move || write_records(&records, out))?;
        Ok(StderrLog { queue })
    }

    /// The writer tracing's fmt layer formats into.
    pub(crate) fn sink(&self) -> LogSink {
        LogSink {
            queue: self.queue.clone(),
        }
    }

    /// Writes `text` to stderr after the records queued so far, waiting at
    /// most [`EXIT_FLUSH_TIMEOUT`] for room in the queue: for the few lines
    /// the binary prints itself (an error at exit, the demo's banner), which
    /// must not be dropped just because a burst of log filled the queue.
    pub(crate) fn print(&self, text: &str) {
        let record = Msg::Record(text.as_bytes().to_vec());
        if self
            .queue
            .send_deadline(record, Instant::now() + EXIT_FLUSH_TIMEOUT)
            .is_err()
        {
            LOG_LOSS.record_dropped();
        }
    }

    /// Waits until everything queued so far is written, or `timeout`
    /// passed; true if it was written.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (done, written) = crossbeam_channel::bounded(1);
        self.queue.send_deadline(Msg::Flush(done), deadline).is_ok()
            && written.recv_deadline(deadline).is_ok()
    }
}

impl Drop for StderrLog {
    fn drop(&mut self) {
        let deadline = Instant::now() + EXIT_FLUSH_TIMEOUT;
        let (dropped, failed) = (LOG_LOSS.dropped(), LOG_LOSS.failed());
        if dropped > 0 || failed > 0 {
            // A last word for whoever still reads (if the pipe is closed,
            // this one fails too).
            let line = format!(
                "ringlb: {dropped} log records dropped (stderr not read fast enough), \
                 {failed} failed to write (stderr closed or full)\n"
            );
            let _ = self
                .queue
                .send_deadline(Msg::Record(line.into_bytes()), deadline);
        }
        self.flush(deadline.saturating_duration_since(Instant::now()));
    }
}

/// The writer thread: writes records in order until every sender is gone.
/// A failed write costs that record only.
fn write_records(records: &Receiver<Msg>, mut out: Box<dyn Write + Send>) {
    for msg in records {
        match msg {
            Msg::Record(bytes) => {
                if out.write_all(&bytes).is_err() {
                    LOG_LOSS.record_failed();
                }
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// tracing's writer: hands each formatted record to the writer thread,
/// never waiting and never failing (a full queue drops the record).
#[derive(Clone)]
pub(crate) struct LogSink {
    queue: Sender<Msg>,
}

impl Write for &LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The fmt layer writes a whole record in one `write_all`, so one
        // call is one record.
        if self.queue.try_send(Msg::Record(buf.to_vec())).is_err() {
            LOG_LOSS.record_dropped();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = &'a LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}
