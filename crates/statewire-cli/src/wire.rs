//! The sim's message framing inside statewire sessions.
//!
//! ```text
//! server → client, unreliable:  0x01  replication packet (snapshot + events)
//! server → client, reliable:    0x03  tick:u32le  state_digest:u64le        (end of a run)
//! server → client, reliable:    0x06  seq:u32le                             (proposal rejected)
//! client → server, unreliable:  0x02  has_ack:u8(0|1) ack:[u8; 8] input_tick:u32le dx:i8 dy:i8
//!                                     (ack: statewire_core::AckFrame, zeros without one)
//! client → server, unreliable:  0x04  state writes (statewire_core::authority format)
//! client → server, reliable:    0x05  event proposal (statewire_core::events format)
//! ```
//! Fixed-size messages must have exactly their size.

use statewire_core::{AckFrame, Tick};

use crate::game::Input;

const SNAPSHOT: u8 = 0x01;
const CLIENT: u8 = 0x02;
const CLIENT_LEN: usize = 2 + AckFrame::LEN + 6;
/// Where the input tick starts in a client message.
const INPUT_AT: usize = 2 + AckFrame::LEN;
const FINAL: u8 = 0x03;
const FINAL_LEN: usize = 13;
const WRITES: u8 = 0x04;
const PROPOSE: u8 = 0x05;
const REJECTED: u8 = 0x06;
const REJECTED_LEN: usize = 5;

/// Errors from parsing a sim message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// Zero-length message.
    #[error("empty message")]
    Empty,
    /// Unknown first byte.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// A fixed-size message of the wrong length.
    #[error("message of {0} bytes has the wrong length")]
    BadLength(usize),
    /// The ack flag is neither 0 nor 1.
    #[error("bad ack flag {0}")]
    BadFlag(u8),
}

/// The client's per-tick message: its ack and its steering input for a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientMsg {
    pub(crate) ack: Option<AckFrame>,
    pub(crate) input_tick: Tick,
    pub(crate) input: Input,
}

