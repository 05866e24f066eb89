//! virtio-net multiqueue with real Debian guests under QEMU (`queues=4`, `mq=on`): each guest
//! enables 4 queue pairs (`ethtool -L eth0 combined 4`) and lets its kernel hash flows over
//! its transmit queues (XPS off). Eight TCP transfers in parallel arrive whole; the switch
//! served the guests' several transmit queues and spread the frames over the receiver's
//! queues. Each flow stays in order: transfers run one at a time (static ARP entries, IPv6
//! off: the flow's frames are the only ones on the link) each land on exactly one receive
//! queue of the receiver, their ACKs on exactly one of the sender. `flowctl show ports` (and
//! the switch itself) shows 4 of 8 pairs enabled and the offloads each guest negotiated.

use std::time::Duration;

use patchbay_tests::guest::{skip_or_fail, tcp_transfer, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{
    access, flowctl_at, flowctl_port_json, offload_list, ports_row, start_switch, TestDir,
};

const BOOT: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(180);
/// Eight flows: their source ports are the guest's choice, so which queues they hash to is
/// chance; with eight, all on one queue of four is 1 in 16 384.
const PORTS: [u16; 8] = [5101, 5102, 5103, 5104, 5105, 5106, 5107, 5108];
const SIZE_MIB: u64 = 2;
/// The transfers run one at a time, to see which queues each flow used.
const ONE_BY_ONE: [u16; 4] = [5111, 5112, 5113, 5114];
const ONE_SIZE: u64 = 2 << 20;

/// Per-queue packet counts from `ethtool -S eth0`, e.g. ("rx", 4) -> rx_queue_0..3_packets.
fn queue_packets(g: &mut QemuGuest, dir: &str, queues: usize) -> Vec<u64> {
    let (status, out) = g.run("ethtool -S eth0", Duration::from_secs(20)).unwrap();
    assert_eq!(status, 0, "{}: {out:?}", g.name);
    (0..queues)
        .map(|q| {
            let key = format!("{dir}_queue_{q}_packets:");
            out.iter()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(&key)
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or_else(|| panic!("{}: no {key} in {out:?}", g.name))
        })
        .collect()
}

/// `after - before`, queue by queue.
fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Waits (up to 30 s) until no TCP connection of `port` in `g` can still send a frame: every
/// socket with that local or remote port is gone or in TIME_WAIT (state 06).
fn wait_closed(g: &mut QemuGuest, port: u16) {
    let busy = format!(
        "awk 'NR>1 && ($2 ~ /:{port:04X}$/ || $3 ~ /:{port:04X}$/) && $4 != \"06\" {{n++}} \
         END {{exit (n == 0)}}' /proc/net/tcp"
    );
    let (status, out) = g
        .run(
            &format!(
                "i=0; while {busy} && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                 if [ $i -ge 300 ]; then cat /proc/net/tcp; false; fi"
            ),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        status, 0,
        "{}: connections of port {port} still open after 30 s: {out:?}",
        g.name
    );
}

/// The receive queue that carried every frame counted in `per_queue` (the others none).
fn one_queue(per_queue: &[u64], what: &str) -> usize {
    let used: Vec<usize> = (0..per_queue.len()).filter(|&q| per_queue[q] > 0).collect();
    assert_eq!(
        used.len(),
        1,
        "{what} arrived on exactly one receive queue: frames per queue {per_queue:?}"
    );
    used[0]
}

#[test]
fn four_queue_pairs_carry_parallel_flows_in_order() {
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => {
            return skip_or_fail(
                "four_queue_pairs_carry_parallel_flows_in_order",
                &e.to_string(),
            )
        }
    };
    let dir = TestDir::new("qemu-mq");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "m1", 10), access(&dir.path, "m2", 10)],
        |_| {},
    );
    let nic = |name: &str, mac: &str| GuestNic {
        queues: 4,
        ..GuestNic::new(dir.join(&format!("{name}.sock")), mac)
    };
    let mut g1 = QemuGuest::boot(
        &image,
        "g1",
        &nic("m1", "52:54:00:00:0b:01"),
        "pb.ip=10.0.0.1/24",
    )
    .unwrap();
    let mut g2 = QemuGuest::boot(
        &image,
        "g2",
        &nic("m2", "52:54:00:00:0b:02"),
        "pb.ip=10.0.0.2/24",
    )
    .unwrap();
    for g in [&mut g1, &mut g2] {
        g.wait_ready(BOOT).unwrap();
        let (status, out) = g
            .run(
                "ethtool -L eth0 combined 4 && \
                 for f in /sys/class/net/eth0/queues/tx-*/xps_cpus; do echo 0 > $f; done && \
                 ethtool -l eth0",
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(status, 0, "{}: {out:?}", g.name);
    }
    // Static neighbours: no ARP frame joins a flow's frames on the receive queues.
    for (g, ip, mac) in [
        (&mut g1, "10.0.0.2", "52:54:00:00:0b:02"),
        (&mut g2, "10.0.0.1", "52:54:00:00:0b:01"),
    ] {
        let out = g.run_ok(&format!("arp -s {ip} {mac} && ip neigh show dev eth0"));
        assert!(
            out.iter()
                .any(|l| l.starts_with(&format!("{ip} ")) && l.contains("PERMANENT")),
            "{}: static neighbour {ip}: {out:?}",
            g.name
        );
    }
    for p in ["m1", "m2"] {
        let info = d.switch.port_by_name(p).unwrap().info();
        assert!(
            info.feature_names.iter().any(|f| f == "MQ"),
            "{p}: {info:?}"
        );
        assert_eq!(info.queue_pairs, (4, 8), "{p}: 4 of 8 queue pairs enabled");
    }

    // What flowctl shows of the same: 4 of 8 pairs, checksums and TSO both ways.
    let control = dir.join("control.sock");
    let table = flowctl_at(&control, &["show", "ports"]);
    for p in ["m1", "m2"] {
        let (queues, offloads) = ports_row(&table, p);
        assert_eq!(queues, "4/8", "{p}: QUEUES in {table}");
        for side in ["tx", "rx"] {
            let listed = offload_list(&offloads, side);
            for o in ["csum", "tso4", "tso6"] {
                assert!(
                    listed.contains(&o),
                    "{p}: OFFLOADS '{offloads}' has {side}:{o}"
                );
            }
        }
    }
    for p in ["m1", "m2"] {
        let entry = flowctl_port_json(&control, p);
        assert_eq!(
            entry["queue_pairs"],
            serde_json::json!([4, 8]),
            "{p}: {entry}"
        );
        assert!(
            entry["feature_names"]
                .as_array()
                .is_some_and(|f| f.iter().any(|n| n == "MQ")),
            "{p}: {entry}"
        );
    }

    let rx_before = queue_packets(&mut g2, "rx", 4);
    let tx_before = queue_packets(&mut g1, "tx", 4);
    let listen: Vec<String> = PORTS
        .iter()
        .map(|p| format!("(sleep 600 | nc -l -p {p} > /tmp/got.{p} &)"))
        .collect();
    let (status, out) = g2
        .run(&format!("{}; sleep 0.3", listen.join("; ")), T)
        .unwrap();
    assert_eq!(status, 0, "{out:?}");
    let send: Vec<String> = PORTS
        .iter()
        .map(|p| format!("nc 10.0.0.2 {p} < /tmp/data &"))
        .collect();
    let (status, out) = g1
        .run(
            &format!(
                "dd if=/dev/urandom of=/tmp/data bs=1M count={SIZE_MIB} 2>/dev/null && \
                 sha256sum /tmp/data"
            ),
            T,
        )
        .unwrap();
    assert_eq!(status, 0, "{out:?}");
    let sent = out
        .iter()
        .find(|l| l.contains("/tmp/data"))
        .and_then(|l| l.split_whitespace().next())
        .expect("sum")
        .to_string();
    let (status, out) = g1.run(&format!("{} wait", send.join(" ")), T).unwrap();
    assert_eq!(status, 0, "{out:?}");
    let size = SIZE_MIB << 20;
    let (_, out) = g2
        .run(
            &format!(
                "for p in {}; do i=0; while [ \"$(stat -c %s /tmp/got.$p)\" -lt {size} ] && \
                 [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; sha256sum /tmp/got.$p; done",
                PORTS.map(|p| p.to_string()).join(" ")
            ),
            T,
        )
        .unwrap();
    for p in PORTS {
        let got = out
            .iter()
            .find(|l| l.contains(&format!("/tmp/got.{p}")))
            .and_then(|l| l.split_whitespace().next());
        assert_eq!(
            got,
            Some(sent.as_str()),
            "flow to port {p} arrived whole: {out:?}"
        );
    }

    // The receiver's frames came in on several of its queues, the sender's left on several.
    let rx = delta(&queue_packets(&mut g2, "rx", 4), &rx_before);
    let tx = delta(&queue_packets(&mut g1, "tx", 4), &tx_before);
    assert!(
        rx.iter().filter(|&&n| n > 0).count() >= 2,
        "g2 received on: {rx:?}"
    );
    assert!(
        tx.iter().filter(|&&n| n > 0).count() >= 2,
        "g1 sent on: {tx:?}"
    );
    eprintln!("parallel flows: g2 rx queues {rx:?}, g1 tx queues {tx:?}");

    // One flow, one queue, so in order (a queue is a FIFO the guest reads in order): each
    // transfer alone puts all its data on one of g2's receive queues and all its ACKs on one
    // of g1's. Frames dropped for want of buffers would not spread a flow, and cannot hide it.
    for p in PORTS {
        wait_closed(&mut g1, p);
        wait_closed(&mut g2, p);
    }
    for p in ONE_BY_ONE {
        let (rx2, rx1) = (
            queue_packets(&mut g2, "rx", 4),
            queue_packets(&mut g1, "rx", 4),
        );
        tcp_transfer(&mut g1, &mut g2, "10.0.0.2", p, ONE_SIZE);
        wait_closed(&mut g1, p);
        wait_closed(&mut g2, p);
        let data = delta(&queue_packets(&mut g2, "rx", 4), &rx2);
        let acks = delta(&queue_packets(&mut g1, "rx", 4), &rx1);
        let q = one_queue(&data, &format!("g2: the flow to port {p}"));
        let a = one_queue(&acks, &format!("g1: the ACKs of the flow to port {p}"));
        eprintln!("flow to port {p}: data on g2 rx queue {q} {data:?}, ACKs on g1 rx queue {a}");
    }

    for g in [g1, g2] {
        g.poweroff();
    }
    d.shutdown();
}
