//! Per-peer connection: channels of messages in, packet payloads out, and back.
//!
//! A [`Connection`] is sans-IO: it never touches a socket or reads a clock. Every call that
//! depends on time takes `now`, a [`Duration`] since any epoch the caller likes (it must not go
//! backwards; an earlier `now` than seen before is treated as the latest one). The session layer
//! wraps each payload in its own header and hands the payload bytes to and from this type.
//!
//! # What it provides
//!
//! Messages are sent on numbered channels ([`ChannelId`]), each configured with a
//! [`ChannelKind`]:
//! - [`ChannelKind::Unreliable`]: sent once, may be lost, duplicated or reordered by the path.
//! - [`ChannelKind::UnreliableSequenced`]: sent once; a message older than the newest one
//!   delivered on the channel is dropped, so the application only ever moves forward.
//! - [`ChannelKind::ReliableOrdered`]: delivered exactly once and in order; messages larger
//!   than a packet are split into fragments and reassembled.
//!
//! Every packet carries a 16-bit sequence number and acknowledges the peer's packets (a base
//! sequence number plus a 32-bit bitfield of the ones before it). Reliable fragments are
//! remembered per packet; an acknowledged packet acknowledges its fragments, and a fragment
//! still unacknowledged after the resend timeout (see [`ConnectionConfig::resend_min`]) goes
//! out again in a later packet. Acknowledgements ride on every packet; when the peer is owed
//! one and nothing else is due, an ack-only packet goes out after
//! [`ConnectionConfig::max_ack_delay`]. With nothing at all to send, an empty keepalive packet
//! goes out every [`ConnectionConfig::keepalive_interval`].
//!
//! There is no congestion control. Two limits bound what is in flight: the reliable window
//! ([`ConnectionConfig::reliable_window`], messages per channel beyond the oldest
//! unacknowledged one) and [`ConnectionConfig::max_fragments_in_flight`] (fragments sent but not
//! yet acknowledged, across channels); [`ConnectionConfig::max_queued_reliable_bytes`] bounds
//! the reliable bytes held for the peer. Sending is tied to acknowledgements: once the peer has
//! acknowledged nothing for [`ConnectionConfig::ack_timeout`] while packets wait for it, only
//! pings go out (empty packets that ask for an acknowledgement) and unreliable messages are
//! dropped, until it acknowledges again ([`Connection::is_stalled`],
//! [`Connection::is_unresponsive`]). The caller decides how often to flush.
//!
//! The payload format (a 3-byte header, 11 bytes with acknowledgements, then frames) is in the
//! source of the `wire` submodule. Both peers must use the same channel list;
//! [`ConnectionConfig::fingerprint`] helps the handshake check that.
//!
//! # Integrity
//!
//! Payloads carry no checksum or authentication. A malformed payload is rejected with a
//! [`PayloadError`] and changes nothing, and duplicated, reordered or very late payloads are
//! harmless, but a well-formed payload that was corrupted or forged can acknowledge data the
//! peer never received or inject messages. The layer below must therefore reject corrupted
//! and forged payloads (a CRC32 at least; an AEAD against attackers).
//!
//! # Drain rule
//!
//! Whenever something happens (a payload arrives, the application sends, or the time from
//! [`Connection::poll_timeout`] is reached): feed received payloads to
//! [`Connection::handle_payload`], call [`Connection::poll_transmit`] until it returns `false`
//! and send each payload, take messages with [`Connection::poll_message`] until `None`, then
//! sleep until [`Connection::poll_timeout`] or the next event, and check
//! [`Connection::is_timed_out`].
//!
//! ```
//! use std::time::Duration;
//! use statewire::connection::{ChannelId, Connection, ConnectionConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut now = Duration::ZERO;
//! let mut client = Connection::new(ConnectionConfig::default(), now);
//! let mut server = Connection::new(ConnectionConfig::default(), now);
//! client.send(ChannelId(0), b"hello, reliably")?;
//!
//! let mut packet = Vec::new();
//! let mut got = Vec::new();
//! while got.is_empty() {
//!     // The session layer would write its header into `packet` first, then send it.
//!     packet.clear();
//!     while client.poll_transmit(now, &mut packet) {
//!         server.handle_payload(now, &packet)?;
//!         packet.clear();
//!     }
//!     while server.poll_transmit(now, &mut packet) {
//!         client.handle_payload(now, &packet)?;
//!         packet.clear();
//!     }
//!     while let Some((channel, message)) = server.poll_message() {
//!         got.push((channel, message));
//!     }
//!     now = client.poll_timeout().unwrap_or(now).max(now + Duration::from_millis(1));
//! }
//! assert_eq!(got, [(ChannelId(0), b"hello, reliably".to_vec())]);
//! assert!(!server.is_timed_out(now));
//! # Ok(())
//! # }
//! ```

mod reliable;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use reliable::{Budget, HELD_OVERHEAD, Insert, ReliableRecv, ReliableSend};
use wire::{AckHeader, ChannelLimits, Frame, FrameKind};

/// Smallest accepted [`ConnectionConfig::max_packet_size`].
pub const MIN_PACKET_SIZE: usize = 128;
/// Largest accepted [`ConnectionConfig::max_packet_size`]: the largest UDP payload over IPv4.
pub const MAX_PACKET_SIZE: usize = 65_507;
/// Largest accepted [`ChannelConfig::max_message_size`] on a reliable channel (just under
/// 4 MiB): 65 535 fragments of the 64-byte minimum fragment size.
pub const MAX_RELIABLE_MESSAGE_SIZE: usize = 64 * 65_535;
/// Largest accepted [`ConnectionConfig::reliable_window`] and [`ChannelConfig::max_send_queue`]
/// of a reliable or sequenced channel: a quarter of the 16-bit id space, so that old and new
/// ids can never be confused.
pub const MAX_RELIABLE_WINDOW: usize = 16_384;
/// Most channels a connection may have: channel ids are one byte.
pub const MAX_CHANNELS: usize = 256;

/// Received packets remembered for duplicate detection and acknowledgement. Twice the default
/// fragments in flight, so a whole burst of them can be acknowledged.
const RECV_HISTORY: usize = 512;
/// Sent packets remembered for matching acknowledgements to their fragments.
const SENT_HISTORY: usize = 1024;
/// Packets acknowledged by the bitfield, besides the base.
const ACK_BITS: u16 = 32;
/// A packet more than this far ahead of the newest one seen is not trusted on its own (a
/// single corrupted sequence number must not make every later genuine packet look stale).
const MAX_SEQ_JUMP: u16 = 128;
/// Consecutive untrusted packets, each a little ahead of the previous, that make the
/// receiver accept that the peer really moved on (or back) and restart its packet window.
const RESYNC_RUN: u8 = 3;

/// Identifies a channel of a connection: its index in [`ConnectionConfig::channels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u8);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel {}", self.0)
    }
}

/// Delivery guarantees of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelKind {
    /// Sent once; may arrive zero or more times, in any order. Each message must fit one
    /// packet.
    Unreliable,
    /// Sent once; a message older than the newest one delivered on this channel is dropped,
    /// as is a duplicate of it. Each message must fit one packet.
    UnreliableSequenced,
    /// Delivered exactly once, in the order sent, as long as the connection lives. Messages up
    /// to [`ChannelConfig::max_message_size`] are fragmented as needed.
    ReliableOrdered,
}

