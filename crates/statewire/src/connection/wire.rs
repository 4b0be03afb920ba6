//! Wire format of a connection payload, and its checked decoder.
//!
//! ```text
//! payload = flags:u8  seq:u16le  [ack:u16le  ack_bits:u32le  ack_delay:u16le]  frame*
//! flags   = bit 0: the ack fields are present; bit 1: ping (the sender asks for an
//!           acknowledgement of this packet even though it carries no frame); bits 2..7 must
//!           be zero
//! ack_delay = time from receiving packet `ack` to sending this one, in units of 100 µs
//! frame   = channel:u8  body
//! body    = unreliable:  len:varint  bytes
//!         | sequenced:   id:u16le  len:varint  bytes
//!         | reliable:    id:u16le  count:varint  [index:varint if count > 1]  len:varint  bytes
//! varint  = LEB128, at most 3 bytes, shortest form only
//! ```
//!
//! Frames run to the end of the payload, so a payload is either consumed exactly or rejected:
//! there is no place for trailing bytes to hide. The receiver interprets a frame body by the
//! kind its own configuration gives the channel, so both peers must use the same channel list.

use smallvec::SmallVec;

use super::{ChannelKind, PayloadError};

/// Flag bit: the ack fields follow the sequence number.
pub(super) const FLAG_ACK: u8 = 0x01;
/// Flag bit: acknowledge this packet although it has no frames.
pub(super) const FLAG_PING: u8 = 0x02;
/// Longest packet header: flags, seq, ack, ack bits, ack delay.
pub(super) const MAX_HEADER_LEN: usize = 1 + 2 + 2 + 4 + 2;
/// Unit of the ack delay field.
pub(super) const ACK_DELAY_UNIT: std::time::Duration = std::time::Duration::from_micros(100);
/// Longest varint this format uses: 3 bytes hold 21 bits.
const MAX_VARINT_LEN: usize = 3;
/// Largest value a varint may carry.
const MAX_VARINT: u32 = (1 << (7 * MAX_VARINT_LEN)) - 1;
/// Longest frame header of an unreliable message.
pub(super) const UNRELIABLE_FRAME_HEADER: usize = 1 + MAX_VARINT_LEN;
/// Longest frame header of a sequenced message.
pub(super) const SEQUENCED_FRAME_HEADER: usize = 1 + 2 + MAX_VARINT_LEN;
/// Longest frame header of an unfragmented reliable message (count is the single byte `1`).
pub(super) const RELIABLE_SINGLE_FRAME_HEADER: usize = 1 + 2 + 1 + MAX_VARINT_LEN;
/// Longest frame header of a reliable fragment.
pub(super) const RELIABLE_FRAGMENT_FRAME_HEADER: usize = 1 + 2 + 3 * MAX_VARINT_LEN;
/// Shortest fragment other than the last; bounds the fragment count a peer may claim.
pub(super) const MIN_FRAGMENT_LEN: usize = 64;

/// Acknowledgement fields of a packet header: `base` was received and accepted, and bit `i` of
/// `bits` says the same of `base - 1 - i`; `delay` (in [`ACK_DELAY_UNIT`]s, saturating) is how
/// long `base` waited at the receiver, so the sender can take it out of its RTT sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AckHeader {
    pub(super) base: u16,
    pub(super) bits: u32,
    pub(super) delay: u16,
}

/// A decoded packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) seq: u16,
    pub(super) ack: Option<AckHeader>,
    pub(super) ping: bool,
}

/// Kind-specific fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameKind {
    Unreliable,
    Sequenced { id: u16 },
    Reliable { id: u16, count: u16, index: u16 },
}

/// One message (or fragment) in a payload, borrowing its bytes from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame<'a> {
    pub(super) channel: u8,
    pub(super) kind: FrameKind,
    pub(super) data: &'a [u8],
}

/// What the decoder needs to know about each channel.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelLimits {
    pub(super) kind: ChannelKind,
    /// Largest message accepted on the channel (for unreliable kinds, already capped to what
    /// fits one packet).
    pub(super) max_message_size: usize,
    /// Largest fragment count accepted on a reliable channel.
    pub(super) max_fragments: u16,
}

/// A decoded payload. Frames stay inline for typical packets; a packet full of tiny messages
/// spills to the heap, bounded by the payload length (every frame takes at least 2 bytes).
pub(super) type Frames<'a> = SmallVec<[Frame<'a>; 8]>;

/// Reader over a bounded slice; every read checks the remaining length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(PayloadError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PayloadError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PayloadError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// LEB128 in at most [`MAX_VARINT_LEN`] bytes, shortest form only, so that every value has
    /// exactly one encoding.
    fn varint(&mut self) -> Result<u32, PayloadError> {
        let mut value = 0u32;
        for i in 0..MAX_VARINT_LEN {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                // A zero final byte after the first means a longer-than-needed encoding.
                if i > 0 && byte == 0 {
                    return Err(PayloadError::BadVarint);
                }
                return Ok(value);
            }
        }
        Err(PayloadError::BadVarint)
    }
}

