//! The VXLAN receive path on arbitrary input: the first four bytes are the outer source
//! address, the rest is the UDP payload. Checks that nothing panics and that an accepted inner
//! frame lies within the payload, then runs it through the VTEP tables (and the ARP/ND proxy)
//! as the switch does.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use patchbay_overlay::vtep::{UnknownVtepPolicy, VniConfig, Vtep, VtepConfig};
use patchbay_overlay::{decap, proxy, source_port, TunnelDrop};

fn vtep() -> &'static Vtep {
    static VTEP: OnceLock<Vtep> = OnceLock::new();
    VTEP.get_or_init(|| {
        let cfg = VtepConfig {
            mac_table_size: 256,
            mac_aging_secs: 2,
            // Learning from any sender reaches more of the tables than the default `drop`.
            unknown_vtep: UnknownVtepPolicy::Learn,
            neigh_table_size: 64,
            vnis: (0..4)
                .map(|i| VniConfig {
                    vni: i,
                    vlan: 10 + i as u16,
                    remotes: vec![Ipv4Addr::new(10, 0, 0, 2 + i as u8).into()],
                    // The ARP/ND proxy of half the VNIs reads every inner frame.
                    proxy: i < 2,
                })
                .collect(),
            ..VtepConfig::new(Ipv4Addr::new(10, 0, 0, 1).into())
        };
        Vtep::new(cfg).expect("valid fuzz configuration")
    })
}

/// A fake clock: one second per thousand inputs, so entries age and get swept.
static RUNS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let Some((addr, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    // IPv4 senders, and now and then an IPv6 one (the wrong family for this VTEP: refused).
    let remote: IpAddr = if addr[0] == 0xff {
        Ipv6Addr::from(u128::from(u32::from_be_bytes(*addr)) << 64 | 1).into()
    } else {
        Ipv4Addr::from(*addr).into()
    };
    let vtep = vtep();
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let now = run / 1000;
    let _ = source_port(payload);
    match decap(payload) {
        Ok((vni, inner)) => {
            let (start, end) = (
                payload.as_ptr() as usize,
                payload.as_ptr() as usize + payload.len(),
            );
            let at = inner.as_ptr() as usize;
            assert!(
                at >= start && at + inner.len() <= end,
                "inner frame outside the payload"
            );
            assert!(inner.len() >= 14);
            let _ = source_port(inner);
            match vtep.admit(vni, remote) {
                Ok(_vlan) => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&inner[6..12]);
                    vtep.learn(vni, mac, remote, now);
                    vtep.count_rx(vni, remote, inner.len() as u64);
                    let _ = vtep.lookup(vni, mac, now);
                    let _ = proxy::is_candidate(inner);
                    if let Ok(m) = proxy::parse(inner) {
                        if let Some(b) = m.binding() {
                            vtep.learn_neighbor(vni, b, now);
                        }
                        if let Some(q) = m.question() {
                            if let Some(t) = vtep.proxy_target(vni, q.target, now) {
                                let reply = proxy::answer(&q, t.known);
                                assert!(proxy::parse(reply.as_bytes()).is_ok());
                            }
                        }
                    }
                }
                Err(reason) => vtep.count_drop(Some(vni), reason),
            }
        }
        Err(e) => vtep.count_drop(None, TunnelDrop::from(e)),
    }
    if run.is_multiple_of(10_000) {
        vtep.expire(now);
        let _ = vtep.snapshot();
    }
});
