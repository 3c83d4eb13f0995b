//! The connection state machine, shared by the readiness-driven engines
//! (epoll, and io_uring with poll readiness). Runs on the worker thread that
//! owns the connection.
//!
//! A connection is two [`Flow`]s: client → backend ("up") and backend →
//! client ("down"). Each flow moves bytes with non-blocking `splice(2)`
//! through a pipe borrowed from the worker's [`PipePool`] only while bytes
//! are in flight, or (`forwarding = "copy"`, [`Pair::drive_copy`]) with
//! non-blocking `recv(2)`/`send(2)` through a buffer borrowed the same way
//! from the worker's [`BufferPool`]. The engines feed readiness in
//! (edge-triggered: a flag is set by an event and cleared when the kernel
//! says EAGAIN, or, for copies, by a read that did not fill the buffer: see
//! [`Readiness::read_closed`]) and act on the [`Outcome`].
//!
//! TCP semantics kept: EOF on one side becomes `shutdown(SHUT_WR)` on the
//! other once every byte before it is delivered (half-close); a reset or
//! write error on one side becomes an RST on the other (SO_LINGER 0); the
//! pipe bounds the bytes in flight per direction, so a slow reader stops
//! ringlb reading from its writer (backpressure).

use std::io;
use std::os::fd::RawFd;

use crate::buffer::BufferPool;
use crate::pipe::{Pipe, PipePool};
use crate::stats::LOCAL_ERRORS;
use crate::sys;

/// Which socket of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Backend,
}

/// What the kernel last told us about one socket (edge-triggered).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN, a hang-up or an error was reported (POLLRDHUP,
    /// POLLHUP, POLLERR). Sticky. Until then a short read proves the socket
    /// drained: whatever arrives later raises a new event. A FIN that was
    /// already reported raises none, so from then on reads go on until EOF.
    pub read_closed: bool,
}

impl Readiness {
    /// Everything possible: what a socket is assumed to be when nothing is
    /// known (the next syscall tells).
    #[cfg(test)]
    pub(crate) const ANY: Readiness = Readiness {
        readable: true,
        writable: true,
        read_closed: true,
    };

    /// Adds an event's report to what is known.
    pub(crate) fn merge(&mut self, event: Readiness) {
        self.readable |= event.readable;
        self.writable |= event.writable;
        self.read_closed |= event.read_closed;
    }
}

/// Why a flow stopped with an error.
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "the errors are kept for the local-error counters (a pipe that cannot be had is the host's fault, not a peer's)"
)]
pub(crate) enum FlowError {
    /// Reading the source failed (usually ECONNRESET).
    Source(io::Error),
    /// Writing the destination failed (EPIPE, ECONNRESET).
    Destination(io::Error),
    /// No pipe could be had (EMFILE, ENFILE, ENOMEM).
    Pipe(io::Error),
}

impl FlowError {
    /// What to do when a flow reading from `source` failed: the side that
    /// failed is closed, the other one gets an RST (it must learn the
    /// stream broke); without a pipe, both get one.
    pub(crate) fn abort(&self, source: Side) -> Outcome {
        if let FlowError::Pipe(e) = self {
            // The host's shortage: counted, logged at most once a second.
            LOCAL_ERRORS.record(e, &"creating a splice pipe (the connection is reset)");
        }
        let failed = match (self, source) {
            (FlowError::Pipe(_), _) => None,
            (FlowError::Source(_), s) => Some(s),
            (FlowError::Destination(_), Side::Client) => Some(Side::Backend),
            (FlowError::Destination(_), Side::Backend) => Some(Side::Client),
        };
        Outcome::Aborted {
            reset_client: failed != Some(Side::Client),
            reset_backend: failed != Some(Side::Backend),
        }
    }
}

