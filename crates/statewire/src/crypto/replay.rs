//! Replay protection over 64-bit packet sequence numbers.

/// Sequence numbers remembered by a [`ReplayWindow`].
pub const REPLAY_WINDOW: usize = 256;

/// Remembers which of the last [`REPLAY_WINDOW`] sequence numbers were received, netcode.io
/// style: a packet is refused if its number was seen, or is so old that it fell out of the
/// window. Check with [`ReplayWindow::is_replay`] before decrypting, and record with
/// [`ReplayWindow::accept`] only after the packet authenticated, so a forged packet can never
/// move the window.
#[derive(Clone)]
pub struct ReplayWindow {
    newest: Option<u64>,
    /// `slots[s % REPLAY_WINDOW]` holds `s` once `s` was accepted.
    slots: Box<[u64; REPLAY_WINDOW]>,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("newest", &self.newest)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every sequence number is new.
    #[must_use]
    pub fn new() -> Self {
        ReplayWindow {
            newest: None,
            slots: Box::new([u64::MAX; REPLAY_WINDOW]),
        }
    }

    /// Whether `seq` must be refused: seen before, or older than the window.
    #[must_use]
    pub fn is_replay(&self, seq: u64) -> bool {
        let Some(newest) = self.newest else {
            return seq == u64::MAX;
        };
        if seq.saturating_add(REPLAY_WINDOW as u64) <= newest || seq == u64::MAX {
            return true;
        }
        self.slots[(seq % REPLAY_WINDOW as u64) as usize] == seq
    }

    /// Records `seq` as received (call after the packet authenticated).
    pub fn accept(&mut self, seq: u64) {
        self.slots[(seq % REPLAY_WINDOW as u64) as usize] = seq;
        self.newest = Some(self.newest.map_or(seq, |n| n.max(seq)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_and_old_packets_are_refused() {
        let mut w = ReplayWindow::new();
        assert!(!w.is_replay(0));
        w.accept(0);
        assert!(w.is_replay(0));
        assert!(!w.is_replay(5));
        w.accept(5);
        // Out of order but inside the window: still new.
        assert!(!w.is_replay(3));
        w.accept(3);
        assert!(w.is_replay(3));
        w.accept(1000);
        assert!(w.is_replay(1000 - REPLAY_WINDOW as u64));
        assert!(!w.is_replay(1000 - REPLAY_WINDOW as u64 + 1));
        assert!(w.is_replay(5), "far behind the newest");
        assert!(w.is_replay(u64::MAX));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a reference set: a number is accepted at most once, and a fresh number
        /// within the window is never refused.
        #[test]
        fn matches_a_reference_set(seqs in proptest::collection::vec(0u64..600, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut newest: Option<u64> = None;
            for s in seqs {
                let fresh = !seen.contains(&s)
                    && newest.is_none_or(|n| s + REPLAY_WINDOW as u64 > n);
                prop_assert_eq!(!w.is_replay(s), fresh, "seq {}", s);
                if fresh {
                    w.accept(s);
                    seen.insert(s);
                    newest = Some(newest.map_or(s, |n| n.max(s)));
                }
            }
        }
    }
}
