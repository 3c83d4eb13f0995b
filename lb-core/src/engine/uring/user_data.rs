//! The user data of the io_uring engine's requests: one typed encoding,
//! the only place that knows the bits. Every request the engine submits
//! carries a [`UserData`]; every completion is decoded with
//! [`UserData::request`] into the [`Request`] it ends. Plain values, used
//! on the worker's thread.
//!
//! Layout of the `u64`: the top 4 bits are the kind. Watches (the
//! engine's multishot polls and accepts) then carry a 28-bit sequence
//! number and a 32-bit id (the fd of a poll, the listener index of an
//! accept); the forwarding requests of `ops` carry the operation (4 bits),
//! the direction (1 bit), a 23-bit sequence number and the 32-bit slot of
//! the connection. Sequence numbers wrap within their masks
//! ([`WATCH_SEQ_MASK`], [`FLOW_SEQ_MASK`]); what they are for is said where
//! they are bumped (`Watch::renew`, `Ops::start`). The worker's epoll and
//! readiness token is a separate encoding (`worker::Token`); it travels
//! through the engine's own tables, never in these bits.

const KIND_SHIFT: u32 = 60;
const KIND_POLL: u64 = 1;
const KIND_ACCEPT: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;
const KIND_FLOW: u64 = 5;

const SEQ_SHIFT: u32 = 32;
const OP_SHIFT: u32 = 56;
const DIR_SHIFT: u32 = 55;

/// Sequence numbers of watches wrap within 28 bits.
pub(crate) const WATCH_SEQ_MASK: u32 = (1 << 28) - 1;
/// Sequence numbers of forwarding slots wrap within 23 bits.
pub(crate) const FLOW_SEQ_MASK: u32 = (1 << 23) - 1;

/// The request a forwarding flow has in flight (`ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Recv = 1,
    Send = 2,
    PollIn = 3,
    PollOut = 4,
    SpliceIn = 5,
    SpliceOut = 6,
}

impl Op {
    #[inline]
    fn from_bits(bits: u64) -> Option<Op> {
        Some(match bits {
            1 => Op::Recv,
            2 => Op::Send,
            3 => Op::PollIn,
            4 => Op::PollOut,
            5 => Op::SpliceIn,
            6 => Op::SpliceOut,
            _ => return None,
        })
    }
}

/// A forwarding request: which request of which flow of which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowRequest {
    pub op: Op,
    /// The flow: 0 up (client → backend), 1 down.
    pub dir: usize,
    /// The slot's sequence number when the request was made.
    pub seq: u32,
    pub slot: u32,
}

/// What a completion is the completion of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// The multishot poll of socket `fd`, registration `seq`.
    Poll { seq: u32, fd: u32 },
    /// The multishot accept of the worker's listener `listener`.
    Accept { seq: u32, listener: u32 },
    /// The wake-up eventfd's poll.
    Wake,
    /// A cancel (only failed ones complete where SKIP_SUCCESS works).
    Cancel,
    /// A read or write of completion-driven forwarding.
    Flow(FlowRequest),
}

/// The user data of one request (see the module docs for the bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserData(u64);

impl UserData {
    /// The wake-up eventfd's poll.
    pub(crate) const WAKE: UserData = UserData(KIND_WAKE << KIND_SHIFT);
    /// Every cancel request.
    pub(crate) const CANCEL: UserData = UserData(KIND_CANCEL << KIND_SHIFT);

    #[inline]
    const fn watch(kind: u64, seq: u32, id: u32) -> UserData {
        UserData((kind << KIND_SHIFT) | ((seq & WATCH_SEQ_MASK) as u64) << SEQ_SHIFT | id as u64)
    }

    /// The poll of socket `fd`, registration `seq`.
    #[inline]
    pub(crate) const fn poll(seq: u32, fd: u32) -> UserData {
        UserData::watch(KIND_POLL, seq, fd)
    }

    /// The accept of listener `listener`, registration `seq`.
    #[inline]
    pub(crate) const fn accept(seq: u32, listener: u32) -> UserData {
        UserData::watch(KIND_ACCEPT, seq, listener)
    }

    /// A forwarding request.
    #[inline]
    pub(crate) const fn flow(r: FlowRequest) -> UserData {
        UserData(
            (KIND_FLOW << KIND_SHIFT)
                | (r.op as u64) << OP_SHIFT
                | ((r.dir & 1) as u64) << DIR_SHIFT
                | ((r.seq & FLOW_SEQ_MASK) as u64) << SEQ_SHIFT
                | r.slot as u64,
        )
    }

