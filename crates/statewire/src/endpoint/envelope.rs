//! The endpoints' message envelope: one tag byte, then the body. Every decoder takes a bounded
//! slice and returns a typed error; fixed parts are checked before anything is allocated.
//!
//! ```text
//! client → server
//!   unreliable  0x01 TICK     flags:u8 (bit 0: an ack follows; other bits 0)
//!                             [ack: AckFrame, 8 B]
//!                             count:u8 (inputs, at most MAX_INPUTS_PER_MESSAGE)
//!                             [first_tick:u32le, then count × (len:u8, postcard input)]
//!                             inputs are for ticks first_tick, first_tick + 1, ...
//!   unreliable  0x02 WRITES   state writes of owned entities (statewire_core::authority format)
//!   reliable    0x03 PROPOSE  an event proposal (statewire_core::events format)
//!   either      0x04 USER     channel:u8, postcard message (at most the channel's limit)
//! server → client
//!   unreliable  0x01 STATE    a replication packet (statewire_core::replication format)
//!                             that carries every change of the client's view up to its
//!                             tick (or has it in flight)
//!   unreliable  0x06 PARTIAL  the same, but the budget left some changes for later packets:
//!                             entities it does not carry may be behind its tick
//!   reliable    0x02 REFUSED  seq:u32le: the proposal `seq` was not accepted
//!   either      0x04 USER     channel:u8, postcard message
//!   unreliable  0x05 TIMING   early_by:f32le: how many ticks early the least early of this
//!                             client's recent inputs arrived (negative: late)
//! ```

use statewire_core::{AckFrame, Tick};

pub(crate) const TICK: u8 = 0x01;
pub(crate) const STATE: u8 = 0x01;
pub(crate) const WRITES: u8 = 0x02;
pub(crate) const REFUSED: u8 = 0x02;
pub(crate) const PROPOSE: u8 = 0x03;
pub(crate) const USER: u8 = 0x04;
pub(crate) const TIMING: u8 = 0x05;
pub(crate) const PARTIAL: u8 = 0x06;

/// Most inputs one TICK message carries: the newest and the ones before it, so one lost
/// packet costs no input.
pub const MAX_INPUTS_PER_MESSAGE: usize = 8;

/// Errors from decoding an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Zero-length message.
    #[error("empty message")]
    Empty,
    /// Unknown tag, or a tag on a channel it does not travel on.
    #[error("unexpected message tag {0:#04x}")]
    UnexpectedTag(u8),
    /// The message ends early.
    #[error("message ends early")]
    Truncated,
    /// Bytes after the end of the message.
    #[error("trailing bytes")]
    Trailing,
    /// Reserved flag bits set.
    #[error("bad flags {0:#04x}")]
    BadFlags(u8),
    /// More inputs than allowed, or one larger than allowed.
    #[error("inputs over their limits")]
    InputsTooLarge,
    /// A WRITES body that does not decode (or carries more writes than allowed).
    #[error("state writes do not decode")]
    Writes,
    /// A PROPOSE body that does not decode (or is over the event limits).
    #[error("event proposal does not decode")]
    Proposal,
}

/// A decoded TICK message: the ack and the inputs (still encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TickMessage<'a> {
    pub(crate) ack: Option<AckFrame>,
    pub(crate) first_tick: Tick,
    pub(crate) inputs: smallvec::SmallVec<[&'a [u8]; MAX_INPUTS_PER_MESSAGE]>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(EnvelopeError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Writes a TICK message: `inputs` are encoded inputs for consecutive ticks from
/// `first_tick`.
pub(crate) fn encode_tick(
    ack: Option<AckFrame>,
    first_tick: Tick,
    inputs: &[&[u8]],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(TICK);
    match ack {
        Some(a) => {
            out.push(1);
            out.extend_from_slice(&a.encode());
        }
        None => out.push(0),
    }
    let n = inputs.len().min(MAX_INPUTS_PER_MESSAGE);
    out.push(n as u8);
    if n > 0 {
        out.extend_from_slice(&first_tick.0.to_le_bytes());
        for i in &inputs[..n] {
            out.push(i.len().min(255) as u8);
            out.extend_from_slice(&i[..i.len().min(255)]);
        }
    }
}

/// Decodes a TICK message body (after the tag), each input at most `max_input` bytes.
pub(crate) fn decode_tick(body: &[u8], max_input: usize) -> Result<TickMessage<'_>, EnvelopeError> {
    let mut r = Reader(body);
    let flags = r.u8()?;
    if flags & !1 != 0 {
        return Err(EnvelopeError::BadFlags(flags));
    }
    let ack = if flags & 1 == 1 {
        // Exactly AckFrame::LEN bytes, so it always decodes.
        AckFrame::decode(r.take(AckFrame::LEN)?)
    } else {
        None
    };
    let n = usize::from(r.u8()?);
    if n > MAX_INPUTS_PER_MESSAGE {
        return Err(EnvelopeError::InputsTooLarge);
    }
    let mut inputs = smallvec::SmallVec::new();
    let mut first_tick = Tick(0);
    if n > 0 {
        first_tick = Tick(r.u32()?);
        for _ in 0..n {
            let len = usize::from(r.u8()?);
            if len > max_input {
                return Err(EnvelopeError::InputsTooLarge);
            }
            inputs.push(r.take(len)?);
        }
    }
    if !r.0.is_empty() {
        return Err(EnvelopeError::Trailing);
    }
    Ok(TickMessage {
        ack,
        first_tick,
        inputs,
    })
}

