//! Transports for statewire.
//!
//! A [`Transport`] moves whole datagrams between addresses: one successful
//! [`Transport::send`] shows up as at most one [`Transport::recv`] on the peer (or not at all:
//! transports may lose, duplicate and reorder, and callers must cope). Every implementation is
//! poll-based and never blocks, so the same session code runs over the in-memory
//! [`loopback`] network, real sockets, or the [`netsim`] simulator wrapping any of them.
//!
//! - [`loopback`]: in-process network with deterministic delivery, for tests and simulations.
//! - [`udp`]: one non-blocking UDP socket; datagrams over the size limit are dropped and counted.
//! - [`tcp`]: TCP connections carrying length-prefixed frames, as a server accepting many peers
//!   or a client with one; every buffer is bounded, misbehaving peers are disconnected, and a
//!   server times out idle connections and ones the session layer never validated.
//! - [`netsim`]: seeded impairments (latency, loss, bursts, reordering, ...) around any of them.
//! - [`nat`]: deterministic NAT devices (full cone, restricted, symmetric) on the loopback
//!   network, for testing hole punching and relay fallback.
//!
//! The simulator runs on a virtual clock that the caller advances; given the same seed and the
//! same sequence of calls it makes the same decisions, byte for byte.
#![warn(missing_docs)]

use std::net::SocketAddr;

pub mod loopback;
pub mod nat;
pub mod netsim;
pub mod tcp;
pub mod udp;

/// Errors a transport reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The payload is larger than [`Transport::max_payload`]; nothing was sent.
    #[error("payload of {len} bytes exceeds the transport maximum of {max}")]
    PayloadTooLarge {
        /// Size of the rejected payload.
        len: usize,
        /// Largest payload the transport accepts.
        max: usize,
    },
    /// The receive buffer cannot hold the pending datagram; it stays queued.
    #[error("receive buffer of {capacity} bytes cannot hold a {needed}-byte datagram")]
    BufferTooSmall {
        /// Size of the pending datagram.
        needed: usize,
        /// Size of the buffer the caller supplied.
        capacity: usize,
    },
    /// The endpoint was closed or its network dropped.
    #[error("transport closed")]
    Closed,
    /// An operating-system error from a socket.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A datagram taken from a transport by [`Transport::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Number of bytes written to the caller's buffer.
    pub len: usize,
    /// Address the datagram came from.
    pub from: SocketAddr,
}

/// Moves datagrams between addresses without blocking.
pub trait Transport {
    /// The address peers use to reach this endpoint.
    fn local_addr(&self) -> SocketAddr;

    /// Largest payload [`Transport::send`] accepts, in bytes.
    fn max_payload(&self) -> usize;

    /// Queues `payload` for `to`. Delivery is not guaranteed; a send to an address nobody
    /// listens on is silently lost, as with UDP.
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError>;

    /// Copies the next pending datagram into `buf`. Returns `Ok(None)` when nothing is pending.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError>;

    /// For connection-oriented transports: the next peer whose connection closed, so a session
    /// can drop it at once instead of waiting for a timeout. Datagram transports return `None`
    /// (the default).
    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        None
    }

    /// For connection-oriented transports: closes the connection to `peer` (a session dropped
    /// it). Datagram transports do nothing (the default).
    fn close_peer(&mut self, peer: SocketAddr) {
        let _ = peer;
    }

    /// The session layer proved that `peer` is a legitimate client (it completed the
    /// handshake). Connection-oriented transports use it to time out and evict unproven
    /// connections first; datagram transports ignore it (the default).
    fn mark_validated(&mut self, peer: SocketAddr) {
        let _ = peer;
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn local_addr(&self) -> SocketAddr {
        (**self).local_addr()
    }
    fn max_payload(&self) -> usize {
        (**self).max_payload()
    }
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        (**self).send(to, payload)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        (**self).recv(buf)
    }
    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        (**self).poll_closed_peer()
    }
    fn close_peer(&mut self, peer: SocketAddr) {
        (**self).close_peer(peer)
    }
    fn mark_validated(&mut self, peer: SocketAddr) {
        (**self).mark_validated(peer)
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn local_addr(&self) -> SocketAddr {
        (**self).local_addr()
    }
    fn max_payload(&self) -> usize {
        (**self).max_payload()
    }
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        (**self).send(to, payload)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        (**self).recv(buf)
    }
    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        (**self).poll_closed_peer()
    }
    fn close_peer(&mut self, peer: SocketAddr) {
        (**self).close_peer(peer)
    }
    fn mark_validated(&mut self, peer: SocketAddr) {
        (**self).mark_validated(peer)
    }
}
