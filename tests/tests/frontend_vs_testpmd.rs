//! Proves the userspace vhost-user frontend against DPDK testpmd, a reference vhost-user
//! backend: testpmd listens on two vhost-user sockets and io-forwards port 0 <-> port 1, so
//! every frame one `TestPort` sends must arrive, intact and in order, at the other.
//!
//! Needs `dpdk-testpmd` (.ci/install-deps.sh installs it); without it each test is skipped
//! with a note, or fails under PATCHBAY_REQUIRE_KVM=1 (CI).
//! Each test starts (and stops) its own testpmd; a lock keeps them from running concurrently
//! because testpmd busy-polls a core.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use patchbay_tests::frontend::*;
use patchbay_tests::peers::Testpmd;

static SERIAL: Mutex<()> = Mutex::new(());

const PROBE: &[u8; 4] = b"PRB0";
const DATA: &[u8; 4] = b"PBT1";

/// A test frame: Ethernet header, magic, direction, sequence number, then a pattern.
fn frame(dir: u8, seq: u32, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1 - dir]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, dir]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(DATA);
    f.push(dir);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut i = f.len();
    while f.len() < size {
        f.push((seq.wrapping_mul(31) as usize + i * 7 + usize::from(dir)) as u8);
        i += 1;
    }
    f
}

fn probe(dir: u8) -> Vec<u8> {
    let mut f = frame(dir, 0, 64);
    f[14..18].copy_from_slice(PROBE);
    f
}

fn is_probe(f: &[u8]) -> bool {
    f.len() >= 18 && &f[14..18] == PROBE
}

/// Sends probes both ways until each side has seen one (testpmd's ports come up only once
/// both vhost devices are ready), then drains leftovers.
fn wait_ready(a: &mut TestPort, b: &mut TestPort) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut a_ok, mut b_ok) = (false, false);
    while !(a_ok && b_ok) {
        assert!(Instant::now() < deadline, "testpmd never forwarded a probe");
        a.send(&probe(0)).expect("probe a");
        b.send(&probe(1)).expect("probe b");
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until && !(a_ok && b_ok) {
            if let Some(f) = b.recv(Duration::from_millis(20)).expect("recv b") {
                b_ok |= is_probe(&f);
            }
            if let Some(f) = a.recv(Duration::from_millis(20)).expect("recv a") {
                a_ok |= is_probe(&f);
            }
        }
    }
    for p in [a, b] {
        while let Some(f) = p.expect_silence(Duration::from_millis(300)).expect("drain") {
            assert!(is_probe(&f), "unexpected frame while draining");
        }
    }
}

/// Next non-probe frame on `p`.
fn recv_data(p: &mut TestPort, what: &str) -> Vec<u8> {
    loop {
        match p.recv(Duration::from_secs(5)) {
            Ok(Some(f)) if is_probe(&f) => continue,
            Ok(Some(f)) => return f,
            Ok(None) => panic!("{what}: timed out"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Sends `count` frames of `size` bytes each way, `window` at a time, and checks every frame
/// arrives intact and in order.
fn exchange(a: &mut TestPort, b: &mut TestPort, size: usize, count: u32, window: u32) {
    let t0 = Instant::now();
    let mut seq = 0;
    while seq < count {
        let n = window.min(count - seq);
        for i in seq..seq + n {
            a.send(&frame(0, i, size)).expect("send a");
            b.send(&frame(1, i, size)).expect("send b");
        }
        for i in seq..seq + n {
            let got = recv_data(b, "b");
            assert_eq!(got, frame(0, i, size), "a->b frame {i} of {size} B");
            let got = recv_data(a, "a");
            assert_eq!(got, frame(1, i, size), "b->a frame {i} of {size} B");
        }
        seq += n;
    }
    assert!(a.wait_tx_completion(Duration::from_secs(5)).unwrap());
    assert!(b.wait_tx_completion(Duration::from_secs(5)).unwrap());
    println!(
        "  {count} x {size} B each way intact and in order in {:?}",
        t0.elapsed()
    );
}

/// One frame at a time a -> b: the receiver has to sleep on its call eventfd, so this proves
/// the backend honours used_event / NO_INTERRUPT and signals.
fn ping_pong(a: &mut TestPort, b: &mut TestPort, n: u32) {
    let calls0 = b.stats().calls;
    let t0 = Instant::now();
    for i in 0..n {
        a.send(&frame(0, i, 64)).expect("send");
        assert_eq!(recv_data(b, "ping"), frame(0, i, 64));
    }
    let calls = b.stats().calls - calls0;
    println!(
        "  ping-pong: {n} frames one at a time, {:?} per frame, receiver woken by {calls} calls",
        t0.elapsed() / n
    );
}

/// The receiver blocks in `recv` on another thread before the frame is sent, so it can only
/// return through a call from the backend.
fn wake_up(a: &mut TestPort, b: &mut TestPort) {
    // On 2 shared cores the receiver thread may start late and find the frame already
    // there; only rounds where it really blocked count, and every one of those must have
    // been ended by a call.
    let mut blocked = 0;
    for i in 0..200 {
        let calls0 = b.stats().calls;
        let (f, waited) = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let t0 = Instant::now();
                let f = b.recv(Duration::from_secs(5));
                (f, t0.elapsed())
            });
            std::thread::sleep(Duration::from_millis(20));
            a.send(&frame(0, i, 64)).expect("send");
            waiter.join().expect("receiver thread")
        });
        assert_eq!(f.expect("recv"), Some(frame(0, i, 64)));
        if waited >= Duration::from_millis(10) {
            assert!(
                b.stats().calls > calls0,
                "blocked receiver returned without a call"
            );
            blocked += 1;
            if blocked == 20 {
                break;
            }
        }
    }
    assert!(blocked >= 10, "the receiver blocked only {blocked} times");
    println!("  wake-up: {blocked} receivers blocked in recv, each woken by the backend's call");
}

