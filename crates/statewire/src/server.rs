//! The server endpoint: admits clients through a challenge handshake (with connect tokens, or
//! in development mode without), then runs one AEAD-sealed [`Connection`] per client over any
//! [`Transport`].
//!
//! A fault of one client (a send error to its address, a message flood, no acknowledgements,
//! a memory budget) disconnects that client with a [`Fault`] and is counted in
//! [`ServerStats::fault_disconnects`]; the server and the other clients go on. Only the
//! transport itself closing is an error of [`Server::update`].

use std::collections::{BTreeMap, VecDeque};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::Duration;

use hashbrown::HashMap;
use siphasher::sip::SipHasher24;
use statewire_core::ClientId;
use statewire_transport::{Transport, TransportError};

use crate::client::{ClientEvent, ClientSendError};
use crate::config::{DisconnectReason, Fault, SessionConfig};
use crate::connection::{ChannelId, ConfigError, Connection, ConnectionStats, SendError};
use crate::crypto::seal::{Cipher, Context, PRE_SESSION_SEQ, Refused, SessionCrypto};
use crate::crypto::token::OpenedToken;
use crate::crypto::{Key, SecretStream, TOKEN_USER_DATA_LEN};
use crate::limiter::{Bucket, SourceLimiter};
use crate::packet::{
    Cookie, DisconnectCode, Packet, RejectReason, TokenFields, poll_data, recv_growing,
    rejected_body, sealed,
};

/// Something that happened on the server; drain with [`Server::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client completed the handshake.
    Connected(ClientId),
    /// A client is gone.
    Disconnected(ClientId, DisconnectReason),
    /// A message from a client.
    Message(ClientId, ChannelId, Vec<u8>),
}

/// Errors from sending to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerSendError {
    /// No connected client has this id.
    #[error("no connected client {0}")]
    UnknownClient(ClientId),
    /// The connection refused the message.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Counters a server keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Datagrams read.
    pub datagrams_received: u64,
    /// Bytes read from peers that had not completed the handshake.
    pub unvalidated_bytes_received: u64,
    /// Bytes sent to peers that had not completed the handshake.
    pub unvalidated_bytes_sent: u64,
    /// Datagrams that failed to decode as session packets, or came in the wrong direction.
    pub malformed: u64,
    /// Sealed packets from addresses without a session.
    pub unknown_peer: u64,
    /// Sealed packets from a client's address that did not authenticate (forged, corrupted,
    /// reflected).
    pub forged: u64,
    /// Sealed packets refused by the replay window.
    pub replayed: u64,
    /// Connection payloads the connection layer rejected.
    pub bad_payloads: u64,
    /// Connections refused: protocol, version or channel configuration mismatch.
    pub rejected_version: u64,
    /// Connections refused: bad or expired cookie.
    pub rejected_cookie: u64,
    /// Connections refused: server full.
    pub rejected_full: u64,
    /// Token requests whose token did not open under the key (forged, tampered, another
    /// key); never answered.
    pub token_forged: u64,
    /// Token requests refused: the token expired.
    pub token_expired: u64,
    /// Token requests refused: the token is for other server addresses.
    pub token_wrong_server: u64,
    /// Token requests refused: the token or its client id is in use from another address.
    pub token_in_use: u64,
    /// Development-mode requests refused because the server requires tokens.
    pub token_required: u64,
    /// Handshake packets dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// Handshakes completed.
    pub accepted: u64,
    /// Clients disconnected for a [`Fault`] of their own.
    pub fault_disconnects: u64,
    /// Transport receive errors other than the transport closing (counted, then skipped).
    pub recv_errors: u64,
}

/// Counters of one client's session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The connection layer's counters.
    pub connection: ConnectionStats,
    /// Sealed packets from the client's address refused by the replay window.
    pub replayed: u64,
    /// Sealed packets from the client's address that did not authenticate.
    pub forged: u64,
}

/// Token mode: what a server needs to check connect tokens.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The backend's private key, shared by the backend and its servers.
    pub key: Key,
    /// The addresses clients use to reach this server; a token must name one of them.
    pub public_addrs: Vec<SocketAddr>,
    /// Seconds since the Unix epoch at the server's `now` = 0, so that the sans-IO server can
    /// compare token expiries with its own clock (`unix_time_at_zero + now`).
    pub unix_time_at_zero: Duration,
}

/// The host's own player on a listen server: no network, same events.
struct LocalPeer<U> {
    id: ClientId,
    inbox: VecDeque<ClientEvent>,
    user: Option<U>,
}

/// What identifies one connection attempt of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Salt(u64),
    Token([u8; 16]),
}

struct Peer<U> {
    addr: SocketAddr,
    attempt: Attempt,
    crypto: SessionCrypto,
    /// Development mode: the encoded Accepted, resent while the client has not spoken.
    dev_accepted: Option<Box<[u8]>>,
    conn: Connection,
    messages: Bucket,
    replayed: u64,
    forged: u64,
    token_user_data: Option<[u8; TOKEN_USER_DATA_LEN]>,
    user: Option<U>,
}

