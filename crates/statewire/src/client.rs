//! The client endpoint: connects to a server through the challenge handshake and runs one
//! [`Connection`] over any [`Transport`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use statewire_core::ClientId;
use statewire_transport::{Transport, TransportError};

use crate::config::{DisconnectReason, SessionConfig};
use crate::connection::{ChannelId, ConfigError, Connection, SendError};
use crate::packet::{Cookie, DisconnectCode, Packet, data_mac, poll_data, recv_growing};

/// Something that happened on the client; drain with [`Client::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake completed; this is our id.
    Connected(ClientId),
    /// The session is over (or never started).
    Disconnected(DisconnectReason),
    /// A message from the server.
    Message(ChannelId, Vec<u8>),
}

/// Where the client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// Sending connect requests.
    Requesting,
    /// Answering the server's challenge.
    Responding,
    /// Connected with this id.
    Connected(ClientId),
    /// Over, for this reason.
    Disconnected(DisconnectReason),
}

/// Errors from [`Client::send`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientSendError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// The connection refused the message.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// A game client over transport `T`.
pub struct Client<T: Transport> {
    transport: T,
    server: SocketAddr,
    config: SessionConfig,
    salt: u64,
    state: ClientState,
    cookie: Option<Cookie>,
    started: Duration,
    last_attempt: Option<Duration>,
    conn: Option<Connection>,
    token: u64,
    events: VecDeque<ClientEvent>,
    now: Duration,
    buf: Vec<u8>,
    out: Vec<u8>,
    payload: Vec<u8>,
    malformed: u64,
}

impl<T: Transport> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Client<T> {
    /// Starts connecting to `server` at time `now`. `salt` identifies this attempt: use a
    /// random value ([`crate::server::random_key`] gives some), a fixed one in reproducible
    /// tests.
    /// Fails if the connection configuration is invalid.
    pub fn new(
        transport: T,
        server: SocketAddr,
        config: SessionConfig,
        now: Duration,
        salt: u64,
    ) -> Result<Self, ConfigError> {
        config.connection.validate()?;
        let cap = transport.max_payload().max(1500);
        Ok(Client {
            transport,
            server,
            config,
            salt,
            state: ClientState::Requesting,
            cookie: None,
            started: now,
            last_attempt: None,
            conn: None,
            token: 0,
            events: VecDeque::new(),
            now,
            buf: vec![0; cap],
            out: Vec::new(),
            payload: Vec::new(),
            malformed: 0,
        })
    }

    /// Where the client is.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Our id, once connected.
    pub fn id(&self) -> Option<ClientId> {
        match self.state {
            ClientState::Connected(id) => Some(id),
            _ => None,
        }
    }

