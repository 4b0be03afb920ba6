//! The server endpoint: accepts clients through the challenge handshake and runs one
//! [`Connection`] per client over any [`Transport`].

use std::collections::{BTreeMap, VecDeque};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::Duration;

use hashbrown::HashMap;
use siphasher::sip::SipHasher24;
use statewire_core::ClientId;
use statewire_transport::{Transport, TransportError};

use crate::client::{ClientEvent, ClientSendError};
use crate::config::{DisconnectReason, SessionConfig};
use crate::connection::{ChannelId, ConfigError, Connection, SendError};
use crate::packet::{
    Cookie, DisconnectCode, Packet, RejectReason, data_mac, poll_data, recv_growing,
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
pub struct ServerStats {
    /// Datagrams read.
    pub datagrams_received: u64,
    /// Bytes read from peers that had not completed the handshake.
    pub unvalidated_bytes_received: u64,
    /// Bytes sent to peers that had not completed the handshake.
    pub unvalidated_bytes_sent: u64,
    /// Datagrams that failed to decode as session packets.
    pub malformed: u64,
    /// Data packets from unknown addresses or whose MAC does not match the session.
    pub unknown_peer: u64,
    /// Connection payloads the connection layer rejected.
    pub bad_payloads: u64,
    /// Connections refused: protocol, version or channel configuration mismatch.
    pub rejected_version: u64,
    /// Connections refused: bad or expired cookie.
    pub rejected_cookie: u64,
    /// Connections refused: server full.
    pub rejected_full: u64,
    /// Handshakes completed.
    pub accepted: u64,
}

/// The host's own player on a listen server: no network, same events.
struct LocalPeer<U> {
    id: ClientId,
    inbox: VecDeque<ClientEvent>,
    user: Option<U>,
}

struct Peer<U> {
    addr: SocketAddr,
    salt: u64,
    token: u64,
    conn: Connection,
    user: Option<U>,
}

/// A game server over transport `T`, with per-client user data of type `U`.
///
/// Drive it with [`Server::update`] each frame (reads everything pending, handles timeouts,
/// transmits), then drain [`Server::poll_event`].
pub struct Server<T: Transport, U = ()> {
    transport: T,
    config: SessionConfig,
    key: (u64, u64),
    /// Ordered by id so that sends, and so a seeded simulation, are reproducible.
    peers: BTreeMap<ClientId, Peer<U>>,
    by_addr: HashMap<SocketAddr, ClientId>,
    local: Option<LocalPeer<U>>,
    /// Events left for a local player that was dropped.
    orphan_inbox: VecDeque<ClientEvent>,
    /// A connection never used on the wire: answers channel limits for the local player.
    limits: Connection,
    next_id: u64,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    now: Duration,
    buf: Vec<u8>,
    out: Vec<u8>,
    payload: Vec<u8>,
}

impl<T: Transport, U> std::fmt::Debug for Server<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.transport.local_addr())
            .field("clients", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A random 128-bit key from the standard library's OS-seeded hasher state.
#[must_use]
pub fn random_key() -> (u64, u64) {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().build_hasher().finish();
    let b = RandomState::new().build_hasher().finish();
    (a, b)
}

impl<T: Transport, U> Server<T, U> {
    /// A server on `transport`. `key` signs challenge cookies and session tokens: use
    /// [`random_key`] in production, a fixed key in reproducible tests. Fails if the
    /// connection configuration is invalid.
    pub fn new(transport: T, config: SessionConfig, key: (u64, u64)) -> Result<Self, ConfigError> {
        let cap = transport.max_payload().max(1500);
        let limits = Connection::try_new(config.connection.clone(), Duration::ZERO)?;
        Ok(Server {
            transport,
            config,
            key,
            peers: BTreeMap::new(),
            by_addr: HashMap::new(),
            local: None,
            orphan_inbox: VecDeque::new(),
            limits,
            next_id: 1,
            events: VecDeque::new(),
            stats: ServerStats::default(),
            now: Duration::ZERO,
            buf: vec![0; cap],
            out: Vec::new(),
            payload: Vec::new(),
        })
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
        let id = ClientId(self.next_id);
        self.next_id += 1;
        let mut inbox = VecDeque::new();
        inbox.push_back(ClientEvent::Connected(id));
        self.local = Some(LocalPeer {
            id,
            inbox,
            user: None,
        });
        self.events.push_back(ServerEvent::Connected(id));
        id
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

    /// Queues `message` on `channel` for `client`; it leaves on the next update or flush.
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
        peer.conn.send(channel, message)?;
        Ok(())
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

    fn drop_peer(
        &mut self,
        client: ClientId,
        reason: DisconnectReason,
        tell: Option<DisconnectCode>,
    ) -> bool {
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
        let Some(peer) = self.peers.remove(&client) else {
            return false;
        };
        self.by_addr.remove(&peer.addr);
        let addr = peer.addr;
        if let Some(code) = tell {
            self.out.clear();
            Packet::Disconnect {
                token: peer.token,
                code,
            }
            .encode(&mut self.out);
            // Sent a few times: it is unreliable and the peer would otherwise wait for a
            // timeout. Send errors are irrelevant now.
            for _ in 0..3 {
                let _ = self.transport.send(peer.addr, &self.out);
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

    /// Reads and handles everything pending, drops timed-out clients, then transmits.
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        for _ in 0..self.config.max_datagrams_per_update {
            let got = match recv_growing(&mut self.transport, &mut self.buf)? {
                Some(got) => got,
                None => break,
            };
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
        let timed_out: Vec<ClientId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conn.is_timed_out(self.now))
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            self.drop_peer(id, DisconnectReason::Timeout, None);
        }
        self.flush(now)
    }

    /// Transmits what the connections have due, without reading.
    pub fn flush(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        for peer in self.peers.values_mut() {
            for _ in 0..self.config.max_packets_per_peer_per_update {
                if !poll_data(
                    &mut peer.conn,
                    peer.token,
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
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn mac(&self, addr: SocketAddr, salt: u64, expires_ms: u64) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.key.0, self.key.1);
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
        h.write_u64(salt);
        h.write_u64(expires_ms);
        h.finish()
    }

    fn reply_unvalidated(&mut self, to: SocketAddr, packet: Packet<'_>) {
        self.out.clear();
        packet.encode(&mut self.out);
        self.stats.unvalidated_bytes_sent += self.out.len() as u64;
        let _ = self.transport.send(to, &self.out);
    }

    fn handle_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let packet = match Packet::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                if !self.by_addr.contains_key(&from) {
                    self.stats.unvalidated_bytes_received += data.len() as u64;
                }
                return;
            }
        };
        let known = self.by_addr.get(&from).copied();
        // Handshake packets count as unvalidated even from a known address: their replies do.
        let handshake = matches!(
            packet,
            Packet::ConnectRequest { .. } | Packet::ChallengeResponse { .. }
        );
        if known.is_none() || handshake {
            self.stats.unvalidated_bytes_received += data.len() as u64;
        }
        let now_ms = self.now.as_millis() as u64;
        match packet {
            Packet::ConnectRequest {
                protocol,
                version,
                salt,
                channels,
            } => {
                // A request from an address with a live session is answered like any other: a
                // client that restarted on the same port completes a new handshake, which then
                // replaces its old session (see ChallengeResponse). Challenges are stateless.
                let reason = if protocol != self.config.protocol_id {
                    Some(RejectReason::ProtocolMismatch)
                } else if version != self.config.version {
                    Some(RejectReason::VersionMismatch)
                } else if channels != self.config.connection.fingerprint() {
                    Some(RejectReason::ChannelMismatch)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.stats.rejected_version += 1;
                    let server_version = self.config.version;
                    self.reply_unvalidated(
                        from,
                        Packet::Rejected {
                            salt,
                            reason,
                            server_version,
                        },
                    );
                    return;
                }
                let expires_ms =
                    now_ms.saturating_add(self.config.challenge_lifetime.as_millis() as u64);
                let mac = self.mac(from, salt, expires_ms);
                self.reply_unvalidated(
                    from,
                    Packet::Challenge {
                        salt,
                        cookie: Cookie { expires_ms, mac },
                    },
                );
            }
            Packet::ChallengeResponse { salt, cookie } => {
                if let Some(id) = known {
                    if let Some(p) = self.peers.get(&id) {
                        if p.salt == salt {
                            // Our Accepted was lost: say it again.
                            let token = p.token;
                            self.out.clear();
                            Packet::Accepted {
                                salt,
                                client_id: id.0,
                                token,
                            }
                            .encode(&mut self.out);
                            let _ = self.transport.send(from, &self.out);
                            return;
                        }
                    }
                }
                let server_version = self.config.version;
                if cookie.expires_ms < now_ms
                    || self.mac(from, salt, cookie.expires_ms) != cookie.mac
                {
                    self.stats.rejected_cookie += 1;
                    self.reply_unvalidated(
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
                    // A new attempt (new salt) that proved it receives at this address: the
                    // client restarted; its old session is over.
                    self.drop_peer(old, DisconnectReason::Replaced, None);
                }
                if self.peers.len() >= self.config.max_clients {
                    self.stats.rejected_full += 1;
                    self.reply_unvalidated(
                        from,
                        Packet::Rejected {
                            salt,
                            reason: RejectReason::ServerFull,
                            server_version,
                        },
                    );
                    return;
                }
                let id = ClientId(self.next_id);
                self.next_id += 1;
                let token = self.mac(from, salt ^ 0x746f_6b65_6e00_0000, id.0);
                self.peers.insert(
                    id,
                    Peer {
                        addr: from,
                        salt,
                        token,
                        conn: Connection::new(self.config.connection.clone(), self.now),
                        user: None,
                    },
                );
                self.by_addr.insert(from, id);
                self.stats.accepted += 1;
                self.events.push_back(ServerEvent::Connected(id));
                self.reply_unvalidated(
                    from,
                    Packet::Accepted {
                        salt,
                        client_id: id.0,
                        token,
                    },
                );
            }
            Packet::Data { mac, payload } => {
                let Some(id) = known else {
                    self.stats.unknown_peer += 1;
                    return;
                };
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                if data_mac(peer.token, payload) != mac {
                    self.stats.unknown_peer += 1;
                    return;
                }
                if peer.conn.handle_payload(self.now, payload).is_err() {
                    self.stats.bad_payloads += 1;
                }
                while let Some((ch, msg)) = peer.conn.poll_message() {
                    self.events.push_back(ServerEvent::Message(id, ch, msg));
                }
            }
            Packet::Disconnect { token, .. } => {
                if let Some(id) = known {
                    if self.peers.get(&id).is_some_and(|p| p.token == token) {
                        self.drop_peer(id, DisconnectReason::Left, None);
                    }
                }
            }
            // Server-to-client packets sent to a server: ignore.
            _ => self.stats.malformed += 1,
        }
    }
}
