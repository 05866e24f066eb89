//! A token bucket: how meters (`flow/meter.rs`) and ports' ingress policing hold traffic to
//! a rate. Rates in kilobits or packets per second, time in milliseconds from the caller's
//! clock (a batch's), tokens in bits or thousandths of a packet so that one millisecond's
//! refill is exact. Shared by the dataplane threads behind a lock (taken only for traffic
//! that is rate-limited).

use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    Kbps,
    Pktps,
}

#[derive(Debug)]
struct State {
    tokens: u64,
    last_ms: u64,
}

#[derive(Debug)]
pub struct TokenBucket {
    unit: RateUnit,
    /// Per second, in `unit`.
    rate: u64,
    /// Tokens the bucket holds at most.
    capacity: u64,
    state: Mutex<State>,
}

impl TokenBucket {
    /// A full bucket of `rate` per second with a burst of `burst` (kilobits or packets).
    pub fn new(unit: RateUnit, rate: u32, burst: u32, now_ms: u64) -> TokenBucket {
        let capacity = u64::from(burst.max(1)) * 1000;
        TokenBucket {
            unit,
            rate: u64::from(rate),
            capacity,
            state: Mutex::new(State {
                tokens: capacity,
                last_ms: now_ms,
            }),
        }
    }

    /// What a packet of `bytes` costs, in the bucket's tokens.
    fn cost(&self, bytes: u32) -> u64 {
        match self.unit {
            // 1 kbit/s is 1 bit per millisecond.
            RateUnit::Kbps => u64::from(bytes) * 8,
            RateUnit::Pktps => 1000,
        }
    }

    /// The tokens `s` holds at `now_ms`.
    fn refilled(&self, s: &State, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(s.last_ms);
        // kbps: `rate` bits per ms; pktps: `rate` thousandths of a packet per ms.
        s.tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity)
    }

    /// Whether a packet of `bytes` at `now_ms` would be within the rate; takes nothing.
    pub fn would_admit(&self, bytes: u32, now_ms: u64) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refilled(&s, now_ms) >= self.cost(bytes)
    }

    /// Whether a packet of `bytes` at `now_ms` is within the rate (it then takes its tokens).
    pub fn admit(&self, bytes: u32, now_ms: u64) -> bool {
        let cost = self.cost(bytes);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.tokens = self.refilled(&s, now_ms);
        s.last_ms = s.last_ms.max(now_ms);
        if s.tokens >= cost {
            s.tokens -= cost;
            true
        } else {
            false
        }
    }
}
