//! Meters (`add-meter`): a rate limit a flow's `meter:N` action applies; packets beyond the
//! rate (after a burst) are dropped. One drop band, in kilobits or packets per second; a
//! token bucket per meter, shared by every dataplane thread (a lock per metered packet:
//! meters are few and opt-in).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterUnit {
    Kbps,
    Pktps,
}

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
    /// The bucket's size in its tokens (bits, or thousandths of a packet).
    fn capacity(&self) -> u64 {
        match self.unit {
            MeterUnit::Kbps => {
                let kbits = self.burst.unwrap_or((self.rate / 10).max(12));
                u64::from(kbits.max(1)) * 1000
            }
            MeterUnit::Pktps => {
                u64::from(self.burst.unwrap_or((self.rate / 10).max(1)).max(1)) * 1000
            }
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

#[derive(Debug)]
struct Bucket {
    tokens: u64,
    last_ms: u64,
}

/// A meter in the tables: its definition, its token bucket and counters (kept across
/// table versions; a `mod-meter` starts a full bucket).
#[derive(Debug, Clone)]
pub struct MeterEntry {
    pub meter: Arc<Meter>,
    bucket: Arc<Mutex<Bucket>>,
    pub stats: Arc<MeterStats>,
}

impl MeterEntry {
    pub fn new(meter: Meter, now_ms: u64) -> MeterEntry {
        let tokens = meter.capacity();
        MeterEntry {
            meter: Arc::new(meter),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens,
                last_ms: now_ms,
            })),
            stats: Arc::default(),
        }
    }

    /// Whether a packet of `bytes` at `now_ms` is within the rate (and takes its tokens).
    pub fn admit(&self, bytes: u32, now_ms: u64) -> bool {
        let m = &self.meter;
        self.stats.packets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(u64::from(bytes), Ordering::Relaxed);
        let cost = match m.unit {
            // 1 kbit/s is 1 bit per millisecond.
            MeterUnit::Kbps => u64::from(bytes) * 8,
            MeterUnit::Pktps => 1000,
        };
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.last_ms = b.last_ms.max(now_ms);
        // kbps: rate bits per ms; pktps: rate thousandths of a packet per ms.
        let refill = elapsed.saturating_mul(u64::from(m.rate));
        b.tokens = b.tokens.saturating_add(refill).min(m.capacity());
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            drop(b);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
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
