//! virtio-net multiqueue with real Debian guests under QEMU (`queues=4`, `mq=on`): each guest
//! enables 4 queue pairs (`ethtool -L eth0 combined 4`) and lets its kernel hash flows over
//! its transmit queues (XPS off). Four TCP transfers in parallel arrive whole; the switch
//! served the guests' several transmit queues and spread the frames over the receiver's
//! queues by flow, so each flow stayed in order (no out-of-order segments at the receiver
//! unless frames were dropped); `flowctl`'s view shows 4 of 8 pairs enabled.

use std::time::Duration;

use patchbay_tests::guest::{skip_or_fail, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{access, start_switch, TestDir};

const BOOT: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(180);
const PORTS: [u16; 4] = [5101, 5102, 5103, 5104];
const SIZE_MIB: u64 = 4;

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

/// TcpExt's OFOQueue: segments the receiver had to queue because they came out of order.
fn out_of_order(g: &mut QemuGuest) -> u64 {
    let (_, out) = g
        .run("cat /proc/net/netstat", Duration::from_secs(20))
        .unwrap();
    let rows: Vec<&String> = out.iter().filter(|l| l.starts_with("TcpExt:")).collect();
    assert_eq!(rows.len(), 2, "{out:?}");
    let names = rows[0].split_whitespace();
    let values = rows[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "TCPOFOQueue")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TCPOFOQueue")
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
        eprintln!(
            "DEBUG before {:?}",
            d.switch.port_by_name("m1").unwrap().info()
        );
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
    for p in ["m1", "m2"] {
        let info = d.switch.port_by_name(p).unwrap().info();
        assert!(
            info.feature_names.iter().any(|f| f == "MQ"),
            "{p}: {info:?}"
        );
        assert_eq!(info.queue_pairs, (4, 8), "{p}: 4 of 8 queue pairs enabled");
    }

    let ofo_before = out_of_order(&mut g2);
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
    let rx: Vec<u64> = queue_packets(&mut g2, "rx", 4)
        .iter()
        .zip(&rx_before)
        .map(|(a, b)| a - b)
        .collect();
    let tx: Vec<u64> = queue_packets(&mut g1, "tx", 4)
        .iter()
        .zip(&tx_before)
        .map(|(a, b)| a - b)
        .collect();
    assert!(
        rx.iter().filter(|&&n| n > 0).count() >= 2,
        "g2 received on: {rx:?}"
    );
    assert!(
        tx.iter().filter(|&&n| n > 0).count() >= 2,
        "g1 sent on: {tx:?}"
    );
    // One flow, one queue: nothing reordered (a drop would make TCP queue segments too).
    let drops = d
        .switch
        .port_by_name("m2")
        .unwrap()
        .counters
        .snapshot()
        .total_drops();
    let ofo = out_of_order(&mut g2) - ofo_before;
    assert!(
        ofo == 0 || drops > 0,
        "{ofo} segments arrived out of order at g2 with no frame dropped"
    );
    eprintln!("rx queues {rx:?}, tx queues {tx:?}, out of order {ofo}, drops {drops}");

    for g in [g1, g2] {
        g.poweroff();
    }
    d.shutdown();
}
