//! Relay tickets: how the lobby grants relay allocations without telling the relay.
//!
//! The lobby and its relays share a [`Key`]. When a host and a joiner cannot punch through
//! their NATs, the lobby picks a random [`AllocId`] and gives each end a [`RelayTicket`] naming
//! that allocation and the end's [`Role`], sealed with XChaCha20-Poly1305 under the shared key.
//! An end presents its ticket to the relay in a `Bind` ([`crate::relay`]); the relay opens it
//! and so learns, from a source it trusts, that this address may be that end of that
//! allocation. The relay keeps no list of grants: the ticket is the grant. An end cannot read,
//! change or make a ticket.
//!
//! ```text
//! plaintext (17 bytes): alloc_id:u64 role:u8 expires_unix_secs:u64
//!                       role = 0 host | 1 joiner
//! sealed = XChaCha20-Poly1305(relay key, nonce:[24], ad = "statewire relay ticket 1")
//! ticket (58 bytes) = version:u8 (1) nonce:[24] sealed:[17 + 16]
//! ```
//!
//! All integers are little-endian. A ticket is refused once `now_unix_secs >=
//! expires_unix_secs`. A ticket is a bearer credential until it expires: the lobby hands it
//! to its end over the lobby's encrypted channel, and should keep its lifetime short.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use statewire::Key;

/// Bytes of the plaintext inside a ticket.
const PLAIN_LEN: usize = 8 + 1 + 8;
/// Bytes of the Poly1305 tag.
const TAG_LEN: usize = 16;
/// Bytes of the XChaCha20 nonce.
const NONCE_LEN: usize = 24;
/// Format version of an encoded ticket.
const TICKET_VERSION: u8 = 1;
const TICKET_AD: &[u8] = b"statewire relay ticket 1";
/// Bytes of an encoded [`RelayTicket`].
pub const TICKET_LEN: usize = 1 + NONCE_LEN + PLAIN_LEN + TAG_LEN;

/// The id of one relay allocation: a pair of ends the relay forwards between. The lobby picks
/// it at random, so ids of different games do not collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocId(pub u64);

impl fmt::Display for AllocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "alloc-{:016x}", self.0)
    }
}

/// Which end of an allocation a ticket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The player hosting the game (wire value 0).
    Host,
    /// The player joining it (wire value 1).
    Joiner,
}

impl Role {
    /// The role's wire value.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            Role::Host => 0,
            Role::Joiner => 1,
        }
    }

    /// The role with this wire value, if any.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            0 => Some(Role::Host),
            1 => Some(Role::Joiner),
            _ => None,
        }
    }

    /// The other end of the allocation.
    #[must_use]
    pub fn other(self) -> Role {
        match self {
            Role::Host => Role::Joiner,
            Role::Joiner => Role::Host,
        }
    }

    /// 0 for the host, 1 for the joiner: an index into a pair of ends.
    pub(crate) fn index(self) -> usize {
        usize::from(self.to_u8())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Host => "host",
            Role::Joiner => "joiner",
        })
    }
}

/// What the lobby puts in a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketParams {
    /// The allocation the ticket grants (random, chosen by the lobby).
    pub alloc_id: AllocId,
    /// Which end of it the holder is.
    pub role: Role,
    /// Seconds since the Unix epoch from which the relay refuses the ticket.
    pub expires_unix_secs: u64,
}

/// Why a ticket could not be made, read or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// The bytes are not [`TICKET_LEN`] long, or the opened plaintext has a bad field.
    #[error("the relay ticket is malformed")]
    Malformed,
    /// The ticket is of another format version.
    #[error("relay ticket format version {0} is not supported (this build reads version 1)")]
    Version(u8),
    /// The ticket does not open under the relay key: forged, tampered, or sealed with
    /// another key.
    #[error("the relay ticket does not authenticate (forged, tampered, or for another key)")]
    Forged,
    /// The ticket is authentic but its expiry has passed.
    #[error("the relay ticket expired at {expires_unix_secs} (Unix seconds)")]
    Expired {
        /// The allocation the ticket named.
        alloc_id: AllocId,
        /// When it expired, in seconds since the Unix epoch.
        expires_unix_secs: u64,
    },
}

/// A sealed ticket: opaque to the ends, opened by the relay; see the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelayTicket {
    bytes: [u8; TICKET_LEN],
}

impl fmt::Debug for RelayTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayTicket(<sealed>)")
    }
}

/// Reader over a bounded slice; every read checks the length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(TicketError::Malformed)?;
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        self.take(N)?.try_into().map_err(|_| TicketError::Malformed)
    }
    fn u8(&mut self) -> Result<u8, TicketError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, TicketError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

fn cipher(key: &Key) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&key.to_bytes().into())
}

