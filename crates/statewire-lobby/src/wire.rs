//! The lobby's wire format: requests from hosts and players, the lobby's replies, and the
//! punch packets peers exchange.
//!
//! Every datagram is `kind:u8 version:u8 nonce:u64 body`, integers little-endian, addresses
//! `4:u8 ip:[4] port:u16 | 6:u8 ip:[16] port:u16`, strings `len:u8 utf8`. Requests that a
//! spoofed source could use to aim replies at a victim (Register, List, Join, Migrate) are
//! padded with zeros to [`PADDED_REQUEST_LEN`] bytes and the lobby never answers them with
//! more bytes than it received (no amplification, as QUIC's 1200-byte Initial packets);
//! Heartbeat and Leave carry the host's secret instead.
//!
//! The nonce is random per request and echoed by the reply, and a notice pushed to a host
//! carries the nonce of its latest heartbeat: an off-path attacker who spoofs the lobby's
//! address cannot guess it, so peers accept only replies to what they asked (see
//! [`crate::Rendezvous`]).
//!
//! ```text
//! peer → lobby
//! 0x50 Register   protocol:u64 version:u32 max_players:u16 public:u8 host_client:u64
//!                 local_addr:addr token_key:[32] name:str                        (padded)
//! 0x51 Heartbeat  code:[6] secret:[16] players:u16 roster_len:u8 roster:u64*
//! 0x52 List       version:u32 (0 = any) name_contains:str offset:u16              (padded)
//! 0x53 Join       code:[6] protocol:u64                                          (padded)
//! 0x54 Leave      code:[6] secret:[16] migrate:u8
//! 0x55 Migrate    code:[6] client_id:u64 secret:[16] last_tick:u32 token_key:[32]
//!                 local_addr:addr                                                (padded)
//! lobby → peer
//! 0x60 Registered code:[6] secret:[16] observed:addr heartbeat_ms:u32
//! 0x61 Alive      observed:addr count:u8 PeerComing-body*
//! 0x62 Games      total:u16 offset:u16 count:u8 (code:[6] version:u32 players:u16 max:u16 name:str)*
//! 0x63 Joined     code:[6] client_id:u64 secret:[16] host:addr start_ms:u32 punch:[8] relay
//!                 token_len:u16 token
//! 0x64 PeerComing code:[6] client_id:u64 joiner:addr start_ms:u32 punch:[8] relay
//! 0x65 NewHost    code:[6] secret:[16] observed:addr epoch:u32 roster_len:u8 roster:u64*
//! 0x66 Wait       retry_ms:u32
//! 0x6F Error      for_kind:u8 reason:u8
//!   relay = 0:u8 | 1:u8 relay_addr:addr alloc_id:u64 ticket_len:u8 ticket
//! peer ↔ peer
//! 0x70 Punch      punch:[8] client_id:u64
//! 0x71 PunchAck   punch:[8] client_id:u64
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::code::{CODE_LEN, JoinCode};
use crate::storage::SECRET_LEN;

/// Version byte of every lobby datagram.
pub const WIRE_VERSION: u8 = 1;
/// Size padded requests are padded to.
pub const PADDED_REQUEST_LEN: usize = 1200;
/// Largest lobby datagram read or written.
pub const MAX_DATAGRAM: usize = 1400;
/// Longest game name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;
/// Most client ids in a roster (a heartbeat, a new host's answer).
pub const MAX_ROSTER: usize = 64;
/// Longest relay ticket carried.
pub const MAX_TICKET_LEN: usize = 128;
/// Longest connect token carried.
pub const MAX_TOKEN_LEN: usize = 512;
/// Bytes of a punch secret.
pub const PUNCH_LEN: usize = 8;

mod kind {
    pub(super) const REGISTER: u8 = 0x50;
    pub(super) const HEARTBEAT: u8 = 0x51;
    pub(super) const LIST: u8 = 0x52;
    pub(super) const JOIN: u8 = 0x53;
    pub(super) const LEAVE: u8 = 0x54;
    pub(super) const MIGRATE: u8 = 0x55;
    pub(super) const REGISTERED: u8 = 0x60;
    pub(super) const ALIVE: u8 = 0x61;
    pub(super) const GAMES: u8 = 0x62;
    pub(super) const JOINED: u8 = 0x63;
    pub(super) const PEER_COMING: u8 = 0x64;
    pub(super) const NEW_HOST: u8 = 0x65;
    pub(super) const WAIT: u8 = 0x66;
    pub(super) const ERROR: u8 = 0x6F;
    pub(super) const PUNCH: u8 = 0x70;
    pub(super) const PUNCH_ACK: u8 = 0x71;
}

