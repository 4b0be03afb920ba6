//! In-process datagram network with deterministic delivery.
//!
//! A [`LoopbackNet`] is a set of bound addresses, each with a bounded FIFO queue. A send to a
//! bound address is appended to that address's queue at once (no delay, no loss, no
//! reordering); wrap an endpoint in [`NetSim`](crate::netsim::NetSim) to impair it. Like UDP, a
//! send to an address nobody is bound to is silently lost, and a send to a full queue is dropped;
//! both are counted in [`LoopbackStats`].
//!
//! The handle is cheap to clone and `Send`, so endpoints can live on different threads, but the
//! network itself never blocks and never spawns anything: delivery order is exactly the order of
//! `send` calls.
//!
//! ```
//! use statewire_transport::Transport;
//! use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
//!
//! # fn main() -> Result<(), statewire_transport::TransportError> {
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let mut a = net.endpoint();
//! let mut b = net.endpoint();
//! a.send(b.local_addr(), b"hello")?;
//!
//! let mut buf = [0u8; 1500];
//! let got = b.recv(&mut buf)?.expect("queued by the send above");
//! assert_eq!(&buf[..got.len], b"hello");
//! assert_eq!(got.from, a.local_addr());
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{Received, Transport, TransportError};

/// First port handed out by [`LoopbackNet::endpoint`].
const FIRST_AUTO_PORT: u16 = 10_000;
/// Ports per address available to automatic allocation (`10000..=65535`).
const AUTO_PORTS: u64 = 65_536 - FIRST_AUTO_PORT as u64;
/// Addresses `127.0.0.1..=127.255.255.254` available to automatic allocation.
const AUTO_HOSTS: u64 = 0x00FF_FFFE;

/// Limits of a [`LoopbackNet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopbackConfig {
    /// Largest payload an endpoint accepts, in bytes; larger sends fail with
    /// [`TransportError::PayloadTooLarge`].
    ///
    /// Default: 65 507, the largest UDP payload over IPv4, so code tested on loopback does not
    /// come to rely on datagrams a real socket would refuse.
    pub max_payload: usize,
    /// Most datagrams waiting in one endpoint's receive queue; further datagrams to that
    /// endpoint are dropped until it receives some.
    ///
    /// Default: 4096.
    pub max_queued_datagrams: usize,
    /// Most payload bytes waiting in one endpoint's receive queue; a datagram that would exceed
    /// it is dropped. Bounds memory when a receiver stops reading.
    ///
    /// Default: 8 MiB (8 388 608 bytes).
    pub max_queued_bytes: usize,
}

