//! Session packets: the outer header of every datagram statewire sends.
//!
//! ```text
//! 0x10 ConnectRequest     protocol:u64 version:u16 salt:u64 channels:u32
//!                         zero padding to REQUEST_LEN
//! 0x11 Challenge          salt:u64 expires_ms:u64 mac:u64
//! 0x12 ChallengeResponse  salt:u64 expires_ms:u64 mac:u64 zero padding to REQUEST_LEN
//! 0x13 Accepted           salt:u64 client_id:u64 token:u64
//! 0x14 Rejected           salt:u64 reason:u8 server_version:u16
//! 0x20 Data               mac:u64 payload (connection layer)
//!                         mac = SipHash-2-4 keyed with the session token, over the payload
//! 0x21 Disconnect         token:u64 reason:u8
//! ```
//! All integers little-endian. Requests are padded so that, before a client is validated,
//! every reply is smaller than the request that caused it (no amplification). The session
//! token travels once, in `Accepted`; data packets carry a MAC keyed with it instead, so a
//! corrupted or off-path forged payload is dropped before the connection layer sees it.
//! (There is no encryption: an on-path observer who saw `Accepted` can still forge.)

use thiserror::Error;

/// Size every connect request and challenge response is padded to.
pub const REQUEST_LEN: usize = 100;

const CONNECT_REQUEST: u8 = 0x10;
const CHALLENGE: u8 = 0x11;
const CHALLENGE_RESPONSE: u8 = 0x12;
const ACCEPTED: u8 = 0x13;
const REJECTED: u8 = 0x14;
const DATA: u8 = 0x20;
const DISCONNECT: u8 = 0x21;

/// Why the server refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// Different protocol id: not a statewire game of this kind.
    ProtocolMismatch,
    /// Same protocol, different version.
    VersionMismatch,
    /// The server is full.
    ServerFull,
    /// The challenge cookie was invalid or expired.
    BadChallenge,
    /// Same protocol and version, but a different channel configuration.
    ChannelMismatch,
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            RejectReason::ProtocolMismatch => 1,
            RejectReason::VersionMismatch => 2,
            RejectReason::ServerFull => 3,
            RejectReason::BadChallenge => 4,
            RejectReason::ChannelMismatch => 5,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => RejectReason::ProtocolMismatch,
            2 => RejectReason::VersionMismatch,
            3 => RejectReason::ServerFull,
            4 => RejectReason::BadChallenge,
            5 => RejectReason::ChannelMismatch,
            _ => return None,
        })
    }
}

/// Why a connection ended, as sent in a Disconnect packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectCode {
    /// The peer chose to leave.
    Left,
    /// The server removed the client.
    Kicked,
    /// The server is shutting down.
    Shutdown,
    /// The peer broke the protocol.
    ProtocolError,
}

impl DisconnectCode {
    fn code(self) -> u8 {
        match self {
            DisconnectCode::Left => 1,
            DisconnectCode::Kicked => 2,
            DisconnectCode::Shutdown => 3,
            DisconnectCode::ProtocolError => 4,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => DisconnectCode::Left,
            2 => DisconnectCode::Kicked,
            3 => DisconnectCode::Shutdown,
            4 => DisconnectCode::ProtocolError,
            _ => return None,
        })
    }
}

/// A stateless challenge cookie: the server can check it without remembering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie {
    /// Server time (ms) after which the cookie is refused.
    pub expires_ms: u64,
    /// Keyed hash over the client's address, salt and expiry.
    pub mac: u64,
}

/// One decoded session packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Packet<'a> {
    /// Client → server: please connect.
    ConnectRequest {
        /// The game's protocol id.
        protocol: u64,
        /// The game's protocol version.
        version: u16,
        /// Random per attempt; echoed by the server.
        salt: u64,
        /// Fingerprint of the client's channel configuration.
        channels: u32,
    },
    /// Server → client: prove you receive at this address.
    Challenge {
        /// The client's salt.
        salt: u64,
        /// Cookie to echo.
        cookie: Cookie,
    },
    /// Client → server: the echoed cookie.
    ChallengeResponse {
        /// The client's salt.
        salt: u64,
        /// The cookie from the challenge.
        cookie: Cookie,
    },
    /// Server → client: connected.
    Accepted {
        /// The client's salt.
        salt: u64,
        /// The id the server assigned.
        client_id: u64,
        /// Token that authenticates later packets of this session.
        token: u64,
    },
    /// Server → client: refused.
    Rejected {
        /// The client's salt.
        salt: u64,
        /// Why.
        reason: RejectReason,
        /// The server's protocol version, so the client can say which it needs.
        server_version: u16,
    },
    /// Connection-layer payload of an established session.
    Data {
        /// MAC of the payload keyed with the session token ([`data_mac`]).
        mac: u64,
        /// Connection payload.
        payload: &'a [u8],
    },
    /// The session is over.
    Disconnect {
        /// Session token.
        token: u64,
        /// Why.
        code: DisconnectCode,
    },
}