/// What holds a flow's bytes between reading and writing them: nothing
/// while idle (an idle connection holds no pipe and no buffer), else a
/// pipe (splice) or a buffer (copy), never both.
#[derive(Debug, Default)]
enum InFlight {
    #[default]
    Idle,
    /// `len` bytes in the pipe, read from the source and not yet written.
    Pipe { pipe: Pipe, len: usize },
    /// The bytes `buf[start..end]`, read and not yet written. Empty only
    /// within a pump (the buffer goes back before the pump returns).
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// The bytes in flight and what holds them.
    in_flight: InFlight,
    /// The source sent FIN.
    eof: bool,
    /// FIN forwarded to the destination; this flow is finished.
    shut: bool,
    /// This flow's source sent its FIN before the other flow's did (who
    /// closed first: the access log's end cause). Kept in the flow, where
    /// it fits in padding, so a pair stays small.
    fin_first: bool,
    /// Bytes delivered to the destination.
    pub bytes: u64,
    /// Of `bytes`, those already added to the backend's counters (the
    /// worker flushes the rest once a second and at close).
    counted: u64,
    /// `forwarding = "auto"`: a read brought [`BULK_READ`] bytes or more;
    /// this flow splices from now on (once its buffer is empty).
    bulk: bool,
    /// The other direction is finished, so this flow's FIN is the last
    /// thing the connection sends: `close(2)`, which follows at once, sends
    /// it (the destination's receive queue is empty: its EOF was read), and
    /// `shutdown(2)` is saved.
    fin_on_close: bool,
}

/// One read this large marks a flow as bulk for `forwarding = "auto"`:
/// below it, a copy through a buffer costs fewer syscalls and less CPU than
/// splicing through a pipe (measured: small request/response traffic is
/// cheaper copied on both engines); above it, splice avoids copying the
/// bytes twice. HAProxy's splice-auto draws a similar line.
pub(crate) const BULK_READ: usize = 16 * 1024;

/// What one call to [`Flow::pump`] achieved.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pumped {
    /// Some byte or FIN moved.
    pub progressed: bool,
    /// Stopped only because the budget ran out: call again soon.
    pub starved: bool,
}

impl Flow {
    pub(crate) fn is_shut(&self) -> bool {
        self.shut
    }

    #[cfg(test)]
    pub(crate) fn holds_pipe(&self) -> bool {
        matches!(self.in_flight, InFlight::Pipe { .. })
    }

    #[cfg(test)]
    pub(crate) fn holds_buffer(&self) -> bool {
        matches!(self.in_flight, InFlight::Buffer { .. })
    }

    /// Moves bytes `src` → pipe → `dst` as far as readiness and `budget`
    /// (splice calls from the source) allow.
    pub(crate) fn pump(
        &mut self,
        src: RawFd,
        dst: RawFd,
        src_ready: &mut Readiness,
        dst_ready: &mut Readiness,
        pool: &mut PipePool,
        budget: &mut u32,
    ) -> Result<Pumped, FlowError> {
        let mut out = Pumped::default();
        let (sr, dr) = (&mut src_ready.readable, &mut dst_ready.writable);
        let result = self.pump_inner(src, dst, sr, dr, pool, budget, &mut out);
        // An empty pipe goes straight back: idle connections hold none.
        if let InFlight::Pipe { len: 0, .. } = self.in_flight {
            if let InFlight::Pipe { pipe, .. } = std::mem::take(&mut self.in_flight) {
                pool.give_back(pipe);
            }
        }
        result.map(|()| out)
    }

