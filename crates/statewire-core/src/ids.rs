//! Identifier newtypes and the ownership model.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A networked entity, as named on the wire. The game allocates the numbers (a counter is
/// best); they must be unique among live replicated entities and should not be reused soon
/// after a despawn: a reused id whose despawn and respawn land in the same snapshot reaches
/// clients as an update of the old entity. ECS entity indices (which ECSs recycle at once) are
/// therefore a poor choice; keep a map from ECS entity to `EntityId` on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityId(pub u32);

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// A connected client. Small, copyable and serializable: it names a player, never a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client#{}", self.0)
    }
}

/// A simulation tick. Tick numbers wrap around after `u32::MAX`; compare them with
/// [`Tick::is_after`] or [`Tick::wrapping_cmp`], which treat the nearer direction as the truth
/// (serial-number arithmetic, RFC 1982), never with `<` on the raw numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Tick(pub u32);

impl Tick {
    /// The tick after this one (wrapping).
    #[must_use]
    pub fn next(self) -> Tick {
        Tick(self.0.wrapping_add(1))
    }

    /// Signed distance from `earlier` to `self`: positive when `self` is later.
    #[must_use]
    pub fn diff(self, earlier: Tick) -> i32 {
        // Reinterpreting the wrapped difference as signed picks the shorter way round the circle.
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// Whether `self` is strictly later than `other`, across wrap-around.
    #[must_use]
    pub fn is_after(self, other: Tick) -> bool {
        self.diff(other) > 0
    }

    /// Wrap-aware ordering: `Less` when `self` is earlier than `other`.
    #[must_use]
    pub fn wrapping_cmp(self, other: Tick) -> Ordering {
        self.diff(other).cmp(&0)
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// Who is authoritative for an entity's state.
///
/// The server may always write (it is the arbiter: it validates, resolves and may take
/// authority back). A client may write only the entities it owns; every other write from it is
/// rejected. Transfer of ownership is decided by the server and replicated like any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Owner {
    /// The server simulates the entity; clients only send inputs for it.
    #[default]
    Server,
    /// The client with this id writes the entity's state; the server validates and relays.
    Client(ClientId),
}

/// Who attempts a write, for [`Owner::may_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Writer {
    /// The server process itself.
    Server,
    /// A remote client.
    Client(ClientId),
}

impl Owner {
    /// Whether `writer` may change the state of an entity owned by `self`.
    #[must_use]
    pub fn may_write(self, writer: Writer) -> bool {
        match (self, writer) {
            (_, Writer::Server) => true,
            (Owner::Client(owner), Writer::Client(c)) => owner == c,
            (Owner::Server, Writer::Client(_)) => false,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Server => f.write_str("server"),
            Owner::Client(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_comparisons_survive_wraparound() {
        let a = Tick(u32::MAX - 1);
        let b = a.next().next(); // wraps to 0
        assert_eq!(b, Tick(0));
        assert!(b.is_after(a));
        assert!(!a.is_after(b));
        assert_eq!(b.diff(a), 2);
        assert_eq!(a.diff(b), -2);
        assert_eq!(a.wrapping_cmp(b), Ordering::Less);
        assert_eq!(b.wrapping_cmp(b), Ordering::Equal);
    }

    #[test]
    fn ownership_rules() {
        let alice = ClientId(1);
        let bob = ClientId(2);
        assert!(Owner::Server.may_write(Writer::Server));
        assert!(!Owner::Server.may_write(Writer::Client(alice)));
        assert!(Owner::Client(alice).may_write(Writer::Client(alice)));
        assert!(!Owner::Client(alice).may_write(Writer::Client(bob)));
        assert!(Owner::Client(alice).may_write(Writer::Server));
    }

    #[test]
    fn display() {
        assert_eq!(EntityId(7).to_string(), "e7");
        assert_eq!(ClientId(3).to_string(), "client#3");
        assert_eq!(Tick(9).to_string(), "t9");
        assert_eq!(Owner::Client(ClientId(3)).to_string(), "client#3");
    }
}
