//! LAN discovery: a host broadcasts a small beacon at a fixed rate; listeners keep a list of
//! hosts that expires entries not heard from recently.
//!
//! ```text
//! beacon := magic:u32le("SWLB")  game_id:u64le  version:u16le  game_port:u16le
//!           players:u16le  max_players:u16le  name_len:u8  name:utf8[name_len ≤ 64]
//! ```
//! Both halves are sans-IO: [`Beacon::encode`] / [`Beacon::decode`] and [`HostList`] take
//! bytes and times; [`Announcer`] decides when to send and works over any
//! [`Transport`] (a UDP socket with broadcast enabled, sending to `255.255.255.255:port`, in
//! production; 127.0.0.1 in tests).

use std::net::SocketAddr;
use std::time::Duration;

use hashbrown::HashMap;
use statewire_transport::{Transport, TransportError};

const MAGIC: u32 = u32::from_le_bytes(*b"SWLB");
/// Longest game name a beacon carries, in bytes.
pub const MAX_NAME_LEN: usize = 64;
const FIXED_LEN: usize = 4 + 8 + 2 + 2 + 2 + 2 + 1;

/// What a host announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    /// Which game (matches [`crate::SessionConfig::protocol_id`]).
    pub game_id: u64,
    /// The game's protocol version.
    pub version: u16,
    /// Port the game server listens on (at the beacon's source IP).
    pub game_port: u16,
    /// Players connected.
    pub players: u16,
    /// Player limit.
    pub max_players: u16,
    /// Human-readable game name, at most [`MAX_NAME_LEN`] bytes of UTF-8.
    pub name: String,
}

/// Errors from [`Beacon::decode`] and [`Beacon::encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BeaconError {
    /// Not a beacon (wrong magic or too short).
    #[error("not a beacon")]
    NotABeacon,
    /// Length field and datagram size disagree.
    #[error("beacon length mismatch")]
    BadLength,
    /// The name is longer than [`MAX_NAME_LEN`] or not UTF-8.
    #[error("bad game name")]
    BadName,
}

impl Beacon {
    /// Appends the encoded beacon to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), BeaconError> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(BeaconError::BadName);
        }
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&self.game_id.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.game_port.to_le_bytes());
        out.extend_from_slice(&self.players.to_le_bytes());
        out.extend_from_slice(&self.max_players.to_le_bytes());
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }

    /// Decodes one datagram.
    pub fn decode(bytes: &[u8]) -> Result<Beacon, BeaconError> {
        let (fixed, name) = bytes
            .split_at_checked(FIXED_LEN)
            .ok_or(BeaconError::NotABeacon)?;
        let u16_at = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]);
        if u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) != MAGIC {
            return Err(BeaconError::NotABeacon);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&fixed[4..12]);
        let name_len = usize::from(fixed[FIXED_LEN - 1]);
        if name_len > MAX_NAME_LEN {
            return Err(BeaconError::BadName);
        }
        if name.len() != name_len {
            return Err(BeaconError::BadLength);
        }
        Ok(Beacon {
            game_id: u64::from_le_bytes(id),
            version: u16_at(12),
            game_port: u16_at(14),
            players: u16_at(16),
            max_players: u16_at(18),
            name: std::str::from_utf8(name)
                .map_err(|_| BeaconError::BadName)?
                .to_owned(),
        })
    }
}

/// Sends a beacon to a target address every `interval` (not every frame).
#[derive(Debug, Clone)]
pub struct Announcer {
    target: SocketAddr,
    interval: Duration,
    last: Option<Duration>,
    buf: Vec<u8>,
    sent: u64,
}

