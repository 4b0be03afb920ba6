//! Seeded network simulator on a virtual clock.
//!
//! [`NetSim`] wraps any [`Transport`] and impairs the datagrams *sent* through it: latency,
//! jitter, random and bursty (Gilbert-Elliott) loss, duplication, reordering, a bandwidth cap
//! with a bounded queue, and an MTU. Received datagrams pass straight through from the inner
//! transport. To impair both directions of a conversation, wrap both ends; each end's
//! [`LinkConfig::latency`] is then one-way, and the round trip is the sum of both.
//!
//! There is no wall clock. The caller owns time as a [`Duration`] since an arbitrary epoch and
//! moves it with [`NetSim::advance_to`]; all randomness comes from a [`SimRng`] seeded at
//! construction. The same seed, configuration and sequence of calls therefore produce the same
//! deliveries, byte for byte, on every platform and every run.
//!
//! # Drain rule
//!
//! Each step: call [`NetSim::advance_to`] with the current time (this hands every datagram due by
//! then to the inner transport), read with [`Transport::recv`] until it returns `Ok(None)`, then
//! send. An event loop that sleeps can wake at the earlier of its own next deadline and
//! [`NetSim::poll_timeout`].
//!
//! ```
//! use std::time::Duration;
//! use statewire_transport::Transport;
//! use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
//! use statewire_transport::netsim::{LinkConfig, NetSim};
//!
//! # fn main() -> Result<(), statewire_transport::TransportError> {
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let average = LinkConfig::profile("average").expect("built-in profile");
//! let mut client = NetSim::new(net.endpoint(), average.clone(), 1);
//! let mut server = NetSim::new(net.endpoint(), average, 2);
//! let server_addr = server.local_addr();
//!
//! let mut buf = [0u8; 1500];
//! let mut received = Vec::new();
//! let mut now = Duration::ZERO;
//! for tick in 0..100u32 {
//!     client.advance_to(now)?;
//!     server.advance_to(now)?;
//!     while let Some(got) = server.recv(&mut buf)? {
//!         received.push(buf[..got.len].to_vec());
//!     }
//!     client.send(server_addr, &tick.to_le_bytes())?;
//!     // Wake for the next tick, or earlier if the simulator has a delivery due before it.
//!     let next_tick = now + Duration::from_millis(10);
//!     now = client.poll_timeout().map_or(next_tick, |due| due.min(next_tick));
//! }
//! // Let everything still in flight land (100 ms ± 25 ms one way on the average profile).
//! client.advance_to(now + Duration::from_secs(1))?;
//! while let Some(got) = server.recv(&mut buf)? {
//!     received.push(buf[..got.len].to_vec());
//! }
//! // About 2% of the datagrams were lost on the way.
//! assert!(received.len() > 90 && received.len() < 100, "{}", received.len());
//! assert_eq!(client.stats().delivered, received.len() as u64);
//! # Ok(())
//! # }
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::{Received, Transport, TransportError};

/// Small deterministic pseudo-random generator: xoshiro256** seeded through splitmix64.
///
/// The algorithm is fixed and implemented here rather than taken from a crate so that a seed
/// reproduces the same simulation forever; its output sequence for a given seed is part of this
/// type's contract. It is fast and statistically good, but *not* cryptographically secure: use
/// it for simulations and tests, never for secrets such as handshake challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRng {
    s: [u64; 4],
}

/// One splitmix64 step, the seeding procedure recommended by xoshiro's authors: it spreads any
/// seed (including 0) over the full state, which must not be all zeros.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimRng {
    /// Creates a generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        // Four consecutive splitmix64 outputs are distinct, so the state is never all zeros.
        Self {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    /// Next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `range` (both ends included), without modulo bias. An empty range
    /// (`start > end`) returns its start.
    pub fn range_u64(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (low, high) = range.into_inner();
        if low >= high {
            return low;
        }
        let span = high - low;
        if span == u64::MAX {
            return self.next_u64();
        }
        let n = span + 1;
        // Lemire's multiply-and-reject: the high half of x * n is uniform in [0, n) once the
        // few low halves that would favour some values are rejected.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return low + (m >> 64) as u64;
            }
        }
    }

    /// True with probability `p`. Values at or below 0 (and NaN) are never true, values at or
    /// above 1 always; neither extreme consumes randomness.
    pub fn chance(&mut self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.next_f64() < p
        }
    }
}

/// Two-state Markov model of bursty loss (Gilbert-Elliott).
///
/// The link is either *good* or *bad*. Before each datagram the state may flip (good to bad with
/// `p_good_to_bad`, bad to good with `p_bad_to_good`); the datagram is then lost with the current
/// state's loss probability. The mean length of a bad period is `1 / p_bad_to_good` datagrams.
/// Probabilities outside `[0, 1]` are clamped; NaN counts as 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per datagram.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per datagram.
    pub p_bad_to_good: f64,
    /// Loss probability while in the good state.
    pub loss_in_good: f64,
    /// Loss probability while in the bad state.
    pub loss_in_bad: f64,
}

impl GilbertElliott {
    /// Long-run average loss probability of the chain.
    pub fn mean_loss(&self) -> f64 {
        let to_bad = self.p_good_to_bad.clamp(0.0, 1.0);
        let to_good = self.p_bad_to_good.clamp(0.0, 1.0);
        let total = to_bad + to_good;
        // A chain that never moves stays in its initial (good) state.
        let share_bad = if total > 0.0 { to_bad / total } else { 0.0 };
        (1.0 - share_bad) * self.loss_in_good.clamp(0.0, 1.0)
            + share_bad * self.loss_in_bad.clamp(0.0, 1.0)
    }
}

