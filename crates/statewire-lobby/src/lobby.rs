//! The lobby: a sans-IO state machine that registers games, lists them, hands players to
//! hosts with connect tokens, introduces both ends for hole punching, grants relay tickets,
//! and picks a new host when one leaves.
//!
//! Feed it every datagram with [`Lobby::handle`] and send what [`Lobby::poll_transmit`]
//! returns; call [`Lobby::handle_timeout`] now and then (at [`Lobby::poll_timeout`]). Time is
//! the wall clock as a [`Duration`] since the Unix epoch, given by the caller: tokens expire
//! in Unix seconds and several lobby nodes sharing a [`Storage`] must agree on it.
//!
//! ```
//! use std::time::Duration;
//! use statewire_lobby::{Lobby, LobbyConfig, MemoryStorage};
//! use statewire_lobby::wire::{Reply, Request};
//!
//! let mut lobby = Lobby::new(MemoryStorage::new(), LobbyConfig::default());
//! let host = "203.0.113.5:40000".parse().unwrap();
//! let now = Duration::from_secs(1_800_000_000);
//! let mut datagram = Vec::new();
//! Request::Register {
//!     protocol_id: 7, version: 1, max_players: 8, public: true, host_client: 0,
//!     local_addr: "10.0.0.2:7777".parse().unwrap(), token_key: [1; 32],
//!     name: "Friday night".into(),
//! }
//! .encode(&mut datagram);
//! lobby.handle(now, host, &datagram);
//! let (to, reply) = lobby.poll_transmit().expect("a reply");
//! assert_eq!(to, host);
//! assert!(matches!(Reply::decode(&reply), Ok(Reply::Registered { .. })));
//! ```
//!
//! Limits (all in [`LobbyConfig`]): requests per second per source IP, games per source IP,
//! games per node, tracked IPs, queued notices per game, queued transmits. A request over a
//! limit is dropped (rate) or refused with an [`ErrorCode`]; malformed datagrams are counted
//! and never answered.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use statewire::{ConnectToken, Key, TokenParams};
use statewire_core::ClientId;

use crate::code::JoinCode;
use crate::storage::{GameRecord, MigrationRecord, PlayerRecord, SECRET_LEN, Storage};
use crate::ticket::{AllocId, RelayTicket, Role, TicketParams};
use crate::wire::{
    ErrorCode, GameEntry, MAX_NAME_LEN, MAX_ROSTER, PUNCH_LEN, PeerComing, RelayGrant, Reply,
    Request,
};

/// A relay the lobby grants allocations on: its address and the key it opens tickets with.
#[derive(Debug, Clone)]
pub struct RelayAccess {
    /// Where ends send to the relay.
    pub addr: SocketAddr,
    /// The key shared by the lobby and the relay.
    pub key: Key,
}

