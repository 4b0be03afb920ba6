//! Cryptography of sessions: keys, connect tokens, per-packet AEAD and the replay window.
//!
//! Nothing here is home-made cryptography: packets are sealed with ChaCha20-Poly1305 (RFC 8439)
//! and connect tokens with XChaCha20-Poly1305, both from the RustCrypto `chacha20poly1305`
//! crate; keys come from the operating system's CSPRNG (`getrandom`); cookies are SipHash-2-4
//! MACs. This module only decides what is sealed, with which key, nonce and associated data.
//!
//! - [`Key`]: a 256-bit secret. A server has one for its cookies and development-mode session
//!   keys; a token backend has one to seal connect tokens.
//! - [`ConnectToken`]: what a trusted backend hands a client, netcode.io style.
//! - The sealed packet format and [`ReplayWindow`] are used by the session endpoints.

mod replay;
pub(crate) mod seal;
pub mod token;

pub use replay::{REPLAY_WINDOW, ReplayWindow};
pub use token::{
    ConnectToken, MAX_TOKEN_ADDRS, PrivateToken, TOKEN_USER_DATA_LEN, TokenError, TokenParams,
};

use std::fmt;

/// Bytes of a [`Key`].
pub const KEY_LEN: usize = 32;

/// A 256-bit secret key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// A fresh key from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source (see [`Key::try_random`]).
    #[must_use]
    pub fn random() -> Key {
        match Key::try_random() {
            Ok(k) => k,
            Err(e) => panic!("the operating system's random source failed: {e}"),
        }
    }

    /// A fresh key from the operating system's CSPRNG, or why there is none.
    pub fn try_random() -> Result<Key, getrandom::Error> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k)?;
        Ok(Key(k))
    }

    /// A key with these bytes (from a key file, or fixed in a reproducible test).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// The key's bytes (to write a key file).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// A deterministic generator of secrets (session keys, client ids, cookie keys) seeded from
/// a server's [`Key`]: ChaCha20 as a DRBG. With a random key its output is unpredictable;
/// with a fixed key (tests, seeded simulations) it is reproducible.
pub(crate) struct SecretStream(rand_chacha::ChaCha20Rng);

impl SecretStream {
    pub(crate) fn new(seed: &Key) -> Self {
        use rand_core::SeedableRng;
        SecretStream(rand_chacha::ChaCha20Rng::from_seed(*seed.bytes()))
    }

    pub(crate) fn u64(&mut self) -> u64 {
        use rand_core::RngCore;
        self.0.next_u64()
    }

    pub(crate) fn key(&mut self) -> Key {
        use rand_core::RngCore;
        let mut k = [0u8; KEY_LEN];
        self.0.fill_bytes(&mut k);
        Key(k)
    }
}

impl fmt::Debug for SecretStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretStream(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_debug_hides_them() {
        let a = Key::random();
        let b = Key::random();
        assert_ne!(a, b);
        let shown = format!("{a:?}");
        assert!(!shown.contains(&format!("{}", a.0[0])) || shown == "Key(<secret>)");
        assert_eq!(shown, "Key(<secret>)");
    }

    #[test]
    fn secret_stream_is_reproducible_per_seed() {
        let k = Key::from_bytes([3; KEY_LEN]);
        let mut a = SecretStream::new(&k);
        let mut b = SecretStream::new(&k);
        let mut c = SecretStream::new(&Key::from_bytes([4; KEY_LEN]));
        let (x, y, z) = (a.u64(), b.u64(), c.u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_eq!(a.key(), b.key());
    }
}