/// Whether `datagram` is a lobby message (request or reply), by its first byte.
pub fn is_lobby_message(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0x50..=0x6F))
}

/// Whether `datagram` is a punch packet, by its first byte.
pub fn is_punch(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0x70 | 0x71))
}

/// Why the lobby refused a request; sent in [`Reply::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No game has this code (it never existed, or expired long ago).
    UnknownCode,
    /// The game's host stopped answering; the game is over.
    Expired,
    /// The game has its most players.
    GameFull,
    /// The game speaks another protocol (another game or version).
    ProtocolMismatch,
    /// This address registered its most games.
    TooManyGames,
    /// The lobby holds its most games.
    LobbyFull,
    /// The secret does not match: not the host or player it claims to be.
    BadSecret,
    /// The lobby's storage failed; try again later.
    Storage,
    /// The game's host is changing; ask again in a moment.
    HostMigrating,
    /// The asker is not a player of this game.
    NotInGame,
    /// Too many players from this address are on their way to this game.
    TooManyJoins,
}

impl ErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            ErrorCode::UnknownCode => 1,
            ErrorCode::Expired => 2,
            ErrorCode::GameFull => 3,
            ErrorCode::ProtocolMismatch => 4,
            ErrorCode::TooManyGames => 5,
            ErrorCode::LobbyFull => 6,
            ErrorCode::BadSecret => 7,
            ErrorCode::Storage => 8,
            ErrorCode::HostMigrating => 9,
            ErrorCode::NotInGame => 10,
            ErrorCode::TooManyJoins => 11,
        }
    }

    fn from_u8(v: u8) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::UnknownCode,
            2 => ErrorCode::Expired,
            3 => ErrorCode::GameFull,
            4 => ErrorCode::ProtocolMismatch,
            5 => ErrorCode::TooManyGames,
            6 => ErrorCode::LobbyFull,
            7 => ErrorCode::BadSecret,
            8 => ErrorCode::Storage,
            9 => ErrorCode::HostMigrating,
            10 => ErrorCode::NotInGame,
            11 => ErrorCode::TooManyJoins,
            _ => return None,
        })
    }

    /// The reason in words, for a player.
    pub fn explain(self) -> &'static str {
        match self {
            ErrorCode::UnknownCode => {
                "no game has this code (check it, or the game ended long ago)"
            }
            ErrorCode::Expired => "this game has ended: its host stopped answering",
            ErrorCode::GameFull => "this game is full",
            ErrorCode::ProtocolMismatch => "this game runs another game or version",
            ErrorCode::TooManyGames => "this address hosts as many games as the lobby allows",
            ErrorCode::LobbyFull => "the lobby is full",
            ErrorCode::BadSecret => "the lobby does not recognise this host or player",
            ErrorCode::Storage => "the lobby's storage failed; try again",
            ErrorCode::HostMigrating => "the game is changing hosts; try again in a moment",
            ErrorCode::NotInGame => "only a player of this game may ask that",
            ErrorCode::TooManyJoins => {
                "too many players from this address are joining this game at once; try again in a few seconds"
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.explain())
    }
}

/// How to reach the relay for one allocation, if punching fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayGrant {
    /// The relay's address.
    pub addr: SocketAddr,
    /// The allocation (also sealed in the ticket; in clear so that an end with several
    /// allocations on one relay knows which one a `Bound` confirms).
    pub alloc_id: u64,
    /// The sealed ticket for this end (opaque here, see [`crate::ticket`]).
    pub ticket: Vec<u8>,
}

/// The lobby tells a host that a player is coming (also inside [`Reply::Alive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerComing {
    /// The game.
    pub code: JoinCode,
    /// The player's client id (named in its connect token).
    pub client_id: u64,
    /// The player's address as the lobby observes it.
    pub joiner: SocketAddr,
    /// Milliseconds after receipt at which to start punching.
    pub start_ms: u32,
    /// The secret both ends put in their punch packets.
    pub punch: [u8; PUNCH_LEN],
    /// The relay to fall back on.
    pub relay: Option<RelayGrant>,
}

