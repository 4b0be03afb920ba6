//! LAN discovery: a host broadcasts a small beacon at a fixed rate; listeners keep a list of
//! hosts that expires entries not heard from recently.
//!
//! # Wire format (beacon format 2)
//!
//! ```text
//! beacon := magic:u32le("SWLB")  format:u8(=2)  game_id:u64le  version:u16le
//!           game_port:u16le  transport:u8  codec:u8  players:u16le  max_players:u16le
//!           name_len:u8  name:utf8[name_len ≤ 64]
//! transport := 0 UDP | 1 TCP                     (how to reach `game_port`)
//! codec     := 0 packed | 1 entropy              (statewire_core::ComponentCoding)
//! ```
//! A beacon is [`FIXED_LEN`] + `name_len` bytes, at most [`MAX_BEACON_LEN`]; the datagram must
//! be exactly that long. Format 1 (no `format`, `transport` or `codec` bytes) is not decoded.
//!
//! Both halves are sans-IO: [`Beacon::encode`] / [`Beacon::decode`] and [`HostList`] take
//! bytes and times; [`Announcer`] decides when to send and works over any
//! [`Transport`] (a UDP socket with broadcast enabled, sending to `255.255.255.255:port`, in
//! production; 127.0.0.1 in tests).
//!
//! # Limits
//!
//! A listener reads every datagram whole (into a buffer of the transport's
//! [`Transport::max_payload`]) and drops anything that is not a well-formed beacon of its game,
//! so junk is consumed once and never blocks the beacons queued behind it. A [`HostList`] keeps
//! at most `max_hosts` hosts and at most [`HostList::with_max_per_source`] of them per source IP
//! (default [`DEFAULT_MAX_PER_SOURCE`]), so one machine flooding forged beacons cannot push
//! other hosts out. Beacons are not authenticated: a sender that spoofs many source addresses
//! can still fill the list; the session handshake is what verifies a server.

use std::net::SocketAddr;
use std::time::Duration;

use hashbrown::HashMap;
use statewire_core::ComponentCoding;
use statewire_transport::{Transport, TransportError};

const MAGIC: u32 = u32::from_le_bytes(*b"SWLB");
/// The beacon format this module writes and reads.
pub const FORMAT: u8 = 2;
/// Longest game name a beacon carries, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Length of a beacon without its name, in bytes.
pub const FIXED_LEN: usize = 4 + 1 + 8 + 2 + 2 + 1 + 1 + 2 + 2 + 1;
/// Length of the longest beacon, in bytes.
pub const MAX_BEACON_LEN: usize = FIXED_LEN + MAX_NAME_LEN;
/// Default of [`HostList::with_max_per_source`]: hosts listed per source IP.
pub const DEFAULT_MAX_PER_SOURCE: usize = 4;

/// How clients reach an announced game server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GameTransport {
    /// Datagrams on a UDP socket (wire value 0).
    Udp,
    /// Length-prefixed frames on a TCP connection (wire value 1).
    Tcp,
}

impl GameTransport {
    fn to_wire(self) -> u8 {
        match self {
            GameTransport::Udp => 0,
            GameTransport::Tcp => 1,
        }
    }

    fn from_wire(b: u8) -> Result<Self, BeaconError> {
        match b {
            0 => Ok(GameTransport::Udp),
            1 => Ok(GameTransport::Tcp),
            other => Err(BeaconError::UnknownTransport(other)),
        }
    }
}

fn codec_to_wire(c: ComponentCoding) -> Result<u8, BeaconError> {
    match c {
        ComponentCoding::Packed => Ok(0),
        ComponentCoding::Entropy => Ok(1),
        _ => Err(BeaconError::UnsupportedCodec),
    }
}

fn codec_from_wire(b: u8) -> Result<ComponentCoding, BeaconError> {
    match b {
        0 => Ok(ComponentCoding::Packed),
        1 => Ok(ComponentCoding::Entropy),
        other => Err(BeaconError::UnknownCodec(other)),
    }
}

