//! The peer side of the lobby: a [`Transport`] wrapper that registers a game or joins one,
//! punches through NATs, and falls back on a relay, transparently to the session above it.
//!
//! A [`Rendezvous`] wraps the one socket a host or player uses for everything: lobby
//! requests, punch packets, relay traffic and the game session. Using one socket matters: the
//! address the lobby observes is the NAT mapping the peer will be reached on. The session
//! (a [`statewire::Server`], [`statewire::Client`] or the endpoints above them) runs on the
//! `Rendezvous` as on any transport; each remote peer has one *canonical* address (the one the
//! lobby observed), whatever path its datagrams take:
//!
//! - **Punching**: from the start time the lobby gave, both ends send `Punch` packets every
//!   [`RendezvousConfig::punch_interval`]; an end that gets one answers `PunchAck` and learns
//!   the address it came from (a symmetric NAT may use a new port toward the peer). Game
//!   datagrams go both direct and, once bound, through the relay.
//! - **Direct**: a `PunchAck` arrived, so both directions work; datagrams go direct only, and
//!   a punch every [`RendezvousConfig::direct_keepalive`] lets the other end follow us if our
//!   NAT moves us to a new port.
//! - **Relayed**: no `PunchAck` within [`RendezvousConfig::punch_timeout`]; datagrams go
//!   through the relay allocation the lobby granted.
//!
//! Lobby replies are accepted only from the lobby's address, only for the request pending,
//! and only with that request's random nonce (a notice pushed to a host carries the nonce of
//! its latest heartbeat), so an off-path attacker spoofing the lobby cannot inject them.
//!
//! Datagrams from the peer are accepted on every path and shown as coming from its canonical
//! address, so a path change never looks like a new client to the session. Call
//! [`Rendezvous::update`] every frame (through the session's `transport_mut()`) to drive
//! retries, heartbeats, punches and relay refreshes, and drain [`Rendezvous::poll_event`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use statewire::{ConnectToken, Key};
use statewire_core::ClientId;
use statewire_transport::{Received, Transport, TransportError};

use crate::code::JoinCode;
use crate::relay::{self, DATA_HEADER_LEN, RefuseReason, RelayPacket};
use crate::storage::SECRET_LEN;
use crate::ticket::{AllocId, RelayTicket};
use crate::wire::{
    self, ErrorCode, GameEntry, MAX_ROSTER, PUNCH_LEN, PeerComing, Punch, RelayGrant, Reply,
    Request,
};

/// Settings and limits of a [`Rendezvous`].
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// Wait before resending an unanswered lobby request the first time; it doubles with
    /// each resend up to 4 times this. Default: 250 ms.
    pub request_retry: Duration,
    /// Sends of one lobby request before giving up ([`RendezvousEvent::LobbyUnreachable`]).
    /// Default: 12 (about 10 s).
    pub request_tries: u32,
    /// Between punch packets to one peer. Default: 50 ms.
    pub punch_interval: Duration,
    /// How long punching may take before the relay is used. Default: 2 s.
    pub punch_timeout: Duration,
    /// Between relay binds until one is confirmed. Default: 250 ms.
    pub relay_retry: Duration,
    /// Between relay binds once bound, to keep the allocation and the NAT mapping towards the
    /// relay alive. Default: 10 s.
    pub relay_refresh: Duration,
    /// Most remote peers (a host's players). Default: 64.
    pub max_peers: usize,
    /// A peer with no datagram either way for this long is forgotten. Default: 30 s.
    pub peer_idle_timeout: Duration,
    /// Between punches on a direct path, so that the other end learns our new address if our
    /// NAT rebinds us (zero: none). Default: 1 s.
    pub direct_keepalive: Duration,
    /// Most datagrams one [`Transport::recv`] call looks at before returning (lobby, punch and
    /// relay control datagrams are consumed inside it). Default: 256.
    pub max_datagrams_per_recv: usize,
    /// Never punch, nor answer the other end's punches; use the relay at once (tests, and
    /// networks known to need it). Default: false.
    pub relay_only: bool,
    /// Most events waiting in [`Rendezvous::poll_event`]; older ones are dropped. Default:
    /// 256.
    pub max_events: usize,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            request_retry: Duration::from_millis(250),
            request_tries: 12,
            punch_interval: Duration::from_millis(50),
            punch_timeout: Duration::from_secs(2),
            relay_retry: Duration::from_millis(250),
            relay_refresh: Duration::from_secs(10),
            max_peers: 64,
            peer_idle_timeout: Duration::from_secs(30),
            direct_keepalive: Duration::from_secs(1),
            max_datagrams_per_recv: 256,
            relay_only: false,
            max_events: 256,
        }
    }
}