/// Settings of one channel. Both peers must use the same channel list: the receiver decodes
/// a channel's messages by the kind it has configured for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Delivery guarantees.
    pub kind: ChannelKind,
    /// Largest message, in bytes, that [`Connection::send`] accepts and the receiver admits.
    /// For the unreliable kinds the effective limit is also capped by what fits one packet:
    /// `max_packet_size - 15` for [`ChannelKind::Unreliable`], `max_packet_size - 17` for
    /// [`ChannelKind::UnreliableSequenced`]. For [`ChannelKind::ReliableOrdered`] it may be up
    /// to [`MAX_RELIABLE_MESSAGE_SIZE`].
    ///
    /// Default: 256 KiB (262 144) for reliable channels; 1135 (unreliable) and 1133
    /// (sequenced), which is what fits the default 1150-byte packet.
    pub max_message_size: usize,
    /// Most messages waiting on this channel; [`Connection::send`] returns
    /// [`SendError::QueueFull`] beyond it. For a reliable channel this counts every message not
    /// yet acknowledged by the peer, so sender memory is bounded by `max_send_queue *
    /// max_message_size`; for the unreliable kinds it counts messages not yet put in a packet.
    ///
    /// Default: 1024 for reliable channels, 256 for the unreliable kinds.
    pub max_send_queue: usize,
}

impl ChannelConfig {
    /// A reliable-ordered channel with the default limits.
    pub fn reliable_ordered() -> Self {
        Self {
            kind: ChannelKind::ReliableOrdered,
            max_message_size: 256 * 1024,
            max_send_queue: 1024,
        }
    }

    /// An unreliable channel with the default limits.
    pub fn unreliable() -> Self {
        Self {
            kind: ChannelKind::Unreliable,
            max_message_size: DEFAULT_MAX_PACKET_SIZE
                - wire::MAX_HEADER_LEN
                - wire::UNRELIABLE_FRAME_HEADER,
            max_send_queue: 256,
        }
    }

    /// An unreliable-sequenced channel with the default limits.
    pub fn unreliable_sequenced() -> Self {
        Self {
            kind: ChannelKind::UnreliableSequenced,
            max_message_size: DEFAULT_MAX_PACKET_SIZE
                - wire::MAX_HEADER_LEN
                - wire::SEQUENCED_FRAME_HEADER,
            max_send_queue: 256,
        }
    }
}

const DEFAULT_MAX_PACKET_SIZE: usize = 1150;

/// Settings of a [`Connection`]. Both peers should use the same values; the channel list must
/// match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// The channels, indexed by [`ChannelId`]; between 1 and [`MAX_CHANNELS`].
    ///
    /// Default: channel 0 [`ChannelConfig::reliable_ordered`], channel 1
    /// [`ChannelConfig::unreliable`], channel 2 [`ChannelConfig::unreliable_sequenced`].
    pub channels: Vec<ChannelConfig>,
    /// Largest payload [`Connection::poll_transmit`] produces and
    /// [`Connection::handle_payload`] accepts, in bytes; between [`MIN_PACKET_SIZE`] and
    /// [`MAX_PACKET_SIZE`].
    ///
    /// Default: 1150, which leaves room for a session header within a 1200-byte datagram.
    pub max_packet_size: usize,
    /// After this long without sending anything, an empty keepalive packet goes out.
    ///
    /// Default: 250 ms.
    pub keepalive_interval: Duration,
    /// [`Connection::is_timed_out`] turns true once nothing valid has been received for this
    /// long.
    ///
    /// Default: 10 s.
    pub idle_timeout: Duration,
    /// Longest an acknowledgement owed to the peer waits for a packet to ride on before an
    /// ack-only packet is sent. Packets that carry messages are owed an acknowledgement; empty
    /// ones are not.
    ///
    /// Default: 10 ms.
    pub max_ack_delay: Duration,
    /// Round-trip time assumed until the first measurement.
    ///
    /// Default: 100 ms.
    pub initial_rtt: Duration,
    /// Shortest resend timeout. An unacknowledged reliable fragment is sent again after
    /// `max(1.25 * srtt, srtt + 2 * rttvar) + max_ack_delay`, clamped to
    /// `[resend_min, resend_max]`, where `srtt` and `rttvar` are the smoothed round-trip time
    /// and its mean deviation (RFC 6298 weights).
    ///
    /// Default: 30 ms.
    pub resend_min: Duration,
    /// Longest resend timeout.
    ///
    /// Default: 1 s.
    pub resend_max: Duration,
    /// Reliable messages per channel that may be in flight beyond the oldest unacknowledged
    /// one; the receiver holds at most this many out-of-order messages per channel and refuses
    /// ids further ahead. Between 1 and [`MAX_RELIABLE_WINDOW`].
    ///
    /// Default: 1024.
    pub reliable_window: usize,
    /// Reliable fragments (across all channels) sent but not yet acknowledged beyond which no
    /// new fragment is sent; resends still go out. This bounds bursts (a 256 KiB message is
    /// 232 fragments at the default packet size) to what the peer can acknowledge, and at 256
    /// fragments of 1130 bytes allows about 290 KB per round trip. At least 1.
    ///
    /// Default: 256.
    pub max_fragments_in_flight: usize,
    /// Received bytes held at once: fragments being reassembled, reliable messages waiting
    /// for an earlier one, and messages waiting for [`Connection::poll_message`] (each charged
    /// its length plus 32 bytes; partial messages also 24 bytes per fragment slot). Over this,
    /// reliable fragments are refused (and resent by the peer later) and unreliable messages
    /// dropped. The next in-order message of a reliable channel is still admitted while the
    /// delivery queue is empty, so the true bound is this plus one message (with its fragment
    /// overhead) per reliable channel.
    ///
    /// Default: 1 MiB (1 048 576).
    pub max_reassembly_bytes: usize,
    /// Send pacing tied to acknowledgements: once packets that need an acknowledgement have
    /// been in flight this long with no acknowledgement of anything, the connection sends only
    /// pings (empty packets that ask for an acknowledgement, at the keepalive interval doubling
    /// up to 4 times it) and drops queued unreliable messages, until the peer acknowledges
    /// again. A peer that never acknowledges receives a few small packets, not a stream.
    ///
    /// Default: 1 s.
    pub ack_timeout: Duration,
    /// Most bytes of reliable messages (all reliable channels together) held until the peer
    /// acknowledges them; [`Connection::send`] refuses a reliable message beyond it with
    /// [`SendError::OverBudget`]. Bounds what a peer that never acknowledges can pin on the
    /// sender. At least the largest reliable `max_message_size`.
    ///
    /// Default: 2 MiB (2 097 152).
    pub max_queued_reliable_bytes: usize,
    /// [`Connection::is_unresponsive`] turns true once packets have waited this long for any
    /// acknowledgement (even if the peer keeps sending), so the session drops a peer that
    /// keeps itself alive but never acknowledges. At least `ack_timeout`.
    ///
    /// Default: 10 s.
    pub unresponsive_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            channels: vec![
                ChannelConfig::reliable_ordered(),
                ChannelConfig::unreliable(),
                ChannelConfig::unreliable_sequenced(),
            ],
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            keepalive_interval: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(10),
            max_ack_delay: Duration::from_millis(10),
            initial_rtt: Duration::from_millis(100),
            resend_min: Duration::from_millis(30),
            resend_max: Duration::from_secs(1),
            reliable_window: 1024,
            max_fragments_in_flight: 256,
            max_reassembly_bytes: 1024 * 1024,
            ack_timeout: Duration::from_secs(1),
            unresponsive_timeout: Duration::from_secs(10),
            max_queued_reliable_bytes: 2 * 1024 * 1024,
        }
    }
}