/// Impairments applied to outgoing datagrams. [`Default`] is a perfect link: no delay, no loss,
/// no caps, with the queue limits below.
///
/// A sent datagram goes through these stages in order, and the first one that drops it counts
/// the drop in [`NetSimStats`]: MTU, bandwidth queue, burst loss, random loss; survivors may be
/// duplicated, and each copy is given a delivery time from latency, jitter and the reordering
/// rule. Probabilities outside `[0, 1]` are clamped; NaN counts as 0.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay added to every datagram, applied by this endpoint's simulator only.
    ///
    /// Default: 0.
    pub latency: Duration,
    /// Each delivery is shifted by a uniform random offset in `[-jitter, +jitter]`, but never
    /// to before the datagram left (so jitter larger than `latency` piles up at zero delay).
    ///
    /// Default: 0.
    pub jitter: Duration,
    /// Probability that a datagram is lost, independently of all others.
    ///
    /// Default: 0.
    pub loss: f64,
    /// Bursty loss on top of `loss`; the chain steps once per sent datagram.
    ///
    /// Default: `None`.
    pub burst: Option<GilbertElliott>,
    /// Probability that a datagram is delivered twice. The copy gets its own delay, drawn like
    /// any other datagram's, and does not use bandwidth (it is made past the bottleneck).
    ///
    /// Default: 0.
    pub duplicate: f64,
    /// Probability that a datagram is allowed to overtake ones sent before it. Otherwise
    /// delivery times never decrease, so jitter alone does not reorder: a datagram whose drawn
    /// time is earlier than the previous in-order delivery waits for it.
    ///
    /// Default: 0.
    pub reorder: f64,
    /// Capacity of the link in payload bits per second (headers are not simulated). Each
    /// datagram occupies the link for `len * 8 / bandwidth_bps` seconds and datagrams queue
    /// behind each other; the delay starts once a datagram has been serialized. `Some(0)` drops
    /// everything.
    ///
    /// Default: `None` (unlimited).
    pub bandwidth_bps: Option<u64>,
    /// Longest a datagram may wait for the link under `bandwidth_bps`; one that would wait
    /// longer is dropped, like a tail drop at a full router buffer.
    ///
    /// Default: 250 ms.
    pub max_queue_delay: Duration,
    /// Largest datagram the path carries, in bytes. Larger ones are dropped and counted, as on a
    /// path that drops oversized packets; the sender sees no error.
    ///
    /// Default: `None` (only the inner transport's [`Transport::max_payload`] applies).
    pub mtu: Option<usize>,
    /// Most datagrams held by the simulator awaiting delivery; further ones are dropped and
    /// counted in [`NetSimStats::dropped_overflow`].
    ///
    /// Default: 65 536.
    pub max_scheduled: usize,
    /// Most payload bytes held by the simulator awaiting delivery; a datagram that would exceed
    /// it is dropped and counted in [`NetSimStats::dropped_overflow`].
    ///
    /// Default: 64 MiB (67 108 864 bytes).
    pub max_scheduled_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: None,
            duplicate: 0.0,
            reorder: 0.0,
            bandwidth_bps: None,
            max_queue_delay: Duration::from_millis(250),
            mtu: None,
            max_scheduled: 65_536,
            max_scheduled_bytes: 64 * 1024 * 1024,
        }
    }
}

impl LinkConfig {
    /// Names accepted by [`LinkConfig::profile`].
    pub const PROFILE_NAMES: &'static [&'static str] =
        &["perfect", "average", "poor", "very-poor", "hostile"];

    /// A named link profile, or `None` for an unknown name. Latencies are one-way and apply to
    /// the datagrams of the endpoint whose simulator uses the profile; with both ends wrapped,
    /// the round trip is twice the latency.
    ///
    /// | name        | latency | jitter  | loss | duplicate | reorder |
    /// |-------------|---------|---------|------|-----------|---------|
    /// | `perfect`   | 0       | 0       | 0    | 0         | 0       |
    /// | `average`   | 100 ms  | ±25 ms  | 2%   | 0         | 0       |
    /// | `poor`      | 200 ms  | ±50 ms  | 4%   | 0         | 0       |
    /// | `very-poor` | 300 ms  | ±75 ms  | 6%   | 0         | 0       |
    /// | `hostile`   | 250 ms  | ±100 ms | 25%  | 25%       | 10%     |
    ///
    /// All other fields keep their [`Default`] values.
    pub fn profile(name: &str) -> Option<LinkConfig> {
        let (latency_ms, jitter_ms, loss, duplicate, reorder) = match name {
            "perfect" => (0, 0, 0.0, 0.0, 0.0),
            "average" => (100, 25, 0.02, 0.0, 0.0),
            "poor" => (200, 50, 0.04, 0.0, 0.0),
            "very-poor" => (300, 75, 0.06, 0.0, 0.0),
            "hostile" => (250, 100, 0.25, 0.25, 0.10),
            _ => return None,
        };
        Some(LinkConfig {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            duplicate,
            reorder,
            ..LinkConfig::default()
        })
    }
}