/// How datagrams reach one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// Punching in progress; datagrams go both ways at once.
    Punching,
    /// Straight between the two ends.
    Direct,
    /// Through the relay.
    Relayed,
    /// Punching failed and there is no relay.
    Failed,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Punching => "punching",
            Path::Direct => "direct",
            Path::Relayed => "relayed",
            Path::Failed => "failed (no relay)",
        })
    }
}

/// What a host tells the lobby about its game.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// The game's name (at most [`wire::MAX_NAME_LEN`] bytes).
    pub name: String,
    /// The game's protocol id ([`statewire::SessionConfig::protocol_id`]).
    pub protocol_id: u64,
    /// The game's version number.
    pub version: u32,
    /// Most players.
    pub max_players: u16,
    /// Listed publicly (else join by code only).
    pub public: bool,
    /// The host's own player's client id (0: a dedicated server).
    pub host_client: ClientId,
    /// The key the host's session opens connect tokens with (the lobby seals them with it).
    pub token_key: Key,
}

/// What a player needs to ask the lobby for a new host: from [`RendezvousEvent::Joined`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The game.
    pub code: JoinCode,
    /// The player's client id.
    pub client_id: ClientId,
    /// The player's secret.
    pub secret: [u8; SECRET_LEN],
}

/// What happened, from [`Rendezvous::poll_event`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RendezvousEvent {
    /// The game is registered under `code`; players join with it.
    Registered {
        /// The join code.
        code: JoinCode,
        /// Our address as the lobby sees it.
        observed: SocketAddr,
    },
    /// The lobby admitted us: connect the session to `host` with `token`.
    Joined {
        /// The connect token.
        token: Box<ConnectToken>,
        /// The host's canonical address (the session's server address).
        host: SocketAddr,
        /// What to keep for a host migration.
        membership: Membership,
    },
    /// A player is on its way (host side).
    PeerComing {
        /// Its client id.
        client_id: ClientId,
        /// Its canonical address.
        addr: SocketAddr,
    },
    /// A peer's path changed.
    PathChanged {
        /// The peer's canonical address.
        peer: SocketAddr,
        /// The new path.
        path: Path,
    },
    /// We are the game's new host (after [`Rendezvous::migrate`]).
    NewHost {
        /// The game.
        code: JoinCode,
        /// Hosts so far, minus one.
        epoch: u32,
        /// The players expected to reconnect.
        roster: Vec<ClientId>,
    },
    /// A page of public games.
    Games {
        /// Matching games in all.
        total: u16,
        /// This page.
        games: Vec<GameEntry>,
    },
    /// The lobby refused a request.
    Refused(ErrorCode),
    /// The lobby did not answer a request after every retry, or (host) stopped answering
    /// heartbeats; heartbeats go on, in case it comes back.
    LobbyUnreachable,
}

/// Counters of a [`Rendezvous`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Lobby requests sent (retries included).
    pub lobby_requests: u64,
    /// Lobby replies handled.
    pub lobby_replies: u64,
    /// Punch packets sent.
    pub punches_sent: u64,
    /// Punch packets (and acks) received with a known secret.
    pub punches_received: u64,
    /// Punch packets with an unknown secret (or any, with `relay_only`), ignored.
    pub punches_unknown: u64,
    /// Game datagrams sent through the relay.
    pub relayed_sent: u64,
    /// Game datagrams received through the relay.
    pub relayed_received: u64,
    /// Relay datagrams that did not decode or named another allocation.
    pub relay_ignored: u64,
    /// Relay refusals received.
    pub relay_refused: u64,
    /// Game datagrams sent direct to a peer.
    pub direct_sent: u64,
    /// Game datagrams dropped: the peer's path failed.
    pub dropped_no_path: u64,
    /// Peers forgotten after being idle.
    pub peers_expired: u64,
    /// Peers not added: [`RendezvousConfig::max_peers`] reached.
    pub peers_refused: u64,
    /// Datagrams from the lobby's address that were not an answer we expect (a forgery, a
    /// duplicate, or too late), ignored.
    pub lobby_ignored: u64,
    /// Events dropped: [`RendezvousConfig::max_events`] reached.
    pub events_dropped: u64,
}

struct RelayEnd {
    addr: SocketAddr,
    ticket: RelayTicket,
    alloc: AllocId,
    /// The relay confirmed our binding.
    bound: bool,
    /// When to send the next Bind (`Duration::MAX`: never again).
    next_bind: Duration,
}