impl ConnectionConfig {
    /// Largest message a connection with these settings accepts on `channel` (the channel's
    /// `max_message_size`, capped for the unreliable kinds by what fits one packet), or `None`
    /// for an unknown channel. Saturates on settings [`ConnectionConfig::validate`] refuses.
    #[must_use]
    pub fn message_limit(&self, channel: ChannelId) -> Option<usize> {
        let c = self.channels.get(usize::from(channel.0))?;
        let room = self.max_packet_size.saturating_sub(wire::MAX_HEADER_LEN);
        Some(match c.kind {
            ChannelKind::ReliableOrdered => c.max_message_size,
            ChannelKind::Unreliable => c
                .max_message_size
                .min(room.saturating_sub(wire::UNRELIABLE_FRAME_HEADER)),
            _ => c
                .max_message_size
                .min(room.saturating_sub(wire::SEQUENCED_FRAME_HEADER)),
        })
    }

    /// Checks every limit; [`Connection::try_new`] calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            return Err(ConfigError::ChannelCount {
                count: self.channels.len(),
            });
        }
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&self.max_packet_size) {
            return Err(ConfigError::PacketSize {
                size: self.max_packet_size,
            });
        }
        for (field, value) in [
            ("keepalive_interval", self.keepalive_interval),
            ("idle_timeout", self.idle_timeout),
            ("initial_rtt", self.initial_rtt),
            ("resend_min", self.resend_min),
            ("ack_timeout", self.ack_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        if self.resend_max < self.resend_min {
            return Err(ConfigError::ResendRange {
                min: self.resend_min,
                max: self.resend_max,
            });
        }
        if !(1..=MAX_RELIABLE_WINDOW).contains(&self.reliable_window) {
            return Err(ConfigError::Window {
                window: self.reliable_window,
            });
        }
        if self.max_fragments_in_flight == 0 {
            return Err(ConfigError::InFlight);
        }
        if self.unresponsive_timeout < self.ack_timeout {
            return Err(ConfigError::Unresponsive {
                ack: self.ack_timeout,
                unresponsive: self.unresponsive_timeout,
            });
        }
        for (i, c) in self.channels.iter().enumerate() {
            let channel = ChannelId(i as u8);
            let max_queue = match c.kind {
                ChannelKind::Unreliable => usize::MAX,
                _ => MAX_RELIABLE_WINDOW,
            };
            if !(1..=max_queue).contains(&c.max_send_queue) {
                return Err(ConfigError::SendQueue {
                    channel,
                    size: c.max_send_queue,
                });
            }
            if c.kind == ChannelKind::ReliableOrdered
                && c.max_message_size > MAX_RELIABLE_MESSAGE_SIZE
            {
                return Err(ConfigError::MessageSize {
                    channel,
                    size: c.max_message_size,
                });
            }
            if c.kind == ChannelKind::ReliableOrdered
                && c.max_message_size > self.max_queued_reliable_bytes
            {
                return Err(ConfigError::ReliableBudget {
                    channel,
                    size: c.max_message_size,
                    budget: self.max_queued_reliable_bytes,
                });
            }
        }
        Ok(())
    }

    /// A 32-bit FNV-1a digest of the channel list (kinds and message size limits) and the
    /// packet size, for the handshake to check that both peers agree.
    pub fn fingerprint(&self) -> u32 {
        let mut h: u32 = 0x811C_9DC5;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        };
        eat(&(self.max_packet_size as u64).to_le_bytes());
        for c in &self.channels {
            let kind: u8 = match c.kind {
                ChannelKind::Unreliable => 0,
                ChannelKind::UnreliableSequenced => 1,
                ChannelKind::ReliableOrdered => 2,
            };
            eat(&[kind]);
            eat(&(c.max_message_size as u64).to_le_bytes());
        }
        h
    }
}

/// Why a [`ConnectionConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// There must be between 1 and [`MAX_CHANNELS`] channels.
    #[error("{count} channels configured; between 1 and 256 are allowed")]
    ChannelCount {
        /// Number of channels configured.
        count: usize,
    },
    /// `max_packet_size` is outside [`MIN_PACKET_SIZE`]..=[`MAX_PACKET_SIZE`].
    #[error("max_packet_size {size} is outside 128..=65507")]
    PacketSize {
        /// The configured size.
        size: usize,
    },
    /// A duration that paces the connection is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// Name of the field.
        field: &'static str,
    },
    /// `resend_max` is below `resend_min`.
    #[error("resend_max {max:?} is below resend_min {min:?}")]
    ResendRange {
        /// The configured minimum.
        min: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// `reliable_window` is outside 1..=[`MAX_RELIABLE_WINDOW`].
    #[error("reliable_window {window} is outside 1..=16384")]
    Window {
        /// The configured window.
        window: usize,
    },
    /// `max_fragments_in_flight` is zero.
    #[error("max_fragments_in_flight must be at least 1")]
    InFlight,
    /// A reliable channel's `max_message_size` exceeds `max_queued_reliable_bytes`.
    #[error("{channel}: max_message_size {size} exceeds max_queued_reliable_bytes {budget}")]
    ReliableBudget {
        /// The channel.
        channel: ChannelId,
        /// The configured message size.
        size: usize,
        /// The configured budget.
        budget: usize,
    },
    /// `unresponsive_timeout` is below `ack_timeout`.
    #[error("unresponsive_timeout {unresponsive:?} is below ack_timeout {ack:?}")]
    Unresponsive {
        /// The configured ack timeout.
        ack: Duration,
        /// The configured unresponsive timeout.
        unresponsive: Duration,
    },
    /// A channel's `max_send_queue` is zero, or above [`MAX_RELIABLE_WINDOW`] on a reliable
    /// or sequenced channel.
    #[error("{channel}: max_send_queue {size} is out of range")]
    SendQueue {
        /// The channel.
        channel: ChannelId,
        /// The configured queue size.
        size: usize,
    },
    /// A reliable channel's `max_message_size` exceeds [`MAX_RELIABLE_MESSAGE_SIZE`].
    #[error("{channel}: max_message_size {size} exceeds the reliable maximum of 4194240")]
    MessageSize {
        /// The channel.
        channel: ChannelId,
        /// The configured size.
        size: usize,
    },
}