/// Decodes a whole payload without touching any connection state.
pub(super) fn decode<'a>(
    payload: &'a [u8],
    channels: &[ChannelLimits],
) -> Result<(Header, Frames<'a>), PayloadError> {
    let mut r = Reader { rest: payload };
    let flags = r.u8()?;
    if flags & !(FLAG_ACK | FLAG_PING) != 0 {
        return Err(PayloadError::UnknownFlags { flags });
    }
    let seq = r.u16()?;
    let ack = if flags & FLAG_ACK != 0 {
        Some(AckHeader {
            base: r.u16()?,
            bits: r.u32()?,
            delay: r.u16()?,
        })
    } else {
        None
    };
    let mut frames = Frames::new();
    while !r.rest.is_empty() {
        frames.push(decode_frame(&mut r, channels)?);
    }
    Ok((
        Header {
            seq,
            ack,
            ping: flags & FLAG_PING != 0,
        },
        frames,
    ))
}

fn decode_frame<'a>(
    r: &mut Reader<'a>,
    channels: &[ChannelLimits],
) -> Result<Frame<'a>, PayloadError> {
    let channel = r.u8()?;
    let limits = channels
        .get(usize::from(channel))
        .ok_or(PayloadError::UnknownChannel { channel })?;
    let kind = match limits.kind {
        ChannelKind::Unreliable => FrameKind::Unreliable,
        ChannelKind::UnreliableSequenced => FrameKind::Sequenced { id: r.u16()? },
        ChannelKind::ReliableOrdered => {
            let id = r.u16()?;
            let count = r.varint()?;
            let count = u16::try_from(count)
                .ok()
                .filter(|&c| c >= 1 && c <= limits.max_fragments)
                .ok_or(PayloadError::BadFragment { channel })?;
            let index = if count > 1 {
                u16::try_from(r.varint()?)
                    .ok()
                    .filter(|&i| i < count)
                    .ok_or(PayloadError::BadFragment { channel })?
            } else {
                0
            };
            FrameKind::Reliable { id, count, index }
        }
    };
    let len = r.varint()? as usize;
    if len > limits.max_message_size {
        return Err(PayloadError::MessageTooLarge {
            channel,
            len,
            max: limits.max_message_size,
        });
    }
    if let FrameKind::Reliable { count, index, .. } = kind {
        // Fragments other than the last carry at least MIN_FRAGMENT_LEN bytes, which is what
        // makes `max_fragments` a real bound on the message size; the last is never empty.
        let min = if index + 1 < count {
            MIN_FRAGMENT_LEN
        } else {
            usize::from(count > 1)
        };
        if len < min {
            return Err(PayloadError::BadFragment { channel });
        }
    }
    let data = r.bytes(len)?;
    Ok(Frame {
        channel,
        kind,
        data,
    })
}

/// Bytes `value` takes as a varint.
pub(super) fn varint_len(value: u32) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        _ => 3,
    }
}

fn put_varint(out: &mut Vec<u8>, value: u32) {
    debug_assert!(value <= MAX_VARINT);
    let mut v = value;
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes a packet header.
pub(super) fn put_header(out: &mut Vec<u8>, seq: u16, ack: Option<AckHeader>, ping: bool) {
    let ping = if ping { FLAG_PING } else { 0 };
    match ack {
        Some(ack) => {
            out.push(FLAG_ACK | ping);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&ack.base.to_le_bytes());
            out.extend_from_slice(&ack.bits.to_le_bytes());
            out.extend_from_slice(&ack.delay.to_le_bytes());
        }
        None => {
            out.push(ping);
            out.extend_from_slice(&seq.to_le_bytes());
        }
    }
}

/// Length of `frame` once encoded.
pub(super) fn frame_len(kind: FrameKind, data_len: usize) -> usize {
    let body = match kind {
        FrameKind::Unreliable => 0,
        FrameKind::Sequenced { .. } => 2,
        FrameKind::Reliable { count, index, .. } => {
            2 + varint_len(u32::from(count))
                + if count > 1 {
                    varint_len(u32::from(index))
                } else {
                    0
                }
        }
    };
    1 + body + varint_len(data_len as u32) + data_len
}