    /// Whether the handshake completed and the session is live.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, ClientState::Connected(_))
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Datagrams from the server that failed to decode or did not belong to this session.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Round-trip time estimate, once connected.
    pub fn rtt(&self) -> Option<Duration> {
        self.conn.as_ref().map(Connection::rtt)
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues `message` on `channel` for the server.
    pub fn send(&mut self, channel: ChannelId, message: &[u8]) -> Result<(), ClientSendError> {
        let conn = match (&mut self.conn, self.state) {
            (Some(c), ClientState::Connected(_)) => c,
            _ => return Err(ClientSendError::NotConnected),
        };
        conn.send(channel, message)?;
        Ok(())
    }

    /// Leaves: tells the server (best effort) and ends the session with
    /// [`DisconnectReason::Left`].
    pub fn disconnect(&mut self) {
        if let ClientState::Connected(_) = self.state {
            self.out.clear();
            Packet::Disconnect {
                token: self.token,
                code: DisconnectCode::Left,
            }
            .encode(&mut self.out);
            for _ in 0..3 {
                let _ = self.transport.send(self.server, &self.out);
            }
        }
        self.end(DisconnectReason::Left);
    }

    fn end(&mut self, reason: DisconnectReason) {
        if !matches!(self.state, ClientState::Disconnected(_)) {
            self.state = ClientState::Disconnected(reason);
            self.conn = None;
            self.events.push_back(ClientEvent::Disconnected(reason));
        }
    }

    /// Reads everything pending, advances the handshake or checks the timeout, then transmits.
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        for _ in 0..self.config.max_datagrams_per_update {
            let got = match recv_growing(&mut self.transport, &mut self.buf) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(TransportError::Closed) => {
                    self.end(DisconnectReason::ConnectionClosed);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if got.from != self.server {
                self.malformed += 1;
                continue;
            }
            let len = got.len.min(self.buf.len());
            let data = std::mem::take(&mut self.buf);
            self.handle_datagram(&data[..len]);
            self.buf = data;
        }
        if self.transport.poll_closed_peer().is_some() {
            self.end(DisconnectReason::ConnectionClosed);
        }
        match self.state {
            ClientState::Requesting | ClientState::Responding => {
                if self.now.saturating_sub(self.started) >= self.config.connect_timeout {
                    self.end(DisconnectReason::ConnectTimeout);
                } else if self
                    .last_attempt
                    .is_none_or(|t| self.now.saturating_sub(t) >= self.config.connect_resend)
                {
                    self.send_handshake()?;
                }
                Ok(())
            }
            ClientState::Connected(_) => {
                if self.conn.as_ref().is_some_and(|c| c.is_timed_out(self.now)) {
                    self.end(DisconnectReason::Timeout);
                    return Ok(());
                }
                self.flush(now)
            }
            ClientState::Disconnected(_) => Ok(()),
        }
    }

    /// Transmits what the connection has due, without reading.
    pub fn flush(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        for _ in 0..self.config.max_packets_per_peer_per_update {
            if !poll_data(conn, self.token, self.now, &mut self.payload, &mut self.out) {
                break;
            }
            match self.transport.send(self.server, &self.out) {
                Ok(()) | Err(TransportError::PayloadTooLarge { .. }) => {}
                Err(TransportError::Closed) => {
                    self.end(DisconnectReason::ConnectionClosed);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn send_handshake(&mut self) -> Result<(), TransportError> {
        self.out.clear();
        match (self.state, self.cookie) {
            (ClientState::Responding, Some(cookie)) => Packet::ChallengeResponse {
                salt: self.salt,
                cookie,
            },
            _ => Packet::ConnectRequest {
                protocol: self.config.protocol_id,
                version: self.config.version,
                salt: self.salt,
                channels: self.config.connection.fingerprint(),
            },
        }
        .encode(&mut self.out);
        self.last_attempt = Some(self.now);
        match self.transport.send(self.server, &self.out) {
            Ok(()) | Err(TransportError::PayloadTooLarge { .. }) => Ok(()),
            Err(TransportError::Closed) => {
                self.end(DisconnectReason::ConnectionClosed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn handle_datagram(&mut self, data: &[u8]) {
        let Ok(packet) = Packet::decode(data) else {
            self.malformed += 1;
            return;
        };
        match (packet, self.state) {
            (
                Packet::Challenge { salt, cookie },
                ClientState::Requesting | ClientState::Responding,
            ) if salt == self.salt => {
                self.cookie = Some(cookie);
                self.state = ClientState::Responding;
                // Answer at once rather than at the next resend tick.
                let _ = self.send_handshake();
            }
            (
                Packet::Accepted {
                    salt,
                    client_id,
                    token,
                },
                ClientState::Requesting | ClientState::Responding,
            ) if salt == self.salt => {
                let id = ClientId(client_id);
                self.token = token;
                self.conn = Some(Connection::new(self.config.connection.clone(), self.now));
                self.state = ClientState::Connected(id);
                self.events.push_back(ClientEvent::Connected(id));
            }
            (
                Packet::Rejected {
                    salt,
                    reason,
                    server_version,
                },
                ClientState::Requesting | ClientState::Responding,
            ) if salt == self.salt => self.end(DisconnectReason::Rejected {
                reason,
                server_version,
            }),
            (Packet::Data { mac, payload }, ClientState::Connected(_))
                if mac == data_mac(self.token, payload) =>
            {
                if let Some(conn) = &mut self.conn {
                    if conn.handle_payload(self.now, payload).is_err() {
                        self.malformed += 1;
                    }
                    while let Some((ch, msg)) = conn.poll_message() {
                        self.events.push_back(ClientEvent::Message(ch, msg));
                    }
                }
            }
            (Packet::Disconnect { token, code }, ClientState::Connected(_))
                if token == self.token =>
            {
                self.end(match code {
                    DisconnectCode::Kicked => DisconnectReason::Kicked,
                    DisconnectCode::Shutdown => DisconnectReason::ServerShutdown,
                    DisconnectCode::Left => DisconnectReason::Left,
                    _ => DisconnectReason::ProtocolError,
                });
            }
            _ => self.malformed += 1,
        }
    }
}
