//! UDP transport on a non-blocking [`std::net::UdpSocket`].
//!
//! [`UdpTransport`] maps [`Transport`] one to one onto datagrams: each
//! [`send`](Transport::send) is one `send_to`, each [`recv`](Transport::recv) returns at most one
//! datagram. Nothing blocks: a send the socket cannot take right now is dropped and counted, and
//! a receive with nothing pending returns `Ok(None)`.
//!
//! Peer input never makes it fail. A datagram larger than [`UdpConfig::max_payload`] is detected
//! (the socket reads into a buffer one byte larger than the limit, so a truncated datagram
//! shows up as "one byte too many"), dropped and counted in [`UdpStats::dropped_oversized`].
//! The "connection reset" errors some systems (notably Windows) raise on a later receive when an
//! earlier datagram drew an ICMP port-unreachable are not failures of this socket: they are
//! counted in [`UdpStats::connection_resets`] and skipped.
//!
//! ```
//! use statewire_transport::Transport;
//! use statewire_transport::udp::{UdpConfig, UdpTransport};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut a = UdpTransport::bind("127.0.0.1:0".parse()?, UdpConfig::default())?;
//! let mut b = UdpTransport::bind("127.0.0.1:0".parse()?, UdpConfig::default())?;
//! a.send(b.local_addr(), b"hello")?;
//!
//! let mut buf = [0u8; 1500];
//! // Real sockets deliver asynchronously: poll, with a bound, until the datagram is in.
//! let mut got = None;
//! for _ in 0..2000 {
//!     got = b.recv(&mut buf)?;
//!     if got.is_some() {
//!         break;
//!     }
//!     std::thread::sleep(std::time::Duration::from_millis(1));
//! }
//! let got = got.expect("loopback delivers within 2 s");
//! assert_eq!((&buf[..got.len], got.from), (&b"hello"[..], a.local_addr()));
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::{Received, Transport, TransportError};

/// Largest UDP payload over IPv4: 65 535 minus the 8-byte UDP and 20-byte IPv4 headers.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Settings of a [`UdpTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Largest payload sent or accepted, in bytes; larger sends fail with
    /// [`TransportError::PayloadTooLarge`] and larger received datagrams are dropped and
    /// counted. Must be in `1..=`[`MAX_UDP_PAYLOAD`].
    ///
    /// Default: 1472, the payload of a full 1500-byte Ethernet frame after the 20-byte IPv4 and
    /// 8-byte UDP headers, so a datagram at the limit is not fragmented on a typical IPv4 LAN.
    /// Internet paths (IPv6 headers are 40 bytes, tunnels add more) can have a smaller MTU;
    /// session code that wants to avoid IP fragmentation there should keep its datagrams at or
    /// below about 1200 bytes, as QUIC does. This field is the hard cap, not a target size.
    pub max_payload: usize,
    /// Whether the socket may send to broadcast addresses (`SO_BROADCAST`), for LAN discovery.
    /// Can be changed later with [`UdpTransport::set_broadcast`].
    ///
    /// Default: `false`.
    pub broadcast: bool,
    /// Most datagrams one [`Transport::recv`] call discards (oversized ones and ignored
    /// connection-reset errors) before it gives up and returns `Ok(None)`. Bounds the work a
    /// flood of junk can cause per call; the rest is looked at on the next call. 0 counts as 1.
    ///
    /// Default: 64.
    pub max_discards_per_recv: usize,
    /// Receive buffer requested from the operating system (`SO_RCVBUF`) on bind, in bytes;
    /// 0 keeps the system's default. A large buffer lets the socket hold a burst (or a flood
    /// of junk) while the owner is busy between reads, instead of dropping real packets.
    ///
    /// The request is best effort: the system may cap it (Linux caps it at
    /// `net.core.rmem_max`, and reports twice the granted size, counting its bookkeeping), and
    /// a refusal does not fail [`UdpTransport::bind`]. See
    /// [`UdpTransport::recv_buffer_size`] for the size in effect.
    ///
    /// Default: 4 MiB (4 194 304).
    pub recv_buffer_bytes: usize,
}

