//! Rate limits: a token bucket, and one bucket per source IP with a bounded table.

use std::net::IpAddr;
use std::time::Duration;

use hashbrown::HashMap;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Duration,
}

impl Bucket {
    pub(crate) fn full(burst: u32, now: Duration) -> Self {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Duration, rate: u32, burst: u32) -> bool {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now: Duration, rate: u32, burst: u32) -> bool {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.tokens + dt * f64::from(rate) >= f64::from(burst)
    }
}

/// One bucket per source IP, for the handshake packets that cost the server work (a MAC, a
/// token decryption). At most `max_sources` buckets are kept: when the table is full, buckets
/// that refilled are forgotten, and if none did, new sources share one overflow bucket, so a
/// spoofed flood from many addresses costs bounded memory and still cannot take more than
/// the overflow bucket's rate.
#[derive(Debug)]
pub(crate) struct SourceLimiter {
    rate: u32,
    burst: u32,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

impl SourceLimiter {
    pub(crate) fn new(rate: u32, burst: u32, max_sources: usize) -> Self {
        SourceLimiter {
            rate,
            burst: burst.max(1),
            max_sources,
            buckets: HashMap::new(),
            overflow: Bucket::full(burst.max(1), Duration::ZERO),
        }
    }

    /// Whether a packet from `ip` may be handled now.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.buckets.get_mut(&ip) {
            return b.take(now, rate, burst);
        }
        if self.buckets.len() >= self.max_sources {
            self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.take(now, rate, burst);
        }
        let mut b = Bucket::full(burst, now);
        let ok = b.take(now, rate, burst);
        self.buckets.insert(ip, b);
        ok
    }

    /// Sources tracked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = Bucket::full(4, Duration::ZERO);
        let ok = (0..10).filter(|_| b.take(Duration::ZERO, 10, 4)).count();
        assert_eq!(ok, 4);
        // 100 ms at 10/s: one more.
        assert!(b.take(Duration::from_millis(100), 10, 4));
        assert!(!b.take(Duration::from_millis(100), 10, 4));
    }

    #[test]
    fn sources_are_limited_apart_and_the_table_is_bounded() {
        let mut l = SourceLimiter::new(10, 2, 3);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let t = Duration::ZERO;
        assert!(l.allow(a, t) && l.allow(a, t));
        assert!(!l.allow(a, t), "a is over its burst");
        assert!(l.allow(b, t), "b has its own bucket");
        for i in 3..200u8 {
            let _ = l.allow([127, 0, 0, i].into(), t);
        }
        assert!(l.len() <= 3);
        // Once buckets refill they are forgotten to make room.
        assert!(l.allow([127, 0, 1, 1].into(), Duration::from_secs(5)));
    }
}