fn describe(name: &str, p: &TestPort) {
    let s = p.stats();
    println!(
        "  {name}: features {:#x} protocol {:#x} hdr {} | tx {} used {} kicks {} | rx {} \
         (used {}) kicks {} | calls {}",
        p.features(),
        p.protocol_features(),
        p.header_len(),
        s.tx_frames,
        s.tx_used,
        s.tx_kicks,
        s.rx_frames,
        s.rx_used,
        s.rx_kicks,
        s.calls
    );
}

/// Connects two ports configured by `tweak`, runs the standard exchange, returns the ports.
fn scenario(
    name: &str,
    tweak: impl Fn(&mut FrontendConfig, u8),
    window: u32,
    extra: impl FnOnce(&mut TestPort, &mut TestPort),
) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pmd) = Testpmd::start(false) else {
        return;
    };
    println!("scenario {name}");
    let mut ca = FrontendConfig::new(pmd.sock("a.sock"));
    let mut cb = FrontendConfig::new(pmd.sock("b.sock"));
    tweak(&mut ca, 0);
    tweak(&mut cb, 1);
    let mut a = TestPort::connect(ca).expect("connect a");
    let mut b = TestPort::connect(cb).expect("connect b");
    wait_ready(&mut a, &mut b);
    exchange(&mut a, &mut b, 64, 1000, window);
    exchange(&mut a, &mut b, 1500, 1000, window);
    extra(&mut a, &mut b);
    describe("a", &a);
    describe("b", &b);
    a.disconnect();
    b.disconnect();
    drop(pmd);
}

fn check_regions(p: &TestPort, n: usize) {
    let r = p.guest_regions();
    assert_eq!(r.len(), n);
    for w in r.windows(2) {
        assert!(w[0].0 + w[0].1 < w[1].0, "regions must have gaps: {r:x?}");
    }
}

#[test]
fn testpmd_default_config() {
    scenario(
        "default (1 region, contiguous TX, all features)",
        |_, _| {},
        64,
        |a, b| {
            ping_pong(a, b, 1000);
            wake_up(a, b);
            assert_eq!(a.header_len(), 12);
            match a.get_config(0, 6) {
                Ok(mac) => println!("  GET_CONFIG mac: {mac:02x?}"),
                Err(e) => println!("  GET_CONFIG: {e}"),
            }
        },
    );
}

#[test]
fn testpmd_four_regions_mixed_layouts() {
    scenario(
        "4 regions, one memfd each; a: alternate 1/2 descriptors, b: split",
        |c, side| {
            c.regions = 4;
            c.tx_layout = if side == 0 {
                TxLayout::Alternate
            } else {
                TxLayout::Split
            };
        },
        64,
        |a, b| {
            check_regions(a, 4);
            check_regions(b, 4);
            // A raw three-descriptor chain with header and frame in different regions.
            let f = frame(0, 4242, 300);
            let hl = a.header_len();
            let mut raw = a.raw_tx();
            let h = raw.alloc_in_region(0, hl).unwrap();
            let p1 = raw.alloc_in_region(2, 100).unwrap();
            let p2 = raw.alloc_in_region(3, 200).unwrap();
            raw.write(h, &vec![0; hl]).unwrap();
            raw.write(p1, &f[..100]).unwrap();
            raw.write(p2, &f[100..]).unwrap();
            let q = raw.queue_size();
            let (d0, d1, d2) = (q - 3, q - 2, q - 1);
            raw.set_desc(d0, RawDesc::chained(h, hl as u32, 0, d1))
                .unwrap();
            raw.set_desc(d1, RawDesc::chained(p1, 100, 0, d2)).unwrap();
            raw.set_desc(d2, RawDesc::new(p2, 200, 0)).unwrap();
            let used = raw.submit(d0, Duration::from_secs(5)).unwrap();
            println!("  raw 3-descriptor chain over regions 0/2/3 returned, used len {used:?}");
            assert!(used.is_some());
            assert_eq!(recv_data(b, "raw"), f);

            // Raw RX: let b's ring run dry, then post one hand-made buffer in region 3.
            b.set_rx_consumption(false).unwrap();
            let mut i = 0;
            while b.rx_posted() > 0 {
                a.send(&frame(0, i, 64)).unwrap();
                assert_eq!(recv_data(b, "drain"), frame(0, i, 64));
                i += 1;
            }
            let f = frame(0, 777, 600);
            let mut raw = b.raw_rx();
            let buf = raw.alloc_in_region(3, 2048).unwrap();
            raw.set_desc(5, RawDesc::new(buf, 2048, VRING_DESC_F_WRITE))
                .unwrap();
            raw.push(5).unwrap();
            raw.kick().unwrap();
            a.send(&f).unwrap();
            let mut raw = b.raw_rx();
            let len = raw.wait_used(5, Duration::from_secs(5)).unwrap();
            assert_eq!(len, Some((hl + f.len()) as u32));
            assert_eq!(raw.read(buf + hl as u64, f.len()).unwrap(), f);
            println!("  raw RX buffer in region 3 filled by the backend, used len {len:?}");
            b.set_rx_consumption(true).unwrap();
            exchange(a, b, 64, 100, 50);
        },
    );
}

