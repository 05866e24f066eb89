//! Nanoseconds per packet tracked by the connection table (`Conntrack::track`, as the
//! frame path's `ct` looks a packet up), stored UDP connections, one packet per connection
//! in turn (testpmd's flowgen order): 1, 10 000 and 100 000 connections, so that the table
//! fits the caches, outgrows the first levels and outgrows them all. The ratio column is
//! one connection's time against each size's, measured in the same run.
//!
//! Settings (environment): `PATCHBAY_BENCH_SECS` (per case, default 0.4),
//! `PATCHBAY_BENCH_ROUNDS` (best of, default 3), `PATCHBAY_BENCH_CONNECTIONS` (one size
//! instead of the three).
//!
//! Run with `cargo bench -p patchbay-benches --bench conntrack`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use patchbay_benches::env_or;
use patchbay_switch::conntrack::{CommitOptions, Conntrack, Limits};

const SIZES: [usize; 3] = [1, 10_000, 100_000];
const ZONE: u16 = 1;

/// A 60-byte UDP frame (64 on the wire, with its FCS) of connection `n`: 10.(n>>16).(n>>8).n:(n % 50000 + 1024) to
/// 192.168.0.1:53.
fn frame(n: usize) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    ip[16..20].copy_from_slice(&[192, 168, 0, 1]);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&((n % 50_000 + 1024) as u16).to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    f
}

/// Best ns per packet over `rounds` runs of about `secs` each.
fn measure(frames: &[Vec<u8>], ct: &Conntrack, secs: f64, rounds: u32) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut packets = 0u64;
        while start.elapsed() < Duration::from_secs_f64(secs) {
            // At least 4096 packets between clock reads.
            for _ in 0..4096usize.div_ceil(frames.len()) {
                for f in frames {
                    black_box(ct.track(f, ZONE, None, 1_000));
                }
                packets += frames.len() as u64;
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / packets as f64);
    }
    best
}

fn main() {
    let secs: f64 = env_or("PATCHBAY_BENCH_SECS", 0.4);
    let rounds: u32 = env_or("PATCHBAY_BENCH_ROUNDS", 3);
    println!(
        "{:>12} {:>10} {:>14}",
        "connections", "ns/packet", "x 1 connection"
    );
    let only: usize = env_or("PATCHBAY_BENCH_CONNECTIONS", 0);
    let mut one = None;
    for n in SIZES.into_iter().filter(|&n| only == 0 || n == only) {
        let ct = Conntrack::new(Limits {
            max_connections: n.max(1) * 2,
            ..Limits::default()
        });
        // Packets: connection 0, 1, 2, ... in turn, each committed once first.
        let frames: Vec<Vec<u8>> = (0..n.max(1)).map(frame).collect();
        for f in &frames {
            ct.track(f, ZONE, Some(&CommitOptions::default()), 0);
        }
        assert_eq!(ct.len(), frames.len(), "every connection stored");
        let ns = measure(&frames, &ct, secs, rounds);
        let base = *one.get_or_insert(ns);
        println!("{n:>12} {ns:>10.1} {:>14.2}", base / ns);
    }
}
