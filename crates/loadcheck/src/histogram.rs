//! A compact latency histogram (microseconds, about 1.6 % relative error) for percentiles.
//!
//! A load check can run for the whole length of an upgrade, so keeping every sample would grow
//! without bound; buckets keep memory fixed. Values below 128 µs are exact; above, each power of
//! two is split into 64 buckets.

use std::time::Duration;

const EXACT: u64 = 128;
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = EXACT as usize + (64 - 7) * SUB as usize;

/// Latency samples in fixed buckets, plus the exact maximum.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < EXACT {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= 7
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    EXACT as usize + (exp as usize - 7) * SUB as usize + sub as usize
}

/// The midpoint of a bucket's range, in microseconds.
fn value_of(bucket: usize) -> u64 {
    if bucket < EXACT as usize {
        return bucket as u64;
    }
    let rel = bucket - EXACT as usize;
    let exp = (rel / SUB as usize) as u32 + 7;
    let sub = (rel % SUB as usize) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    ((SUB + sub) << (exp - SUB_BITS)) + width / 2
}

impl Histogram {
    /// Adds one sample.
    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The latency at quantile `q` (0..=1) in microseconds; 0 with no samples.
    pub(crate) fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(bucket).min(self.max_us);
            }
        }
        self.max_us
    }

    /// The largest sample in microseconds.
    pub(crate) fn max_us(&self) -> u64 {
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            127,
            128,
            129,
            1_000,
            65_432,
            1_500_000,
            u64::MAX / 2,
        ] {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            let v = value_of(b);
            let err = (v as f64 - us as f64).abs() / (us.max(1) as f64);
            assert!(err < 0.02, "{us} -> {v}");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_follow_samples() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_us(0.5) as f64 / 1000.0;
        let p99 = h.quantile_us(0.99) as f64 / 1000.0;
        assert!((49.0..=51.0).contains(&p50), "p50 {p50}");
        assert!((98.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.max_us(), 100_000);
        let mut g = Histogram::default();
        g.merge(&h);
        assert_eq!(g.quantile_us(0.5), h.quantile_us(0.5));
    }
}
