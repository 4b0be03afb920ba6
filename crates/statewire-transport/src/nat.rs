//! Deterministic NAT devices on the [`loopback`](crate::loopback) network.
//!
//! A [`NatEndpoint`] is one inside host's socket behind its own NAT device. The host talks
//! through it like any [`Transport`]; every outbound datagram leaves from a *mapping*, a public
//! address `public_ip:port` that the device binds on the [`LoopbackNet`] when the mapping is
//! created and unbinds (by dropping its endpoint) when the mapping expires. Inbound datagrams
//! reach the host only through a live mapping and only if the device's filter lets them in, so
//! NAT hole punching and relay fallback can be tested without real routers.
//!
//! The four [`NatKind`]s follow RFC 4787's mapping and filtering behaviours:
//!
//! | kind                    | mapping                    | filtering                          |
//! |-------------------------|----------------------------|------------------------------------|
//! | [`FullCone`]            | endpoint-independent       | endpoint-independent               |
//! | [`AddressRestricted`]   | endpoint-independent       | address-dependent                  |
//! | [`PortRestricted`]      | endpoint-independent       | address-and-port-dependent         |
//! | [`Symmetric`]           | address-and-port-dependent | only the mapping's own destination |
//!
//! [`FullCone`]: NatKind::FullCone
//! [`AddressRestricted`]: NatKind::AddressRestricted
//! [`PortRestricted`]: NatKind::PortRestricted
//! [`Symmetric`]: NatKind::Symmetric
//!
//! There is no randomness and no wall clock: the caller moves the device's clock with
//! [`NatEndpoint::advance_to`], ports are handed out sequentially from
//! [`NatConfig::first_port`], and the same calls give the same ports and outcomes on every run.
//!
//! # Drain rule
//!
//! The filter is applied when a datagram is read, at the device's current virtual time. Read
//! with [`Transport::recv`] until it returns `Ok(None)` before calling
//! [`NatEndpoint::advance_to`], so that the time a datagram is judged at is the time it arrived.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use statewire_transport::Transport;
//! use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
//! use statewire_transport::nat::{NatConfig, NatEndpoint, NatKind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let mut server = net.bind("198.51.100.1:3478".parse()?)?;
//! let mut stranger = net.bind("198.51.100.2:3478".parse()?)?;
//! let private: SocketAddr = "192.168.1.10:5000".parse()?;
//! let config = NatConfig::new(NatKind::PortRestricted, "203.0.113.1".parse()?);
//! let mut host = NatEndpoint::new(&net, private, config);
//!
//! // The first outbound datagram creates a mapping; the server sees the public address.
//! host.send(server.local_addr(), b"hello")?;
//! let mut buf = [0u8; 1500];
//! let got = server.recv(&mut buf)?.expect("sent above");
//! assert_eq!(got.from, "203.0.113.1:40000".parse()?);
//! assert_eq!(host.public_addr_towards(server.local_addr()), Some(got.from));
//!
//! // The contacted server may answer; a stranger's datagram to the same mapping is filtered.
//! server.send(got.from, b"welcome")?;
//! stranger.send(got.from, b"spam")?;
//! let reply = host.recv(&mut buf)?.expect("the server's answer passes the filter");
//! assert_eq!((&buf[..reply.len], reply.from), (&b"welcome"[..], server.local_addr()));
//! assert_eq!(host.recv(&mut buf)?, None);
//! assert_eq!(host.stats().inbound_filtered, 1);
//!
//! // Thirty idle seconds later the mapping is gone, and so is its public address.
//! host.advance_to(Duration::from_secs(30));
//! assert_eq!(host.mapping_count(), 0);
//! server.send(got.from, b"too late")?;
//! assert_eq!(host.recv(&mut buf)?, None);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::time::Duration;

use crate::loopback::{LoopbackEndpoint, LoopbackNet};
use crate::{Received, Transport, TransportError};

/// How a NAT device maps inside sockets to public ports and which inbound datagrams it admits,
/// in the terms of RFC 4787.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NatKind {
    /// Endpoint-independent mapping and endpoint-independent filtering: one public port for the
    /// socket, and anyone may send to it while the mapping lives.
    FullCone,
    /// Endpoint-independent mapping and address-dependent filtering: one public port for the
    /// socket; inbound is admitted from any port of an IP address the host has sent to.
    AddressRestricted,
    /// Endpoint-independent mapping and address-and-port-dependent filtering: one public port
    /// for the socket; inbound is admitted only from exact addresses the host has sent to.
    PortRestricted,
    /// Address-and-port-dependent mapping: a new public port per destination, and each port
    /// admits inbound only from that destination.
    Symmetric,
}