/// Why [`Connection::send`] refused a message. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The channel id is not in the configuration.
    #[error("{channel} is not configured")]
    UnknownChannel {
        /// The channel asked for.
        channel: ChannelId,
    },
    /// The message exceeds the channel's effective maximum size.
    #[error("message of {len} bytes exceeds the channel maximum of {max}")]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// Largest message the channel takes.
        max: usize,
    },
    /// The channel's send queue is full ([`ChannelConfig::max_send_queue`]); try again after
    /// flushing (unreliable kinds) or once the peer has acknowledged earlier messages
    /// (reliable).
    #[error("{channel} send queue is full ({capacity} messages)")]
    QueueFull {
        /// The channel.
        channel: ChannelId,
        /// The queue's capacity.
        capacity: usize,
    },
    /// Reliable messages waiting for the peer's acknowledgement would exceed
    /// [`ConnectionConfig::max_queued_reliable_bytes`].
    #[error("{queued} reliable bytes already wait for the peer (budget {budget})")]
    OverBudget {
        /// Bytes already queued.
        queued: usize,
        /// The budget.
        budget: usize,
    },
}

/// Why [`Connection::handle_payload`] rejected a payload. A rejected payload changes no state
/// and does not count as a sign of life.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload is larger than [`ConnectionConfig::max_packet_size`].
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Length of the payload.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload ends inside a header or frame.
    #[error("payload is truncated")]
    Truncated,
    /// The flags byte has bits this version does not define.
    #[error("unknown flags {flags:#04x}")]
    UnknownFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A frame names a channel that is not configured.
    #[error("frame for unknown channel {channel}")]
    UnknownChannel {
        /// The channel byte.
        channel: u8,
    },
    /// A variable-length integer is longer than 3 bytes or not in its shortest form.
    #[error("malformed varint")]
    BadVarint,
    /// A message or fragment is larger than the channel admits.
    #[error("channel {channel}: message of {len} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// The channel byte.
        channel: u8,
        /// Length claimed by the frame.
        len: usize,
        /// The channel's maximum.
        max: usize,
    },
    /// A reliable frame has a fragment count of zero or above the channel's bound, an index
    /// outside the count, or a fragment too short (64 bytes for all but the last, 1 for it).
    #[error("channel {channel}: malformed fragment")]
    BadFragment {
        /// The channel byte.
        channel: u8,
    },
}

/// Counters since the connection was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Payloads produced by [`Connection::poll_transmit`].
    pub packets_sent: u64,
    /// Bytes of those payloads.
    pub bytes_sent: u64,
    /// Payloads accepted by [`Connection::handle_payload`] (including duplicates and late
    /// ones), i.e. every call that returned `Ok`.
    pub packets_received: u64,
    /// Bytes of those payloads.
    pub bytes_received: u64,
    /// Sent packets the peer acknowledged.
    pub packets_acked: u64,
    /// Estimate of sent packets lost: packets that carried messages and were still
    /// unacknowledged when the peer acknowledged one 33 or more packets later (or when their
    /// record was recycled). Corrected downwards if a late acknowledgement arrives.
    pub packets_lost: u64,
    /// Reliable fragments sent again after their resend timeout.
    pub resends: u64,
    /// Messages accepted by [`Connection::send`].
    pub messages_sent: u64,
    /// Messages made available to [`Connection::poll_message`].
    pub messages_received: u64,
    /// Duplicate packets, and duplicate reliable fragments, received and dropped.
    pub duplicates_dropped: u64,
    /// Packets too far behind (or ahead of) the packet window to be checked for duplicates,
    /// and sequenced messages older than the newest delivered, received and dropped (reliable
    /// frames in such packets are still used).
    pub stale_dropped: u64,
    /// Payloads rejected with a [`PayloadError`].
    pub bad_payloads: u64,
    /// Acknowledgement headers ignored because they acknowledged a packet not yet sent.
    pub bad_acks: u64,
    /// Reliable fragments refused because they were beyond the receive window or over
    /// [`ConnectionConfig::max_reassembly_bytes`]; the peer resends them.
    pub refused_fragments: u64,
    /// Received unreliable messages dropped because of
    /// [`ConnectionConfig::max_reassembly_bytes`].
    pub dropped_over_budget: u64,
    /// Partly reassembled messages discarded because a fragment contradicted them.
    pub reassembly_resets: u64,
    /// Pings sent while the peer was not acknowledging ([`ConnectionConfig::ack_timeout`]).
    pub pings_sent: u64,
    /// Queued unreliable messages dropped while the peer was not acknowledging.
    pub dropped_unacked: u64,
}

/// A reliable fragment carried by a sent packet.
#[derive(Debug, Clone, Copy)]
struct SentItem {
    channel: u8,
    id: u16,
    frag: u16,
}

#[derive(Debug, Default)]
struct SentPacket {
    seq: u16,
    live: bool,
    acked: bool,
    /// Counted in [`ConnectionStats::packets_lost`].
    lost: bool,
    /// Carried at least one message, so the peer owes an acknowledgement.
    eliciting: bool,
    sent_at: Duration,
    items: Vec<SentItem>,
}

#[derive(Debug, Clone, Copy)]
struct RecvSlot {
    seq: u16,
    /// All its frames were taken; only accepted packets are acknowledged.
    accepted: bool,
    /// Acknowledged in at least one packet sent since, or not owed an acknowledgement.
    reported: bool,
    received_at: Duration,
}

#[derive(Debug)]
enum Channel {
    Unreliable {
        queue: VecDeque<Vec<u8>>,
    },
    Sequenced {
        queue: VecDeque<(u16, Vec<u8>)>,
        next_id: u16,
        newest: Option<u16>,
    },
    Reliable {
        send: ReliableSend,
        recv: ReliableRecv,
    },
}

/// One peer's side of a connection; see the [module docs](self).
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    limits: Vec<ChannelLimits>,
    /// Payload bytes per fragment, chosen so a fragment frame fills an empty packet.
    frag_len: usize,
    /// Largest reliable message sent as a single frame.
    single_max: usize,
    channels: Vec<Channel>,
    now: Duration,

    // Sending.
    next_seq: u16,
    sent_any: bool,
    sent: Vec<SentPacket>,
    last_sent: Duration,
    highest_acked: Option<u16>,
    /// Next sent packet the loss estimate has not looked at.
    loss_cursor: u16,
    srtt: Duration,
    rttvar: Duration,
    rtt_sampled: bool,
    /// When the oldest packet that needs an acknowledgement, sent since the last
    /// acknowledgement of anything, went out.
    waiting_since: Option<Duration>,
    /// Pings sent since the peer last acknowledged.
    stall_pings: u32,

    // Receiving.
    recv: Vec<Option<RecvSlot>>,
    newest_seen: Option<u16>,
    newest_accepted: Option<u16>,
    /// Accepted packets owed an acknowledgement not yet given.
    unreported: usize,
    ack_pending_since: Option<Duration>,
    /// Untrusted run of packets outside the window: last sequence number and run length.
    resync: Option<(u16, u8)>,
    last_received: Duration,
    delivered: VecDeque<(ChannelId, Vec<u8>)>,
    /// Received bytes charged against `max_reassembly_bytes`.
    held: usize,

    stats: ConnectionStats,
}

fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

