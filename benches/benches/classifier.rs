//! Nanoseconds per flow-table lookup: Patchbay's tuple-space-search classifier, with and
//! without the exact-match cache (EMC) in front, ratio'd to a naive linear scan of the rules
//! measured in the same run.
//!
//! Rules are ACL-like: `dl_type=ip` plus some of in_port, nw_proto, nw_src/nw_dst prefixes of
//! a few lengths and tp_dst, drawn from 8 templates (so 8 masks, plus a priority-0 catch-all),
//! with random values and priorities. Packets: 4096 keys, 80% built from a random rule (its
//! value, with random bits where it does not look), 20% random. Priorities are uniform, not
//! correlated with how specific a rule is, so priority pruning rarely stops a lookup early:
//! every mask is probed (the worst case for tuple space search).
//!
//! - `tss`: `Classifier::lookup` per key.
//! - `tss+emc`: an `ExactMatchCache` of 8192 entries (the 4096-flow working set fits), falling
//!   back to the classifier on a miss; after warm-up, almost all hits.
//! - `linear`: the naive scan (every rule, highest priority wins) at 1, 100 and 10k rules.
//!
//! Columns: `masks` is the number of subtables (the catch-all included), `hit%` the share of
//! keys whose best rule is not the catch-all, `build ms` the time to insert all the rules.
//!
//! Settings (environment): `PATCHBAY_BENCH_SECS` (per case, default 0.4),
//! `PATCHBAY_BENCH_ROUNDS` (best of, default 2).
//!
//! Run with `cargo bench -p patchbay-benches --bench classifier`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use patchbay_benches::env_or;
use patchbay_switch::flow::classifier::{CacheKey, Classifier, ExactMatchCache, RuleId};
use patchbay_switch::flow::key::consts;
use patchbay_switch::flow::{Field, FlowKey, Match};

const SIZES: [usize; 4] = [1, 100, 10_000, 100_000];
const LINEAR_MAX: usize = 10_000;
const N_KEYS: usize = 4096;
const EMC_ENTRIES: usize = 8192;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn prefix(len: u32) -> u64 {
    if len == 0 {
        0
    } else {
        (u32::MAX << (32 - len)) as u64
    }
}

/// (in_port, nw_proto + tp_dst, nw_src prefix, nw_dst prefix)
const TEMPLATES: [(bool, bool, u32, u32); 8] = [
    (true, true, 24, 32),
    (false, true, 16, 24),
    (true, false, 32, 32),
    (false, false, 0, 24),
    (false, false, 8, 0),
    (true, true, 0, 16),
    (false, true, 32, 32),
    (true, false, 24, 0),
];
const PORTS: [u64; 8] = [22, 25, 53, 80, 123, 443, 3306, 8080];

fn acl_rule(rng: &mut Rng, i: usize) -> Match {
    let (in_port, l4, src, dst) = TEMPLATES[i % TEMPLATES.len()];
    let mut m = Match::any();
    m.set_exact(Field::DlType, consts::ETH_IPV4);
    if in_port {
        m.set_exact(Field::InPort, 1 + rng.below(16));
    }
    if l4 {
        m.set_exact(
            Field::NwProto,
            [consts::IP_TCP, consts::IP_UDP][rng.below(2) as usize],
        );
        m.set_exact(Field::TpDst, PORTS[rng.below(8) as usize]);
    }
    m.set(Field::NwSrc, rng.next(), prefix(src));
    m.set(Field::NwDst, rng.next(), prefix(dst));
    m
}

fn rules(n: usize) -> Vec<(Match, u16)> {
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut v = vec![(Match::any(), 0)];
    for i in 1..n {
        v.push((acl_rule(&mut rng, i), 1 + rng.below(65535) as u16));
    }
    v
}

fn keys(rules: &[(Match, u16)]) -> Vec<FlowKey> {
    let mut rng = Rng(0x1234_5678);
    (0..N_KEYS)
        .map(|_| {
            let mut k = FlowKey::default();
            k.set(Field::InPort, 1 + rng.below(16));
            k.set(Field::DlType, consts::ETH_IPV4);
            k.set(
                Field::NwProto,
                [consts::IP_TCP, consts::IP_UDP][rng.below(2) as usize],
            );
            k.set(Field::TpSrc, 1024 + rng.below(60000));
            k.set(Field::TpDst, PORTS[rng.below(8) as usize]);
            k.set(Field::NwSrc, rng.next());
            k.set(Field::NwDst, rng.next());
            if rules.len() > 1 && rng.below(10) < 8 {
                let m = &rules[1 + rng.below(rules.len() as u64 - 1) as usize].0;
                for w in 0..6 {
                    k.0[w] = m.value.0[w] | (k.0[w] & !m.mask.0[w]);
                }
            }
            k
        })
        .collect()
}

