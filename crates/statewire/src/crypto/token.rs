//! Connect tokens, netcode.io style.
//!
//! A trusted backend (the `statewire token` command, later the lobby) holds a private [`Key`]
//! that it shares with its game servers, never with clients. For each player it makes a
//! [`ConnectToken`]: a public part the client reads (its id, the servers, the expiry and the
//! two session keys) and a [`PrivateToken`] sealed with XChaCha20-Poly1305 under the backend
//! key, which the client forwards unread in its connect request. A server opens the private
//! part and so learns, from a source it trusts, who the client is and which keys the session
//! uses; a client without a token from the backend cannot connect.
//!
//! ```text
//! private (plaintext, 192 bytes, zero-padded):
//!   client_id:u64 timeout_secs:u32 user_data:[32] c2s_key:[32] s2c_key:[32]
//!   addr_count:u8 addr*    addr = 4:u8 ip:[4] port:u16 | 6:u8 ip:[16] port:u16
//! sealed  = XChaCha20-Poly1305(backend key, nonce:[24],
//!             ad = "statewire token 1" ‖ protocol:u64le ‖ expires_unix_secs:u64le)
//! token (encode) = 1:u8 protocol:u64 expires:u64 client_id:u64 timeout:u32
//!                  addr_count:u8 addr* c2s:[32] s2c:[32] nonce:[24] sealed:[208]
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use statewire_core::ClientId;

use super::{KEY_LEN, Key, random_bytes};

/// Most server addresses one token names.
pub const MAX_TOKEN_ADDRS: usize = 4;
/// Bytes of game data a token carries to the server (e.g. an account id from the lobby).
pub const TOKEN_USER_DATA_LEN: usize = 32;
/// Bytes of the private part before sealing.
const PRIVATE_LEN: usize = 192;
/// Bytes of the sealed private part.
pub(crate) const SEALED_LEN: usize = PRIVATE_LEN + 16;
/// Bytes of the XChaCha20 nonce.
pub(crate) const NONCE_LEN: usize = 24;
/// Format version of an encoded token.
const TOKEN_VERSION: u8 = 1;
const TOKEN_AD: &[u8] = b"statewire token 1";

/// What a backend puts in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParams {
    /// The game's protocol id ([`crate::SessionConfig::protocol_id`]).
    pub protocol_id: u64,
    /// The id the client will have on the server.
    pub client_id: ClientId,
    /// Addresses of the servers the token is valid for (1 to [`MAX_TOKEN_ADDRS`]), as the
    /// servers know themselves ([`crate::TokenConfig::public_addrs`]).
    pub server_addrs: Vec<SocketAddr>,
    /// Seconds since the Unix epoch after which servers refuse the token.
    pub expires_unix_secs: u64,
    /// Idle timeout of the session, in seconds (at least 1).
    pub timeout_secs: u32,
    /// Game data for the server (the client never sees it).
    pub user_data: [u8; TOKEN_USER_DATA_LEN],
}

/// Why a token could not be made, read or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A token names 1 to [`MAX_TOKEN_ADDRS`] server addresses.
    #[error("a token names between 1 and {MAX_TOKEN_ADDRS} server addresses, not {0}")]
    AddrCount(usize),
    /// The timeout is zero.
    #[error("the session timeout must be at least 1 second")]
    ZeroTimeout,
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// The encoded token ends early, has trailing bytes or a bad field.
    #[error("the token is malformed")]
    Malformed,
    /// The encoded token is of another format version.
    #[error("token format version {0} is not supported (this build reads version 1)")]
    Version(u8),
    /// The private part does not open under the backend key: forged, tampered, or made
    /// with another key or for another game.
    #[error("the token does not authenticate (forged, tampered, or for another key or game)")]
    Forged,
}

/// The sealed part of a token: opaque to the client, opened by the server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PrivateToken {
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) sealed: [u8; SEALED_LEN],
}

impl std::fmt::Debug for PrivateToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateToken(<sealed>)")
    }
}

/// What a server learns from a private token it opened.
#[derive(Debug, Clone)]
pub(crate) struct OpenedToken {
    pub(crate) client_id: ClientId,
    pub(crate) timeout_secs: u32,
    pub(crate) user_data: [u8; TOKEN_USER_DATA_LEN],
    pub(crate) client_to_server: Key,
    pub(crate) server_to_client: Key,
    pub(crate) server_addrs: smallvec::SmallVec<[SocketAddr; MAX_TOKEN_ADDRS]>,
}

/// A connect token as the backend gives it to a client; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// The game's protocol id.
    pub protocol_id: u64,
    /// Seconds since the Unix epoch after which servers refuse it.
    pub expires_unix_secs: u64,
    /// The id the client will have.
    pub client_id: ClientId,
    /// Idle timeout of the session, in seconds.
    pub timeout_secs: u32,
    /// Servers the token is valid for; the client connects to one of them.
    pub server_addrs: Vec<SocketAddr>,
    /// Key of the client-to-server direction.
    pub client_to_server_key: Key,
    /// Key of the server-to-client direction.
    pub server_to_client_key: Key,
    /// The sealed part the client forwards.
    pub private: PrivateToken,
}

