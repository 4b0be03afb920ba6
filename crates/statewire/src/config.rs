//! Session configuration and the reasons sessions end.

use std::time::Duration;

use crate::connection::ConnectionConfig;
use crate::packet::RejectReason;

/// Settings shared by [`crate::Server`] and [`crate::Client`]; both sides must agree on
/// `protocol_id`, `version` and the channel list.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Identifies the game. Default `0x7374_6174_6577_6972` ("statewir").
    pub protocol_id: u64,
    /// The game's protocol version; a client of another version is refused. Default 1.
    pub version: u16,
    /// Most connected clients. Default 64.
    pub max_clients: usize,
    /// How long a challenge cookie stays valid. Default 5 s.
    pub challenge_lifetime: Duration,
    /// Client: give up connecting after this long. Default 5 s.
    pub connect_timeout: Duration,
    /// Client: resend the connect request or challenge response this often while connecting.
    /// Default 100 ms.
    pub connect_resend: Duration,
    /// Most datagrams read per [`crate::Server::update`] call, so a flood cannot stall a
    /// frame. Default 4,096.
    pub max_datagrams_per_update: usize,
    /// Most packets one connection may transmit per update. Default 64.
    pub max_packets_per_peer_per_update: usize,
    /// Handshake packets (connect requests, challenge responses, token packets) handled per
    /// second from one source IP; more are dropped before any MAC or decryption is computed.
    /// A handshake packet costs the server a few microseconds (a token request about 4 µs), so
    /// the default bounds one address to a few milliseconds of CPU a second while a full
    /// server's worth of players behind one address (a LAN party, one NAT), each resending
    /// every `connect_resend` on a lossy link, still get in at once. Default 1,000.
    pub handshake_rate_per_ip: u32,
    /// Handshake packets one source IP may send at once before its rate applies. Default
    /// 2,000.
    pub handshake_burst_per_ip: u32,
    /// Most source IPs whose handshake rate is tracked; beyond it new sources share one
    /// bucket. Default 4,096.
    pub max_tracked_sources: usize,
    /// Messages per second a client may send; one over its rate (after a burst of twice
    /// that) is disconnected with [`Fault::MessageRate`]. Default 1,000.
    pub max_messages_per_sec: u32,
    /// Token mode: most tokens remembered as in use (to refuse one replayed from another
    /// address). Entries leave when their token expires; when the table is full the oldest
    /// expiry goes first. Default 4,096.
    pub max_token_entries: usize,
    /// Channels, timeouts and buffer limits of each connection.
    pub connection: ConnectionConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            protocol_id: 0x7374_6174_6577_6972,
            version: 1,
            max_clients: 64,
            challenge_lifetime: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connect_resend: Duration::from_millis(100),
            max_datagrams_per_update: 4096,
            max_packets_per_peer_per_update: 64,
            handshake_rate_per_ip: 1000,
            handshake_burst_per_ip: 2000,
            max_tracked_sources: 4096,
            max_messages_per_sec: 1000,
            max_token_entries: 4096,
            connection: ConnectionConfig::default(),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Nothing arrived from the peer for the idle timeout.
    Timeout,
    /// The client left (on the server: the client said so; on the client: we called
    /// `disconnect`).
    Left,
    /// The server kicked the client.
    Kicked,
    /// The server shut down.
    ServerShutdown,
    /// The peer broke the protocol.
    ProtocolError,
    /// The transport's connection to the peer closed (connection-oriented transports).
    ConnectionClosed,
    /// Server only: the client completed a new handshake from the same address (it
    /// restarted), which replaced this session.
    Replaced,
    /// Client only: the server refused the connection.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// The server's protocol version (useful with [`RejectReason::VersionMismatch`]).
        server_version: u16,
    },
    /// Client only: no answer from the server within the connect timeout.
    ConnectTimeout,
    /// Server only: the client was disconnected for a fault of its own; the server and its
    /// other clients go on.
    Fault(Fault),
}

/// A per-client fault that disconnects that client, and only it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The transport refused to send to the client's address.
    SendFailed,
    /// The client stopped acknowledging for [`crate::ConnectionConfig::unresponsive_timeout`].
    Unresponsive,
    /// The client sent messages faster than [`SessionConfig::max_messages_per_sec`].
    MessageRate,
    /// The client went over a memory budget (e.g. its reliable send queue is full).
    OverBudget,
    /// The client fell too far behind the game's history (e.g. the event log).
    FellBehind,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::SendFailed => "sending to it failed",
            Fault::Unresponsive => "it stopped acknowledging",
            Fault::MessageRate => "it sent messages too fast",
            Fault::OverBudget => "it went over its memory budget",
            Fault::FellBehind => "it fell too far behind",
        })
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::Timeout => f.write_str("timed out"),
            DisconnectReason::Left => f.write_str("left"),
            DisconnectReason::Kicked => f.write_str("kicked"),
            DisconnectReason::ServerShutdown => f.write_str("server shut down"),
            DisconnectReason::ProtocolError => f.write_str("protocol error"),
            DisconnectReason::ConnectionClosed => f.write_str("connection closed"),
            DisconnectReason::Replaced => {
                f.write_str("replaced by a new session from the same address")
            }
            DisconnectReason::Rejected {
                reason: RejectReason::VersionMismatch,
                server_version,
            } => write!(f, "rejected: server runs protocol version {server_version}"),
            DisconnectReason::Rejected { reason, .. } => write!(f, "rejected: {reason}"),
            DisconnectReason::ConnectTimeout => f.write_str("no answer from the server"),
            DisconnectReason::Fault(fault) => write!(f, "disconnected because {fault}"),
        }
    }
}