/// Settings and limits of a [`Lobby`].
#[derive(Debug, Clone)]
pub struct LobbyConfig {
    /// How often hosts heartbeat. Default: 1 s.
    pub heartbeat_interval: Duration,
    /// A game whose host is silent this long is expired (joins are refused; players may
    /// migrate). Default: 5 s.
    pub host_timeout: Duration,
    /// How long an expired game's code is remembered (answered "expired", not "unknown").
    /// Default: 10 min.
    pub tombstone: Duration,
    /// Most live games one lobby node registers. Default: 10,000.
    pub max_games: usize,
    /// Most live games registered from one IP address. Default: 4.
    pub max_games_per_ip: usize,
    /// Requests per second one IP address may send (a token bucket). Default: 20.
    pub requests_per_sec_per_ip: u32,
    /// Burst of the per-IP bucket. Default: 40.
    pub request_burst_per_ip: u32,
    /// Most IP addresses tracked by the rate limiter and the per-IP game count; when full,
    /// idle ones are forgotten and, failing that, the limiter forgets the first in address
    /// order while new games are refused ([`ErrorCode::LobbyFull`]). Default: 65,536.
    ///
    /// Here and in the other per-IP limits, an IPv6 address counts by its /64.
    pub max_tracked_ips: usize,
    /// Delay the lobby tells both ends to wait before punching, so that the host has heard of
    /// the joiner. Default: 150 ms.
    pub punch_delay: Duration,
    /// Lifetime of the connect tokens the lobby issues. Default: 60 s.
    pub token_lifetime: Duration,
    /// Idle timeout of game sessions, written into tokens (seconds). Default: 10.
    pub session_timeout_secs: u32,
    /// The relay to grant allocations on (None: no fallback; symmetric NATs cannot join).
    /// Default: none.
    pub relay: Option<RelayAccess>,
    /// Lifetime of relay tickets. Default: 1 h.
    pub ticket_lifetime: Duration,
    /// Most notices (players coming) queued per game for its host. Default: 32.
    pub max_notices_per_game: usize,
    /// How long each candidate has to claim the host's place in a migration, in turn, lowest
    /// client id first. Default: 3 s.
    pub migration_turn: Duration,
    /// Most datagrams waiting in [`Lobby::poll_transmit`]; more are dropped. Default: 4096.
    pub max_queued_transmits: usize,
    /// A player counts as on its way (toward [`ErrorCode::GameFull`] and the per-address
    /// limit below) from its join until the host reports it, at most this long. Default:
    /// 10 s.
    pub join_pending: Duration,
    /// Most players on their way to one game from one IP address; more are refused with
    /// [`ErrorCode::TooManyJoins`]. Default: 4.
    pub max_pending_joins_per_ip: usize,
}

impl Default for LobbyConfig {
    fn default() -> Self {
        LobbyConfig {
            heartbeat_interval: Duration::from_secs(1),
            host_timeout: Duration::from_secs(5),
            tombstone: Duration::from_secs(600),
            max_games: 10_000,
            max_games_per_ip: 4,
            requests_per_sec_per_ip: 20,
            request_burst_per_ip: 40,
            max_tracked_ips: 65_536,
            punch_delay: Duration::from_millis(150),
            token_lifetime: Duration::from_secs(60),
            session_timeout_secs: 10,
            relay: None,
            ticket_lifetime: Duration::from_secs(3600),
            max_notices_per_game: 32,
            migration_turn: Duration::from_secs(3),
            max_queued_transmits: 4096,
            join_pending: Duration::from_secs(10),
            max_pending_joins_per_ip: 4,
        }
    }
}

/// Counters of a [`Lobby`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LobbyStats {
    /// Datagrams handled.
    pub datagrams: u64,
    /// Datagrams that were not a well-formed request (never answered).
    pub malformed: u64,
    /// Requests dropped by the per-IP rate limit.
    pub rate_limited: u64,
    /// Addresses the limiter forgot early because it tracked its most (their next request
    /// starts a full bucket).
    pub tracker_evictions: u64,
    /// Games registered.
    pub registered: u64,
    /// Players handed a token.
    pub joins: u64,
    /// Requests answered with an error.
    pub refused: u64,
    /// Migrations started.
    pub migrations: u64,
    /// New hosts chosen.
    pub new_hosts: u64,
    /// Storage operations that failed.
    pub storage_errors: u64,
    /// Transmits dropped because the queue was full.
    pub transmits_dropped: u64,
    /// Writes that met another node's write first and were done again.
    pub storage_conflicts: u64,
}

struct Bucket {
    tokens: f64,
    last: Duration,
}

/// The lobby; see the [module docs](self).
pub struct Lobby<S: Storage> {
    storage: S,
    config: LobbyConfig,
    buckets: BTreeMap<IpAddr, Bucket>,
    /// Live games registered through this node, by source IP, with their expiry (Unix ms).
    hosts: BTreeMap<IpAddr, Vec<(JoinCode, u64)>>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    stats: LobbyStats,
    buf: Vec<u8>,
    /// The nonce of the request being handled, echoed by its replies.
    nonce: u64,
}

impl<S: Storage> std::fmt::Debug for Lobby<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lobby").field("stats", &self.stats).finish()
    }
}

