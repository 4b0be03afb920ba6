//! The relay: forwards datagrams between the two ends of an allocation when hole punching
//! fails.
//!
//! [`Relay`] is a sans-IO state machine: it owns no socket and reads no clock. The caller
//! passes each datagram with the time and the sender's address to [`Relay::handle`], sends
//! what it writes (if anything) to the address it returns, and calls [`Relay::handle_timeout`]
//! when [`Relay::poll_timeout`] says. [`run_udp`] is that loop over a blocking
//! [`UdpSocket`]:
//!
//! ```no_run
//! # use std::time::Instant;
//! # use statewire_lobby::relay::{Relay, RelayConfig};
//! # let socket = std::net::UdpSocket::bind("0.0.0.0:7900").unwrap();
//! # let (mut relay, start) = (Relay::new(statewire::Key::random(), RelayConfig::default()), Instant::now());
//! let mut buf = [0u8; 2048];
//! let mut out = Vec::new();
//! loop {
//!     let (n, from) = socket.recv_from(&mut buf).unwrap();
//!     let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
//!     if let Some(to) = relay.handle(start.elapsed(), unix.as_secs(), from, &buf[..n], &mut out) {
//!         let _ = socket.send_to(&out, to);
//!     }
//!     if relay.poll_timeout().is_some_and(|t| t <= start.elapsed()) {
//!         relay.handle_timeout(start.elapsed());
//!     }
//! }
//! ```
//!
//! The relay is not an open proxy: it forwards only between the two addresses bound to an
//! allocation, and an address binds only with a [`RelayTicket`] the lobby sealed under the key
//! the lobby and the relay share. It never answers with more bytes than it was sent, and its
//! refusals are rate-limited per source, so it cannot amplify a flood.
//!
//! ```text
//! all integers little-endian; the first byte is the kind (0x78..=0x7B, clear of the session
//! layer's 0x10..=0x26 and the lobby's 0x50..=0x71)
//! 0x78 Bind    ticket:[58]               end → relay, 59 bytes: "I am this role of this
//!                                        allocation" (also a refresh; never shorter than a reply)
//! 0x79 Bound   alloc_id:u64 role:u8      relay → end, 10 bytes: the binding holds
//! 0x7A Data    alloc_id:u64 payload...   end → relay → the other end, forwarded unchanged
//! 0x7B Refused alloc_id:u64 reason:u8    relay → sender, 10 bytes; reason 1 not bound,
//!                                        2 forged ticket, 3 expired ticket, 4 over the byte
//!                                        limit, 5 relay full (alloc_id 0 if the ticket was
//!                                        forged); only sent in answer to 10 bytes or more
//! ```
//!
//! A `Bind` with a valid ticket creates the allocation (if the relay has room) and binds the
//! sender's address to the ticket's role; a later one from another address moves that end
//! (NAT rebinding). An allocation with neither `Data` nor `Bind` for
//! [`RelayConfig::idle_timeout`] is removed.
//!
//! Limits to know: a ticket is a bearer credential until it expires, so whoever holds it (or
//! sees a `Bind` on the path) can move that end to its own address. An allocation removed for
//! idleness can be created again by an unexpired ticket, with a fresh byte budget.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statewire::Key;

use crate::ticket::{AllocId, RelayTicket, Role, TICKET_LEN, TicketError};

/// Kind byte of a `Bind`.
pub const KIND_BIND: u8 = 0x78;
/// Kind byte of a `Bound`.
pub const KIND_BOUND: u8 = 0x79;
/// Kind byte of a `Data`.
pub const KIND_DATA: u8 = 0x7A;
/// Kind byte of a `Refused`.
pub const KIND_REFUSED: u8 = 0x7B;
/// Bytes of a `Bind`.
pub const BIND_LEN: usize = 1 + TICKET_LEN;
/// Bytes of a `Bound`.
pub const BOUND_LEN: usize = 1 + 8 + 1;
/// Bytes of a `Refused`.
pub const REFUSED_LEN: usize = 1 + 8 + 1;
/// Bytes of a `Data` before its payload.
pub const DATA_HEADER_LEN: usize = 1 + 8;

// An answer to a Bind is never larger than the Bind.
const _: () = assert!(BIND_LEN >= BOUND_LEN && BIND_LEN >= REFUSED_LEN);

/// How often, at most, the relay forgets the refusal budgets of quiet sources.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Why the relay refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The allocation does not exist, or the sender is not bound to it (wire value 1).
    NotBound,
    /// The ticket does not authenticate (wire value 2).
    ForgedTicket,
    /// The ticket has expired (wire value 3).
    ExpiredTicket,
    /// The allocation forwarded [`RelayConfig::max_bytes`] (wire value 4).
    OverLimit,
    /// The relay holds [`RelayConfig::max_allocations`] (wire value 5).
    Full,
}

impl RefuseReason {
    /// The reason's wire value.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            RefuseReason::NotBound => 1,
            RefuseReason::ForgedTicket => 2,
            RefuseReason::ExpiredTicket => 3,
            RefuseReason::OverLimit => 4,
            RefuseReason::Full => 5,
        }
    }

    /// The reason with this wire value, if any.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<RefuseReason> {
        Some(match v {
            1 => RefuseReason::NotBound,
            2 => RefuseReason::ForgedTicket,
            3 => RefuseReason::ExpiredTicket,
            4 => RefuseReason::OverLimit,
            5 => RefuseReason::Full,
            _ => return None,
        })
    }
}