#[test]
fn testpmd_shared_memfd_indirect_merged() {
    scenario(
        "4 regions in one memfd (mmap_offset != 0), indirect TX, 268-B RX buffers (merged)",
        |c, _| {
            c.regions = 4;
            c.single_memfd = true;
            c.tx_layout = TxLayout::Indirect;
            c.rx_buffer_size = 256 + 12;
        },
        32,
        |a, b| {
            // 1500-B frames over 268-B buffers needed num_buffers = 6.
            assert_eq!(&a.last_rx_header()[10..12], &6u16.to_le_bytes());
            assert!(b.stats().rx_used >= 6 * 1000);
        },
    );
}

#[test]
fn testpmd_without_event_idx_or_protocol_features() {
    scenario(
        "no EVENT_IDX (ring flags), no PROTOCOL_FEATURES (no SET_VRING_ENABLE)",
        |c, _| c.features = VERSION_1 | NET_F_MRG_RXBUF | RING_INDIRECT_DESC,
        64,
        |a, b| {
            assert_eq!(
                a.features() & (RING_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES),
                0
            );
            ping_pong(a, b, 1000);
            wake_up(a, b);
        },
    );
}

#[test]
fn testpmd_legacy_header() {
    scenario(
        "legacy device: no VERSION_1, no MRG_RXBUF (10-byte header); b posts 2-descriptor RX chains",
        |c, side| {
            c.features = RING_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES;
            c.tx_layout = TxLayout::Split;
            if side == 1 {
                c.rx_chain = vec![10, 1514];
            }
        },
        32,
        |a, b| {
            assert_eq!(a.header_len(), 10);
            assert_eq!(b.last_rx_header().len(), 10);
        },
    );
}

#[test]
fn testpmd_batch_rate() {
    scenario(
        "batch API rate (a -> b, 64 B, send_batch/recv_batch)",
        |_, _| {},
        64,
        |a, b| {
            let frames: Vec<Vec<u8>> = (0..128).map(|i| frame(0, i, 64)).collect();
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
            let t0 = Instant::now();
            let (mut sent, mut got) = (0u64, 0u64);
            let mut bad = 0u64;
            while t0.elapsed() < Duration::from_secs(1) {
                let n = a.send_batch(&refs).unwrap() as u64;
                sent += n;
                let until = Instant::now() + Duration::from_secs(2);
                while got < sent && Instant::now() < until {
                    let k = b
                        .recv_batch(&mut |f| {
                            if f.len() != 64 || &f[14..18] != DATA {
                                bad += 1;
                            }
                        })
                        .unwrap();
                    got += k as u64;
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "  batch: sent {sent} received {got} in {secs:.2}s = {:.2} Mpps (bad {bad})",
                got as f64 / secs / 1e6
            );
            assert_eq!(bad, 0);
            assert_eq!(sent, got);
        },
    );
}

#[test]
fn testpmd_client_mode() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pmd) = Testpmd::start(true) else {
        return;
    };
    println!("scenario testpmd connects to us (listen_and_accept), 2 regions");
    let cfg = |name: &str| {
        let mut c = FrontendConfig::new(pmd.sock(name));
        c.regions = 2;
        c
    };
    let t = Duration::from_secs(15);
    let mut a = TestPort::listen_and_accept(cfg("a.sock"), t).expect("accept a");
    let mut b = TestPort::listen_and_accept(cfg("b.sock"), t).expect("accept b");
    wait_ready(&mut a, &mut b);
    exchange(&mut a, &mut b, 64, 1000, 64);
    exchange(&mut a, &mut b, 1500, 1000, 64);
    describe("a", &a);
    describe("b", &b);
}
