//! Session packets: the outer format of every datagram statewire sends.
//!
//! Before a session exists, packets are in clear (they carry no secret, except the
//! development mode's `Accepted`). After it, every packet is sealed (see [`crate::crypto`]).
//!
//! ```text
//! development mode (no tokens):
//! 0x10 ConnectRequest     protocol:u64 version:u16 salt:u64 channels:u32, zero padding to REQUEST_LEN
//! 0x11 Challenge          salt:u64 expires_ms:u64 mac:u64
//! 0x12 ChallengeResponse  salt:u64 expires_ms:u64 mac:u64, zero padding to REQUEST_LEN
//! 0x13 Accepted           salt:u64 client_id:u64 c2s_key:[32] s2c_key:[32]   (keys in clear)
//! 0x14 Rejected           salt:u64 reason:u8 server_version:u16
//! with connect tokens:
//! 0x15 TokenRequest       protocol:u64 version:u16 channels:u32 expires:u64 nonce:[24]
//!                         sealed_token:[208], zero padding to TOKEN_REQUEST_LEN
//! 0x16 TokenResponse      the TokenRequest fields, then answer:[41] (a sealed 0x26 packet:
//!                         the challenge cookie, under the client-to-server key), padding
//! sealed (kind:u8 seq:u64 ciphertext tag:[16]; see crate::crypto):
//! 0x21 Challenge  {expires_ms:u64 mac:u64}       server → client, token mode
//! 0x22 Accepted   {client_id:u64}                server → client, token mode
//! 0x23 Rejected   {reason:u8 server_version:u16} server → client, token mode
//! 0x24 Data       {connection payload}           both ways, both modes
//! 0x25 Disconnect {code:u8}                      both ways, both modes
//! 0x26 Answer     {expires_ms:u64 mac:u64}       inside TokenResponse
//! ```
//! All integers little-endian. Requests are padded so that, before a client has proved it
//! receives at its address, every reply is smaller than the request that caused it (no
//! amplification).

use thiserror::Error;

use crate::crypto::seal::SEALED_OVERHEAD;
use crate::crypto::token::{NONCE_LEN, SEALED_LEN};
use crate::crypto::{KEY_LEN, PrivateToken};

/// Size every development-mode connect request and challenge response is padded to.
pub const REQUEST_LEN: usize = 100;
/// Size every token request and token response is padded to.
pub const TOKEN_REQUEST_LEN: usize = 320;

const CONNECT_REQUEST: u8 = 0x10;
const CHALLENGE: u8 = 0x11;
const CHALLENGE_RESPONSE: u8 = 0x12;
const ACCEPTED: u8 = 0x13;
const REJECTED: u8 = 0x14;
const TOKEN_REQUEST: u8 = 0x15;
const TOKEN_RESPONSE: u8 = 0x16;

/// Kinds of sealed packets (the first byte of a sealed datagram).
pub(crate) mod sealed {
    /// Token mode: the challenge cookie.
    pub(crate) const CHALLENGE: u8 = 0x21;
    /// Token mode: the session is open; the client's id.
    pub(crate) const ACCEPTED: u8 = 0x22;
    /// Token mode: refused, with a reason.
    pub(crate) const REJECTED: u8 = 0x23;
    /// A connection payload.
    pub(crate) const DATA: u8 = 0x24;
    /// The session is over.
    pub(crate) const DISCONNECT: u8 = 0x25;
    /// Token mode: the client's answer to the challenge.
    pub(crate) const ANSWER: u8 = 0x26;
}

/// Bytes of the sealed answer inside a TokenResponse.
pub(crate) const ANSWER_LEN: usize = SEALED_OVERHEAD + 16;
/// Bytes of the token fields common to TokenRequest and TokenResponse.
const TOKEN_FIELDS_LEN: usize = 8 + 2 + 4 + 8 + NONCE_LEN + SEALED_LEN;

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
    /// The connect token expired.
    TokenExpired,
    /// The connect token is not for this server's address.
    WrongServer,
    /// The connect token, or its client id, is in use by another address.
    TokenInUse,
    /// The server requires a connect token (it runs with a token key).
    TokenRequired,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::ProtocolMismatch => "another game (protocol id)",
            RejectReason::VersionMismatch => "another protocol version",
            RejectReason::ServerFull => "the server is full",
            RejectReason::BadChallenge => "the challenge cookie was invalid or expired",
            RejectReason::ChannelMismatch => "another channel configuration",
            RejectReason::TokenExpired => "the connect token expired",
            RejectReason::WrongServer => "the connect token is for another server",
            RejectReason::TokenInUse => "the connect token is in use from another address",
            RejectReason::TokenRequired => "the server requires a connect token",
        })
    }
}