impl RelayTicket {
    /// Seals a ticket for `params` under the relay `key`, with a nonce from the operating
    /// system's CSPRNG.
    pub fn seal(key: &Key, params: &TicketParams) -> Result<RelayTicket, TicketError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| TicketError::Random(e.to_string()))?;
        let mut plain = [0u8; PLAIN_LEN];
        plain[..8].copy_from_slice(&params.alloc_id.0.to_le_bytes());
        plain[8] = params.role.to_u8();
        plain[9..].copy_from_slice(&params.expires_unix_secs.to_le_bytes());
        let tag = cipher(key)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), TICKET_AD, &mut plain)
            .map_err(|_| TicketError::Malformed)?;
        let mut bytes = [0u8; TICKET_LEN];
        bytes[0] = TICKET_VERSION;
        bytes[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        bytes[1 + NONCE_LEN..1 + NONCE_LEN + PLAIN_LEN].copy_from_slice(&plain);
        bytes[1 + NONCE_LEN + PLAIN_LEN..].copy_from_slice(&tag);
        Ok(RelayTicket { bytes })
    }

    /// The encoded ticket, for the lobby to hand to an end and the end to put in a `Bind`.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; TICKET_LEN] {
        &self.bytes
    }

    /// Reads an encoded ticket. This checks only its length and version; whether it is
    /// authentic is known when the relay [opens](RelayTicket::open) it.
    pub fn from_bytes(bytes: &[u8]) -> Result<RelayTicket, TicketError> {
        let bytes: [u8; TICKET_LEN] = bytes.try_into().map_err(|_| TicketError::Malformed)?;
        if bytes[0] != TICKET_VERSION {
            return Err(TicketError::Version(bytes[0]));
        }
        Ok(RelayTicket { bytes })
    }

    /// Opens the ticket with the relay `key` and checks that it has not expired at
    /// `now_unix_secs`.
    pub fn open(&self, key: &Key, now_unix_secs: u64) -> Result<TicketParams, TicketError> {
        let params = self.open_unchecked(key)?;
        if params.expires_unix_secs <= now_unix_secs {
            return Err(TicketError::Expired {
                alloc_id: params.alloc_id,
                expires_unix_secs: params.expires_unix_secs,
            });
        }
        Ok(params)
    }

    /// Opens the ticket without looking at its expiry.
    fn open_unchecked(&self, key: &Key) -> Result<TicketParams, TicketError> {
        let mut r = Reader(&self.bytes);
        let version = r.u8()?;
        if version != TICKET_VERSION {
            return Err(TicketError::Version(version));
        }
        let nonce: [u8; NONCE_LEN] = r.array()?;
        let mut plain: [u8; PLAIN_LEN] = r.array()?;
        let tag: [u8; TAG_LEN] = r.array()?;
        cipher(key)
            .decrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                TICKET_AD,
                &mut plain,
                Tag::from_slice(&tag),
            )
            .map_err(|_| TicketError::Forged)?;
        let mut r = Reader(&plain);
        let alloc_id = AllocId(r.u64()?);
        // Only the lobby's own bug could seal a bad role; refuse it all the same.
        let role = Role::from_u8(r.u8()?).ok_or(TicketError::Malformed)?;
        let expires_unix_secs = r.u64()?;
        Ok(TicketParams {
            alloc_id,
            role,
            expires_unix_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TicketParams {
        TicketParams {
            alloc_id: AllocId(0x0123_4567_89ab_cdef),
            role: Role::Joiner,
            expires_unix_secs: 1_000,
        }
    }

    #[test]
    fn seal_encode_decode_open() {
        let key = Key::from_bytes([1; 32]);
        let t = RelayTicket::seal(&key, &params()).unwrap();
        let back = RelayTicket::from_bytes(t.as_bytes()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.open(&key, 999).unwrap(), params());
        let host = TicketParams {
            role: Role::Host,
            ..params()
        };
        assert_eq!(
            RelayTicket::seal(&key, &host)
                .unwrap()
                .open(&key, 0)
                .unwrap(),
            host
        );
        // Fresh nonce per ticket.
        let t2 = RelayTicket::seal(&key, &params()).unwrap();
        assert_ne!(t2.as_bytes(), t.as_bytes());
        assert_eq!(format!("{t:?}"), "RelayTicket(<sealed>)");
    }

    #[test]
    fn forged_tampered_expired_and_truncated_tickets_are_refused() {
        let key = Key::from_bytes([1; 32]);
        let t = RelayTicket::seal(&key, &params()).unwrap();
        let other = Key::from_bytes([2; 32]);
        assert_eq!(t.open(&other, 0), Err(TicketError::Forged));
        for i in 1..TICKET_LEN {
            let mut bytes = *t.as_bytes();
            bytes[i] ^= 0x40;
            let bad = RelayTicket::from_bytes(&bytes).unwrap();
            assert_eq!(bad.open(&key, 0), Err(TicketError::Forged), "byte {i}");
        }
        assert_eq!(
            t.open(&key, 1_000),
            Err(TicketError::Expired {
                alloc_id: params().alloc_id,
                expires_unix_secs: 1_000
            })
        );
        assert!(t.open(&key, u64::MAX).is_err());
        for len in 0..TICKET_LEN {
            assert_eq!(
                RelayTicket::from_bytes(&t.as_bytes()[..len]),
                Err(TicketError::Malformed),
                "length {len}"
            );
        }
        let mut long = t.as_bytes().to_vec();
        long.push(0);
        assert_eq!(RelayTicket::from_bytes(&long), Err(TicketError::Malformed));
        let mut v2 = *t.as_bytes();
        v2[0] = 2;
        assert_eq!(RelayTicket::from_bytes(&v2), Err(TicketError::Version(2)));
    }

    #[test]
    fn a_sealed_bad_role_is_malformed() {
        // Seal a plaintext with role 7 by hand, as a buggy lobby would.
        let key = Key::from_bytes([3; 32]);
        let mut t = RelayTicket::seal(&key, &params()).unwrap();
        let nonce: [u8; NONCE_LEN] = t.bytes[1..1 + NONCE_LEN].try_into().unwrap();
        let mut plain = [0u8; PLAIN_LEN];
        plain[8] = 7;
        let tag = cipher(&key)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), TICKET_AD, &mut plain)
            .unwrap();
        t.bytes[1 + NONCE_LEN..1 + NONCE_LEN + PLAIN_LEN].copy_from_slice(&plain);
        t.bytes[1 + NONCE_LEN + PLAIN_LEN..].copy_from_slice(&tag);
        assert_eq!(t.open(&key, 0), Err(TicketError::Malformed));
    }
}