/// Behaviour and limits of one NAT device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping and filtering behaviour.
    pub kind: NatKind,
    /// The device's outside address; every mapping binds a port on it.
    pub public_ip: IpAddr,
    /// First public port handed out. Allocation is sequential from here, skipping ports already
    /// bound on the network (by this device or anyone else), and wraps around within
    /// `first_port..=65535`; a port freed by an expired mapping is reused only after the
    /// sequence comes back to it.
    ///
    /// Default: 40 000.
    pub first_port: u16,
    /// How long a mapping, and each filter permission of it, lives after the last *outbound*
    /// datagram through it. Inbound traffic does not refresh anything. A mapping is gone once
    /// [`NatEndpoint::advance_to`] reaches `last_outbound + mapping_timeout`; a permission is
    /// refused from that time on.
    ///
    /// Default: 30 s, a common UDP NAT timeout.
    pub mapping_timeout: Duration,
    /// Most live mappings. When the table is full, a send that needs a new mapping is dropped
    /// and counted in [`NatStats::outbound_dropped`].
    ///
    /// Default: 1024.
    pub max_mappings: usize,
    /// Most filter permissions (remembered destinations) per mapping. When full, recording a
    /// new one evicts the least recently refreshed; the send itself still goes out. Only
    /// [`NatKind::AddressRestricted`] and [`NatKind::PortRestricted`] can reach it, since a
    /// full cone keeps no permissions and a symmetric mapping has exactly one.
    ///
    /// Default: 1024.
    pub max_permissions: usize,
}

impl NatConfig {
    /// A device of `kind` at `public_ip`, with the documented defaults for everything else.
    pub fn new(kind: NatKind, public_ip: IpAddr) -> Self {
        Self {
            kind,
            public_ip,
            first_port: 40_000,
            mapping_timeout: Duration::from_secs(30),
            max_mappings: 1024,
            max_permissions: 1024,
        }
    }
}

/// Counters of one [`NatEndpoint`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Datagrams forwarded from a mapping's public address.
    pub outbound: u64,
    /// Sends dropped because they needed a new mapping and the table was full
    /// ([`NatConfig::max_mappings`]) or no public port was free.
    pub outbound_dropped: u64,
    /// Datagrams handed to the inside host by [`Transport::recv`].
    pub inbound_delivered: u64,
    /// Datagrams that reached a live mapping but were refused by its filter.
    pub inbound_filtered: u64,
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings removed by [`NatEndpoint::advance_to`] after [`NatConfig::mapping_timeout`]
    /// without outbound traffic.
    pub mappings_expired: u64,
}

/// Which key a filter permission is remembered under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Permission {
    Ip(IpAddr),
    Addr(SocketAddr),
}

impl Permission {
    /// The permission an outbound datagram to (or an inbound one from) `peer` corresponds to;
    /// `None` where the filter admits everyone.
    fn for_peer(kind: NatKind, peer: SocketAddr) -> Option<Self> {
        match kind {
            NatKind::FullCone => None,
            NatKind::AddressRestricted => Some(Self::Ip(peer.ip())),
            NatKind::PortRestricted | NatKind::Symmetric => Some(Self::Addr(peer)),
        }
    }
}

/// One public port of the device.
#[derive(Debug)]
struct Mapping {
    /// Bound at the public address; dropping it unbinds the address, so traffic to an expired
    /// mapping is lost like traffic to any unbound address.
    endpoint: LoopbackEndpoint,
    last_outbound: Duration,
    /// When each permission was last refreshed by an outbound datagram.
    permissions: BTreeMap<Permission, Duration>,
}

/// Key of the mapping table: `None` for the single endpoint-independent mapping, the
/// destination for symmetric ones. A `BTreeMap` keeps iteration (and so `recv` fairness)
/// deterministic.
type MappingKey = Option<SocketAddr>;

/// Whether something stamped at `at` is still alive at `now`.
fn alive(at: Duration, now: Duration, timeout: Duration) -> bool {
    now.saturating_sub(at) < timeout
}

/// One inside host's socket behind its own NAT device, on a [`LoopbackNet`].
///
/// Nothing is bound at the private address: the host is reachable only through its mappings.
#[derive(Debug)]
pub struct NatEndpoint {
    net: LoopbackNet,
    private_addr: SocketAddr,
    config: NatConfig,
    max_payload: usize,
    now: Duration,
    mappings: BTreeMap<MappingKey, Mapping>,
    next_port: u16,
    /// The mapping that delivered last; `recv` starts polling after it.
    cursor: Option<MappingKey>,
    /// Holds one datagram as it comes off a mapping, before the filter has judged it.
    scratch: Vec<u8>,
    /// A datagram that passed the filter but did not fit the caller's buffer; its bytes are in
    /// `scratch`, and the next `recv` hands it out before anything else.
    held: Option<Received>,
    stats: NatStats,
}