impl Announcer {
    /// Announces to `target` (e.g. `255.255.255.255:47800` on a broadcast-enabled UDP socket)
    /// every `interval` (one second is typical).
    #[must_use]
    pub fn new(target: SocketAddr, interval: Duration) -> Self {
        Announcer {
            target,
            interval,
            last: None,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Sends `beacon` through `transport` if the interval has passed. Returns whether it sent.
    pub fn poll<T: Transport + ?Sized>(
        &mut self,
        now: Duration,
        beacon: &Beacon,
        transport: &mut T,
    ) -> Result<bool, AnnounceError> {
        if self
            .last
            .is_some_and(|t| now.saturating_sub(t) < self.interval)
        {
            return Ok(false);
        }
        self.buf.clear();
        beacon.encode(&mut self.buf)?;
        transport.send(self.target, &self.buf)?;
        self.last = Some(now);
        self.sent += 1;
        Ok(true)
    }

    /// Beacons sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// Errors from [`Announcer::poll`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// The beacon could not be encoded.
    #[error(transparent)]
    Beacon(#[from] BeaconError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A host heard on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanHost {
    /// Where to connect: the beacon's source IP with its game port.
    pub game_addr: SocketAddr,
    /// The latest beacon.
    pub beacon: Beacon,
    /// When it was last heard.
    pub last_seen: Duration,
}

/// Hosts heard recently, for one game id and version.
#[derive(Debug, Clone)]
pub struct HostList {
    game_id: u64,
    version: Option<u16>,
    expiry: Duration,
    max_hosts: usize,
    hosts: HashMap<SocketAddr, LanHost>,
    ignored: u64,
}

impl HostList {
    /// Lists hosts of `game_id` (and `version`, if given) heard within `expiry`; at most
    /// `max_hosts` are kept (further new hosts are ignored until some expire).
    #[must_use]
    pub fn new(game_id: u64, version: Option<u16>, expiry: Duration, max_hosts: usize) -> Self {
        HostList {
            game_id,
            version,
            expiry,
            max_hosts,
            hosts: HashMap::new(),
            ignored: 0,
        }
    }

    /// Takes one datagram received from `from`. Returns whether it was a beacon of this game.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) -> bool {
        let Ok(beacon) = Beacon::decode(bytes) else {
            self.ignored += 1;
            return false;
        };
        if beacon.game_id != self.game_id || self.version.is_some_and(|v| v != beacon.version) {
            self.ignored += 1;
            return false;
        }
        self.expire(now);
        let game_addr = SocketAddr::new(from.ip(), beacon.game_port);
        if !self.hosts.contains_key(&game_addr) && self.hosts.len() >= self.max_hosts {
            self.ignored += 1;
            return false;
        }
        self.hosts.insert(
            game_addr,
            LanHost {
                game_addr,
                beacon,
                last_seen: now,
            },
        );
        true
    }

    /// Reads every pending datagram from `transport` into the list (at most `max` of them).
    pub fn poll<T: Transport + ?Sized>(
        &mut self,
        now: Duration,
        transport: &mut T,
        max: usize,
    ) -> Result<(), TransportError> {
        let mut buf = [0u8; 256];
        for _ in 0..max {
            match transport.recv(&mut buf) {
                Ok(Some(got)) => {
                    self.handle_datagram(now, got.from, &buf[..got.len]);
                }
                Ok(None) => break,
                // Larger than any beacon: it is not one. Transports keep such a datagram
                // queued, so stop here rather than spin on it.
                Err(TransportError::BufferTooSmall { .. }) => {
                    self.ignored += 1;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drops hosts not heard from within the expiry.
    pub fn expire(&mut self, now: Duration) {
        let expiry = self.expiry;
        self.hosts
            .retain(|_, h| now.saturating_sub(h.last_seen) <= expiry);
    }

    /// Hosts currently listed, sorted by game address.
    #[must_use]
    pub fn hosts(&self, now: Duration) -> Vec<LanHost> {
        let mut v: Vec<LanHost> = self
            .hosts
            .values()
            .filter(|h| now.saturating_sub(h.last_seen) <= self.expiry)
            .cloned()
            .collect();
        v.sort_by_key(|h| h.game_addr);
        v
    }

    /// Datagrams that were not beacons of this game.
    #[must_use]
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn beacon(name: &str) -> Beacon {
        Beacon {
            game_id: 77,
            version: 3,
            game_port: 4000,
            players: 2,
            max_players: 8,
            name: name.into(),
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let mut out = Vec::new();
        beacon("Ada's game").encode(&mut out).unwrap();
        assert_eq!(Beacon::decode(&out), Ok(beacon("Ada's game")));
        assert_eq!(Beacon::decode(&out[..5]), Err(BeaconError::NotABeacon));
        assert_eq!(
            Beacon::decode(&out[..out.len() - 1]),
            Err(BeaconError::BadLength)
        );
        let mut long = Vec::new();
        assert_eq!(
            beacon(&"x".repeat(65)).encode(&mut long),
            Err(BeaconError::BadName)
        );
        out[0] ^= 1;
        assert_eq!(Beacon::decode(&out), Err(BeaconError::NotABeacon));
    }

    #[test]
    fn list_filters_and_expires() {
        let mut list = HostList::new(77, Some(3), Duration::from_secs(3), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let c: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        let mut bytes = Vec::new();
        beacon("a").encode(&mut bytes).unwrap();
        assert!(list.handle_datagram(Duration::ZERO, a, &bytes));
        let mut other = beacon("z");
        other.version = 4;
        let mut ob = Vec::new();
        other.encode(&mut ob).unwrap();
        assert!(!list.handle_datagram(Duration::ZERO, b, &ob));
        assert!(list.handle_datagram(Duration::from_secs(2), b, &bytes));
        // Full: a third host is ignored.
        assert!(!list.handle_datagram(Duration::from_secs(2), c, &bytes));
        let hosts = list.hosts(Duration::from_secs(2));
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].game_addr, "127.0.0.1:4000".parse().unwrap());
        // a was last heard at 0 s: gone after 3 s.
        let hosts = list.hosts(Duration::from_millis(3500));
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].game_addr, "127.0.0.2:4000".parse().unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(b) = Beacon::decode(&data) {
                let mut out = Vec::new();
                b.encode(&mut out).unwrap();
                prop_assert_eq!(out, data);
            }
        }
    }
}