    #[allow(clippy::too_many_arguments)]
    fn pump_inner(
        &mut self,
        src: RawFd,
        dst: RawFd,
        src_ready: &mut bool,
        dst_ready: &mut bool,
        pool: &mut PipePool,
        budget: &mut u32,
        out: &mut Pumped,
    ) -> Result<(), FlowError> {
        loop {
            let in_pipe = match &self.in_flight {
                InFlight::Idle => 0,
                InFlight::Pipe { len, .. } => *len,
                // Bytes in a buffer go first (`pump_auto` splices only
                // with none; the splice strategy never has a buffer).
                InFlight::Buffer { .. } => return Ok(()),
            };
            if in_pipe > 0 {
                if !*dst_ready {
                    return Ok(());
                }
                let InFlight::Pipe { pipe, .. } = &self.in_flight else {
                    return Ok(());
                };
                let written = sys::splice(pipe.read_fd(), dst, in_pipe);
                let Some(n) = self.delivered(written, dst_ready, out)? else {
                    return Ok(());
                };
                if let InFlight::Pipe { len, .. } = &mut self.in_flight {
                    *len -= n;
                }
                continue;
            }
            // The pipe is empty (or there is none) here.
            if !self.may_read(dst, src_ready, budget, out)? {
                return Ok(());
            }
            if let InFlight::Idle = self.in_flight {
                let pipe = pool.take().map_err(FlowError::Pipe)?;
                self.in_flight = InFlight::Pipe { pipe, len: 0 };
            }
            let InFlight::Pipe { pipe, len } = &mut self.in_flight else {
                return Ok(());
            };
            let room = pipe.capacity() - *len;
            match sys::splice(src, pipe.write_fd(), room) {
                Ok(0) => {
                    self.eof = true;
                    out.progressed = true;
                }
                Ok(n) => {
                    *len += n;
                    out.progressed = true;
                }
                Err(e) if sys::would_block(&e) => {
                    // EAGAIN with bytes in the pipe may mean the pipe's slots
                    // are full (a socket splice takes one per fragment), not
                    // that the socket is empty: keep the flag until an empty
                    // pipe proves it.
                    if *len == 0 {
                        *src_ready = false;
                        return Ok(());
                    }
                    if !*dst_ready {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FlowError::Source(e)),
            }
        }
    }

    /// The copy strategy's [`pump`](Flow::pump): `src` → buffer → `dst`
    /// with non-blocking recv/send, as far as readiness and `budget` (recv
    /// calls) allow. Same readiness, EOF and error rules as splice.
    pub(crate) fn pump_copy(
        &mut self,
        src: RawFd,
        dst: RawFd,
        src_ready: &mut Readiness,
        dst_ready: &mut Readiness,
        pool: &mut BufferPool,
        budget: &mut u32,
    ) -> Result<Pumped, FlowError> {
        let mut out = Pumped::default();
        let drained_on_short_read = !src_ready.read_closed;
        let (sr, dr) = (&mut src_ready.readable, &mut dst_ready.writable);
        let result = self.pump_copy_inner(
            src,
            dst,
            (sr, drained_on_short_read),
            dr,
            pool,
            budget,
            &mut out,
        );
        // An empty buffer goes straight back: idle connections hold none.
        if let InFlight::Buffer { start, end, .. } = self.in_flight {
            if start == end {
                if let InFlight::Buffer { buf, .. } = std::mem::take(&mut self.in_flight) {
                    pool.give_back(buf);
                }
            }
        }
        result.map(|()| out)
    }

    #[allow(clippy::too_many_arguments)]
    fn pump_copy_inner(
        &mut self,
        src: RawFd,
        dst: RawFd,
        (src_ready, drained_on_short_read): (&mut bool, bool),
        dst_ready: &mut bool,
        pool: &mut BufferPool,
        budget: &mut u32,
        out: &mut Pumped,
    ) -> Result<(), FlowError> {
        loop {
            let pending = match &self.in_flight {
                InFlight::Idle => false,
                InFlight::Buffer { start, end, .. } => start < end,
                // Bytes in a pipe go first (the copy strategy never has a
                // pipe; `pump_auto` copies only with none).
                InFlight::Pipe { .. } => return Ok(()),
            };
            if pending {
                if !*dst_ready {
                    return Ok(());
                }
                let InFlight::Buffer { buf, start, end } = &self.in_flight else {
                    return Ok(());
                };
                let written = sys::send(dst, &buf[*start..*end]);
                let Some(n) = self.delivered(written, dst_ready, out)? else {
                    return Ok(());
                };
                if let InFlight::Buffer { start, end, .. } = &mut self.in_flight {
                    *start += n;
                    if start == end {
                        (*start, *end) = (0, 0);
                    }
                }
                continue;
            }
            // The buffer is empty (or there is none) here.
            if !self.may_read(dst, src_ready, budget, out)? {
                return Ok(());
            }
            if let InFlight::Idle = self.in_flight {
                self.in_flight = InFlight::Buffer {
                    buf: pool.take(),
                    start: 0,
                    end: 0,
                };
            }
            let InFlight::Buffer { buf, start, end } = &mut self.in_flight else {
                return Ok(());
            };
            match sys::recv(src, buf) {
                Ok(0) => {
                    self.eof = true;
                    out.progressed = true;
                }
                Ok(n) => {
                    // A read that did not fill the buffer took everything
                    // queued: the recv after it would only say EAGAIN.
                    if n < buf.len() && drained_on_short_read {
                        *src_ready = false;
                    }
                    (*start, *end) = (0, n);
                    self.bulk |= n >= BULK_READ;
                    out.progressed = true;
                }
                Err(e) if sys::would_block(&e) => {
                    *src_ready = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FlowError::Source(e)),
            }
        }
    }

    /// `forwarding = "auto"`: copies until a read shows bulk traffic, then
    /// splices. The switch happens only with the buffer empty, so bytes stay
    /// in order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pump_auto(
        &mut self,
        src: RawFd,
        dst: RawFd,
        src_ready: &mut Readiness,
        dst_ready: &mut Readiness,
        pipes: &mut PipePool,
        buffers: &mut BufferPool,
        budget: &mut u32,
    ) -> Result<Pumped, FlowError> {
        // A bulk flow splices once no bytes wait in a buffer, if it holds a
        // pipe or the worker may lend one (at the cap it copies: the budget
        // counts no pipe per connection in this mode).
        let splice = self.bulk
            && match self.in_flight {
                InFlight::Idle => pipes.may_lend(),
                InFlight::Pipe { .. } => true,
                InFlight::Buffer { .. } => false,
            };
        if splice {
            self.pump(src, dst, src_ready, dst_ready, pipes, budget)
        } else {
            self.pump_copy(src, dst, src_ready, dst_ready, buffers, budget)
        }
    }

