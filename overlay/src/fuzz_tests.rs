//! Deterministic in-crate fuzzing of the receive path, so that `cargo test` covers what the
//! cargo-fuzz target does (which needs a nightly toolchain) on every run.

use std::net::Ipv4Addr;

use crate::vtep::{UnknownVtepPolicy, VniConfig, Vtep, VtepConfig};
use crate::{decap, DecapError, TunnelDrop};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn decap_never_panics() {
    let vtep = Vtep::new(VtepConfig {
        mac_table_size: 512,
        mac_aging_secs: 5,
        // Learning from any sender reaches more of the tables than the default `drop`.
        unknown_vtep: UnknownVtepPolicy::Learn,
        neigh_table_size: 64,
        vnis: (0..8)
            .map(|i| VniConfig {
                vni: i,
                vlan: 1 + i as u16,
                remotes: vec![Ipv4Addr::new(10, 0, 0, 2 + i as u8).into()],
                proxy: i < 4,
            })
            .collect(),
        ..VtepConfig::new(Ipv4Addr::new(10, 0, 0, 1).into())
    })
    .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 256];
    let (mut ok, mut errors) = (0u64, [0u64; 4]);
    let iterations = if cfg!(debug_assertions) {
        1_000_000
    } else {
        4_000_000
    };
    for i in 0..iterations {
        let len = rng.below(buf.len() + 1);
        let packet = &mut buf[..len];
        if rng.next() & 1 == 0 {
            // Random bytes.
            for b in packet.iter_mut() {
                *b = rng.next() as u8;
            }
        } else {
            // A valid packet with a few mutations, to get past the header checks.
            for b in packet.iter_mut() {
                *b = rng.next() as u8;
            }
            if len >= 8 {
                packet[..8].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, rng.below(10) as u8, 0]);
            }
            for _ in 0..rng.below(3) {
                if len > 0 {
                    let at = rng.below(len.min(16));
                    packet[at] ^= 1 << rng.below(8);
                }
            }
        }
        let packet = &buf[..len];
        let remote: std::net::IpAddr = Ipv4Addr::from(match rng.below(4) {
            0 => 0x0a00_0002 + rng.below(10) as u32,
            1 => rng.next() as u32,
            2 => 0,
            _ => u32::MAX,
        })
        .into();
        match decap(packet) {
            Ok((vni, inner)) => {
                ok += 1;
                let (start, end) = (packet.as_ptr() as usize, packet.as_ptr() as usize + len);
                let inner_start = inner.as_ptr() as usize;
                assert!(inner_start >= start && inner_start + inner.len() <= end);
                assert!(inner.len() >= 14 && vni <= crate::MAX_VNI);
                if vtep.admit(vni, remote).is_ok() {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&inner[6..12]);
                    let now = (i / 10_000) as u64;
                    vtep.learn(vni, mac, remote, now);
                    vtep.count_rx(vni, remote, inner.len() as u64);
                    let _ = vtep.lookup(vni, mac, now);
                    // The ARP/ND proxy reads every inner frame as the tunnel port does.
                    let _ = crate::proxy::is_candidate(inner);
                    if let Ok(m) = crate::proxy::parse(inner) {
                        if let Some(b) = m.binding() {
                            vtep.learn_neighbor(vni, b, now);
                        }
                        if let Some(q) = m.question() {
                            if let Some(t) = vtep.proxy_target(vni, q.target, now) {
                                let _ = crate::proxy::answer(&q, t.known);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let idx = match e {
                    DecapError::Truncated { len: l } => {
                        assert_eq!(l, len);
                        0
                    }
                    DecapError::NoVniFlag => 1,
                    DecapError::ReservedBits => 2,
                    DecapError::InnerRunt { .. } => 3,
                };
                errors[idx] += 1;
                vtep.count_drop(None, TunnelDrop::from(e));
            }
        }
        if i % 100_000 == 0 {
            vtep.expire((i / 10_000) as u64);
        }
    }
    eprintln!("decap_never_panics: {iterations} packets, {ok} ok, errors {errors:?}");
    // Every path was exercised.
    assert!(ok > 10_000, "ok {ok}");
    assert!(errors.iter().all(|&n| n > 1_000), "{errors:?}");
    let snap = vtep.snapshot();
    assert!(snap.macs.len() <= 512);
}
