//! The sealed packet: every packet of an established session (and the token handshake's
//! challenge, acceptance and refusal) is ChaCha20-Poly1305 encrypted and authenticated.
//!
//! ```text
//! sealed = kind:u8  seq:u64le  ciphertext  tag:16
//! nonce  = 0:u32 ‖ seq:u64le                     (96 bits; one key per direction)
//! ad     = "statewire" ‖ protocol:u64le ‖ version:u16le ‖ kind:u8
//! ```
//! Each direction of a session has its own key, so a server's packet reflected back to it
//! fails authentication, and the sequence number never repeats under one key: it counts up
//! from 0 for session packets, and pre-session packets of the token handshake use random
//! numbers with the top bit set.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

use super::{Key, ReplayWindow};

/// Bytes of the Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds around its plaintext.
pub(crate) const SEALED_OVERHEAD: usize = 1 + 8 + TAG_LEN;
/// Top bit of the sequence numbers of pre-session packets.
pub(crate) const PRE_SESSION_SEQ: u64 = 1 << 63;

/// The cipher of one direction of a session.
#[derive(Clone)]
pub(crate) struct Cipher(ChaCha20Poly1305);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<secret>)")
    }
}

/// What every sealed packet of one game authenticates besides its own bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub(crate) protocol: u64,
    pub(crate) version: u16,
}

impl Context {
    fn ad(self, kind: u8) -> [u8; 20] {
        let mut ad = [0u8; 20];
        ad[..9].copy_from_slice(b"statewire");
        ad[9..17].copy_from_slice(&self.protocol.to_le_bytes());
        ad[17..19].copy_from_slice(&self.version.to_le_bytes());
        ad[19] = kind;
        ad
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

/// Why a sealed packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Shorter than a sealed header and tag.
    Short,
    /// The tag did not verify: forged, corrupted, reflected, or under another key.
    Forged,
}

impl Cipher {
    pub(crate) fn new(key: &Key) -> Self {
        Cipher(ChaCha20Poly1305::new(key.bytes().into()))
    }

    /// Appends `kind ‖ seq ‖ seal(plaintext) ‖ tag` to `out`.
    pub(crate) fn seal(
        &self,
        ctx: Context,
        kind: u8,
        seq: u64,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.push(kind);
        out.extend_from_slice(&seq.to_le_bytes());
        let start = out.len();
        out.extend_from_slice(plaintext);
        // Encryption fails only for plaintexts over 256 GiB.
        match self
            .0
            .encrypt_in_place_detached(&nonce(seq), &ctx.ad(kind), &mut out[start..])
        {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => out.truncate(start - 9),
        }
    }

    /// Authenticates and decrypts the sealed packet `data` (header included) into `plain`
    /// (cleared first). The caller has checked the sequence number against its replay window.
    pub(crate) fn open(
        &self,
        ctx: Context,
        data: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        if data.len() < SEALED_OVERHEAD {
            return Err(OpenError::Short);
        }
        let kind = data[0];
        let seq = header_seq(data).ok_or(OpenError::Short)?;
        let (body, tag) = data[9..].split_at(data.len() - 9 - TAG_LEN);
        plain.clear();
        plain.extend_from_slice(body);
        self.0
            .decrypt_in_place_detached(&nonce(seq), &ctx.ad(kind), plain, Tag::from_slice(tag))
            .map_err(|_| {
                plain.clear();
                OpenError::Forged
            })
    }
}

/// The sequence number of a sealed packet, read before any decryption.
pub(crate) fn header_seq(data: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = data.get(1..9)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Both directions of an established session: seals with our key and a counter, opens
/// with the peer's key behind a [`ReplayWindow`].
#[derive(Debug)]
pub(crate) struct SessionCrypto {
    ctx: Context,
    send: Cipher,
    next_seq: u64,
    recv: Cipher,
    window: ReplayWindow,
}

/// Why a sealed packet of a session was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its sequence number was seen before or is older than the window.
    Replayed,
    /// It did not authenticate (or is too short to).
    Forged,
}

impl SessionCrypto {
    pub(crate) fn new(ctx: Context, send: &Key, recv: &Key) -> Self {
        SessionCrypto {
            ctx,
            send: Cipher::new(send),
            next_seq: 0,
            recv: Cipher::new(recv),
            window: ReplayWindow::new(),
        }
    }