    /// Accounts for one write of the bytes in flight (a splice from the
    /// pipe or a send from the buffer), the same for both: `Some(n)` bytes
    /// delivered (0 after EINTR: write again), `None` when the destination
    /// is full (it is no longer ready).
    fn delivered(
        &mut self,
        written: io::Result<usize>,
        dst_ready: &mut bool,
        out: &mut Pumped,
    ) -> Result<Option<usize>, FlowError> {
        match written {
            Ok(n) => {
                self.bytes += n as u64;
                out.progressed = true;
                Ok(Some(n))
            }
            Err(e) if sys::would_block(&e) => {
                *dst_ready = false;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(e) => Err(FlowError::Destination(e)),
        }
    }

    /// With nothing in flight: forwards a pending EOF as a FIN, then says
    /// whether to read from the source now (it is readable and the budget
    /// allows one more read, which this takes).
    fn may_read(
        &mut self,
        dst: RawFd,
        src_ready: &bool,
        budget: &mut u32,
        out: &mut Pumped,
    ) -> Result<bool, FlowError> {
        if self.eof {
            if !self.shut {
                if !self.fin_on_close {
                    sys::shutdown_write(dst).map_err(FlowError::Destination)?;
                }
                self.shut = true;
                out.progressed = true;
            }
            return Ok(false);
        }
        if !*src_ready {
            return Ok(false);
        }
        if *budget == 0 {
            out.starved = true;
            return Ok(false);
        }
        *budget -= 1;
        Ok(true)
    }

    /// Releases the buffer of a dying connection (its bytes are dropped).
    pub(crate) fn release_buffer(&mut self, pool: &mut BufferPool) {
        if let InFlight::Buffer { .. } = self.in_flight {
            if let InFlight::Buffer { buf, .. } = std::mem::take(&mut self.in_flight) {
                pool.give_back(buf);
            }
        }
    }

    /// Releases the pipe of a dying connection: reused if empty, else closed.
    pub(crate) fn release(&mut self, pool: &mut PipePool) {
        if let InFlight::Pipe { .. } = self.in_flight {
            match std::mem::take(&mut self.in_flight) {
                InFlight::Pipe { pipe, len: 0 } => pool.give_back(pipe),
                InFlight::Pipe { pipe, .. } => pool.discard(pipe),
                _ => {}
            }
        }
    }
}

/// The two flows of an established connection.
#[derive(Debug, Default)]
pub(crate) struct Pair {
    /// Client → backend.
    pub up: Flow,
    /// Backend → client.
    pub down: Flow,
}

/// What the engine should do after driving a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still open; `starved`: a budget ran out, drive again next turn.
    Open { progressed: bool, starved: bool },
    /// Both directions finished cleanly: close both sockets now (the last
    /// FIN goes out with the close).
    Finished,
    /// One side failed: the other gets an RST (`reset` names which sockets
    /// to close with SO_LINGER 0; the failed one is closed either way).
    Aborted {
        reset_client: bool,
        reset_backend: bool,
    },
}