/// One relay datagram, read by [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayPacket<'a> {
    /// An end presents its ticket.
    Bind(RelayTicket),
    /// The relay confirms a binding.
    Bound {
        /// The allocation.
        alloc_id: AllocId,
        /// The end the sender of the `Bind` now is.
        role: Role,
    },
    /// Payload between the ends.
    Data {
        /// The allocation.
        alloc_id: AllocId,
        /// The bytes for the other end.
        payload: &'a [u8],
    },
    /// The relay refused a datagram.
    Refused {
        /// The allocation named by the refused datagram (0 if its ticket did not open).
        alloc_id: AllocId,
        /// Why.
        reason: RefuseReason,
    },
}

/// Why bytes are not a relay datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayDecodeError {
    /// The datagram is empty.
    #[error("empty datagram")]
    Empty,
    /// The first byte is not a relay kind.
    #[error("kind {0:#04x} is not a relay datagram")]
    Kind(u8),
    /// The datagram ends before its fixed fields do.
    #[error("the relay datagram is truncated")]
    Truncated,
    /// A fixed-size datagram has bytes after its fields.
    #[error("the relay datagram has trailing bytes")]
    Trailing,
    /// The ticket in a `Bind` is of an unknown version.
    #[error("bad ticket: {0}")]
    Ticket(TicketError),
    /// A `Bound` names a role that does not exist.
    #[error("role {0} does not exist")]
    Role(u8),
    /// A `Refused` gives a reason that does not exist.
    #[error("refusal reason {0} does not exist")]
    Reason(u8),
}

/// Whether `datagram` is a relay datagram (its first byte is 0x78..=0x7B), so that a socket
/// shared with the session and lobby protocols can route it.
#[must_use]
pub fn is_relay_packet(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(KIND_BIND..=KIND_REFUSED))
}

/// Writes a `Bind` for `ticket` into `out` (cleared first).
pub fn encode_bind(ticket: &RelayTicket, out: &mut Vec<u8>) {
    out.clear();
    out.push(KIND_BIND);
    out.extend_from_slice(ticket.as_bytes());
}

/// Writes a `Data` carrying `payload` through `alloc_id` into `out` (cleared first).
pub fn encode_data(alloc_id: AllocId, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(KIND_DATA);
    out.extend_from_slice(&alloc_id.0.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes a `Bound` into `out` (cleared first).
pub fn encode_bound(alloc_id: AllocId, role: Role, out: &mut Vec<u8>) {
    out.clear();
    out.push(KIND_BOUND);
    out.extend_from_slice(&alloc_id.0.to_le_bytes());
    out.push(role.to_u8());
}

/// Writes a `Refused` into `out` (cleared first).
pub fn encode_refused(alloc_id: AllocId, reason: RefuseReason, out: &mut Vec<u8>) {
    out.clear();
    out.push(KIND_REFUSED);
    out.extend_from_slice(&alloc_id.0.to_le_bytes());
    out.push(reason.to_u8());
}

/// Reader over a bounded slice; every read checks the length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RelayDecodeError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or(RelayDecodeError::Truncated)?;
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RelayDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn alloc_id(&mut self) -> Result<AllocId, RelayDecodeError> {
        let bytes: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| RelayDecodeError::Truncated)?;
        Ok(AllocId(u64::from_le_bytes(bytes)))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn finish(&self) -> Result<(), RelayDecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RelayDecodeError::Trailing)
        }
    }
}

/// Reads one relay datagram.
pub fn decode(datagram: &[u8]) -> Result<RelayPacket<'_>, RelayDecodeError> {
    let mut r = Reader(datagram);
    let kind = r.u8().map_err(|_| RelayDecodeError::Empty)?;
    let packet = match kind {
        KIND_BIND => {
            let ticket =
                RelayTicket::from_bytes(r.take(TICKET_LEN)?).map_err(RelayDecodeError::Ticket)?;
            RelayPacket::Bind(ticket)
        }
        KIND_BOUND => {
            let alloc_id = r.alloc_id()?;
            let v = r.u8()?;
            let role = Role::from_u8(v).ok_or(RelayDecodeError::Role(v))?;
            RelayPacket::Bound { alloc_id, role }
        }
        KIND_DATA => {
            let alloc_id = r.alloc_id()?;
            RelayPacket::Data {
                alloc_id,
                payload: r.rest(),
            }
        }
        KIND_REFUSED => {
            let alloc_id = r.alloc_id()?;
            let v = r.u8()?;
            let reason = RefuseReason::from_u8(v).ok_or(RelayDecodeError::Reason(v))?;
            RelayPacket::Refused { alloc_id, reason }
        }
        other => return Err(RelayDecodeError::Kind(other)),
    };
    r.finish()?;
    Ok(packet)
}

/// Limits of a [`Relay`]. Every resource it holds is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Most allocations held at once; a `Bind` for a new one beyond this is refused with
    /// [`RefuseReason::Full`]. Default 10,000.
    pub max_allocations: usize,
    /// Most bytes (whole `Data` datagrams) one allocation forwards in its life, both
    /// directions together; then it refuses with [`RefuseReason::OverLimit`]. Default 1 GiB.
    pub max_bytes: u64,
    /// Bytes per second one allocation forwards, both directions together (a token bucket
    /// holding one second's worth); datagrams over it are dropped. Default 256 KiB/s.
    pub bytes_per_sec: u64,
    /// Datagrams per second one allocation forwards (a token bucket holding one second's
    /// worth); datagrams over it are dropped. Default 500.
    pub packets_per_sec: u64,
    /// An allocation with neither `Data` nor `Bind` from its ends for this long is removed.
    /// Default 30 s.
    pub idle_timeout: Duration,
    /// Largest datagram the relay reads; larger ones are dropped. Must be at least
    /// [`BIND_LEN`]. Default 1400 + [`DATA_HEADER_LEN`] (a 1400-byte payload).
    pub max_datagram: usize,
    /// Refusals sent per second to one source address (a token bucket holding one second's
    /// worth); past it the relay stays silent. Default 4.
    pub refusals_per_sec: u64,
    /// Most source addresses whose refusal budget the relay tracks; new sources past it get
    /// no refusals until quiet ones are forgotten (about a second). Default 4,096.
    pub max_refusal_sources: usize,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            max_allocations: 10_000,
            max_bytes: 1 << 30,
            bytes_per_sec: 256 * 1024,
            packets_per_sec: 500,
            idle_timeout: Duration::from_secs(30),
            max_datagram: 1400 + DATA_HEADER_LEN,
            refusals_per_sec: 4,
            max_refusal_sources: 4096,
        }
    }
}