/// Everything a server receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToServer<'a> {
    Tick(ClientMsg),
    Writes(&'a [u8]),
    Propose(&'a [u8]),
}

/// Everything a client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToClient<'a> {
    Snapshot(&'a [u8]),
    Final(Tick, u64),
    Rejected(u32),
}

/// Starts a replication message in `out` (call before encoding into the same buffer).
pub(crate) fn begin_snapshot(out: &mut Vec<u8>) {
    out.clear();
    out.push(SNAPSHOT);
}

/// Starts a writes message in `out`.
pub(crate) fn begin_writes(out: &mut Vec<u8>) {
    out.clear();
    out.push(WRITES);
}

/// Starts a proposal message in `out`.
pub(crate) fn begin_proposal(out: &mut Vec<u8>) {
    out.clear();
    out.push(PROPOSE);
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<&[u8; N], WireError> {
    bytes
        .try_into()
        .map_err(|_| WireError::BadLength(bytes.len()))
}

/// Encodes the per-tick client message.
pub(crate) fn encode_client(msg: ClientMsg) -> [u8; CLIENT_LEN] {
    let mut b = [0u8; CLIENT_LEN];
    b[0] = CLIENT;
    if let Some(a) = msg.ack {
        b[1] = 1;
        b[2..INPUT_AT].copy_from_slice(&a.encode());
    }
    b[INPUT_AT..INPUT_AT + 4].copy_from_slice(&msg.input_tick.0.to_le_bytes());
    b[INPUT_AT + 4] = msg.input.dx as u8;
    b[INPUT_AT + 5] = msg.input.dy as u8;
    b
}

/// Decodes a message a client sent.
pub(crate) fn parse_to_server(bytes: &[u8]) -> Result<ToServer<'_>, WireError> {
    let (&tag, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    match tag {
        CLIENT => {
            let b = fixed::<CLIENT_LEN>(bytes)?;
            let ack = match b[1] {
                0 => None,
                // Exactly AckFrame::LEN bytes, so it always decodes.
                1 => AckFrame::decode(&b[2..INPUT_AT]),
                f => return Err(WireError::BadFlag(f)),
            };
            let t = &b[INPUT_AT..];
            Ok(ToServer::Tick(ClientMsg {
                ack,
                input_tick: Tick(u32::from_le_bytes([t[0], t[1], t[2], t[3]])),
                input: Input {
                    dx: t[4] as i8,
                    dy: t[5] as i8,
                },
            }))
        }
        WRITES => Ok(ToServer::Writes(rest)),
        PROPOSE => Ok(ToServer::Propose(rest)),
        t => Err(WireError::UnknownTag(t)),
    }
}

/// Encodes the server's final state digest.
pub(crate) fn encode_final(tick: Tick, digest: u64) -> [u8; FINAL_LEN] {
    let mut b = [0u8; FINAL_LEN];
    b[0] = FINAL;
    b[1..5].copy_from_slice(&tick.0.to_le_bytes());
    b[5..].copy_from_slice(&digest.to_le_bytes());
    b
}

/// Encodes a proposal rejection.
pub(crate) fn encode_rejected(seq: u32) -> [u8; REJECTED_LEN] {
    let mut b = [0u8; REJECTED_LEN];
    b[0] = REJECTED;
    b[1..].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Decodes a message the server sent.
pub(crate) fn parse_to_client(bytes: &[u8]) -> Result<ToClient<'_>, WireError> {
    let (&tag, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    match tag {
        SNAPSHOT => Ok(ToClient::Snapshot(rest)),
        FINAL => {
            let b = fixed::<FINAL_LEN>(bytes)?;
            let mut d = [0u8; 8];
            d.copy_from_slice(&b[5..]);
            Ok(ToClient::Final(
                Tick(u32::from_le_bytes([b[1], b[2], b[3], b[4]])),
                u64::from_le_bytes(d),
            ))
        }
        REJECTED => {
            let b = fixed::<REJECTED_LEN>(bytes)?;
            Ok(ToClient::Rejected(u32::from_le_bytes([
                b[1], b[2], b[3], b[4],
            ])))
        }
        t => Err(WireError::UnknownTag(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_errors() {
        let m = ClientMsg {
            ack: Some(AckFrame {
                newest: Tick(77),
                earlier: 0x8000_0005,
            }),
            input_tick: Tick(80),
            input: Input { dx: -5, dy: 127 },
        };
        assert_eq!(parse_to_server(&encode_client(m)), Ok(ToServer::Tick(m)));
        let none = ClientMsg {
            ack: None,
            input_tick: Tick(0),
            input: Input::default(),
        };
        assert_eq!(
            parse_to_server(&encode_client(none)),
            Ok(ToServer::Tick(none))
        );
        assert_eq!(parse_to_server(&[]), Err(WireError::Empty));
        assert_eq!(parse_to_server(&[9]), Err(WireError::UnknownTag(9)));
        assert_eq!(parse_to_server(&[2, 0]), Err(WireError::BadLength(2)));
        // The old 12-byte message (4-byte ack) is refused.
        assert_eq!(
            parse_to_server(&encode_client(m)[..12]),
            Err(WireError::BadLength(12))
        );
        let mut bad = encode_client(m);
        bad[1] = 7;
        assert_eq!(parse_to_server(&bad), Err(WireError::BadFlag(7)));
        assert_eq!(parse_to_server(&[4, 1, 2]), Ok(ToServer::Writes(&[1, 2])));
        assert_eq!(parse_to_server(&[5, 3]), Ok(ToServer::Propose(&[3])));
        assert_eq!(parse_to_client(&[1, 2, 3]), Ok(ToClient::Snapshot(&[2, 3])));
        assert_eq!(
            parse_to_client(&encode_final(Tick(9), 77)),
            Ok(ToClient::Final(Tick(9), 77))
        );
        assert_eq!(
            parse_to_client(&encode_rejected(5)),
            Ok(ToClient::Rejected(5))
        );
        assert_eq!(parse_to_client(&[3, 1]), Err(WireError::BadLength(2)));
        assert_eq!(parse_to_client(&[2]), Err(WireError::UnknownTag(2)));
    }
}