impl RejectReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            RejectReason::ProtocolMismatch => 1,
            RejectReason::VersionMismatch => 2,
            RejectReason::ServerFull => 3,
            RejectReason::BadChallenge => 4,
            RejectReason::ChannelMismatch => 5,
            RejectReason::TokenExpired => 6,
            RejectReason::WrongServer => 7,
            RejectReason::TokenInUse => 8,
            RejectReason::TokenRequired => 9,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => RejectReason::ProtocolMismatch,
            2 => RejectReason::VersionMismatch,
            3 => RejectReason::ServerFull,
            4 => RejectReason::BadChallenge,
            5 => RejectReason::ChannelMismatch,
            6 => RejectReason::TokenExpired,
            7 => RejectReason::WrongServer,
            8 => RejectReason::TokenInUse,
            9 => RejectReason::TokenRequired,
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
    pub(crate) fn code(self) -> u8 {
        match self {
            DisconnectCode::Left => 1,
            DisconnectCode::Kicked => 2,
            DisconnectCode::Shutdown => 3,
            DisconnectCode::ProtocolError => 4,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
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
    /// Keyed hash over the client's address, the attempt and the expiry.
    pub mac: u64,
}

impl Cookie {
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.expires_ms.to_le_bytes());
        b[8..].copy_from_slice(&self.mac.to_le_bytes());
        b
    }
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Cookie> {
        if b.len() != 16 {
            return None;
        }
        let mut c = Cursor { rest: b };
        Some(Cookie {
            expires_ms: c.u64(),
            mac: c.u64(),
        })
    }
}

/// The token fields of a TokenRequest or TokenResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFields {
    /// The game's protocol id.
    pub protocol: u64,
    /// The game's protocol version.
    pub version: u16,
    /// Fingerprint of the client's channel configuration.
    pub channels: u32,
    /// The token's expiry (seconds since the Unix epoch), authenticated by the seal.
    pub expires: u64,
    /// The sealed private token.
    pub token: PrivateToken,
}