    /// What request these bits name; None for bits no request of the
    /// engine carries.
    #[inline]
    pub(crate) fn request(self) -> Option<Request> {
        let id = self.0 as u32;
        let seq = (self.0 >> SEQ_SHIFT) as u32 & WATCH_SEQ_MASK;
        Some(match self.0 >> KIND_SHIFT {
            KIND_POLL => Request::Poll { seq, fd: id },
            KIND_ACCEPT => Request::Accept { seq, listener: id },
            KIND_WAKE => Request::Wake,
            KIND_CANCEL => Request::Cancel,
            KIND_FLOW => Request::Flow(FlowRequest {
                op: Op::from_bits((self.0 >> OP_SHIFT) & 0xf)?,
                dir: ((self.0 >> DIR_SHIFT) & 1) as usize,
                seq: seq & FLOW_SEQ_MASK,
                slot: id,
            }),
            _ => return None,
        })
    }

    /// The bits, for the SQE.
    #[inline]
    pub(crate) const fn raw(self) -> u64 {
        self.0
    }

    /// The bits of a CQE.
    #[inline]
    pub(crate) const fn from_raw(raw: u64) -> UserData {
        UserData(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [Op; 6] = [
        Op::Recv,
        Op::Send,
        Op::PollIn,
        Op::PollOut,
        Op::SpliceIn,
        Op::SpliceOut,
    ];

    fn round_trip(ud: UserData) -> Option<Request> {
        UserData::from_raw(ud.raw()).request()
    }

    #[test]
    fn watches_round_trip_at_the_edges_of_their_fields() {
        for seq in [0, 1, WATCH_SEQ_MASK] {
            for id in [0, 7, u32::MAX] {
                assert_eq!(
                    round_trip(UserData::poll(seq, id)),
                    Some(Request::Poll { seq, fd: id })
                );
                assert_eq!(
                    round_trip(UserData::accept(seq, id)),
                    Some(Request::Accept { seq, listener: id })
                );
            }
        }
        assert_eq!(round_trip(UserData::WAKE), Some(Request::Wake));
        assert_eq!(round_trip(UserData::CANCEL), Some(Request::Cancel));
    }

    #[test]
    fn sequence_numbers_wrap_within_their_mask() {
        let ud = UserData::poll(WATCH_SEQ_MASK + 2, 7);
        assert_eq!(ud.request(), Some(Request::Poll { seq: 1, fd: 7 }));
        let r = FlowRequest {
            op: Op::Send,
            dir: 1,
            seq: FLOW_SEQ_MASK + 3,
            slot: 9,
        };
        let back = UserData::flow(r).request();
        assert_eq!(back, Some(Request::Flow(FlowRequest { seq: 2, ..r })));
    }

    #[test]
    fn flow_requests_round_trip_for_every_op_and_direction() {
        for op in OPS {
            for dir in [0, 1] {
                for (seq, slot) in [(0, 0), (FLOW_SEQ_MASK, u32::MAX), (5, 1234)] {
                    let r = FlowRequest { op, dir, seq, slot };
                    assert_eq!(round_trip(UserData::flow(r)), Some(Request::Flow(r)));
                }
            }
        }
    }

    /// The layout is what earlier builds used, bit for bit (a ring never
    /// outlives its process, but a change here should be a decision).
    #[test]
    fn the_layout_is_pinned() {
        assert_eq!(UserData::poll(3, 9).raw(), 1 << 60 | 3 << 32 | 9);
        assert_eq!(UserData::accept(1, 2).raw(), 2 << 60 | 1 << 32 | 2);
        assert_eq!(UserData::WAKE.raw(), 3 << 60);
        assert_eq!(UserData::CANCEL.raw(), 4 << 60);
        let r = FlowRequest {
            op: Op::SpliceOut,
            dir: 1,
            seq: 4,
            slot: 8,
        };
        assert_eq!(
            UserData::flow(r).raw(),
            5 << 60 | 6 << 56 | 1 << 55 | 4 << 32 | 8
        );
    }

    #[test]
    fn bits_no_request_carries_decode_to_nothing() {
        assert_eq!(UserData::from_raw(0).request(), None);
        assert_eq!(UserData::from_raw(15 << 60).request(), None);
        // A forwarding request with no such op.
        assert_eq!(UserData::from_raw(5 << 60 | 9 << 56).request(), None);
    }
}
