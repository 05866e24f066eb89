//! A vhost-user frontend the switch's authors did not write: DPDK testpmd's virtio-user ports
//! connected to two switch ports, forwarding to each other in a closed loop (mac mode: each
//! port sends from its own address to the other's). Frames must flow both ways at 64 and
//! 1500 bytes, the switch must learn both addresses on the right ports, and nothing testpmd
//! does may be counted as malformed.
//!
//! Needs `dpdk-testpmd` (.ci/install-deps.sh installs it); skipped with a note without it, or
//! a failure under PATCHBAY_REQUIRE_KVM=1 (CI).

use patchbay_tests::peers::Testpmd;
use patchbay_tests::switch::{access, counters, eventually, start_switch, TestDir};

/// testpmd's per-port "RX-packets: N" figures from its exit statistics, in port order.
fn rx_packets(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("Forward statistics for port") || l.contains("RX-packets:"))
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].contains("Forward statistics for port"))
        .filter_map(|w| {
            let after = w[1].split("RX-packets:").nth(1)?;
            after.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[test]
fn testpmd_virtio_user_ports_switch_through_patchbay() {
    let dir = TestDir::new("testpmd-frontend");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let sockets = [dir.join("a.sock"), dir.join("b.sock")];
    for size in [64u64, 1500] {
        let before = (counters(&d, "a"), counters(&d, "b"));
        let txpkts = format!("--txpkts={size}");
        let Some(pmd) = Testpmd::start_frontend(
            &sockets,
            &[
                "--forward-mode=mac",
                "--tx-first",
                "--burst=32",
                "--eth-peer=0,02:00:00:00:00:01",
                "--eth-peer=1,02:00:00:00:00:00",
                &txpkts,
            ],
        ) else {
            return;
        };
        eventually(&format!("{size}-byte frames flow both ways"), || {
            let (a, b) = (counters(&d, "a"), counters(&d, "b"));
            a.rx_packets - before.0.rx_packets > 20_000
                && b.rx_packets - before.1.rx_packets > 20_000
                && a.tx_packets - before.0.tx_packets > 20_000
                && b.tx_packets - before.1.tx_packets > 20_000
        });
        // Learned on the right ports (forgotten again when testpmd disconnects).
        let table = d.switch.mac_table();
        let macs = table.snapshot(table.now());
        let port_of = |mac: &str| macs.iter().find(|e| e.mac == mac).map(|e| e.port);
        let id = |name: &str| d.switch.port_by_name(name).map(|p| p.id);
        assert_eq!(port_of("02:00:00:00:00:00"), id("a"));
        assert_eq!(port_of("02:00:00:00:00:01"), id("b"));
        let log = pmd.stop();
        let received = rx_packets(&log);
        assert_eq!(received.len(), 2, "testpmd's statistics: {log}");
        assert!(
            received.iter().all(|n| *n > 10_000),
            "testpmd received {received:?} of {size} bytes"
        );
        for port in ["a", "b"] {
            let c = counters(&d, port);
            assert_eq!(c.drop_count("bad-descriptor"), 0, "{port}: {c:?}");
            assert_eq!(
                c.drop_count("runt") + c.drop_count("too-big"),
                0,
                "{port}: {c:?}"
            );
            assert_eq!(c.memory_faults, 0);
            assert_eq!(
                c.rx_bytes.wrapping_sub(c.rx_packets.wrapping_mul(size)),
                before_bytes(&before, port, size),
                "{port}: every frame switched has {size} bytes"
            );
        }
    }
    d.shutdown();
}

/// What `rx_bytes - rx_packets * size` was before this size's run (every frame of the run
/// has exactly `size` bytes, so the difference must not change).
fn before_bytes(
    before: &(
        patchbay_switch::port::CounterSnapshot,
        patchbay_switch::port::CounterSnapshot,
    ),
    port: &str,
    size: u64,
) -> u64 {
    let c = if port == "a" { &before.0 } else { &before.1 };
    c.rx_bytes.wrapping_sub(c.rx_packets.wrapping_mul(size))
}

/// testpmd's virtio-user ports with two queue pairs each (virtio-net MQ), forwarding on both:
/// the switch serves both transmit queues of each port and spreads frames over the
/// receiver's two queues; traffic flows both ways and nothing is counted as malformed.
/// With three dataplane threads, a guest's queue pairs spread over them (pair `k` of port
/// `p` to thread `(p + k) mod 3`): one of them serves nothing but a second pair, and works.
#[test]
fn testpmd_multiqueue_ports_switch_through_patchbay() {
    let dir = TestDir::new("testpmd-mq");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |c| c.settings.event_threads = 3,
    );
    let sockets = [dir.join("a.sock"), dir.join("b.sock")];
    let Some(pmd) = Testpmd::start_frontend_multiqueue(
        &sockets,
        2,
        &[
            "--forward-mode=mac",
            "--tx-first",
            "--burst=32",
            "--rxq=2",
            "--txq=2",
            "--eth-peer=0,02:00:00:00:00:01",
            "--eth-peer=1,02:00:00:00:00:00",
        ],
    ) else {
        return;
    };
    eventually("frames flow both ways over two queue pairs", || {
        let (a, b) = (counters(&d, "a"), counters(&d, "b"));
        a.rx_packets > 20_000 && b.rx_packets > 20_000
    });
    for port in ["a", "b"] {
        let info = d.switch.port_by_name(port).unwrap().info();
        assert!(
            info.feature_names.iter().any(|f| f == "MQ"),
            "{port}: {info:?}"
        );
        assert_eq!(
            info.queue_pairs,
            (2, 8),
            "{port}: two of eight pairs enabled"
        );
    }
    let log = pmd.stop();
    let received = rx_packets(&log);
    assert_eq!(received.len(), 2, "testpmd's statistics: {log}");
    assert!(
        received.iter().all(|n| *n > 10_000),
        "testpmd received {received:?}"
    );
    for port in ["a", "b"] {
        let c = counters(&d, port);
        assert_eq!(c.drop_count("bad-descriptor"), 0, "{port}: {c:?}");
    }
    let busy = || -> Vec<(String, u64)> {
        d.switch
            .worker_stats()
            .iter()
            .map(|w| (w.thread.clone(), w.busy_ns()))
            .collect()
    };
    assert_eq!(busy().len(), 3, "{:?}", busy());
    // A thread publishes its busy time when a busy stretch ends (traffic has stopped).
    eventually("every dataplane thread served a queue", || {
        busy().iter().all(|(_, ns)| *ns > 0)
    });
}
