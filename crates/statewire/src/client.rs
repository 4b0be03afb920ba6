//! The client endpoint: connects to a server through the challenge handshake (with a connect
//! token, or in development mode without) and runs one AEAD-sealed [`Connection`] over any
//! [`Transport`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use statewire_core::ClientId;
use statewire_transport::{Transport, TransportError};

use crate::config::{DisconnectReason, SessionConfig};
use crate::connection::{ChannelId, ConfigError, Connection, SendError};
use crate::crypto::seal::{Cipher, Context, SessionCrypto};
use crate::crypto::{ConnectToken, Key};
use crate::packet::{
    Cookie, DisconnectCode, Packet, TokenFields, parse_rejected, poll_data, recv_growing, sealed,
};

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

/// How a client proves itself to the server.
#[derive(Debug)]
enum Mode {
    /// Development mode: a random salt per attempt; keys come in `Accepted`.
    Dev { salt: u64 },
    /// Token mode: the token's fields, the server-to-client cipher for pre-session replies,
    /// and the session keys.
    Token {
        fields: Box<TokenFields>,
        s2c: Cipher,
        crypto: Box<SessionCrypto>,
    },
    /// The handshake is over: the session keys moved to the connection.
    Done,
}

/// A game client over transport `T`.
pub struct Client<T: Transport> {
    transport: T,
    server: SocketAddr,
    config: SessionConfig,
    ctx: Context,
    mode: Mode,
    state: ClientState,
    cookie: Option<Cookie>,
    started: Duration,
    last_attempt: Option<Duration>,
    conn: Option<Connection>,
    crypto: Option<SessionCrypto>,
    events: VecDeque<ClientEvent>,
    now: Duration,
    buf: Vec<u8>,
    out: Vec<u8>,
    payload: Vec<u8>,
    plain: Vec<u8>,
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

/// Why [`Client::with_token`] refused a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTokenError {
    /// The connection configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token is for another game.
    #[error("the token is for protocol {token:#x}, this client runs {config:#x}")]
    Protocol {
        /// The token's protocol id.
        token: u64,
        /// The configured protocol id.
        config: u64,
    },
    /// The token does not name the server address.
    #[error("the token is not valid for {0}")]
    Server(SocketAddr),
}

impl<T: Transport> Client<T> {
    /// Starts connecting to `server` at time `now` in development mode (no token). `salt`
    /// identifies this attempt: use a random value, a fixed one in reproducible tests.
    /// Fails if the connection configuration is invalid.
    pub fn new(
        transport: T,
        server: SocketAddr,
        config: SessionConfig,
        now: Duration,
        salt: u64,
    ) -> Result<Self, ConfigError> {
        config.connection.validate()?;
        Ok(Self::build(
            transport,
            server,
            config,
            now,
            Mode::Dev { salt },
        ))
    }

    /// Starts connecting to `server` (one of the token's servers) with a connect token from
    /// the game's backend.
    pub fn with_token(
        transport: T,
        server: SocketAddr,
        config: SessionConfig,
        now: Duration,
        token: &ConnectToken,
    ) -> Result<Self, ClientTokenError> {
        config.connection.validate()?;
        if token.protocol_id != config.protocol_id {
            return Err(ClientTokenError::Protocol {
                token: token.protocol_id,
                config: config.protocol_id,
            });
        }
        if !token.server_addrs.contains(&server) {
            return Err(ClientTokenError::Server(server));
        }
        let ctx = Context {
            protocol: config.protocol_id,
            version: config.version,
        };
        let fields = TokenFields {
            protocol: config.protocol_id,
            version: config.version,
            channels: config.connection.fingerprint(),
            expires: token.expires_unix_secs,
            token: token.private,
        };
        let mode = Mode::Token {
            fields: Box::new(fields),
            s2c: Cipher::new(&token.server_to_client_key),
            crypto: Box::new(SessionCrypto::new(
                ctx,
                &token.client_to_server_key,
                &token.server_to_client_key,
            )),
        };
        let mut config = config;
        config.connection.idle_timeout = Duration::from_secs(u64::from(token.timeout_secs.max(1)));
        Ok(Self::build(transport, server, config, now, mode))
    }