/// What a host announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    /// Which game (matches [`crate::SessionConfig::protocol_id`]).
    pub game_id: u64,
    /// The game's protocol version.
    pub version: u16,
    /// Port the game server listens on (at the beacon's source IP).
    pub game_port: u16,
    /// Whether the game server listens on UDP or TCP.
    pub transport: GameTransport,
    /// The snapshot coding clients must use.
    pub codec: ComponentCoding,
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
    /// A beacon of a format this version does not read.
    #[error("unsupported beacon format {0}")]
    UnsupportedFormat(u8),
    /// Length field and datagram size disagree (including datagrams longer than any beacon).
    #[error("beacon length mismatch")]
    BadLength,
    /// The name is longer than [`MAX_NAME_LEN`] or not UTF-8.
    #[error("bad game name")]
    BadName,
    /// The transport byte is not one of [`GameTransport`]'s wire values.
    #[error("unknown game transport {0}")]
    UnknownTransport(u8),
    /// The codec byte is not a known [`ComponentCoding`].
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// [`Beacon::encode`]: the codec has no wire value in this beacon format.
    #[error("codec cannot be announced")]
    UnsupportedCodec,
}

/// Checked reader over the fixed part of a beacon.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BeaconError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(BeaconError::NotABeacon)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, BeaconError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, BeaconError> {
        self.take().map(u16::from_le_bytes)
    }
}