fn ad(protocol_id: u64, expires: u64) -> Vec<u8> {
    let mut ad = TOKEN_AD.to_vec();
    ad.extend_from_slice(&protocol_id.to_le_bytes());
    ad.extend_from_slice(&expires.to_le_bytes());
    ad
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

/// Reader over a bounded slice; every read checks the length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(TokenError::Malformed)?;
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        self.take(N)?.try_into().map_err(|_| TokenError::Malformed)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, TokenError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, TokenError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn addr(&mut self) -> Result<SocketAddr, TokenError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(TokenError::Malformed),
        };
        let port = u16::from_le_bytes(self.array()?);
        Ok(SocketAddr::new(ip, port))
    }
    fn addrs(&mut self) -> Result<smallvec::SmallVec<[SocketAddr; MAX_TOKEN_ADDRS]>, TokenError> {
        let n = usize::from(self.u8()?);
        if n == 0 || n > MAX_TOKEN_ADDRS {
            return Err(TokenError::Malformed);
        }
        (0..n).map(|_| self.addr()).collect()
    }
}

impl ConnectToken {
    /// Makes a token for `params`, sealed with the backend's `key`; the session keys and the
    /// nonce come from the operating system's CSPRNG.
    pub fn generate(key: &Key, params: &TokenParams) -> Result<ConnectToken, TokenError> {
        let n = params.server_addrs.len();
        if n == 0 || n > MAX_TOKEN_ADDRS {
            return Err(TokenError::AddrCount(n));
        }
        if params.timeout_secs == 0 {
            return Err(TokenError::ZeroTimeout);
        }
        let mut secrets = [0u8; 2 * KEY_LEN + NONCE_LEN];
        random_bytes(&mut secrets).map_err(|e| TokenError::Random(e.to_string()))?;
        let c2s: [u8; KEY_LEN] = secrets[..KEY_LEN].try_into().unwrap_or_default();
        let s2c: [u8; KEY_LEN] = secrets[KEY_LEN..2 * KEY_LEN].try_into().unwrap_or_default();
        let nonce: [u8; NONCE_LEN] = secrets[2 * KEY_LEN..].try_into().unwrap_or([0; NONCE_LEN]);

        let mut plain = Vec::with_capacity(PRIVATE_LEN);
        plain.extend_from_slice(&params.client_id.0.to_le_bytes());
        plain.extend_from_slice(&params.timeout_secs.to_le_bytes());
        plain.extend_from_slice(&params.user_data);
        plain.extend_from_slice(&c2s);
        plain.extend_from_slice(&s2c);
        plain.push(n as u8);
        for a in &params.server_addrs {
            put_addr(&mut plain, a);
        }
        debug_assert!(plain.len() <= PRIVATE_LEN);
        plain.resize(PRIVATE_LEN, 0);
        let cipher = XChaCha20Poly1305::new(key.bytes().into());
        let tag = cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &ad(params.protocol_id, params.expires_unix_secs),
                &mut plain,
            )
            .map_err(|_| TokenError::Malformed)?;
        plain.extend_from_slice(&tag);
        let sealed: [u8; SEALED_LEN] = plain.try_into().map_err(|_| TokenError::Malformed)?;
        Ok(ConnectToken {
            protocol_id: params.protocol_id,
            expires_unix_secs: params.expires_unix_secs,
            client_id: params.client_id,
            timeout_secs: params.timeout_secs,
            server_addrs: params.server_addrs.clone(),
            client_to_server_key: Key::from_bytes(c2s),
            server_to_client_key: Key::from_bytes(s2c),
            private: PrivateToken { nonce, sealed },
        })
    }

    /// The token as bytes, for the backend to hand to the client (over a channel that keeps
    /// it secret: it holds the session keys).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(400);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&self.protocol_id.to_le_bytes());
        out.extend_from_slice(&self.expires_unix_secs.to_le_bytes());
        out.extend_from_slice(&self.client_id.0.to_le_bytes());
        out.extend_from_slice(&self.timeout_secs.to_le_bytes());
        out.push(self.server_addrs.len().min(MAX_TOKEN_ADDRS) as u8);
        for a in self.server_addrs.iter().take(MAX_TOKEN_ADDRS) {
            put_addr(&mut out, a);
        }
        out.extend_from_slice(self.client_to_server_key.bytes());
        out.extend_from_slice(self.server_to_client_key.bytes());
        out.extend_from_slice(&self.private.nonce);
        out.extend_from_slice(&self.private.sealed);
        out
    }

    /// Reads a token made by [`ConnectToken::encode`].
    pub fn decode(bytes: &[u8]) -> Result<ConnectToken, TokenError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != TOKEN_VERSION {
            return Err(TokenError::Version(version));
        }
        let protocol_id = r.u64()?;
        let expires_unix_secs = r.u64()?;
        let client_id = ClientId(r.u64()?);
        let timeout_secs = r.u32()?;
        let server_addrs = r.addrs()?.into_vec();
        let c2s = Key::from_bytes(r.array()?);
        let s2c = Key::from_bytes(r.array()?);
        let nonce = r.array()?;
        let sealed = r.array()?;
        if !r.0.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(ConnectToken {
            protocol_id,
            expires_unix_secs,
            client_id,
            timeout_secs,
            server_addrs,
            client_to_server_key: c2s,
            server_to_client_key: s2c,
            private: PrivateToken { nonce, sealed },
        })
    }
}

