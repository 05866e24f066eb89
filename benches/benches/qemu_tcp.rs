//! TCP between two real Debian guests under QEMU/TCG, with and without offloads: the guests'
//! own figure of what checksum and segmentation offloads save them. TCG emulation makes the
//! absolute numbers small (the guests' CPUs are emulated); the ratio shows the work a guest
//! no longer does per byte. Two pairs of guests on one switch: `on-*` negotiate every offload
//! QEMU offers, `off-*` none (`csum=off,guest_csum=off,...`). Each pair moves
//! `PATCHBAY_BENCH_MIB` (default 64) MiB with busybox nc, `PATCHBAY_BENCH_ROUNDS` (default 3)
//! times, alternating the pairs; the time is from the sender's start to the last byte at the
//! receiver (`sha256sum` checked).
//!
//! Run with `cargo bench -p patchbay-benches --bench qemu_tcp` (needs QEMU and the guest image,
//! which `scripts/test.sh` sets up).

use std::time::{Duration, Instant};

use patchbay_tests::guest::{GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{access, start_switch, TestDir};

const BOOT: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(600);
const NO_OFFLOADS: &str = "csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,\
                           host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,\
                           guest_ecn=off,guest_ufo=off";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds to move `mib` MiB from `from` to `to_ip` (listening on `to`).
fn transfer(from: &mut QemuGuest, to: &mut QemuGuest, to_ip: &str, port: u16, mib: u64) -> f64 {
    let (status, out) = to
        .run(
            &format!("rm -f /tmp/got; (sleep 900 | nc -l -p {port} > /tmp/got &); sleep 0.3"),
            T,
        )
        .expect("listener");
    assert_eq!(status, 0, "{out:?}");
    let start = Instant::now();
    let (status, out) = from
        .run(&format!("nc {to_ip} {port} < /tmp/data"), T)
        .expect("send");
    assert_eq!(status, 0, "{out:?}");
    let size = mib << 20;
    let (_, out) = to
        .run(
            &format!(
                "while [ \"$(stat -c %s /tmp/got)\" -lt {size} ]; do sleep 0.05; done; \
                 sha256sum /tmp/got"
            ),
            T,
        )
        .expect("receive");
    let secs = start.elapsed().as_secs_f64();
    let (_, sent) = from.run("sha256sum /tmp/data", T).expect("sum");
    let sum = |lines: &[String]| {
        lines
            .iter()
            .find_map(|l| l.split_whitespace().next().filter(|w| w.len() == 64))
            .map(str::to_string)
    };
    assert_eq!(
        sum(&out),
        sum(&sent),
        "{} -> {to_ip}: the file arrived whole",
        from.name
    );
    secs
}

fn main() {
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("qemu_tcp: cannot run: {e}");
            return;
        }
    };
    let mib = env("PATCHBAY_BENCH_MIB", 64);
    let rounds = env("PATCHBAY_BENCH_ROUNDS", 3);
    let dir = TestDir::new("bench-qemu-tcp");
    let names = ["on-a", "on-b", "off-a", "off-b"];
    let d = start_switch(
        &dir.path,
        names.iter().map(|n| access(&dir.path, n, 10)).collect(),
        |_| {},
    );
    let mut guests: Vec<QemuGuest> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut nic = GuestNic::new(
                dir.join(&format!("{n}.sock")),
                &format!("52:54:00:00:0c:{:02x}", i + 1),
            );
            if n.starts_with("off") {
                nic.device_opts = NO_OFFLOADS.into();
            }
            QemuGuest::boot(&image, n, &nic, &format!("pb.ip=10.0.0.{}/24", i + 1)).expect("boot")
        })
        .collect();
    for g in &mut guests {
        g.wait_ready(BOOT).expect("ready");
    }
    for i in [0, 2] {
        let (status, out) = guests[i]
            .run(
                &format!("dd if=/dev/urandom of=/tmp/data bs=1M count={mib} 2>/dev/null"),
                T,
            )
            .expect("data");
        assert_eq!(status, 0, "{out:?}");
    }
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..rounds {
        let port = 6000 + round as u16 * 2;
        let (a, rest) = guests.split_at_mut(1);
        on.push(transfer(&mut a[0], &mut rest[0], "10.0.0.2", port, mib));
        let (c, rest) = guests.split_at_mut(3);
        off.push(transfer(&mut c[2], &mut rest[0], "10.0.0.4", port + 1, mib));
        eprintln!(
            "round {}: offloads {:.1} s, none {:.1} s",
            round + 1,
            on[on.len() - 1],
            off[off.len() - 1]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mbit = |secs: f64| (mib << 20) as f64 * 8.0 / secs / 1e6;
    let (t_on, t_off) = (median(&mut on), median(&mut off));
    println!("QEMU/TCG guests, TCP over busybox nc, {mib} MiB, median of {rounds} rounds:");
    println!(
        "  offloads on  (CSUM, TSO4/6 both ends): {:8.1} Mbit/s",
        mbit(t_on)
    );
    println!(
        "  offloads off (none):                   {:8.1} Mbit/s",
        mbit(t_off)
    );
    println!("  ratio on/off: {:.2}", t_off / t_on);
    for n in ["on-a", "off-a"] {
        let c = d.switch.port_by_name(n).expect("port").counters.snapshot();
        println!(
            "  {n}: {} frames of {:.0} bytes on average into the switch",
            c.rx_packets,
            c.rx_bytes as f64 / c.rx_packets.max(1) as f64
        );
    }
    for g in guests {
        g.poweroff();
    }
    d.shutdown();
}