impl Pair {
    /// Bytes delivered (up, down) since the last call: what the backend's
    /// byte counters have not been given yet.
    pub(crate) fn take_uncounted(&mut self) -> (u64, u64) {
        let take = |f: &mut Flow| {
            let new = f.bytes.saturating_sub(f.counted);
            f.counted = f.bytes;
            new
        };
        (take(&mut self.up), take(&mut self.down))
    }

    /// Drives both directions with the sockets' readiness.
    pub(crate) fn drive(
        &mut self,
        client: RawFd,
        backend: RawFd,
        client_ready: &mut Readiness,
        backend_ready: &mut Readiness,
        pool: &mut PipePool,
        budget: u32,
    ) -> Outcome {
        self.drive_flows(
            client,
            backend,
            client_ready,
            backend_ready,
            budget,
            |f, s, d, sr, dr, b| f.pump(s, d, sr, dr, pool, b),
        )
    }

    /// [`drive`](Pair::drive) with the copy strategy (recv/send through
    /// pooled buffers).
    pub(crate) fn drive_copy(
        &mut self,
        client: RawFd,
        backend: RawFd,
        client_ready: &mut Readiness,
        backend_ready: &mut Readiness,
        pool: &mut BufferPool,
        budget: u32,
    ) -> Outcome {
        self.drive_flows(
            client,
            backend,
            client_ready,
            backend_ready,
            budget,
            |f, s, d, sr, dr, b| f.pump_copy(s, d, sr, dr, pool, b),
        )
    }

    /// [`drive`](Pair::drive) choosing per flow: copy while the flow's
    /// reads are small, splice once one read brings [`BULK_READ`] bytes or
    /// more (see [`Flow::pump_auto`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn drive_auto(
        &mut self,
        client: RawFd,
        backend: RawFd,
        client_ready: &mut Readiness,
        backend_ready: &mut Readiness,
        pipes: &mut PipePool,
        buffers: &mut BufferPool,
        budget: u32,
    ) -> Outcome {
        self.drive_flows(
            client,
            backend,
            client_ready,
            backend_ready,
            budget,
            |f, s, d, sr, dr, b| f.pump_auto(s, d, sr, dr, pipes, buffers, b),
        )
    }

    /// Both directions with one pump: up first, then down; a failure in
    /// either ends the connection with the resets it calls for.
    fn drive_flows(
        &mut self,
        client: RawFd,
        backend: RawFd,
        client_ready: &mut Readiness,
        backend_ready: &mut Readiness,
        budget: u32,
        mut pump: impl FnMut(
            &mut Flow,
            RawFd,
            RawFd,
            &mut Readiness,
            &mut Readiness,
            &mut u32,
        ) -> Result<Pumped, FlowError>,
    ) -> Outcome {
        let mut up_budget = budget;
        self.up.fin_on_close = self.down.shut;
        let up = match pump(
            &mut self.up,
            client,
            backend,
            client_ready,
            backend_ready,
            &mut up_budget,
        ) {
            Ok(p) => p,
            Err(e) => return e.abort(Side::Client),
        };
        if self.up.eof {
            self.note_fin(Side::Client);
        }
        let mut down_budget = budget;
        self.down.fin_on_close = self.up.shut;
        let down = match pump(
            &mut self.down,
            backend,
            client,
            backend_ready,
            client_ready,
            &mut down_budget,
        ) {
            Ok(p) => p,
            Err(e) => return e.abort(Side::Backend),
        };
        if self.down.eof {
            self.note_fin(Side::Backend);
        }
        self.outcome(up, down)
    }

    fn outcome(&self, up: Pumped, down: Pumped) -> Outcome {
        if self.up.is_shut() && self.down.is_shut() {
            return Outcome::Finished;
        }
        Outcome::Open {
            progressed: up.progressed || down.progressed,
            starved: up.starved || down.starved,
        }
    }

    pub(crate) fn release(&mut self, pool: &mut PipePool) {
        self.up.release(pool);
        self.down.release(pool);
    }

    /// `side`'s FIN was read: it is the first unless the other's was.
    pub(crate) fn note_fin(&mut self, side: Side) {
        let (this, other) = match side {
            Side::Client => (&mut self.up, &self.down),
            Side::Backend => (&mut self.down, &self.up),
        };
        if !other.fin_first {
            this.fin_first = true;
        }
    }

    /// The side whose FIN came first, if any came.
    pub(crate) fn first_fin(&self) -> Option<Side> {
        if self.up.fin_first {
            Some(Side::Client)
        } else if self.down.fin_first {
            Some(Side::Backend)
        } else {
            None
        }
    }

    #[cfg(test)]
    pub(crate) fn holds_pipe(&self) -> bool {
        self.up.holds_pipe() || self.down.holds_pipe()
    }

    pub(crate) fn release_buffers(&mut self, pool: &mut BufferPool) {
        self.up.release_buffer(pool);
        self.down.release_buffer(pool);
    }

    #[cfg(test)]
    pub(crate) fn holds_buffer(&self) -> bool {
        self.up.holds_buffer() || self.down.holds_buffer()
    }
}

