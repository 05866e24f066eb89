//! Frames per second through Patchbay's VXLAN tunnel port over loopback, ratio'd to plain
//! port-to-port forwarding measured in the same run.
//!
//! Cases, all with the switches in this process in event mode, and one traffic thread pinned
//! to CPU 0 that is both source and sink (the switches' threads get the other core):
//!
//! - `p2p`: plain port-to-port on one switch, frontend a -> b, both access ports of VLAN 10
//!   (the baseline; as in the `port_to_port` bench).
//! - `encap+decap`: frontend a on switch A (VTEP 127.0.0.1) -> VNI 42 -> switch B (VTEP
//!   127.0.0.2) -> frontend b. Both sides learned each other's MAC first, so it is unicast.
//! - `encap+decap no-udp-offloads`: the same with `udp_offloads = false` (no UDP GSO/GRO).
//! - `encap-only`: frontend a on switch A -> VNI 42 -> a UDP socket of this benchmark on
//!   127.0.0.2 that only receives (`recvmmsg`): decapsulation is not on the path.
//! - `decap-only`: the benchmark sends prebuilt VXLAN packets with `sendmmsg` from a UDP socket
//!   on 127.0.0.2 to switch A -> frontend a. Unlike a guest, a socket has no ring to bound
//!   what is in flight, so the source keeps at most `SOCKET_WINDOW` packets outstanding (sent
//!   and not yet received at a; written off as lost after `WRITE_OFF` without progress).
//!
//! The underlay MTU is set to 9000 (loopback's is 65536), so 1450-byte inner frames fit. If
//! the process may, it runs in a network namespace of its own with only `lo`, so the kernel's
//! UDP drop counter (`RcvbufErrors`: a receiving socket's buffer was full) counts only its
//! traffic.
//!
//! Settings (environment), as for `port_to_port`: `PATCHBAY_BENCH_SECS` (default 1.5),
//! `PATCHBAY_BENCH_ROUNDS` (default 2), `PATCHBAY_BENCH_SIZES` (inner frame sizes in bytes
//! without FCS, default "64,1450"), `PATCHBAY_BENCH_CASES` (comma-separated substrings of case
//! names; the baseline runs whenever it is wanted).
//!
//! Run with `cargo bench -p patchbay-benches --bench vxlan`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use patchbay_benches::*;
use patchbay_overlay::vtep::{TunnelDrop, UnknownVtepPolicy, VniConfig, VtepConfig};
use patchbay_overlay::Vni;
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::PortConfig;
use patchbay_tests::frames::{frame, mac};
use patchbay_tests::frontend::TestPort;
use patchbay_tests::switch::{access, start_switch, TestDir};

const TRAFFIC_CPU: usize = 0;
const VLAN: u16 = 10;
const VNI: Vni = 42;
const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const UNDERLAY_MTU: u32 = 9000;
/// Traffic before each measurement that is not counted.
const WARM_UP: Duration = Duration::from_millis(250);
/// Packets per `sendmmsg`/`recvmmsg` of the benchmark's socket.
const BATCH: usize = 64;
/// Most packets the socket source keeps in flight: under the 256 entries of frontend a's RX
/// ring, and under what the switch's VTEP socket buffers with the default receive buffer
/// (~200 small packets).
const SOCKET_WINDOW: u64 = 128;
/// After this long without a frame at the sink, the socket source counts what it has in
/// flight as lost and sends again.
const WRITE_OFF: Duration = Duration::from_millis(20);
/// Receive buffer asked for the benchmark's socket, so that it is not what drops.
const SOCKET_RCVBUF: libc::c_int = 8 << 20;
/// VXLAN header: I flag, reserved, VNI, reserved.
const VXLAN_HDR: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Plain,
    EncapDecap,
    EncapDecapNoOffloads,
    Encap,
    Decap,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Plain,
        Case::EncapDecap,
        Case::EncapDecapNoOffloads,
        Case::Encap,
        Case::Decap,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Plain => "p2p",
            Case::EncapDecap => "encap+decap",
            Case::EncapDecapNoOffloads => "encap+decap no-udp-offloads",
            Case::Encap => "encap-only",
            Case::Decap => "decap-only",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Setting up
// ---------------------------------------------------------------------------------------------

/// A free UDP port for the VTEPs (both ends use the same one, as VXLAN does).
fn free_port() -> u16 {
    patchbay_tests::switch::vxlan_test_port()
}