struct Peer {
    canonical: SocketAddr,
    client_id: u64,
    /// Where direct datagrams go (learned from punches).
    direct: SocketAddr,
    punch: [u8; PUNCH_LEN],
    start: Duration,
    deadline: Duration,
    next_punch: Duration,
    path: Path,
    relay: Option<RelayEnd>,
    last_activity: Duration,
    /// Player side: game datagrams held until the path is known, so that the host's session
    /// first hears of us on the path we keep (a symmetric NAT gives each path its own port).
    held: VecDeque<Vec<u8>>,
}

/// Largest game datagram carried: what a relay with the default
/// [`RelayConfig::max_datagram`](crate::relay::RelayConfig::max_datagram) forwards.
pub const MAX_RELAYED_PAYLOAD: usize = 1400;

/// Most game datagrams a player holds per peer while punching; older ones are dropped (the
/// session retries its handshake anyway).
const MAX_HELD: usize = 16;

enum Role {
    Idle,
    Host {
        code: Option<JoinCode>,
        /// The lobby answered a heartbeat: the game is listed and joinable.
        confirmed: bool,
        secret: [u8; SECRET_LEN],
        heartbeat: Duration,
        next_heartbeat: Duration,
        players: u16,
        roster: Vec<u64>,
    },
    Player {
        membership: Option<Membership>,
    },
}

struct Pending {
    bytes: Vec<u8>,
    next: Duration,
    tries: u32,
    nonce: u64,
    kind: u8,
}

/// Kind bytes of the requests a reply may answer.
mod req {
    pub(super) const REGISTER: u8 = 0x50;
    pub(super) const LIST: u8 = 0x52;
    pub(super) const JOIN: u8 = 0x53;
    pub(super) const MIGRATE: u8 = 0x55;
}

fn fresh_nonce() -> u64 {
    // A failed OS random source gives a guessable 0; nothing else breaks.
    getrandom::u64().unwrap_or(0)
}

/// The peer side of the lobby; see the [module docs](self).
pub struct Rendezvous<T: Transport> {
    inner: T,
    lobby: SocketAddr,
    config: RendezvousConfig,
    now: Duration,
    role: Role,
    pending: Option<Pending>,
    peers: Vec<Peer>,
    events: VecDeque<RendezvousEvent>,
    stats: RendezvousStats,
    scratch: Vec<u8>,
    /// Nonces of our two latest heartbeats (host): the lobby's answers and pushes carry one.
    beats: [u64; 2],
    /// Heartbeats sent since the lobby last answered one.
    silent_beats: u32,
}