impl Beacon {
    /// Appends the encoded beacon to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), BeaconError> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(BeaconError::BadName);
        }
        let codec = codec_to_wire(self.codec)?;
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(FORMAT);
        out.extend_from_slice(&self.game_id.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.game_port.to_le_bytes());
        out.push(self.transport.to_wire());
        out.push(codec);
        out.extend_from_slice(&self.players.to_le_bytes());
        out.extend_from_slice(&self.max_players.to_le_bytes());
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }

    /// Decodes one datagram; it must hold exactly one beacon.
    pub fn decode(bytes: &[u8]) -> Result<Beacon, BeaconError> {
        let mut r = Reader(bytes);
        if u32::from_le_bytes(r.take()?) != MAGIC {
            return Err(BeaconError::NotABeacon);
        }
        let format = r.u8()?;
        if format != FORMAT {
            return Err(BeaconError::UnsupportedFormat(format));
        }
        let game_id = u64::from_le_bytes(r.take()?);
        let version = r.u16()?;
        let game_port = r.u16()?;
        let transport = r.u8()?;
        let codec = r.u8()?;
        let players = r.u16()?;
        let max_players = r.u16()?;
        let name_len = usize::from(r.u8()?);
        let name = r.0;
        if name_len > MAX_NAME_LEN {
            return Err(BeaconError::BadName);
        }
        if name.len() != name_len {
            return Err(BeaconError::BadLength);
        }
        Ok(Beacon {
            game_id,
            version,
            game_port,
            transport: GameTransport::from_wire(transport)?,
            codec: codec_from_wire(codec)?,
            players,
            max_players,
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

/// Hosts heard recently, for one game id (or a few) and version.
#[derive(Debug, Clone)]
pub struct HostList {
    game_ids: Vec<u64>,
    version: Option<u16>,
    expiry: Duration,
    max_hosts: usize,
    max_per_source: usize,
    hosts: HashMap<SocketAddr, LanHost>,
    ignored: u64,
}

impl HostList {
    /// Lists hosts of `game_id` (and `version`, if given) heard within `expiry`; at most
    /// `max_hosts` are kept, and at most [`DEFAULT_MAX_PER_SOURCE`] per source IP (further new
    /// hosts are ignored until some expire).
    #[must_use]
    pub fn new(game_id: u64, version: Option<u16>, expiry: Duration, max_hosts: usize) -> Self {
        HostList {
            game_ids: vec![game_id],
            version,
            expiry,
            max_hosts,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            hosts: HashMap::new(),
            ignored: 0,
        }
    }

    /// Also lists hosts of `game_id` (e.g. the same game with another codec, whose protocol
    /// id differs).
    #[must_use]
    pub fn with_game_id(mut self, game_id: u64) -> Self {
        if !self.game_ids.contains(&game_id) {
            self.game_ids.push(game_id);
        }
        self
    }

    /// Keeps at most `max` hosts per source IP (default [`DEFAULT_MAX_PER_SOURCE`]); a new host
    /// from a source at its limit is ignored. One source cannot then fill the list with forged
    /// beacons, as long as `max_hosts` is larger than `max`.
    #[must_use]
    pub fn with_max_per_source(mut self, max: usize) -> Self {
        self.max_per_source = max;
        self
    }

    /// Takes one datagram received from `from`. Returns whether it was a beacon of this game.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) -> bool {
        let Ok(beacon) = Beacon::decode(bytes) else {
            self.ignored += 1;
            return false;
        };
        if !self.game_ids.contains(&beacon.game_id)
            || self.version.is_some_and(|v| v != beacon.version)
        {
            self.ignored += 1;
            return false;
        }
        self.expire(now);
        let game_addr = SocketAddr::new(from.ip(), beacon.game_port);
        if !self.hosts.contains_key(&game_addr) {
            let from_source = self.hosts.keys().filter(|a| a.ip() == from.ip()).count();
            if self.hosts.len() >= self.max_hosts || from_source >= self.max_per_source {
                self.ignored += 1;
                return false;
            }
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

    /// Reads pending datagrams from `transport` into the list (at most `max` of them). Every
    /// datagram is read whole into a buffer of [`Transport::max_payload`] bytes, so one that is
    /// not a beacon (too long, malformed, another game) is consumed and dropped, never left
    /// queued in front of the beacons behind it.
    pub fn poll<T: Transport + ?Sized>(
        &mut self,
        now: Duration,
        transport: &mut T,
        max: usize,
    ) -> Result<(), TransportError> {
        let mut buf = vec![0u8; transport.max_payload().max(MAX_BEACON_LEN)];
        for _ in 0..max {
            match transport.recv(&mut buf) {
                Ok(Some(got)) => {
                    // Longer than any beacon: not one; skip decoding it.
                    if got.len > MAX_BEACON_LEN {
                        self.ignored += 1;
                    } else {
                        self.handle_datagram(now, got.from, &buf[..got.len]);
                    }
                }
                Ok(None) => break,
                // The transport queued a datagram larger than its own `max_payload`, which it
                // should not: it stays queued, so stop here rather than spin on it.
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
            transport: GameTransport::Tcp,
            codec: ComponentCoding::Entropy,
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

    /// Offsets of the one-byte fields in the fixed part.
    const FORMAT_AT: usize = 4;
    const TRANSPORT_AT: usize = 17;
    const CODEC_AT: usize = 18;
    const NAME_LEN_AT: usize = FIXED_LEN - 1;

    fn encoded(b: &Beacon) -> Vec<u8> {
        let mut out = Vec::new();
        b.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn new_fields_are_on_the_wire_where_documented() {
        let mut b = beacon("n");
        for (transport, t) in [(GameTransport::Udp, 0), (GameTransport::Tcp, 1)] {
            for (codec, c) in [(ComponentCoding::Packed, 0), (ComponentCoding::Entropy, 1)] {
                b.transport = transport;
                b.codec = codec;
                let out = encoded(&b);
                assert_eq!(out.len(), FIXED_LEN + 1);
                assert_eq!(out[FORMAT_AT], FORMAT);
                assert_eq!((out[TRANSPORT_AT], out[CODEC_AT]), (t, c));
                assert_eq!(Beacon::decode(&out), Ok(b.clone()));
            }
        }
        let longest = encoded(&beacon(&"é".repeat(MAX_NAME_LEN / 2)));
        assert_eq!(longest.len(), MAX_BEACON_LEN);
    }

    #[test]
    fn malformed_beacons_are_typed_errors() {
        let good = encoded(&beacon("game"));
        let with = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            Beacon::decode(&b)
        };
        assert_eq!(with(FORMAT_AT, 1), Err(BeaconError::UnsupportedFormat(1)));
        assert_eq!(with(FORMAT_AT, 3), Err(BeaconError::UnsupportedFormat(3)));
        assert_eq!(with(TRANSPORT_AT, 2), Err(BeaconError::UnknownTransport(2)));
        assert_eq!(with(CODEC_AT, 9), Err(BeaconError::UnknownCodec(9)));
        assert_eq!(with(NAME_LEN_AT, 65), Err(BeaconError::BadName));
        assert_eq!(with(NAME_LEN_AT, 5), Err(BeaconError::BadLength));
        assert_eq!(with(FIXED_LEN, 0xff), Err(BeaconError::BadName));
        // Trailing bytes, and a datagram far longer than any beacon.
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Beacon::decode(&long), Err(BeaconError::BadLength));
        long.resize(300, 0);
        assert_eq!(Beacon::decode(&long), Err(BeaconError::BadLength));
        // Every truncation of the fixed part.
        for n in 0..FIXED_LEN {
            assert_eq!(
                Beacon::decode(&good[..n]),
                Err(BeaconError::NotABeacon),
                "{n}"
            );
        }
    }

    #[test]
    fn one_source_is_limited_to_its_share_of_the_list() {
        let mut list = HostList::new(77, None, Duration::from_secs(3), 16).with_max_per_source(2);
        let forger: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let real: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut b = beacon("fake");
        for port in 1..=20 {
            b.game_port = port;
            list.handle_datagram(Duration::ZERO, forger, &encoded(&b));
        }
        // The forger's two listed games refresh; new ones stay ignored.
        b.game_port = 1;
        assert!(list.handle_datagram(Duration::ZERO, forger, &encoded(&b)));
        assert!(list.handle_datagram(Duration::ZERO, real, &encoded(&beacon("real"))));
        let hosts = list.hosts(Duration::ZERO);
        assert_eq!(hosts.len(), 3);
        assert_eq!(
            hosts
                .iter()
                .filter(|h| h.game_addr.ip() == forger.ip())
                .count(),
            2
        );
        assert_eq!(list.ignored(), 18);
    }

    #[test]
    fn extra_game_ids_are_listed() {
        let mut list = HostList::new(77, None, Duration::from_secs(3), 16).with_game_id(78);
        let from: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut b = beacon("a");
        assert!(list.handle_datagram(Duration::ZERO, from, &encoded(&b)));
        b.game_id = 78;
        b.game_port = 4001;
        assert!(list.handle_datagram(Duration::ZERO, from, &encoded(&b)));
        b.game_id = 79;
        b.game_port = 4002;
        assert!(!list.handle_datagram(Duration::ZERO, from, &encoded(&b)));
        assert_eq!(list.hosts(Duration::ZERO).len(), 2);
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

    fn any_beacon() -> impl Strategy<Value = Beacon> {
        (any::<(u64, u16, u16, bool, bool, u16, u16)>(), "\\PC{0,16}").prop_map(
            |((game_id, version, game_port, tcp, entropy, players, max), name)| Beacon {
                game_id,
                version,
                game_port,
                transport: if tcp {
                    GameTransport::Tcp
                } else {
                    GameTransport::Udp
                },
                codec: if entropy {
                    ComponentCoding::Entropy
                } else {
                    ComponentCoding::Packed
                },
                players,
                max_players: max,
                name,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn beacons_round_trip(b in any_beacon()) {
            let out = encoded(&b);
            prop_assert!(out.len() <= MAX_BEACON_LEN);
            prop_assert_eq!(Beacon::decode(&out), Ok(b));
        }

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