/// Appends one frame. `data` is at most a packet long, far below the varint limit.
pub(super) fn put_frame(out: &mut Vec<u8>, frame: &Frame<'_>) {
    out.push(frame.channel);
    match frame.kind {
        FrameKind::Unreliable => {}
        FrameKind::Sequenced { id } => out.extend_from_slice(&id.to_le_bytes()),
        FrameKind::Reliable { id, count, index } => {
            out.extend_from_slice(&id.to_le_bytes());
            put_varint(out, u32::from(count));
            if count > 1 {
                put_varint(out, u32::from(index));
            }
        }
    }
    put_varint(out, frame.data.len() as u32);
    out.extend_from_slice(frame.data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Vec<ChannelLimits> {
        vec![
            ChannelLimits {
                kind: ChannelKind::ReliableOrdered,
                max_message_size: 4096,
                max_fragments: 64,
            },
            ChannelLimits {
                kind: ChannelKind::Unreliable,
                max_message_size: 1000,
                max_fragments: 1,
            },
            ChannelLimits {
                kind: ChannelKind::UnreliableSequenced,
                max_message_size: 1000,
                max_fragments: 1,
            },
        ]
    }

    #[test]
    fn varint_round_trip_and_canonical() {
        for v in [0u32, 1, 0x7F, 0x80, 0x3FFF, 0x4000, MAX_VARINT] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut r = Reader { rest: &out };
            assert_eq!(r.varint(), Ok(v));
            assert!(r.rest.is_empty());
        }
        // Overlong zero, overlong 1, and a fourth byte are all rejected.
        for bad in [&[0x80, 0x00][..], &[0x81, 0x00], &[0xFF, 0xFF, 0xFF, 0x01]] {
            assert_eq!(
                Reader { rest: bad }.varint(),
                Err(PayloadError::BadVarint),
                "{bad:?}"
            );
        }
        assert_eq!(
            Reader { rest: &[0x80] }.varint(),
            Err(PayloadError::Truncated)
        );
    }

    #[test]
    fn rejects_structural_errors() {
        let l = limits();
        assert_eq!(decode(&[], &l).unwrap_err(), PayloadError::Truncated);
        assert_eq!(decode(&[0, 1], &l).unwrap_err(), PayloadError::Truncated);
        assert_eq!(
            decode(&[4, 0, 0], &l).unwrap_err(),
            PayloadError::UnknownFlags { flags: 4 }
        );
        assert_eq!(
            decode(&[1, 0, 0, 0], &l).unwrap_err(),
            PayloadError::Truncated
        );
        assert_eq!(
            decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0], &l).unwrap_err(),
            PayloadError::Truncated
        );
        assert_eq!(
            decode(&[0, 0, 0, 9, 0], &l).unwrap_err(),
            PayloadError::UnknownChannel { channel: 9 }
        );
        // Unreliable frame claiming 5 bytes with 1 present: a dangling tail is never accepted.
        assert_eq!(
            decode(&[0, 0, 0, 1, 5, 0xAA], &l).unwrap_err(),
            PayloadError::Truncated
        );
        // Reliable: count 0, index out of range, short middle fragment, too many fragments.
        for frame in [
            &[0u8, 1, 0, 0, 0][..],
            &[0, 1, 0, 2, 2, 1, 0xAA],
            &[0, 1, 0, 2, 0, 1, 0xAA],
            &[0, 1, 0, 65, 0, 1, 0xAA],
        ] {
            let mut p = vec![0, 0, 0];
            p.extend_from_slice(frame);
            assert_eq!(
                decode(&p, &l).unwrap_err(),
                PayloadError::BadFragment { channel: 0 },
                "{frame:?}"
            );
        }
    }

    fn arb_frame() -> impl Strategy<Value = (u8, FrameKind, Vec<u8>)> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(|d| (
                1,
                FrameKind::Unreliable,
                d
            )),
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..100)).prop_map(|(id, d)| (
                2,
                FrameKind::Sequenced { id },
                d
            )),
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..100)).prop_map(|(id, d)| (
                0,
                FrameKind::Reliable {
                    id,
                    count: 1,
                    index: 0
                },
                d
            )),
            (
                any::<u16>(),
                2u16..64,
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 64..200)
            )
                .prop_map(|(id, count, index, d)| (
                    0,
                    FrameKind::Reliable {
                        id,
                        count,
                        index: index % count
                    },
                    d
                )),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_decode_round_trip(
            seq in any::<u16>(),
            ack in proptest::option::of((any::<u16>(), any::<u32>(), any::<u16>())),
            frames in proptest::collection::vec(arb_frame(), 0..8),
        ) {
            let ack = ack.map(|(base, bits, delay)| AckHeader { base, bits, delay });
            let mut out = Vec::new();
            put_header(&mut out, seq, ack, false);
            let mut expected_len = out.len();
            for (channel, kind, data) in &frames {
                let f = Frame { channel: *channel, kind: *kind, data };
                put_frame(&mut out, &f);
                expected_len += frame_len(*kind, data.len());
            }
            prop_assert_eq!(out.len(), expected_len);
            let (header, decoded) = decode(&out, &limits()).unwrap();
            prop_assert_eq!(header, Header { seq, ack, ping: false });
            prop_assert_eq!(decoded.len(), frames.len());
            for (d, (channel, kind, data)) in decoded.iter().zip(&frames) {
                prop_assert_eq!(d.channel, *channel);
                prop_assert_eq!(d.kind, *kind);
                prop_assert_eq!(d.data, &data[..]);
            }
        }
    }
}
