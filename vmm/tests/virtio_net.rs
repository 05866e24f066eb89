//! End-to-end tests of the VMM's virtio-net device without KVM: an in-process switch, VM
//! memory in a memfd, and the test playing the guest driver through the virtio-mmio register
//! API exactly as the guest does (feature negotiation, queue setup, DRIVER_OK), with a tiny
//! split-ring driver that polls used rings and sleeps on the call eventfds like the VMM's
//! idle wait. QueueNotify writes reach `mmio_write` (no ioeventfd without a VM), which
//! forwards them to the kick eventfds.

use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MFdFlags};
use patchbay_switch::port::ConnectMode;
use patchbay_tests::frames::{frame, mac, BROADCAST};
use patchbay_tests::switch::{access, start_switch, TestDir};
use patchbay_vmm::virtio::features::{
    F_VERSION_1, NET_F_MAC, NET_F_MRG_RXBUF, NET_F_STATUS, RING_F_EVENT_IDX,
};
use patchbay_vmm::virtio::mmio::{reg, DEVICE_ID_NET, MAGIC_VALUE};
use patchbay_vmm::virtio::status::{
    ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURES_OK,
};
use patchbay_vmm::virtio::{Device, NetSpec, VirtioNet};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 16;
const BUF_SIZE: u64 = 2048;
const HDR_LEN: usize = 12;
const MMIO_BASE: u64 = 0xd000_0000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// VM RAM: one memfd-backed region at guest-physical 0.
fn guest_memory() -> GuestMemoryMmap {
    let fd = memfd_create(c"pb-vmm-test", MFdFlags::MFD_CLOEXEC).expect("memfd");
    let file = File::from(fd);
    file.set_len(MEM_SIZE as u64).expect("size memfd");
    let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0), MEM_SIZE).expect("mmap");
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
    GuestMemoryMmap::from_regions(vec![region]).expect("memory")
}

/// One split virtqueue as the driver sees it; every descriptor has a fixed buffer.
struct Ring {
    index: u32,
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    next_avail: u16,
    last_used: u16,
    free: Vec<u16>,
}

impl Ring {
    fn new(index: u32, base: u64) -> Ring {
        Ring {
            index,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            bufs: base + 0x3000,
            next_avail: 0,
            last_used: 0,
            free: (0..QUEUE_SIZE).rev().collect(),
        }
    }