fn linear(rules: &[(Match, u16, RuleId)], key: &FlowKey) -> Option<RuleId> {
    let mut best: Option<(u16, RuleId)> = None;
    for (m, prio, id) in rules {
        if m.matches(key) && best.is_none_or(|(bp, _)| *prio > bp) {
            best = Some((*prio, *id));
        }
    }
    best.map(|(_, id)| id)
}

/// Best-of-`rounds` ns per call of `f` on each key, cycling through `keys`.
fn measure(
    dur: Duration,
    rounds: usize,
    keys: &[FlowKey],
    mut f: impl FnMut(&FlowKey) -> u64,
) -> f64 {
    // Warm-up (fills the EMC).
    let mut sink = 0u64;
    for k in keys {
        sink = sink.wrapping_add(f(k));
    }
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            for k in keys {
                sink = sink.wrapping_add(f(black_box(k)));
            }
            n += keys.len() as u64;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    black_box(sink);
    best
}

fn main() {
    let dur = Duration::from_secs_f64(env_or("PATCHBAY_BENCH_SECS", 0.4));
    let rounds: usize = env_or("PATCHBAY_BENCH_ROUNDS", 2usize).max(1);
    println!(
        "classifier: ns/lookup, {N_KEYS} keys cycled, EMC {EMC_ENTRIES} entries, best of {rounds} x {:.1} s",
        dur.as_secs_f64()
    );
    println!(
        "{:>8} {:>6} {:>9} {:>8} {:>9} {:>9} {:>10} {:>11}",
        "rules", "masks", "build ms", "hit%", "tss", "tss+emc", "linear", "linear/tss"
    );
    for n in SIZES {
        let rs = rules(n);
        let t = Instant::now();
        let mut cls = Classifier::new();
        let mut flat = Vec::with_capacity(n);
        for (i, (m, prio)) in rs.iter().enumerate() {
            let id = cls.insert(*m, *prio, i as u32);
            flat.push((*m, *prio, id));
        }
        let build_ms = t.elapsed().as_secs_f64() * 1e3;
        let ks = keys(&rs);
        // Sanity: the classifier agrees with the scan, and how many keys hit a non-default rule.
        let mut specific = 0;
        for k in ks.iter().take(if n > LINEAR_MAX { 64 } else { N_KEYS }) {
            let got = cls.lookup(k).map(|(id, _)| id);
            assert_eq!(
                got,
                linear(&flat, k),
                "classifier disagrees with the linear scan"
            );
        }
        for k in &ks {
            if cls.lookup(k).is_some_and(|(_, p)| *p != 0) {
                specific += 1;
            }
        }

        let tss = measure(dur, rounds, &ks, |k| cls.lookup(k).map_or(0, |(id, _)| id));
        let mut emc = ExactMatchCache::<Option<RuleId>>::new(EMC_ENTRIES);
        let version = 1;
        let words = cls.words();
        let with_emc = measure(dur, rounds, &ks, |k| {
            let Some(ck) = CacheKey::gather(0, k, words) else {
                return cls.lookup(k).map_or(0, |(id, _)| id);
            };
            let r = match emc.get(version, &ck) {
                Some(r) => r,
                None => {
                    let r = cls.lookup(k).map(|(id, _)| id);
                    emc.insert(version, &ck, r);
                    r
                }
            };
            r.unwrap_or(0)
        });
        let (lin, ratio) = if n <= LINEAR_MAX {
            let keys_lin = if n >= 10_000 { &ks[..256] } else { &ks[..] };
            let l = measure(dur, rounds, keys_lin, |k| linear(&flat, k).unwrap_or(0));
            (format!("{l:.1}"), format!("{:.1}x", l / tss))
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:>8} {:>6} {:>9.1} {:>7.0}% {:>9.1} {:>9.1} {:>10} {:>11}",
            n,
            cls.n_subtables(),
            build_ms,
            100.0 * specific as f64 / ks.len() as f64,
            tss,
            with_emc,
            lin,
            ratio
        );
    }
}
