//! Latency histograms: fixed buckets of relaxed atomics, and their readings.
//!
//! Runs on: any thread. A [`Histogram`] is written by one thread (a shard, or the Redis
//! bridge) and read, summed over shards, by `/metrics` and the stats feed on any shard.
//! Owns the bucket bounds ([`Buckets`] and its implementations) and
//! [`HistogramReading`]. `Send + Sync`: atomics, no lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// The upper bounds of a [`Histogram`]'s buckets, in nanoseconds (ascending; an implicit
/// last bucket takes the rest).
pub trait Buckets {
    /// Ascending upper bounds (at most [`MAX_BUCKETS`]).
    const BOUNDS_NS: &'static [u64];
}

/// Most finite buckets of a [`Histogram`].
pub(crate) const MAX_BUCKETS: usize = 20;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// One event's fan-out on one shard: a microsecond for a few connections, milliseconds
/// for tens of thousands.
#[derive(Debug)]
pub struct FanOutBuckets;
impl Buckets for FanOutBuckets {
    const BOUNDS_NS: &'static [u64] = &[
        US,
        2 * US + US / 2,
        5 * US,
        10 * US,
        25 * US,
        50 * US,
        100 * US,
        250 * US,
        500 * US,
        MS,
        2 * MS + MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
    ];
}

/// Publish-to-delivery lag: a hundred microseconds on a quiet cluster, seconds when a
/// node falls behind.
#[derive(Debug)]
pub struct LagBuckets;
impl Buckets for LagBuckets {
    const BOUNDS_NS: &'static [u64] = &[
        100 * US,
        250 * US,
        500 * US,
        MS,
        2 * MS + MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        500 * MS,
        S,
        2 * S + S / 2,
        5 * S,
        10 * S,
        30 * S,
    ];
}

/// A command's round trip to Redis.
#[derive(Debug)]
pub struct RoundTripBuckets;
impl Buckets for RoundTripBuckets {
    const BOUNDS_NS: &'static [u64] = &[
        50 * US,
        100 * US,
        250 * US,
        500 * US,
        MS,
        2 * MS + MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        500 * MS,
        S,
        5 * S,
    ];
}

/// A histogram of durations with fixed buckets: relaxed atomics written by one thread,
/// read (and summed over shards) by `/metrics`. Observing costs a few comparisons and two
/// uncontended atomic adds, no lock.
#[derive(Debug)]
pub struct Histogram<B> {
    /// Observations per bucket (not cumulative); `[BOUNDS_NS.len()]` is the overflow.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    /// Sum of every observation, in nanoseconds.
    sum_ns: AtomicU64,
    buckets: std::marker::PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        const { assert!(B::BOUNDS_NS.len() <= MAX_BUCKETS) };
        Histogram {
            counts: Default::default(),
            sum_ns: AtomicU64::new(0),
            buckets: std::marker::PhantomData,
        }
    }
}

/// What a scrape reads of one or more [`Histogram`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramReading {
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound in seconds, observations in this bucket only)`, the last bound
    /// `+Inf`: the form `prometheus_client` encodes (it writes the cumulative `le`
    /// buckets).
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramReading {
    /// The observations since `earlier` (a reading of the same histograms).
    pub fn since(&self, earlier: Option<&HistogramReading>) -> HistogramReading {
        let Some(earlier) = earlier else { return self.clone() };
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|((bound, now), (_, then))| (*bound, now.saturating_sub(*then)))
            .collect();
        HistogramReading {
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }

    /// The upper bound (seconds) of the bucket holding quantile `q` (0..=1): an upper
    /// estimate. `None` without observations; the last finite bound when it falls in the
    /// overflow bucket.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        let mut last_finite = None;
        for (bound, n) in &self.buckets {
            if bound.is_finite() {
                last_finite = Some(*bound);
            }
            seen += n;
            if seen >= rank {
                return if bound.is_finite() { Some(*bound) } else { last_finite };
            }
        }
        last_finite
    }
}

impl<B: Buckets> Histogram<B> {
    /// Records one duration.
    pub fn observe(&self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let at = B::BOUNDS_NS.iter().position(|bound| ns <= *bound).unwrap_or(B::BOUNDS_NS.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// This histogram alone as a reading.
    pub fn read_one(&self) -> HistogramReading {
        Histogram::read([self])
    }

    /// The sum of `histograms` (every shard's) as one reading.
    pub fn read<'a>(histograms: impl IntoIterator<Item = &'a Self>) -> HistogramReading
    where
        B: 'a,
    {
        let mut counts = [0u64; MAX_BUCKETS + 1];
        let mut sum_ns = 0u64;
        for h in histograms {
            for (total, count) in counts.iter_mut().zip(&h.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(h.sum_ns.load(Ordering::Relaxed));
        }
        let mut buckets: Vec<(f64, u64)> =
            B::BOUNDS_NS.iter().zip(counts).map(|(bound, n)| (*bound as f64 / 1e9, n)).collect();
        buckets.push((f64::INFINITY, counts[B::BOUNDS_NS.len()]));
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramReading { sum_seconds: sum_ns as f64 / 1e9, count, buckets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_observation_lands_in_one_bucket_summed_over_shards() {
        let a = Histogram::<LagBuckets>::default();
        let b = Histogram::<LagBuckets>::default();
        a.observe(Duration::from_micros(50));
        a.observe(Duration::from_millis(4));
        b.observe(Duration::from_millis(4));
        b.observe(Duration::from_secs(60));
        let r = Histogram::read([&a, &b]);
        assert_eq!(r.count, 4);
        let at = |bound: f64| r.buckets.iter().find(|(b, _)| *b == bound).map(|(_, c)| *c);
        assert_eq!(at(0.0001), Some(1));
        assert_eq!(at(0.0025), Some(0));
        assert_eq!(at(0.005), Some(2));
        assert_eq!(at(30.0), Some(0));
        assert_eq!(at(f64::INFINITY), Some(1));
        assert!((r.sum_seconds - 60.00805).abs() < 1e-9, "{}", r.sum_seconds);
        assert_eq!(r.quantile_seconds(0.25), Some(0.0001));
        assert_eq!(r.quantile_seconds(0.5), Some(0.005));
        assert_eq!(r.quantile_seconds(1.0), Some(30.0), "the overflow reads as the last bound");
        let earlier = r.clone();
        a.observe(Duration::from_millis(20));
        let recent = Histogram::read([&a, &b]).since(Some(&earlier));
        assert_eq!((recent.count, recent.quantile_seconds(0.99)), (1, Some(0.025)));
        assert_eq!(Histogram::<LagBuckets>::default().read_one().quantile_seconds(0.5), None);
    }
}
