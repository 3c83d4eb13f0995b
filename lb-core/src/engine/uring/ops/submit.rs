//! The submissions of completion-driven forwarding: the one request a
//! flow has in flight, built and queued here, with what keeps the memory a
//! request names valid until its completion. Runs on the worker's thread.

use io_uring::{opcode, squeue, types};

use super::flow::{InFlight, Store};
use super::{Ops, Sq};
use crate::conn::FlowError;
use crate::engine::uring::user_data::{FlowRequest, Op, UserData};

impl Ops {
    /// Submits the flow's next read: a receive into a buffer the kernel
    /// picks, or (splice) a poll for readable.
    pub(super) fn read(&mut self, sq: &mut Sq, index: usize, dir: usize) {
        let c = &self.conns[index];
        if c.flows[dir].shut {
            return;
        }
        let Some(bufs) = &self.pools.bufs else {
            self.poll(sq, index, dir, Op::PollIn);
            return;
        };
        let entry = opcode::Recv::new(types::Fd(c.fds[dir]), std::ptr::null_mut(), bufs.size())
            .buf_group(bufs.bgid())
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(self.user_data(Op::Recv, index, dir).raw());
        // SAFETY: the receive names no memory of its own: the kernel writes
        // into a buffer of the registered ring, whose mapping lives until
        // no request is in flight (module docs, "Lifetimes"), and only a
        // buffer that is in the ring, so used by nobody else.
        unsafe { sq.queue_unchecked(entry) };
        self.submitted(index, dir, Op::Recv);
    }

    /// Submits the flow's next write of the bytes it holds.
    pub(super) fn write(&mut self, sq: &mut Sq, index: usize, dir: usize) {
        let c = &self.conns[index];
        let dst = types::Fd(c.fds[1 - dir]);
        match (&c.flows[dir].in_flight, &self.pools.bufs) {
            (InFlight::Buffer(h), Some(bufs)) => {
                let base = match &h.store {
                    Store::Ring(bid) => bufs.addr(*bid),
                    Store::Spilled(b) => b.as_ptr(),
                };
                // The unsent rest of the bytes, within their buffer
                // (sent < len <= its size).
                let start = base.wrapping_add(h.sent as usize);
                // MSG_DONTWAIT: a full destination fails the send at once
                // (EAGAIN) instead of keeping it, and the ring buffer,
                // waiting for as long as the reader stalls.
                let entry = opcode::Send::new(dst, start, h.len - h.sent)
                    .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                    .build()
                    .user_data(self.user_data(Op::Send, index, dir).raw());
                // SAFETY: the bytes are in ring buffer `bid`, taken out of
                // the ring by the receive that filled them, or in the
                // flow's own spill buffer (a heap allocation, not moved by
                // moving the Box). The flow holds either (`in_flight`)
                // until this send's final completion, and gives it back
                // only then, live or stopped (`complete`), so nobody writes
                // into it meanwhile. The ring's mapping outlives every
                // request.
                unsafe { sq.queue_unchecked(entry) };
                self.submitted(index, dir, Op::Send);
            }
            (InFlight::Pipe { pipe, len }, _) => {
                let entry =
                    opcode::Splice::new(types::Fd(pipe.read_fd()), -1, dst, -1, *len as u32)
                        .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
                        .build()
                        .user_data(self.user_data(Op::SpliceOut, index, dir).raw());
                // A splice names fds only; the pipe is kept out of the pool
                // until this completes (module docs).
                sq.queue(entry);
                self.submitted(index, dir, Op::SpliceOut);
            }
            _ => {}
        }
    }

    /// A source that polled readable: a pipe, and a splice into it.
    pub(super) fn splice_in(
        &mut self,
        sq: &mut Sq,
        index: usize,
        dir: usize,
    ) -> Result<(), FlowError> {
        let ud = self.user_data(Op::SpliceIn, index, dir);
        let c = &mut self.conns[index];
        let f = &mut c.flows[dir];
        if let InFlight::Idle = f.in_flight {
            let pipe = self.pools.pipes.take().map_err(FlowError::Pipe)?;
            f.in_flight = InFlight::Pipe { pipe, len: 0 };
        }
        let InFlight::Pipe { pipe, len } = &f.in_flight else {
            // A splice flow never holds a buffer.
            return Err(FlowError::Source(std::io::Error::other(
                "a splice flow holds a buffer",
            )));
        };
        let room = (pipe.capacity() - len) as u32;
        let entry = opcode::Splice::new(
            types::Fd(c.fds[dir]),
            -1,
            types::Fd(pipe.write_fd()),
            -1,
            room,
        )
        .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
        .build()
        .user_data(ud.raw());
        sq.queue(entry);
        self.submitted(index, dir, Op::SpliceIn);
        Ok(())
    }

    /// A one-shot poll: the flow's source for readable (`PollIn`) or its
    /// destination for writable (`PollOut`).
    pub(super) fn poll(&mut self, sq: &mut Sq, index: usize, dir: usize, op: Op) {
        let c = &self.conns[index];
        let (fd, mask) = if op == Op::PollIn {
            (c.fds[dir], libc::POLLIN | libc::POLLRDHUP)
        } else {
            (c.fds[1 - dir], libc::POLLOUT)
        };
        let entry = opcode::PollAdd::new(types::Fd(fd), mask as u32)
            .build()
            .user_data(self.user_data(op, index, dir).raw());
        sq.queue(entry);
        self.submitted(index, dir, op);
    }

    /// The user data of request `op` of flow `dir` of slot `index`, at the
    /// slot's current sequence number.
    #[inline]
    pub(super) fn user_data(&self, op: Op, index: usize, dir: usize) -> UserData {
        UserData::flow(FlowRequest {
            op,
            dir,
            seq: self.conns[index].seq,
            slot: index as u32,
        })
    }

    fn submitted(&mut self, index: usize, dir: usize, op: Op) {
        let f = &mut self.conns[index].flows[dir];
        debug_assert!(f.pending.is_none(), "two requests in flight on one flow");
        f.pending = Some(op);
        self.in_flight += 1;
    }
}