/// Counters of a [`Relay`] since it was made (except `allocations`, the current count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// `Data` datagrams forwarded.
    pub forwarded_packets: u64,
    /// Bytes of the `Data` datagrams forwarded.
    pub forwarded_bytes: u64,
    /// Valid `Bind`s (including refreshes and rebinds).
    pub binds: u64,
    /// `Bind`s that moved an end to a new address.
    pub rebinds: u64,
    /// `Data` from an address not bound to the allocation it names (never forwarded).
    pub refused_unbound: u64,
    /// `Bind`s with a ticket that did not authenticate.
    pub refused_forged: u64,
    /// `Bind`s with an expired ticket.
    pub refused_expired: u64,
    /// Datagrams for an allocation past [`RelayConfig::max_bytes`].
    pub refused_over_limit: u64,
    /// `Bind`s for a new allocation while the relay was full.
    pub refused_full: u64,
    /// Refusals not sent: the source's budget was spent, or the datagram was smaller than a
    /// refusal.
    pub refusals_suppressed: u64,
    /// `Data` dropped by an allocation's rate limits.
    pub dropped_rate: u64,
    /// `Data` dropped because the other end was not bound yet.
    pub dropped_unbound_peer: u64,
    /// Datagrams that are not relay datagrams, are malformed, are relay-to-end kinds, or are
    /// larger than [`RelayConfig::max_datagram`].
    pub malformed: u64,
    /// Allocations made.
    pub allocations_created: u64,
    /// Allocations removed for idleness.
    pub allocations_expired: u64,
    /// Allocations held now.
    pub allocations: u64,
}

/// A token bucket with exact integer arithmetic: the level is kept in units of
/// 1/1,000,000,000 of a token, so a refill over any interval loses nothing to rounding.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: u128,
    last: Duration,
}

impl Bucket {
    fn full(per_sec: u64, now: Duration) -> Bucket {
        Bucket {
            level: u128::from(per_sec) * NANOS_PER_SEC,
            last: now,
        }
    }

    fn refill(&mut self, per_sec: u64, now: Duration) {
        let cap = u128::from(per_sec) * NANOS_PER_SEC;
        let elapsed = now.saturating_sub(self.last).as_nanos();
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(u128::from(per_sec)))
            .min(cap);
        self.last = self.last.max(now);
    }

    fn is_full(&mut self, per_sec: u64, now: Duration) -> bool {
        self.refill(per_sec, now);
        self.level >= u128::from(per_sec) * NANOS_PER_SEC
    }

    fn has(&self, n: u64) -> bool {
        self.level >= u128::from(n) * NANOS_PER_SEC
    }

    fn spend(&mut self, n: u64) {
        self.level = self.level.saturating_sub(u128::from(n) * NANOS_PER_SEC);
    }
}

#[derive(Debug)]
struct Allocation {
    /// Addresses of the host and the joiner, by [`Role::index`].
    ends: [Option<SocketAddr>; 2],
    forwarded: u64,
    bytes: Bucket,
    packets: Bucket,
    last_active: Duration,
}

/// The relay state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Relay {
    key: Key,
    config: RelayConfig,
    allocations: HashMap<AllocId, Allocation>,
    refusals: HashMap<SocketAddr, Bucket>,
    /// No allocation expires before this (a lower bound: activity only moves deadlines
    /// later, and [`Relay::handle_timeout`] recomputes it).
    next_expiry: Option<Duration>,
    last_sweep: Duration,
    stats: RelayStats,
}

impl Relay {
    /// A relay opening tickets with `key` (the key the lobby seals them with).
    #[must_use]
    pub fn new(key: Key, config: RelayConfig) -> Relay {
        Relay {
            key,
            config,
            allocations: HashMap::new(),
            refusals: HashMap::new(),
            next_expiry: None,
            last_sweep: Duration::ZERO,
            stats: RelayStats::default(),
        }
    }