/// One listed game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameEntry {
    /// Its join code.
    pub code: JoinCode,
    /// The game's version number.
    pub version: u32,
    /// Players in it.
    pub players: u16,
    /// Most players.
    pub max_players: u16,
    /// Its name.
    pub name: String,
}

/// A request to the lobby.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// A host registers a game.
    Register {
        /// The game's protocol id.
        protocol_id: u64,
        /// The game's version number.
        version: u32,
        /// Most players.
        max_players: u16,
        /// Whether the game is listed.
        public: bool,
        /// The host's own player's client id (0: none).
        host_client: u64,
        /// The host's bound address.
        local_addr: SocketAddr,
        /// The key the host's session opens connect tokens with.
        token_key: [u8; 32],
        /// The game's name.
        name: String,
    },
    /// The host is alive; the players in its game.
    Heartbeat {
        /// The game.
        code: JoinCode,
        /// The host's secret.
        secret: [u8; SECRET_LEN],
        /// Players in the game.
        players: u16,
        /// Their client ids (at most [`MAX_ROSTER`]).
        roster: Vec<u64>,
    },
    /// A player asks for public games.
    List {
        /// Only games of this version (0: any).
        version: u32,
        /// Only games whose name contains this (case-insensitive; empty: any).
        name_contains: String,
        /// Skip this many matching games (paging).
        offset: u16,
    },
    /// A player asks to join the game `code`.
    Join {
        /// The game.
        code: JoinCode,
        /// The player's protocol id.
        protocol_id: u64,
    },
    /// The host leaves.
    Leave {
        /// The game.
        code: JoinCode,
        /// The host's secret.
        secret: [u8; SECRET_LEN],
        /// Whether the players should pick a new host (else the game ends).
        migrate: bool,
    },
    /// A player lost its host and asks what to do.
    Migrate {
        /// The game.
        code: JoinCode,
        /// The player's client id.
        client_id: u64,
        /// The player's secret (from [`Reply::Joined`]).
        secret: [u8; SECRET_LEN],
        /// The last tick the player had from the old host.
        last_tick: u32,
        /// The token key the player's session would use if it becomes the host.
        token_key: [u8; 32],
        /// The player's bound address.
        local_addr: SocketAddr,
    },
}

/// A reply from the lobby (or a push to a host).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The game is registered (not yet listed: the first heartbeat confirms it).
    Registered {
        /// Its join code.
        code: JoinCode,
        /// The secret for heartbeats.
        secret: [u8; SECRET_LEN],
        /// The host's address as the lobby observes it.
        observed: SocketAddr,
        /// How often to heartbeat, in milliseconds.
        heartbeat_ms: u32,
    },
    /// A heartbeat's answer, with players on their way.
    Alive {
        /// The host's address as observed.
        observed: SocketAddr,
        /// Players coming.
        coming: Vec<PeerComing>,
    },
    /// A page of public games.
    Games {
        /// Matching games in all.
        total: u16,
        /// Index of the first entry.
        offset: u16,
        /// The games.
        games: Vec<GameEntry>,
    },
    /// A player may join: its token and how to reach the host.
    Joined {
        /// The game.
        code: JoinCode,
        /// The player's client id.
        client_id: u64,
        /// The player's secret (for host migration).
        secret: [u8; SECRET_LEN],
        /// The host's observed address (the session's server address).
        host: SocketAddr,
        /// Milliseconds after receipt at which to start punching.
        start_ms: u32,
        /// The punch secret.
        punch: [u8; PUNCH_LEN],
        /// The relay to fall back on.
        relay: Option<RelayGrant>,
        /// The encoded connect token (see [`statewire::ConnectToken::decode`]).
        token: Vec<u8>,
    },
    /// A player is coming (pushed to the host).
    PeerComing(PeerComing),
    /// The asker is the game's new host.
    NewHost {
        /// The game.
        code: JoinCode,
        /// The new host's heartbeat secret.
        secret: [u8; SECRET_LEN],
        /// Its observed address.
        observed: SocketAddr,
        /// Hosts so far, minus one.
        epoch: u32,
        /// The players expected to reconnect.
        roster: Vec<u64>,
    },
    /// Not decided yet; ask again.
    Wait {
        /// When to ask again, in milliseconds.
        retry_ms: u32,
    },
    /// The request was refused.
    Error {
        /// Kind byte of the refused request.
        for_kind: u8,
        /// Why.
        code: ErrorCode,
    },
}