/// A switch with one access port `name` of `VLAN`, and a VTEP on `local` mapping `VNI` to
/// `VLAN` with `remote` in its flood list.
fn vtep_switch(
    name: &str,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    port: u16,
    udp_offloads: bool,
) -> (Daemon, TestDir) {
    let dir = TestDir::new(&format!("bench-vx-{name}"));
    let ports: Vec<PortConfig> = vec![access(&dir.path, name, VLAN)];
    let daemon = start_switch(&dir.path, ports, |c| {
        c.vxlan = Some(VtepConfig {
            port,
            underlay_mtu: UNDERLAY_MTU,
            unknown_vtep: UnknownVtepPolicy::Drop,
            udp_offloads,
            vnis: vec![VniConfig {
                vni: VNI,
                vlan: VLAN,
                remotes: vec![remote.into()],
                proxy: false,
            }],
            ..VtepConfig::new(local.into())
        })
    });
    (daemon, dir)
}

/// The UDP socket that plays the remote VTEP: bound to 127.0.0.2:`port`, non-blocking, with
/// a large receive buffer.
fn remote_socket(port: u16) -> UdpSocket {
    let s = UdpSocket::bind((B, port)).expect("bind the remote VTEP's socket");
    s.set_nonblocking(true).expect("non-blocking");
    let set = |opt| {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &SOCKET_RCVBUF as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    // RCVBUFFORCE passes net.core.rmem_max (needs CAP_NET_ADMIN); RCVBUF is capped by it.
    if !set(libc::SO_RCVBUFFORCE) {
        set(libc::SO_RCVBUF);
    }
    s
}

/// A VXLAN packet (UDP payload) carrying `inner` in `VNI`.
fn vxlan_packet(inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(VNI << 8).to_be_bytes());
    p.extend_from_slice(inner);
    p
}

/// The switches and endpoints of one case. Frontend a has MAC 1, the other end (frontend b
/// or the socket's inner frames) MAC 2.
struct Session {
    switches: Vec<(Daemon, TestDir)>,
    a: TestPort,
    b: Option<TestPort>,
    sock: Option<UdpSocket>,
    /// Where the socket sends to: switch A's VTEP.
    to: SocketAddrV4,
}

fn open(case: Case) -> Session {
    let port = free_port();
    let to = SocketAddrV4::new(A, port);
    match case {
        Case::Plain => {
            let dir = TestDir::new("bench-vx-p2p");
            let ports = vec![access(&dir.path, "a", VLAN), access(&dir.path, "b", VLAN)];
            let daemon = start_switch(&dir.path, ports, |_| {});
            let a = connect_frontend(dir.join("a.sock"));
            let b = connect_frontend(dir.join("b.sock"));
            Session {
                switches: vec![(daemon, dir)],
                a,
                b: Some(b),
                sock: None,
                to,
            }
        }
        Case::EncapDecap | Case::EncapDecapNoOffloads => {
            let offloads = case == Case::EncapDecap;
            let sa = vtep_switch("a", A, B, port, offloads);
            let sb = vtep_switch("b", B, A, port, offloads);
            let a = connect_frontend(sa.1.join("a.sock"));
            let b = connect_frontend(sb.1.join("b.sock"));
            Session {
                switches: vec![sa, sb],
                a,
                b: Some(b),
                sock: None,
                to,
            }
        }
        Case::Encap | Case::Decap => {
            let sa = vtep_switch("a", A, B, port, true);
            let a = connect_frontend(sa.1.join("a.sock"));
            Session {
                switches: vec![sa],
                a,
                b: None,
                sock: Some(remote_socket(port)),
                to,
            }
        }
    }
}

impl Session {
    /// Exchanges frames until both ends received one: the switches have learned both MACs.
    fn wait_ready(&mut self, fa: &[u8], fb: &[u8]) {
        match (&mut self.b, &self.sock) {
            (Some(b), _) => wait_ready(&mut self.a, b, fa, fb),
            (None, Some(sock)) => {
                let a = std::cell::RefCell::new(&mut self.a);
                let pb = vxlan_packet(fb);
                let mut buf = vec![0u8; 65536];
                exchange_until_ready(
                    || {
                        a.borrow_mut().send_batch(&[fa]).expect("send a");
                        sock.send_to(&pb, self.to).expect("send to switch A");
                    },
                    || {
                        let a_ok = a.borrow_mut().recv_batch(&mut |_| {}).expect("recv a") > 0;
                        let mut b_ok = false;
                        while sock.recv(&mut buf).is_ok() {
                            b_ok = true;
                        }
                        (a_ok, b_ok)
                    },
                );
            }
            (None, None) => unreachable!("a session has b or a socket"),
        }
    }

