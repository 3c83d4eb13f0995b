//! The connection slab and the [`Token`]s that name its entries to an
//! engine.
//!
//! Owned by one worker and used on its thread only. A token is what an
//! engine gives back with every event: the wake-up source, a listener, or
//! one leg (client or backend socket) of a connection, named by slot and
//! the slot's generation. A slot freed during a turn is reused only the
//! next turn, and reuse bumps its generation, so an event meant for an
//! earlier occupant never reaches the new one. The encoding lives here and
//! nowhere else.

/// Set in listener tokens only.
const LISTENER_FLAG: u64 = 1 << 63;
/// Slot generations wrap within 31 bits, so a leg's token never sets
/// `LISTENER_FLAG` nor equals [`Token::WAKE`], however often a slot is
/// reused.
const GENERATION_MASK: u32 = 0x7fff_ffff;

/// What an engine watches for a worker, handed back with each event.
///
/// One `u64`, so it fits epoll's and io_uring's user data as is:
/// the wake-up source is all ones; listener `i` is bit 63 | `i`; a
/// connection leg is `generation << 32 | slot << 1 | backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Token(u64);

/// A decoded [`Token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// The engine's wake-up source.
    Wake,
    /// The listener at this index in the worker.
    Listener(usize),
    /// One socket of a connection.
    Leg {
        slot: usize,
        generation: u32,
        /// The backend socket (else the client's).
        backend: bool,
    },
}

impl Token {
    /// The engine's wake-up source.
    pub(crate) const WAKE: Token = Token(u64::MAX);

    /// The listener at index `index` of the worker.
    #[inline]
    pub(crate) fn listener(index: usize) -> Token {
        Token(LISTENER_FLAG | index as u64)
    }

    /// One socket of the connection in `slot` at `generation`.
    #[inline]
    pub(crate) fn leg(slot: usize, generation: u32, backend: bool) -> Token {
        debug_assert!(generation <= GENERATION_MASK && slot < 1 << 31);
        Token((u64::from(generation) << 32) | ((slot as u64) << 1) | u64::from(backend))
    }

    /// What the token names.
    #[inline]
    pub(crate) fn kind(self) -> TokenKind {
        if self == Token::WAKE {
            TokenKind::Wake
        } else if self.0 & LISTENER_FLAG != 0 {
            TokenKind::Listener((self.0 & !LISTENER_FLAG) as usize)
        } else {
            TokenKind::Leg {
                slot: ((self.0 & 0xffff_ffff) >> 1) as usize,
                generation: (self.0 >> 32) as u32,
                backend: self.0 & 1 == 1,
            }
        }
    }

    /// The listener index, if the token names a listener.
    #[inline]
    pub(crate) fn listener_index(self) -> Option<usize> {
        match self.kind() {
            TokenKind::Listener(i) => Some(i),
            _ => None,
        }
    }

    /// The bits, for an engine that stores them (mio's token, io_uring's
    /// user data).
    #[inline]
    pub(crate) const fn raw(self) -> u64 {
        self.0
    }

    /// A token from bits an engine stored with [`raw`](Token::raw).
    #[inline]
    pub(crate) const fn from_raw(raw: u64) -> Token {
        Token(raw)
    }
}