/// A punch packet between peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punch {
    /// Whether this is the answer to a punch.
    pub ack: bool,
    /// The punch secret.
    pub secret: [u8; PUNCH_LEN],
    /// The joiner's client id.
    pub client_id: u64,
}

/// Why a lobby datagram could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Ends early, has trailing bytes (other than padding) or a bad field.
    #[error("malformed lobby datagram")]
    Malformed,
    /// A padded request shorter than [`PADDED_REQUEST_LEN`].
    #[error("request not padded to {PADDED_REQUEST_LEN} bytes")]
    NotPadded,
    /// Another version of the format.
    #[error("lobby format version {0} is not supported (this build speaks 1)")]
    Version(u8),
    /// A kind byte this build does not know.
    #[error("unknown lobby message kind {0:#04x}")]
    Kind(u8),
    /// Larger than [`MAX_DATAGRAM`].
    #[error("lobby datagram over {MAX_DATAGRAM} bytes")]
    TooLarge,
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn code(&mut self, c: JoinCode) {
        self.bytes(&c.to_bytes());
    }
    fn str(&mut self, s: &str) {
        // Truncated at a character boundary to the limit; encoders never fail.
        let mut end = s.len().min(MAX_NAME_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8);
        self.bytes(&s.as_bytes()[..end]);
    }
    fn addr(&mut self, a: SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.bytes(&ip.octets());
            }
        }
        self.u16(a.port());
    }
    fn roster(&mut self, r: &[u64]) {
        let n = r.len().min(MAX_ROSTER);
        self.u8(n as u8);
        for &id in &r[..n] {
            self.u64(id);
        }
    }
    fn relay(&mut self, r: &Option<RelayGrant>) {
        match r {
            Some(g) if g.ticket.len() <= MAX_TICKET_LEN => {
                self.u8(1);
                self.addr(g.addr);
                self.u64(g.alloc_id);
                self.u8(g.ticket.len() as u8);
                self.bytes(&g.ticket);
            }
            _ => self.u8(0),
        }
    }
    fn coming(&mut self, p: &PeerComing) {
        self.code(p.code);
        self.u64(p.client_id);
        self.addr(p.joiner);
        self.u32(p.start_ms);
        self.bytes(&p.punch);
        self.relay(&p.relay);
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(WireError::Malformed)?;
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?.try_into().map_err(|_| WireError::Malformed)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed),
        }
    }
    fn code(&mut self) -> Result<JoinCode, WireError> {
        JoinCode::from_bytes(self.array::<CODE_LEN>()?).map_err(|_| WireError::Malformed)
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        if n > MAX_NAME_LEN {
            return Err(WireError::Malformed);
        }
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| WireError::Malformed)
    }
    fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(WireError::Malformed),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn roster(&mut self) -> Result<Vec<u64>, WireError> {
        let n = usize::from(self.u8()?);
        if n > MAX_ROSTER || self.0.len() < n * 8 {
            return Err(WireError::Malformed);
        }
        (0..n).map(|_| self.u64()).collect()
    }
    fn relay(&mut self) -> Result<Option<RelayGrant>, WireError> {
        if !self.bool()? {
            return Ok(None);
        }
        let addr = self.addr()?;
        let alloc_id = self.u64()?;
        let n = usize::from(self.u8()?);
        if n > MAX_TICKET_LEN {
            return Err(WireError::Malformed);
        }
        Ok(Some(RelayGrant {
            addr,
            alloc_id,
            ticket: self.take(n)?.to_vec(),
        }))
    }
    fn coming(&mut self) -> Result<PeerComing, WireError> {
        Ok(PeerComing {
            code: self.code()?,
            client_id: self.u64()?,
            joiner: self.addr()?,
            start_ms: self.u32()?,
            punch: self.array()?,
            relay: self.relay()?,
        })
    }
    /// The rest must be empty (`padded`: or zeros).
    fn end(&self, padded: bool) -> Result<(), WireError> {
        if self.0.is_empty() || (padded && self.0.iter().all(|&b| b == 0)) {
            Ok(())
        } else {
            Err(WireError::Malformed)
        }
    }
}

