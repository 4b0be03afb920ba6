//! Send and receive state of one reliable-ordered channel.
//!
//! The sender keeps every message until each of its fragments has been acknowledged. Messages
//! are numbered with a 16-bit id; the oldest unacknowledged one sits at the front of
//! `messages`, so a message's position is `id - front_id` and lookups are O(1). Fragments are
//! sent for the first time in order (tracked by a cursor) and queued for a resend check in the
//! order they were sent; since every fragment waits the same resend timeout, the queue is
//! ordered by due time and the next resend is always at its front.
//!
//! The receiver keeps one slot per message id in `[next_id, next_id + window)`; complete
//! messages leave from the front in order.

use std::collections::VecDeque;
use std::time::Duration;

use smallvec::{SmallVec, smallvec};

use super::ConnectionStats;

/// Memory charged per held message or fragment on top of its bytes, so that a flood of empty
/// messages still counts against the receive budget.
pub(super) const HELD_OVERHEAD: usize = 32;
/// Memory charged per fragment slot of a partly received message.
const FRAGMENT_SLOT_COST: usize = std::mem::size_of::<Option<Vec<u8>>>();

#[derive(Debug, Clone, Copy)]
struct OutFragment {
    last_sent: Option<Duration>,
    acked: bool,
}

#[derive(Debug)]
struct OutMessage {
    /// Emptied once every fragment is acknowledged.
    data: Vec<u8>,
    fragments: SmallVec<[OutFragment; 1]>,
    unacked: u16,
}

/// A resend check: fragment `frag` of message `id` was sent at `sent_at`. Stale once that
/// fragment is acknowledged or sent again.
#[derive(Debug, Clone, Copy)]
struct ResendEntry {
    id: u16,
    frag: u16,
    sent_at: Duration,
}

/// A fragment the sender may put in the next packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) id: u16,
    pub(super) frag: u16,
    pub(super) count: u16,
    /// Byte range of the fragment within its message.
    pub(super) start: usize,
    pub(super) end: usize,
}

#[derive(Debug, Default)]
pub(super) struct ReliableSend {
    front_id: u16,
    messages: VecDeque<OutMessage>,
    /// Next fragment never sent: position in `messages` and fragment index.
    unsent_pos: usize,
    unsent_frag: u16,
    resends: VecDeque<ResendEntry>,
    /// Fragments sent at least once and not yet acknowledged.
    in_flight: usize,
    /// Bytes of messages not yet fully acknowledged.
    bytes: usize,
}

impl ReliableSend {
    /// A sender whose first message gets id `first_id`.
    #[cfg(test)]
    pub(super) fn starting_at(first_id: u16) -> Self {
        Self {
            front_id: first_id,
            ..Self::default()
        }
    }

    /// Fragments sent at least once and not yet acknowledged.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages not yet fully acknowledged, sent or not.
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Bytes of messages not yet fully acknowledged.
    pub(super) fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Queues a message split into `count` fragments.
    pub(super) fn push(&mut self, data: Vec<u8>, count: u16) {
        let fragment = OutFragment {
            last_sent: None,
            acked: false,
        };
        self.bytes += data.len();
        self.messages.push_back(OutMessage {
            data,
            fragments: smallvec![fragment; usize::from(count)],
            unacked: count,
        });
    }

    fn position(&self, id: u16) -> Option<usize> {
        let pos = usize::from(id.wrapping_sub(self.front_id));
        (pos < self.messages.len()).then_some(pos)
    }

    fn is_live(&self, e: &ResendEntry) -> bool {
        self.position(e.id).is_some_and(|pos| {
            let f = self.messages[pos].fragments[usize::from(e.frag)];
            !f.acked && f.last_sent == Some(e.sent_at)
        })
    }

    /// Drops resend checks at the front that no longer apply.
    pub(super) fn purge(&mut self) {
        while let Some(e) = self.resends.front() {
            if self.is_live(e) {
                break;
            }
            self.resends.pop_front();
        }
    }

    fn candidate(&self, pos: usize, frag: u16, frag_len: usize) -> Candidate {
        let m = &self.messages[pos];
        let count = m.fragments.len() as u16;
        let (start, end) = if count == 1 {
            (0, m.data.len())
        } else {
            let start = usize::from(frag) * frag_len;
            (start, (start + frag_len).min(m.data.len()))
        };
        Candidate {
            id: self.front_id.wrapping_add(pos as u16),
            frag,
            count,
            start,
            end,
        }
    }