/// Prepares a socket to be closed with an RST.
pub(crate) fn prepare_reset(fd: RawFd) {
    let _ = sys::set_linger_zero(fd);
}

#[cfg(test)]
mod tests {
    // A failed unwrap in a test is a failed test.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_sockets::tcp_pair;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Drives a pair with all readiness flags forced on until `done`.
    fn drive_until(
        pair: &mut Pair,
        c: &TcpStream,
        b: &TcpStream,
        pool: &mut PipePool,
        mut done: impl FnMut(&Pair, Outcome) -> bool,
    ) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut cr = Readiness::ANY;
            let mut br = Readiness::ANY;
            let o = pair.drive(c.as_raw_fd(), b.as_raw_fd(), &mut cr, &mut br, pool, 4);
            if done(pair, o) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "pair did not reach the expected state: {o:?}"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn bytes_and_half_close_flow_both_ways() {
        let (mut client, c_in) = tcp_pair();
        let (mut backend, b_in) = tcp_pair();
        let mut pool = PipePool::new(1 << 16, 4);
        let mut pair = Pair::default();
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        drive_until(&mut pair, &c_in, &b_in, &mut pool, |p, _| p.up.is_shut());
        let mut got = Vec::new();
        backend.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request");
        backend.write_all(b"reply after half-close").unwrap();
        backend.shutdown(Shutdown::Write).unwrap();
        let o = drive_until(&mut pair, &c_in, &b_in, &mut pool, |_, o| {
            o == Outcome::Finished
        });
        assert_eq!(o, Outcome::Finished);
        // Finished: the worker closes both sockets (the last FIN goes with
        // the close).
        drop((c_in, b_in));
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply after half-close");
        assert_eq!((pair.up.bytes, pair.down.bytes), (7, 22));
        assert_eq!(
            pair.first_fin(),
            Some(Side::Client),
            "the client closed first"
        );
        assert!(!pair.holds_pipe(), "an idle connection must hold no pipe");
        assert_eq!(pool.lent(), 0);
    }

    #[test]
    fn a_failed_side_is_closed_and_the_other_side_is_reset() {
        let e = || io::Error::from_raw_os_error(libc::ECONNRESET);
        let abort = |client, backend| Outcome::Aborted {
            reset_client: client,
            reset_backend: backend,
        };
        // up flow: source = client, destination = backend.
        assert_eq!(
            FlowError::Source(e()).abort(Side::Client),
            abort(false, true)
        );
        assert_eq!(
            FlowError::Destination(e()).abort(Side::Client),
            abort(true, false)
        );
        // down flow: source = backend, destination = client.
        assert_eq!(
            FlowError::Source(e()).abort(Side::Backend),
            abort(true, false)
        );
        assert_eq!(
            FlowError::Destination(e()).abort(Side::Backend),
            abort(false, true)
        );
        assert_eq!(FlowError::Pipe(e()).abort(Side::Client), abort(true, true));
    }