impl Connection {
    /// Creates a connection at time `now`, which starts the keepalive and idle timers.
    ///
    /// # Panics
    ///
    /// If `config` fails [`ConnectionConfig::validate`]; use [`Connection::try_new`] for
    /// configuration that comes from outside the program.
    pub fn new(config: ConnectionConfig, now: Duration) -> Self {
        match Self::try_new(config, now) {
            Ok(c) => c,
            Err(e) => panic!("invalid ConnectionConfig: {e}"),
        }
    }

    /// Creates a connection at time `now`, or explains why `config` is invalid.
    pub fn try_new(config: ConnectionConfig, now: Duration) -> Result<Self, ConfigError> {
        config.validate()?;
        let room = config.max_packet_size - wire::MAX_HEADER_LEN;
        let frag_len = room - wire::RELIABLE_FRAGMENT_FRAME_HEADER;
        let single_max = room - wire::RELIABLE_SINGLE_FRAME_HEADER;
        let limits = config
            .channels
            .iter()
            .map(|c| match c.kind {
                ChannelKind::ReliableOrdered => ChannelLimits {
                    kind: c.kind,
                    max_message_size: c.max_message_size,
                    max_fragments: c.max_message_size.div_ceil(wire::MIN_FRAGMENT_LEN).max(1)
                        as u16,
                },
                kind => ChannelLimits {
                    kind,
                    max_message_size: c.max_message_size.min(
                        room - if kind == ChannelKind::Unreliable {
                            wire::UNRELIABLE_FRAME_HEADER
                        } else {
                            wire::SEQUENCED_FRAME_HEADER
                        },
                    ),
                    max_fragments: 1,
                },
            })
            .collect();
        let channels = config
            .channels
            .iter()
            .map(|c| match c.kind {
                ChannelKind::Unreliable => Channel::Unreliable {
                    queue: VecDeque::new(),
                },
                ChannelKind::UnreliableSequenced => Channel::Sequenced {
                    queue: VecDeque::new(),
                    next_id: 0,
                    newest: None,
                },
                ChannelKind::ReliableOrdered => Channel::Reliable {
                    send: ReliableSend::default(),
                    recv: ReliableRecv::default(),
                },
            })
            .collect();
        let srtt = config.initial_rtt;
        Ok(Self {
            limits,
            frag_len,
            single_max,
            channels,
            now,
            next_seq: 0,
            sent_any: false,
            sent: (0..SENT_HISTORY).map(|_| SentPacket::default()).collect(),
            last_sent: now,
            highest_acked: None,
            loss_cursor: 0,
            srtt,
            rttvar: srtt / 4,
            rtt_sampled: false,
            waiting_since: None,
            stall_pings: 0,
            recv: vec![None; RECV_HISTORY],
            newest_seen: None,
            newest_accepted: None,
            unreported: 0,
            ack_pending_since: None,
            resync: None,
            last_received: now,
            delivered: VecDeque::new(),
            held: 0,
            stats: ConnectionStats::default(),
            config,
        })
    }

    /// The configuration this connection was created with.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// Largest message [`Connection::send`] accepts on `channel`, or `None` for an unknown
    /// channel.
    pub fn max_message_size(&self, channel: ChannelId) -> Option<usize> {
        self.limits
            .get(usize::from(channel.0))
            .map(|l| l.max_message_size)
    }

    fn advance(&mut self, now: Duration) -> Duration {
        self.now = self.now.max(now);
        self.now
    }

    /// Queues `message` on `channel`. It goes out in later [`Connection::poll_transmit`]
    /// calls. A reliable message is kept until the peer acknowledges it, and is never dropped
    /// while the connection lives.
    pub fn send(&mut self, channel: ChannelId, message: &[u8]) -> Result<(), SendError> {
        let index = usize::from(channel.0);
        let (Some(limits), Some(config)) =
            (self.limits.get(index), self.config.channels.get(index))
        else {
            return Err(SendError::UnknownChannel { channel });
        };
        if message.len() > limits.max_message_size {
            return Err(SendError::TooLarge {
                len: message.len(),
                max: limits.max_message_size,
            });
        }
        let capacity = config.max_send_queue;
        let full = Err(SendError::QueueFull { channel, capacity });
        let queued_reliable = self.queued_reliable_bytes();
        match &mut self.channels[index] {
            Channel::Unreliable { queue } => {
                if queue.len() >= capacity {
                    return full;
                }
                queue.push_back(message.to_vec());
            }
            Channel::Sequenced { queue, next_id, .. } => {
                if queue.len() >= capacity {
                    return full;
                }
                queue.push_back((*next_id, message.to_vec()));
                *next_id = next_id.wrapping_add(1);
            }
            Channel::Reliable { send, .. } => {
                if send.len() >= capacity {
                    return full;
                }
                let queued = queued_reliable;
                let budget = self.config.max_queued_reliable_bytes;
                if queued + message.len() > budget {
                    return Err(SendError::OverBudget { queued, budget });
                }
                let count = if message.len() <= self.single_max {
                    1
                } else {
                    // At most max_fragments (<= 65535) since frag_len >= MIN_FRAGMENT_LEN.
                    message.len().div_ceil(self.frag_len) as u16
                };
                send.push(message.to_vec(), count);
            }
        }
        self.stats.messages_sent += 1;
        Ok(())
    }

    /// Takes the next received message: per channel, in the order its kind guarantees; across
    /// channels, in the order they became available.
    pub fn poll_message(&mut self) -> Option<(ChannelId, Vec<u8>)> {
        let (channel, message) = self.delivered.pop_front()?;
        self.held -= message.len() + HELD_OVERHEAD;
        Some((channel, message))
    }

    /// Smoothed round-trip time (the configured initial value until the first measurement).
    pub fn rtt(&self) -> Duration {
        self.srtt
    }

    /// Whether [`rtt`](Self::rtt) is measured (an acknowledgement came back), not the
    /// configured initial value.
    pub fn rtt_measured(&self) -> bool {
        self.rtt_sampled
    }

    /// Counters since creation.
    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// True once nothing valid has been received for [`ConnectionConfig::idle_timeout`].
    pub fn is_timed_out(&self, now: Duration) -> bool {
        now.saturating_sub(self.last_received) >= self.config.idle_timeout
    }

    /// True while the peer has acknowledged nothing for [`ConnectionConfig::ack_timeout`]
    /// although packets that need an acknowledgement are in flight: only pings go out.
    pub fn is_stalled(&self, now: Duration) -> bool {
        self.waiting_since
            .is_some_and(|t| now.saturating_sub(t) >= self.config.ack_timeout)
    }

    /// True once the peer has acknowledged nothing for
    /// [`ConnectionConfig::unresponsive_timeout`] while packets waited for it.
    pub fn is_unresponsive(&self, now: Duration) -> bool {
        self.waiting_since
            .is_some_and(|t| now.saturating_sub(t) >= self.config.unresponsive_timeout)
    }

    /// When the next ping of a stalled connection is due: the keepalive interval, doubled per
    /// ping already sent, up to 4 times.
    fn next_ping(&self) -> Duration {
        let backoff = 1u32 << self.stall_pings.min(2);
        self.last_sent
            .saturating_add(self.config.keepalive_interval.saturating_mul(backoff))
    }