impl NatEndpoint {
    /// A host at `private_addr` behind a new NAT device on `net`. The clock starts at
    /// [`Duration::ZERO`]; no mapping exists until the first send.
    pub fn new(net: &LoopbackNet, private_addr: SocketAddr, config: NatConfig) -> Self {
        let max_payload = net.config().max_payload;
        Self {
            net: net.clone(),
            private_addr,
            next_port: config.first_port,
            config,
            max_payload,
            now: Duration::ZERO,
            mappings: BTreeMap::new(),
            cursor: None,
            scratch: vec![0; max_payload],
            held: None,
            stats: NatStats::default(),
        }
    }

    /// Moves the clock to `now` (a time earlier than the current clock is ignored), removes
    /// mappings idle for [`NatConfig::mapping_timeout`] (unbinding their public addresses and
    /// discarding whatever was queued there) and forgets expired permissions.
    pub fn advance_to(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let (now, timeout) = (self.now, self.config.mapping_timeout);
        let stats = &mut self.stats;
        self.mappings.retain(|_, mapping| {
            if !alive(mapping.last_outbound, now, timeout) {
                stats.mappings_expired += 1;
                return false;
            }
            mapping.permissions.retain(|_, at| alive(*at, now, timeout));
            true
        });
    }

    /// The current virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Counters since creation.
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// Number of live mappings.
    pub fn mapping_count(&self) -> usize {
        self.mappings.len()
    }

    /// The public address a datagram to `dest` would leave from now, or `None` if sending to
    /// `dest` would first have to create a mapping.
    pub fn public_addr_towards(&self, dest: SocketAddr) -> Option<SocketAddr> {
        self.mappings
            .get(&self.mapping_key(dest))
            .map(|m| m.endpoint.local_addr())
    }

    /// The device's behaviour and limits.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    fn mapping_key(&self, dest: SocketAddr) -> MappingKey {
        match self.config.kind {
            NatKind::Symmetric => Some(dest),
            NatKind::FullCone | NatKind::AddressRestricted | NatKind::PortRestricted => None,
        }
    }

    /// Binds the next free public port, or `None` if every port in the range is taken.
    fn allocate(&mut self) -> Option<LoopbackEndpoint> {
        let first = self.config.first_port;
        let span = u32::from(u16::MAX) - u32::from(first) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == u16::MAX { first } else { port + 1 };
            // Any bind error means this port is unusable (taken, or port 0); try the next.
            if let Ok(endpoint) = self.net.bind(SocketAddr::new(self.config.public_ip, port)) {
                return Some(endpoint);
            }
        }
        None
    }

    /// The mapping after `key` in table order, wrapping to the first.
    fn key_after(&self, key: Option<MappingKey>) -> Option<MappingKey> {
        let after = match key {
            Some(k) => self
                .mappings
                .range((Bound::Excluded(k), Bound::Unbounded))
                .next(),
            None => None,
        };
        after
            .or_else(|| self.mappings.iter().next())
            .map(|(k, _)| *k)
    }

    /// Copies the held datagram out, or reports that it still does not fit.
    fn take_held(&mut self, held: Received, buf: &mut [u8]) -> Result<Received, TransportError> {
        if held.len > buf.len() {
            self.held = Some(held);
            return Err(TransportError::BufferTooSmall {
                needed: held.len,
                capacity: buf.len(),
            });
        }
        buf[..held.len].copy_from_slice(&self.scratch[..held.len]);
        self.stats.inbound_delivered += 1;
        Ok(held)
    }
}