/// Times a request is handled again after another node's write came between our read and
/// our write (then the lobby answers [`ErrorCode::Storage`]).
const MAX_CONFLICT_RETRIES: usize = 8;

/// A join from the same address within this many milliseconds is a retry, not answered.
const JOIN_RETRY_MS: u64 = 2_000;

/// The source an address counts as for the per-address limits: an IPv4 address, or an IPv6
/// /64 (a host usually has a whole one, so a finer key would let it multiply its limits).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // A failing OS random source leaves zeros; `Key::random` would panic instead. Codes and
    // secrets are still checked against storage, and the failure is vanishingly rare.
    let _ = getrandom::fill(&mut b);
    b
}

impl<S: Storage> Lobby<S> {
    /// A lobby over `storage`.
    pub fn new(storage: S, config: LobbyConfig) -> Self {
        Lobby {
            storage,
            config,
            buckets: BTreeMap::new(),
            hosts: BTreeMap::new(),
            out: VecDeque::new(),
            stats: LobbyStats::default(),
            buf: Vec::with_capacity(crate::wire::MAX_DATAGRAM),
            nonce: 0,
        }
    }

    /// Its counters.
    pub fn stats(&self) -> LobbyStats {
        self.stats
    }

    /// Its settings.
    pub fn config(&self) -> &LobbyConfig {
        &self.config
    }

    /// Its storage (to inspect games in tests and tools).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The next datagram to send, and where.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When [`Lobby::handle_timeout`] has work: the limiter forgets idle addresses.
    pub fn poll_timeout(&self, now: Duration) -> Duration {
        now + Duration::from_secs(10)
    }

    /// Forgets idle limiter entries and expired per-IP game counts.
    pub fn handle_timeout(&mut self, now: Duration) {
        let full_after = f64::from(self.config.request_burst_per_ip)
            / f64::from(self.config.requests_per_sec_per_ip.max(1));
        self.buckets
            .retain(|_, b| now.saturating_sub(b.last).as_secs_f64() < full_after);
        let now_ms = ms(now);
        self.hosts.retain(|_, games| {
            games.retain(|&(_, exp)| exp > now_ms);
            !games.is_empty()
        });
    }

    /// Live games registered through this node.
    pub fn local_game_count(&self, now: Duration) -> usize {
        let now_ms = ms(now);
        self.hosts
            .values()
            .map(|g| g.iter().filter(|&&(_, e)| e > now_ms).count())
            .sum()
    }

    fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        let rate = f64::from(self.config.requests_per_sec_per_ip.max(1));
        let burst = f64::from(self.config.request_burst_per_ip.max(1));
        let ip = source(ip);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.config.max_tracked_ips {
            self.handle_timeout(now);
            // Still full (a flood from many sources): forget one rather than refuse the
            // newcomer, so that spoofed junk cannot lock real players out.
            while self.buckets.len() >= self.config.max_tracked_ips.max(1) {
                self.buckets.pop_first();
                self.stats.tracker_evictions += 1;
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_sub(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            self.stats.rate_limited += 1;
            false
        }
    }

    /// Queues `reply` to the request being handled (its nonce echoed).
    fn send(&mut self, to: SocketAddr, reply: &Reply) {
        self.send_with(to, reply, self.nonce);
    }

    fn send_with(&mut self, to: SocketAddr, reply: &Reply, nonce: u64) {
        if self.out.len() >= self.config.max_queued_transmits {
            self.stats.transmits_dropped += 1;
            return;
        }
        reply.encode_with(nonce, &mut self.buf);
        self.out.push_back((to, self.buf.clone()));
    }

    /// Writes `game` over the revision it was read at.
    fn store(&mut self, game: &GameRecord, now_ms: u64) -> Result<(), Refusal> {
        match self.storage.put(game, now_ms) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.stats.storage_conflicts += 1;
                Err(Refusal::Conflict)
            }
            Err(_) => Err(Refusal::Storage),
        }
    }

    fn refuse(&mut self, to: SocketAddr, for_kind: u8, code: ErrorCode) {
        self.stats.refused += 1;
        self.send(to, &Reply::Error { for_kind, code });
    }

    /// Handles one datagram from `from` at `now` (since the Unix epoch).
    pub fn handle(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams += 1;
        if !self.allow(from.ip(), now) {
            return;
        }
        let (request, nonce) = match Request::decode_with_nonce(datagram) {
            Ok(r) => r,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        self.nonce = nonce;
        let kind = request.kind();
        // Another node may write the same game between our read and our write: then the
        // request is handled again on the fresh record.
        let mut result = Err(Refusal::Conflict);
        for _ in 0..MAX_CONFLICT_RETRIES {
            result = self.dispatch(now, from, nonce, request.clone(), datagram.len());
            if !matches!(result, Err(Refusal::Conflict)) {
                break;
            }
        }
        match result {
            Ok(()) => {}
            Err(Refusal::Code(code)) => self.refuse(from, kind, code),
            Err(Refusal::Storage | Refusal::Conflict) => {
                self.stats.storage_errors += 1;
                self.refuse(from, kind, ErrorCode::Storage);
            }
            Err(Refusal::Silent) => {}
        }
    }

    fn dispatch(
        &mut self,
        now: Duration,
        from: SocketAddr,
        nonce: u64,
        request: Request,
        request_len: usize,
    ) -> Result<(), Refusal> {
        match request {
            register @ Request::Register { .. } => self.register(now, from, register),
            Request::Heartbeat {
                code,
                secret,
                players,
                roster,
            } => self.heartbeat(now, from, nonce, code, secret, players, roster),
            Request::List {
                version,
                name_contains,
                offset,
            } => self.list(now, from, version, &name_contains, offset, request_len),
            Request::Join { code, protocol_id } => self.join(now, from, code, protocol_id),
            Request::Leave {
                code,
                secret,
                migrate,
            } => self.leave(now, code, secret, migrate),
            Request::Migrate {
                code,
                client_id,
                secret,
                last_tick: _,
                token_key,
                local_addr,
            } => self.migrate(now, from, code, client_id, secret, token_key, local_addr),
        }
    }

    fn register(
        &mut self,
        now: Duration,
        from: SocketAddr,
        request: Request,
    ) -> Result<(), Refusal> {
        let Request::Register {
            protocol_id,
            version,
            max_players,
            public,
            host_client,
            local_addr,
            token_key,
            name,
        } = request
        else {
            return Err(Refusal::Silent);
        };
        let now_ms = ms(now);
        let ip = source(from.ip());
        if self.local_game_count(now) >= self.config.max_games {
            return Err(Refusal::Code(ErrorCode::LobbyFull));
        }
        let live = self
            .hosts
            .get_mut(&ip)
            .map(|g| {
                g.retain(|&(_, e)| e > now_ms);
                g.len()
            })
            .unwrap_or(0);
        if live >= self.config.max_games_per_ip {
            return Err(Refusal::Code(ErrorCode::TooManyGames));
        }
        if !self.hosts.contains_key(&ip) && self.hosts.len() >= self.config.max_tracked_ips {
            return Err(Refusal::Code(ErrorCode::LobbyFull));
        }
        let mut name = name;
        name.truncate(MAX_NAME_LEN);
        let expires = now_ms + ms(self.config.host_timeout);
        let mut game = GameRecord {
            code: JoinCode::from_u64(0),
            name,
            protocol_id,
            version,
            player_count: u16::from(host_client != 0),
            max_players: max_players.max(1),
            public,
            host_addr: from,
            host_local_addr: local_addr,
            host_secret: random::<SECRET_LEN>(),
            host_nonce: 0,
            revision: 0,
            token_key,
            host_client,
            confirmed: false,
            epoch: 0,
            last_seen_ms: now_ms,
            expires_at_ms: expires,
            purge_at_ms: expires + ms(self.config.tombstone),
            roster: if host_client != 0 {
                vec![host_client]
            } else {
                Vec::new()
            },
            players: Vec::new(),
            migration: None,
        };
        // A taken code (1 in ~887 million per game) is retried with a fresh one.
        let mut created = false;
        for _ in 0..8 {
            game.code = JoinCode::from_u64(u64::from_le_bytes(random::<8>()));
            if self
                .storage
                .create(&game, now_ms)
                .map_err(|_| Refusal::Storage)?
            {
                created = true;
                break;
            }
        }
        if !created {
            return Err(Refusal::Storage);
        }
        self.hosts.entry(ip).or_default().push((game.code, expires));
        self.stats.registered += 1;
        let reply = Reply::Registered {
            code: game.code,
            secret: game.host_secret,
            observed: from,
            heartbeat_ms: u32::try_from(ms(self.config.heartbeat_interval)).unwrap_or(1000),
        };
        self.send(from, &reply);
        Ok(())
    }

    fn live_game(&mut self, code: JoinCode, now_ms: u64) -> Result<GameRecord, Refusal> {
        match self.storage.get(code, now_ms) {
            Ok(Some(g)) => Ok(g),
            Ok(None) => Err(Refusal::Code(ErrorCode::UnknownCode)),
            Err(_) => Err(Refusal::Storage),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn heartbeat(
        &mut self,
        now: Duration,
        from: SocketAddr,
        nonce: u64,
        code: JoinCode,
        secret: [u8; SECRET_LEN],
        players: u16,
        roster: Vec<u64>,
    ) -> Result<(), Refusal> {
        let now_ms = ms(now);
        let mut game = self.live_game(code, now_ms)?;
        if game.host_secret != secret {
            return Err(Refusal::Code(ErrorCode::BadSecret));
        }
        if game.expires_at_ms <= now_ms && game.migration.is_none() {
            // Too late: the game expired (its players may be migrating).
            return Err(Refusal::Code(ErrorCode::Expired));
        }
        game.confirmed = true;
        game.host_addr = from;
        game.host_nonce = nonce;
        game.player_count = players;
        game.roster = roster;
        game.roster.truncate(MAX_ROSTER);
        game.last_seen_ms = now_ms;
        game.expires_at_ms = now_ms + ms(self.config.host_timeout);
        game.purge_at_ms = game.expires_at_ms + ms(self.config.tombstone);
        self.store(&game, now_ms)?;
        // The game counts against the address it was registered from, wherever its
        // heartbeats come from.
        if let Some(entry) = self
            .hosts
            .values_mut()
            .find_map(|list| list.iter_mut().find(|(c, _)| *c == code))
        {
            entry.1 = game.expires_at_ms;
        }
        let notices = self
            .storage
            .take_notices(code)
            .map_err(|_| Refusal::Storage)?;
        let mut coming = Vec::new();
        for n in notices {
            if let Ok(Reply::PeerComing(p)) = Reply::decode(&n) {
                if coming.len() < 6 {
                    coming.push(p);
                } else {
                    // The rest wait for the next heartbeat.
                    let _ = self
                        .storage
                        .push_notice(code, &n, self.config.max_notices_per_game);
                }
            }
        }
        self.send(
            from,
            &Reply::Alive {
                observed: from,
                coming,
            },
        );
        Ok(())
    }

    fn list(
        &mut self,
        now: Duration,
        from: SocketAddr,
        version: u32,
        name_contains: &str,
        offset: u16,
        request_len: usize,
    ) -> Result<(), Refusal> {
        let now_ms = ms(now);
        let needle = name_contains.to_lowercase();
        let games = self
            .storage
            .list(now_ms, self.config.max_games.saturating_mul(2))
            .map_err(|_| Refusal::Storage)?;
        let matching: Vec<&GameRecord> = games
            .iter()
            .filter(|g| {
                g.public
                    && g.confirmed
                    && g.migration.is_none()
                    && g.expires_at_ms > now_ms
                    && (version == 0 || g.version == version)
                    && (needle.is_empty() || g.name.to_lowercase().contains(&needle))
            })
            .collect();
        // The page never outweighs the request (no amplification).
        let budget = request_len.min(crate::wire::MAX_DATAGRAM);
        let mut size = crate::wire::HEADER_LEN + 5;
        let mut page = Vec::new();
        for g in matching.iter().skip(usize::from(offset)) {
            let entry = 6 + 4 + 2 + 2 + 1 + g.name.len();
            if size + entry > budget || page.len() == usize::from(u8::MAX) {
                break;
            }
            size += entry;
            page.push(GameEntry {
                code: g.code,
                version: g.version,
                players: g.player_count,
                max_players: g.max_players,
                name: g.name.clone(),
            });
        }
        let reply = Reply::Games {
            total: u16::try_from(matching.len()).unwrap_or(u16::MAX),
            offset,
            games: page,
        };
        self.send(from, &reply);
        Ok(())
    }

    fn check_joinable(&self, game: &GameRecord, now_ms: u64) -> Result<(), Refusal> {
        if !game.confirmed {
            return Err(Refusal::Code(ErrorCode::UnknownCode));
        }
        if game.migration.is_some() {
            return Err(Refusal::Code(ErrorCode::HostMigrating));
        }
        if game.expires_at_ms <= now_ms {
            return Err(Refusal::Code(ErrorCode::Expired));
        }
        Ok(())
    }

    fn join(
        &mut self,
        now: Duration,
        from: SocketAddr,
        code: JoinCode,
        protocol_id: u64,
    ) -> Result<(), Refusal> {
        let now_ms = ms(now);
        let mut game = self.live_game(code, now_ms)?;
        self.check_joinable(&game, now_ms)?;
        if game.protocol_id != protocol_id {
            return Err(Refusal::Code(ErrorCode::ProtocolMismatch));
        }
        // A retry of a join we answered a moment ago (the answer may still be on its way):
        // answering again would spend another client id and reset the punching.
        if game
            .players
            .iter()
            .any(|p| p.from == from && p.joined_ms + JOIN_RETRY_MS > now_ms)
        {
            return Err(Refusal::Silent);
        }
        // Players on their way count toward the game's size, and one address may have only a
        // few on their way at once (a join costs the host a peer slot and punching).
        let window = ms(self.config.join_pending);
        let on_the_way: Vec<&PlayerRecord> = game
            .players
            .iter()
            .filter(|p| !game.roster.contains(&p.client_id) && p.joined_ms + window > now_ms)
            .collect();
        if usize::from(game.player_count) + on_the_way.len() >= usize::from(game.max_players) {
            return Err(Refusal::Code(ErrorCode::GameFull));
        }
        let from_here = on_the_way
            .iter()
            .filter(|p| source(p.from.ip()) == source(from.ip()))
            .count();
        if from_here >= self.config.max_pending_joins_per_ip {
            return Err(Refusal::Code(ErrorCode::TooManyJoins));
        }
        let mut client_id = 0;
        for _ in 0..4 {
            client_id = self
                .storage
                .next_client_id(code)
                .map_err(|_| Refusal::Storage)?;
            if client_id != game.host_client && client_id != 0 {
                break;
            }
        }
        let secret = random::<SECRET_LEN>();
        // Players are remembered for migration, at most twice the game's size: those the host
        // reports and those on their way are kept first, then the newest.
        game.players.push(PlayerRecord {
            client_id,
            secret,
            joined_ms: now_ms,
            from,
        });
        let keep = usize::from(game.max_players).saturating_mul(2).max(4);
        while game.players.len() > keep {
            let roster = &game.roster;
            let idle = game
                .players
                .iter()
                .position(|p| !roster.contains(&p.client_id) && p.joined_ms + window <= now_ms)
                .unwrap_or(0);
            game.players.remove(idle);
        }
        self.store(&game, now_ms)?;
        self.stats.joins += 1;
        self.hand_over(now, from, &game, client_id, secret)
    }

    /// Sends `from` its token for `game`'s current host and tells the host it is coming.
    fn hand_over(
        &mut self,
        now: Duration,
        from: SocketAddr,
        game: &GameRecord,
        client_id: u64,
        secret: [u8; SECRET_LEN],
    ) -> Result<(), Refusal> {
        let mut server_addrs = vec![game.host_addr];
        if game.host_local_addr != game.host_addr {
            server_addrs.push(game.host_local_addr);
        }
        let token = ConnectToken::generate(
            &Key::from_bytes(game.token_key),
            &TokenParams {
                protocol_id: game.protocol_id,
                client_id: ClientId(client_id),
                server_addrs,
                expires_unix_secs: (now + self.config.token_lifetime).as_secs(),
                timeout_secs: self.config.session_timeout_secs.max(1),
                user_data: [0; statewire::crypto::TOKEN_USER_DATA_LEN],
            },
        )
        .map_err(|_| Refusal::Storage)?;
        let punch = random::<PUNCH_LEN>();
        let (host_grant, joiner_grant) = match &self.config.relay {
            Some(relay) => {
                let alloc_id = AllocId(u64::from_le_bytes(random::<8>()));
                let expires_unix_secs = (now + self.config.ticket_lifetime).as_secs();
                let seal = |role| {
                    RelayTicket::seal(
                        &relay.key,
                        &TicketParams {
                            alloc_id,
                            role,
                            expires_unix_secs,
                        },
                    )
                    .ok()
                    .map(|t| RelayGrant {
                        addr: relay.addr,
                        alloc_id: alloc_id.0,
                        ticket: t.as_bytes().to_vec(),
                    })
                };
                (seal(Role::Host), seal(Role::Joiner))
            }
            None => (None, None),
        };
        let start_ms = u32::try_from(ms(self.config.punch_delay)).unwrap_or(150);
        let coming = Reply::PeerComing(PeerComing {
            code: game.code,
            client_id,
            joiner: from,
            start_ms,
            punch,
            relay: host_grant,
        });
        // Pushed at once (the host's NAT lets the lobby through: the host heartbeats it) and
        // queued for the next heartbeat, in case this node is not the host's or it is lost.
        // The push carries the host's latest heartbeat nonce, which only the host knows.
        coming.encode(&mut self.buf);
        let notice = self.buf.clone();
        self.storage
            .push_notice(game.code, &notice, self.config.max_notices_per_game)
            .map_err(|_| Refusal::Storage)?;
        self.send_with(game.host_addr, &coming, game.host_nonce);
        let joined = Reply::Joined {
            code: game.code,
            client_id,
            secret,
            host: game.host_addr,
            start_ms,
            punch,
            relay: joiner_grant,
            token: token.encode(),
        };
        self.send(from, &joined);
        Ok(())
    }

    fn leave(
        &mut self,
        now: Duration,
        code: JoinCode,
        secret: [u8; SECRET_LEN],
        migrate: bool,
    ) -> Result<(), Refusal> {
        let now_ms = ms(now);
        let mut game = self.live_game(code, now_ms)?;
        if game.host_secret != secret {
            return Err(Refusal::Code(ErrorCode::BadSecret));
        }
        game.expires_at_ms = now_ms;
        game.purge_at_ms = now_ms + ms(self.config.tombstone);
        // The host is gone: its secret no longer keeps the game alive.
        game.host_secret = random::<SECRET_LEN>();
        if migrate {
            self.start_migration(&mut game, now_ms);
        } else {
            // The game is over: no player may start a migration later.
            game.roster.clear();
        }
        self.store(&game, now_ms)?;
        for list in self.hosts.values_mut() {
            list.retain(|(c, _)| *c != code);
        }
        Ok(())
    }

    fn start_migration(&mut self, game: &mut GameRecord, now_ms: u64) {
        let mut candidates: Vec<u64> = game
            .roster
            .iter()
            .copied()
            .filter(|&c| c != game.host_client && c != 0)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        if candidates.is_empty() {
            return;
        }
        self.stats.migrations += 1;
        let turns = candidates.len() as u64;
        game.migration = Some(MigrationRecord {
            started_ms: now_ms,
            candidates,
        });
        // The game lives while candidates have their turns.
        let until = now_ms + turns * ms(self.config.migration_turn);
        game.purge_at_ms = game.purge_at_ms.max(until + ms(self.config.tombstone));
    }

    #[allow(clippy::too_many_arguments)]
    fn migrate(
        &mut self,
        now: Duration,
        from: SocketAddr,
        code: JoinCode,
        client_id: u64,
        secret: [u8; SECRET_LEN],
        token_key: [u8; 32],
        local_addr: SocketAddr,
    ) -> Result<(), Refusal> {
        let now_ms = ms(now);
        let mut game = self.live_game(code, now_ms)?;
        let known = game
            .players
            .iter()
            .any(|p| p.client_id == client_id && p.secret == secret);
        if !known {
            return Err(Refusal::Code(ErrorCode::NotInGame));
        }
        if game.migration.is_none()
            && game.host_client == client_id
            && game.host_addr == from
            && game.expires_at_ms > now_ms
        {
            // The new host asks again (our answer was lost or crossed its retry): same answer.
            let roster = game
                .roster
                .iter()
                .copied()
                .filter(|&c| c != client_id)
                .collect();
            self.send(
                from,
                &Reply::NewHost {
                    code,
                    secret: game.host_secret,
                    observed: from,
                    epoch: game.epoch,
                    roster,
                },
            );
            return Ok(());
        }
        if game.migration.is_none() {
            if game.expires_at_ms > now_ms && game.confirmed {
                // The host is alive (the player lost it, not the game): reconnect to it.
                return self.hand_over(now, from, &game, client_id, secret);
            }
            self.start_migration(&mut game, now_ms);
            if game.migration.is_none() {
                return Err(Refusal::Code(ErrorCode::Expired));
            }
            self.store(&game, now_ms)?;
        }
        let Some(migration) = game.migration.clone() else {
            return Err(Refusal::Code(ErrorCode::Expired));
        };
        // Deterministic rule: candidates in client-id order, each with one turn.
        let turn = ms(self.config.migration_turn).max(1);
        let index = (now_ms.saturating_sub(migration.started_ms) / turn) as usize;
        if index >= migration.candidates.len() {
            return Err(Refusal::Code(ErrorCode::Expired));
        }
        // A player the old host had not reported yet (it joined just before the host left)
        // is no candidate, but it waits for the new host like the others.
        let position = migration.candidates.iter().position(|&c| c == client_id);
        if position != Some(index) {
            // Not (or no longer) this player's turn: wait for the new host.
            let retry_ms = u32::try_from(turn / 6).unwrap_or(500).max(50);
            self.send(from, &Reply::Wait { retry_ms });
            return Ok(());
        }
        game.migration = None;
        game.epoch += 1;
        game.host_addr = from;
        game.host_local_addr = local_addr;
        game.token_key = token_key;
        game.host_secret = random::<SECRET_LEN>();
        game.host_client = client_id;
        game.confirmed = true;
        game.last_seen_ms = now_ms;
        game.expires_at_ms = now_ms + ms(self.config.host_timeout);
        game.purge_at_ms = game.expires_at_ms + ms(self.config.tombstone);
        let roster: Vec<u64> = migration
            .candidates
            .iter()
            .copied()
            .filter(|&c| c != client_id)
            .collect();
        game.roster = std::iter::once(client_id)
            .chain(roster.iter().copied())
            .collect();
        game.player_count = 1;
        self.store(&game, now_ms)?;
        let ip = source(from.ip());
        if self.hosts.contains_key(&ip) || self.hosts.len() < self.config.max_tracked_ips {
            self.hosts
                .entry(ip)
                .or_default()
                .push((code, game.expires_at_ms));
        }
        self.stats.new_hosts += 1;
        self.send(
            from,
            &Reply::NewHost {
                code,
                secret: game.host_secret,
                observed: from,
                epoch: game.epoch,
                roster,
            },
        );
        Ok(())
    }
}

enum Refusal {
    Code(ErrorCode),
    Storage,
    /// Another node wrote the game between our read and our write.
    Conflict,
    /// Nothing to answer.
    Silent,
}