    #[test]
    fn copy_moves_bytes_and_half_close_both_ways_holding_no_idle_buffer() {
        let (mut client, c_in) = tcp_pair();
        let (mut backend, b_in) = tcp_pair();
        let mut bufs = BufferPool::new(4096, 4);
        let mut pair = Pair::default();
        let request: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = {
            let mut client = client.try_clone().unwrap();
            let request = request.clone();
            std::thread::spawn(move || {
                client.write_all(&request).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).unwrap();
            backend.write_all(b"reply after half-close").unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            got
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut cr = Readiness::ANY;
            let mut br = cr;
            let o = pair.drive_copy(
                c_in.as_raw_fd(),
                b_in.as_raw_fd(),
                &mut cr,
                &mut br,
                &mut bufs,
                4,
            );
            if o == Outcome::Finished {
                break;
            }
            assert!(Instant::now() < deadline, "copy pair did not finish: {o:?}");
            std::thread::yield_now();
        }
        writer.join().unwrap();
        assert!(reader.join().unwrap() == request, "bytes differ");
        drop((c_in, b_in));
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply after half-close");
        assert_eq!((pair.up.bytes, pair.down.bytes), (100_000, 22));
        assert!(
            !pair.holds_buffer(),
            "an idle connection must hold no buffer"
        );
        assert_eq!(bufs.lent(), 0);
    }

    #[test]
    fn a_short_read_ends_reading_until_the_next_event_unless_a_fin_was_reported() {
        let (mut client, c_in) = tcp_pair();
        let (mut backend, b_in) = tcp_pair();
        let mut bufs = BufferPool::new(4096, 4);
        let mut pair = Pair::default();
        let (c, b) = (c_in.as_raw_fd(), b_in.as_raw_fd());
        let mut br = Readiness::ANY;
        // Bytes, then a FIN the event did not report: the short read takes
        // the bytes and stops (the FIN's own wake-up brings a new event).
        client.write_all(b"hello").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        wait_readable(&c_in);
        let mut cr = Readiness {
            readable: true,
            writable: true,
            read_closed: false,
        };
        pair.drive_copy(c, b, &mut cr, &mut br, &mut bufs, 4);
        assert!(!cr.readable, "a short read drained the socket");
        assert!(!pair.up.is_shut(), "no read after the short one");
        let mut got = [0u8; 5];
        backend.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The event that reports the FIN: read on to EOF, forward it.
        cr.merge(Readiness {
            readable: true,
            writable: false,
            read_closed: true,
        });
        pair.drive_copy(c, b, &mut cr, &mut br, &mut bufs, 4);
        assert!(pair.up.is_shut(), "the reported FIN was not forwarded");
        // Data and FIN reported together: one drive delivers both.
        let (mut client, c_in) = tcp_pair();
        let (mut backend, b_in) = tcp_pair();
        let mut pair = Pair::default();
        client.write_all(b"last words").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        wait_readable(&c_in);
        let mut cr = Readiness::ANY;
        pair.drive_copy(
            c_in.as_raw_fd(),
            b_in.as_raw_fd(),
            &mut cr,
            &mut br,
            &mut bufs,
            4,
        );
        assert!(pair.up.is_shut(), "bytes and FIN should go in one drive");
        let mut all = Vec::new();
        backend.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"last words");
    }

    /// Waits until `s` (non-blocking) has something to read: bytes or FIN.
    fn wait_readable(s: &TcpStream) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            assert!(Instant::now() < deadline, "nothing arrived within 10 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn auto_copies_small_exchanges_and_splices_bulk_in_order() {
        let (mut client, c_in) = tcp_pair();
        let (mut backend, b_in) = tcp_pair();
        let mut pipes = PipePool::new(1 << 16, 4);
        let mut bufs = BufferPool::new(1 << 16, 4);
        let mut pair = Pair::default();
        let mut drive = |pair: &mut Pair| {
            let mut cr = Readiness::ANY;
            let mut br = cr;
            pair.drive_auto(
                c_in.as_raw_fd(),
                b_in.as_raw_fd(),
                &mut cr,
                &mut br,
                &mut pipes,
                &mut bufs,
                4,
            )
        };
        // A small request: copied, no pipe ever made.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut got = [0u8; 18];
        let deadline = Instant::now() + Duration::from_secs(10);
        while pair.up.bytes < 18 {
            drive(&mut pair);
            assert!(Instant::now() < deadline);
        }
        backend.read_exact(&mut got).unwrap();
        assert!(!pair.up.bulk && !pair.up.holds_pipe());
        // A bulk reply: 4 MiB, in order, the flow switches to splice.
        let reply: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let writer = {
            let reply = reply.clone();
            std::thread::spawn(move || {
                backend.write_all(&reply).unwrap();
                backend.shutdown(Shutdown::Write).unwrap();
                backend
            })
        };
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        while !pair.down.is_shut() {
            drive(&mut pair);
            assert!(
                Instant::now() < deadline + Duration::from_secs(20),
                "bulk reply stuck"
            );
            std::thread::yield_now();
        }
        let _backend = writer.join().unwrap();
        drop(c_in);
        assert!(
            pair.down.bulk,
            "4 MiB should have switched the flow to splice"
        );
        assert_eq!(
            reader.join().unwrap(),
            reply,
            "bytes lost or reordered across the switch"
        );
        assert_eq!((pipes.lent(), bufs.lent()), (0, 0));
    }