    fn build(
        transport: T,
        server: SocketAddr,
        config: SessionConfig,
        now: Duration,
        mode: Mode,
    ) -> Self {
        let cap = transport.max_payload().max(1500);
        Client {
            transport,
            server,
            ctx: Context {
                protocol: config.protocol_id,
                version: config.version,
            },
            config,
            mode,
            state: ClientState::Requesting,
            cookie: None,
            started: now,
            last_attempt: None,
            conn: None,
            crypto: None,
            events: VecDeque::new(),
            now,
            buf: vec![0; cap],
            out: Vec::new(),
            payload: Vec::new(),
            plain: Vec::new(),
            malformed: 0,
        }
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

    /// Datagrams from the server that failed to decode, did not authenticate, were replays,
    /// or did not belong to this session.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Round-trip time estimate, once connected.
    pub fn rtt(&self) -> Option<Duration> {
        self.conn.as_ref().map(Connection::rtt)
    }

    /// The round-trip time once it is measured (`None` while connecting, and while the
    /// connection still holds the configured initial guess).
    pub fn measured_rtt(&self) -> Option<Duration> {
        self.conn
            .as_ref()
            .filter(|c| c.rtt_measured())
            .map(Connection::rtt)
    }

    /// The connection's counters, once connected.
    pub fn connection_stats(&self) -> Option<crate::connection::ConnectionStats> {
        self.conn.as_ref().map(Connection::stats)
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

    /// Leaves: tells the server (best effort, authenticated) and ends the session with
    /// [`DisconnectReason::Left`].
    pub fn disconnect(&mut self) {
        if let (ClientState::Connected(_), Some(crypto)) = (self.state, &mut self.crypto) {
            for _ in 0..3 {
                self.out.clear();
                crypto.seal(
                    sealed::DISCONNECT,
                    &[DisconnectCode::Left.code()],
                    &mut self.out,
                );
                let _ = self.transport.send(self.server, &self.out);
            }
        }
        self.end(DisconnectReason::Left);
    }

    fn end(&mut self, reason: DisconnectReason) {
        if !matches!(self.state, ClientState::Disconnected(_)) {
            self.state = ClientState::Disconnected(reason);
            self.conn = None;
            self.crypto = None;
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
        let (Some(conn), Some(crypto)) = (&mut self.conn, &mut self.crypto) else {
            return Ok(());
        };
        for _ in 0..self.config.max_packets_per_peer_per_update {
            if !poll_data(conn, crypto, self.now, &mut self.payload, &mut self.out) {
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
        match (&mut self.mode, self.state, self.cookie) {
            (Mode::Dev { salt }, ClientState::Responding, Some(cookie)) => {
                Packet::ChallengeResponse {
                    salt: *salt,
                    cookie,
                }
                .encode(&mut self.out)
            }
            (Mode::Dev { salt }, _, _) => Packet::ConnectRequest {
                protocol: self.config.protocol_id,
                version: self.config.version,
                salt: *salt,
                channels: self.config.connection.fingerprint(),
            }
            .encode(&mut self.out),
            (Mode::Token { fields, crypto, .. }, ClientState::Responding, Some(cookie)) => {
                let mut answer = Vec::with_capacity(crate::packet::ANSWER_LEN);
                crypto.seal(sealed::ANSWER, &cookie.to_bytes(), &mut answer);
                Packet::TokenResponse {
                    fields: **fields,
                    answer: &answer,
                }
                .encode(&mut self.out)
            }
            (Mode::Token { fields, .. }, _, _) => {
                Packet::TokenRequest(**fields).encode(&mut self.out)
            }
            // Connected: nothing to send for the handshake.
            (Mode::Done, _, _) => return Ok(()),
        }
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

    fn connected(&mut self, id: ClientId, crypto: SessionCrypto) {
        self.crypto = Some(crypto);
        self.conn = Some(Connection::new(self.config.connection.clone(), self.now));
        self.state = ClientState::Connected(id);
        self.events.push_back(ClientEvent::Connected(id));
    }

    fn handle_datagram(&mut self, data: &[u8]) {
        let Ok(packet) = Packet::decode(data) else {
            self.malformed += 1;
            return;
        };
        let connecting = matches!(
            self.state,
            ClientState::Requesting | ClientState::Responding
        );
        match packet {
            Packet::Challenge { salt, cookie } if connecting && self.dev_salt() == Some(salt) => {
                self.cookie = Some(cookie);
                self.state = ClientState::Responding;
                // Answer at once rather than at the next resend tick.
                let _ = self.send_handshake();
            }
            Packet::Accepted {
                salt,
                client_id,
                c2s,
                s2c,
            } if connecting && self.dev_salt() == Some(salt) => {
                let crypto =
                    SessionCrypto::new(self.ctx, &Key::from_bytes(c2s), &Key::from_bytes(s2c));
                self.connected(ClientId(client_id), crypto);
            }
            Packet::Rejected {
                salt,
                reason,
                server_version,
            } if connecting && self.dev_salt() == Some(salt) => {
                self.end(DisconnectReason::Rejected {
                    reason,
                    server_version,
                })
            }
            Packet::Sealed { kind, bytes } => self.handle_sealed(kind, bytes, connecting),
            _ => self.malformed += 1,
        }
    }

    fn dev_salt(&self) -> Option<u64> {
        match self.mode {
            Mode::Dev { salt } => Some(salt),
            Mode::Token { .. } | Mode::Done => None,
        }
    }

    fn handle_sealed(&mut self, kind: u8, bytes: &[u8], connecting: bool) {
        if connecting {
            let Mode::Token { s2c, crypto, .. } = &mut self.mode else {
                self.malformed += 1;
                return;
            };
            match kind {
                // Pre-session replies: authenticated, outside the session's replay window.
                sealed::CHALLENGE | sealed::REJECTED => {
                    if s2c.open(self.ctx, bytes, &mut self.plain).is_err() {
                        self.malformed += 1;
                        return;
                    }
                    if kind == sealed::CHALLENGE {
                        if let Some(cookie) = Cookie::from_bytes(&self.plain) {
                            self.cookie = Some(cookie);
                            self.state = ClientState::Responding;
                            let _ = self.send_handshake();
                        }
                    } else if let Some((reason, server_version)) = parse_rejected(&self.plain) {
                        self.end(DisconnectReason::Rejected {
                            reason,
                            server_version,
                        });
                    }
                }
                sealed::ACCEPTED => {
                    if crypto.open(bytes, &mut self.plain).is_err() {
                        self.malformed += 1;
                        return;
                    }
                    let Ok(id) = <[u8; 8]>::try_from(self.plain.as_slice()) else {
                        self.malformed += 1;
                        return;
                    };
                    let Mode::Token { crypto, .. } = std::mem::replace(&mut self.mode, Mode::Done)
                    else {
                        return;
                    };
                    self.connected(ClientId(u64::from_le_bytes(id)), *crypto);
                }
                _ => self.malformed += 1,
            }
            return;
        }
        let Some(crypto) = &mut self.crypto else {
            self.malformed += 1;
            return;
        };
        if crypto.open(bytes, &mut self.plain).is_err() {
            self.malformed += 1;
            return;
        }
        match kind {
            sealed::DATA => {
                if let Some(conn) = &mut self.conn {
                    if conn.handle_payload(self.now, &self.plain).is_err() {
                        self.malformed += 1;
                    }
                    while let Some((ch, msg)) = conn.poll_message() {
                        self.events.push_back(ClientEvent::Message(ch, msg));
                    }
                }
            }
            sealed::DISCONNECT => {
                let code = self
                    .plain
                    .first()
                    .copied()
                    .and_then(DisconnectCode::from_code);
                self.end(match code {
                    Some(DisconnectCode::Kicked) => DisconnectReason::Kicked,
                    Some(DisconnectCode::Shutdown) => DisconnectReason::ServerShutdown,
                    Some(DisconnectCode::Left) => DisconnectReason::Left,
                    _ => DisconnectReason::ProtocolError,
                });
            }
            // A resent Accepted after we connected: harmless.
            sealed::ACCEPTED => {}
            _ => self.malformed += 1,
        }
    }
}