/// Errors from [`Packet::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Empty datagram.
    #[error("empty datagram")]
    Empty,
    /// Unknown packet type.
    #[error("unknown packet type {0:#04x}")]
    UnknownType(u8),
    /// Wrong length for the packet type.
    #[error("packet type {kind:#04x} of {len} bytes")]
    BadLength {
        /// Packet type.
        kind: u8,
        /// Length received.
        len: usize,
    },
    /// Padding bytes are not zero.
    #[error("non-zero padding")]
    BadPadding,
    /// An enumerated code is unknown.
    #[error("unknown code {0}")]
    BadCode(u8),
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        // Callers check the total length first; a short slice yields zeros, never a panic.
        let mut out = [0u8; N];
        if let Some((head, tail)) = self.rest.split_at_checked(N) {
            out.copy_from_slice(head);
            self.rest = tail;
        }
        out
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    pub fn decode(bytes: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        let (&kind, body) = bytes.split_first().ok_or(PacketError::Empty)?;
        let need = |len: usize| {
            if bytes.len() == len {
                Ok(())
            } else {
                Err(PacketError::BadLength {
                    kind,
                    len: bytes.len(),
                })
            }
        };
        let mut c = Cursor { rest: body };
        let padded = |used: usize| {
            if bytes[used..].iter().all(|&b| b == 0) {
                Ok(())
            } else {
                Err(PacketError::BadPadding)
            }
        };
        Ok(match kind {
            CONNECT_REQUEST => {
                need(REQUEST_LEN)?;
                padded(1 + 8 + 2 + 8 + 4)?;
                Packet::ConnectRequest {
                    protocol: c.u64(),
                    version: c.u16(),
                    salt: c.u64(),
                    channels: u32::from_le_bytes(c.take()),
                }
            }
            CHALLENGE => {
                need(1 + 24)?;
                Packet::Challenge {
                    salt: c.u64(),
                    cookie: Cookie {
                        expires_ms: c.u64(),
                        mac: c.u64(),
                    },
                }
            }
            CHALLENGE_RESPONSE => {
                need(REQUEST_LEN)?;
                padded(1 + 24)?;
                Packet::ChallengeResponse {
                    salt: c.u64(),
                    cookie: Cookie {
                        expires_ms: c.u64(),
                        mac: c.u64(),
                    },
                }
            }
            ACCEPTED => {
                need(1 + 24)?;
                Packet::Accepted {
                    salt: c.u64(),
                    client_id: c.u64(),
                    token: c.u64(),
                }
            }
            REJECTED => {
                need(1 + 8 + 1 + 2)?;
                let salt = c.u64();
                let code = c.u8();
                Packet::Rejected {
                    salt,
                    reason: RejectReason::from_code(code).ok_or(PacketError::BadCode(code))?,
                    server_version: c.u16(),
                }
            }
            DATA => {
                if bytes.len() < 9 {
                    return Err(PacketError::BadLength {
                        kind,
                        len: bytes.len(),
                    });
                }
                let mac = c.u64();
                Packet::Data {
                    mac,
                    payload: c.rest,
                }
            }
            DISCONNECT => {
                need(1 + 8 + 1)?;
                let token = c.u64();
                let code = c.u8();
                Packet::Disconnect {
                    token,
                    code: DisconnectCode::from_code(code).ok_or(PacketError::BadCode(code))?,
                }
            }
            other => return Err(PacketError::UnknownType(other)),
        })
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match *self {
            Packet::ConnectRequest {
                protocol,
                version,
                salt,
                channels,
            } => {
                out.push(CONNECT_REQUEST);
                out.extend_from_slice(&protocol.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&salt.to_le_bytes());
                out.extend_from_slice(&channels.to_le_bytes());
                out.resize(start + REQUEST_LEN, 0);
            }
            Packet::Challenge { salt, cookie } => {
                out.push(CHALLENGE);
                out.extend_from_slice(&salt.to_le_bytes());
                out.extend_from_slice(&cookie.expires_ms.to_le_bytes());
                out.extend_from_slice(&cookie.mac.to_le_bytes());
            }
            Packet::ChallengeResponse { salt, cookie } => {
                out.push(CHALLENGE_RESPONSE);
                out.extend_from_slice(&salt.to_le_bytes());
                out.extend_from_slice(&cookie.expires_ms.to_le_bytes());
                out.extend_from_slice(&cookie.mac.to_le_bytes());
                out.resize(start + REQUEST_LEN, 0);
            }
            Packet::Accepted {
                salt,
                client_id,
                token,
            } => {
                out.push(ACCEPTED);
                out.extend_from_slice(&salt.to_le_bytes());
                out.extend_from_slice(&client_id.to_le_bytes());
                out.extend_from_slice(&token.to_le_bytes());
            }
            Packet::Rejected {
                salt,
                reason,
                server_version,
            } => {
                out.push(REJECTED);
                out.extend_from_slice(&salt.to_le_bytes());
                out.push(reason.code());
                out.extend_from_slice(&server_version.to_le_bytes());
            }
            Packet::Data { mac, payload } => {
                out.push(DATA);
                out.extend_from_slice(&mac.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Packet::Disconnect { token, code } => {
                out.push(DISCONNECT);
                out.extend_from_slice(&token.to_le_bytes());
                out.push(code.code());
            }
        }
    }
}

/// Bytes the Data header adds before the connection payload.
pub const DATA_HEADER_LEN: usize = 9;

/// Largest datagram a session endpoint grows its receive buffer to.
const MAX_DATAGRAM: usize = 16 << 20;

/// Receives the next datagram into `buf`, growing `buf` when the transport reports it too
/// small (up to [`MAX_DATAGRAM`]; a transport that needs more is broken and its error is
/// returned).
pub(crate) fn recv_growing<T: statewire_transport::Transport + ?Sized>(
    transport: &mut T,
    buf: &mut Vec<u8>,
) -> Result<Option<statewire_transport::Received>, statewire_transport::TransportError> {
    use statewire_transport::TransportError;
    match transport.recv(buf) {
        Err(TransportError::BufferTooSmall { needed, .. })
            if needed > buf.len() && needed <= MAX_DATAGRAM =>
        {
            buf.resize(needed, 0);
            transport.recv(buf)
        }
        other => other,
    }
}

/// Polls `conn` for its next packet and, if there is one, writes it into `out` as a session
/// Data datagram under `token` (`payload` is scratch space).
pub(crate) fn poll_data(
    conn: &mut crate::connection::Connection,
    token: u64,
    now: std::time::Duration,
    payload: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> bool {
    payload.clear();
    if !conn.poll_transmit(now, payload) {
        return false;
    }
    out.clear();
    Packet::Data {
        mac: data_mac(token, payload),
        payload,
    }
    .encode(out);
    true
}

/// The MAC of a data payload under a session `token`.
#[must_use]
pub fn data_mac(token: u64, payload: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h =
        siphasher::sip::SipHasher24::new_with_keys(token, token.rotate_left(32) ^ 0x6461_7461);
    h.write(payload);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<Packet<'static>> {
        let cookie = Cookie {
            expires_ms: 5,
            mac: 6,
        };
        vec![
            Packet::ConnectRequest {
                protocol: 1,
                version: 2,
                salt: 3,
                channels: 4,
            },
            Packet::Challenge { salt: 3, cookie },
            Packet::ChallengeResponse { salt: 3, cookie },
            Packet::Accepted {
                salt: 3,
                client_id: 9,
                token: 10,
            },
            Packet::Rejected {
                salt: 3,
                reason: RejectReason::VersionMismatch,
                server_version: 7,
            },
            Packet::Data {
                mac: 10,
                payload: b"hello",
            },
            Packet::Disconnect {
                token: 10,
                code: DisconnectCode::Kicked,
            },
        ]
    }

    #[test]
    fn round_trip_every_packet() {
        for p in all() {
            let mut out = Vec::new();
            p.encode(&mut out);
            assert_eq!(Packet::decode(&out), Ok(p));
        }
    }

    #[test]
    fn replies_before_validation_are_smaller_than_requests() {
        for p in all() {
            let mut out = Vec::new();
            p.encode(&mut out);
            match p {
                Packet::Challenge { .. } | Packet::Rejected { .. } | Packet::Accepted { .. } => {
                    assert!(out.len() < REQUEST_LEN, "{p:?}: {}", out.len())
                }
                _ => {}
            }
        }
    }

    #[test]
    fn data_mac_depends_on_token_and_every_byte() {
        let m = data_mac(7, b"hello");
        assert_eq!(m, data_mac(7, b"hello"));
        assert_ne!(m, data_mac(8, b"hello"));
        assert_ne!(m, data_mac(7, b"hellp"));
        assert_ne!(m, data_mac(7, b"hell"));
    }

    #[test]
    fn malformed_packets_are_typed_errors() {
        assert_eq!(Packet::decode(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::decode(&[0x99]), Err(PacketError::UnknownType(0x99)));
        let mut req = Vec::new();
        all()[0].encode(&mut req);
        assert!(matches!(
            Packet::decode(&req[..50]),
            Err(PacketError::BadLength { .. })
        ));
        req[REQUEST_LEN - 1] = 1;
        assert_eq!(Packet::decode(&req), Err(PacketError::BadPadding));
        assert_eq!(
            Packet::decode(&[DISCONNECT, 0, 0, 0, 0, 0, 0, 0, 0, 99]),
            Err(PacketError::BadCode(99))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Packet::decode(&data) {
                let mut out = Vec::new();
                p.encode(&mut out);
                prop_assert_eq!(out, data);
            }
        }
    }
}