/// Bytes before a message's body: kind, version, nonce.
pub const HEADER_LEN: usize = 10;

fn header(kind: u8, nonce: u64, out: &mut Vec<u8>) {
    out.clear();
    out.push(kind);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&nonce.to_le_bytes());
}

fn open(datagram: &[u8]) -> Result<(u8, u64, R<'_>), WireError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge);
    }
    let mut r = R(datagram);
    let kind = r.u8()?;
    let version = r.u8()?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let nonce = r.u64()?;
    Ok((kind, nonce, r))
}

impl Request {
    /// Kind byte of this request.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Register { .. } => kind::REGISTER,
            Request::Heartbeat { .. } => kind::HEARTBEAT,
            Request::List { .. } => kind::LIST,
            Request::Join { .. } => kind::JOIN,
            Request::Leave { .. } => kind::LEAVE,
            Request::Migrate { .. } => kind::MIGRATE,
        }
    }

    fn padded(kind: u8) -> bool {
        matches!(
            kind,
            kind::REGISTER | kind::LIST | kind::JOIN | kind::MIGRATE
        )
    }

    /// Writes the request into `out` (cleared first) with nonce 0, padded where the format
    /// says so.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with(0, out);
    }

    /// Writes the request with `nonce` (echoed by the reply).
    pub fn encode_with(&self, nonce: u64, out: &mut Vec<u8>) {
        header(self.kind(), nonce, out);
        let mut w = W(out);
        match self {
            Request::Register {
                protocol_id,
                version,
                max_players,
                public,
                host_client,
                local_addr,
                token_key,
                name,
            } => {
                w.u64(*protocol_id);
                w.u32(*version);
                w.u16(*max_players);
                w.u8(u8::from(*public));
                w.u64(*host_client);
                w.addr(*local_addr);
                w.bytes(token_key);
                w.str(name);
            }
            Request::Heartbeat {
                code,
                secret,
                players,
                roster,
            } => {
                w.code(*code);
                w.bytes(secret);
                w.u16(*players);
                w.roster(roster);
            }
            Request::List {
                version,
                name_contains,
                offset,
            } => {
                w.u32(*version);
                w.str(name_contains);
                w.u16(*offset);
            }
            Request::Join { code, protocol_id } => {
                w.code(*code);
                w.u64(*protocol_id);
            }
            Request::Leave {
                code,
                secret,
                migrate,
            } => {
                w.code(*code);
                w.bytes(secret);
                w.u8(u8::from(*migrate));
            }
            Request::Migrate {
                code,
                client_id,
                secret,
                last_tick,
                token_key,
                local_addr,
            } => {
                w.code(*code);
                w.u64(*client_id);
                w.bytes(secret);
                w.u32(*last_tick);
                w.bytes(token_key);
                w.addr(*local_addr);
            }
        }
        if Self::padded(self.kind()) && out.len() < PADDED_REQUEST_LEN {
            out.resize(PADDED_REQUEST_LEN, 0);
        }
    }

    /// Reads a request from a bounded datagram.
    pub fn decode(datagram: &[u8]) -> Result<Request, WireError> {
        Self::decode_with_nonce(datagram).map(|(r, _)| r)
    }

    /// Reads a request and its nonce.
    pub fn decode_with_nonce(datagram: &[u8]) -> Result<(Request, u64), WireError> {
        let (k, nonce, mut r) = open(datagram)?;
        let padded = Self::padded(k);
        if padded && datagram.len() < PADDED_REQUEST_LEN {
            return Err(WireError::NotPadded);
        }
        let req = match k {
            kind::REGISTER => Request::Register {
                protocol_id: r.u64()?,
                version: r.u32()?,
                max_players: r.u16()?,
                public: r.bool()?,
                host_client: r.u64()?,
                local_addr: r.addr()?,
                token_key: r.array()?,
                name: r.str()?,
            },
            kind::HEARTBEAT => Request::Heartbeat {
                code: r.code()?,
                secret: r.array()?,
                players: r.u16()?,
                roster: r.roster()?,
            },
            kind::LIST => Request::List {
                version: r.u32()?,
                name_contains: r.str()?,
                offset: r.u16()?,
            },
            kind::JOIN => Request::Join {
                code: r.code()?,
                protocol_id: r.u64()?,
            },
            kind::LEAVE => Request::Leave {
                code: r.code()?,
                secret: r.array()?,
                migrate: r.bool()?,
            },
            kind::MIGRATE => Request::Migrate {
                code: r.code()?,
                client_id: r.u64()?,
                secret: r.array()?,
                last_tick: r.u32()?,
                token_key: r.array()?,
                local_addr: r.addr()?,
            },
            other => return Err(WireError::Kind(other)),
        };
        r.end(padded)?;
        Ok((req, nonce))
    }
}