    fn snap(&self) -> Snap {
        let mut s = Snap {
            cpu: threads_cpu(SWITCH_THREADS),
            udp_rcvbuf_errors: udp_counter("RcvbufErrors"),
            ..Snap::default()
        };
        for (d, _) in &self.switches {
            let sw = &d.switch;
            s.no_buffer += no_buffer_drops(sw);
            s.floods += sw
                .counters()
                .floods
                .load(std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = sw.tunnel() {
                let v = t.vtep.snapshot();
                for (i, r) in TunnelDrop::ALL.iter().enumerate() {
                    s.vtep_drops[i] +=
                        v.drop_count(None, r.label()) + v.drop_count(Some(VNI), r.label());
                }
            }
        }
        s
    }

    fn close(self) {
        self.a.disconnect();
        if let Some(b) = self.b {
            b.disconnect();
        }
        for (d, _dir) in self.switches {
            d.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark's socket, batched
// ---------------------------------------------------------------------------------------------

/// `BATCH` message headers for `sendmmsg`/`recvmmsg`, with their buffers. The headers point
/// into the heap storage of the vectors, which never grow, so the struct may move.
struct MsgBatch {
    _bufs: Vec<u8>,
    _iovecs: Vec<libc::iovec>,
    _addr: Box<libc::sockaddr_in>,
    msgs: Vec<libc::mmsghdr>,
}

impl MsgBatch {
    /// To send: every message is `packet`, to `to`.
    fn sender(packet: &[u8], to: SocketAddrV4) -> MsgBatch {
        let mut bufs = packet.to_vec();
        let mut addr = Box::new(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        });
        let mut iovecs = vec![
            libc::iovec {
                iov_base: bufs.as_mut_ptr() as *mut libc::c_void,
                iov_len: bufs.len(),
            };
            1
        ];
        let msgs = (0..BATCH)
            .map(|_| {
                // SAFETY: an all-zero mmsghdr is a valid empty message header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iovecs.as_mut_ptr();
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = &mut *addr as *mut libc::sockaddr_in as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                m
            })
            .collect();
        MsgBatch {
            _bufs: bufs,
            _iovecs: iovecs,
            _addr: addr,
            msgs,
        }
    }

    /// To receive: `BATCH` buffers of `len` bytes.
    fn receiver(len: usize) -> MsgBatch {
        let mut bufs = vec![0u8; BATCH * len];
        let mut iovecs: Vec<libc::iovec> = bufs
            .chunks_mut(len)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let msgs = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is a valid empty message header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        MsgBatch {
            _bufs: bufs,
            _iovecs: iovecs,
            _addr: Box::new(sockaddr_any()),
            msgs,
        }
    }

    /// Sends up to `max` (at most `BATCH`) packets without blocking; returns how many went.
    fn send(&mut self, sock: &UdpSocket, max: usize) -> usize {
        let n = max.min(BATCH);
        if n == 0 {
            return 0;
        }
        // SAFETY: the messages point at the packet, iovec and address this struct owns.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        r.max(0) as usize
    }

    /// Receives what is waiting, without blocking; returns (packets, packets whose length is
    /// not `expect`).
    fn recv(&mut self, sock: &UdpSocket, expect: usize) -> (usize, u64) {
        // SAFETY: the messages point at buffers and iovecs this struct owns.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = r.max(0) as usize;
        let bad = self.msgs[..n]
            .iter()
            .filter(|m| m.msg_len as usize != expect || m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0)
            .count();
        (n, bad as u64)
    }
}

fn sockaddr_any() -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    unsafe { std::mem::zeroed() }
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// Counters of the switches (summed) and the kernel at one instant.
#[derive(Clone, Copy, Default)]
struct Snap {
    cpu: f64,
    no_buffer: u64,
    floods: u64,
    /// In `TunnelDrop::ALL` order.
    vtep_drops: [u64; TunnelDrop::ALL.len()],
    udp_rcvbuf_errors: u64,
}

/// One measurement.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Frames received at the sink per second.
    pps: f64,
    /// Frames the source handed over but the sink did not get, as a share of those sent.
    loss: f64,
    /// CPU the switches' threads used, in cores.
    fwd_cpu: f64,
    /// The traffic thread's share of its CPU.
    gen_cpu: f64,
    /// Share of the time the traffic thread moved nothing.
    gen_idle: f64,
    no_buffer: u64,
    floods: u64,
    vtep_drops: [u64; TunnelDrop::ALL.len()],
    udp_rcvbuf_errors: u64,
    /// Frames or packets of the wrong length at the sink.
    bad: u64,
}

/// Drives traffic for `WARM_UP` + `dur` on the current thread, counting from the end of the
/// warm-up: frontend a -> frontend b, a -> socket (encap only) or socket -> a (decap only).
fn drive(s: &mut Session, case: Case, fa: &[u8], fb: &[u8], dur: Duration) -> Sample {
    let size = fa.len();
    let q = usize::from(s.a.config().queue_size);
    let ra: Vec<&[u8]> = vec![fa; q];
    let mut tx = MsgBatch::sender(&vxlan_packet(fb), s.to);
    let mut rx = MsgBatch::receiver(size + VXLAN_HDR + 64);
    let (mut sent, mut got, mut bad, mut written_off) = (0u64, 0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut window = Window::new(WARM_UP, dur);
    let mut moved = true;
    let mut before = None;
    loop {
        match window.tick(moved) {
            Phase::Begin => {
                before = Some((sent, got, thread_self_cpu(), s.snap()));
                window.start();
            }
            Phase::Done => break,
            Phase::WarmUp | Phase::Measure => {}
        }
        let (work, n) = match case {
            Case::Plain | Case::EncapDecap | Case::EncapDecapNoOffloads => {
                let work = s.a.send_batch(&ra).expect("send a");
                let b = s.b.as_mut().expect("frontend b");
                let n = b
                    .recv_batch(&mut |f| bad += u64::from(f.len() != size))
                    .expect("recv b");
                (work, n)
            }
            Case::Encap => {
                let work = s.a.send_batch(&ra).expect("send a");
                let (n, wrong) = rx.recv(s.sock.as_ref().expect("socket"), size + VXLAN_HDR);
                bad += wrong;
                (work, n)
            }
            Case::Decap => {
                let mut outstanding = sent - got - written_off;
                if outstanding >= SOCKET_WINDOW && last_progress.elapsed() > WRITE_OFF {
                    written_off += outstanding;
                    outstanding = 0;
                }
                let budget = (SOCKET_WINDOW - outstanding) as usize;
                let work = tx.send(s.sock.as_ref().expect("socket"), budget);
                let n =
                    s.a.recv_batch(&mut |f| bad += u64::from(f.len() != size))
                        .expect("recv a");
                if n > 0 {
                    last_progress = Instant::now();
                }
                (work, n)
            }
        };
        sent += work as u64;
        got += n as u64;
        moved = work + n > 0;
    }
    let secs = window.secs();
    let (sent0, got0, cpu0, p0) = before.expect("measured");
    let p1 = s.snap();
    let (sent, got) = (sent - sent0, got - got0);
    let mut vtep_drops = [0u64; TunnelDrop::ALL.len()];
    for (i, d) in vtep_drops.iter_mut().enumerate() {
        *d = p1.vtep_drops[i] - p0.vtep_drops[i];
    }
    Sample {
        pps: got as f64 / secs,
        loss: sent.saturating_sub(got) as f64 / sent.max(1) as f64,
        fwd_cpu: (p1.cpu - p0.cpu).max(0.0) / secs,
        gen_cpu: (thread_self_cpu() - cpu0) / secs,
        gen_idle: window.idle_share(),
        no_buffer: p1.no_buffer - p0.no_buffer,
        floods: p1.floods - p0.floods,
        vtep_drops,
        udp_rcvbuf_errors: p1.udp_rcvbuf_errors - p0.udp_rcvbuf_errors,
        bad,
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Row {
    case: Case,
    size: usize,
    samples: Vec<Sample>,
}

impl Row {
    fn rates(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.pps).collect()
    }
    fn mean(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        self.samples.iter().map(f).sum::<f64>() / self.samples.len().max(1) as f64
    }
    fn sum(&self, f: impl Fn(&Sample) -> u64) -> u64 {
        self.samples.iter().map(f).sum()
    }
}

fn print_table(rows: &[Row], rounds: usize) {
    println!();
    println!(
        "{:<12} {:>5}  {:<width$} {:>6} {:>8} {:>6} {:>8} {:>7} {:>8} {:>6} {:>9} {:>6} {:>9}  vtep-drops",
        "case",
        "size",
        "Mpps per round",
        "best",
        "ns/frame",
        "ratio",
        "fwd-cpu",
        "gen-cpu",
        "gen-idle",
        "loss",
        "no-buffer",
        "floods",
        "udp-rcvbuf",
        width = 6 * rounds
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.case == Case::Plain && b.size == r.size)
            .map(|b| best(&b.rates()));
        let best = best(&r.rates());
        let drops: Vec<String> = TunnelDrop::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let n = r.sum(|s| s.vtep_drops[i]);
                (n > 0).then(|| format!("{}={n}", d.label()))
            })
            .collect();
        println!(
            "{:<12} {:>5}  {:<width$} {:>6.2} {:>8.0} {:>6} {:>7.0}% {:>6.0}% {:>7.0}% {:>5.1}% {:>9} {:>6} {:>10}  {}",
            r.case.name(),
            r.size,
            mpps_per_round(&r.rates()),
            best / 1e6,
            ns_per_frame(best),
            ratio(best, base),
            100.0 * r.mean(|s| s.fwd_cpu),
            100.0 * r.mean(|s| s.gen_cpu),
            100.0 * r.mean(|s| s.gen_idle),
            100.0 * r.mean(|s| s.loss),
            r.sum(|s| s.no_buffer),
            r.sum(|s| s.floods),
            r.sum(|s| s.udp_rcvbuf_errors),
            if drops.is_empty() { "-".to_string() } else { drops.join(" ") },
            width = 6 * rounds
        );
    }
}

fn main() {
    let own_netns = enter_private_netns();
    let Settings {
        secs,
        dur,
        rounds,
        sizes,
    } = Settings::from_env(&[64, 1450]);
    let t_run = Instant::now();
    println!(
        "vxlan: {secs} s per measurement after {WARM_UP:?} warm-up, {rounds} rounds, inner sizes \
         {sizes:?} (bytes without FCS), traffic thread on CPU {TRAFFIC_CPU}, event mode, \
         underlay MTU {UNDERLAY_MTU}, {}",
        if own_netns {
            "in a network namespace of its own"
        } else {
            "in the host's network namespace (udp-rcvbuf counts the whole host)"
        }
    );
    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| case_wanted(c.name()))
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    for &size in &sizes {
        for &case in &cases {
            rows.push(Row {
                case,
                size,
                samples: Vec::new(),
            });
        }
    }
    let mut bad = 0;
    for &size in &sizes {
        let fa = frame(mac(2), mac(1), 0, size);
        let fb = frame(mac(1), mac(2), 0, size);
        for round in 1..=rounds {
            for &case in &cases {
                let mut s = open(case);
                s.wait_ready(&fa, &fb);
                let sample = run_pinned("traffic", TRAFFIC_CPU, || {
                    drive(&mut s, case, &fa, &fb, dur)
                });
                println!(
                    "  size {size:>4} round {round} {:<12} {:6.2} Mpps",
                    case.name(),
                    sample.pps / 1e6
                );
                bad += sample.bad;
                rows.iter_mut()
                    .find(|r| r.case == case && r.size == size)
                    .expect("row")
                    .samples
                    .push(sample);
                s.close();
            }
        }
    }

    print_table(&rows, rounds);
    println!(
        "Mpps = inner frames received at the sink per second; ratio = best / p2p best, same \
         size. fwd-cpu = CPU of the switches' poll-/dataplane-/kick-/port-/vxlan-rx threads (loopback \
         delivery runs in the sender's thread: a switch's kick- thread, or the traffic thread \
         for decap-only), in % of one core; gen-cpu/gen-idle = the traffic thread's share of \
         CPU {TRAFFIC_CPU} and share of time it moved nothing; loss = sent but not received."
    );
    println!(
        "Drops while measuring, summed over rounds: no-buffer = the switches' ports (a guest's \
         RX ring full, or the tunnel's sendmmsg failed); floods = frames the switches flooded \
         (0: unicast); udp-rcvbuf = the kernel's UDP RcvbufErrors (a receiving socket full: \
         switch B's or A's VTEP socket, or the benchmark's); vtep-drops = the VTEPs' drops by \
         reason. Frames of the wrong length at the sinks: {bad}."
    );
    println!("total time {:.1} s", t_run.elapsed().as_secs_f64());
}
