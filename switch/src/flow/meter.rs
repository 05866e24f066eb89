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
    /// A kbps bucket holds at least [`MIN_KBPS_BURST`].
    pub burst: Option<u32>,
}

/// The least a kbps meter's bucket holds, in kilobits: one frame as large as the switch
/// passes (a 9000-byte MTU with a tagged Ethernet header, 9018 bytes), so that no frame is
/// over its meter for ever (a 100 kbps meter with a tenth of a second's burst would drop
/// every 1514-byte frame).
pub const MIN_KBPS_BURST: u32 = 73;

impl Meter {
    fn burst_or_default(&self) -> u32 {
        match self.unit {
            RateUnit::Kbps => self.burst.unwrap_or(self.rate / 10).max(MIN_KBPS_BURST),
            RateUnit::Pktps => self.burst.unwrap_or((self.rate / 10).max(1)),
        }
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
                burst: Some(80),
            },
            0,
        );
        let bytes: u64 = (1..=1000u64)
            .flat_map(|ms| std::iter::repeat_n(ms, 10))
            .filter(|ms| k.admit(1000, *ms))
            .count() as u64
            * 1000;
        // A second at the rate, and the burst (80 kbit: 10 000 bytes).
        assert!((1_000_000..=1_011_000).contains(&bytes), "{bytes}");
    }

    /// A slow kbps meter, or one with a burst smaller than a frame, still passes its largest
    /// frames at the rate: the bucket holds at least one.
    #[test]
    fn a_kbps_meter_holds_at_least_its_largest_frame() {
        for burst in [None, Some(1)] {
            let m = MeterEntry::new(
                Meter {
                    id: 1,
                    unit: MeterUnit::Kbps,
                    rate: 100,
                    burst,
                },
                0,
            );
            assert!(
                m.admit(9018, 0),
                "{burst:?}: a full bucket passes a 9018-byte frame"
            );
            assert!(!m.admit(1514, 0), "{burst:?}: and is empty after it");
            // 100 kbit/s: 1514 bytes (12 112 bits) take 122 ms to come back.
            assert!(m.admit(1514, 122), "{burst:?}");
        }
    }
}