impl PrivateToken {
    /// Opens the private part with the backend `key`; `protocol_id` and `expires` come from
    /// the request and are authenticated by the seal.
    pub(crate) fn open(
        &self,
        key: &Key,
        protocol_id: u64,
        expires: u64,
    ) -> Result<OpenedToken, TokenError> {
        let (body, tag) = self.sealed.split_at(PRIVATE_LEN);
        let mut plain = [0u8; PRIVATE_LEN];
        plain.copy_from_slice(body);
        XChaCha20Poly1305::new(key.bytes().into())
            .decrypt_in_place_detached(
                XNonce::from_slice(&self.nonce),
                &ad(protocol_id, expires),
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| TokenError::Forged)?;
        let mut r = Reader(&plain);
        Ok(OpenedToken {
            client_id: ClientId(r.u64()?),
            timeout_secs: r.u32()?,
            user_data: r.array()?,
            client_to_server: Key::from_bytes(r.array()?),
            server_to_client: Key::from_bytes(r.array()?),
            server_addrs: r.addrs()?,
        })
    }

    /// A short fingerprint of the token (its Poly1305 tag), for the server's table of
    /// tokens in use.
    pub(crate) fn id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.sealed[PRIVATE_LEN..]);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TokenParams {
        TokenParams {
            protocol_id: 9,
            client_id: ClientId(0xdead_beef),
            server_addrs: vec![
                "127.0.0.1:7777".parse().unwrap(),
                "[::1]:7778".parse().unwrap(),
            ],
            expires_unix_secs: 1_000,
            timeout_secs: 10,
            user_data: [5; TOKEN_USER_DATA_LEN],
        }
    }

    #[test]
    fn generate_encode_decode_open() {
        let key = Key::from_bytes([1; 32]);
        let t = ConnectToken::generate(&key, &params()).unwrap();
        let back = ConnectToken::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        let opened = t.private.open(&key, 9, 1_000).unwrap();
        assert_eq!(opened.client_id, ClientId(0xdead_beef));
        assert_eq!(opened.client_to_server, t.client_to_server_key);
        assert_eq!(opened.server_to_client, t.server_to_client_key);
        assert_eq!(
            opened.server_addrs.as_slice(),
            params().server_addrs.as_slice()
        );
        assert_eq!(opened.user_data, [5; TOKEN_USER_DATA_LEN]);
        // Fresh keys per token.
        let t2 = ConnectToken::generate(&key, &params()).unwrap();
        assert_ne!(t2.client_to_server_key, t.client_to_server_key);
    }

    #[test]
    fn forged_tampered_or_relabelled_tokens_do_not_open() {
        let key = Key::from_bytes([1; 32]);
        let t = ConnectToken::generate(&key, &params()).unwrap();
        let other = Key::from_bytes([2; 32]);
        assert_eq!(
            t.private.open(&other, 9, 1_000).err(),
            Some(TokenError::Forged)
        );
        // A longer expiry or another game: the seal covers both.
        assert_eq!(
            t.private.open(&key, 9, 2_000).err(),
            Some(TokenError::Forged)
        );
        assert_eq!(
            t.private.open(&key, 10, 1_000).err(),
            Some(TokenError::Forged)
        );
        for i in [0, 50, SEALED_LEN - 1] {
            let mut bad = t.private;
            bad.sealed[i] ^= 1;
            assert_eq!(bad.open(&key, 9, 1_000).err(), Some(TokenError::Forged));
        }
    }

    #[test]
    fn bad_params_and_malformed_encodings_are_errors() {
        let key = Key::from_bytes([1; 32]);
        let mut p = params();
        p.server_addrs.clear();
        assert_eq!(
            ConnectToken::generate(&key, &p).err(),
            Some(TokenError::AddrCount(0))
        );
        p.server_addrs = vec!["127.0.0.1:1".parse().unwrap(); 5];
        assert_eq!(
            ConnectToken::generate(&key, &p).err(),
            Some(TokenError::AddrCount(5))
        );
        let bytes = ConnectToken::generate(&key, &params()).unwrap().encode();
        for len in 0..bytes.len() {
            assert!(ConnectToken::decode(&bytes[..len]).is_err(), "length {len}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            ConnectToken::decode(&long).err(),
            Some(TokenError::Malformed)
        );
        let mut v2 = bytes;
        v2[0] = 2;
        assert_eq!(
            ConnectToken::decode(&v2).err(),
            Some(TokenError::Version(2))
        );
    }
}