/// One decoded session packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Packet<'a> {
    /// Client → server, development mode: please connect.
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
    /// Server → client, development mode: prove you receive at this address.
    Challenge {
        /// The client's salt.
        salt: u64,
        /// Cookie to echo.
        cookie: Cookie,
    },
    /// Client → server, development mode: the echoed cookie.
    ChallengeResponse {
        /// The client's salt.
        salt: u64,
        /// The cookie from the challenge.
        cookie: Cookie,
    },
    /// Server → client, development mode: connected. The session keys travel in clear:
    /// development mode protects against off-path attackers only.
    Accepted {
        /// The client's salt.
        salt: u64,
        /// The id the server assigned.
        client_id: u64,
        /// Key of the client-to-server direction.
        c2s: [u8; KEY_LEN],
        /// Key of the server-to-client direction.
        s2c: [u8; KEY_LEN],
    },
    /// Server → client, development mode: refused.
    Rejected {
        /// The client's salt.
        salt: u64,
        /// Why.
        reason: RejectReason,
        /// The server's protocol version, so the client can say which it needs.
        server_version: u16,
    },
    /// Client → server: please connect, with a connect token.
    TokenRequest(TokenFields),
    /// Client → server: the token again (the server keeps nothing per request), with the
    /// sealed answer to the challenge.
    TokenResponse {
        /// As in the request.
        fields: TokenFields,
        /// A sealed answer packet (kind `0x26`) holding the cookie.
        answer: &'a [u8],
    },
    /// A sealed packet (kind `0x21..=0x26`); the whole datagram, opened by the endpoint.
    Sealed {
        /// The kind byte.
        kind: u8,
        /// The datagram.
        bytes: &'a [u8],
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
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
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
        let bad_len = || PacketError::BadLength {
            kind,
            len: bytes.len(),
        };
        let need = |len: usize| {
            if bytes.len() == len {
                Ok(())
            } else {
                Err(bad_len())
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
                    channels: c.u32(),
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
                need(1 + 16 + 2 * KEY_LEN)?;
                Packet::Accepted {
                    salt: c.u64(),
                    client_id: c.u64(),
                    c2s: c.take(),
                    s2c: c.take(),
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
            TOKEN_REQUEST | TOKEN_RESPONSE => {
                need(TOKEN_REQUEST_LEN)?;
                let used = 1
                    + TOKEN_FIELDS_LEN
                    + if kind == TOKEN_RESPONSE {
                        ANSWER_LEN
                    } else {
                        0
                    };
                padded(used)?;
                let protocol = c.u64();
                let version = c.u16();
                let channels = c.u32();
                let expires = c.u64();
                let token = PrivateToken {
                    nonce: c.take(),
                    sealed: c.take(),
                };
                let answer = &bytes[1 + TOKEN_FIELDS_LEN..used];
                let fields = TokenFields {
                    protocol,
                    version,
                    channels,
                    expires,
                    token,
                };
                if kind == TOKEN_REQUEST {
                    Packet::TokenRequest(fields)
                } else {
                    Packet::TokenResponse { fields, answer }
                }
            }
            sealed::CHALLENGE..=sealed::ANSWER => {
                if bytes.len() < SEALED_OVERHEAD {
                    return Err(bad_len());
                }
                Packet::Sealed { kind, bytes }
            }
            other => return Err(PacketError::UnknownType(other)),
        })
    }

    /// Appends the encoded packet to `out` (a [`Packet::Sealed`] is appended as it is).
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
                out.extend_from_slice(&cookie.to_bytes());
            }
            Packet::ChallengeResponse { salt, cookie } => {
                out.push(CHALLENGE_RESPONSE);
                out.extend_from_slice(&salt.to_le_bytes());
                out.extend_from_slice(&cookie.to_bytes());
                out.resize(start + REQUEST_LEN, 0);
            }
            Packet::Accepted {
                salt,
                client_id,
                c2s,
                s2c,
            } => {
                out.push(ACCEPTED);
                out.extend_from_slice(&salt.to_le_bytes());
                out.extend_from_slice(&client_id.to_le_bytes());
                out.extend_from_slice(&c2s);
                out.extend_from_slice(&s2c);
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
            Packet::TokenRequest(fields) => {
                out.push(TOKEN_REQUEST);
                put_token_fields(out, &fields);
                out.resize(start + TOKEN_REQUEST_LEN, 0);
            }
            Packet::TokenResponse { fields, answer } => {
                out.push(TOKEN_RESPONSE);
                put_token_fields(out, &fields);
                out.extend_from_slice(answer);
                out.resize(start + TOKEN_REQUEST_LEN, 0);
            }
            Packet::Sealed { bytes, .. } => out.extend_from_slice(bytes),
        }
    }
}

fn put_token_fields(out: &mut Vec<u8>, f: &TokenFields) {
    out.extend_from_slice(&f.protocol.to_le_bytes());
    out.extend_from_slice(&f.version.to_le_bytes());
    out.extend_from_slice(&f.channels.to_le_bytes());
    out.extend_from_slice(&f.expires.to_le_bytes());
    out.extend_from_slice(&f.token.nonce);
    out.extend_from_slice(&f.token.sealed);
}

/// Plaintext of a sealed Rejected: `reason:u8 server_version:u16`.
pub(crate) fn rejected_body(reason: RejectReason, server_version: u16) -> [u8; 3] {
    let v = server_version.to_le_bytes();
    [reason.code(), v[0], v[1]]
}

