//! A provided buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the
//! memory `forwarding = "uring-copy"` receives into. Owned by one worker's
//! ops module, on the worker's thread.
//!
//! Two anonymous mappings: the ring (one 16-byte `io_uring_buf` entry per
//! buffer, the tail in the first entry's last two bytes, shared with the
//! kernel) and the buffers themselves, `entries × size` bytes. A buffer is
//! in the ring (the kernel may pick it for any `RECV` with buffer select)
//! or taken (its id came back in a completion's `IORING_CQE_F_BUFFER`)
//! until [`BufRing::give_back`] puts it at the tail again. The kernel moves
//! the head; this side only counts: a buffer is taken once per completion
//! that names it.
//!
//! The mappings are unmapped on drop, and the caller (the ops module) must
//! only let that happen once no request can touch a buffer: no operation
//! in flight, or the ring gone and nothing left in flight
//! ([`BufRing::leak`] otherwise).

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering::Release};

use io_uring::Submitter;

/// The kernel's `struct io_uring_buf`.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    /// In entry 0 this is the ring's tail, written by us, read by the
    /// kernel; never written through an entry.
    resv: u16,
}

/// Byte offset of the tail (entry 0's `resv`).
const TAIL_OFFSET: usize = 14;
const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);

/// An anonymous, private, read-write mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping, no address hint, no file; the
        // kernel picks where. Nothing aliases it.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; the owner
        // (BufRing) drops it only when no request can use it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One worker's provided buffer ring, registered as buffer group `bgid`.
pub(crate) struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    entries: u16,
    size: u32,
    bgid: u16,
    /// Our copy of the tail (the kernel only reads it).
    tail: u16,
    /// Buffers in the ring (the kernel may pick them).
    in_ring: usize,
}

impl BufRing {
    /// Maps `entries` (a power of two, at most 32 768) buffers of `size`
    /// bytes, puts them all in the ring and registers it with the ring of
    /// `submitter` as group `bgid`.
    pub(crate) fn new(
        submitter: &Submitter,
        bgid: u16,
        entries: u16,
        size: u32,
    ) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 1 << 15 || size == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let ring = Mapping::new(usize::from(entries) * std::mem::size_of::<RawBuf>())?;
        let bufs = Mapping::new(usize::from(entries) * size as usize)?;
        let mut this = BufRing {
            ring,
            bufs,
            entries,
            size,
            bgid,
            tail: 0,
            in_ring: 0,
        };
        for bid in 0..entries {
            this.add(bid);
        }
        this.publish();
        // SAFETY: the ring mapping is page-aligned (mmap), holds `entries`
        // entries, and lives in `this`, which unregisters it (`close`) or
        // outlives the io_uring, or is leaked (`leak`) — never unmapped
        // while the kernel may read it. The buffers it names live as long.
        unsafe {
            submitter.register_buf_ring_with_flags(
                this.ring.ptr.as_ptr() as u64,
                entries,
                bgid,
                0,
            )?;
        }
        Ok(this)
    }

    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    pub(crate) fn entries(&self) -> usize {
        usize::from(self.entries)
    }

    /// Buffers taken out of the ring (holding bytes, or with a request
    /// that names them in flight).
    pub(crate) fn lent(&self) -> usize {
        usize::from(self.entries) - self.in_ring
    }

    /// The kernel picked buffer `bid` (a completion said so).
    pub(crate) fn taken(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        self.in_ring = self.in_ring.saturating_sub(1);
    }

    /// Start of buffer `bid`'s memory (for a send of what it holds).
    pub(crate) fn addr(&self, bid: u16) -> *const u8 {
        let bid = bid & (self.entries - 1);
        // SAFETY: `bid` < entries, so the offset stays inside the buffers
        // mapping.
        unsafe {
            self.bufs
                .ptr
                .as_ptr()
                .add(usize::from(bid) * self.size as usize)
        }
    }

    /// Bytes `start..end` of buffer `bid`, clamped to the buffer. Only for
    /// a buffer the caller took (a receive's completion named it) and that
    /// no request in flight uses: the kernel writes only into buffers in
    /// the ring.
    pub(crate) fn bytes(&self, bid: u16, start: usize, end: usize) -> &[u8] {
        let size = self.size as usize;
        let end = end.min(size);
        let start = start.min(end);
        // SAFETY: `addr` is the start of a buffer of `size` bytes inside
        // the mapping, which lives as long as `self`; start <= end <= size
        // keeps the slice inside it; the caller owns the buffer (out of the
        // ring), so nothing writes to it while the slice is borrowed.
        unsafe { std::slice::from_raw_parts(self.addr(bid).add(start), end - start) }
    }

    /// Puts buffer `bid` back in the ring for the kernel to pick again.
    /// The caller gives back only buffers it took, once each, after the
    /// last request that used it ended.
    pub(crate) fn give_back(&mut self, bid: u16) {
        self.add(bid);
        self.publish();
    }

    /// Writes buffer `bid` at our tail (not yet visible to the kernel).
    fn add(&mut self, bid: u16) {
        let bid = bid & (self.entries - 1);
        let slot = usize::from(self.tail & (self.entries - 1));
        let entry = self.ring.ptr.as_ptr().cast::<RawBuf>();
        // SAFETY: `slot` < entries, inside the ring mapping; the kernel
        // reads entries only below the published tail, and this one is at
        // or past it. Only addr, len and bid are written: entry 0's `resv`
        // is the tail, written by `publish` alone.
        unsafe {
            let e = entry.add(slot);
            ptr::addr_of_mut!((*e).addr).write(self.addr(bid) as u64);
            ptr::addr_of_mut!((*e).len).write(self.size);
            ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.in_ring += 1;
    }

    /// Makes the entries added so far visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the tail is the u16 at byte 14 of the page-aligned ring
        // mapping (so aligned for AtomicU16), shared with the kernel, which
        // reads it with acquire semantics; we are its only writer.
        let tail = unsafe { AtomicU16::from_ptr(self.ring.ptr.as_ptr().add(TAIL_OFFSET).cast()) };
        tail.store(self.tail, Release);
    }

    /// Unregisters the group: the kernel picks no buffer from it any more.
    /// Call once nothing is in flight, before dropping.
    pub(crate) fn close(&mut self, submitter: &Submitter) {
        let _ = submitter.unregister_buf_ring(self.bgid);
    }

    /// Gives up the memory without unmapping it: for when requests that
    /// may still touch it could not be waited for.
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn buffers_are_counted_out_and_back_and_do_not_overlap() {
        let ring = io_uring::IoUring::new(8).unwrap();
        let mut br = BufRing::new(&ring.submitter(), 7, 4, 4096).unwrap();
        assert_eq!(
            (br.entries(), br.lent(), br.bgid(), br.size()),
            (4, 0, 7, 4096)
        );
        let addrs: Vec<usize> = (0..4).map(|b| br.addr(b) as usize).collect();
        for w in addrs.windows(2) {
            assert_eq!(w[1] - w[0], 4096);
        }
        br.taken(2);
        br.taken(0);
        assert_eq!(br.lent(), 2);
        br.give_back(2);
        br.give_back(0);
        assert_eq!(br.lent(), 0);
        br.close(&ring.submitter());
        assert!(
            BufRing::new(&ring.submitter(), 8, 3, 4096).is_err(),
            "3 is no power of two"
        );
    }
}
