//! Guest memory is untrusted input: every malformed descriptor chain is refused, returned to
//! the guest unused where it can be, and counted; the port, the switch and the other ports
//! keep working.

use std::time::Duration;

use patchbay_switch::daemon::Daemon;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{access, start_switch, TestDir};

const T: Duration = Duration::from_secs(5);
const WRITE: u16 = VRING_DESC_F_WRITE;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT;

struct Bench {
    dir: TestDir,
    d: Daemon,
    a: TestPort,
    b: TestPort,
    c: TestPort,
    seq: u32,
}

impl Bench {
    fn new(name: &str) -> Bench {
        let dir = TestDir::new(name);
        let d = start_switch(
            &dir.path,
            vec![
                access(&dir.path, "a", 1),
                access(&dir.path, "b", 1),
                access(&dir.path, "c", 1),
            ],
            |_| {},
        );
        let connect = |n: &str| {
            TestPort::connect(FrontendConfig::new(dir.join(&format!("{n}.sock")))).unwrap()
        };
        let (a, b, c) = (connect("a"), connect("b"), connect("c"));
        let mut bench = Bench {
            dir,
            d,
            a,
            b,
            c,
            seq: 0,
        };
        // Teach the switch where b and c are, so later frames are unicast.
        bench.exchange();
        bench
    }

    fn bad(&self, port: &str) -> u64 {
        self.d
            .switch
            .port_by_name(port)
            .unwrap()
            .counters
            .snapshot()
            .drop_count("bad-descriptor")
    }

    fn drops(&self, port: &str, reason: &str) -> u64 {
        self.d
            .switch
            .port_by_name(port)
            .unwrap()
            .counters
            .snapshot()
            .drop_count(reason)
    }

    /// a -> b and b -> c still work, and c hears nothing else.
    fn exchange(&mut self) {
        self.seq += 1;
        let ab = frame(mac(2), mac(1), self.seq, 100);
        self.a.send(&ab).unwrap();
        assert!(self.a.wait_tx_completion(T).unwrap());
        assert_eq!(self.b.recv(T).unwrap().expect("a -> b"), ab);
        let bc = frame(mac(3), mac(2), self.seq, 100);
        self.b.send(&bc).unwrap();
        assert!(self.b.wait_tx_completion(T).unwrap());
        loop {
            let f = self.c.recv(T).unwrap().expect("b -> c");
            if f == bc {
                break;
            }
            // Flood copies of a's first frame (before b was learned) arrive first.
            assert_eq!(f, ab, "c got something unexpected");
        }
    }

    /// Submits one raw chain on a's TX ring and expects it back unused.
    fn reject(&mut self, head: u16) {
        let used = self.a.raw_tx().submit(head, T).unwrap();
        assert_eq!(used, Some(0), "the chain comes back with nothing used");
    }
}

#[test]
fn malformed_transmit_chains_are_refused_and_counted() {
    let mut t = Bench::new("bad-tx");
    let qsize = t.a.raw_tx().queue_size();
    let (buf, len) =
        t.a.raw_tx()
            .frame_buffer(&frame(mac(2), mac(1), 99, 100))
            .unwrap();

    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        // 1-byte buffers, so the loop bound (not the frame size limit) is what catches it.
        (
            "a loop",
            vec![
                RawDesc::chained(buf, 1, 0, 1),
                RawDesc::chained(buf, 1, 0, 0),
            ],
        ),
        (
            "a next index outside the queue",
            vec![RawDesc::chained(buf, len, 0, qsize + 7)],
        ),
        (
            "a buffer outside guest memory",
            vec![RawDesc::new(t.a.raw_tx().unmapped_gpa(), len, 0)],
        ),
        (
            "a device-writable buffer on TX",
            vec![RawDesc::new(buf, len, WRITE)],
        ),
        (
            "a zero-length descriptor",
            vec![RawDesc::chained(buf, len, 0, 1), RawDesc::new(buf, 0, 0)],
        ),
        ("a header without a frame", vec![RawDesc::new(buf, 12, 0)]),
    ];
    let mut expected_bad = t.bad("a");
    let mut expected_runt = t.drops("a", "runt");
    for (what, descs) in cases {
        for (i, d) in descs.iter().enumerate() {
            t.a.raw_tx().set_desc(i as u16, *d).unwrap();
        }
        t.reject(0);
        if what == "a header without a frame" {
            expected_runt += 1;
        } else {
            expected_bad += 1;
        }
        assert_eq!(
            t.bad("a"),
            expected_bad,
            "{what}: counted as bad-descriptor"
        );
        assert_eq!(t.drops("a", "runt"), expected_runt, "{what}");
        t.exchange();
    }

    // A descriptor claiming 4 GiB: refused before anything is read.
    t.a.raw_tx()
        .set_desc(0, RawDesc::new(buf, u32::MAX, 0))
        .unwrap();
    t.reject(0);
    assert_eq!(t.drops("a", "too-big"), 1);
    t.exchange();

    // Indirect tables: one whose length is not a whole number of descriptors, one that loops,
    // one longer than the queue.
    let table = t.a.raw_tx().alloc(16 * (usize::from(qsize) + 8)).unwrap();
    t.a.raw_tx()
        .write_indirect(table, &[RawDesc::new(buf, len, 0)])
        .unwrap();
    t.a.raw_tx()
        .set_desc(0, RawDesc::new(table, 24, INDIRECT))
        .unwrap();
    t.reject(0);
    t.a.raw_tx()
        .write_indirect(
            table,
            &[
                RawDesc::chained(buf, len, 0, 1),
                RawDesc::chained(buf, len, 0, 0),
            ],
        )
        .unwrap();
    t.a.raw_tx()
        .set_desc(0, RawDesc::new(table, 32, INDIRECT))
        .unwrap();
    t.reject(0);
    let long: Vec<RawDesc> = (0..qsize + 8)
        .map(|i| {
            if i + 1 < qsize + 8 {
                RawDesc::chained(buf, 1, 0, i + 1)
            } else {
                RawDesc::new(buf, 1, 0)
            }
        })
        .collect();
    t.a.raw_tx().write_indirect(table, &long).unwrap();
    t.a.raw_tx()
        .set_desc(0, RawDesc::new(table, 16 * u32::from(qsize + 8), INDIRECT))
        .unwrap();
    t.reject(0);
    assert_eq!(t.bad("a"), expected_bad + 3);
    t.exchange();

    // A head index beyond the queue cannot even be returned; it is counted and skipped.
    let before = t.bad("a");
    assert_eq!(
        t.a.raw_tx()
            .submit(qsize + 3, Duration::from_millis(300))
            .unwrap(),
        None
    );
    t.a.raw_tx().forget_outstanding();
    assert_eq!(t.bad("a"), before + 1);
    t.exchange();

    // The other ports never noticed.
    for p in ["b", "c"] {
        assert_eq!(t.bad(p), 0);
    }
    t.d.shutdown();
    drop(t.dir);
}