    /// Seals `plaintext` as a packet of `kind` under the next sequence number.
    pub(crate) fn seal(&mut self, kind: u8, plaintext: &[u8], out: &mut Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send.seal(self.ctx, kind, seq, plaintext, out);
    }

    /// Opens a sealed packet from the peer into `plain`; returns its kind.
    pub(crate) fn open(&mut self, data: &[u8], plain: &mut Vec<u8>) -> Result<u8, Refused> {
        let seq = header_seq(data).ok_or(Refused::Forged)?;
        if seq & PRE_SESSION_SEQ != 0 {
            // A pre-session packet (a token challenge or refusal, sealed under the same
            // server-to-client key) is never part of the session: accepting its number would
            // move the window past every session number.
            return Err(Refused::Forged);
        }
        if self.window.is_replay(seq) {
            return Err(Refused::Replayed);
        }
        self.recv
            .open(self.ctx, data, plain)
            .map_err(|_| Refused::Forged)?;
        self.window.accept(seq);
        Ok(data[0])
    }

    /// Marks `seq` as received (a handshake packet opened outside [`SessionCrypto::open`]).
    pub(crate) fn mark_received(&mut self, seq: u64) {
        self.window.accept(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Context = Context {
        protocol: 7,
        version: 1,
    };

    #[test]
    fn sessions_refuse_replays_reflections_and_forgeries() {
        let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
        let mut client = SessionCrypto::new(CTX, &a, &b);
        let mut server = SessionCrypto::new(CTX, &b, &a);
        let mut plain = Vec::new();
        let mut p1 = Vec::new();
        client.seal(0x24, b"one", &mut p1);
        assert_eq!(server.open(&p1, &mut plain), Ok(0x24));
        assert_eq!(plain, b"one");
        assert_eq!(server.open(&p1, &mut plain), Err(Refused::Replayed));
        // The server's own packet sent back to it: sealed under the other direction's key.
        let mut own = Vec::new();
        server.seal(0x24, b"mine", &mut own);
        own.clear();
        server.seal(0x24, b"mine", &mut own);
        assert_eq!(
            header_seq(&own),
            Some(1),
            "a number the server has not received"
        );
        assert_eq!(server.open(&own, &mut plain), Err(Refused::Forged));
        // A forged packet with a fresh sequence number does not move the window.
        let mut forged = own.clone();
        forged[1..9].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(server.open(&forged, &mut plain), Err(Refused::Forged));
        let mut p2 = Vec::new();
        client.seal(0x24, b"two", &mut p2);
        assert_eq!(server.open(&p2, &mut plain), Ok(0x24));
    }

    #[test]
    fn a_pre_session_packet_under_the_session_key_does_not_move_the_window() {
        let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
        let mut server = SessionCrypto::new(CTX, &a, &b);
        let mut client = SessionCrypto::new(CTX, &b, &a);
        let mut plain = Vec::new();
        // A token challenge: the server-to-client key, a pre-session number.
        let mut challenge = Vec::new();
        Cipher::new(&a).seal(CTX, 0x21, PRE_SESSION_SEQ | 5, b"cookie", &mut challenge);
        assert_eq!(client.open(&challenge, &mut plain), Err(Refused::Forged));
        let mut data = Vec::new();
        server.seal(0x24, b"data", &mut data);
        assert_eq!(client.open(&data, &mut plain), Ok(0x24));
    }

    #[test]
    fn round_trip_and_every_tamper_is_refused() {
        let c = Cipher::new(&Key::from_bytes([1; 32]));
        let mut out = Vec::new();
        c.seal(CTX, 0x24, 5, b"payload", &mut out);
        assert_eq!(out.len(), b"payload".len() + SEALED_OVERHEAD);
        assert_eq!(header_seq(&out), Some(5));
        let mut plain = Vec::new();
        c.open(CTX, &out, &mut plain).unwrap();
        assert_eq!(plain, b"payload");
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                c.open(CTX, &bad, &mut plain),
                Err(OpenError::Forged),
                "byte {i}"
            );
        }
        let other = Cipher::new(&Key::from_bytes([2; 32]));
        assert_eq!(other.open(CTX, &out, &mut plain), Err(OpenError::Forged));
        let ctx2 = Context {
            protocol: 8,
            version: 1,
        };
        assert_eq!(c.open(ctx2, &out, &mut plain), Err(OpenError::Forged));
        assert_eq!(c.open(CTX, &out[..10], &mut plain), Err(OpenError::Short));
    }
}