/// Default of [`UdpConfig::recv_buffer_bytes`]: 4 MiB.
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            max_payload: 1472,
            broadcast: false,
            max_discards_per_recv: 64,
            recv_buffer_bytes: DEFAULT_RECV_BUFFER_BYTES,
        }
    }
}

/// Counters of a [`UdpTransport`] since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams the socket accepted for sending.
    pub sent: u64,
    /// Payload bytes of the datagrams in `sent`.
    pub bytes_sent: u64,
    /// Datagrams returned by [`Transport::recv`].
    pub received: u64,
    /// Payload bytes of the datagrams in `received`.
    pub bytes_received: u64,
    /// Received datagrams larger than [`UdpConfig::max_payload`], dropped.
    pub dropped_oversized: u64,
    /// Sends dropped because the socket's send buffer was full (the socket would have blocked).
    pub dropped_would_block: u64,
    /// Connection-reset or connection-refused errors (caused by ICMP replies to earlier
    /// datagrams) that were ignored on send or receive.
    pub connection_resets: u64,
    /// Sends that failed with any other operating-system error, returned as
    /// [`TransportError::Io`].
    pub send_errors: u64,
}

/// A [`Transport`] over one non-blocking UDP socket; see the [module docs](self).
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local_addr: SocketAddr,
    config: UdpConfig,
    /// `max_payload + 1` bytes: room to see that a datagram was over the limit.
    scratch: Box<[u8]>,
    /// A datagram in `scratch` that did not fit the caller's buffer, kept for the next call.
    pending: Option<(SocketAddr, usize)>,
    stats: UdpStats,
}

/// Windows reports a datagram larger than the receive buffer as an error (`WSAEMSGSIZE`)
/// instead of truncating it silently as Unix systems do.
fn is_message_too_long(e: &io::Error) -> bool {
    #[cfg(windows)]
    {
        const WSAEMSGSIZE: i32 = 10040;
        e.raw_os_error() == Some(WSAEMSGSIZE)
    }
    #[cfg(not(windows))]
    {
        let _ = e;
        false
    }
}

/// Errors an ICMP reply to an earlier datagram can leave on a UDP socket.
fn is_icmp_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