    /// The relay's limits.
    #[must_use]
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Handles one datagram from `from` at `now` (any monotonic origin) and `now_unix_secs`
    /// (to check ticket expiry). If the relay answers or forwards, it writes the datagram into
    /// `out` (cleared first) and returns where to send it.
    #[must_use]
    pub fn handle(
        &mut self,
        now: Duration,
        now_unix_secs: u64,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        out.clear();
        if datagram.len() > self.config.max_datagram {
            self.stats.malformed += 1;
            return None;
        }
        match decode(datagram) {
            Ok(RelayPacket::Bind(ticket)) => self.bind(now, now_unix_secs, from, &ticket, out),
            Ok(RelayPacket::Data { alloc_id, .. }) => self.data(now, from, alloc_id, datagram, out),
            // Relay-to-end kinds are never for the relay; answering them could loop two
            // relays into each other.
            Ok(_) | Err(_) => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn bind(
        &mut self,
        now: Duration,
        now_unix_secs: u64,
        from: SocketAddr,
        ticket: &RelayTicket,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let params = match ticket.open(&self.key, now_unix_secs) {
            Ok(p) => p,
            Err(TicketError::Expired { alloc_id, .. }) => {
                self.stats.refused_expired += 1;
                return self.refuse(
                    now,
                    from,
                    alloc_id,
                    RefuseReason::ExpiredTicket,
                    BIND_LEN,
                    out,
                );
            }
            Err(_) => {
                self.stats.refused_forged += 1;
                let reason = RefuseReason::ForgedTicket;
                return self.refuse(now, from, AllocId(0), reason, BIND_LEN, out);
            }
        };
        let id = params.alloc_id;
        self.expire_if_idle(id, now);
        if !self.allocations.contains_key(&id) {
            if self.allocations.len() >= self.config.max_allocations {
                self.stats.refused_full += 1;
                return self.refuse(now, from, id, RefuseReason::Full, BIND_LEN, out);
            }
            self.allocations.insert(
                id,
                Allocation {
                    ends: [None; 2],
                    forwarded: 0,
                    bytes: Bucket::full(self.config.bytes_per_sec, now),
                    packets: Bucket::full(self.config.packets_per_sec, now),
                    last_active: now,
                },
            );
            self.stats.allocations_created += 1;
            let deadline = now + self.config.idle_timeout;
            self.next_expiry = Some(self.next_expiry.map_or(deadline, |t| t.min(deadline)));
        }
        // Present: found or inserted above.
        let alloc = self.allocations.get_mut(&id)?;
        if alloc.forwarded >= self.config.max_bytes {
            self.stats.refused_over_limit += 1;
            return self.refuse(now, from, id, RefuseReason::OverLimit, BIND_LEN, out);
        }
        alloc.last_active = now;
        let end = &mut alloc.ends[params.role.index()];
        if end.is_some_and(|a| a != from) {
            self.stats.rebinds += 1;
        }
        *end = Some(from);
        self.stats.binds += 1;
        encode_bound(id, params.role, out);
        Some(from)
    }

    fn data(
        &mut self,
        now: Duration,
        from: SocketAddr,
        id: AllocId,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        self.expire_if_idle(id, now);
        let len = datagram.len();
        let Some(alloc) = self.allocations.get_mut(&id) else {
            self.stats.refused_unbound += 1;
            return self.refuse(now, from, id, RefuseReason::NotBound, len, out);
        };
        let role = if alloc.ends[0] == Some(from) {
            Role::Host
        } else if alloc.ends[1] == Some(from) {
            Role::Joiner
        } else {
            self.stats.refused_unbound += 1;
            return self.refuse(now, from, id, RefuseReason::NotBound, len, out);
        };
        let len64 = len as u64;
        if alloc.forwarded.saturating_add(len64) > self.config.max_bytes {
            self.stats.refused_over_limit += 1;
            return self.refuse(now, from, id, RefuseReason::OverLimit, len, out);
        }
        alloc.last_active = now;
        let Some(to) = alloc.ends[role.other().index()] else {
            self.stats.dropped_unbound_peer += 1;
            return None;
        };
        alloc.bytes.refill(self.config.bytes_per_sec, now);
        alloc.packets.refill(self.config.packets_per_sec, now);
        if !alloc.bytes.has(len64) || !alloc.packets.has(1) {
            self.stats.dropped_rate += 1;
            return None;
        }
        alloc.bytes.spend(len64);
        alloc.packets.spend(1);
        alloc.forwarded += len64;
        self.stats.forwarded_packets += 1;
        self.stats.forwarded_bytes += len64;
        out.extend_from_slice(datagram);
        Some(to)
    }

    /// Writes a refusal for a datagram of `cause_len` bytes, if it is no larger than that
    /// datagram and the source has budget left.
    fn refuse(
        &mut self,
        now: Duration,
        to: SocketAddr,
        alloc_id: AllocId,
        reason: RefuseReason,
        cause_len: usize,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        if cause_len < REFUSED_LEN {
            self.stats.refusals_suppressed += 1;
            return None;
        }
        let per_sec = self.config.refusals_per_sec;
        let full = self.refusals.len() >= self.config.max_refusal_sources;
        let bucket = match self.refusals.entry(to) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if !full => e.insert(Bucket::full(per_sec, now)),
            Entry::Vacant(_) => {
                self.stats.refusals_suppressed += 1;
                return None;
            }
        };
        bucket.refill(per_sec, now);
        if !bucket.has(1) {
            self.stats.refusals_suppressed += 1;
            return None;
        }
        bucket.spend(1);
        encode_refused(alloc_id, reason, out);
        Some(to)
    }

    fn expire_if_idle(&mut self, id: AllocId, now: Duration) {
        let idle = self.config.idle_timeout;
        if self
            .allocations
            .get(&id)
            .is_some_and(|a| now.saturating_sub(a.last_active) >= idle)
        {
            self.allocations.remove(&id);
            self.stats.allocations_expired += 1;
        }
    }

    /// Removes allocations idle for [`RelayConfig::idle_timeout`] at `now`, and forgets the
    /// refusal budgets of sources that have been quiet.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.next_expiry.is_some_and(|t| t <= now) {
            let idle = self.config.idle_timeout;
            let before = self.allocations.len();
            self.allocations
                .retain(|_, a| now.saturating_sub(a.last_active) < idle);
            self.stats.allocations_expired += (before - self.allocations.len()) as u64;
            self.next_expiry = self
                .allocations
                .values()
                .map(|a| a.last_active + idle)
                .min();
        }
        if !self.refusals.is_empty() && now >= self.last_sweep + SWEEP_INTERVAL {
            let per_sec = self.config.refusals_per_sec;
            // A source whose bucket has refilled is no different from a new one.
            self.refusals.retain(|_, b| !b.is_full(per_sec, now));
            self.last_sweep = now;
        }
    }

    /// When [`Relay::handle_timeout`] should next be called, if there is anything to time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        let sweep = (!self.refusals.is_empty()).then_some(self.last_sweep + SWEEP_INTERVAL);
        match (self.next_expiry, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The relay's counters.
    #[must_use]
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            allocations: self.allocations.len() as u64,
            ..self.stats
        }
    }

    /// Allocations held now.
    #[must_use]
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }
}