impl Transport for NatEndpoint {
    fn local_addr(&self) -> SocketAddr {
        self.private_addr
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Sends `payload` from the mapping for `to`, creating it if needed and refreshing it and
    /// the permission for `to`. A send that needs a new mapping when none can be made is
    /// dropped (counted in [`NatStats::outbound_dropped`]) and still returns `Ok`, as a router
    /// would drop it silently.
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        if payload.len() > self.max_payload {
            return Err(TransportError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let key = self.mapping_key(to);
        if !self.mappings.contains_key(&key) {
            let endpoint = if self.mappings.len() < self.config.max_mappings {
                self.allocate()
            } else {
                None
            };
            let Some(endpoint) = endpoint else {
                self.stats.outbound_dropped += 1;
                return Ok(());
            };
            self.mappings.insert(
                key,
                Mapping {
                    endpoint,
                    last_outbound: self.now,
                    permissions: BTreeMap::new(),
                },
            );
            self.stats.mappings_created += 1;
        }
        let now = self.now;
        let max_permissions = self.config.max_permissions;
        let Some(mapping) = self.mappings.get_mut(&key) else {
            // Inserted just above if it was missing.
            return Ok(());
        };
        mapping.last_outbound = now;
        if let Some(permission) = Permission::for_peer(self.config.kind, to) {
            let permissions = &mut mapping.permissions;
            if !permissions.contains_key(&permission) && permissions.len() >= max_permissions {
                // Bounded by max_permissions entries.
                let oldest = permissions
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(p, _)| *p);
                if let Some(oldest) = oldest {
                    permissions.remove(&oldest);
                }
            }
            if max_permissions > 0 {
                permissions.insert(permission, now);
            }
        }
        mapping.endpoint.send(to, payload)?;
        self.stats.outbound += 1;
        Ok(())
    }

    /// Polls the mappings round-robin in table order, starting after the one that delivered
    /// last, discarding datagrams the filter refuses (counted in [`NatStats::inbound_filtered`])
    /// and returning the first admitted one with `from` set to its real sender.
    ///
    /// An admitted datagram larger than `buf` yields [`TransportError::BufferTooSmall`] and is
    /// kept; the next call hands it out before anything else. A refused one never causes the
    /// error, whatever its size.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        if let Some(held) = self.held.take() {
            return self.take_held(held, buf).map(Some);
        }
        let (kind, now, timeout) = (self.config.kind, self.now, self.config.mapping_timeout);
        let mut key = self.key_after(self.cursor);
        for _ in 0..self.mappings.len() {
            let Some(k) = key else { break };
            let Some(mapping) = self.mappings.get_mut(&k) else {
                break;
            };
            // Bounded by what is queued now, even if another thread keeps sending.
            for _ in 0..mapping.endpoint.pending() {
                let Some(got) = mapping.endpoint.recv(&mut self.scratch)? else {
                    break;
                };
                let admitted = match Permission::for_peer(kind, got.from) {
                    None => true,
                    Some(p) => mapping
                        .permissions
                        .get(&p)
                        .is_some_and(|at| alive(*at, now, timeout)),
                };
                if !admitted {
                    self.stats.inbound_filtered += 1;
                    continue;
                }
                self.cursor = Some(k);
                return self.take_held(got, buf).map(Some);
            }
            key = self.key_after(Some(k));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::LoopbackConfig;

    const SERVER: &str = "198.51.100.1:3478";
    const SERVER_OTHER_PORT: &str = "198.51.100.1:3479";
    const OTHER_IP: &str = "198.51.100.2:3478";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address literal")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip literal")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn host(net: &LoopbackNet, kind: NatKind) -> NatEndpoint {
        NatEndpoint::new(
            net,
            addr("192.168.1.10:5000"),
            NatConfig::new(kind, ip("203.0.113.1")),
        )
    }