    /// The oldest fragment whose resend timeout has passed, if any. Call [`Self::purge`] first.
    pub(super) fn due_resend(
        &self,
        now: Duration,
        rto: Duration,
        frag_len: usize,
    ) -> Option<Candidate> {
        let e = self.resends.front()?;
        if e.sent_at.saturating_add(rto) > now {
            return None;
        }
        let pos = self.position(e.id)?;
        Some(self.candidate(pos, e.frag, frag_len))
    }

    /// The next never-sent fragment, if its message is within `window` of the oldest
    /// unacknowledged one.
    pub(super) fn next_new(&self, window: usize, frag_len: usize) -> Option<Candidate> {
        (self.unsent_pos < self.messages.len() && self.unsent_pos < window)
            .then(|| self.candidate(self.unsent_pos, self.unsent_frag, frag_len))
    }

    /// The message bytes a candidate refers to.
    pub(super) fn bytes(&self, c: &Candidate) -> &[u8] {
        self.position(c.id)
            .map_or(&[][..], |pos| &self.messages[pos].data[c.start..c.end])
    }

    /// Records that `c` went out at `now`; returns true if it had been sent before.
    pub(super) fn mark_sent(&mut self, c: &Candidate, now: Duration) -> bool {
        let Some(pos) = self.position(c.id) else {
            return false;
        };
        let f = &mut self.messages[pos].fragments[usize::from(c.frag)];
        let resent = f.last_sent.is_some();
        f.last_sent = Some(now);
        if resent {
            // It came from the front of the resend queue.
            self.resends.pop_front();
        } else {
            self.in_flight += 1;
            self.unsent_frag += 1;
            if usize::from(self.unsent_frag) == self.messages[pos].fragments.len() {
                self.unsent_pos += 1;
                self.unsent_frag = 0;
            }
        }
        self.resends.push_back(ResendEntry {
            id: c.id,
            frag: c.frag,
            sent_at: now,
        });
        resent
    }

    /// Marks a fragment acknowledged and releases fully acknowledged messages from the front.
    pub(super) fn ack(&mut self, id: u16, frag: u16) {
        let Some(pos) = self.position(id) else {
            return;
        };
        let m = &mut self.messages[pos];
        let Some(f) = m.fragments.get_mut(usize::from(frag)) else {
            return;
        };
        if f.acked || f.last_sent.is_none() {
            return;
        }
        f.acked = true;
        m.unacked -= 1;
        self.in_flight -= 1;
        if m.unacked == 0 {
            self.bytes -= m.data.len();
            m.data = Vec::new();
        }
        while self.messages.front().is_some_and(|m| m.unacked == 0) {
            self.messages.pop_front();
            self.front_id = self.front_id.wrapping_add(1);
            // Everything acknowledged was sent, so the cursor is past it.
            self.unsent_pos -= 1;
        }
    }

    /// Earliest time this channel may want to send: `now` if a new fragment is within the
    /// window (and `may_send_new`), else the front resend check (possibly stale, which only
    /// means an early wake).
    pub(super) fn timeout(
        &self,
        now: Duration,
        rto: Duration,
        window: usize,
        may_send_new: bool,
    ) -> Option<Duration> {
        if may_send_new && self.unsent_pos < self.messages.len() && self.unsent_pos < window {
            return Some(now);
        }
        self.resends.front().map(|e| e.sent_at.saturating_add(rto))
    }
}

#[derive(Debug)]
struct Partial {
    fragments: Vec<Option<Vec<u8>>>,
    have: u16,
    bytes: usize,
    /// Memory charged for this message so far.
    cost: usize,
}

#[derive(Debug, Default)]
enum InSlot {
    #[default]
    Empty,
    Partial(Partial),
    Complete(Vec<u8>),
}

/// What happened to a received reliable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Insert {
    /// Stored (and possibly completed a message).
    Accepted,
    /// Already delivered or already held.
    Duplicate,
    /// Beyond the receive window or over the memory budget; the packet must not be
    /// acknowledged so the sender tries again.
    Refused,
}

/// Received-bytes accounting shared by all channels of a connection.
#[derive(Debug)]
pub(super) struct Budget<'a> {
    pub(super) held: &'a mut usize,
    pub(super) max: usize,
    /// True when nothing waits in the delivery queue: the next in-order message may then be
    /// accepted over budget, which keeps a full buffer of later messages from deadlocking.
    pub(super) delivery_queue_empty: bool,
}