/// Reads the plaintext of a sealed Rejected.
pub(crate) fn parse_rejected(plain: &[u8]) -> Option<(RejectReason, u16)> {
    match *plain {
        [code, a, b] => Some((RejectReason::from_code(code)?, u16::from_le_bytes([a, b]))),
        _ => None,
    }
}

/// Bytes sealing adds to a connection payload: kind, sequence number, tag.
pub const DATA_HEADER_LEN: usize = SEALED_OVERHEAD;

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

/// Polls `conn` for its next packet and, if there is one, writes it into `out` as a sealed
/// Data datagram (`payload` is scratch space).
pub(crate) fn poll_data(
    conn: &mut crate::connection::Connection,
    crypto: &mut crate::crypto::seal::SessionCrypto,
    now: std::time::Duration,
    payload: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> bool {
    payload.clear();
    if !conn.poll_transmit(now, payload) {
        return false;
    }
    out.clear();
    crypto.seal(sealed::DATA, payload, out);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{ConnectToken, Key, TokenParams};
    use proptest::prelude::*;

    fn token_fields() -> TokenFields {
        let t = ConnectToken::generate(
            &Key::from_bytes([1; 32]),
            &TokenParams {
                protocol_id: 1,
                client_id: statewire_core::ClientId(3),
                server_addrs: vec!["127.0.0.1:1".parse().unwrap()],
                expires_unix_secs: 10,
                timeout_secs: 5,
                user_data: [0; 32],
            },
        )
        .unwrap();
        TokenFields {
            protocol: 1,
            version: 2,
            channels: 4,
            expires: 10,
            token: t.private,
        }
    }

    fn all(answer: &[u8]) -> Vec<Packet<'_>> {
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
                c2s: [1; KEY_LEN],
                s2c: [2; KEY_LEN],
            },
            Packet::Rejected {
                salt: 3,
                reason: RejectReason::TokenInUse,
                server_version: 7,
            },
            Packet::TokenRequest(token_fields()),
            Packet::TokenResponse {
                fields: token_fields(),
                answer,
            },
        ]
    }

    #[test]
    fn round_trip_every_packet() {
        let answer = [sealed::ANSWER; ANSWER_LEN];
        for p in all(&answer) {
            let mut out = Vec::new();
            p.encode(&mut out);
            assert_eq!(Packet::decode(&out), Ok(p));
        }
    }

    #[test]
    fn replies_before_validation_are_smaller_than_requests() {
        // Clear replies are smaller than the development-mode request, sealed ones (the
        // token mode's challenge, acceptance and refusal) than the token request.
        let answer = [0; ANSWER_LEN];
        for p in all(&answer) {
            let mut out = Vec::new();
            p.encode(&mut out);
            if matches!(
                p,
                Packet::Challenge { .. } | Packet::Rejected { .. } | Packet::Accepted { .. }
            ) {
                assert!(out.len() < REQUEST_LEN, "{p:?}: {}", out.len());
            }
        }
        const {
            assert!(SEALED_OVERHEAD + 16 < TOKEN_REQUEST_LEN);
            assert!(1 + TOKEN_FIELDS_LEN + ANSWER_LEN <= TOKEN_REQUEST_LEN);
        }
    }

    #[test]
    fn malformed_packets_are_typed_errors() {
        assert_eq!(Packet::decode(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::decode(&[0x99]), Err(PacketError::UnknownType(0x99)));
        let mut req = Vec::new();
        all(&[])[0].encode(&mut req);
        assert!(matches!(
            Packet::decode(&req[..50]),
            Err(PacketError::BadLength { .. })
        ));
        req[REQUEST_LEN - 1] = 1;
        assert_eq!(Packet::decode(&req), Err(PacketError::BadPadding));
        assert!(matches!(
            Packet::decode(&[sealed::DATA, 0, 0]),
            Err(PacketError::BadLength { .. })
        ));
        let mut rej = Vec::new();
        all(&[])[4].encode(&mut rej);
        rej[9] = 99;
        assert_eq!(Packet::decode(&rej), Err(PacketError::BadCode(99)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(p) = Packet::decode(&data) {
                let mut out = Vec::new();
                p.encode(&mut out);
                prop_assert_eq!(out, data);
            }
        }
    }
}