impl Default for LoopbackConfig {
    fn default() -> Self {
        Self {
            max_payload: 65_507,
            max_queued_datagrams: 4096,
            max_queued_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Counters of a [`LoopbackNet`], summed over all endpoints since the network was created.
///
/// Every accepted send ends in exactly one of `delivered`, `dropped_queue_full` or
/// `dropped_unknown_addr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopbackStats {
    /// Sends accepted (payload within [`LoopbackConfig::max_payload`]).
    pub sent: u64,
    /// Datagrams appended to a destination's receive queue.
    pub delivered: u64,
    /// Datagrams taken out of a receive queue by [`Transport::recv`].
    pub received: u64,
    /// Datagrams dropped because the destination's queue was at one of its limits.
    pub dropped_queue_full: u64,
    /// Datagrams sent to an address no endpoint was bound to.
    pub dropped_unknown_addr: u64,
    /// Datagrams still queued at an endpoint when it was dropped.
    pub discarded_on_unbind: u64,
}

/// Why [`LoopbackNet::bind`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Another live endpoint already holds the address.
    #[error("address {0} is already bound")]
    AddrInUse(SocketAddr),
    /// Port 0 means "any port" to real sockets; use [`LoopbackNet::endpoint`] for that.
    #[error("cannot bind port 0 on the loopback network")]
    PortZero,
}

#[derive(Debug, Default)]
struct Queue {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    bytes: usize,
}

#[derive(Debug)]
struct State {
    config: LoopbackConfig,
    endpoints: HashMap<SocketAddr, Queue>,
    /// Position in the automatic address sequence; see [`auto_addr`].
    next_auto: u64,
    stats: LoopbackStats,
}

/// Maps a position in the automatic sequence to an address: ports 10000..=65535 on 127.0.0.1,
/// then the same ports on 127.0.0.2, and so on, so allocation never runs out while memory lasts.
fn auto_addr(index: u64) -> SocketAddr {
    let host = (index / AUTO_PORTS) % AUTO_HOSTS;
    let port = FIRST_AUTO_PORT as u64 + index % AUTO_PORTS;
    // Both values are in range by construction: host < 2^24 - 2, port <= 65535.
    let ip = Ipv4Addr::from(0x7F00_0001u32.wrapping_add(host as u32));
    SocketAddr::new(IpAddr::V4(ip), port as u16)
}

/// Handle to an in-process datagram network; clones share the same network.
#[derive(Debug, Clone)]
pub struct LoopbackNet {
    state: Arc<Mutex<State>>,
}

impl LoopbackNet {
    /// Creates an empty network.
    pub fn new(config: LoopbackConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                config,
                endpoints: HashMap::new(),
                next_auto: 0,
                stats: LoopbackStats::default(),
            })),
        }
    }

    /// The network's state. Every update below completes without panicking, so a poisoned lock
    /// (a panic elsewhere while holding it) still guards consistent data and is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds a new endpoint to the next free address, starting at `127.0.0.1:10000` and
    /// counting up (skipping addresses taken with [`LoopbackNet::bind`]).
    pub fn endpoint(&self) -> LoopbackEndpoint {
        let mut state = self.lock();
        let addr = loop {
            let candidate = auto_addr(state.next_auto);
            state.next_auto = (state.next_auto + 1) % (AUTO_PORTS * AUTO_HOSTS);
            // Terminates: the sequence has ~9e11 addresses, far more than can be live at once.
            if !state.endpoints.contains_key(&candidate) {
                break candidate;
            }
        };
        state.endpoints.insert(addr, Queue::default());
        LoopbackEndpoint {
            net: self.clone(),
            addr,
        }
    }

    /// Binds a new endpoint to `addr`.
    pub fn bind(&self, addr: SocketAddr) -> Result<LoopbackEndpoint, BindError> {
        if addr.port() == 0 {
            return Err(BindError::PortZero);
        }
        let mut state = self.lock();
        if state.endpoints.contains_key(&addr) {
            return Err(BindError::AddrInUse(addr));
        }
        state.endpoints.insert(addr, Queue::default());
        Ok(LoopbackEndpoint {
            net: self.clone(),
            addr,
        })
    }

    /// Counters since the network was created.
    pub fn stats(&self) -> LoopbackStats {
        self.lock().stats
    }

    /// The limits the network was created with.
    pub fn config(&self) -> LoopbackConfig {
        self.lock().config.clone()
    }
}

/// One bound address on a [`LoopbackNet`]. Dropping it unbinds the address and discards its
/// queue.
#[derive(Debug)]
pub struct LoopbackEndpoint {
    net: LoopbackNet,
    addr: SocketAddr,
}

impl LoopbackEndpoint {
    /// Number of datagrams waiting in this endpoint's receive queue.
    pub fn pending(&self) -> usize {
        self.net
            .lock()
            .endpoints
            .get(&self.addr)
            .map_or(0, |q| q.datagrams.len())
    }

    /// The network this endpoint is bound on.
    pub fn net(&self) -> &LoopbackNet {
        &self.net
    }
}

impl Transport for LoopbackEndpoint {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn max_payload(&self) -> usize {
        self.net.lock().config.max_payload
    }

    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let mut guard = self.net.lock();
        let state = &mut *guard;
        let max = state.config.max_payload;
        if payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        state.stats.sent += 1;
        let Some(queue) = state.endpoints.get_mut(&to) else {
            state.stats.dropped_unknown_addr += 1;
            return Ok(());
        };
        let over_count = queue.datagrams.len() >= state.config.max_queued_datagrams;
        let over_bytes = queue.bytes.saturating_add(payload.len()) > state.config.max_queued_bytes;
        if over_count || over_bytes {
            state.stats.dropped_queue_full += 1;
            return Ok(());
        }
        queue.bytes += payload.len();
        queue.datagrams.push_back((self.addr, payload.to_vec()));
        state.stats.delivered += 1;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        let mut guard = self.net.lock();
        let state = &mut *guard;
        // Only our own Drop removes the entry, so a miss means the network is unusable.
        let queue = state
            .endpoints
            .get_mut(&self.addr)
            .ok_or(TransportError::Closed)?;
        let Some((_, payload)) = queue.datagrams.front() else {
            return Ok(None);
        };
        if payload.len() > buf.len() {
            return Err(TransportError::BufferTooSmall {
                needed: payload.len(),
                capacity: buf.len(),
            });
        }
        let Some((from, payload)) = queue.datagrams.pop_front() else {
            return Ok(None);
        };
        queue.bytes -= payload.len();
        buf[..payload.len()].copy_from_slice(&payload);
        state.stats.received += 1;
        Ok(Some(Received {
            len: payload.len(),
            from,
        }))
    }
}