impl<T: Transport> std::fmt::Debug for Rendezvous<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("lobby", &self.lobby)
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<T: Transport> Rendezvous<T> {
    fn build(inner: T, lobby: SocketAddr, config: RendezvousConfig, now: Duration) -> Self {
        Rendezvous {
            inner,
            lobby,
            config,
            now,
            role: Role::Idle,
            pending: None,
            peers: Vec::new(),
            events: VecDeque::new(),
            stats: RendezvousStats::default(),
            scratch: Vec::with_capacity(wire::MAX_DATAGRAM + DATA_HEADER_LEN),
            beats: [fresh_nonce(), fresh_nonce()],
            silent_beats: 0,
        }
    }

    /// A rendezvous that only asks the lobby for lists ([`Rendezvous::list`]).
    pub fn idle(inner: T, lobby: SocketAddr, config: RendezvousConfig, now: Duration) -> Self {
        Self::build(inner, lobby, config, now)
    }

    /// Registers a game at `lobby` and keeps it alive; players the lobby sends are expected.
    pub fn host(
        inner: T,
        lobby: SocketAddr,
        info: HostInfo,
        config: RendezvousConfig,
        now: Duration,
    ) -> Self {
        let mut r = Self::build(inner, lobby, config, now);
        let request = Request::Register {
            protocol_id: info.protocol_id,
            version: info.version,
            max_players: info.max_players,
            public: info.public,
            host_client: info.host_client.0,
            local_addr: r.inner.local_addr(),
            token_key: info.token_key.to_bytes(),
            name: info.name.clone(),
        };
        let players = u16::from(info.host_client.0 != 0);
        let roster = if info.host_client.0 != 0 {
            vec![info.host_client.0]
        } else {
            Vec::new()
        };
        r.role = Role::Host {
            code: None,
            confirmed: false,
            secret: [0; SECRET_LEN],
            heartbeat: Duration::from_secs(1),
            next_heartbeat: Duration::MAX,
            players,
            roster,
        };
        r.request(&request);
        r
    }

    /// Asks `lobby` to join the game `code`; [`RendezvousEvent::Joined`] brings the token.
    pub fn join(
        inner: T,
        lobby: SocketAddr,
        code: JoinCode,
        protocol_id: u64,
        config: RendezvousConfig,
        now: Duration,
    ) -> Self {
        let mut r = Self::build(inner, lobby, config, now);
        r.role = Role::Player { membership: None };
        r.request(&Request::Join { code, protocol_id });
        r
    }

    /// Asks `lobby` what to do now that the host of our game is gone: either
    /// [`RendezvousEvent::NewHost`] (we host now, with `token_key`; our session must admit
    /// the roster) or [`RendezvousEvent::Joined`] (connect to the new host). `last_tick` is the
    /// last tick we had.
    pub fn migrate(
        inner: T,
        lobby: SocketAddr,
        membership: Membership,
        last_tick: u32,
        token_key: &Key,
        config: RendezvousConfig,
        now: Duration,
    ) -> Self {
        let mut r = Self::build(inner, lobby, config, now);
        let request = Request::Migrate {
            code: membership.code,
            client_id: membership.client_id.0,
            secret: membership.secret,
            last_tick,
            token_key: token_key.to_bytes(),
            local_addr: r.inner.local_addr(),
        };
        r.role = Role::Player {
            membership: Some(membership),
        };
        r.request(&request);
        r
    }

    /// Asks the lobby for a page of public games ([`RendezvousEvent::Games`]). Returns
    /// `false`, asking nothing, while another request (a registration, a join) is pending: one
    /// request at a time, so that none loses its retries.
    pub fn list(&mut self, version: u32, name_contains: &str, offset: u16) -> bool {
        if self.pending.is_some() {
            return false;
        }
        self.request(&Request::List {
            version,
            name_contains: name_contains.to_string(),
            offset,
        });
        true
    }

    /// Host: reports the players in the game (sent with the next heartbeat; the lobby picks a
    /// new host among them if we leave).
    pub fn set_players(&mut self, roster: &[ClientId]) {
        if let Role::Host {
            players, roster: r, ..
        } = &mut self.role
        {
            *players = u16::try_from(roster.len()).unwrap_or(u16::MAX);
            r.clear();
            r.extend(roster.iter().take(MAX_ROSTER).map(|c| c.0));
        }
    }

    /// Host: leaves the lobby (sent three times, unacknowledged). With `migrate`, the players
    /// pick a new host; else the game ends.
    pub fn leave(&mut self, migrate: bool) {
        if let Role::Host {
            code: Some(code),
            secret,
            ..
        } = &self.role
        {
            Request::Leave {
                code: *code,
                secret: *secret,
                migrate,
            }
            .encode(&mut self.scratch);
            for _ in 0..3 {
                let _ = self.inner.send(self.lobby, &self.scratch);
            }
            self.stats.lobby_requests += 3;
        }
        self.role = Role::Idle;
    }

    /// The join code, once registered (host).
    pub fn code(&self) -> Option<JoinCode> {
        match &self.role {
            Role::Host { code, .. } => *code,
            Role::Player { membership } => membership.map(|m| m.code),
            Role::Idle => None,
        }
    }

    /// How datagrams reach the peer at canonical address `peer`.
    pub fn path(&self, peer: SocketAddr) -> Option<Path> {
        self.peers
            .iter()
            .find(|p| p.canonical == peer)
            .map(|p| p.path)
    }

    /// Remote peers and their paths.
    pub fn paths(&self) -> impl Iterator<Item = (SocketAddr, Path)> + '_ {
        self.peers.iter().map(|p| (p.canonical, p.path))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RendezvousEvent> {
        self.events.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> RendezvousStats {
        self.stats
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The wrapped transport, mutably (e.g. to advance a simulator's clock).
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The lobby's address.
    pub fn lobby(&self) -> SocketAddr {
        self.lobby
    }

    fn request(&mut self, request: &Request) {
        let nonce = fresh_nonce();
        request.encode_with(nonce, &mut self.scratch);
        let _ = self.inner.send(self.lobby, &self.scratch);
        self.stats.lobby_requests += 1;
        self.pending = Some(Pending {
            bytes: self.scratch.clone(),
            next: self.now + self.config.request_retry,
            tries: 1,
            nonce,
            kind: request.kind(),
        });
    }

    fn push_event(&mut self, event: RendezvousEvent) {
        if self.events.len() >= self.config.max_events.max(1) {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Takes the pending request if `nonce` answers it and it is of one of `kinds`.
    fn answers(&mut self, nonce: u64, kinds: &[u8]) -> bool {
        match &self.pending {
            Some(p) if p.nonce == nonce && kinds.contains(&p.kind) => {
                self.pending = None;
                true
            }
            _ => false,
        }
    }

    /// Drives timers at `now`: request retries, heartbeats, punches, relay binds, expiry.
    /// Call it every frame; it reads nothing, so call the session's update too.
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        let now = self.now;
        if let Some(p) = &mut self.pending
            && now >= p.next
        {
            if p.tries >= self.config.request_tries {
                self.pending = None;
                self.push_event(RendezvousEvent::LobbyUnreachable);
            } else {
                p.tries += 1;
                // 250 ms, 500 ms, then 1 s: a slow lobby is not asked ever more often.
                p.next = now + self.config.request_retry * (1 << (p.tries - 1).min(2));
                let _ = self.inner.send(self.lobby, &p.bytes);
                self.stats.lobby_requests += 1;
            }
        }
        if let Role::Host {
            code: Some(code),
            confirmed,
            secret,
            heartbeat,
            next_heartbeat,
            players,
            roster,
        } = &mut self.role
            && now >= *next_heartbeat
        {
            // Until the lobby confirms the game, heartbeats are retried like requests.
            *next_heartbeat = now
                + if *confirmed {
                    *heartbeat
                } else {
                    self.config.request_retry
                };
            let nonce = fresh_nonce();
            self.beats = [nonce, self.beats[0]];
            self.silent_beats += 1;
            if self.silent_beats == self.config.request_tries.max(1) + 1 {
                // Heartbeats go unanswered: say so once (they go on, the lobby may return).
                self.events.push_back(RendezvousEvent::LobbyUnreachable);
            }
            Request::Heartbeat {
                code: *code,
                secret: *secret,
                players: *players,
                roster: roster.clone(),
            }
            .encode_with(nonce, &mut self.scratch);
            let _ = self.inner.send(self.lobby, &self.scratch);
            self.stats.lobby_requests += 1;
        }
        let idle = self.config.peer_idle_timeout;
        let before = self.peers.len();
        self.peers
            .retain(|p| now.saturating_sub(p.last_activity) < idle);
        self.stats.peers_expired += (before - self.peers.len()) as u64;
        for i in 0..self.peers.len() {
            self.drive_peer(i, now);
        }
        Ok(())
    }

    fn drive_peer(&mut self, i: usize, now: Duration) {
        let interval = self.config.punch_interval;
        let p = &mut self.peers[i];
        // Punching, and on a direct path a punch now and then: if our NAT gave us a new port
        // (a rebinding), the other end learns it from the punch and maps it to us again.
        let keepalive = p.path == Path::Direct && !self.config.direct_keepalive.is_zero();
        if (p.path == Path::Punching && now >= p.start || keepalive) && now >= p.next_punch {
            p.next_punch = now
                + if keepalive {
                    self.config.direct_keepalive
                } else {
                    interval
                };
            Punch {
                ack: false,
                secret: p.punch,
                client_id: p.client_id,
            }
            .encode(&mut self.scratch);
            let _ = self.inner.send(p.direct, &self.scratch);
            self.stats.punches_sent += 1;
        }
        if p.path == Path::Punching && now >= p.deadline {
            p.path = if p.relay.is_some() {
                Path::Relayed
            } else {
                Path::Failed
            };
            let event = RendezvousEvent::PathChanged {
                peer: p.canonical,
                path: p.path,
            };
            self.push_event(event);
            self.flush_held(i);
        }
        let p = &mut self.peers[i];
        // The relay is bound from the start (so that it is ready when punching fails) and
        // kept while it is or may be used.
        if let Some(end) = &mut p.relay
            && p.path != Path::Direct
            && now >= end.next_bind
        {
            end.next_bind = now
                + if end.bound {
                    self.config.relay_refresh
                } else {
                    self.config.relay_retry
                };
            relay::encode_bind(&end.ticket, &mut self.scratch);
            let _ = self.inner.send(end.addr, &self.scratch);
        }
    }

    fn add_peer(
        &mut self,
        canonical: SocketAddr,
        client_id: u64,
        start_ms: u32,
        punch: [u8; PUNCH_LEN],
        relay: Option<RelayGrant>,
    ) -> bool {
        if let Some(existing) = self.peers.iter().position(|p| p.canonical == canonical) {
            if self.peers[existing].punch == punch {
                return false;
            }
            self.peers.remove(existing);
        }
        if self.peers.len() >= self.config.max_peers {
            self.stats.peers_refused += 1;
            return false;
        }
        let relay = relay.and_then(|g| {
            RelayTicket::from_bytes(&g.ticket)
                .ok()
                .map(|ticket| RelayEnd {
                    addr: g.addr,
                    ticket,
                    alloc: AllocId(g.alloc_id),
                    bound: false,
                    next_bind: self.now,
                })
        });
        let start = self.now + Duration::from_millis(u64::from(start_ms));
        let relay_only = self.config.relay_only && relay.is_some();
        let path = if relay_only {
            Path::Relayed
        } else {
            Path::Punching
        };
        self.peers.push(Peer {
            canonical,
            client_id,
            direct: canonical,
            punch,
            start,
            deadline: start + self.config.punch_timeout,
            next_punch: start,
            path,
            relay,
            last_activity: self.now,
            held: VecDeque::new(),
        });
        if relay_only {
            self.push_event(RendezvousEvent::PathChanged {
                peer: canonical,
                path,
            });
        }
        let i = self.peers.len() - 1;
        self.drive_peer(i, self.now);
        true
    }

    fn handle_reply(&mut self, datagram: &[u8]) {
        let Ok((reply, nonce)) = Reply::decode_with_nonce(datagram) else {
            self.stats.lobby_ignored += 1;
            return;
        };
        if self.accept_reply(reply, nonce) {
            self.stats.lobby_replies += 1;
        } else {
            self.stats.lobby_ignored += 1;
        }
    }

    /// Acts on a lobby reply if it answers what we asked; returns whether it did.
    fn accept_reply(&mut self, reply: Reply, nonce: u64) -> bool {
        let beat = self.beats.contains(&nonce);
        match reply {
            Reply::Registered {
                code: c,
                secret: s,
                heartbeat_ms,
                ..
            } => {
                if !matches!(self.role, Role::Host { code: None, .. })
                    || !self.answers(nonce, &[req::REGISTER])
                {
                    return false;
                }
                if let Role::Host {
                    code,
                    secret,
                    heartbeat,
                    next_heartbeat,
                    ..
                } = &mut self.role
                {
                    *code = Some(c);
                    *secret = s;
                    *heartbeat = Duration::from_millis(u64::from(heartbeat_ms.clamp(100, 60_000)));
                    // The first heartbeat, sent at once, confirms the game; the event waits
                    // for its answer, so that the code is joinable when it is shown.
                    *next_heartbeat = self.now;
                }
                let now = self.now;
                let _ = self.update(now);
                true
            }
            Reply::Alive { coming, observed } => {
                if !beat {
                    return false;
                }
                self.silent_beats = 0;
                if let Role::Host {
                    code: Some(code),
                    confirmed,
                    heartbeat,
                    next_heartbeat,
                    ..
                } = &mut self.role
                    && !*confirmed
                {
                    *confirmed = true;
                    *next_heartbeat = self.now + *heartbeat;
                    let code = *code;
                    self.push_event(RendezvousEvent::Registered { code, observed });
                }
                for c in coming {
                    self.peer_coming(c);
                }
                true
            }
            Reply::PeerComing(c) => {
                if !beat {
                    return false;
                }
                self.peer_coming(c);
                true
            }
            Reply::Games { total, games, .. } => {
                if !self.answers(nonce, &[req::LIST]) {
                    return false;
                }
                self.push_event(RendezvousEvent::Games { total, games });
                true
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
                if !matches!(self.role, Role::Player { .. })
                    || !self.answers(nonce, &[req::JOIN, req::MIGRATE])
                {
                    return false;
                }
                let Ok(token) = ConnectToken::decode(&token) else {
                    return false;
                };
                let m = Membership {
                    code,
                    client_id: ClientId(client_id),
                    secret,
                };
                self.role = Role::Player {
                    membership: Some(m),
                };
                self.peers.clear();
                self.add_peer(host, client_id, start_ms, punch, relay);
                self.push_event(RendezvousEvent::Joined {
                    token: Box::new(token),
                    host,
                    membership: m,
                });
                true
            }
            Reply::NewHost {
                code,
                secret,
                epoch,
                roster,
                ..
            } => {
                let Role::Player {
                    membership: Some(m),
                } = &self.role
                else {
                    return false;
                };
                let me = m.client_id;
                // Only an answer to our Migrate request (its kind and nonce) makes us the host.
                if code != m.code || !self.answers(nonce, &[req::MIGRATE]) {
                    return false;
                }
                self.role = Role::Host {
                    code: Some(code),
                    confirmed: true,
                    secret,
                    heartbeat: Duration::from_secs(1),
                    next_heartbeat: self.now,
                    players: 1,
                    roster: vec![me.0],
                };
                self.push_event(RendezvousEvent::NewHost {
                    code,
                    epoch,
                    roster: roster.into_iter().map(ClientId).collect(),
                });
                true
            }
            Reply::Wait { retry_ms } => match &mut self.pending {
                Some(p) if p.nonce == nonce && p.kind == req::MIGRATE => {
                    p.next = self.now + Duration::from_millis(u64::from(retry_ms.clamp(10, 5000)));
                    // Waiting is an answer: it does not use up the tries.
                    p.tries = 1;
                    true
                }
                _ => false,
            },
            Reply::Error { code, for_kind } => {
                let pending = self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.nonce == nonce && p.kind == for_kind);
                if !pending && !beat {
                    return false;
                }
                if pending {
                    self.pending = None;
                }
                self.push_event(RendezvousEvent::Refused(code));
                true
            }
        }
    }

    fn peer_coming(&mut self, c: PeerComing) {
        if !matches!(self.role, Role::Host { code: Some(code), .. } if code == c.code) {
            return;
        }
        if self.add_peer(c.joiner, c.client_id, c.start_ms, c.punch, c.relay) {
            self.push_event(RendezvousEvent::PeerComing {
                client_id: ClientId(c.client_id),
                addr: c.joiner,
            });
        }
    }

    fn handle_punch(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Ok(punch) = Punch::decode(datagram) else {
            return;
        };
        if self.config.relay_only {
            // Answering would let the other end go direct while we stay relayed.
            self.stats.punches_unknown += 1;
            return;
        }
        let Some(p) = self
            .peers
            .iter_mut()
            .find(|p| p.punch == punch.secret && p.client_id == punch.client_id)
        else {
            self.stats.punches_unknown += 1;
            return;
        };
        self.stats.punches_received += 1;
        p.last_activity = self.now;
        // Peer-reflexive: the peer's NAT may use another port towards us than towards the
        // lobby; answer and send where its packets come from.
        p.direct = from;
        if punch.ack {
            if p.path != Path::Direct {
                p.path = Path::Direct;
                let event = RendezvousEvent::PathChanged {
                    peer: p.canonical,
                    path: Path::Direct,
                };
                self.push_event(event);
                if let Some(i) = self.peers.iter().position(|q| q.punch == punch.secret) {
                    self.flush_held(i);
                }
            }
        } else {
            Punch {
                ack: true,
                secret: punch.secret,
                client_id: punch.client_id,
            }
            .encode(&mut self.scratch);
            let _ = self.inner.send(from, &self.scratch);
            self.stats.punches_sent += 1;
        }
    }

    /// Handles a relay datagram; returns the peer index and payload length of relayed game
    /// data.
    fn handle_relay(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<(usize, usize)> {
        let Ok(packet) = relay::decode(datagram) else {
            self.stats.relay_ignored += 1;
            return None;
        };
        // Every relay datagram names its allocation: match on (relay address, allocation), so
        // that several peers sharing one relay never take each other's.
        let (alloc_id, what) = match packet {
            RelayPacket::Data { alloc_id, payload } => (alloc_id, Some(payload.len())),
            RelayPacket::Bound { alloc_id, .. } => (alloc_id, None),
            RelayPacket::Refused { alloc_id, reason } => {
                self.stats.relay_refused += 1;
                let now = self.now;
                if let Some(end) = self
                    .peers
                    .iter_mut()
                    .filter_map(|p| p.relay.as_mut())
                    .find(|r| r.addr == from && r.alloc == alloc_id)
                {
                    match reason {
                        // The relay forgot us (an idle allocation expired): bind again.
                        RefuseReason::NotBound => {
                            end.bound = false;
                            end.next_bind = now;
                        }
                        // An expired ticket cannot bind again, but the allocation it made
                        // lives on while data flows: keep using it, stop refreshing.
                        RefuseReason::ExpiredTicket => end.next_bind = Duration::MAX,
                        // Forged, over its byte limit, relay full: this allocation is done.
                        _ => {
                            end.bound = false;
                            end.next_bind = Duration::MAX;
                        }
                    }
                }
                return None;
            }
            _ => {
                self.stats.relay_ignored += 1;
                return None;
            }
        };
        let Some(i) = self.peers.iter().position(|p| {
            p.relay
                .as_ref()
                .is_some_and(|r| r.addr == from && r.alloc == alloc_id)
        }) else {
            self.stats.relay_ignored += 1;
            return None;
        };
        match what {
            Some(len) => {
                self.stats.relayed_received += 1;
                self.peers[i].last_activity = self.now;
                Some((i, len))
            }
            None => {
                let refresh = self.now + self.config.relay_refresh;
                if let Some(end) = self.peers[i].relay.as_mut()
                    && !end.bound
                {
                    end.bound = true;
                    end.next_bind = refresh;
                }
                self.flush_held(i);
                None
            }
        }
    }

    /// Sends what a player held for peer `i`, once its path allows.
    fn flush_held(&mut self, i: usize) {
        let Some(p) = self.peers.get_mut(i) else {
            return;
        };
        let held = std::mem::take(&mut p.held);
        let to = p.canonical;
        for d in held {
            let _ = Transport::send(self, to, &d);
        }
    }

    fn is_relay(&self, addr: SocketAddr) -> bool {
        self.peers
            .iter()
            .any(|p| p.relay.as_ref().is_some_and(|r| r.addr == addr))
    }

    fn canonical(&mut self, from: SocketAddr) -> SocketAddr {
        let now = self.now;
        match self
            .peers
            .iter_mut()
            .find(|p| p.direct == from || p.canonical == from)
        {
            Some(p) => {
                p.last_activity = now;
                p.canonical
            }
            None => from,
        }
    }
}

impl<T: Transport> Transport for Rendezvous<T> {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn max_payload(&self) -> usize {
        // What the relay forwards, so that any datagram can take either path.
        self.inner
            .max_payload()
            .saturating_sub(DATA_HEADER_LEN)
            .min(MAX_RELAYED_PAYLOAD)
    }

    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let max = self.max_payload();
        if payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        let holds = matches!(self.role, Role::Player { .. });
        let Some(p) = self.peers.iter_mut().find(|p| p.canonical == to) else {
            return self.inner.send(to, payload);
        };
        let relay_ready = p.relay.as_ref().is_some_and(|r| r.bound);
        if holds && (p.path == Path::Punching || (p.path == Path::Relayed && !relay_ready)) {
            if p.held.len() >= MAX_HELD {
                p.held.pop_front();
            }
            p.held.push_back(payload.to_vec());
            return Ok(());
        }
        let direct = matches!(p.path, Path::Punching | Path::Direct);
        let relayed = matches!(p.path, Path::Punching | Path::Relayed);
        let mut sent = false;
        if direct {
            self.inner.send(p.direct, payload)?;
            self.stats.direct_sent += 1;
            sent = true;
        }
        if relayed
            && let Some(end) = &p.relay
            && end.bound
        {
            relay::encode_data(end.alloc, payload, &mut self.scratch);
            self.inner.send(end.addr, &self.scratch)?;
            self.stats.relayed_sent += 1;
            sent = true;
        }
        if !sent {
            self.stats.dropped_no_path += 1;
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        for _ in 0..self.config.max_datagrams_per_recv.max(1) {
            let Some(got) = self.inner.recv(buf)? else {
                return Ok(None);
            };
            let len = got.len.min(buf.len());
            let datagram = &buf[..len];
            // `datagram` borrows the caller's buffer, not `self`: handled in place, no copy.
            if got.from == self.lobby && wire::is_lobby_message(datagram) {
                self.handle_reply(datagram);
                continue;
            }
            if wire::is_punch(datagram) {
                self.handle_punch(got.from, datagram);
                continue;
            }
            if relay::is_relay_packet(datagram) && self.is_relay(got.from) {
                if let Some((i, n)) = self.handle_relay(got.from, datagram) {
                    buf.copy_within(DATA_HEADER_LEN..DATA_HEADER_LEN + n, 0);
                    return Ok(Some(Received {
                        len: n,
                        from: self.peers[i].canonical,
                    }));
                }
                continue;
            }
            let from = self.canonical(got.from);
            return Ok(Some(Received { len, from }));
        }
        Ok(None)
    }

    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        self.inner.poll_closed_peer()
    }

    fn close_peer(&mut self, peer: SocketAddr) {
        // The session dropped this peer: forget its paths (and stop refreshing its relay).
        self.peers.retain(|p| p.canonical != peer);
        self.inner.close_peer(peer);
    }

    fn mark_validated(&mut self, peer: SocketAddr) {
        self.inner.mark_validated(peer);
    }
}