/// Writes a REFUSED message.
pub(crate) fn encode_refused(seq: u32) -> [u8; 5] {
    let s = seq.to_le_bytes();
    [REFUSED, s[0], s[1], s[2], s[3]]
}

/// A TIMING message, tag included.
pub(crate) fn encode_timing(early_by: f32) -> [u8; 5] {
    let mut out = [TIMING, 0, 0, 0, 0];
    out[1..].copy_from_slice(&early_by.to_le_bytes());
    out
}

/// A TIMING body: the report, which may be any f32 (the clock ignores non-finite ones).
pub(crate) fn decode_timing(body: &[u8]) -> Result<f32, EnvelopeError> {
    let mut r = Reader(body);
    let bytes: [u8; 4] = r
        .take(4)?
        .try_into()
        .map_err(|_| EnvelopeError::Truncated)?;
    if !r.0.is_empty() {
        return Err(EnvelopeError::Trailing);
    }
    Ok(f32::from_le_bytes(bytes))
}

/// Decodes a REFUSED body.
pub(crate) fn decode_refused(body: &[u8]) -> Result<u32, EnvelopeError> {
    let mut r = Reader(body);
    let seq = r.u32()?;
    if !r.0.is_empty() {
        return Err(EnvelopeError::Trailing);
    }
    Ok(seq)
}

/// Splits a USER body into its channel and message bytes.
pub(crate) fn decode_user(body: &[u8]) -> Result<(u8, &[u8]), EnvelopeError> {
    let (&ch, rest) = body.split_first().ok_or(EnvelopeError::Truncated)?;
    Ok((ch, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tick_round_trip_and_errors() {
        let ack = AckFrame {
            newest: Tick(77),
            earlier: 0x8000_0005,
        };
        let mut out = Vec::new();
        encode_tick(Some(ack), Tick(90), &[&[1, 2], &[], &[3]], &mut out);
        assert_eq!(out[0], TICK);
        {
            let m = decode_tick(&out[1..], 8).unwrap();
            assert_eq!(m.ack, Some(ack));
            assert_eq!(m.first_tick, Tick(90));
            assert_eq!(m.inputs.as_slice(), &[&[1u8, 2][..], &[], &[3]]);
        }
        // No ack, no inputs: three bytes.
        encode_tick(None, Tick(0), &[], &mut out);
        assert_eq!(out, [TICK, 0, 0]);
        assert!(decode_tick(&out[1..], 8).unwrap().inputs.is_empty());
        assert_eq!(decode_tick(&[], 8), Err(EnvelopeError::Truncated));
        assert_eq!(decode_tick(&[2, 0], 8), Err(EnvelopeError::BadFlags(2)));
        assert_eq!(decode_tick(&[0, 0, 1], 8), Err(EnvelopeError::Trailing));
        assert_eq!(decode_tick(&[0, 9], 8), Err(EnvelopeError::InputsTooLarge));
        assert_eq!(
            decode_tick(&[0, 1, 0, 0, 0, 0, 9, 1], 8),
            Err(EnvelopeError::InputsTooLarge)
        );
        assert_eq!(
            decode_tick(&[0, 1, 0, 0, 0, 0, 2, 1], 8),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(decode_refused(&encode_refused(9)[1..]), Ok(9));
        assert_eq!(decode_refused(&[1, 2, 3]), Err(EnvelopeError::Truncated));
        assert_eq!(decode_timing(&encode_timing(-1.5)[1..]), Ok(-1.5));
        assert_eq!(decode_timing(&[0, 0, 0]), Err(EnvelopeError::Truncated));
        assert_eq!(
            decode_timing(&[0, 0, 0, 0, 0]),
            Err(EnvelopeError::Trailing)
        );
        assert_eq!(
            decode_refused(&[1, 2, 3, 4, 5]),
            Err(EnvelopeError::Trailing)
        );
        assert_eq!(decode_user(&[3, 1]), Ok((3, &[1u8][..])));
        assert_eq!(decode_user(&[]), Err(EnvelopeError::Truncated));
    }

    proptest! {
        /// Any bytes: a typed answer, never a panic.
        #[test]
        fn decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_tick(&bytes, 16);
            let _ = decode_refused(&bytes);
            let _ = decode_timing(&bytes);
            let _ = decode_user(&bytes);
        }

        #[test]
        fn tick_round_trips(
            inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..8),
            first in any::<u32>(),
        ) {
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let mut out = Vec::new();
            encode_tick(None, Tick(first), &refs, &mut out);
            let m = decode_tick(&out[1..], 16).unwrap();
            prop_assert_eq!(m.inputs.as_slice(), refs.as_slice());
            if !refs.is_empty() {
                prop_assert_eq!(m.first_tick, Tick(first));
            }
        }
    }
}