impl Drop for LoopbackEndpoint {
    fn drop(&mut self) {
        let mut state = self.net.lock();
        if let Some(queue) = state.endpoints.remove(&self.addr) {
            state.stats.discarded_on_unbind += queue.datagrams.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address literal")
    }

    fn recv_vec(ep: &mut LoopbackEndpoint) -> Option<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let got = ep.recv(&mut buf).expect("recv")?;
        Some((got.from, buf[..got.len].to_vec()))
    }

    #[test]
    fn auto_addresses_count_up_from_10000() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let a = net.endpoint();
        let b = net.endpoint();
        assert_eq!(a.local_addr(), addr("127.0.0.1:10000"));
        assert_eq!(b.local_addr(), addr("127.0.0.1:10001"));
    }

    #[test]
    fn auto_allocation_skips_bound_addresses() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let _taken = net.bind(addr("127.0.0.1:10000")).expect("free");
        let a = net.endpoint();
        assert_eq!(a.local_addr(), addr("127.0.0.1:10001"));
    }

    #[test]
    fn auto_address_sequence_moves_to_next_host_after_last_port() {
        assert_eq!(auto_addr(AUTO_PORTS - 1), addr("127.0.0.1:65535"));
        assert_eq!(auto_addr(AUTO_PORTS), addr("127.0.0.2:10000"));
        assert_eq!(
            auto_addr(AUTO_PORTS * AUTO_HOSTS - 1),
            addr("127.255.255.254:65535")
        );
    }

    #[test]
    fn delivers_in_fifo_order_with_sender_address() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut a = net.endpoint();
        let mut b = net.endpoint();
        let mut c = net.endpoint();
        for i in 0u8..10 {
            let sender = if i % 2 == 0 { &mut a } else { &mut c };
            sender.send(b.local_addr(), &[i; 3]).expect("send");
        }
        for i in 0u8..10 {
            let from = if i % 2 == 0 {
                a.local_addr()
            } else {
                c.local_addr()
            };
            assert_eq!(recv_vec(&mut b), Some((from, vec![i; 3])));
        }
        assert_eq!(recv_vec(&mut b), None);
        let stats = net.stats();
        assert_eq!((stats.sent, stats.delivered, stats.received), (10, 10, 10));
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let net = LoopbackNet::new(LoopbackConfig {
            max_queued_datagrams: 4,
            ..LoopbackConfig::default()
        });
        let mut a = net.endpoint();
        let mut b = net.endpoint();
        for i in 0u8..6 {
            a.send(b.local_addr(), &[i])
                .expect("a full queue is not an error");
        }
        let stats = net.stats();
        assert_eq!(stats.sent, 6);
        assert_eq!(stats.delivered, 4);
        assert_eq!(stats.dropped_queue_full, 2);
        // The oldest datagrams survive; the late ones were dropped.
        for i in 0u8..4 {
            assert_eq!(recv_vec(&mut b).map(|(_, p)| p), Some(vec![i]));
        }
        assert_eq!(recv_vec(&mut b), None);
        // Draining makes room again.
        a.send(b.local_addr(), &[9]).expect("send");
        assert_eq!(recv_vec(&mut b).map(|(_, p)| p), Some(vec![9]));
    }

    #[test]
    fn queue_byte_limit_drops_and_counts() {
        let net = LoopbackNet::new(LoopbackConfig {
            max_queued_bytes: 10,
            ..LoopbackConfig::default()
        });
        let mut a = net.endpoint();
        let b = net.endpoint();
        a.send(b.local_addr(), &[0; 6]).expect("send");
        a.send(b.local_addr(), &[0; 6]).expect("send");
        a.send(b.local_addr(), &[0; 4]).expect("send");
        let stats = net.stats();
        assert_eq!((stats.delivered, stats.dropped_queue_full), (2, 1));
        assert_eq!(b.pending(), 2);
    }

    #[test]
    fn unknown_address_is_silently_lost_and_counted() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut a = net.endpoint();
        a.send(addr("127.0.0.1:9"), b"nobody")
            .expect("not an error");
        let stats = net.stats();
        assert_eq!(stats.sent, 1);
        assert_eq!(stats.dropped_unknown_addr, 1);
        assert_eq!(stats.delivered, 0);
    }

    #[test]
    fn buffer_too_small_keeps_the_datagram() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut a = net.endpoint();
        let mut b = net.endpoint();
        a.send(b.local_addr(), &[7; 100]).expect("send");
        let mut small = [0u8; 99];
        match b.recv(&mut small) {
            Err(TransportError::BufferTooSmall { needed, capacity }) => {
                assert_eq!((needed, capacity), (100, 99));
            }
            other => panic!("expected BufferTooSmall, got {other:?}"),
        }
        assert_eq!(b.pending(), 1);
        assert_eq!(recv_vec(&mut b).map(|(_, p)| p), Some(vec![7; 100]));
        assert_eq!(net.stats().received, 1);
    }

    #[test]
    fn oversized_send_is_an_error_and_not_counted() {
        let net = LoopbackNet::new(LoopbackConfig {
            max_payload: 8,
            ..LoopbackConfig::default()
        });
        let mut a = net.endpoint();
        let b = net.endpoint();
        assert_eq!(a.max_payload(), 8);
        match a.send(b.local_addr(), &[0; 9]) {
            Err(TransportError::PayloadTooLarge { len: 9, max: 8 }) => {}
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        a.send(b.local_addr(), &[0; 8]).expect("at the limit");
        assert_eq!(net.stats().sent, 1);
    }

    #[test]
    fn bind_rejects_taken_address_and_port_zero() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let a = net.bind(addr("10.0.0.1:7777")).expect("free");
        assert_eq!(a.local_addr(), addr("10.0.0.1:7777"));
        assert_eq!(
            net.bind(addr("10.0.0.1:7777")).err(),
            Some(BindError::AddrInUse(addr("10.0.0.1:7777")))
        );
        assert_eq!(
            net.bind(addr("10.0.0.1:0")).err(),
            Some(BindError::PortZero)
        );
    }

    #[test]
    fn dropping_an_endpoint_unbinds_it() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut a = net.endpoint();
        let b = net.bind(addr("10.0.0.2:5000")).expect("free");
        a.send(b.local_addr(), b"queued").expect("send");
        drop(b);
        assert_eq!(net.stats().discarded_on_unbind, 1);
        a.send(addr("10.0.0.2:5000"), b"lost").expect("send");
        assert_eq!(net.stats().dropped_unknown_addr, 1);
        // The address is free again, with an empty queue.
        let mut b = net.bind(addr("10.0.0.2:5000")).expect("free after drop");
        assert_eq!(recv_vec(&mut b), None);
    }

    #[test]
    fn endpoints_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<LoopbackEndpoint>();
        assert_send::<LoopbackNet>();
    }

    #[test]
    fn send_to_self_loops_back() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut a = net.endpoint();
        let me = a.local_addr();
        a.send(me, b"echo").expect("send");
        assert_eq!(recv_vec(&mut a), Some((me, b"echo".to_vec())));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// Every accepted send is accounted for exactly once, and queues honour their limits.
            #[test]
            fn accounting_holds(ops in prop::collection::vec((0u8..4, 0usize..3, 0usize..40), 0..200)) {
                let net = LoopbackNet::new(LoopbackConfig {
                    max_payload: 32,
                    max_queued_datagrams: 5,
                    max_queued_bytes: 64,
                });
                let mut eps = vec![net.endpoint(), net.endpoint(), net.endpoint()];
                let unknown = addr("127.0.0.1:9");
                let mut buf = [0u8; 16];
                for (op, who, len) in ops {
                    let target = if who == 2 { unknown } else { eps[who].local_addr() };
                    match op {
                        0 | 1 => {
                            let res = eps[who].send(target, &vec![1; len]);
                            prop_assert_eq!(res.is_err(), len > 32);
                        }
                        2 => { let _ = eps[who].recv(&mut buf); }
                        _ => { let _ = eps[who].recv(&mut [0u8; 64]); }
                    }
                    for ep in &eps {
                        prop_assert!(ep.pending() <= 5);
                    }
                    let s = net.stats();
                    prop_assert_eq!(s.sent, s.delivered + s.dropped_queue_full + s.dropped_unknown_addr);
                    let pending: u64 = eps.iter().map(|e| e.pending() as u64).sum();
                    prop_assert_eq!(s.delivered, s.received + pending);
                }
                eps.clear();
            }
        }
    }
}