    fn buf(&self, d: u16) -> u64 {
        self.bufs + u64::from(d) * BUF_SIZE
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, d: u16, len: u32, flags: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.buf(d).to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&b, GuestAddress(self.desc + 16 * u64::from(d)))
            .unwrap();
    }

    /// Puts `head` in the avail ring and publishes it.
    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        mem.write_slice(&head.to_le_bytes(), GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.store(
            self.next_avail.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(
            mem.load(GuestAddress(self.used + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// The next used element, if any.
    fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let pending = self.used_idx(mem).wrapping_sub(self.last_used);
        assert!(pending <= QUEUE_SIZE, "used idx ran {pending} ahead");
        if pending == 0 {
            return None;
        }
        let slot = u64::from(self.last_used % QUEUE_SIZE);
        let mut e = [0u8; 8];
        mem.read_slice(&mut e, GuestAddress(self.used + 4 + 8 * slot))
            .unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes(e[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(e[4..8].try_into().unwrap());
        assert!(id < u32::from(QUEUE_SIZE), "used id {id} out of range");
        Some((id as u16, len))
    }

    /// EVENT_IDX: ask for a call as soon as anything more is used.
    fn want_call(&self, mem: &GuestMemoryMmap) {
        let off = self.avail + 4 + 2 * u64::from(QUEUE_SIZE);
        mem.store(self.last_used.to_le(), GuestAddress(off), Ordering::Release)
            .unwrap();
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// The guest side of one NIC: the device plus a driver for it.
struct Guest {
    net: VirtioNet,
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    mac: [u8; 6],
}

impl Guest {
    fn new(spec: NetSpec) -> Guest {
        let mut g = Guest::with_rings(spec, 0x10_0000, 0x20_0000);
        let st = g.init();
        assert_eq!(st & 0xc0, 0, "device accepted DRIVER_OK");
        assert!(g.net.is_running(), "backend running after DRIVER_OK");
        g
    }

    /// A device whose rings the driver will put at these guest-physical addresses.
    fn with_rings(spec: NetSpec, rx: u64, tx: u64) -> Guest {
        let mem = guest_memory();
        let net = VirtioNet::new(spec, mem.clone(), None, MMIO_BASE).expect("device starts");
        Guest {
            net,
            mem,
            rx: Ring::new(0, rx),
            tx: Ring::new(1, tx),
            mac: [0; 6],
        }
    }

    /// Resets the device and starts over with fresh (zeroed) rings, like a rebooting driver.
    fn reinit(&mut self) {
        // Reset first: the rings belong to the device until then.
        self.wr(reg::STATUS, 0);
        assert!(!self.net.is_running());
        for r in [&self.rx, &self.tx] {
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(r.desc))
                .unwrap();
        }
        self.rx = Ring::new(0, self.rx.desc);
        self.tx = Ring::new(1, self.tx.desc);
        let st = self.init();
        assert_eq!(st & 0xc0, 0);
        assert!(self.net.is_running());
    }

    fn rd(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.net.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&self, off: u64, v: u32) {
        self.net.mmio_write(off, &v.to_le_bytes());
    }

    /// What the guest does at boot (virtio 1.x, 3.1.1); returns the status after DRIVER_OK.
    fn init(&mut self) -> u32 {
        assert_eq!(self.rd(reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(self.rd(reg::VERSION), 2);
        assert_eq!(self.rd(reg::DEVICE_ID), DEVICE_ID_NET);
        self.wr(reg::STATUS, 0);
        self.wr(reg::STATUS, ACKNOWLEDGE);
        self.wr(reg::STATUS, ACKNOWLEDGE | DRIVER);
        self.wr(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(reg::DEVICE_FEATURES);
        self.wr(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(reg::DEVICE_FEATURES);
        let offered = u64::from(lo) | (u64::from(hi) << 32);
        let wanted = F_VERSION_1 | RING_F_EVENT_IDX | NET_F_MRG_RXBUF | NET_F_MAC | NET_F_STATUS;
        assert_eq!(offered & wanted, wanted, "offered {offered:#x}");
        // Nothing else may be offered: the VMM passes through only what it supports.
        assert_eq!(offered, wanted);
        self.wr(reg::DRIVER_FEATURES_SEL, 0);
        self.wr(reg::DRIVER_FEATURES, wanted as u32);
        self.wr(reg::DRIVER_FEATURES_SEL, 1);
        self.wr(reg::DRIVER_FEATURES, (wanted >> 32) as u32);
        self.wr(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(self.rd(reg::STATUS) & FEATURES_OK, 0);
        for ring in [&self.rx, &self.tx] {
            self.wr(reg::QUEUE_SEL, ring.index);
            assert!(self.rd(reg::QUEUE_NUM_MAX) >= u32::from(QUEUE_SIZE));
            assert_eq!(self.rd(reg::QUEUE_READY), 0);
            self.wr(reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
            for (lo, addr) in [
                (reg::QUEUE_DESC_LOW, ring.desc),
                (reg::QUEUE_DRIVER_LOW, ring.avail),
                (reg::QUEUE_DEVICE_LOW, ring.used),
            ] {
                self.wr(lo, addr as u32);
                self.wr(lo + 4, (addr >> 32) as u32);
            }
            self.wr(reg::QUEUE_READY, 1);
        }
        let mut m = [0u8; 6];
        self.net.mmio_read(reg::CONFIG, &mut m);
        let mut st = [0u8; 2];
        self.net.mmio_read(reg::CONFIG + 6, &mut st);
        assert_eq!(u16::from_le_bytes(st) & 1, 1, "link up");
        self.mac = m;
        // Post every RX buffer before the device starts.
        while let Some(d) = self.rx.free.pop() {
            self.rx
                .write_desc(&self.mem, d, BUF_SIZE as u32, 2 /* WRITE */);
            self.rx.publish(&self.mem, d);
        }
        self.wr(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.rd(reg::STATUS)
    }

    /// The VMM's idle wait: sleep on the call eventfds (bounded), then drain them.
    fn idle_wait(&self, d: Duration) {
        let fds = self.net.call_fds();
        // SAFETY: the descriptors belong to `self.net`, which outlives this call.
        let borrowed: Vec<BorrowedFd<'_>> = fds
            .iter()
            .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
            .collect();
        let mut pfds: Vec<PollFd<'_>> = borrowed
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        let ms = u16::try_from(d.as_millis()).unwrap_or(u16::MAX);
        let _ = poll(&mut pfds, PollTimeout::from(ms));
        for fd in fds {
            drain(fd);
        }
    }

    fn reclaim_tx(&mut self) {
        while let Some((id, _)) = self.tx.pop_used(&self.mem) {
            self.tx.free.push(id);
        }
    }

    /// Queues one frame and notifies the device.
    fn send(&mut self, f: &[u8]) {
        let deadline = Instant::now() + TIMEOUT;
        let d = loop {
            self.reclaim_tx();
            if let Some(d) = self.tx.free.pop() {
                break d;
            }
            assert!(Instant::now() < deadline, "TX ring stayed full");
            self.tx.want_call(&self.mem);
            self.idle_wait(Duration::from_millis(10));
        };
        let mut buf = vec![0u8; HDR_LEN];
        buf.extend_from_slice(f);
        self.mem
            .write_slice(&buf, GuestAddress(self.tx.buf(d)))
            .unwrap();
        self.tx.write_desc(&self.mem, d, buf.len() as u32, 0);
        self.tx.publish(&self.mem, d);
        self.wr(reg::QUEUE_NOTIFY, self.tx.index);
    }

    /// The next received frame (header stripped), or None after `d`.
    fn recv(&mut self, d: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + d;
        loop {
            if let Some((id, len)) = self.rx.pop_used(&self.mem) {
                let len = len as usize;
                assert!(
                    (HDR_LEN..=BUF_SIZE as usize).contains(&len),
                    "used len {len}"
                );
                let mut data = vec![0u8; len];
                self.mem
                    .read_slice(&mut data, GuestAddress(self.rx.buf(id)))
                    .unwrap();
                let num_buffers = u16::from_le_bytes([data[10], data[11]]);
                assert_eq!(num_buffers, 1, "small frames fit one buffer");
                // Give the buffer back.
                self.rx.write_desc(&self.mem, id, BUF_SIZE as u32, 2);
                self.rx.publish(&self.mem, id);
                self.wr(reg::QUEUE_NOTIFY, self.rx.index);
                return Some(data.split_off(HDR_LEN));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.rx.want_call(&self.mem);
            if self.rx.used_idx(&self.mem) == self.rx.last_used {
                self.idle_wait(left.min(Duration::from_millis(50)));
            }
        }
    }

    /// Receives the next frame and checks it is `seq` from `src`.
    fn expect(&mut self, src: [u8; 6], seq: u32) {
        let f = self
            .recv(TIMEOUT)
            .unwrap_or_else(|| panic!("frame {seq} from {src:x?} never arrived"));
        assert_eq!(&f[6..12], &src, "source of frame {seq}");
        assert_eq!(seq_of(&f), seq, "frames arrive in order, exactly once");
    }

    /// Waits until the device returned every TX chain.
    fn wait_tx_done(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.reclaim_tx();
            if self.tx.free.len() == usize::from(QUEUE_SIZE) {
                return;
            }
            assert!(Instant::now() < deadline, "TX chains never came back");
            self.tx.want_call(&self.mem);
            self.idle_wait(Duration::from_millis(10));
        }
    }

    fn wait_running(&self, connections: u64) {
        let deadline = Instant::now() + TIMEOUT;
        while !(self.net.connections() >= connections && self.net.is_running()) {
            assert!(Instant::now() < deadline, "device did not reconnect");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[14..18].try_into().unwrap())
}

fn drain(fd: RawFd) {
    let mut b = [0u8; 8];
    // SAFETY: reading 8 bytes into a local buffer from a descriptor the caller keeps open.
    let _ = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
}

fn readable(fd: RawFd) -> bool {
    // SAFETY: the caller keeps the descriptor open for the duration of the call.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut p = [PollFd::new(b, PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::ZERO).unwrap_or(0) > 0
}

/// Sends `n` frames each way between `a` and `b`, sequence numbers from `first`.
fn exchange(a: &mut Guest, b: &mut Guest, first: u32, n: u32) {
    for s in first..first + n {
        // The first frame is broadcast so the switch learns a's address.
        let dst = if s == first { BROADCAST } else { b.mac };
        a.send(&frame(dst, a.mac, s, 100));
        b.expect(a.mac, s);
    }
    for s in first..first + n {
        b.send(&frame(a.mac, b.mac, s, 300));
        a.expect(b.mac, s);
    }
}

#[test]
fn frames_flow_both_ways_and_survive_a_switch_port_restart() {
    let dir = TestDir::new("vmm-net");
    let mut cfg_b = access(&dir.path, "b", 1);
    cfg_b.mac = Some("02:00:00:00:00:0b".into());
    let daemon = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), cfg_b.clone()],
        |_| {},
    );
    let mut a = Guest::new(NetSpec::new(dir.join("a.sock")));
    let mut b = Guest::new(NetSpec::new(dir.join("b.sock")));
    // b's MAC comes from the switch's config space (its port has one); a's port has none and
    // does not offer a config space, so the VMM derives one from the socket path.
    assert_eq!(b.mac, [2, 0, 0, 0, 0, 0x0b]);
    assert_eq!(a.net.mac(), a.mac);
    assert_ne!(a.mac, b.mac);

    // More frames than the rings hold: the indices wrap.
    exchange(&mut a, &mut b, 0, 3 * u32::from(QUEUE_SIZE));

    // The switch loses the port (as when it restarts): the device reconnects by itself.
    // (Wait for b's TX chains first: one the switch forwarded but had not yet marked used
    // would be sent again after the reconnect, by design.)
    b.wait_tx_done();
    daemon.switch.remove_port("b").expect("remove port");
    // While nobody serves b, its guest keeps queueing: these chains sit between the used
    // and avail indices and must be sent by the next backend (replay from used idx).
    for s in 1000..1003 {
        b.send(&frame(a.mac, b.mac, s, 200));
    }
    // Frames to b meanwhile are lost (nobody to deliver them to).
    a.send(&frame(b.mac, a.mac, 999, 100));
    a.wait_tx_done();
    daemon.switch.add_port(cfg_b).expect("re-add port");
    b.wait_running(2);
    assert_eq!(a.net.connections(), 1, "a's connection was never disturbed");
    for s in 1000..1003 {
        a.expect(b.mac, s);
    }
    assert_eq!(a.recv(Duration::from_millis(200)), None, "no duplicates");

    // Both directions work again with the ring positions carried over.
    exchange(&mut a, &mut b, 2000, 2 * u32::from(QUEUE_SIZE));
    assert_eq!(b.recv(Duration::from_millis(100)), None);

    // A driver reset stops the backend's rings (GET_VRING_BASE); the re-initialised driver
    // starts from index 0 on the same connection.
    b.reinit();
    assert_eq!(b.net.connections(), 2);
    exchange(&mut a, &mut b, 3000, u32::from(QUEUE_SIZE) + 3);
    daemon.shutdown();
}

#[test]
fn rings_outside_ram_make_the_device_need_a_reset() {
    let dir = TestDir::new("vmm-net-bad");
    let daemon = start_switch(&dir.path, vec![access(&dir.path, "e", 1)], |_| {});
    // The TX ring past the end of RAM.
    let mut g = Guest::with_rings(NetSpec::new(dir.join("e.sock")), 0x10_0000, MEM_SIZE as u64);
    let st = g.init();
    assert_ne!(st & DEVICE_NEEDS_RESET, 0, "status {st:#x}");
    assert!(!g.net.is_running());
    // The connection survives a guest mistake; a correct driver gets going after a reset.
    g.tx = Ring::new(1, 0x20_0000);
    let st = g.init();
    assert_eq!(st & 0xc0, 0, "status {st:#x}");
    assert!(g.net.is_running());
    assert_eq!(g.net.connections(), 1);
    daemon.shutdown();
}

#[test]
fn client_mode_reconnects_and_no_reconnect_reports_loss() {
    let dir = TestDir::new("vmm-net-client");
    // c: the VMM listens and the switch dials it.
    let mut cfg_c = access(&dir.path, "c", 1);
    cfg_c.mode = ConnectMode::Client;
    let daemon = start_switch(
        &dir.path,
        vec![cfg_c.clone(), access(&dir.path, "d", 1)],
        |_| {},
    );
    let mut spec_c = NetSpec::new(dir.join("c.sock"));
    spec_c.client = true;
    spec_c.mac = Some(mac(0x0c));
    let mut c = Guest::new(spec_c);
    assert_eq!(c.mac, mac(0x0c), "--net mac= wins over the switch's");
    let mut spec_d = NetSpec::new(dir.join("d.sock"));
    spec_d.reconnect = false;
    let mut d = Guest::new(spec_d);
    exchange(&mut c, &mut d, 0, 20);

    // The switch drops c and dials it again later: the VMM accepts and replays.
    daemon.switch.remove_port("c").expect("remove port");
    daemon.switch.add_port(cfg_c).expect("re-add port");
    c.wait_running(2);
    exchange(&mut c, &mut d, 100, 20);

    // d asked not to reconnect: losing the switch is reported, and the idle wait wakes.
    assert_eq!(d.net.backend_lost(), None);
    let hangup = d.net.hangup_fds();
    assert_eq!(hangup.len(), 1, "no-reconnect: the VMM watches the socket");
    assert!(
        c.net.hangup_fds().is_empty(),
        "a reconnecting device handles hang-ups"
    );
    for fd in d.net.call_fds() {
        drain(fd);
    }
    daemon.switch.remove_port("d").expect("remove port");
    let deadline = Instant::now() + TIMEOUT;
    while d.net.backend_lost().is_none() {
        assert!(Instant::now() < deadline, "loss not reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(readable(d.net.lost_fd()));
    assert!(d.net.backend_lost().unwrap().contains("d.sock"));
    // The socket stays open (no descriptor reuse under the VMM's watcher).
    assert_eq!(d.net.hangup_fds(), hangup);
    assert!(d.net.call_fds().into_iter().any(readable));
    assert!(!d.net.is_running());
    daemon.shutdown();
}

#[test]
fn unreachable_switch_fails_in_time() {
    let dir = TestDir::new("vmm-net-none");
    let mut spec = NetSpec::new(dir.join("nobody.sock"));
    spec.connect_timeout = Duration::from_millis(200);
    let t = Instant::now();
    let err = VirtioNet::new(spec, guest_memory(), None, MMIO_BASE).expect_err("no switch");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("nobody.sock"), "{err}");
}