#[test]
fn an_avail_index_racing_ahead_of_the_ring_is_refused() {
    let mut t = Bench::new("bad-avail");
    let qsize = t.a.raw_tx().queue_size();
    let before = t.bad("a");
    t.a.raw_tx().set_avail_idx(qsize.wrapping_mul(3)).unwrap();
    // The switch refuses the ring state; a's next real publish repairs the index.
    let d = &t.d;
    let deadline = std::time::Instant::now() + T;
    while d
        .switch
        .port_by_name("a")
        .unwrap()
        .counters
        .snapshot()
        .drop_count("bad-descriptor")
        == before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bogus index was not noticed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // While the index is still bogus, the port is not wedged: a control request that takes
    // the port's ring locks (show-ports) answers. (A switch that kept re-polling the broken
    // ring would hold the lock forever.)
    let port = t.d.switch.port_by_name("a").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(port.info());
    });
    let info = rx
        .recv_timeout(T)
        .expect("show-ports answered while the ring is broken");
    assert!(info.counters.drop_count("bad-descriptor") > before);
    t.exchange();
    t.d.shutdown();
}

#[test]
fn malformed_receive_buffers_are_refused_and_counted() {
    let mut t = Bench::new("bad-rx");
    // b stops reposting and uses up its posted buffers, so the only buffer the switch will
    // find is our raw one.
    t.b.set_rx_consumption(false).unwrap();
    let posted = t.b.rx_posted();
    for n in 0..posted as u32 {
        t.a.send(&frame(mac(2), mac(1), 1000 + n, 64)).unwrap();
        assert!(t.a.wait_tx_completion(T).unwrap());
        assert!(t.b.recv(T).unwrap().is_some());
    }
    assert_eq!(t.b.rx_posted(), 0);
    let buf = t.b.raw_rx().alloc(2048).unwrap();
    let head = 0;
    // A read-only descriptor where the device must write.
    t.b.raw_rx()
        .set_desc(head, RawDesc::new(buf, 2048, 0))
        .unwrap();
    t.b.raw_rx().push(head).unwrap();
    t.b.raw_rx().kick().unwrap();
    let before = t.bad("b");
    t.a.send(&frame(mac(2), mac(1), 5000, 64)).unwrap();
    assert!(t.a.wait_tx_completion(T).unwrap());
    assert_eq!(
        t.b.raw_rx().wait_used(head, T).unwrap(),
        Some(0),
        "returned unused"
    );
    assert_eq!(t.bad("b"), before + 1);
    assert!(
        t.drops("b", "no-buffer") >= 1,
        "and the frame had nowhere to go"
    );
    // a and c are unaffected.
    let f = frame(mac(3), mac(1), 6000, 64);
    t.a.send(&f).unwrap();
    assert_eq!(t.c.recv(T).unwrap(), Some(f));
    t.d.shutdown();
}