    fn recv_all(t: &mut impl Transport) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match t.recv(&mut buf).expect("recv") {
                Some(got) => out.push((got.from, buf[..got.len].to_vec())),
                None => return out,
            }
        }
        panic!("recv never ran dry");
    }

    /// The host contacts `SERVER`; then the server, the server's IP on another port and a new
    /// IP each send to the mapping. Returns which of the three got through, in that order.
    fn reachability(kind: NatKind) -> [bool; 3] {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, kind);
        let mut peers = [
            net.bind(addr(SERVER)).expect("free"),
            net.bind(addr(SERVER_OTHER_PORT)).expect("free"),
            net.bind(addr(OTHER_IP)).expect("free"),
        ];
        nat.send(addr(SERVER), b"hi").expect("send");
        let public = nat.public_addr_towards(addr(SERVER)).expect("mapped");
        assert_eq!(recv_all(&mut peers[0]), vec![(public, b"hi".to_vec())]);
        let mut through = [false; 3];
        for (i, peer) in peers.iter_mut().enumerate() {
            peer.send(public, &[i as u8]).expect("send");
            let got = recv_all(&mut nat);
            assert!(got.len() <= 1, "{got:?}");
            if let Some((from, payload)) = got.first() {
                assert_eq!(
                    (*from, payload.as_slice()),
                    (peer.local_addr(), &[i as u8][..])
                );
                through[i] = true;
            }
        }
        let admitted = through.iter().filter(|t| **t).count() as u64;
        let stats = nat.stats();
        assert_eq!(stats.inbound_delivered, admitted);
        assert_eq!(stats.inbound_filtered, 3 - admitted);
        through
    }

    #[test]
    fn full_cone_admits_everyone() {
        assert_eq!(reachability(NatKind::FullCone), [true, true, true]);
    }

    #[test]
    fn address_restricted_admits_any_port_of_a_contacted_ip() {
        assert_eq!(
            reachability(NatKind::AddressRestricted),
            [true, true, false]
        );
    }

    #[test]
    fn port_restricted_admits_only_the_contacted_address() {
        assert_eq!(reachability(NatKind::PortRestricted), [true, false, false]);
    }

    #[test]
    fn symmetric_admits_only_the_mapping_destination() {
        assert_eq!(reachability(NatKind::Symmetric), [true, false, false]);
    }

    /// Public ports the host's datagrams to three destinations left from, as the receivers saw.
    fn ports_seen(kind: NatKind) -> Vec<u16> {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, kind);
        let mut peers: Vec<_> = [SERVER, SERVER_OTHER_PORT, OTHER_IP]
            .iter()
            .map(|a| net.bind(addr(a)).expect("free"))
            .collect();
        let mut ports = Vec::new();
        for peer in &mut peers {
            nat.send(peer.local_addr(), b"x").expect("send");
            let got = recv_all(peer);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0.ip(), ip("203.0.113.1"));
            assert_eq!(nat.public_addr_towards(peer.local_addr()), Some(got[0].0));
            ports.push(got[0].0.port());
        }
        assert_eq!(
            nat.mapping_count(),
            ports
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
        ports
    }

    #[test]
    fn symmetric_uses_a_new_port_per_destination() {
        assert_eq!(ports_seen(NatKind::Symmetric), vec![40_000, 40_001, 40_002]);
    }

    #[test]
    fn endpoint_independent_kinds_use_one_port_for_all_destinations() {
        for kind in [
            NatKind::FullCone,
            NatKind::AddressRestricted,
            NatKind::PortRestricted,
        ] {
            assert_eq!(ports_seen(kind), vec![40_000; 3], "{kind:?}");
        }
    }

    #[test]
    fn unmapped_port_is_unreachable_even_for_full_cone() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::FullCone);
        let mut stranger = net.bind(addr(OTHER_IP)).expect("free");
        stranger
            .send(addr("203.0.113.1:40000"), b"early")
            .expect("send");
        assert_eq!(net.stats().dropped_unknown_addr, 1);
        nat.send(addr(SERVER), b"open").expect("send");
        assert_eq!(
            nat.public_addr_towards(addr(SERVER)),
            Some(addr("203.0.113.1:40000"))
        );
        // The early datagram was lost, not queued for a later mapping.
        assert_eq!(recv_all(&mut nat), vec![]);
        // Unsolicited traffic to the live full-cone mapping arrives.
        stranger
            .send(addr("203.0.113.1:40000"), b"now")
            .expect("send");
        assert_eq!(recv_all(&mut nat), vec![(addr(OTHER_IP), b"now".to_vec())]);
    }

    #[test]
    fn idle_mapping_expires_and_inbound_is_then_lost() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::PortRestricted);
        let mut server = net.bind(addr(SERVER)).expect("free");
        nat.send(addr(SERVER), b"hi").expect("send");
        let public = nat.public_addr_towards(addr(SERVER)).expect("mapped");

        nat.advance_to(secs(29));
        server.send(public, b"in time").expect("send");
        assert_eq!(
            recv_all(&mut nat),
            vec![(addr(SERVER), b"in time".to_vec())]
        );
        assert_eq!(nat.mapping_count(), 1);

        // Inbound at 29 s did not refresh anything.
        nat.advance_to(secs(30));
        assert_eq!(nat.mapping_count(), 0);
        assert_eq!(nat.stats().mappings_expired, 1);
        assert_eq!(nat.public_addr_towards(addr(SERVER)), None);
        let lost_before = net.stats().dropped_unknown_addr;
        server.send(public, b"too late").expect("send");
        assert_eq!(net.stats().dropped_unknown_addr, lost_before + 1);
        assert_eq!(recv_all(&mut nat), vec![]);

        // Sending again makes a new mapping on the next port in sequence.
        nat.send(addr(SERVER), b"again").expect("send");
        assert_eq!(
            nat.public_addr_towards(addr(SERVER)),
            Some(addr("203.0.113.1:40001"))
        );
        assert_eq!(nat.stats().mappings_created, 2);
    }

    #[test]
    fn datagrams_queued_at_an_expiring_mapping_are_discarded() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::FullCone);
        let mut server = net.bind(addr(SERVER)).expect("free");
        nat.send(addr(SERVER), b"hi").expect("send");
        let public = nat.public_addr_towards(addr(SERVER)).expect("mapped");
        server.send(public, b"unread").expect("send");
        nat.advance_to(secs(30));
        assert_eq!(net.stats().discarded_on_unbind, 1);
        assert_eq!(recv_all(&mut nat), vec![]);
    }

    #[test]
    fn outbound_traffic_keeps_the_mapping_alive() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::PortRestricted);
        let mut server = net.bind(addr(SERVER)).expect("free");
        for t in (0..=300).step_by(20) {
            nat.advance_to(secs(t));
            nat.send(addr(SERVER), b"keepalive").expect("send");
        }
        nat.advance_to(secs(329));
        assert_eq!(
            nat.public_addr_towards(addr(SERVER)),
            Some(addr("203.0.113.1:40000"))
        );
        server
            .send(addr("203.0.113.1:40000"), b"still here")
            .expect("send");
        assert_eq!(
            recv_all(&mut nat),
            vec![(addr(SERVER), b"still here".to_vec())]
        );
        let stats = nat.stats();
        assert_eq!((stats.mappings_created, stats.mappings_expired), (1, 0));
        assert_eq!(stats.outbound, 16);
    }

    #[test]
    fn permission_expires_even_while_the_mapping_lives() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::PortRestricted);
        let mut a = net.bind(addr(SERVER)).expect("free");
        let _b = net.bind(addr(OTHER_IP)).expect("free");
        nat.send(a.local_addr(), b"once").expect("send");
        for t in [10, 20, 30, 40] {
            nat.advance_to(secs(t));
            nat.send(addr(OTHER_IP), b"other").expect("send");
        }
        assert_eq!(nat.mapping_count(), 1);
        a.send(addr("203.0.113.1:40000"), b"stale").expect("send");
        assert_eq!(recv_all(&mut nat), vec![]);
        assert_eq!(nat.stats().inbound_filtered, 1);
    }

    #[test]
    fn max_mappings_is_enforced_and_counted() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut config = NatConfig::new(NatKind::Symmetric, ip("203.0.113.1"));
        config.max_mappings = 2;
        let mut nat = NatEndpoint::new(&net, addr("192.168.1.10:5000"), config);
        let mut peers: Vec<_> = [SERVER, SERVER_OTHER_PORT, OTHER_IP]
            .iter()
            .map(|a| net.bind(addr(a)).expect("free"))
            .collect();
        for peer in &peers {
            nat.send(peer.local_addr(), b"x")
                .expect("a full table is not an error");
        }
        assert_eq!(nat.mapping_count(), 2);
        assert_eq!(recv_all(&mut peers[2]), vec![]);
        let stats = nat.stats();
        assert_eq!(
            (
                stats.outbound,
                stats.outbound_dropped,
                stats.mappings_created
            ),
            (2, 1, 2)
        );
        // Existing mappings still carry traffic.
        nat.send(peers[0].local_addr(), b"y").expect("send");
        assert_eq!(recv_all(&mut peers[0]).len(), 2);
        // Once one expires there is room again.
        nat.advance_to(secs(20));
        nat.send(peers[0].local_addr(), b"z").expect("send");
        nat.advance_to(secs(30));
        assert_eq!(nat.mapping_count(), 1);
        nat.send(peers[2].local_addr(), b"w").expect("send");
        assert_eq!(recv_all(&mut peers[2]).len(), 1);
        assert_eq!(nat.stats().outbound_dropped, 1);
    }

    #[test]
    fn max_permissions_evicts_the_least_recently_refreshed() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut config = NatConfig::new(NatKind::PortRestricted, ip("203.0.113.1"));
        config.max_permissions = 2;
        let mut nat = NatEndpoint::new(&net, addr("192.168.1.10:5000"), config);
        let mut peers: Vec<_> = [SERVER, SERVER_OTHER_PORT, OTHER_IP]
            .iter()
            .map(|a| net.bind(addr(a)).expect("free"))
            .collect();
        // Refreshing the first keeps it; the second becomes the oldest and is evicted.
        for (t, i) in [(0, 0), (1, 1), (2, 0), (3, 2)] {
            nat.advance_to(secs(t));
            nat.send(peers[i].local_addr(), b"x").expect("send");
        }
        assert_eq!(nat.stats().outbound, 4);
        let public = nat.public_addr_towards(addr(SERVER)).expect("mapped");
        let mut through = Vec::new();
        for peer in &mut peers {
            peer.send(public, b"y").expect("send");
            through.push(!recv_all(&mut nat).is_empty());
        }
        assert_eq!(through, vec![true, false, true]);
    }

    #[test]
    fn port_allocation_skips_taken_ports_and_wraps() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let _squatter = net.bind(addr("203.0.113.1:65534")).expect("free");
        let mut config = NatConfig::new(NatKind::Symmetric, ip("203.0.113.1"));
        config.first_port = 65_533;
        let mut nat = NatEndpoint::new(&net, addr("192.168.1.10:5000"), config);
        let dests = [SERVER, SERVER_OTHER_PORT, OTHER_IP].map(addr);
        nat.send(dests[0], b"x").expect("send");
        nat.send(dests[1], b"x").expect("send");
        assert_eq!(
            nat.public_addr_towards(dests[0]),
            Some(addr("203.0.113.1:65533"))
        );
        assert_eq!(
            nat.public_addr_towards(dests[1]),
            Some(addr("203.0.113.1:65535"))
        );
        // Every port in 65533..=65535 is taken: the third destination cannot be mapped.
        nat.send(dests[2], b"x").expect("send");
        assert_eq!(nat.public_addr_towards(dests[2]), None);
        assert_eq!(nat.stats().outbound_dropped, 1);
        // Freeing 65533 lets the sequence wrap around to it.
        nat.advance_to(secs(15));
        nat.send(dests[1], b"x").expect("send");
        nat.advance_to(secs(30));
        nat.send(dests[2], b"x").expect("send");
        assert_eq!(
            nat.public_addr_towards(dests[2]),
            Some(addr("203.0.113.1:65533"))
        );
    }

    #[test]
    fn recv_round_robins_between_mappings() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::Symmetric);
        let mut a = net.bind(addr(SERVER)).expect("free");
        let mut b = net.bind(addr(OTHER_IP)).expect("free");
        nat.send(a.local_addr(), b"x").expect("send");
        nat.send(b.local_addr(), b"x").expect("send");
        for i in 0u8..3 {
            a.send(
                nat.public_addr_towards(a.local_addr()).expect("mapped"),
                &[i],
            )
            .expect("send");
            b.send(
                nat.public_addr_towards(b.local_addr()).expect("mapped"),
                &[10 + i],
            )
            .expect("send");
        }
        let order: Vec<u8> = recv_all(&mut nat).into_iter().map(|(_, p)| p[0]).collect();
        assert_eq!(order, vec![0, 10, 1, 11, 2, 12]);
    }

    #[test]
    fn buffer_too_small_keeps_an_admitted_datagram() {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut nat = host(&net, NatKind::PortRestricted);
        let mut server = net.bind(addr(SERVER)).expect("free");
        let mut stranger = net.bind(addr(OTHER_IP)).expect("free");
        nat.send(addr(SERVER), b"hi").expect("send");
        let public = nat.public_addr_towards(addr(SERVER)).expect("mapped");
        stranger.send(public, &[1; 100]).expect("send");
        server.send(public, &[7; 100]).expect("send");
        let mut small = [0u8; 99];
        for _ in 0..2 {
            match nat.recv(&mut small) {
                Err(TransportError::BufferTooSmall { needed, capacity }) => {
                    assert_eq!((needed, capacity), (100, 99));
                }
                other => panic!("expected BufferTooSmall, got {other:?}"),
            }
        }
        // The stranger's datagram was filtered without an error; the server's one was kept.
        assert_eq!(nat.stats().inbound_filtered, 1);
        assert_eq!(recv_all(&mut nat), vec![(addr(SERVER), vec![7; 100])]);
        assert_eq!(nat.stats().inbound_delivered, 1);
    }

    #[test]
    fn oversized_send_is_an_error_and_creates_no_mapping() {
        let net = LoopbackNet::new(LoopbackConfig {
            max_payload: 8,
            ..LoopbackConfig::default()
        });
        let mut nat = host(&net, NatKind::FullCone);
        assert_eq!(nat.max_payload(), 8);
        assert_eq!(nat.local_addr(), addr("192.168.1.10:5000"));
        match nat.send(addr(SERVER), &[0; 9]) {
            Err(TransportError::PayloadTooLarge { len: 9, max: 8 }) => {}
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        assert_eq!(nat.mapping_count(), 0);
        assert_eq!(nat.stats(), NatStats::default());
    }

    /// What [`hole_punch`] observed.
    struct Punch {
        /// Payloads Alice received from Bob, in order.
        at_alice: Vec<Vec<u8>>,
        /// Payloads Bob received from Alice, in order.
        at_bob: Vec<Vec<u8>>,
        /// Alice's and Bob's public addresses as the server saw them.
        seen: [SocketAddr; 2],
        alice: NatEndpoint,
        bob: NatEndpoint,
    }

    /// Alice and Bob register with a rendezvous server, which tells each the other's public
    /// address as it observed it; both then send to that address a few times.
    fn hole_punch(kind: NatKind) -> Punch {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut server = net.bind(addr(SERVER)).expect("free");
        let mut alice = NatEndpoint::new(
            &net,
            addr("192.168.1.10:5000"),
            NatConfig::new(kind, ip("203.0.113.1")),
        );
        let mut bob = NatEndpoint::new(
            &net,
            addr("10.0.0.20:6000"),
            NatConfig::new(kind, ip("203.0.113.2")),
        );
        alice.send(addr(SERVER), b"register").expect("send");
        bob.send(addr(SERVER), b"register").expect("send");
        let seen: Vec<SocketAddr> = recv_all(&mut server)
            .into_iter()
            .map(|(from, _)| from)
            .collect();
        assert_eq!(seen.len(), 2);
        let seen = [seen[0], seen[1]];
        server
            .send(seen[0], seen[1].to_string().as_bytes())
            .expect("send");
        server
            .send(seen[1], seen[0].to_string().as_bytes())
            .expect("send");
        let learn = |nat: &mut NatEndpoint| -> SocketAddr {
            let got = recv_all(nat);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].0, addr(SERVER));
            std::str::from_utf8(&got[0].1)
                .expect("utf-8")
                .parse()
                .expect("address")
        };
        let bob_public = learn(&mut alice);
        let alice_public = learn(&mut bob);
        assert_eq!((alice_public, bob_public), (seen[0], seen[1]));

        let (mut at_alice, mut at_bob) = (Vec::new(), Vec::new());
        for round in 0u8..3 {
            alice.send(bob_public, &[b'a', round]).expect("send");
            at_bob.extend(recv_all(&mut bob).into_iter().map(|(_, p)| p));
            bob.send(alice_public, &[b'b', round]).expect("send");
            at_alice.extend(recv_all(&mut alice).into_iter().map(|(_, p)| p));
        }
        Punch {
            at_alice,
            at_bob,
            seen,
            alice,
            bob,
        }
    }

    #[test]
    fn port_restricted_nats_can_hole_punch() {
        let Punch {
            at_alice,
            at_bob,
            seen,
            alice,
            bob,
        } = hole_punch(NatKind::PortRestricted);
        // Alice's first datagram is refused by Bob's NAT (Bob has not sent to her yet) but
        // opens her own; from then on both directions flow.
        assert_eq!(at_alice, vec![vec![b'b', 0], vec![b'b', 1], vec![b'b', 2]]);
        assert_eq!(at_bob, vec![vec![b'a', 1], vec![b'a', 2]]);
        assert_eq!(bob.stats().inbound_filtered, 1);
        assert_eq!(alice.stats().inbound_filtered, 0);
        // The address toward the peer is the one the server saw.
        assert_eq!(alice.public_addr_towards(seen[1]), Some(seen[0]));
        assert_eq!(bob.public_addr_towards(seen[0]), Some(seen[1]));
    }

    #[test]
    fn symmetric_nats_cannot_hole_punch() {
        let Punch {
            at_alice,
            at_bob,
            seen,
            alice,
            bob,
        } = hole_punch(NatKind::Symmetric);
        assert_eq!(at_alice, Vec::<Vec<u8>>::new());
        assert_eq!(at_bob, Vec::<Vec<u8>>::new());
        // Each side's packets to the peer leave from a port the server never saw, and the
        // ports the server saw admit only the server.
        let alice_to_bob = alice.public_addr_towards(seen[1]).expect("mapped");
        let bob_to_alice = bob.public_addr_towards(seen[0]).expect("mapped");
        assert_ne!(alice_to_bob, seen[0]);
        assert_ne!(bob_to_alice, seen[1]);
        assert_eq!(alice.stats().inbound_filtered, 3);
        assert_eq!(bob.stats().inbound_filtered, 3);
    }

    #[test]
    fn same_calls_give_same_ports_and_outcomes() {
        let run = || {
            let Punch {
                at_alice,
                at_bob,
                seen,
                alice,
                bob,
            } = hole_punch(NatKind::PortRestricted);
            (at_alice, at_bob, seen, alice.stats(), bob.stats())
        };
        assert_eq!(run(), run());
    }
}