impl Reply {
    fn kind(&self) -> u8 {
        match self {
            Reply::Registered { .. } => kind::REGISTERED,
            Reply::Alive { .. } => kind::ALIVE,
            Reply::Games { .. } => kind::GAMES,
            Reply::Joined { .. } => kind::JOINED,
            Reply::PeerComing(_) => kind::PEER_COMING,
            Reply::NewHost { .. } => kind::NEW_HOST,
            Reply::Wait { .. } => kind::WAIT,
            Reply::Error { .. } => kind::ERROR,
        }
    }

    /// Writes the reply into `out` (cleared first) with nonce 0.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with(0, out);
    }

    /// Writes the reply with `nonce` (the request's, or the host's latest heartbeat's).
    pub fn encode_with(&self, nonce: u64, out: &mut Vec<u8>) {
        header(self.kind(), nonce, out);
        let mut w = W(out);
        match self {
            Reply::Registered {
                code,
                secret,
                observed,
                heartbeat_ms,
            } => {
                w.code(*code);
                w.bytes(secret);
                w.addr(*observed);
                w.u32(*heartbeat_ms);
            }
            Reply::Alive { observed, coming } => {
                w.addr(*observed);
                let n = coming.len().min(usize::from(u8::MAX));
                w.u8(n as u8);
                for c in &coming[..n] {
                    w.coming(c);
                }
            }
            Reply::Games {
                total,
                offset,
                games,
            } => {
                w.u16(*total);
                w.u16(*offset);
                let n = games.len().min(usize::from(u8::MAX));
                w.u8(n as u8);
                for g in &games[..n] {
                    w.code(g.code);
                    w.u32(g.version);
                    w.u16(g.players);
                    w.u16(g.max_players);
                    w.str(&g.name);
                }
            }
            Reply::Joined {
                code,
                client_id,
                secret,
                host,
                start_ms,
                punch,
                relay,
                token,
            } => {
                w.code(*code);
                w.u64(*client_id);
                w.bytes(secret);
                w.addr(*host);
                w.u32(*start_ms);
                w.bytes(punch);
                w.relay(relay);
                let n = token.len().min(MAX_TOKEN_LEN);
                w.u16(n as u16);
                w.bytes(&token[..n]);
            }
            Reply::PeerComing(p) => w.coming(p),
            Reply::NewHost {
                code,
                secret,
                observed,
                epoch,
                roster,
            } => {
                w.code(*code);
                w.bytes(secret);
                w.addr(*observed);
                w.u32(*epoch);
                w.roster(roster);
            }
            Reply::Wait { retry_ms } => w.u32(*retry_ms),
            Reply::Error { for_kind, code } => {
                w.u8(*for_kind);
                w.u8(code.to_u8());
            }
        }
    }

    /// Reads a reply from a bounded datagram.
    pub fn decode(datagram: &[u8]) -> Result<Reply, WireError> {
        Self::decode_with_nonce(datagram).map(|(r, _)| r)
    }

    /// Reads a reply and its nonce.
    pub fn decode_with_nonce(datagram: &[u8]) -> Result<(Reply, u64), WireError> {
        let (k, nonce, mut r) = open(datagram)?;
        let reply = match k {
            kind::REGISTERED => Reply::Registered {
                code: r.code()?,
                secret: r.array()?,
                observed: r.addr()?,
                heartbeat_ms: r.u32()?,
            },
            kind::ALIVE => {
                let observed = r.addr()?;
                let n = usize::from(r.u8()?);
                // Each entry is at least 34 bytes (IPv4, no relay): refuse counts the datagram
                // cannot hold.
                if r.0.len() < n * 34 {
                    return Err(WireError::Malformed);
                }
                let coming = (0..n).map(|_| r.coming()).collect::<Result<_, _>>()?;
                Reply::Alive { observed, coming }
            }
            kind::GAMES => {
                let total = r.u16()?;
                let offset = r.u16()?;
                let n = usize::from(r.u8()?);
                if r.0.len() < n * 15 {
                    return Err(WireError::Malformed);
                }
                let games = (0..n)
                    .map(|_| {
                        Ok(GameEntry {
                            code: r.code()?,
                            version: r.u32()?,
                            players: r.u16()?,
                            max_players: r.u16()?,
                            name: r.str()?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Reply::Games {
                    total,
                    offset,
                    games,
                }
            }
            kind::JOINED => Reply::Joined {
                code: r.code()?,
                client_id: r.u64()?,
                secret: r.array()?,
                host: r.addr()?,
                start_ms: r.u32()?,
                punch: r.array()?,
                relay: r.relay()?,
                token: {
                    let n = usize::from(r.u16()?);
                    if n > MAX_TOKEN_LEN {
                        return Err(WireError::Malformed);
                    }
                    r.take(n)?.to_vec()
                },
            },
            kind::PEER_COMING => Reply::PeerComing(r.coming()?),
            kind::NEW_HOST => Reply::NewHost {
                code: r.code()?,
                secret: r.array()?,
                observed: r.addr()?,
                epoch: r.u32()?,
                roster: r.roster()?,
            },
            kind::WAIT => Reply::Wait { retry_ms: r.u32()? },
            kind::ERROR => Reply::Error {
                for_kind: r.u8()?,
                code: ErrorCode::from_u8(r.u8()?).ok_or(WireError::Malformed)?,
            },
            other => return Err(WireError::Kind(other)),
        };
        r.end(false)?;
        Ok((reply, nonce))
    }
}

impl Punch {
    /// Writes the punch packet into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        header(
            if self.ack {
                kind::PUNCH_ACK
            } else {
                kind::PUNCH
            },
            0,
            out,
        );
        out.extend_from_slice(&self.secret);
        out.extend_from_slice(&self.client_id.to_le_bytes());
    }

    /// Reads a punch packet.
    pub fn decode(datagram: &[u8]) -> Result<Punch, WireError> {
        let (k, _, mut r) = open(datagram)?;
        let ack = match k {
            kind::PUNCH => false,
            kind::PUNCH_ACK => true,
            other => return Err(WireError::Kind(other)),
        };
        let p = Punch {
            ack,
            secret: r.array()?,
            client_id: r.u64()?,
        };
        r.end(false)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn samples() -> (Vec<Request>, Vec<Reply>) {
        let code = JoinCode::from_u64(12345);
        let relay = Some(RelayGrant {
            addr: addr("[2001:db8::1]:3478"),
            alloc_id: 77,
            ticket: vec![7; 70],
        });
        let coming = PeerComing {
            code,
            client_id: 9,
            joiner: addr("198.51.100.7:5000"),
            start_ms: 200,
            punch: [1; PUNCH_LEN],
            relay: relay.clone(),
        };
        let requests = vec![
            Request::Register {
                protocol_id: 1,
                version: 2,
                max_players: 8,
                public: true,
                host_client: 77,
                local_addr: addr("10.0.0.2:7777"),
                token_key: [5; 32],
                name: "Friday night".into(),
            },
            Request::Heartbeat {
                code,
                secret: [2; SECRET_LEN],
                players: 3,
                roster: vec![1, 2, 3],
            },
            Request::List {
                version: 0,
                name_contains: "fri".into(),
                offset: 4,
            },
            Request::Join {
                code,
                protocol_id: 1,
            },
            Request::Leave {
                code,
                secret: [2; SECRET_LEN],
                migrate: true,
            },
            Request::Migrate {
                code,
                client_id: 4,
                secret: [3; SECRET_LEN],
                last_tick: 900,
                token_key: [6; 32],
                local_addr: addr("10.0.0.3:7777"),
            },
        ];
        let replies = vec![
            Reply::Registered {
                code,
                secret: [2; SECRET_LEN],
                observed: addr("203.0.113.1:40000"),
                heartbeat_ms: 1000,
            },
            Reply::Alive {
                observed: addr("203.0.113.1:40000"),
                coming: vec![coming.clone(), coming.clone()],
            },
            Reply::Games {
                total: 9,
                offset: 0,
                games: vec![GameEntry {
                    code,
                    version: 2,
                    players: 3,
                    max_players: 8,
                    name: "Friday night".into(),
                }],
            },
            Reply::Joined {
                code,
                client_id: 9,
                secret: [3; SECRET_LEN],
                host: addr("203.0.113.1:40000"),
                start_ms: 200,
                punch: [1; PUNCH_LEN],
                relay,
                token: vec![8; 340],
            },
            Reply::PeerComing(coming),
            Reply::NewHost {
                code,
                secret: [4; SECRET_LEN],
                observed: addr("203.0.113.9:40001"),
                epoch: 1,
                roster: vec![4, 5],
            },
            Reply::Wait { retry_ms: 250 },
            Reply::Error {
                for_kind: kind::JOIN,
                code: ErrorCode::Expired,
            },
        ];
        (requests, replies)
    }

    #[test]
    fn every_message_round_trips_and_padded_requests_outweigh_their_replies() {
        let (requests, replies) = samples();
        let mut buf = Vec::new();
        for req in &requests {
            req.encode(&mut buf);
            assert!(buf.len() <= MAX_DATAGRAM);
            assert!(is_lobby_message(&buf));
            assert_eq!(Request::decode(&buf).as_ref(), Ok(req));
            if Request::padded(req.kind()) {
                assert_eq!(buf.len(), PADDED_REQUEST_LEN, "{req:?}");
                let short = &buf[..PADDED_REQUEST_LEN - 1];
                assert_eq!(Request::decode(short), Err(WireError::NotPadded));
            }
        }
        for reply in &replies {
            reply.encode(&mut buf);
            assert!(buf.len() <= PADDED_REQUEST_LEN, "{reply:?}: {}", buf.len());
            assert_eq!(Reply::decode(&buf).as_ref(), Ok(reply));
        }
        let p = Punch {
            ack: true,
            secret: [9; PUNCH_LEN],
            client_id: 3,
        };
        p.encode(&mut buf);
        assert!(is_punch(&buf) && !is_lobby_message(&buf));
        assert_eq!(Punch::decode(&buf), Ok(p));
    }

    #[test]
    fn trailing_bytes_versions_and_kinds_are_refused() {
        let mut buf = Vec::new();
        Reply::Wait { retry_ms: 1 }.encode(&mut buf);
        buf.push(0);
        assert_eq!(Reply::decode(&buf), Err(WireError::Malformed));
        buf.pop();
        buf[1] = 2;
        assert_eq!(Reply::decode(&buf), Err(WireError::Version(2)));
        assert_eq!(
            Request::decode(&[0x5E, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Kind(0x5E))
        );
        assert_eq!(Request::decode(&[0x50]), Err(WireError::Malformed));
        let mut padded = Vec::new();
        Request::Join {
            code: JoinCode::from_u64(1),
            protocol_id: 1,
        }
        .encode(&mut padded);
        let last = padded.len() - 1;
        padded[last] = 1;
        assert_eq!(Request::decode(&padded), Err(WireError::Malformed));
        assert_eq!(Request::decode(&[0u8; 2000]), Err(WireError::TooLarge));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Request::decode(&bytes);
            let _ = Reply::decode(&bytes);
            let _ = Punch::decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(i in 0usize..14, pos in any::<usize>(), byte in any::<u8>()) {
            let (requests, replies) = samples();
            let mut buf = Vec::new();
            if i < requests.len() {
                requests[i].encode(&mut buf);
            } else {
                replies[(i - requests.len()) % replies.len()].encode(&mut buf);
            }
            let at = pos % buf.len();
            buf[at] = byte;
            let _ = Request::decode(&buf);
            let _ = Reply::decode(&buf);
            buf.truncate(at);
            let _ = Request::decode(&buf);
            let _ = Reply::decode(&buf);
        }
    }
}
