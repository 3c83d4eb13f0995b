//! Per-worker pool of copy buffers (`forwarding = "copy"`). Owned by one
//! worker thread; no sharing.
//!
//! The copy strategy's counterpart of the [`PipePool`](crate::pipe::PipePool):
//! a flow takes a buffer only while bytes it read are not yet written, and
//! gives it back as soon as it is empty, so an idle connection holds none
//! and a busy worker keeps reusing the same few (cache-warm) buffers. The
//! buffer's size bounds the bytes in flight per direction, as the pipe's
//! capacity does for splice (backpressure).

/// Idle buffers of one worker, and how many are lent out.
#[derive(Debug)]
pub(crate) struct BufferPool {
    /// Last in, first out: the next taker gets the warmest buffer.
    idle: Vec<Box<[u8]>>,
    /// Most idle buffers kept; more are freed when returned.
    cap: usize,
    /// Bytes per buffer.
    size: usize,
    /// Buffers currently lent out (leak checks, metrics).
    lent: usize,
}

impl BufferPool {
    pub(crate) fn new(size: usize, cap: usize) -> BufferPool {
        BufferPool {
            idle: Vec::new(),
            cap,
            size: size.max(1),
            lent: 0,
        }
    }

    /// Takes a buffer, allocating one if none is idle.
    pub(crate) fn take(&mut self) -> Box<[u8]> {
        self.lent += 1;
        self.idle
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    /// Gives a buffer back (its content is never read again: a taker only
    /// sends what it received into it).
    pub(crate) fn give_back(&mut self, buf: Box<[u8]>) {
        self.lent = self.lent.saturating_sub(1);
        if self.idle.len() < self.cap {
            self.idle.push(buf);
        }
    }

    pub(crate) fn lent(&self) -> usize {
        self.lent
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_up_to_cap_and_counts_loans() {
        let mut pool = BufferPool::new(4096, 1);
        let a = pool.take();
        let b = pool.take();
        assert_eq!((a.len(), pool.lent()), (4096, 2));
        let a_ptr = a.as_ptr();
        pool.give_back(a);
        pool.give_back(b); // over the cap: freed
        assert_eq!((pool.lent(), pool.idle()), (0, 1));
        let again = pool.take();
        assert_eq!(again.as_ptr(), a_ptr);
    }
}