impl Budget<'_> {
    fn admits(&self, cost: usize, next_in_order: bool) -> bool {
        self.held.saturating_add(cost) <= self.max || (next_in_order && self.delivery_queue_empty)
    }
}

#[derive(Debug, Default)]
pub(super) struct ReliableRecv {
    next_id: u16,
    slots: VecDeque<InSlot>,
}

impl ReliableRecv {
    /// A receiver expecting message `first_id` first.
    #[cfg(test)]
    pub(super) fn starting_at(first_id: u16) -> Self {
        Self {
            next_id: first_id,
            slots: VecDeque::new(),
        }
    }

    /// Messages and fragments held (for tests and assertions).
    #[cfg(test)]
    pub(super) fn held_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s, InSlot::Empty))
            .count()
    }

    /// Stores fragment `index` of `count` of message `id`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert(
        &mut self,
        id: u16,
        count: u16,
        index: u16,
        data: &[u8],
        window: usize,
        max_message_size: usize,
        budget: Budget<'_>,
        stats: &mut ConnectionStats,
    ) -> Insert {
        let offset = id.wrapping_sub(self.next_id);
        if offset >= 0x8000 {
            return Insert::Duplicate;
        }
        let offset = usize::from(offset);
        if offset >= window {
            return Insert::Refused;
        }
        if self.slots.len() <= offset {
            self.slots.resize_with(offset + 1, InSlot::default);
        }
        let next_in_order = offset == 0;
        let slot = &mut self.slots[offset];

        // A well-behaved peer always sends the same fragment count for a message and never
        // more than `max_message_size` in total; anything else means the held fragments or
        // this one are corrupt. Start over from this fragment: the sender keeps resending the
        // genuine ones until the message completes.
        if let InSlot::Partial(p) = slot {
            let mismatch = p.fragments.len() != usize::from(count)
                || (p.fragments[usize::from(index)].is_none()
                    && p.bytes + data.len() > max_message_size);
            if mismatch {
                *budget.held -= p.cost;
                *slot = InSlot::Empty;
                stats.reassembly_resets += 1;
            }
        }

        match slot {
            InSlot::Complete(_) => Insert::Duplicate,
            InSlot::Empty if count == 1 => {
                let cost = data.len() + HELD_OVERHEAD;
                if !budget.admits(cost, next_in_order) {
                    return Insert::Refused;
                }
                *budget.held += cost;
                *slot = InSlot::Complete(data.to_vec());
                Insert::Accepted
            }
            InSlot::Empty => {
                let cost = usize::from(count) * FRAGMENT_SLOT_COST + data.len() + HELD_OVERHEAD;
                if !budget.admits(cost, next_in_order) {
                    return Insert::Refused;
                }
                *budget.held += cost;
                let mut fragments = vec![None; usize::from(count)];
                fragments[usize::from(index)] = Some(data.to_vec());
                *slot = InSlot::Partial(Partial {
                    fragments,
                    have: 1,
                    bytes: data.len(),
                    cost,
                });
                Insert::Accepted
            }
            InSlot::Partial(p) => {
                let i = usize::from(index);
                if p.fragments[i].is_some() {
                    return Insert::Duplicate;
                }
                let cost = data.len() + HELD_OVERHEAD;
                if !budget.admits(cost, next_in_order) {
                    return Insert::Refused;
                }
                *budget.held += cost;
                p.fragments[i] = Some(data.to_vec());
                p.have += 1;
                p.bytes += data.len();
                p.cost += cost;
                if usize::from(p.have) == p.fragments.len() {
                    let mut whole = Vec::with_capacity(p.bytes);
                    for f in p.fragments.iter().flatten() {
                        whole.extend_from_slice(f);
                    }
                    *budget.held = *budget.held - p.cost + whole.len() + HELD_OVERHEAD;
                    *slot = InSlot::Complete(whole);
                }
                Insert::Accepted
            }
        }
    }

    /// The next message in order, if it is complete. Its memory charge (`len +
    /// HELD_OVERHEAD`) moves with it to the delivery queue.
    pub(super) fn pop_ready(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.slots.front(), Some(InSlot::Complete(_))) {
            return None;
        }
        self.next_id = self.next_id.wrapping_add(1);
        match self.slots.pop_front() {
            Some(InSlot::Complete(data)) => Some(data),
            _ => None,
        }
    }
}