/// What [`run_udp`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpRunStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent (forwarded or answered).
    pub sent: u64,
    /// Sends the operating system refused.
    pub send_errors: u64,
    /// Time spent inside [`Relay::handle`] and [`Relay::handle_timeout`].
    pub busy: Duration,
}

/// Longest a [`run_udp`] iteration blocks, so that `stop` is checked that often.
pub const RUN_UDP_MAX_WAIT: Duration = Duration::from_millis(50);

/// Drives `relay` over a blocking `socket` until `stop()` returns true: one datagram per
/// iteration, blocking at most [`RUN_UDP_MAX_WAIT`] (or until the relay's next timeout). The
/// relay's clock is an [`Instant`] taken when this starts; ticket expiry uses the system
/// clock. This is the only place the relay touches a socket or a clock. It changes the
/// socket's read timeout.
pub fn run_udp(
    socket: &UdpSocket,
    relay: &mut Relay,
    stop: &dyn Fn() -> bool,
) -> io::Result<UdpRunStats> {
    let start = Instant::now();
    // One byte more than the relay reads, so that a datagram the kernel truncated is seen as
    // too large rather than read as a shorter one.
    let mut buf = vec![0u8; relay.config().max_datagram + 1];
    let mut out = Vec::with_capacity(buf.len());
    let mut stats = UdpRunStats::default();
    let mut timeout = None;
    while !stop() {
        let now = start.elapsed();
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            let t0 = Instant::now();
            relay.handle_timeout(now);
            stats.busy += t0.elapsed();
        }
        let wait = relay
            .poll_timeout()
            .map_or(RUN_UDP_MAX_WAIT, |t| t.saturating_sub(now))
            .clamp(Duration::from_millis(1), RUN_UDP_MAX_WAIT);
        if timeout != Some(wait) {
            socket.set_read_timeout(Some(wait))?;
            timeout = Some(wait);
        }
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted
                // An ICMP error from an earlier send to an end that went away.
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused => continue,
                _ => return Err(e),
            },
        };
        stats.received += 1;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let t0 = Instant::now();
        let to = relay.handle(start.elapsed(), unix, from, &buf[..n], &mut out);
        stats.busy += t0.elapsed();
        if let Some(to) = to {
            match socket.send_to(&out, to) {
                Ok(_) => stats.sent += 1,
                Err(_) => stats.send_errors += 1,
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::TicketParams;
    use proptest::prelude::*;

    const NOW_UNIX: u64 = 1_700_000_000;

    fn key() -> Key {
        Key::from_bytes([7; 32])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn ticket_with(key: &Key, id: u64, role: Role) -> RelayTicket {
        RelayTicket::seal(
            key,
            &TicketParams {
                alloc_id: AllocId(id),
                role,
                expires_unix_secs: NOW_UNIX + 60,
            },
        )
        .unwrap()
    }

    fn bind_bytes(id: u64, role: Role) -> Vec<u8> {
        let mut b = Vec::new();
        encode_bind(&ticket_with(&key(), id, role), &mut b);
        b
    }

    fn data_bytes(id: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode_data(AllocId(id), payload, &mut b);
        b
    }

    /// A relay with one allocation (id 1) bound to host `addr(1)` and joiner `addr(2)`.
    fn bound_pair(config: RelayConfig) -> (Relay, Vec<u8>) {
        let mut relay = Relay::new(key(), config);
        let mut out = Vec::new();
        for (role, port) in [(Role::Host, 1), (Role::Joiner, 2)] {
            let to = relay.handle(
                Duration::ZERO,
                NOW_UNIX,
                addr(port),
                &bind_bytes(1, role),
                &mut out,
            );
            assert_eq!(to, Some(addr(port)));
            assert_eq!(
                decode(&out),
                Ok(RelayPacket::Bound {
                    alloc_id: AllocId(1),
                    role
                })
            );
        }
        (relay, out)
    }

    #[test]
    fn two_ends_bind_and_forward_both_ways_unchanged() {
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        let t = Duration::from_millis(10);
        let d = data_bytes(1, b"host to joiner");
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(1), &d, &mut out),
            Some(addr(2))
        );
        assert_eq!(out, d);
        let d2 = data_bytes(1, &[0xAB; 1400]);
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(2), &d2, &mut out),
            Some(addr(1))
        );
        assert_eq!(out, d2);
        let s = relay.stats();
        assert_eq!(s.forwarded_packets, 2);
        assert_eq!(s.forwarded_bytes, (d.len() + d2.len()) as u64);
        assert_eq!((s.binds, s.rebinds, s.allocations), (2, 0, 1));
        // A refresh Bind from the same address is answered and is not a rebind.
        assert!(
            relay
                .handle(t, NOW_UNIX, addr(1), &bind_bytes(1, Role::Host), &mut out)
                .is_some()
        );
        assert_eq!(relay.stats().rebinds, 0);
    }

    #[test]
    fn a_third_address_is_refused_and_nothing_is_forwarded() {
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        let d = data_bytes(1, b"let me in");
        let to = relay.handle(Duration::ZERO, NOW_UNIX, addr(3), &d, &mut out);
        assert_eq!(
            to,
            Some(addr(3)),
            "the refusal goes back to the sender only"
        );
        assert_eq!(
            decode(&out),
            Ok(RelayPacket::Refused {
                alloc_id: AllocId(1),
                reason: RefuseReason::NotBound
            })
        );
        // An allocation that does not exist is refused the same way.
        let d = data_bytes(99, b"let me in");
        let to = relay.handle(Duration::ZERO, NOW_UNIX, addr(1), &d, &mut out);
        assert_eq!(to, Some(addr(1)));
        let s = relay.stats();
        assert_eq!((s.refused_unbound, s.forwarded_packets), (2, 0));
    }

    #[test]
    fn forged_and_expired_binds_are_refused() {
        let mut relay = Relay::new(key(), RelayConfig::default());
        let mut out = Vec::new();
        let mut b = Vec::new();
        encode_bind(
            &ticket_with(&Key::from_bytes([8; 32]), 1, Role::Host),
            &mut b,
        );
        assert_eq!(
            relay.handle(Duration::ZERO, NOW_UNIX, addr(1), &b, &mut out),
            Some(addr(1))
        );
        assert_eq!(
            decode(&out),
            Ok(RelayPacket::Refused {
                alloc_id: AllocId(0),
                reason: RefuseReason::ForgedTicket
            })
        );
        let b = bind_bytes(5, Role::Host);
        assert!(
            relay
                .handle(Duration::ZERO, NOW_UNIX + 60, addr(1), &b, &mut out)
                .is_some()
        );
        assert_eq!(
            decode(&out),
            Ok(RelayPacket::Refused {
                alloc_id: AllocId(5),
                reason: RefuseReason::ExpiredTicket
            })
        );
        let s = relay.stats();
        assert_eq!(
            (s.refused_forged, s.refused_expired, s.allocations),
            (1, 1, 0)
        );
    }

    #[test]
    fn data_before_the_other_end_binds_is_dropped_and_counted() {
        let mut relay = Relay::new(key(), RelayConfig::default());
        let mut out = Vec::new();
        assert!(
            relay
                .handle(
                    Duration::ZERO,
                    NOW_UNIX,
                    addr(1),
                    &bind_bytes(1, Role::Host),
                    &mut out
                )
                .is_some()
        );
        let d = data_bytes(1, b"anyone there?");
        assert_eq!(
            relay.handle(Duration::ZERO, NOW_UNIX, addr(1), &d, &mut out),
            None
        );
        assert!(out.is_empty());
        assert_eq!(relay.stats().dropped_unbound_peer, 1);
        assert!(
            relay
                .handle(
                    Duration::ZERO,
                    NOW_UNIX,
                    addr(2),
                    &bind_bytes(1, Role::Joiner),
                    &mut out
                )
                .is_some()
        );
        assert_eq!(
            relay.handle(Duration::ZERO, NOW_UNIX, addr(1), &d, &mut out),
            Some(addr(2))
        );
    }

    #[test]
    fn a_rebind_from_a_new_address_moves_the_end() {
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        let t = Duration::from_secs(1);
        assert_eq!(
            relay.handle(
                t,
                NOW_UNIX,
                addr(22),
                &bind_bytes(1, Role::Joiner),
                &mut out
            ),
            Some(addr(22))
        );
        assert_eq!(relay.stats().rebinds, 1);
        let d = data_bytes(1, b"where are you now");
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(1), &d, &mut out),
            Some(addr(22))
        );
        // The old address is no longer an end.
        let to = relay.handle(t, NOW_UNIX, addr(2), &d, &mut out);
        assert_eq!(to, Some(addr(2)));
        assert!(matches!(decode(&out), Ok(RelayPacket::Refused { .. })));
        assert_eq!(relay.stats().refused_unbound, 1);
    }

    #[test]
    fn packet_and_byte_rates_are_enforced_and_counted() {
        let config = RelayConfig {
            packets_per_sec: 10,
            ..RelayConfig::default()
        };
        let (mut relay, mut out) = bound_pair(config);
        let d = data_bytes(1, b"x");
        let t = Duration::ZERO;
        let sent: usize = (0..20)
            .filter(|_| relay.handle(t, NOW_UNIX, addr(1), &d, &mut out).is_some())
            .count();
        assert_eq!(sent, 10);
        assert_eq!(relay.stats().dropped_rate, 10);
        // 100 ms later one more packet's worth has refilled.
        let t = Duration::from_millis(100);
        assert!(relay.handle(t, NOW_UNIX, addr(1), &d, &mut out).is_some());
        assert!(relay.handle(t, NOW_UNIX, addr(1), &d, &mut out).is_none());

        let config = RelayConfig {
            bytes_per_sec: 1000,
            ..RelayConfig::default()
        };
        let (mut relay, mut out) = bound_pair(config);
        let d = data_bytes(1, &[0; 91]); // 100 bytes
        let sent = (0..20)
            .filter(|_| {
                relay
                    .handle(Duration::ZERO, NOW_UNIX, addr(2), &d, &mut out)
                    .is_some()
            })
            .count();
        assert_eq!(sent, 10);
        assert_eq!(relay.stats().dropped_rate, 10);
        assert_eq!(relay.stats().forwarded_bytes, 1000);
    }

    #[test]
    fn max_bytes_is_enforced_with_a_refusal() {
        let config = RelayConfig {
            max_bytes: 1000,
            ..RelayConfig::default()
        };
        let (mut relay, mut out) = bound_pair(config);
        let d = data_bytes(1, &[0; 241]); // 250 bytes
        for i in 0..4 {
            let t = Duration::from_secs(i);
            assert_eq!(
                relay.handle(t, NOW_UNIX, addr(1), &d, &mut out),
                Some(addr(2))
            );
        }
        let t = Duration::from_secs(5);
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(1), &d, &mut out),
            Some(addr(1))
        );
        assert_eq!(
            decode(&out),
            Ok(RelayPacket::Refused {
                alloc_id: AllocId(1),
                reason: RefuseReason::OverLimit
            })
        );
        // A Bind cannot refill the budget.
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(2), &bind_bytes(1, Role::Joiner), &mut out),
            Some(addr(2))
        );
        assert!(matches!(
            decode(&out),
            Ok(RelayPacket::Refused {
                reason: RefuseReason::OverLimit,
                ..
            })
        ));
        let s = relay.stats();
        assert_eq!((s.forwarded_bytes, s.refused_over_limit), (1000, 2));
    }

    #[test]
    fn idle_allocations_expire() {
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        assert!(
            relay
                .handle(
                    Duration::ZERO,
                    NOW_UNIX,
                    addr(5),
                    &bind_bytes(2, Role::Host),
                    &mut out
                )
                .is_some()
        );
        assert_eq!(relay.allocation_count(), 2);
        assert_eq!(relay.poll_timeout(), Some(Duration::from_secs(30)));
        // Allocation 1 stays busy; allocation 2 goes quiet.
        let d = data_bytes(1, b"still here");
        let t = Duration::from_secs(20);
        assert!(relay.handle(t, NOW_UNIX, addr(1), &d, &mut out).is_some());
        relay.handle_timeout(Duration::from_secs(30));
        assert_eq!(relay.allocation_count(), 1);
        assert_eq!(relay.poll_timeout(), Some(Duration::from_secs(50)));
        relay.handle_timeout(Duration::from_secs(49));
        assert_eq!(relay.allocation_count(), 1);
        relay.handle_timeout(Duration::from_secs(50));
        assert_eq!(relay.allocation_count(), 0);
        assert_eq!(relay.poll_timeout(), None);
        let s = relay.stats();
        assert_eq!((s.allocations, s.allocations_expired), (0, 2));
        // Data for an expired allocation is refused, even before handle_timeout ran.
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        let t = Duration::from_secs(31);
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(1), &d, &mut out),
            Some(addr(1))
        );
        assert_eq!(relay.allocation_count(), 0);
    }

    #[test]
    fn max_allocations_is_enforced() {
        let config = RelayConfig {
            max_allocations: 3,
            ..RelayConfig::default()
        };
        let mut relay = Relay::new(key(), config);
        let mut out = Vec::new();
        for id in 0..3 {
            assert!(
                relay
                    .handle(
                        Duration::ZERO,
                        NOW_UNIX,
                        addr(1),
                        &bind_bytes(id, Role::Host),
                        &mut out
                    )
                    .is_some()
            );
            assert!(matches!(decode(&out), Ok(RelayPacket::Bound { .. })));
        }
        assert!(
            relay
                .handle(
                    Duration::ZERO,
                    NOW_UNIX,
                    addr(1),
                    &bind_bytes(3, Role::Host),
                    &mut out
                )
                .is_some()
        );
        assert_eq!(
            decode(&out),
            Ok(RelayPacket::Refused {
                alloc_id: AllocId(3),
                reason: RefuseReason::Full
            })
        );
        // The other end of an existing allocation still binds.
        assert!(
            relay
                .handle(
                    Duration::ZERO,
                    NOW_UNIX,
                    addr(2),
                    &bind_bytes(0, Role::Joiner),
                    &mut out
                )
                .is_some()
        );
        assert!(matches!(decode(&out), Ok(RelayPacket::Bound { .. })));
        assert_eq!(
            (relay.allocation_count(), relay.stats().refused_full),
            (3, 1)
        );
    }

    #[test]
    fn refusals_are_rate_limited_and_never_larger_than_their_cause() {
        let mut relay = Relay::new(key(), RelayConfig::default());
        let mut out = Vec::new();
        // Smaller than a refusal: silence.
        for len in 0..REFUSED_LEN {
            let d = data_bytes(1, &[0; REFUSED_LEN][..len.saturating_sub(DATA_HEADER_LEN)]);
            let d = &d[..len.min(d.len())];
            assert_eq!(
                relay.handle(Duration::ZERO, NOW_UNIX, addr(9), d, &mut out),
                None
            );
        }
        let d = data_bytes(1, b"x");
        assert_eq!(d.len(), REFUSED_LEN);
        let mut answered = 0;
        for _ in 0..100 {
            if relay
                .handle(Duration::ZERO, NOW_UNIX, addr(9), &d, &mut out)
                .is_some()
            {
                assert!(out.len() <= d.len());
                answered += 1;
            }
        }
        assert_eq!(answered, 4);
        // Another source has its own budget; a second later the first has one again.
        assert!(
            relay
                .handle(Duration::ZERO, NOW_UNIX, addr(10), &d, &mut out)
                .is_some()
        );
        assert!(
            relay
                .handle(Duration::from_secs(1), NOW_UNIX, addr(9), &d, &mut out)
                .is_some()
        );
        // Quiet sources are forgotten.
        relay.handle_timeout(Duration::from_secs(3));
        assert!(relay.refusals.is_empty());
        assert_eq!(relay.poll_timeout(), None);
    }

    #[test]
    fn refusal_sources_are_bounded() {
        let config = RelayConfig {
            max_refusal_sources: 8,
            ..RelayConfig::default()
        };
        let mut relay = Relay::new(key(), config);
        let mut out = Vec::new();
        let d = data_bytes(1, b"spoofed");
        let answered = (0..100)
            .filter(|&p| {
                relay
                    .handle(Duration::ZERO, NOW_UNIX, addr(p), &d, &mut out)
                    .is_some()
            })
            .count();
        assert_eq!((answered, relay.refusals.len()), (8, 8));
    }

    #[test]
    fn random_and_malformed_datagrams_leave_the_relay_working() {
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        // A fixed-seed xorshift: reproducible noise without a dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = [bind_bytes(1, Role::Host), data_bytes(1, b"payload")];
        let mut buf = Vec::new();
        for i in 0..10_000u64 {
            let r = next();
            buf.clear();
            match r % 4 {
                // Pure noise, any length up to past max_datagram.
                0 => buf.extend((0..(r >> 8) % 1500).map(|_| next() as u8)),
                // A relay kind with noise after it.
                1 => {
                    buf.push(KIND_BIND + (r >> 8) as u8 % 4);
                    buf.extend((0..(r >> 16) % 80).map(|_| next() as u8));
                }
                // A valid datagram with one byte flipped or cut short.
                _ => {
                    buf.extend_from_slice(&valid[(r >> 8) as usize % 2]);
                    let at = (r >> 16) as usize % buf.len();
                    if r & 1 == 0 {
                        buf[at] ^= 1 << ((r >> 32) % 8);
                    } else {
                        buf.truncate(at);
                    }
                }
            }
            let from = addr(1000 + (r >> 40) as u16 % 50);
            let to = relay.handle(Duration::from_millis(i), NOW_UNIX, from, &buf, &mut out);
            if to.is_some() {
                assert!(out.len() <= buf.len(), "an answer larger than its cause");
                assert_ne!(to, Some(addr(1)), "noise from a stranger reached an end");
                assert_ne!(to, Some(addr(2)), "noise from a stranger reached an end");
            }
        }
        assert_eq!(relay.stats().forwarded_packets, 0);
        assert!(relay.stats().malformed > 1000);
        let t = Duration::from_secs(10);
        let d = data_bytes(1, b"still works");
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(1), &d, &mut out),
            Some(addr(2))
        );
        assert_eq!(out, d);
        assert_eq!(
            relay.handle(t, NOW_UNIX, addr(2), &d, &mut out),
            Some(addr(1))
        );
    }

    #[test]
    fn oversize_datagrams_are_dropped() {
        let (mut relay, mut out) = bound_pair(RelayConfig::default());
        let d = data_bytes(1, &[0; 1401]);
        assert_eq!(
            relay.handle(Duration::ZERO, NOW_UNIX, addr(1), &d, &mut out),
            None
        );
        assert_eq!(relay.stats().malformed, 1);
    }

    #[test]
    fn decode_checks_every_field() {
        assert_eq!(decode(&[]), Err(RelayDecodeError::Empty));
        assert_eq!(decode(&[0x10]), Err(RelayDecodeError::Kind(0x10)));
        assert_eq!(
            decode(&[KIND_BOUND, 0, 0]),
            Err(RelayDecodeError::Truncated)
        );
        let mut b = Vec::new();
        encode_bound(AllocId(3), Role::Host, &mut b);
        b.push(0);
        assert_eq!(decode(&b), Err(RelayDecodeError::Trailing));
        b.truncate(BOUND_LEN);
        b[9] = 2;
        assert_eq!(decode(&b), Err(RelayDecodeError::Role(2)));
        encode_refused(AllocId(3), RefuseReason::Full, &mut b);
        b[9] = 0;
        assert_eq!(decode(&b), Err(RelayDecodeError::Reason(0)));
        let mut b = bind_bytes(1, Role::Host);
        b.push(0);
        assert_eq!(decode(&b), Err(RelayDecodeError::Trailing));
        b.truncate(BIND_LEN);
        b[1] = 9;
        assert_eq!(
            decode(&b),
            Err(RelayDecodeError::Ticket(TicketError::Version(9)))
        );
        assert!(is_relay_packet(&[KIND_BIND]) && is_relay_packet(&[KIND_REFUSED]));
        assert!(!is_relay_packet(&[0x77]) && !is_relay_packet(&[0x7C]) && !is_relay_packet(&[]));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn encodings_round_trip(
            id in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
            host in any::<bool>(),
            reason in 1u8..=5,
        ) {
            let role = if host { Role::Host } else { Role::Joiner };
            let reason = RefuseReason::from_u8(reason).unwrap();
            let mut b = Vec::new();
            encode_data(AllocId(id), &payload, &mut b);
            prop_assert_eq!(decode(&b), Ok(RelayPacket::Data { alloc_id: AllocId(id), payload: &payload }));
            encode_bound(AllocId(id), role, &mut b);
            prop_assert_eq!(decode(&b), Ok(RelayPacket::Bound { alloc_id: AllocId(id), role }));
            encode_refused(AllocId(id), reason, &mut b);
            prop_assert_eq!(decode(&b), Ok(RelayPacket::Refused { alloc_id: AllocId(id), reason }));
            let t = ticket_with(&key(), id, role);
            encode_bind(&t, &mut b);
            prop_assert_eq!(decode(&b), Ok(RelayPacket::Bind(t)));
            prop_assert!(is_relay_packet(&b));
        }
    }
}