/// Connections by slot, with the generation of each slot.
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    /// Freed during this turn: reused only next turn, so a stale event of
    /// this turn's batch never reaches a new connection.
    freed: Vec<usize>,
    /// Occupied slots.
    len: usize,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Slab<T> {
        Slab {
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            len: 0,
        }
    }

    /// Stores `value` in a free slot (under a new generation); its slot.
    pub(crate) fn insert(&mut self, value: T) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        self.generations[slot] = self.generations[slot].wrapping_add(1) & GENERATION_MASK;
        self.slots[slot] = Some(value);
        self.len += 1;
        slot
    }

    /// Takes the value out of `slot`; the slot is reused from next turn.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<T> {
        let value = self.slots.get_mut(slot)?.take()?;
        self.len -= 1;
        self.freed.push(slot);
        Some(value)
    }

    /// End of a turn: slots freed during it may be reused.
    pub(crate) fn end_turn(&mut self) {
        self.free.append(&mut self.freed);
    }

    /// The token of one leg of the connection in `slot`.
    pub(crate) fn token(&self, slot: usize, backend: bool) -> Token {
        Token::leg(slot, self.generations[slot], backend)
    }

    /// The occupied slot a leg token names, unless it is stale (its slot
    /// was freed, or reused under a newer generation since).
    pub(crate) fn slot_of(&self, token: Token) -> Option<usize> {
        let TokenKind::Leg {
            slot, generation, ..
        } = token.kind()
        else {
            return None;
        };
        (self.generations.get(slot) == Some(&generation) && self.slots[slot].is_some())
            .then_some(slot)
    }

    pub(crate) fn get(&self, slot: usize) -> Option<&T> {
        self.slots.get(slot)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Occupied slots.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// One past the highest slot ever used (to visit them all).
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_token_decodes_to_what_it_was_built_from() {
        assert_eq!(Token::WAKE.kind(), TokenKind::Wake);
        for i in [0, 1, 7, 1 << 20] {
            assert_eq!(Token::listener(i).kind(), TokenKind::Listener(i));
            assert_eq!(Token::listener(i).listener_index(), Some(i));
        }
        for slot in [0, 1, 12_345, (1 << 31) - 1] {
            for generation in [0, 1, 77, GENERATION_MASK] {
                for backend in [false, true] {
                    let t = Token::leg(slot, generation, backend);
                    assert_eq!(
                        t.kind(),
                        TokenKind::Leg {
                            slot,
                            generation,
                            backend
                        }
                    );
                    assert_eq!(t.listener_index(), None);
                    assert_eq!(Token::from_raw(t.raw()), t);
                }
            }
        }
        assert_eq!(Token::WAKE.listener_index(), None);
    }

    #[test]
    fn a_leg_token_is_never_a_listener_or_the_wake_token() {
        let t = Token::leg((1 << 31) - 1, GENERATION_MASK, true);
        assert_ne!(t, Token::WAKE);
        assert!(matches!(t.kind(), TokenKind::Leg { .. }));
    }

    #[test]
    fn generations_wrap_within_31_bits() {
        let mut slab = Slab::new();
        let slot = slab.insert(());
        slab.generations[slot] = GENERATION_MASK;
        slab.remove(slot);
        slab.end_turn();
        assert_eq!(slab.insert(()), slot);
        assert_eq!(slab.generations[slot], 0);
        assert!(matches!(
            slab.token(slot, true).kind(),
            TokenKind::Leg { generation: 0, .. }
        ));
    }

    #[test]
    fn a_stale_token_finds_nothing_after_its_slot_is_reused() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        let old = slab.token(a, false);
        assert_eq!(slab.slot_of(old), Some(a));
        assert_eq!(slab.slot_of(slab.token(a, true)), Some(a));

        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.slot_of(old), None, "freed slot");
        assert_eq!(slab.remove(a), None);

        // Not reused in the turn it was freed.
        let b = slab.insert("b");
        assert_ne!(b, a);
        slab.end_turn();
        let c = slab.insert("c");
        assert_eq!(c, a, "reused next turn");
        assert_eq!(slab.slot_of(old), None, "older generation");
        assert_eq!(slab.slot_of(slab.token(c, false)), Some(c));
        assert_eq!(slab.get(c), Some(&"c"));
        assert_eq!(slab.len(), 2);
    }

    #[test]
    fn listener_and_wake_tokens_name_no_slot() {
        let mut slab = Slab::new();
        slab.insert(());
        assert_eq!(slab.slot_of(Token::listener(0)), None);
        assert_eq!(slab.slot_of(Token::WAKE), None);
        assert_eq!(slab.slot_of(Token::leg(5, 1, false)), None, "never used");
    }
}
