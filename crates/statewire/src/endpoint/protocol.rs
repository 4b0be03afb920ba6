//! What both ends of a game agree on: the replicated components and the user message channels.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use statewire_core::{ComponentCoding, ComponentId, Registry, Replicate, SchemaError};

/// Most user message channels a [`Protocol`] may declare.
pub const MAX_MESSAGE_CHANNELS: usize = 32;

/// How messages of a channel travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// Every message arrives once, in order (the session's reliable-ordered channel).
    Reliable,
    /// Messages may be lost or reordered; each fits one packet.
    Unreliable,
}

/// Errors from declaring a [`Protocol`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Registering a component failed.
    #[error("component schema: {0}")]
    Schema(#[from] SchemaError),
    /// More than [`MAX_MESSAGE_CHANNELS`] channels.
    #[error("more than {MAX_MESSAGE_CHANNELS} message channels")]
    TooManyChannels,
    /// Two channels share a name.
    #[error("message channel {0:?} declared twice")]
    DuplicateChannel(&'static str),
    /// A channel's size limit is zero.
    #[error("message channel {0:?} has a size limit of 0 bytes")]
    ZeroSize(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelInfo {
    pub(crate) name: &'static str,
    pub(crate) delivery: Delivery,
    pub(crate) max_bytes: usize,
}

/// A typed user message channel, returned by [`Protocol::channel`]: send `M` on it with
/// `GameServer::send` / `GameClient::send`, read it back with [`Message::read`].
pub struct MessageChannel<M> {
    pub(crate) index: u8,
    pub(crate) delivery: Delivery,
    pub(crate) max_bytes: usize,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for MessageChannel<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for MessageChannel<M> {}

impl<M> std::fmt::Debug for MessageChannel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageChannel")
            .field("index", &self.index)
            .field("delivery", &self.delivery)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl<M> MessageChannel<M> {
    /// The channel's place in its protocol's list.
    #[must_use]
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The largest encoded message the channel carries, in bytes.
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// Errors from reading or sending a user message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The encoded message is larger than its channel allows.
    #[error("message of {len} bytes is over its channel's limit of {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The channel's limit.
        max: usize,
    },
    /// The bytes do not decode as the channel's type, or leave bytes over.
    #[error("message does not decode as its channel's type")]
    Malformed,
    /// Encoding failed (the type refused to serialize).
    #[error("message could not be encoded")]
    Encode,
    /// The session refused the message.
    #[error("not sent: {0}")]
    Send(String),
}

/// A user message as it arrived: which channel, and its bytes (at most the channel's limit,
/// checked before anything decodes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) channel: u8,
    pub(crate) bytes: Vec<u8>,
}

impl Message {
    /// The channel it came on ([`MessageChannel::index`]).
    #[must_use]
    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// Its encoded bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes it as `channel`'s type: `None` if it came on another channel.
    pub fn read<M: DeserializeOwned>(
        &self,
        channel: MessageChannel<M>,
    ) -> Option<Result<M, MessageError>> {
        if self.channel != channel.index {
            return None;
        }
        if self.bytes.len() > channel.max_bytes {
            return Some(Err(MessageError::TooLarge {
                len: self.bytes.len(),
                max: channel.max_bytes,
            }));
        }
        Some(match postcard::take_from_bytes::<M>(&self.bytes) {
            Ok((m, [])) => Ok(m),
            _ => Err(MessageError::Malformed),
        })
    }
}

/// Encodes `message` for `channel`, checking its size.
pub(crate) fn encode_message<M: Serialize>(
    channel: MessageChannel<M>,
    message: &M,
    out: &mut Vec<u8>,
) -> Result<(), MessageError> {
    let body = postcard::to_allocvec(message).map_err(|_| MessageError::Encode)?;
    if body.len() > channel.max_bytes {
        return Err(MessageError::TooLarge {
            len: body.len(),
            max: channel.max_bytes,
        });
    }
    out.extend_from_slice(&body);
    Ok(())
}

/// What both ends of a game agree on: the components that replicate (a [`Registry`]) and
/// the user message channels. Peers whose protocols differ refuse each other at the handshake
/// ([`Protocol::fingerprint`] becomes the session's protocol id).
///
/// ```
/// use statewire::endpoint::{Delivery, Protocol};
/// # #[derive(Debug, PartialEq)] struct Pos(f32);
/// # impl statewire_core::Replicate for Pos {
/// #     const NAME: &'static str = "Pos";
/// #     fn fields() -> Vec<statewire_core::Field> { vec![statewire_core::Field::new("x",
/// #         statewire_core::FieldKind::Float { min: -1.0, max: 1.0, precision: 0.5 })] }
/// #     fn write(&self, w: &mut statewire_core::FieldWriter<'_>) { w.f32(self.0) }
/// #     fn read(r: &mut statewire_core::FieldReader<'_>) -> Option<Self> { Some(Pos(r.f32()?)) }
/// # }
/// let mut protocol = Protocol::new().with::<Pos>()?;
/// let chat = protocol.channel::<String>("chat", Delivery::Reliable, 256)?;
/// assert_eq!(chat.index(), 0);
/// # Ok::<(), statewire::endpoint::ProtocolError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Protocol {
    registry: Registry,
    channels: Vec<ChannelInfo>,
}

impl Protocol {
    /// No components, no channels.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A protocol replicating the components of `registry`.
    #[must_use]
    pub fn from_registry(registry: Registry) -> Self {
        Protocol {
            registry,
            channels: Vec::new(),
        }
    }

    /// Registers component `T` (builder form of [`Protocol::register`]).
    pub fn with<T: Replicate>(mut self) -> Result<Self, ProtocolError> {
        self.register::<T>()?;
        Ok(self)
    }

    /// Registers component `T`; ids follow registration order, which both ends must share.
    pub fn register<T: Replicate>(&mut self) -> Result<ComponentId, ProtocolError> {
        Ok(self.registry.register::<T>()?)
    }

    /// Chooses how `T` is coded (bit-packed or entropy-coded).
    pub fn set_coding<T: Replicate>(
        &mut self,
        coding: ComponentCoding,
    ) -> Result<(), ProtocolError> {
        Ok(self.registry.set_coding::<T>(coding)?)
    }

    /// Declares a user message channel carrying `M` (serde + postcard), of at most `max_bytes`
    /// encoded bytes. Both ends must declare the same channels in the same order.
    pub fn channel<M: Serialize + DeserializeOwned>(
        &mut self,
        name: &'static str,
        delivery: Delivery,
        max_bytes: usize,
    ) -> Result<MessageChannel<M>, ProtocolError> {
        if self.channels.len() >= MAX_MESSAGE_CHANNELS {
            return Err(ProtocolError::TooManyChannels);
        }
        if self.channels.iter().any(|c| c.name == name) {
            return Err(ProtocolError::DuplicateChannel(name));
        }
        if max_bytes == 0 {
            return Err(ProtocolError::ZeroSize(name));
        }
        let index = self.channels.len() as u8;
        self.channels.push(ChannelInfo {
            name,
            delivery,
            max_bytes,
        });
        Ok(MessageChannel {
            index,
            delivery,
            max_bytes,
            _message: PhantomData,
        })
    }

    /// The replicated components.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn channels(&self) -> &[ChannelInfo] {
        &self.channels
    }

    /// A hash of everything both ends must agree on: the components (names, fields,
    /// quantization, coding) and the channels (names, delivery, limits).
    #[must_use]
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a over the registry's own fingerprint and the channel list.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&self.registry.fingerprint().to_le_bytes());
        for c in &self.channels {
            eat(c.name.as_bytes());
            eat(&[0, c.delivery as u8]);
            eat(&(c.max_bytes as u64).to_le_bytes());
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_checked_and_fingerprinted() {
        let mut p = Protocol::new();
        let before = p.fingerprint();
        let a = p.channel::<u32>("a", Delivery::Reliable, 8).unwrap();
        assert_ne!(p.fingerprint(), before);
        assert_eq!(
            p.channel::<u32>("a", Delivery::Unreliable, 8).unwrap_err(),
            ProtocolError::DuplicateChannel("a")
        );
        assert_eq!(
            p.channel::<u32>("z", Delivery::Reliable, 0).unwrap_err(),
            ProtocolError::ZeroSize("z")
        );
        let mut out = Vec::new();
        encode_message(a, &7u32, &mut out).unwrap();
        let m = Message {
            channel: 0,
            bytes: out.clone(),
        };
        assert_eq!(m.read(a), Some(Ok(7)));
        let other = Message {
            channel: 1,
            bytes: out,
        };
        assert_eq!(other.read(a), None);
        // Trailing bytes and oversize are refused.
        let trailing = Message {
            channel: 0,
            bytes: vec![7, 0],
        };
        assert_eq!(trailing.read(a), Some(Err(MessageError::Malformed)));
        let big = p.channel::<Vec<u8>>("big", Delivery::Reliable, 4).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            encode_message(big, &vec![0u8; 10], &mut out),
            Err(MessageError::TooLarge { len: 11, max: 4 })
        ));
        assert!(out.is_empty());
        for i in 2..MAX_MESSAGE_CHANNELS {
            p.channel::<u8>(
                Box::leak(format!("c{i}").into_boxed_str()),
                Delivery::Reliable,
                1,
            )
            .unwrap();
        }
        assert_eq!(
            p.channel::<u8>("one too many", Delivery::Reliable, 1)
                .unwrap_err(),
            ProtocolError::TooManyChannels
        );
    }
}