    /// A flow's bytes in flight are one enum (nothing, a pipe, or a
    /// buffer): before, a pipe and a buffer each had their own optional
    /// field and counters, 72 bytes a flow, 144 a pair. (Since the live
    /// byte counters, a flow also remembers what it already counted: 8
    /// bytes more, 64 a flow, 128 a pair.)
    #[test]
    fn a_flow_and_a_pair_stay_small() {
        use std::mem::size_of;
        assert!(size_of::<InFlight>() <= 40, "{}", size_of::<InFlight>());
        assert!(size_of::<Flow>() <= 64, "{}", size_of::<Flow>());
        assert!(size_of::<Pair>() <= 128, "{}", size_of::<Pair>());
    }

    #[test]
    fn uncounted_bytes_are_taken_once() {
        let mut pair = Pair::default();
        assert_eq!(pair.take_uncounted(), (0, 0));
        pair.up.bytes = 10;
        pair.down.bytes = 3;
        assert_eq!(pair.take_uncounted(), (10, 3));
        assert_eq!(pair.take_uncounted(), (0, 0));
        pair.up.bytes += 15;
        assert_eq!(pair.take_uncounted(), (15, 0));
        assert_eq!((pair.up.bytes, pair.down.bytes), (25, 3));
    }

    #[test]
    fn auto_copies_bulk_when_the_worker_may_lend_no_pipe() {
        // A pool whose cap is spent (0 here): the bulk flow copies, in order,
        // and never makes a pipe (the budget counts none per connection).
        let (mut client, c_in) = tcp_pair();
        let (mut backend, b_in) = tcp_pair();
        let mut pipes = PipePool::new(1 << 16, 0);
        let mut bufs = BufferPool::new(1 << 16, 4);
        let mut pair = Pair::default();
        let reply: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let writer = {
            let reply = reply.clone();
            std::thread::spawn(move || {
                backend.write_all(&reply).unwrap();
                backend.shutdown(Shutdown::Write).unwrap();
                backend
            })
        };
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pair.down.is_shut() {
            let mut cr = Readiness::ANY;
            let mut br = cr;
            let outcome = pair.drive_auto(
                c_in.as_raw_fd(),
                b_in.as_raw_fd(),
                &mut cr,
                &mut br,
                &mut pipes,
                &mut bufs,
                4,
            );
            assert!(!matches!(outcome, Outcome::Aborted { .. }), "{outcome:?}");
            assert!(!pair.down.holds_pipe(), "a pipe beyond the cap");
            assert!(Instant::now() < deadline, "bulk reply stuck");
            std::thread::yield_now();
        }
        let _backend = writer.join().unwrap();
        drop(c_in);
        assert!(pair.down.bulk, "1 MiB marks the flow bulk");
        assert_eq!(reader.join().unwrap(), reply, "bytes lost or reordered");
        assert_eq!(pipes.lent(), 0);
    }

    #[test]
    fn a_reset_from_the_backend_aborts_with_rst_to_the_client() {
        let (_client, c_in) = tcp_pair();
        let (backend, b_in) = tcp_pair();
        let mut pool = PipePool::new(1 << 16, 4);
        let mut pair = Pair::default();
        sys::set_linger_zero(backend.as_raw_fd()).unwrap();
        drop(backend);
        let o = drive_until(&mut pair, &c_in, &b_in, &mut pool, |_, o| {
            matches!(o, Outcome::Aborted { .. })
        });
        assert_eq!(
            o,
            Outcome::Aborted {
                reset_client: true,
                reset_backend: false
            }
        );
    }
}
