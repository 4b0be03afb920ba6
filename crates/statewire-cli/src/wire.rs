//! The sim's datagram framing, until the session layer carries replication.
//!
//! ```text
//! server → client:  0x01  snapshot packet (statewire-core delta format)
//! client → server:  0x02  has_ack:u8(0|1)  ack_tick:u32le  dx:i8  dy:i8     (exactly 8 bytes)
//! server → client:  0x03  tick:u32le  state_digest:u64le                     (exactly 13 bytes,
//!                                                                  reliable, end of a run)
//! ```

use statewire_core::Tick;

use crate::game::Input;

const SNAPSHOT: u8 = 0x01;
const CLIENT: u8 = 0x02;
const CLIENT_LEN: usize = 8;
const FINAL: u8 = 0x03;
const FINAL_LEN: usize = 13;

/// Errors from parsing a sim datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// Zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// Unknown first byte.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// A message of the wrong length.
    #[error("message of {0} bytes has the wrong length")]
    BadLength(usize),
    /// The ack flag is neither 0 nor 1.
    #[error("bad ack flag {0}")]
    BadFlag(u8),
}

/// A client's message to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientMsg {
    pub(crate) ack: Option<Tick>,
    pub(crate) input: Input,
}

/// Prefixes a snapshot packet in `out` (call before encoding into the same buffer).
pub(crate) fn begin_snapshot(out: &mut Vec<u8>) {
    out.clear();
    out.push(SNAPSHOT);
}

/// The snapshot bytes of a server datagram.
pub(crate) fn parse_snapshot(bytes: &[u8]) -> Result<&[u8], WireError> {
    match bytes.split_first() {
        None => Err(WireError::Empty),
        Some((&SNAPSHOT, rest)) => Ok(rest),
        Some((&tag, _)) => Err(WireError::UnknownTag(tag)),
    }
}

/// Encodes a client message.
pub(crate) fn encode_client(msg: ClientMsg) -> [u8; CLIENT_LEN] {
    let mut b = [0u8; CLIENT_LEN];
    b[0] = CLIENT;
    if let Some(t) = msg.ack {
        b[1] = 1;
        b[2..6].copy_from_slice(&t.0.to_le_bytes());
    }
    b[6] = msg.input.dx as u8;
    b[7] = msg.input.dy as u8;
    b
}

/// Decodes a client message.
pub(crate) fn parse_client(bytes: &[u8]) -> Result<ClientMsg, WireError> {
    let (&tag, _) = bytes.split_first().ok_or(WireError::Empty)?;
    if tag != CLIENT {
        return Err(WireError::UnknownTag(tag));
    }
    let b: &[u8; CLIENT_LEN] = bytes
        .try_into()
        .map_err(|_| WireError::BadLength(bytes.len()))?;
    let ack = match b[1] {
        0 => None,
        1 => Some(Tick(u32::from_le_bytes([b[2], b[3], b[4], b[5]]))),
        f => return Err(WireError::BadFlag(f)),
    };
    Ok(ClientMsg {
        ack,
        input: Input {
            dx: b[6] as i8,
            dy: b[7] as i8,
        },
    })
}

/// Encodes the server's final state digest.
pub(crate) fn encode_final(tick: Tick, digest: u64) -> [u8; FINAL_LEN] {
    let mut b = [0u8; FINAL_LEN];
    b[0] = FINAL;
    b[1..5].copy_from_slice(&tick.0.to_le_bytes());
    b[5..].copy_from_slice(&digest.to_le_bytes());
    b
}

/// Decodes the server's final state digest.
pub(crate) fn parse_final(bytes: &[u8]) -> Result<(Tick, u64), WireError> {
    let (&tag, _) = bytes.split_first().ok_or(WireError::Empty)?;
    if tag != FINAL {
        return Err(WireError::UnknownTag(tag));
    }
    let b: &[u8; FINAL_LEN] = bytes
        .try_into()
        .map_err(|_| WireError::BadLength(bytes.len()))?;
    let mut d = [0u8; 8];
    d.copy_from_slice(&b[5..]);
    Ok((
        Tick(u32::from_le_bytes([b[1], b[2], b[3], b[4]])),
        u64::from_le_bytes(d),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_round_trip_and_errors() {
        let m = ClientMsg {
            ack: Some(Tick(77)),
            input: Input { dx: -5, dy: 127 },
        };
        assert_eq!(parse_client(&encode_client(m)), Ok(m));
        let none = ClientMsg {
            ack: None,
            input: Input::default(),
        };
        assert_eq!(parse_client(&encode_client(none)), Ok(none));
        assert_eq!(parse_client(&[]), Err(WireError::Empty));
        assert_eq!(parse_client(&[9]), Err(WireError::UnknownTag(9)));
        assert_eq!(parse_client(&[2, 0]), Err(WireError::BadLength(2)));
        let mut bad = encode_client(m);
        bad[1] = 7;
        assert_eq!(parse_client(&bad), Err(WireError::BadFlag(7)));
        assert_eq!(parse_snapshot(&[1, 2, 3]), Ok(&[2u8, 3][..]));
        assert_eq!(parse_snapshot(&[2]), Err(WireError::UnknownTag(2)));
        assert_eq!(parse_final(&encode_final(Tick(9), 77)), Ok((Tick(9), 77)));
        assert_eq!(parse_final(&[3, 1]), Err(WireError::BadLength(2)));
    }
}