    fn rto(&self) -> Duration {
        let srtt = self.srtt;
        let base = (srtt.saturating_mul(5) / 4)
            .max(srtt.saturating_add(self.rttvar.saturating_mul(2)))
            .saturating_add(self.config.max_ack_delay);
        base.clamp(self.config.resend_min, self.config.resend_max)
    }

    /// The next time [`Connection::poll_transmit`] may have something to send (a resend, an
    /// owed acknowledgement, a keepalive) or [`Connection::is_timed_out`] may turn true. A time
    /// at or before the latest `now` passed in means "now" (messages are waiting). Always
    /// `Some` for now; `None` is reserved for a connection with nothing left to do.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t = self
            .last_sent
            .saturating_add(self.config.keepalive_interval)
            .min(self.last_received.saturating_add(self.config.idle_timeout));
        if let Some(since) = self.ack_pending_since {
            t = t.min(since.saturating_add(self.config.max_ack_delay));
        }
        if self.is_stalled(self.now) {
            return Some(t.min(self.next_ping()));
        }
        if let Some(since) = self.waiting_since {
            t = t.min(since.saturating_add(self.config.ack_timeout));
        }
        let rto = self.rto();
        let may_send_new = self.fragments_in_flight() < self.config.max_fragments_in_flight;
        for channel in &self.channels {
            let due = match channel {
                Channel::Unreliable { queue } => (!queue.is_empty()).then_some(self.now),
                Channel::Sequenced { queue, .. } => (!queue.is_empty()).then_some(self.now),
                Channel::Reliable { send, .. } => {
                    send.timeout(self.now, rto, self.config.reliable_window, may_send_new)
                }
            };
            if let Some(due) = due {
                t = t.min(due);
            }
        }
        Some(t)
    }

    /// Appends one packet payload (at most [`ConnectionConfig::max_packet_size`] bytes) to
    /// `out` if anything is due at `now`: queued messages, resends, an owed acknowledgement or
    /// a keepalive. Returns false, leaving `out` untouched, if nothing is due. Call it until it
    /// returns false.
    #[must_use = "a payload appended to `out` must be sent"]
    pub fn poll_transmit(&mut self, now: Duration, out: &mut Vec<u8>) -> bool {
        let now = self.advance(now);
        let start = out.len();
        let limit = start + self.config.max_packet_size;
        let ack = self.choose_ack(now);
        let seq = self.next_seq;
        let stalled = self.is_stalled(now);
        let ping = stalled && self.next_ping() <= now;
        wire::put_header(out, seq, ack, ping);

        let slot = usize::from(seq) % SENT_HISTORY;
        let mut items = std::mem::take(&mut self.sent[slot].items);
        items.clear();
        let wrote = if stalled {
            self.drop_unreliable();
            false
        } else {
            self.write_frames(now, out, limit, &mut items)
        };

        let mut ack_due = self
            .ack_pending_since
            .is_some_and(|since| since.saturating_add(self.config.max_ack_delay) <= now);
        if ack_due && ack.is_none_or(|ack| self.ack_news(ack) == 0) {
            // `choose_ack` always covers the oldest packet owed an acknowledgement, so this
            // cannot happen; if the bookkeeping were ever off, repair it rather than emit
            // ack-only packets forever.
            debug_assert!(false, "owed acknowledgements not found");
            self.unreported = 0;
            self.ack_pending_since = None;
            ack_due = false;
        }
        let keepalive_due = !stalled
            && self
                .last_sent
                .saturating_add(self.config.keepalive_interval)
                <= now;
        if !wrote && !ack_due && !keepalive_due && !ping {
            out.truncate(start);
            self.sent[slot].items = items;
            return false;
        }
        if let Some(ack) = ack {
            self.commit_ack(ack);
        }

        let old = &self.sent[slot];
        if old.live && old.eliciting && !old.acked && !old.lost {
            self.stats.packets_lost += 1;
        }
        self.sent[slot] = SentPacket {
            seq,
            live: true,
            acked: false,
            lost: false,
            eliciting: wrote || ping,
            sent_at: now,
            items,
        };
        if wrote || ping {
            self.waiting_since.get_or_insert(now);
        }
        if ping {
            self.stall_pings = self.stall_pings.saturating_add(1);
            self.stats.pings_sent += 1;
        }
        self.next_seq = seq.wrapping_add(1);
        self.sent_any = true;
        self.last_sent = now;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += (out.len() - start) as u64;
        debug_assert!(out.len() <= limit);
        true
    }

    /// While stalled: unreliable messages would only add to what the peer does not take.
    fn drop_unreliable(&mut self) {
        for channel in &mut self.channels {
            let dropped = match channel {
                Channel::Unreliable { queue } => std::mem::take(queue).len(),
                Channel::Sequenced { queue, .. } => std::mem::take(queue).len(),
                Channel::Reliable { .. } => 0,
            };
            self.stats.dropped_unacked += dropped as u64;
        }
    }

    /// Fills the packet with frames: unreliable channels first (latency matters most there),
    /// then reliable resends and new fragments. Every frame fits an empty packet by
    /// construction, so a packet started with something queued never goes out empty.
    fn write_frames(
        &mut self,
        now: Duration,
        out: &mut Vec<u8>,
        limit: usize,
        items: &mut Vec<SentItem>,
    ) -> bool {
        let mut wrote = false;
        let rto = self.rto();
        let window = self.config.reliable_window;
        let frag_len = self.frag_len;
        let max_in_flight = self.config.max_fragments_in_flight;
        let mut in_flight = self.fragments_in_flight();
        for (index, channel) in self.channels.iter_mut().enumerate() {
            let channel_byte = index as u8;
            match channel {
                Channel::Unreliable { queue } => {
                    while let Some(message) = queue.front() {
                        if out.len() + wire::frame_len(FrameKind::Unreliable, message.len()) > limit
                        {
                            break;
                        }
                        wire::put_frame(
                            out,
                            &Frame {
                                channel: channel_byte,
                                kind: FrameKind::Unreliable,
                                data: message,
                            },
                        );
                        queue.pop_front();
                        wrote = true;
                    }
                }
                Channel::Sequenced { queue, .. } => {
                    while let Some((id, message)) = queue.front() {
                        let kind = FrameKind::Sequenced { id: *id };
                        if out.len() + wire::frame_len(kind, message.len()) > limit {
                            break;
                        }
                        wire::put_frame(
                            out,
                            &Frame {
                                channel: channel_byte,
                                kind,
                                data: message,
                            },
                        );
                        queue.pop_front();
                        wrote = true;
                    }
                }
                Channel::Reliable { .. } => {}
            }
        }
        for (index, channel) in self.channels.iter_mut().enumerate() {
            let Channel::Reliable { send, .. } = channel else {
                continue;
            };
            let channel_byte = index as u8;
            send.purge();
            // Resends first: they are the oldest and hold up in-order delivery.
            let mut resending = true;
            loop {
                let candidate = if resending {
                    match send.due_resend(now, rto, frag_len) {
                        Some(c) => c,
                        None => {
                            resending = false;
                            continue;
                        }
                    }
                } else if in_flight >= max_in_flight {
                    break;
                } else {
                    match send.next_new(window, frag_len) {
                        Some(c) => c,
                        None => break,
                    }
                };
                let kind = FrameKind::Reliable {
                    id: candidate.id,
                    count: candidate.count,
                    index: candidate.frag,
                };
                let data = send.bytes(&candidate);
                if out.len() + wire::frame_len(kind, data.len()) > limit {
                    if resending {
                        resending = false;
                        continue;
                    }
                    break;
                }
                wire::put_frame(
                    out,
                    &Frame {
                        channel: channel_byte,
                        kind,
                        data,
                    },
                );
                if send.mark_sent(&candidate, now) {
                    self.stats.resends += 1;
                } else {
                    in_flight += 1;
                }
                items.push(SentItem {
                    channel: channel_byte,
                    id: candidate.id,
                    frag: candidate.frag,
                });
                wrote = true;
                if resending {
                    send.purge();
                }
            }
        }
        wrote
    }

    /// Bytes of reliable messages waiting for the peer's acknowledgement, all channels.
    pub fn queued_reliable_bytes(&self) -> usize {
        self.channels
            .iter()
            .map(|c| match c {
                Channel::Reliable { send, .. } => send.queued_bytes(),
                _ => 0,
            })
            .sum()
    }

    fn fragments_in_flight(&self) -> usize {
        self.channels
            .iter()
            .map(|c| match c {
                Channel::Reliable { send, .. } => send.in_flight(),
                _ => 0,
            })
            .sum()
    }

    /// Picks the acknowledgement to put in the next packet: normally the newest accepted
    /// packet and the 32 before it; but if accepted packets owed an acknowledgement lie
    /// further back than that, a base that covers the oldest of them, so that bursts of more
    /// than 33 packets between two sends are all acknowledged (one packet per 33).
    fn choose_ack(&self, now: Duration) -> Option<AckHeader> {
        let newest = self.newest_accepted?;
        let mut base = newest;
        if self.unreported > 0 {
            let oldest = (0..RECV_HISTORY as u16)
                .rev()
                .map(|back| newest.wrapping_sub(back))
                .find(|&s| {
                    self.recv_slot(s)
                        .is_some_and(|slot| slot.accepted && !slot.reported)
                });
            if let Some(oldest) = oldest {
                if newest.wrapping_sub(oldest) > ACK_BITS {
                    base = (0..=ACK_BITS)
                        .map(|k| oldest.wrapping_add(ACK_BITS - k))
                        .find(|&s| self.recv_slot(s).is_some_and(|slot| slot.accepted))
                        .unwrap_or(oldest);
                }
            }
        }
        let mut bits = 0u32;
        for i in 0..ACK_BITS {
            let s = base.wrapping_sub(1 + i);
            if self.recv_slot(s).is_some_and(|slot| slot.accepted) {
                bits |= 1 << i;
            }
        }
        let waited = self
            .recv_slot(base)
            .map_or(Duration::ZERO, |slot| now.saturating_sub(slot.received_at));
        let delay =
            u16::try_from(waited.as_nanos() / wire::ACK_DELAY_UNIT.as_nanos()).unwrap_or(u16::MAX);
        Some(AckHeader { base, bits, delay })
    }

    /// Packets owed an acknowledgement that `ack` would acknowledge.
    fn ack_news(&self, ack: AckHeader) -> usize {
        (0..=ACK_BITS)
            .filter(|&i| i == 0 || ack.bits & (1 << (i - 1)) != 0)
            .filter(|&i| {
                self.recv_slot(ack.base.wrapping_sub(i))
                    .is_some_and(|slot| slot.accepted && !slot.reported)
            })
            .count()
    }

    fn commit_ack(&mut self, ack: AckHeader) {
        for i in 0..=ACK_BITS {
            if i > 0 && ack.bits & (1 << (i - 1)) == 0 {
                continue;
            }
            let s = ack.base.wrapping_sub(i);
            let slot = &mut self.recv[usize::from(s) % RECV_HISTORY];
            if let Some(slot) = slot.as_mut().filter(|slot| slot.seq == s) {
                if slot.accepted && !slot.reported {
                    slot.reported = true;
                    self.unreported -= 1;
                }
            }
        }
        if self.unreported == 0 {
            self.ack_pending_since = None;
        }
    }

    fn recv_slot(&self, seq: u16) -> Option<&RecvSlot> {
        self.recv[usize::from(seq) % RECV_HISTORY]
            .as_ref()
            .filter(|slot| slot.seq == seq)
    }

    /// Takes one payload from the peer. A malformed payload is rejected with an error and
    /// changes nothing; duplicated, reordered and late payloads are handled and return `Ok`.
    pub fn handle_payload(&mut self, now: Duration, payload: &[u8]) -> Result<(), PayloadError> {
        let now = self.advance(now);
        if payload.len() > self.config.max_packet_size {
            self.stats.bad_payloads += 1;
            return Err(PayloadError::TooLarge {
                len: payload.len(),
                max: self.config.max_packet_size,
            });
        }
        let (header, frames) = match wire::decode(payload, &self.limits) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.stats.bad_payloads += 1;
                return Err(e);
            }
        };
        self.last_received = now;
        self.stats.packets_received += 1;
        self.stats.bytes_received += payload.len() as u64;

        let fresh = self.classify(header.seq);
        if fresh {
            if let Some(ack) = header.ack {
                self.on_ack(now, ack);
            }
        }
        let mut accepted = true;
        for frame in &frames {
            accepted &= self.on_frame(frame, fresh);
        }
        if fresh {
            self.record_received(header.seq, accepted, !frames.is_empty() || header.ping, now);
        }
        Ok(())
    }

    /// Decides whether a packet is new. Duplicates and packets outside the window still have
    /// their reliable frames used (those are deduplicated by message id), but not their
    /// unreliable frames or acknowledgements.
    fn classify(&mut self, seq: u16) -> bool {
        let Some(newest) = self.newest_seen else {
            return true;
        };
        let d = seq.wrapping_sub(newest) as i16;
        if d > -(RECV_HISTORY as i16) && d <= MAX_SEQ_JUMP as i16 {
            self.resync = None;
            if d <= 0 && self.recv_slot(seq).is_some() {
                self.stats.duplicates_dropped += 1;
                return false;
            }
            return true;
        }
        // Outside the window: a single such packet is more likely corrupt than genuine, but a
        // run of them going forward means the peer really is elsewhere (after a long outage).
        let run = match self.resync {
            Some((last, _)) if last == seq => {
                self.stats.duplicates_dropped += 1;
                return false;
            }
            Some((last, run))
                if (1..=MAX_SEQ_JUMP as i16).contains(&(seq.wrapping_sub(last) as i16)) =>
            {
                run + 1
            }
            _ => 1,
        };
        if run >= RESYNC_RUN {
            self.resync = None;
            self.recv.iter_mut().for_each(|slot| *slot = None);
            self.newest_seen = None;
            self.newest_accepted = None;
            self.unreported = 0;
            self.ack_pending_since = None;
            return true;
        }
        self.resync = Some((seq, run));
        self.stats.stale_dropped += 1;
        false
    }

    fn record_received(&mut self, seq: u16, accepted: bool, eliciting: bool, now: Duration) {
        match self.newest_seen {
            Some(newest) if !seq_newer(seq, newest) => {}
            Some(newest) => {
                // Forget the slots the window slides over.
                let gap = usize::from(seq.wrapping_sub(newest)).min(RECV_HISTORY);
                for k in 0..gap {
                    let s = seq.wrapping_sub(k as u16);
                    if let Some(old) = self.recv[usize::from(s) % RECV_HISTORY].take() {
                        if old.accepted && !old.reported {
                            self.unreported -= 1;
                        }
                    }
                }
                self.newest_seen = Some(seq);
            }
            None => self.newest_seen = Some(seq),
        }
        let owed = accepted && eliciting;
        let previous = self.recv[usize::from(seq) % RECV_HISTORY].replace(RecvSlot {
            seq,
            accepted,
            reported: !owed,
            received_at: now,
        });
        // The window invariant (every slot holds a sequence number within 256 of the newest)
        // means this slot was free; keep the count exact even if it was not.
        if previous.is_some_and(|old| old.accepted && !old.reported) {
            self.unreported -= 1;
        }
        if accepted && self.newest_accepted.is_none_or(|n| seq_newer(seq, n)) {
            self.newest_accepted = Some(seq);
        }
        if owed {
            self.unreported += 1;
            self.ack_pending_since.get_or_insert(now);
        }
        if self.unreported == 0 {
            self.ack_pending_since = None;
        }
    }

    fn on_ack(&mut self, now: Duration, ack: AckHeader) {
        let last_sent = self.next_seq.wrapping_sub(1);
        if !self.sent_any || seq_newer(ack.base, last_sent) {
            self.stats.bad_acks += 1;
            return;
        }
        for i in 0..=ACK_BITS {
            if i > 0 && ack.bits & (1 << (i - 1)) == 0 {
                continue;
            }
            let delay = (i == 0).then(|| wire::ACK_DELAY_UNIT * u32::from(ack.delay));
            self.on_packet_acked(now, ack.base.wrapping_sub(i), delay);
        }
        if self.highest_acked.is_none_or(|h| seq_newer(ack.base, h)) {
            self.highest_acked = Some(ack.base);
            self.sweep_losses(ack.base);
        }
    }

    /// `ack_delay` is given for the base of an ack header, the one packet that yields an RTT
    /// sample: the time since it was sent minus the time it waited at the peer.
    fn on_packet_acked(&mut self, now: Duration, seq: u16, ack_delay: Option<Duration>) {
        let Self {
            sent,
            channels,
            stats,
            ..
        } = self;
        let record = &mut sent[usize::from(seq) % SENT_HISTORY];
        if !record.live || record.seq != seq || record.acked {
            return;
        }
        record.acked = true;
        stats.packets_acked += 1;
        // The peer is taking what we send: pacing resumes.
        self.waiting_since = None;
        self.stall_pings = 0;
        if record.lost {
            record.lost = false;
            stats.packets_lost -= 1;
        }
        for item in &record.items {
            if let Some(Channel::Reliable { send, .. }) =
                channels.get_mut(usize::from(item.channel))
            {
                send.ack(item.id, item.frag);
            }
        }
        let sent_at = record.sent_at;
        if let Some(delay) = ack_delay {
            // A peer claiming more delay than the whole round trip is wrong; skip the sample.
            if let Some(sample) = now.saturating_sub(sent_at).checked_sub(delay) {
                self.update_rtt(sample);
            }
        }
        for channel in &mut self.channels {
            if let Channel::Reliable { send, .. } = channel {
                send.purge();
            }
        }
    }

    fn update_rtt(&mut self, sample: Duration) {
        if !self.rtt_sampled {
            self.rtt_sampled = true;
            self.srtt = sample;
            self.rttvar = sample / 2;
            return;
        }
        let deviation = sample.abs_diff(self.srtt);
        self.rttvar = self.rttvar / 4 * 3 + deviation / 4;
        self.srtt = self.srtt / 8 * 7 + sample / 8;
    }

    /// Declares lost every eliciting packet more than 32 older than `highest` that is still
    /// unacknowledged.
    fn sweep_losses(&mut self, highest: u16) {
        let mut s = self.loss_cursor;
        let behind = highest.wrapping_sub(s);
        if behind as i16 > SENT_HISTORY as i16 {
            s = highest.wrapping_sub(SENT_HISTORY as u16);
        }
        while (highest.wrapping_sub(s) as i16) > ACK_BITS as i16 {
            let record = &mut self.sent[usize::from(s) % SENT_HISTORY];
            if record.live && record.seq == s && record.eliciting && !record.acked && !record.lost {
                record.lost = true;
                self.stats.packets_lost += 1;
            }
            s = s.wrapping_add(1);
        }
        self.loss_cursor = s;
    }

    /// Handles one frame; returns false if it was refused (so the packet must not be
    /// acknowledged).
    fn on_frame(&mut self, frame: &Frame<'_>, fresh: bool) -> bool {
        let channel = ChannelId(frame.channel);
        let index = usize::from(frame.channel);
        match frame.kind {
            FrameKind::Unreliable => {
                if fresh {
                    self.deliver_unreliable(channel, frame.data);
                }
                true
            }
            FrameKind::Sequenced { id } => {
                if !fresh {
                    return true;
                }
                let Some(Channel::Sequenced { newest, .. }) = self.channels.get_mut(index) else {
                    return true;
                };
                if newest.is_some_and(|n| !seq_newer(id, n)) {
                    self.stats.stale_dropped += 1;
                    return true;
                }
                if self.deliver_unreliable(channel, frame.data) {
                    if let Some(Channel::Sequenced { newest, .. }) = self.channels.get_mut(index) {
                        *newest = Some(id);
                    }
                }
                true
            }
            FrameKind::Reliable {
                id,
                count,
                index: frag,
            } => {
                let window = self.config.reliable_window;
                let max = self.limits[index].max_message_size;
                let delivery_queue_empty = self.delivered.is_empty();
                let Some(Channel::Reliable { recv, .. }) = self.channels.get_mut(index) else {
                    return true;
                };
                let outcome = recv.insert(
                    id,
                    count,
                    frag,
                    frame.data,
                    window,
                    max,
                    Budget {
                        held: &mut self.held,
                        max: self.config.max_reassembly_bytes,
                        delivery_queue_empty,
                    },
                    &mut self.stats,
                );
                match outcome {
                    Insert::Accepted => {
                        while let Some(message) = recv.pop_ready() {
                            self.delivered.push_back((channel, message));
                            self.stats.messages_received += 1;
                        }
                        true
                    }
                    Insert::Duplicate => {
                        self.stats.duplicates_dropped += 1;
                        true
                    }
                    Insert::Refused => {
                        self.stats.refused_fragments += 1;
                        false
                    }
                }
            }
        }
    }

    /// Queues an unreliable or sequenced message for delivery if the budget allows; returns
    /// whether it did.
    fn deliver_unreliable(&mut self, channel: ChannelId, data: &[u8]) -> bool {
        let cost = data.len() + HELD_OVERHEAD;
        if self.held + cost > self.config.max_reassembly_bytes {
            self.stats.dropped_over_budget += 1;
            return false;
        }
        self.held += cost;
        self.delivered.push_back((channel, data.to_vec()));
        self.stats.messages_received += 1;
        true
    }
}