/// A game server over transport `T`, with per-client user data of type `U`.
///
/// Drive it with [`Server::update`] each frame (reads everything pending, handles timeouts,
/// transmits), then drain [`Server::poll_event`].
pub struct Server<T: Transport, U = ()> {
    transport: T,
    config: SessionConfig,
    ctx: Context,
    tokens: Option<TokenConfig>,
    secrets: SecretStream,
    cookie_key: (u64, u64),
    /// Ordered by id so that sends, and so a seeded simulation, are reproducible.
    peers: BTreeMap<ClientId, Peer<U>>,
    by_addr: HashMap<SocketAddr, ClientId>,
    /// Token mode: tokens in use, by fingerprint: the address and the token's expiry.
    used_tokens: HashMap<[u8; 16], (SocketAddr, u64)>,
    limiter: SourceLimiter,
    local: Option<LocalPeer<U>>,
    /// Events left for a local player that was dropped.
    orphan_inbox: VecDeque<ClientEvent>,
    /// A connection never used on the wire: answers channel limits for the local player.
    limits: Connection,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    now: Duration,
    buf: Vec<u8>,
    out: Vec<u8>,
    payload: Vec<u8>,
    plain: Vec<u8>,
}

impl<T: Transport, U> std::fmt::Debug for Server<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.transport.local_addr())
            .field("clients", &self.peers.len())
            .field("tokens", &self.tokens.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Server<T> {
    /// A development-mode server on `transport`: no connect tokens; any client that proves it
    /// receives at its address may join, and gets session keys in clear (safe against
    /// off-path attackers, not against one who reads the path). `secret` seeds cookies,
    /// client ids and session keys: [`Key::random`] in production, a fixed key in
    /// reproducible tests. Fails if the connection configuration is invalid. Clients carry no
    /// user data; see [`Server::with_user_data`] for that.
    pub fn new(transport: T, config: SessionConfig, secret: Key) -> Result<Self, ConfigError> {
        Self::build(transport, config, secret, None)
    }

    /// A server that admits only clients with a valid connect token from the backend that
    /// holds `tokens.key`. `secret` as for [`Server::new`].
    pub fn with_tokens(
        transport: T,
        config: SessionConfig,
        secret: Key,
        tokens: TokenConfig,
    ) -> Result<Self, ConfigError> {
        Self::build(transport, config, secret, Some(tokens))
    }
}

impl<T: Transport, U> Server<T, U> {
    /// A server whose clients carry user data of type `U` ([`Server::set_user_data`]): in
    /// development mode with `tokens` `None` (as [`Server::new`]), else in token mode (as
    /// [`Server::with_tokens`]).
    pub fn with_user_data(
        transport: T,
        config: SessionConfig,
        secret: Key,
        tokens: Option<TokenConfig>,
    ) -> Result<Self, ConfigError> {
        Self::build(transport, config, secret, tokens)
    }

    fn build(
        transport: T,
        config: SessionConfig,
        secret: Key,
        tokens: Option<TokenConfig>,
    ) -> Result<Self, ConfigError> {
        let cap = transport.max_payload().max(1500);
        let limits = Connection::try_new(config.connection.clone(), Duration::ZERO)?;
        let mut secrets = SecretStream::new(&secret);
        let cookie_key = (secrets.u64(), secrets.u64());
        Ok(Server {
            transport,
            ctx: Context {
                protocol: config.protocol_id,
                version: config.version,
            },
            limiter: SourceLimiter::new(
                config.handshake_rate_per_ip,
                config.handshake_burst_per_ip,
                config.max_tracked_sources,
            ),
            config,
            tokens,
            secrets,
            cookie_key,
            peers: BTreeMap::new(),
            by_addr: HashMap::new(),
            used_tokens: HashMap::new(),
            local: None,
            orphan_inbox: VecDeque::new(),
            limits,
            events: VecDeque::new(),
            stats: ServerStats::default(),
            now: Duration::ZERO,
            buf: vec![0; cap],
            out: Vec::new(),
            payload: Vec::new(),
            plain: Vec::new(),
        })
    }

    /// Counters of `client`'s session (`None` for the local player or an unknown id).
    pub fn peer_stats(&self, client: ClientId) -> Option<PeerStats> {
        self.peers.get(&client).map(|p| PeerStats {
            connection: p.conn.stats(),
            replayed: p.replayed,
            forged: p.forged,
        })
    }

    /// Whether the server requires connect tokens.
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Token mode: the user data the backend put in `client`'s token.
    pub fn token_user_data(&self, client: ClientId) -> Option<&[u8; TOKEN_USER_DATA_LEN]> {
        self.peers.get(&client)?.token_user_data.as_ref()
    }

    /// A fresh client id: random-looking (from the secret stream), never 0 and never in use.
    fn fresh_id(&mut self) -> ClientId {
        loop {
            let id = ClientId(self.secrets.u64());
            if id.0 != 0 && !self.is_connected(id) {
                return id;
            }
        }
    }

    /// The transport's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (e.g. to advance a simulator's clock).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connected clients: the local player of a listen server first, then by id.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.local
            .iter()
            .map(|l| l.id)
            .chain(self.peers.keys().copied())
    }

    /// Number of connected clients (the local player included).
    pub fn client_count(&self) -> usize {
        self.peers.len() + usize::from(self.local.is_some())
    }

    /// Whether `client` is connected.
    pub fn is_connected(&self, client: ClientId) -> bool {
        self.peers.contains_key(&client) || self.is_local(client)
    }

    /// Whether `client` is the local player of a listen server.
    pub fn is_local(&self, client: ClientId) -> bool {
        self.local.as_ref().is_some_and(|l| l.id == client)
    }

    /// The address `client` talks from.
    pub fn client_addr(&self, client: ClientId) -> Option<SocketAddr> {
        self.peers.get(&client).map(|p| p.addr)
    }

    /// Attaches the game's data (name, team...) to `client`; returns the previous value.
    /// `None` if the client is not connected.
    pub fn set_user_data(&mut self, client: ClientId, data: U) -> Option<Option<U>> {
        self.user_slot(client).map(|slot| slot.replace(data))
    }

    fn user_slot(&mut self, client: ClientId) -> Option<&mut Option<U>> {
        match &mut self.local {
            Some(l) if l.id == client => Some(&mut l.user),
            _ => self.peers.get_mut(&client).map(|p| &mut p.user),
        }
    }

    /// The game's data for `client`.
    pub fn user_data(&self, client: ClientId) -> Option<&U> {
        match &self.local {
            Some(l) if l.id == client => l.user.as_ref(),
            _ => self.peers.get(&client)?.user.as_ref(),
        }
    }

    /// The game's data for `client`, mutably.
    pub fn user_data_mut(&mut self, client: ClientId) -> Option<&mut U> {
        self.user_slot(client)?.as_mut()
    }

    /// Connected clients with their data.
    pub fn clients_with_data(&self) -> impl Iterator<Item = (ClientId, Option<&U>)> + '_ {
        let local = self.local.iter().map(|l| (l.id, l.user.as_ref()));
        local.chain(self.peers.iter().map(|(id, p)| (*id, p.user.as_ref())))
    }

    /// Round-trip time estimate to `client` (zero for the local player).
    pub fn rtt(&self, client: ClientId) -> Option<Duration> {
        if self.is_local(client) {
            return Some(Duration::ZERO);
        }
        self.peers.get(&client).map(|p| p.conn.rtt())
    }

    /// Adds the listen server's own player: a client with an id and user data like any
    /// other, whose messages skip the network. See [`crate::Host`].
    pub fn add_local_client(&mut self) -> ClientId {
        if let Some(l) = &self.local {
            return l.id;
        }
        let id = self.fresh_id();
        self.install_local(id);
        id
    }

    fn install_local(&mut self, id: ClientId) {
        let mut inbox = VecDeque::new();
        inbox.push_back(ClientEvent::Connected(id));
        self.local = Some(LocalPeer {
            id,
            inbox,
            user: None,
        });
        self.events.push_back(ServerEvent::Connected(id));
    }

    /// Adds the listen server's own player with the id `id`, e.g. a player who becomes the
    /// host after a migration and keeps its id (and so its entities). Returns `None`, adding
    /// nothing, if `id` is 0, is a connected remote client, or another local player exists.
    pub fn add_local_client_as(&mut self, id: ClientId) -> Option<ClientId> {
        if self.local.is_some() || id.0 == 0 || self.is_connected(id) {
            return None;
        }
        self.install_local(id);
        Some(id)
    }

    /// The local player sends `message` to the server, with the channel limits a remote
    /// client has.
    pub fn local_send(
        &mut self,
        channel: ChannelId,
        message: &[u8],
    ) -> Result<(), ClientSendError> {
        let Some(l) = &self.local else {
            return Err(ClientSendError::NotConnected);
        };
        self.check_local(channel, message)?;
        self.events
            .push_back(ServerEvent::Message(l.id, channel, message.to_vec()));
        Ok(())
    }

    /// Next event for the local player.
    pub fn local_poll_event(&mut self) -> Option<ClientEvent> {
        match &mut self.local {
            Some(l) => l.inbox.pop_front(),
            None => self.orphan_inbox.pop_front(),
        }
    }

    fn check_local(&self, channel: ChannelId, message: &[u8]) -> Result<(), SendError> {
        let max = self
            .limits
            .max_message_size(channel)
            .ok_or(SendError::UnknownChannel { channel })?;
        if message.len() > max {
            return Err(SendError::TooLarge {
                len: message.len(),
                max,
            });
        }
        Ok(())
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Queues `message` on `channel` for `client`; it leaves on the next update or flush. A
    /// reliable message refused because the client has too much unacknowledged
    /// ([`SendError::OverBudget`], or a full reliable queue) also disconnects that client with
    /// [`Fault::OverBudget`].
    pub fn send(
        &mut self,
        client: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> Result<(), ServerSendError> {
        if let Some(l) = &mut self.local {
            if l.id == client {
                self.check_local(channel, message)?;
                if let Some(l) = &mut self.local {
                    l.inbox
                        .push_back(ClientEvent::Message(channel, message.to_vec()));
                }
                return Ok(());
            }
        }
        let peer = self
            .peers
            .get_mut(&client)
            .ok_or(ServerSendError::UnknownClient(client))?;
        if let Err(e) = peer.conn.send(channel, message) {
            self.on_send_refused(client, &e);
            return Err(e.into());
        }
        Ok(())
    }

    /// A reliable message refused for lack of room means the client is not acknowledging what
    /// it was sent: it is over its memory budget, and only it pays.
    fn on_send_refused(&mut self, client: ClientId, e: &SendError) {
        let over = match e {
            SendError::OverBudget { .. } => true,
            SendError::QueueFull { channel, .. } => self
                .config
                .connection
                .channels
                .get(usize::from(channel.0))
                .is_some_and(|c| c.kind == crate::connection::ChannelKind::ReliableOrdered),
            _ => false,
        };
        if over {
            self.drop_peer(
                client,
                DisconnectReason::Fault(Fault::OverBudget),
                Some(DisconnectCode::Kicked),
            );
        }
    }

    /// Queues `message` for every connected client. Returns the clients that refused it
    /// (e.g. a full queue), with why.
    pub fn send_to_all(
        &mut self,
        channel: ChannelId,
        message: &[u8],
    ) -> Vec<(ClientId, SendError)> {
        self.send_filtered(channel, message, |_| true)
    }

    /// Queues `message` for every connected client except `except`.
    pub fn send_to_all_except(
        &mut self,
        except: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> Vec<(ClientId, SendError)> {
        self.send_filtered(channel, message, |c| c != except)
    }

    fn send_filtered(
        &mut self,
        channel: ChannelId,
        message: &[u8],
        keep: impl Fn(ClientId) -> bool,
    ) -> Vec<(ClientId, SendError)> {
        let mut failed = Vec::new();
        if let Some(id) = self.local.as_ref().map(|l| l.id).filter(|&id| keep(id)) {
            match self.check_local(channel, message) {
                Ok(()) => {
                    if let Some(l) = &mut self.local {
                        l.inbox
                            .push_back(ClientEvent::Message(channel, message.to_vec()));
                    }
                }
                Err(e) => failed.push((id, e)),
            }
        }
        for (&id, peer) in &mut self.peers {
            if keep(id) {
                if let Err(e) = peer.conn.send(channel, message) {
                    failed.push((id, e));
                }
            }
        }
        for (id, e) in &failed {
            if !self.is_local(*id) {
                self.on_send_refused(*id, e);
            }
        }
        failed
    }

    /// Disconnects `client` with [`DisconnectReason::Kicked`], telling it why.
    pub fn kick(&mut self, client: ClientId) -> bool {
        self.drop_peer(
            client,
            DisconnectReason::Kicked,
            Some(DisconnectCode::Kicked),
        )
    }

    /// Disconnects everyone with [`DisconnectReason::ServerShutdown`].
    pub fn shutdown(&mut self) {
        let ids: Vec<_> = self.clients().collect();
        for id in ids {
            self.drop_peer(
                id,
                DisconnectReason::ServerShutdown,
                Some(DisconnectCode::Shutdown),
            );
        }
    }

    /// Disconnects `client` for a fault of its own (for faults the game detects, e.g.
    /// [`Fault::FellBehind`]); it is told it was kicked, and the server counts it in
    /// [`ServerStats::fault_disconnects`]. Returns whether it was connected.
    pub fn disconnect_for_fault(&mut self, client: ClientId, fault: Fault) -> bool {
        self.drop_peer(
            client,
            DisconnectReason::Fault(fault),
            Some(DisconnectCode::Kicked),
        )
    }

    fn drop_peer(
        &mut self,
        client: ClientId,
        reason: DisconnectReason,
        tell: Option<DisconnectCode>,
    ) -> bool {
        if matches!(reason, DisconnectReason::Fault(_)) && self.is_connected(client) {
            self.stats.fault_disconnects += 1;
        }
        if self.is_local(client) {
            if let Some(mut l) = self.local.take() {
                l.inbox.push_back(ClientEvent::Disconnected(reason));
                // Keep the inbox readable: the local player learns why it was dropped.
                self.orphan_inbox = l.inbox;
            }
            self.events
                .push_back(ServerEvent::Disconnected(client, reason));
            return true;
        }
        let Some(mut peer) = self.peers.remove(&client) else {
            return false;
        };
        self.by_addr.remove(&peer.addr);
        if let Attempt::Token(id) = peer.attempt {
            self.used_tokens.remove(&id);
        }
        let addr = peer.addr;
        if let Some(code) = tell {
            // Sent a few times: it is unreliable and the peer would otherwise wait for a
            // timeout. Send errors are irrelevant now.
            for _ in 0..3 {
                self.out.clear();
                peer.crypto
                    .seal(sealed::DISCONNECT, &[code.code()], &mut self.out);
                let _ = self.transport.send(addr, &self.out);
            }
        }
        // A replaced session's address now belongs to the new one: keep its connection.
        if reason != DisconnectReason::Replaced {
            self.transport.close_peer(addr);
        }
        self.events
            .push_back(ServerEvent::Disconnected(client, reason));
        true
    }

    /// Reads and handles everything pending (at most
    /// [`SessionConfig::max_datagrams_per_update`]), drops timed-out and faulty clients, then
    /// transmits. Fails only if the transport itself closed.
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.receive(now)?;
        self.expire();
        self.flush(now)
    }

    /// Reads and handles pending datagrams without transmitting (at most
    /// [`SessionConfig::max_datagrams_per_update`]): call it between frames to drain the
    /// socket while the game sleeps. Returns how many datagrams it read. Fails only if the
    /// transport closed.
    pub fn receive(&mut self, now: Duration) -> Result<usize, TransportError> {
        self.now = self.now.max(now);
        let mut read = 0;
        for _ in 0..self.config.max_datagrams_per_update {
            let got = match recv_growing(&mut self.transport, &mut self.buf) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(TransportError::Closed) => return Err(TransportError::Closed),
                // One bad datagram or a transient socket error must not stop the server.
                Err(_) => {
                    self.stats.recv_errors += 1;
                    break;
                }
            };
            read += 1;
            self.stats.datagrams_received += 1;
            let len = got.len.min(self.buf.len());
            let data = std::mem::take(&mut self.buf);
            self.handle_datagram(got.from, &data[..len]);
            self.buf = data;
        }
        while let Some(addr) = self.transport.poll_closed_peer() {
            if let Some(id) = self.by_addr.get(&addr).copied() {
                self.drop_peer(id, DisconnectReason::ConnectionClosed, None);
            }
        }
        Ok(read)
    }

    fn expire(&mut self) {
        let now = self.now;
        let mut gone: Vec<(ClientId, DisconnectReason)> = Vec::new();
        for (id, p) in &self.peers {
            if p.conn.is_timed_out(now) {
                gone.push((*id, DisconnectReason::Timeout));
            } else if p.conn.is_unresponsive(now) {
                gone.push((*id, DisconnectReason::Fault(Fault::Unresponsive)));
            }
        }
        for (id, reason) in gone {
            let tell =
                matches!(reason, DisconnectReason::Fault(_)).then_some(DisconnectCode::Kicked);
            self.drop_peer(id, reason, tell);
        }
        if let Some(t) = &self.tokens {
            let unix = (t.unix_time_at_zero + now).as_secs();
            self.used_tokens.retain(|_, (_, expires)| *expires > unix);
        }
    }

    /// Transmits what the connections have due, without reading. A client whose address the
    /// transport refuses is disconnected with [`Fault::SendFailed`]; only the transport
    /// closing is an error.
    pub fn flush(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        let mut failed: Vec<ClientId> = Vec::new();
        let mut closed = false;
        for (&id, peer) in self.peers.iter_mut() {
            for _ in 0..self.config.max_packets_per_peer_per_update {
                if !poll_data(
                    &mut peer.conn,
                    &mut peer.crypto,
                    self.now,
                    &mut self.payload,
                    &mut self.out,
                ) {
                    break;
                }
                match self.transport.send(peer.addr, &self.out) {
                    Ok(()) => {}
                    // The connection layer resends what matters; a lost datagram is a loss.
                    Err(TransportError::PayloadTooLarge { .. }) => {}
                    Err(TransportError::Closed) => {
                        closed = true;
                        break;
                    }
                    Err(_) => {
                        failed.push(id);
                        break;
                    }
                }
            }
            if closed {
                break;
            }
        }
        for id in failed {
            self.drop_peer(id, DisconnectReason::Fault(Fault::SendFailed), None);
        }
        if closed {
            return Err(TransportError::Closed);
        }
        Ok(())
    }

    fn mac(&self, addr: SocketAddr, attempt: u64, expires_ms: u64) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.cookie_key.0, self.cookie_key.1);
        match addr {
            SocketAddr::V4(a) => {
                h.write(&a.ip().octets());
                h.write_u16(a.port());
            }
            SocketAddr::V6(a) => {
                h.write(&a.ip().octets());
                h.write_u16(a.port());
            }
        }
        h.write_u64(attempt);
        h.write_u64(expires_ms);
        h.finish()
    }

    fn cookie(&self, addr: SocketAddr, attempt: u64) -> Cookie {
        let expires_ms = (self.now.as_millis() as u64)
            .saturating_add(self.config.challenge_lifetime.as_millis() as u64);
        Cookie {
            expires_ms,
            mac: self.mac(addr, attempt, expires_ms),
        }
    }

    fn cookie_ok(&self, addr: SocketAddr, attempt: u64, cookie: Cookie) -> bool {
        cookie.expires_ms >= self.now.as_millis() as u64
            && self.mac(addr, attempt, cookie.expires_ms) == cookie.mac
    }

    /// Sends a reply to an address that has not proved it receives there. Every such reply is
    /// smaller than the request that caused it (the request formats are padded for this).
    fn reply_unvalidated(&mut self, to: SocketAddr) {
        self.stats.unvalidated_bytes_sent += self.out.len() as u64;
        let _ = self.transport.send(to, &self.out);
    }

    fn reply_clear(&mut self, to: SocketAddr, packet: Packet<'_>) {
        self.out.clear();
        packet.encode(&mut self.out);
        self.reply_unvalidated(to);
    }

    /// A pre-session sealed reply (token mode), under a random sequence number with the top
    /// bit set so it never meets a session's own numbers.
    fn reply_sealed(&mut self, to: SocketAddr, cipher: &Cipher, kind: u8, body: &[u8]) {
        self.out.clear();
        let seq = PRE_SESSION_SEQ | (self.secrets.u64() >> 1);
        cipher.seal(self.ctx, kind, seq, body, &mut self.out);
        self.reply_unvalidated(to);
    }

    fn handle_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let known = self.by_addr.get(&from).copied();
        let packet = match Packet::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                if known.is_none() {
                    self.stats.unvalidated_bytes_received += data.len() as u64;
                }
                return;
            }
        };
        if let Packet::Sealed { kind, bytes } = packet {
            match known {
                Some(id) => self.handle_sealed(id, kind, bytes),
                None => {
                    self.stats.unknown_peer += 1;
                    self.stats.unvalidated_bytes_received += data.len() as u64;
                }
            }
            return;
        }
        // Every other packet is a handshake packet: its replies count as unvalidated even to
        // a known address, and it is rate-limited per source before any MAC or decryption.
        self.stats.unvalidated_bytes_received += data.len() as u64;
        if !matches!(
            packet,
            Packet::ConnectRequest { .. }
                | Packet::ChallengeResponse { .. }
                | Packet::TokenRequest(_)
                | Packet::TokenResponse { .. }
        ) {
            // Server-to-client packets sent to a server.
            self.stats.malformed += 1;
            return;
        }
        if !self.limiter.allow(from.ip(), self.now) {
            self.stats.rate_limited += 1;
            return;
        }
        match packet {
            Packet::ConnectRequest {
                protocol,
                version,
                salt,
                channels,
            } => self.on_connect_request(from, protocol, version, salt, channels),
            Packet::ChallengeResponse { salt, cookie } => {
                self.on_challenge_response(from, known, salt, cookie)
            }
            Packet::TokenRequest(fields) => self.on_token_request(from, &fields),
            Packet::TokenResponse { fields, answer } => {
                self.on_token_response(from, known, &fields, answer)
            }
            _ => {}
        }
    }

    fn mismatch(&self, protocol: u64, version: u16, channels: u32) -> Option<RejectReason> {
        if protocol != self.config.protocol_id {
            Some(RejectReason::ProtocolMismatch)
        } else if version != self.config.version {
            Some(RejectReason::VersionMismatch)
        } else if channels != self.config.connection.fingerprint() {
            Some(RejectReason::ChannelMismatch)
        } else {
            None
        }
    }

    fn on_connect_request(
        &mut self,
        from: SocketAddr,
        protocol: u64,
        version: u16,
        salt: u64,
        channels: u32,
    ) {
        // A request from an address with a live session is answered like any other: a client
        // that restarted on the same port completes a new handshake, which then replaces its
        // old session (see ChallengeResponse). Challenges are stateless.
        let reason = if self.tokens.is_some() {
            self.stats.token_required += 1;
            Some(RejectReason::TokenRequired)
        } else {
            let r = self.mismatch(protocol, version, channels);
            if r.is_some() {
                self.stats.rejected_version += 1;
            }
            r
        };
        let server_version = self.config.version;
        if let Some(reason) = reason {
            self.reply_clear(
                from,
                Packet::Rejected {
                    salt,
                    reason,
                    server_version,
                },
            );
            return;
        }
        let cookie = self.cookie(from, salt);
        self.reply_clear(from, Packet::Challenge { salt, cookie });
    }

    fn on_challenge_response(
        &mut self,
        from: SocketAddr,
        known: Option<ClientId>,
        salt: u64,
        cookie: Cookie,
    ) {
        if self.tokens.is_some() {
            self.stats.token_required += 1;
            return;
        }
        if let Some(p) = known.and_then(|id| self.peers.get(&id)) {
            if p.attempt == Attempt::Salt(salt) {
                // Our Accepted was lost: say it again.
                if let Some(bytes) = p.dev_accepted.clone() {
                    self.out.clear();
                    self.out.extend_from_slice(&bytes);
                    self.reply_unvalidated(from);
                }
                return;
            }
        }
        let server_version = self.config.version;
        if !self.cookie_ok(from, salt, cookie) {
            self.stats.rejected_cookie += 1;
            self.reply_clear(
                from,
                Packet::Rejected {
                    salt,
                    reason: RejectReason::BadChallenge,
                    server_version,
                },
            );
            return;
        }
        if let Some(old) = known {
            // A new attempt (new salt) that proved it receives at this address: the client
            // restarted; its old session is over.
            self.drop_peer(old, DisconnectReason::Replaced, None);
        }
        if self.peers.len() >= self.config.max_clients {
            self.stats.rejected_full += 1;
            self.reply_clear(
                from,
                Packet::Rejected {
                    salt,
                    reason: RejectReason::ServerFull,
                    server_version,
                },
            );
            return;
        }
        let id = self.fresh_id();
        let c2s = self.secrets.key();
        let s2c = self.secrets.key();
        self.out.clear();
        Packet::Accepted {
            salt,
            client_id: id.0,
            c2s: c2s.to_bytes(),
            s2c: s2c.to_bytes(),
        }
        .encode(&mut self.out);
        let accepted: Box<[u8]> = self.out.clone().into_boxed_slice();
        let crypto = SessionCrypto::new(self.ctx, &s2c, &c2s);
        self.admit(
            from,
            id,
            Attempt::Salt(salt),
            crypto,
            self.config.connection.idle_timeout,
            None,
        );
        if let Some(p) = self.peers.get_mut(&id) {
            p.dev_accepted = Some(accepted);
        }
        self.reply_unvalidated(from);
    }

    fn admit(
        &mut self,
        from: SocketAddr,
        id: ClientId,
        attempt: Attempt,
        crypto: SessionCrypto,
        idle_timeout: Duration,
        token_user_data: Option<[u8; TOKEN_USER_DATA_LEN]>,
    ) {
        let mut cfg = self.config.connection.clone();
        cfg.idle_timeout = idle_timeout;
        let conn = match Connection::try_new(cfg, self.now) {
            Ok(c) => c,
            // The configuration was validated at construction; a changed timeout keeps it
            // valid (it is never zero).
            Err(_) => Connection::new(self.config.connection.clone(), self.now),
        };
        let burst = self.config.max_messages_per_sec.saturating_mul(2);
        self.peers.insert(
            id,
            Peer {
                addr: from,
                attempt,
                crypto,
                dev_accepted: None,
                conn,
                messages: Bucket::full(burst, self.now),
                replayed: 0,
                forged: 0,
                token_user_data,
                user: None,
            },
        );
        self.by_addr.insert(from, id);
        self.stats.accepted += 1;
        self.events.push_back(ServerEvent::Connected(id));
        self.transport.mark_validated(from);
    }

    /// Opens and checks a token; on refusal says whether (and with which reason, under which
    /// cipher) to answer.
    fn check_token(
        &mut self,
        from: SocketAddr,
        fields: &TokenFields,
    ) -> Result<OpenedToken, Option<(Cipher, RejectReason)>> {
        let Some(tokens) = &self.tokens else {
            // A development-mode server cannot open tokens.
            self.stats.malformed += 1;
            return Err(None);
        };
        let opened = match fields
            .token
            .open(&tokens.key, fields.protocol, fields.expires)
        {
            Ok(t) => t,
            Err(_) => {
                self.stats.token_forged += 1;
                return Err(None);
            }
        };
        let unix = (tokens.unix_time_at_zero + self.now).as_secs();
        let for_us = opened
            .server_addrs
            .iter()
            .any(|a| tokens.public_addrs.contains(a));
        let reason =
            if let Some(r) = self.mismatch(fields.protocol, fields.version, fields.channels) {
                self.stats.rejected_version += 1;
                Some(r)
            } else if fields.expires <= unix {
                self.stats.token_expired += 1;
                Some(RejectReason::TokenExpired)
            } else if !for_us {
                self.stats.token_wrong_server += 1;
                Some(RejectReason::WrongServer)
            } else if self
                .used_tokens
                .get(&fields.token.id())
                .is_some_and(|(addr, _)| *addr != from)
                || self
                    .peers
                    .get(&opened.client_id)
                    .is_some_and(|p| p.addr != from)
            {
                self.stats.token_in_use += 1;
                Some(RejectReason::TokenInUse)
            } else {
                None
            };
        match reason {
            Some(r) => Err(Some((Cipher::new(&opened.server_to_client), r))),
            None => Ok(opened),
        }
    }

    fn refuse_token(&mut self, from: SocketAddr, refusal: Option<(Cipher, RejectReason)>) {
        if let Some((cipher, reason)) = refusal {
            let body = rejected_body(reason, self.config.version);
            self.reply_sealed(from, &cipher, sealed::REJECTED, &body);
        }
    }

    fn token_attempt(token_id: &[u8; 16]) -> u64 {
        u64::from_le_bytes(token_id[..8].try_into().unwrap_or_default())
    }

    fn on_token_request(&mut self, from: SocketAddr, fields: &TokenFields) {
        match self.check_token(from, fields) {
            Ok(opened) => {
                let cookie = self.cookie(from, Self::token_attempt(&fields.token.id()));
                let cipher = Cipher::new(&opened.server_to_client);
                self.reply_sealed(from, &cipher, sealed::CHALLENGE, &cookie.to_bytes());
            }
            Err(refusal) => self.refuse_token(from, refusal),
        }
    }

    fn on_token_response(
        &mut self,
        from: SocketAddr,
        known: Option<ClientId>,
        fields: &TokenFields,
        answer: &[u8],
    ) {
        let token_id = fields.token.id();
        if let Some(id) = known {
            if self
                .peers
                .get(&id)
                .is_some_and(|p| p.attempt == Attempt::Token(token_id))
            {
                // Our Accepted was lost: say it again, under the session's next number.
                self.send_accepted(id);
                return;
            }
        }
        let opened = match self.check_token(from, fields) {
            Ok(o) => o,
            Err(refusal) => return self.refuse_token(from, refusal),
        };
        let s2c = Cipher::new(&opened.server_to_client);
        let c2s = Cipher::new(&opened.client_to_server);
        let cookie = match c2s.open(self.ctx, answer, &mut self.plain) {
            Ok(()) if answer.first() == Some(&sealed::ANSWER) => Cookie::from_bytes(&self.plain),
            _ => None,
        };
        let attempt = Self::token_attempt(&token_id);
        if !cookie.is_some_and(|c| self.cookie_ok(from, attempt, c)) {
            self.stats.rejected_cookie += 1;
            let body = rejected_body(RejectReason::BadChallenge, self.config.version);
            return self.reply_sealed(from, &s2c, sealed::REJECTED, &body);
        }
        if let Some(old) = known {
            self.drop_peer(old, DisconnectReason::Replaced, None);
        }
        if self.peers.len() >= self.config.max_clients {
            self.stats.rejected_full += 1;
            let body = rejected_body(RejectReason::ServerFull, self.config.version);
            return self.reply_sealed(from, &s2c, sealed::REJECTED, &body);
        }
        if self.used_tokens.len() >= self.config.max_token_entries {
            // Full of live tokens: forget the one that expires first.
            if let Some(k) = self
                .used_tokens
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| *k)
            {
                self.used_tokens.remove(&k);
            }
        }
        self.used_tokens.insert(token_id, (from, fields.expires));
        let mut crypto =
            SessionCrypto::new(self.ctx, &opened.server_to_client, &opened.client_to_server);
        if let Some(seq) = crate::crypto::seal::header_seq(answer) {
            crypto.mark_received(seq);
        }
        let id = opened.client_id;
        let timeout = Duration::from_secs(u64::from(opened.timeout_secs.max(1)));
        self.admit(
            from,
            id,
            Attempt::Token(token_id),
            crypto,
            timeout,
            Some(opened.user_data),
        );
        self.send_accepted(id);
    }

    /// Token mode: tells client `id` its session is open (a sealed Accepted under the
    /// session's next sequence number).
    fn send_accepted(&mut self, id: ClientId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        self.out.clear();
        p.crypto
            .seal(sealed::ACCEPTED, &id.0.to_le_bytes(), &mut self.out);
        let addr = p.addr;
        self.reply_unvalidated(addr);
    }

    fn handle_sealed(&mut self, id: ClientId, kind: u8, bytes: &[u8]) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match peer.crypto.open(bytes, &mut self.plain) {
            Ok(_) => {}
            Err(Refused::Replayed) => {
                self.stats.replayed += 1;
                peer.replayed += 1;
                return;
            }
            Err(Refused::Forged) => {
                self.stats.forged += 1;
                peer.forged += 1;
                return;
            }
        }
        // The client has spoken under the session keys: it has them.
        peer.dev_accepted = None;
        match kind {
            sealed::DATA => {
                if peer.conn.handle_payload(self.now, &self.plain).is_err() {
                    self.stats.bad_payloads += 1;
                }
                let (rate, burst) = (
                    self.config.max_messages_per_sec,
                    self.config.max_messages_per_sec.saturating_mul(2),
                );
                let mut flooding = false;
                while let Some((ch, msg)) = peer.conn.poll_message() {
                    if !peer.messages.take(self.now, rate, burst) {
                        flooding = true;
                        break;
                    }
                    self.events.push_back(ServerEvent::Message(id, ch, msg));
                }
                if flooding {
                    self.drop_peer(
                        id,
                        DisconnectReason::Fault(Fault::MessageRate),
                        Some(DisconnectCode::Kicked),
                    );
                }
            }
            sealed::DISCONNECT => {
                self.drop_peer(id, DisconnectReason::Left, None);
            }
            // Handshake kinds from a client in session: ignore.
            _ => self.stats.malformed += 1,
        }
    }
}