/// Counters of a [`NetSim`] since it was created.
///
/// Every sent datagram and every duplicate copy ends in exactly one of `delivered`, a `dropped_*`
/// counter, or is still scheduled: `sent + duplicated == delivered + dropped_* +
/// NetSim::scheduled_len()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetSimStats {
    /// Datagrams accepted by [`Transport::send`].
    pub sent: u64,
    /// Datagrams (including duplicate copies) handed to the inner transport without error.
    pub delivered: u64,
    /// Datagrams dropped by the independent [`LinkConfig::loss`].
    pub dropped_loss: u64,
    /// Datagrams dropped by the [`LinkConfig::burst`] model.
    pub dropped_burst: u64,
    /// Datagrams dropped for exceeding [`LinkConfig::mtu`].
    pub dropped_mtu: u64,
    /// Datagrams dropped because the bandwidth queue exceeded [`LinkConfig::max_queue_delay`].
    pub dropped_bandwidth: u64,
    /// Datagrams dropped because the simulator held [`LinkConfig::max_scheduled`] datagrams or
    /// [`LinkConfig::max_scheduled_bytes`] bytes.
    pub dropped_overflow: u64,
    /// Datagrams the inner transport refused with an error when they were due.
    pub dropped_inner: u64,
    /// Extra copies created by [`LinkConfig::duplicate`].
    pub duplicated: u64,
    /// Datagrams scheduled to arrive before an earlier-sent in-order datagram.
    pub reordered: u64,
    /// Payload bytes accepted by [`Transport::send`].
    pub bytes_sent: u64,
    /// Payload bytes handed to the inner transport without error.
    pub bytes_delivered: u64,
}

#[derive(Debug)]
struct Scheduled {
    at: Duration,
    /// Send order, so equal delivery times keep the order they were scheduled in.
    seq: u64,
    to: SocketAddr,
    payload: Vec<u8>,
}