impl UdpTransport {
    /// Binds a non-blocking socket to `addr` (port 0 picks a free port; see
    /// [`Transport::local_addr`]).
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if [`UdpConfig::max_payload`] is 0 or above
    /// [`MAX_UDP_PAYLOAD`], and with the operating system's error if the socket cannot be bound
    /// or configured. A receive buffer size the system refuses
    /// ([`UdpConfig::recv_buffer_bytes`]) is not an error: the socket keeps what it has.
    pub fn bind(addr: SocketAddr, config: UdpConfig) -> io::Result<Self> {
        if config.max_payload == 0 || config.max_payload > MAX_UDP_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "max_payload must be in 1..={MAX_UDP_PAYLOAD}, got {}",
                    config.max_payload
                ),
            ));
        }
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        if config.recv_buffer_bytes > 0 {
            // Best effort: the system may cap or refuse it; recv_buffer_size() tells.
            let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(config.recv_buffer_bytes);
        }
        if config.broadcast {
            socket.set_broadcast(true)?;
        }
        let local_addr = socket.local_addr()?;
        Ok(Self {
            socket,
            local_addr,
            scratch: vec![0; config.max_payload + 1].into_boxed_slice(),
            config,
            pending: None,
            stats: UdpStats::default(),
        })
    }

    /// Allows or forbids sending to broadcast addresses (`SO_BROADCAST`).
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.socket.set_broadcast(on)
    }

    /// Whether sending to broadcast addresses is allowed.
    pub fn broadcast(&self) -> io::Result<bool> {
        self.socket.broadcast()
    }

    /// The socket's receive buffer size in effect (`SO_RCVBUF`), in bytes, as the system
    /// reports it. It can be smaller than [`UdpConfig::recv_buffer_bytes`]: Linux caps a
    /// request at `net.core.rmem_max` (raise it with `sysctl -w net.core.rmem_max=...`), and
    /// reports twice the granted size because it counts its own bookkeeping.
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        socket2::SockRef::from(&self.socket).recv_buffer_size()
    }

    /// Counters since the socket was bound.
    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// The settings the transport was bound with.
    pub fn config(&self) -> &UdpConfig {
        &self.config
    }

    fn take_pending(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        let Some((from, len)) = self.pending else {
            return Ok(None);
        };
        let Some(dst) = buf.get_mut(..len) else {
            return Err(TransportError::BufferTooSmall {
                needed: len,
                capacity: buf.len(),
            });
        };
        dst.copy_from_slice(&self.scratch[..len]);
        self.pending = None;
        Ok(Some(self.count_received(from, len)))
    }

    fn count_received(&mut self, from: SocketAddr, len: usize) -> Received {
        self.stats.received += 1;
        self.stats.bytes_received += len as u64;
        Received { len, from }
    }
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn max_payload(&self) -> usize {
        self.config.max_payload
    }

    /// Sends one datagram. A datagram the socket cannot take without blocking, or one refused
    /// because of an ICMP reply to an earlier datagram, is dropped and counted, as the network
    /// might have dropped it; other operating-system errors (no route, address family mismatch,
    /// broadcast not enabled) are returned.
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let max = self.config.max_payload;
        if payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        // One retry covers a signal arriving mid-call; a non-blocking send does not wait, so a
        // second interruption is vanishingly unlikely and is reported rather than looped on.
        let mut result = self.socket.send_to(payload, to);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            result = self.socket.send_to(payload, to);
        }
        match result {
            Ok(_) => {
                self.stats.sent += 1;
                self.stats.bytes_sent += payload.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stats.dropped_would_block += 1;
                Ok(())
            }
            Err(e) if is_icmp_reset(&e) => {
                self.stats.connection_resets += 1;
                Ok(())
            }
            Err(e) => {
                self.stats.send_errors += 1;
                Err(TransportError::Io(e))
            }
        }
    }

    /// Returns the next datagram of at most [`UdpConfig::max_payload`] bytes.
    ///
    /// If `buf` is too small the datagram is kept and [`TransportError::BufferTooSmall`] is
    /// returned; the next call with a large enough buffer gets it. Oversized datagrams and
    /// ICMP-induced errors are skipped and counted, up to [`UdpConfig::max_discards_per_recv`]
    /// per call, after which the call returns `Ok(None)` even if more datagrams are waiting.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        if self.pending.is_some() {
            return self.take_pending(buf);
        }
        let max = self.config.max_payload;
        let mut discarded = 0;
        loop {
            if discarded >= self.config.max_discards_per_recv.max(1) {
                return Ok(None);
            }
            // Read straight into the caller's buffer when it can show an oversized datagram;
            // otherwise go through `scratch` so a datagram too big for `buf` is not lost.
            let direct = buf.len() > max;
            let result = if direct {
                self.socket.recv_from(&mut buf[..=max])
            } else {
                self.socket.recv_from(&mut self.scratch)
            };
            match result {
                Ok((len, _)) if len > max => self.stats.dropped_oversized += 1,
                Ok((len, from)) if direct => return Ok(Some(self.count_received(from, len))),
                Ok((len, from)) => {
                    self.pending = Some((from, len));
                    return self.take_pending(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                // Counts against the discard budget, so a signal storm cannot spin forever.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_icmp_reset(&e) => self.stats.connection_resets += 1,
                Err(e) if is_message_too_long(&e) => self.stats.dropped_oversized += 1,
                Err(e) => return Err(TransportError::Io(e)),
            }
            discarded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netsim::{LinkConfig, NetSim};
    use std::time::{Duration, Instant};

    fn bind(config: UdpConfig) -> UdpTransport {
        UdpTransport::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).expect("bind 127.0.0.1:0")
    }

    /// Polls `t` until a datagram arrives, for at most 2 s and 2000 attempts.
    fn recv_within(t: &mut UdpTransport, buf: &mut [u8]) -> Option<Received> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for _ in 0..2000 {
            if let Some(got) = t.recv(buf).expect("recv") {
                return Some(got);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    #[test]
    fn round_trip_both_ways() {
        let mut a = bind(UdpConfig::default());
        let mut b = bind(UdpConfig::default());
        assert_eq!(a.max_payload(), 1472);
        let mut buf = [0u8; 2048];
        assert_eq!(b.recv(&mut buf).expect("recv"), None);

        a.send(b.local_addr(), b"ping").expect("send");
        let got = recv_within(&mut b, &mut buf).expect("ping arrives");
        assert_eq!((&buf[..got.len], got.from), (&b"ping"[..], a.local_addr()));

        let big = vec![0xAB; 1472];
        b.send(a.local_addr(), &big).expect("send at the limit");
        let got = recv_within(&mut a, &mut buf).expect("pong arrives");
        assert_eq!((&buf[..got.len], got.from), (&big[..], b.local_addr()));

        assert_eq!((a.stats().sent, a.stats().received), (1, 1));
        assert_eq!(b.stats().bytes_received, 4);
        assert_eq!(a.stats().bytes_received, 1472);
    }

    #[test]
    fn empty_datagram_round_trips() {
        let mut a = bind(UdpConfig::default());
        let mut b = bind(UdpConfig::default());
        a.send(b.local_addr(), &[]).expect("send");
        let mut buf = [0u8; 16];
        let got = recv_within(&mut b, &mut buf).expect("arrives");
        assert_eq!((got.len, got.from), (0, a.local_addr()));
    }

    #[test]
    fn oversized_datagrams_are_dropped_and_counted() {
        let mut t = bind(UdpConfig {
            max_payload: 100,
            ..UdpConfig::default()
        });
        let raw = UdpSocket::bind("127.0.0.1:0").expect("bind raw");
        let to = t.local_addr();
        raw.send_to(&[1; 101], to).expect("send 101");
        raw.send_to(&[2; 5000], to).expect("send 5000");
        raw.send_to(&[3; 100], to).expect("send 100");

        // Both buffer paths: one larger than the limit (direct) and one exactly at it.
        let mut big = [0u8; 4096];
        let got = recv_within(&mut t, &mut big).expect("the 100-byte datagram");
        assert_eq!(&big[..got.len], &[3; 100][..]);
        assert_eq!(t.stats().dropped_oversized, 2);

        raw.send_to(&[4; 101], to).expect("send 101");
        raw.send_to(&[5; 100], to).expect("send 100");
        let mut exact = [0u8; 100];
        let got = recv_within(&mut t, &mut exact).expect("the 100-byte datagram");
        assert_eq!(&exact[..got.len], &[5; 100][..]);
        assert_eq!(t.stats().dropped_oversized, 3);
        assert_eq!(t.stats().received, 2);
    }

    #[test]
    fn discard_budget_bounds_one_recv_call() {
        let mut t = bind(UdpConfig {
            max_payload: 10,
            max_discards_per_recv: 3,
            ..UdpConfig::default()
        });
        let raw = UdpSocket::bind("127.0.0.1:0").expect("bind raw");
        for _ in 0..8 {
            raw.send_to(&[0; 11], t.local_addr()).expect("send");
        }
        raw.send_to(b"ok", t.local_addr()).expect("send");
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = None;
        for _ in 0..2000 {
            let before = t.stats().dropped_oversized;
            got = t.recv(&mut buf).expect("recv");
            let discarded = t.stats().dropped_oversized - before;
            assert!(discarded <= 3, "{discarded} discards in one call");
            if got.is_some() || Instant::now() >= deadline {
                break;
            }
            if discarded == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let got = got.expect("ok arrives");
        assert_eq!(&buf[..got.len], b"ok");
        assert_eq!(t.stats().dropped_oversized, 8);
    }

    #[test]
    fn buffer_too_small_keeps_the_datagram() {
        let mut a = bind(UdpConfig::default());
        let mut b = bind(UdpConfig::default());
        a.send(b.local_addr(), &[9; 50]).expect("send");
        let mut small = [0u8; 10];
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut err = None;
        for _ in 0..2000 {
            match b.recv(&mut small) {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                other => {
                    err = Some(other);
                    break;
                }
            }
        }
        assert!(
            matches!(
                err,
                Some(Err(TransportError::BufferTooSmall {
                    needed: 50,
                    capacity: 10
                }))
            ),
            "{err:?}"
        );
        let mut buf = [0u8; 64];
        let got = b.recv(&mut buf).expect("recv").expect("kept");
        assert_eq!((&buf[..got.len], got.from), (&[9; 50][..], a.local_addr()));
        assert_eq!(b.recv(&mut buf).expect("recv"), None);
    }

    #[test]
    fn oversized_send_and_bad_config_are_errors() {
        let mut a = bind(UdpConfig {
            max_payload: 8,
            ..UdpConfig::default()
        });
        let to = a.local_addr();
        assert!(matches!(
            a.send(to, &[0; 9]),
            Err(TransportError::PayloadTooLarge { len: 9, max: 8 })
        ));
        assert_eq!(a.stats().sent, 0);
        for max_payload in [0, MAX_UDP_PAYLOAD + 1] {
            let err = UdpTransport::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                UdpConfig {
                    max_payload,
                    ..UdpConfig::default()
                },
            )
            .expect_err("invalid max_payload");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn recv_buffer_is_enlarged_where_the_system_allows() {
        let t = bind(UdpConfig::default());
        let effective = t.recv_buffer_size().expect("getsockopt SO_RCVBUF");
        // Linux: the cap on what an unprivileged SO_RCVBUF request may get.
        let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        match rmem_max {
            Some(max) if max >= DEFAULT_RECV_BUFFER_BYTES => assert!(
                effective >= 1024 * 1024,
                "SO_RCVBUF {effective} with rmem_max {max}"
            ),
            _ => println!(
                "SO_RCVBUF after bind: {effective} bytes; rmem_max {rmem_max:?} is below \
                 {DEFAULT_RECV_BUFFER_BYTES} (or unknown), not asserting"
            ),
        }
        let os_default = bind(UdpConfig {
            recv_buffer_bytes: 0,
            ..UdpConfig::default()
        });
        let default = os_default.recv_buffer_size().expect("getsockopt SO_RCVBUF");
        println!("SO_RCVBUF: {effective} requested 4 MiB, {default} with the system default");
        assert!(default > 0);
    }

    #[test]
    fn broadcast_can_be_toggled() {
        let t = bind(UdpConfig {
            broadcast: true,
            ..UdpConfig::default()
        });
        assert!(t.broadcast().expect("getsockopt"));
        t.set_broadcast(false).expect("setsockopt");
        assert!(!t.broadcast().expect("getsockopt"));
    }

    #[test]
    fn netsim_wraps_a_udp_socket() {
        let link = LinkConfig {
            latency: Duration::from_millis(30),
            ..LinkConfig::default()
        };
        let mut a = NetSim::new(bind(UdpConfig::default()), link, 7);
        let mut b = bind(UdpConfig::default());
        assert_eq!(a.max_payload(), 1472);

        a.send(b.local_addr(), b"delayed").expect("send");
        a.advance_to(Duration::from_millis(29))
            .expect("nothing due");
        assert_eq!(a.inner().stats().sent, 0, "the simulator still holds it");
        a.advance_to(Duration::from_millis(30)).expect("udp send");
        assert_eq!(a.inner().stats().sent, 1);
        assert_eq!(a.stats().delivered, 1);

        let mut buf = [0u8; 64];
        let got = recv_within(&mut b, &mut buf).expect("arrives");
        assert_eq!(
            (&buf[..got.len], got.from),
            (&b"delayed"[..], a.local_addr())
        );

        // Received datagrams pass straight through the simulator.
        b.send(a.local_addr(), b"back").expect("send");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = None;
        for _ in 0..2000 {
            got = a.recv(&mut buf).expect("recv");
            if got.is_some() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = got.expect("arrives");
        assert_eq!((&buf[..got.len], got.from), (&b"back"[..], b.local_addr()));
    }
}
