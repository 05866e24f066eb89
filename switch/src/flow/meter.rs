//! Meters (`add-meter`): a rate limit a flow's `meter:N` action applies; packets beyond the
//! rate (after a burst) are dropped. One drop band, in kilobits or packets per second, on a
//! token bucket (`rate_limit.rs`) shared by every dataplane thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::rate_limit::{RateUnit, TokenBucket};

pub use crate::rate_limit::RateUnit as MeterUnit;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meter {
    pub id: u32,
    pub unit: MeterUnit,
    /// The drop band's rate, in `unit`.
    pub rate: u32,
    /// The band's burst (kilobits or packets); `None`: a tenth of a second at the rate.
    pub burst: Option<u32>,
}

impl Meter {
    fn burst_or_default(&self) -> u32 {
        self.burst.unwrap_or(match self.unit {
            RateUnit::Kbps => (self.rate / 10).max(12),
            RateUnit::Pktps => (self.rate / 10).max(1),
        })
    }
}

/// A meter's counters.
#[derive(Debug, Default)]
pub struct MeterStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets the band dropped.
    pub dropped: AtomicU64,
}

/// A meter in the tables: its definition, its token bucket and counters (kept across
/// table versions; a `mod-meter` starts a full bucket).
#[derive(Debug, Clone)]
pub struct MeterEntry {
    pub meter: Arc<Meter>,
    bucket: Arc<TokenBucket>,
    pub stats: Arc<MeterStats>,
}

impl MeterEntry {
    pub fn new(meter: Meter, now_ms: u64) -> MeterEntry {
        let bucket = TokenBucket::new(meter.unit, meter.rate, meter.burst_or_default(), now_ms);
        MeterEntry {
            meter: Arc::new(meter),
            bucket: Arc::new(bucket),
            stats: Arc::default(),
        }
    }

    /// Whether a packet of `bytes` at `now_ms` would be within the rate, changing nothing
    /// (`flowctl trace`).
    pub fn would_admit(&self, bytes: u32, now_ms: u64) -> bool {
        self.bucket.would_admit(bytes, now_ms)
    }

    /// Whether a packet of `bytes` at `now_ms` is within the rate (and takes its tokens).
    pub fn admit(&self, bytes: u32, now_ms: u64) -> bool {
        self.stats.packets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(u64::from(bytes), Ordering::Relaxed);
        let ok = self.bucket.admit(bytes, now_ms);
        if !ok {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_admits_its_rate_after_its_burst() {
        let m = MeterEntry::new(
            Meter {
                id: 1,
                unit: MeterUnit::Pktps,
                rate: 1000,
                burst: Some(10),
            },
            0,
        );
        // The burst at once, then nothing until tokens come back.
        assert_eq!((0..50).filter(|_| m.admit(64, 0)).count(), 10);
        // One packet per millisecond for a second: 1000 (± the burst).
        let admitted = (1..=1000u64)
            .flat_map(|ms| std::iter::repeat_n(ms, 5))
            .filter(|ms| m.admit(64, *ms))
            .count();
        assert!((1000..=1010).contains(&admitted), "{admitted}");
        assert_eq!(
            m.stats.dropped.load(Ordering::Relaxed),
            50 - 10 + 5000 - admitted as u64
        );

        let k = MeterEntry::new(
            Meter {
                id: 2,
                unit: MeterUnit::Kbps,
                rate: 8000, // 1 MB/s
                burst: Some(12),
            },
            0,
        );
        let bytes: u64 = (1..=1000u64)
            .flat_map(|ms| std::iter::repeat_n(ms, 10))
            .filter(|ms| k.admit(1000, *ms))
            .count() as u64
            * 1000;
        assert!((1_000_000..=1_002_000).contains(&bytes), "{bytes}");
    }
}