impl Scheduled {
    fn key(&self) -> (Duration, u64) {
        (self.at, self.seq)
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Time the link needs to serialize `len` bytes at `bps`, rounded up to whole nanoseconds.
fn serialization_time(len: usize, bps: u64) -> Duration {
    let bits = len as u128 * 8;
    let nanos = (bits * 1_000_000_000).div_ceil(u128::from(bps.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A [`Transport`] that impairs outgoing datagrams on a virtual clock; see the
/// [module docs](self).
#[derive(Debug)]
pub struct NetSim<T: Transport> {
    inner: T,
    config: LinkConfig,
    rng: SimRng,
    now: Duration,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    scheduled_bytes: usize,
    next_seq: u64,
    /// Latest delivery time given to a datagram that was not allowed to overtake.
    last_in_order: Duration,
    /// When the bandwidth-limited link finishes serializing what it has accepted.
    link_free_at: Duration,
    /// Gilbert-Elliott state; starts good.
    burst_bad: bool,
    stats: NetSimStats,
}

impl<T: Transport> NetSim<T> {
    /// Wraps `inner`. The clock starts at [`Duration::ZERO`]; `seed` fixes every random choice.
    pub fn new(inner: T, config: LinkConfig, seed: u64) -> Self {
        Self {
            inner,
            config,
            rng: SimRng::new(seed),
            now: Duration::ZERO,
            scheduled: BinaryHeap::new(),
            scheduled_bytes: 0,
            next_seq: 0,
            last_in_order: Duration::ZERO,
            link_free_at: Duration::ZERO,
            burst_bad: false,
            stats: NetSimStats::default(),
        }
    }

    /// Moves the clock to `now` (a time earlier than the current clock is ignored) and hands
    /// every datagram due by then to the inner transport, earliest first, equal times in the
    /// order they were scheduled.
    ///
    /// If the inner transport fails, that datagram is dropped (counted in
    /// [`NetSimStats::dropped_inner`]), the error is returned and later datagrams stay
    /// scheduled; calling again continues with them.
    pub fn advance_to(&mut self, now: Duration) -> Result<(), TransportError> {
        self.now = self.now.max(now);
        while let Some(Reverse(next)) = self.scheduled.peek() {
            if next.at > self.now {
                break;
            }
            let Some(Reverse(due)) = self.scheduled.pop() else {
                break;
            };
            self.scheduled_bytes -= due.payload.len();
            self.deliver(due.to, &due.payload)?;
        }
        Ok(())
    }

    /// Delivery time of the earliest scheduled datagram, or `None` if nothing is in flight.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.scheduled.peek().map(|Reverse(next)| next.at)
    }

    /// The current virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Counters since creation.
    pub fn stats(&self) -> NetSimStats {
        self.stats
    }

    /// Number of datagrams awaiting delivery.
    pub fn scheduled_len(&self) -> usize {
        self.scheduled.len()
    }

    /// The impairments in effect.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Replaces the impairments for datagrams sent from now on; scheduled ones keep their
    /// delivery times.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The wrapped transport, mutably. Sending through it bypasses the simulator.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the inner transport, discarding datagrams still in flight.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn deliver(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        match self.inner.send(to, payload) {
            Ok(()) => {
                self.stats.delivered += 1;
                self.stats.bytes_delivered += payload.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.stats.dropped_inner += 1;
                Err(e)
            }
        }
    }

    /// Random delivery time for a datagram that finished leaving at `depart`.
    fn draw_delivery(&mut self, depart: Duration) -> Duration {
        let base = depart.saturating_add(self.config.latency);
        let drawn = if self.config.jitter.is_zero() {
            base
        } else {
            // Jitter beyond ~146 years (half of u64 nanoseconds) is meaningless; cap it so the
            // doubled range below cannot overflow.
            let jitter = u64::try_from(self.config.jitter.as_nanos())
                .unwrap_or(u64::MAX)
                .min(u64::MAX / 2);
            let r = self.rng.range_u64(0..=2 * jitter);
            if r >= jitter {
                base.saturating_add(Duration::from_nanos(r - jitter))
            } else {
                base.saturating_sub(Duration::from_nanos(jitter - r))
            }
        };
        let drawn = drawn.max(depart);
        if self.rng.chance(self.config.reorder) {
            if drawn < self.last_in_order {
                self.stats.reordered += 1;
            }
            drawn
        } else {
            let at = drawn.max(self.last_in_order);
            self.last_in_order = at;
            at
        }
    }

    /// Gives one copy of a datagram its delivery time and holds it (or forwards it at once when
    /// it is due now and nothing is due before it, which keeps zero-delay links pass-through).
    fn schedule(
        &mut self,
        depart: Duration,
        to: SocketAddr,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let at = self.draw_delivery(depart);
        let nothing_due_first = self
            .scheduled
            .peek()
            .is_none_or(|Reverse(next)| next.at > self.now);
        if at <= self.now && nothing_due_first {
            return self.deliver(to, payload);
        }
        let full = self.scheduled.len() >= self.config.max_scheduled
            || self.scheduled_bytes.saturating_add(payload.len()) > self.config.max_scheduled_bytes;
        if full {
            self.stats.dropped_overflow += 1;
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.scheduled_bytes += payload.len();
        self.scheduled.push(Reverse(Scheduled {
            at,
            seq,
            to,
            payload: payload.to_vec(),
        }));
        Ok(())
    }
}

impl<T: Transport> Transport for NetSim<T> {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        self.inner.poll_closed_peer()
    }

    fn close_peer(&mut self, peer: SocketAddr) {
        self.inner.close_peer(peer)
    }

    fn mark_validated(&mut self, peer: SocketAddr) {
        self.inner.mark_validated(peer)
    }

    fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    /// Schedules `payload` for delivery at the current virtual time plus the simulated delay.
    /// Only a payload the inner transport would refuse is an error; simulated drops are not.
    /// With zero delay the datagram reaches the inner transport during this call, and an error
    /// from the inner transport is returned.
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let max = self.inner.max_payload();
        if payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        let len = payload.len();
        self.stats.sent += 1;
        self.stats.bytes_sent += len as u64;

        // Step the chain for every sent datagram, dropped or not, so burst lengths are measured
        // in datagrams offered to the path.
        if let Some(ge) = self.config.burst {
            self.burst_bad = if self.burst_bad {
                !self.rng.chance(ge.p_bad_to_good)
            } else {
                self.rng.chance(ge.p_good_to_bad)
            };
        }

        if self.config.mtu.is_some_and(|mtu| len > mtu) {
            self.stats.dropped_mtu += 1;
            return Ok(());
        }

        let depart = match self.config.bandwidth_bps {
            None => self.now,
            Some(0) => {
                self.stats.dropped_bandwidth += 1;
                return Ok(());
            }
            Some(bps) => {
                let start = self.now.max(self.link_free_at);
                if start - self.now > self.config.max_queue_delay {
                    self.stats.dropped_bandwidth += 1;
                    return Ok(());
                }
                self.link_free_at = start.saturating_add(serialization_time(len, bps));
                self.link_free_at
            }
        };

        // Loss is decided after the bottleneck: a datagram lost further along the path still
        // used the sender's bandwidth.
        if let Some(ge) = self.config.burst {
            let p = if self.burst_bad {
                ge.loss_in_bad
            } else {
                ge.loss_in_good
            };
            if self.rng.chance(p) {
                self.stats.dropped_burst += 1;
                return Ok(());
            }
        }
        if self.rng.chance(self.config.loss) {
            self.stats.dropped_loss += 1;
            return Ok(());
        }

        let duplicate = self.rng.chance(self.config.duplicate);
        self.schedule(depart, to, payload)?;
        if duplicate {
            self.stats.duplicated += 1;
            self.schedule(depart, to, payload)?;
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        self.inner.recv(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
        20_000,
    );

    /// Inner transport that records what the simulator hands it.
    #[derive(Debug, Default)]
    struct Sink {
        out: Vec<Vec<u8>>,
        fail_next: bool,
    }

    impl Transport for Sink {
        fn local_addr(&self) -> SocketAddr {
            DST
        }
        fn max_payload(&self) -> usize {
            1500
        }
        fn send(&mut self, _to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
            if std::mem::take(&mut self.fail_next) {
                return Err(TransportError::Closed);
            }
            self.out.push(payload.to_vec());
            Ok(())
        }
        fn recv(&mut self, _buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
            Ok(None)
        }
    }

    /// A delivery as observed at the inner transport: (virtual time, payload).
    type Log = Vec<(Duration, Vec<u8>)>;

    fn take_into(sim: &mut NetSim<Sink>, at: Duration, log: &mut Log) {
        for p in sim.inner_mut().out.drain(..) {
            log.push((at, p));
        }
    }

    /// Advances through every delivery due by `limit`, recording each at its exact time.
    fn flush_until(sim: &mut NetSim<Sink>, limit: Duration, log: &mut Log) {
        while let Some(due) = sim.poll_timeout() {
            if due > limit {
                break;
            }
            sim.advance_to(due).expect("sink does not fail");
            take_into(sim, due, log);
        }
    }

    /// Sends `payloads` at their times (ascending) and returns every delivery, in order.
    fn drive(sim: &mut NetSim<Sink>, sends: impl IntoIterator<Item = (Duration, Vec<u8>)>) -> Log {
        let mut log = Log::new();
        for (t, payload) in sends {
            flush_until(sim, t, &mut log);
            sim.advance_to(t).expect("sink does not fail");
            sim.send(DST, &payload).expect("within max_payload");
            take_into(sim, t, &mut log);
        }
        flush_until(sim, Duration::MAX, &mut log);
        log
    }

    /// `n` datagrams, one per millisecond, each carrying its index (and `pad` extra bytes).
    fn numbered(n: u32, pad: usize) -> impl Iterator<Item = (Duration, Vec<u8>)> {
        (0..n).map(move |i| {
            let mut p = i.to_le_bytes().to_vec();
            p.resize(4 + pad, 0xAB);
            (Duration::from_millis(u64::from(i)), p)
        })
    }

    fn index(payload: &[u8]) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&payload[..4]);
        u32::from_le_bytes(b)
    }

    fn sim(config: LinkConfig, seed: u64) -> NetSim<Sink> {
        NetSim::new(Sink::default(), config, seed)
    }

    fn profile(name: &str) -> LinkConfig {
        LinkConfig::profile(name).expect("built-in profile")
    }

    fn assert_accounting(sim: &NetSim<Sink>) {
        let s = sim.stats();
        let ended = s.delivered
            + s.dropped_loss
            + s.dropped_burst
            + s.dropped_mtu
            + s.dropped_bandwidth
            + s.dropped_overflow
            + s.dropped_inner
            + sim.scheduled_len() as u64;
        assert_eq!(s.sent + s.duplicated, ended, "{s:?}");
    }

    #[test]
    fn rng_matches_reference_vectors() {
        // splitmix64 from state 0, as in Vigna's reference implementation.
        let mut sm = 0u64;
        assert_eq!(splitmix64(&mut sm), 0xE220_A839_7B1D_CDAF);
        // xoshiro256** from state [1, 2, 3, 4], as in the reference implementation.
        let mut rng = SimRng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..6).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                11520,
                0,
                1509978240,
                1215971899390074240,
                1216172134540287360,
                607988272756665600
            ]
        );
    }

    #[test]
    fn rng_ranges_and_floats_stay_in_bounds() {
        let seed = 7;
        let mut rng = SimRng::new(seed);
        let mut seen = [false; 6];
        for _ in 0..10_000 {
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f), "seed {seed}: {f}");
            let r = rng.range_u64(10..=15);
            assert!((10..=15).contains(&r), "seed {seed}: {r}");
            seen[(r - 10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "seed {seed}: every value drawn");
        assert_eq!(rng.range_u64(5..=5), 5);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = rng.range_u64(9..=3);
        assert_eq!(empty, 9);
        let _full = rng.range_u64(0..=u64::MAX);
        assert!(!rng.chance(f64::NAN));
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }

    #[test]
    fn profiles_are_all_named_and_unknown_names_are_none() {
        for name in LinkConfig::PROFILE_NAMES {
            assert!(LinkConfig::profile(name).is_some(), "{name}");
        }
        assert_eq!(profile("perfect"), LinkConfig::default());
        assert_eq!(LinkConfig::profile("great"), None);
        let hostile = profile("hostile");
        assert_eq!(hostile.latency, Duration::from_millis(250));
        assert_eq!(hostile.jitter, Duration::from_millis(100));
        assert_eq!(
            (hostile.loss, hostile.duplicate, hostile.reorder),
            (0.25, 0.25, 0.10)
        );
    }

    #[test]
    fn perfect_profile_passes_through_during_send() {
        let mut s = sim(profile("perfect"), 1);
        s.send(DST, b"now").expect("send");
        assert_eq!(s.inner().out, vec![b"now".to_vec()]);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.stats().delivered, 1);
    }

    #[test]
    fn fixed_latency_delivers_everything_in_order_at_exactly_latency() {
        let latency = Duration::from_millis(50);
        let mut s = sim(
            LinkConfig {
                latency,
                ..profile("perfect")
            },
            1,
        );
        let log = drive(&mut s, numbered(1000, 20));
        assert_eq!(log.len(), 1000);
        for (i, (at, payload)) in log.iter().enumerate() {
            assert_eq!(index(payload) as usize, i);
            assert_eq!(*at, Duration::from_millis(i as u64) + latency);
            assert_eq!(payload.len(), 24);
        }
        let st = s.stats();
        assert_eq!((st.sent, st.delivered), (1000, 1000));
        assert_eq!((st.bytes_sent, st.bytes_delivered), (24_000, 24_000));
        assert_accounting(&s);
    }

    fn measured_loss(name: &str, seed: u64) -> (f64, NetSimStats) {
        let mut s = sim(profile(name), seed);
        let log = drive(&mut s, numbered(20_000, 0));
        let st = s.stats();
        assert_eq!(st.delivered as usize, log.len(), "seed {seed}");
        assert_accounting(&s);
        (st.dropped_loss as f64 / st.sent as f64, st)
    }

    #[test]
    fn poor_profile_loses_about_4_percent() {
        let seed = 0x5EED_0001;
        let (rate, _) = measured_loss("poor", seed);
        assert!((rate - 0.04).abs() < 0.006, "seed {seed}: loss {rate}");
    }

    #[test]
    fn hostile_profile_loses_and_duplicates_about_25_percent() {
        let seed = 0x5EED_0002;
        let (rate, st) = measured_loss("hostile", seed);
        assert!((rate - 0.25).abs() < 0.015, "seed {seed}: loss {rate}");
        let survivors = st.sent - st.dropped_loss;
        let dup_rate = st.duplicated as f64 / survivors as f64;
        assert!(
            (dup_rate - 0.25).abs() < 0.015,
            "seed {seed}: duplicates {dup_rate}"
        );
        assert_eq!(st.delivered, survivors + st.duplicated, "seed {seed}");
    }

    #[test]
    fn delivery_is_never_before_send_time_and_jitter_spreads_it() {
        let seed = 11;
        let latency = Duration::from_millis(30);
        let jitter = Duration::from_millis(50);
        let mut s = sim(
            LinkConfig {
                latency,
                jitter,
                reorder: 1.0,
                ..profile("perfect")
            },
            seed,
        );
        let log = drive(&mut s, numbered(5000, 0));
        let mut min = Duration::MAX;
        let mut max = Duration::ZERO;
        for (at, payload) in &log {
            let sent = Duration::from_millis(u64::from(index(payload)));
            assert!(*at >= sent, "seed {seed}: delivered before sent");
            let delay = *at - sent;
            min = min.min(delay);
            max = max.max(delay);
        }
        assert_eq!(
            min,
            Duration::ZERO,
            "seed {seed}: jitter > latency clamps to 0"
        );
        assert!(max <= latency + jitter, "seed {seed}: {max:?}");
        assert!(max > latency + jitter * 9 / 10, "seed {seed}: {max:?}");
    }

    fn inversions(log: &Log) -> usize {
        log.windows(2)
            .filter(|w| index(&w[1].1) < index(&w[0].1))
            .count()
    }

    #[test]
    fn jitter_without_reorder_keeps_order() {
        let seed = 21;
        let config = LinkConfig {
            reorder: 0.0,
            duplicate: 0.25,
            ..profile("hostile")
        };
        let mut s = sim(config, seed);
        let log = drive(&mut s, numbered(20_000, 0));
        assert_eq!(inversions(&log), 0, "seed {seed}");
        assert_eq!(s.stats().reordered, 0, "seed {seed}");
        // Jitter was real: delays vary.
        let delays: std::collections::HashSet<Duration> = log
            .iter()
            .map(|(at, p)| *at - Duration::from_millis(u64::from(index(p))))
            .collect();
        assert!(
            delays.len() > 100,
            "seed {seed}: {} distinct delays",
            delays.len()
        );
    }

    #[test]
    fn reorder_lets_some_datagrams_overtake() {
        let seed = 22;
        let mut s = sim(profile("hostile"), seed);
        let log = drive(&mut s, numbered(20_000, 0));
        let inv = inversions(&log);
        let reordered = s.stats().reordered;
        assert!(inv > 100, "seed {seed}: {inv} inversions");
        assert!(reordered > 100, "seed {seed}: {reordered} reordered");
        // Only datagrams drawn for reordering (10% of the survivors and their copies) overtake;
        // 11% leaves room for sampling noise.
        let scheduled = s.stats().delivered;
        assert!(
            reordered * 100 < scheduled * 11,
            "seed {seed}: {reordered} of {scheduled}"
        );
    }

    #[test]
    fn oversized_datagrams_are_dropped_silently_by_mtu() {
        let mut s = sim(
            LinkConfig {
                mtu: Some(100),
                ..profile("perfect")
            },
            1,
        );
        s.send(DST, &[1; 100]).expect("at the mtu");
        s.send(DST, &[2; 101])
            .expect("over the mtu is a silent drop");
        assert_eq!(s.inner().out, vec![vec![1; 100]]);
        assert_eq!(s.stats().dropped_mtu, 1);
        // Above the inner transport's own limit it is a caller error, not a simulated drop.
        assert!(matches!(
            s.send(DST, &[3; 1501]),
            Err(TransportError::PayloadTooLarge {
                len: 1501,
                max: 1500
            })
        ));
        assert_eq!(s.stats().sent, 2);
    }

    #[test]
    fn bandwidth_cap_limits_throughput_and_bounds_queueing() {
        let bps = 1_000_000;
        let max_queue_delay = Duration::from_millis(250);
        let config = LinkConfig {
            bandwidth_bps: Some(bps),
            max_queue_delay,
            ..profile("perfect")
        };
        // Offer 2 Mbps (1000-byte payloads every 4 ms) for 10 seconds.
        let sends = (0..2500u32).map(|i| {
            let mut p = i.to_le_bytes().to_vec();
            p.resize(1000, 0);
            (Duration::from_millis(4 * u64::from(i)), p)
        });
        let mut s = sim(config.clone(), 1);
        let log = drive(&mut s, sends);
        let ten_s = Duration::from_secs(10);
        let bytes_in_10s: usize = log
            .iter()
            .filter(|(at, _)| *at <= ten_s)
            .map(|(_, p)| p.len())
            .sum();
        // 1 Mbps = 125 000 bytes per second.
        assert!(
            bytes_in_10s.abs_diff(1_250_000) <= 2_000,
            "{bytes_in_10s} bytes in 10 s"
        );
        let st = s.stats();
        assert!(st.dropped_bandwidth > 1000, "{st:?}");
        let tx = serialization_time(1000, bps);
        for (at, p) in &log {
            let sent = Duration::from_millis(4 * u64::from(index(p)));
            assert!(*at - sent <= max_queue_delay + tx, "queued too long");
        }
        assert_accounting(&s);

        // Half the capacity goes through untouched, each datagram after its serialization time.
        let sends = (0..500u32).map(|i| (Duration::from_millis(16 * u64::from(i)), vec![0; 1000]));
        let mut s = sim(config, 1);
        let log = drive(&mut s, sends);
        assert_eq!(log.len(), 500);
        assert_eq!(s.stats().dropped_bandwidth, 0);
        assert_eq!(log[0].0, tx);
    }

    #[test]
    fn zero_bandwidth_drops_everything() {
        let mut s = sim(
            LinkConfig {
                bandwidth_bps: Some(0),
                ..profile("perfect")
            },
            1,
        );
        s.send(DST, b"x").expect("send");
        assert_eq!(s.stats().dropped_bandwidth, 1);
        assert_eq!(s.poll_timeout(), None);
    }

    fn everything_on() -> LinkConfig {
        LinkConfig {
            burst: Some(GilbertElliott {
                p_good_to_bad: 0.05,
                p_bad_to_good: 0.3,
                loss_in_good: 0.0,
                loss_in_bad: 0.5,
            }),
            bandwidth_bps: Some(2_000_000),
            mtu: Some(1200),
            ..profile("hostile")
        }
    }

    fn varied_sends(n: u32) -> impl Iterator<Item = (Duration, Vec<u8>)> {
        (0..n).map(|i| {
            let len = 4 + (i as usize * 37) % 1300;
            let mut p = i.to_le_bytes().to_vec();
            p.resize(len, i as u8);
            (Duration::from_micros(700 * u64::from(i)), p)
        })
    }

    #[test]
    fn same_seed_same_deliveries_different_seed_differs() {
        let run = |seed| {
            let mut s = sim(everything_on(), seed);
            let log = drive(&mut s, varied_sends(5000));
            (log, s.stats())
        };
        let (a, stats_a) = run(99);
        let (b, stats_b) = run(99);
        assert!(!a.is_empty());
        assert_eq!(a, b, "seed 99 must reproduce");
        assert_eq!(stats_a, stats_b);
        let (c, _) = run(100);
        assert_ne!(a, c, "seeds 99 and 100 should differ");
    }

    /// Mean length of runs of consecutive lost datagrams, given which indices arrived.
    fn mean_loss_run(n: u32, log: &Log) -> f64 {
        let mut arrived = vec![false; n as usize];
        for (_, p) in log {
            arrived[index(p) as usize] = true;
        }
        let (mut runs, mut lost, mut in_run) = (0u32, 0u32, false);
        for ok in arrived {
            if !ok {
                lost += 1;
                if !in_run {
                    runs += 1;
                }
            }
            in_run = !ok;
        }
        f64::from(lost) / f64::from(runs.max(1))
    }

    #[test]
    fn gilbert_elliott_loss_is_burstier_than_independent_loss() {
        let seed = 0x6E11_0777;
        let n = 50_000;
        let ge = GilbertElliott {
            p_good_to_bad: 0.02,
            p_bad_to_good: 0.3,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        };
        let mean = ge.mean_loss();
        assert!((mean - 0.0625).abs() < 1e-12);

        let mut bursty = sim(
            LinkConfig {
                burst: Some(ge),
                ..profile("perfect")
            },
            seed,
        );
        let bursty_log = drive(&mut bursty, numbered(n, 0));
        let mut random = sim(
            LinkConfig {
                loss: mean,
                ..profile("perfect")
            },
            seed,
        );
        let random_log = drive(&mut random, numbered(n, 0));

        let bursty_rate = bursty.stats().dropped_burst as f64 / f64::from(n);
        let random_rate = random.stats().dropped_loss as f64 / f64::from(n);
        assert!(
            (bursty_rate - mean).abs() < 0.01,
            "seed {seed}: {bursty_rate}"
        );
        assert!(
            (random_rate - mean).abs() < 0.01,
            "seed {seed}: {random_rate}"
        );

        let bursty_run = mean_loss_run(n, &bursty_log);
        let random_run = mean_loss_run(n, &random_log);
        // Expected about 1 / 0.3 = 3.3 for the chain, 1 / (1 - 0.0625) = 1.07 for random loss.
        assert!(
            bursty_run > 2.0 * random_run,
            "seed {seed}: bursty {bursty_run}, random {random_run}"
        );
    }

    #[test]
    fn max_scheduled_bounds_the_queue() {
        let mut s = sim(
            LinkConfig {
                latency: Duration::from_secs(1),
                max_scheduled: 10,
                ..profile("perfect")
            },
            1,
        );
        for _ in 0..15 {
            s.send(DST, b"x").expect("send");
        }
        assert_eq!(s.scheduled_len(), 10);
        assert_eq!(s.stats().dropped_overflow, 5);
        s.set_config(LinkConfig {
            latency: Duration::from_secs(1),
            max_scheduled_bytes: 12,
            ..profile("perfect")
        });
        s.advance_to(Duration::from_secs(1)).expect("sink");
        for _ in 0..3 {
            s.send(DST, &[0; 5]).expect("send");
        }
        assert_eq!(s.scheduled_len(), 2);
        assert_eq!(s.stats().dropped_overflow, 6);
        assert_accounting(&s);
    }

    #[test]
    fn advance_to_ignores_the_past_and_keeps_ties_in_send_order() {
        let mut s = sim(
            LinkConfig {
                latency: Duration::from_millis(10),
                ..profile("perfect")
            },
            1,
        );
        s.advance_to(Duration::from_millis(100)).expect("sink");
        s.advance_to(Duration::from_millis(50)).expect("sink");
        assert_eq!(s.now(), Duration::from_millis(100));
        for i in 0u8..5 {
            s.send(DST, &[i]).expect("send");
        }
        assert_eq!(s.poll_timeout(), Some(Duration::from_millis(110)));
        s.advance_to(Duration::from_millis(109)).expect("sink");
        assert!(s.inner().out.is_empty());
        s.advance_to(Duration::from_millis(110)).expect("sink");
        assert_eq!(s.inner().out, (0u8..5).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn inner_error_drops_one_datagram_and_keeps_the_rest() {
        let mut s = sim(
            LinkConfig {
                latency: Duration::from_millis(10),
                ..profile("perfect")
            },
            1,
        );
        s.send(DST, b"a").expect("send");
        s.send(DST, b"b").expect("send");
        s.inner_mut().fail_next = true;
        assert!(matches!(
            s.advance_to(Duration::from_millis(10)),
            Err(TransportError::Closed)
        ));
        assert_eq!(s.stats().dropped_inner, 1);
        assert_eq!(s.scheduled_len(), 1);
        s.advance_to(Duration::from_millis(10)).expect("sink");
        assert_eq!(s.inner().out, vec![b"b".to_vec()]);
        assert_accounting(&s);
    }

    #[test]
    fn works_over_loopback_in_both_directions() {
        use crate::loopback::{LoopbackConfig, LoopbackNet};
        let net = LoopbackNet::new(LoopbackConfig::default());
        let link = LinkConfig {
            latency: Duration::from_millis(40),
            ..profile("perfect")
        };
        let mut a = NetSim::new(net.endpoint(), link.clone(), 1);
        let mut b = NetSim::new(net.endpoint(), link, 2);
        let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
        let mut buf = [0u8; 64];

        a.send(b_addr, b"ping").expect("send");
        b.advance_to(Duration::from_millis(40))
            .expect("b has nothing");
        assert_eq!(
            b.recv(&mut buf).expect("recv"),
            None,
            "a's simulator holds it"
        );
        a.advance_to(Duration::from_millis(40)).expect("loopback");
        let got = b.recv(&mut buf).expect("recv").expect("delivered");
        assert_eq!((&buf[..got.len], got.from), (&b"ping"[..], a_addr));

        b.send(a_addr, b"pong").expect("send");
        b.advance_to(Duration::from_millis(80)).expect("loopback");
        a.advance_to(Duration::from_millis(80)).expect("nothing");
        let got = a.recv(&mut buf).expect("recv").expect("delivered");
        assert_eq!((&buf[..got.len], got.from), (&b"pong"[..], b_addr));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn any_config() -> impl Strategy<Value = LinkConfig> {
            (
                (0u64..200, 0u64..200, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0),
                (
                    prop::option::of((0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0)),
                    prop::option::of(0u64..5_000_000),
                    prop::option::of(0usize..600),
                    1usize..50,
                    0u64..300,
                ),
            )
                .prop_map(
                    |((lat, jit, loss, dup, reo), (burst, bw, mtu, max_sched, mqd))| LinkConfig {
                        latency: Duration::from_millis(lat),
                        jitter: Duration::from_millis(jit),
                        loss,
                        duplicate: dup,
                        reorder: reo,
                        burst: burst.map(|(a, b, c, d)| GilbertElliott {
                            p_good_to_bad: a,
                            p_bad_to_good: b,
                            loss_in_good: c,
                            loss_in_bad: d,
                        }),
                        bandwidth_bps: bw,
                        mtu,
                        max_scheduled: max_sched,
                        max_queue_delay: Duration::from_millis(mqd),
                        ..LinkConfig::default()
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// Any configuration and send pattern: no panic, every datagram accounted for, no
            /// delivery before its send time, bounded queue, deterministic replay.
            #[test]
            fn accounting_and_causality(
                config in any_config(),
                seed in any::<u64>(),
                gaps in prop::collection::vec((0u64..30, 0usize..700), 0..150),
            ) {
                let mut t = Duration::ZERO;
                let sends: Vec<(Duration, Vec<u8>)> = gaps
                    .iter()
                    .enumerate()
                    .map(|(i, &(gap, len))| {
                        t += Duration::from_millis(gap);
                        let mut p = (i as u32).to_le_bytes().to_vec();
                        p.resize(4 + len, 0);
                        (t, p)
                    })
                    .collect();
                let mut s = sim(config.clone(), seed);
                let mut log = Log::new();
                for (t, p) in &sends {
                    flush_until(&mut s, *t, &mut log);
                    s.advance_to(*t).expect("sink");
                    s.send(DST, p).expect("within max_payload");
                    take_into(&mut s, *t, &mut log);
                    prop_assert!(s.scheduled_len() <= config.max_scheduled, "seed {}", seed);
                }
                flush_until(&mut s, Duration::MAX, &mut log);
                for (at, p) in &log {
                    let sent = sends[index(p) as usize].0;
                    prop_assert!(*at >= sent, "seed {}", seed);
                }
                assert_accounting(&s);
                prop_assert_eq!(s.stats().delivered as usize, log.len());

                let mut again = sim(config, seed);
                prop_assert_eq!(drive(&mut again, sends), log, "seed {}", seed);
            }
        }
    }
}
