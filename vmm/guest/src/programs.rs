//! The guest programs (cmdline) and their console lines (docs/vmm-guest-abi.md).
use crate::cmdline::Program;
use crate::net::{Env, NetConfig, Stack};
use crate::util::{fill_pattern, pattern_checksum, Fnv1a64, MacFmt, TransferFmt};
use crate::virtio::{Transport, VirtioNet};
use core::fmt::Write;
use core::net::Ipv4Addr;
use smoltcp::iface::SocketStorage;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Duration;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

pub const TCP_BUF: usize = 256 * 1024;
pub const UDP_BUF: usize = 64 * 1024;
pub const UDP_PACKETS: usize = 64;
pub const ICMP_BUF: usize = 8 * 1024;
pub const ICMP_PACKETS: usize = 16;

pub const PING_TIMEOUT_US: u64 = 1_000_000;
pub const PING_PAYLOAD: usize = 56;
/// tcp-source keeps retrying a refused / unanswered connection for this long.
pub const CONNECT_DEADLINE_US: u64 = 30_000_000;
pub const CONNECT_RETRY_US: u64 = 100_000;
/// tcp-source aborts a connection that hears nothing from the peer for this long (smoltcp
/// socket timeout; its retransmission timer backs off up to 60 s). tcp-sink waits forever.
pub const TCP_SOURCE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the result line: wait this long at most for the orderly close.
pub const LINGER_US: u64 = 2_000_000;
/// Before power-off: wait this long at most for the device to take the last frames.
pub const DRAIN_US: u64 = 100_000;

/// Socket payload buffers (all zero, so a `.bss` static in the guest).
pub struct SocketBufs {
    pub tcp_rx: [u8; TCP_BUF],
    pub tcp_tx: [u8; TCP_BUF],
    pub udp_rx: [u8; UDP_BUF],
    pub udp_tx: [u8; UDP_BUF],
    pub icmp_rx: [u8; ICMP_BUF],
    pub icmp_tx: [u8; ICMP_BUF],
}

impl SocketBufs {
    pub const fn zeroed() -> Self {
        // SAFETY: byte arrays.
        unsafe { core::mem::zeroed() }
    }
}

/// Packet metadata rings (small, on the stack).
struct SocketMeta {
    udp_rx: [udp::PacketMetadata; UDP_PACKETS],
    udp_tx: [udp::PacketMetadata; UDP_PACKETS],
    icmp_rx: [icmp::PacketMetadata; ICMP_PACKETS],
    icmp_tx: [icmp::PacketMetadata; ICMP_PACKETS],
}

impl SocketMeta {
    fn new() -> Self {
        SocketMeta {
            udp_rx: [udp::PacketMetadata::EMPTY; UDP_PACKETS],
            udp_tx: [udp::PacketMetadata::EMPTY; UDP_PACKETS],
            icmp_rx: [icmp::PacketMetadata::EMPTY; ICMP_PACKETS],
            icmp_tx: [icmp::PacketMetadata::EMPTY; ICMP_PACKETS],
        }
    }
}

/// Bring the interface up, print `GUEST-READY`, run `prog`. Returns the power-off status
/// (0 = success; 1 after a `GUEST-ERROR` line).
pub fn run<T: Transport, E: Env, W: Write>(
    prog: Program,
    dev: VirtioNet<T>,
    env: E,
    cfg: &NetConfig,
    bufs: &mut SocketBufs,
    out: &mut W,
) -> u32 {
    if cfg.mac[0] & 1 != 0 {
        let _ = writeln!(out, "GUEST-ERROR MAC {} is not unicast", MacFmt(cfg.mac));
        return 1;
    }
    let mut meta = SocketMeta::new();
    let mut storage = [SocketStorage::EMPTY; 2];
    let mut st = Stack::new(dev, env, cfg, &mut storage[..]);
    let _ = writeln!(out, "GUEST-READY mac={} ip={}/{}", MacFmt(cfg.mac), cfg.ip, cfg.prefix_len);
    let status = match prog {
        Program::Ping { dst, count } => ping(&mut st, &mut meta, bufs, dst, count, out),
        Program::UdpEcho { port } => udp_echo(&mut st, &mut meta, bufs, port, out),
        Program::TcpSink { port } => tcp_sink(&mut st, bufs, port, out),
        Program::TcpSource { dst, port, bytes } => tcp_source(&mut st, bufs, dst, port, bytes, out),
        // Runs without the NIC (runtime.rs calls crate::loopback::run instead).
        Program::TcpLoopback { .. } => {
            let _ = writeln!(out, "GUEST-ERROR tcp-loopback does not run on the NIC");
            1
        }
    };
    st.drain_tx(DRAIN_US);
    status
}

fn ping<'s, T: Transport, E: Env, W: Write>(
    st: &mut Stack<'s, T, E>,
    meta: &'s mut SocketMeta,
    bufs: &'s mut SocketBufs,
    dst: Ipv4Addr,
    count: u32,
    out: &mut W,
) -> u32 {
    let rx = icmp::PacketBuffer::new(&mut meta.icmp_rx[..], &mut bufs.icmp_rx[..]);
    let tx = icmp::PacketBuffer::new(&mut meta.icmp_tx[..], &mut bufs.icmp_tx[..]);
    let mut sock = icmp::Socket::new(rx, tx);
    let ident = (st.now_us() as u16) ^ 0x5042;
    if sock.bind(icmp::Endpoint::Ident(ident)).is_err() {
        let _ = writeln!(out, "GUEST-ERROR ping: cannot bind ICMP socket");
        return 1;
    }
    let h = st.sockets.add(sock);
    let caps = ChecksumCapabilities::default();
    let mut payload = [0u8; PING_PAYLOAD];
    fill_pattern(&mut payload, 0);
    let remote = IpAddress::Ipv4(dst);
    let mut received = 0u32;
    for seq in 1..=count {
        let seq_no = seq as u16;
        let repr = Icmpv4Repr::EchoRequest { ident, seq_no, data: &payload };
        match st.sockets.get_mut::<icmp::Socket>(h).send(repr.buffer_len(), remote) {
            Ok(buf) => repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps),
            Err(e) => {
                let _ = writeln!(out, "GUEST-ERROR ping: send failed: {e}");
                return 1;
            }
        }
        let t0 = st.now_us();
        let deadline = t0 + PING_TIMEOUT_US;
        loop {
            let busy = st.poll();
            let now = st.now_us();
            let sock = st.sockets.get_mut::<icmp::Socket>(h);
            let mut replied = false;
            while let Ok((data, from)) = sock.recv() {
                if from != remote {
                    continue;
                }
                let Ok(pkt) = Icmpv4Packet::new_checked(data) else { continue };
                if let Ok(Icmpv4Repr::EchoReply { ident: i, seq_no: s, .. }) = Icmpv4Repr::parse(&pkt, &caps) {
                    replied |= i == ident && s == seq_no;
                }
            }
            if replied {
                received += 1;
                let _ = writeln!(out, "PING seq={seq} rtt_us={}", now - t0);
                break;
            }
            if now >= deadline {
                let _ = writeln!(out, "PING seq={seq} timeout");
                break;
            }
            if !busy {
                st.wait(Some(deadline));
            }
        }
    }
    let _ = writeln!(out, "PING-DONE sent={count} received={received}");
    0
}

fn udp_echo<'s, T: Transport, E: Env, W: Write>(
    st: &mut Stack<'s, T, E>,
    meta: &'s mut SocketMeta,
    bufs: &'s mut SocketBufs,
    port: u16,
    out: &mut W,
) -> u32 {
    let rx = udp::PacketBuffer::new(&mut meta.udp_rx[..], &mut bufs.udp_rx[..]);
    let tx = udp::PacketBuffer::new(&mut meta.udp_tx[..], &mut bufs.udp_tx[..]);
    let mut sock = udp::Socket::new(rx, tx);
    if sock.bind(port).is_err() {
        let _ = writeln!(out, "GUEST-ERROR udp-echo: cannot bind port {port}");
        return 1;
    }
    let h = st.sockets.add(sock);
    let _ = writeln!(out, "UDP-ECHO listening port={port}");
    let mut tmp = [0u8; 2048];
    loop {
        let mut busy = st.poll();
        let sock = st.sockets.get_mut::<udp::Socket>(h);
        while sock.can_recv() && sock.can_send() {
            match sock.recv_slice(&mut tmp) {
                Ok((n, m)) => {
                    let _ = sock.send_slice(&tmp[..n], m.endpoint);
                    busy = true;
                }
                Err(_) => break,
            }
        }
        if st.env.should_stop() {
            return 0;
        }
        if !busy {
            st.wait(None);
        }
    }
}

/// Queues as much of the test pattern (bytes `*sent..total`) as `sock` takes; returns
/// whether anything was queued. Shared by tcp-source and tcp-loopback.
pub(crate) fn send_pattern(sock: &mut tcp::Socket<'_>, sent: &mut u64, total: u64) -> bool {
    let start = *sent;
    while *sent < total && sock.can_send() {
        let from = *sent;
        let n = sock
            .send(|b| {
                let n = (b.len() as u64).min(total - from) as usize;
                fill_pattern(&mut b[..n], from);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        *sent += n as u64;
    }
    *sent != start
}

fn tcp_socket<'s>(bufs: &'s mut SocketBufs, timeout: Option<Duration>) -> tcp::Socket<'s> {
    new_tcp_socket(&mut bufs.tcp_rx[..], &mut bufs.tcp_tx[..], timeout)
}

/// A TCP socket over these buffers, set up as every program uses it.
pub(crate) fn new_tcp_socket<'s>(rx: &'s mut [u8], tx: &'s mut [u8], timeout: Option<Duration>) -> tcp::Socket<'s> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    s.set_nagle_enabled(false);
    // Without congestion control smoltcp resends whole windows after a loss (go-back-N with a
    // doubling RTO); Reno recovers from drops in the switch or a full receive ring.
    s.set_congestion_control(tcp::CongestionControl::Reno);
    s.set_timeout(timeout);
    s
}

fn tcp_sink<'s, T: Transport, E: Env, W: Write>(
    st: &mut Stack<'s, T, E>,
    bufs: &'s mut SocketBufs,
    port: u16,
    out: &mut W,
) -> u32 {
    use tcp::State;
    let mut sock = tcp_socket(bufs, None);
    if sock.listen(port).is_err() {
        let _ = writeln!(out, "GUEST-ERROR tcp-sink: cannot listen on port {port}");
        return 1;
    }
    let h = st.sockets.add(sock);
    let _ = writeln!(out, "TCP-SINK listening port={port}");
    let mut t0: Option<u64> = None;
    let mut bytes = 0u64;
    let mut fnv = Fnv1a64::new();
    loop {
        let mut busy = st.poll();
        let now = st.now_us();
        let sock = st.sockets.get_mut::<tcp::Socket>(h);
        let state = sock.state();
        if t0.is_none() && !matches!(state, State::Listen | State::SynReceived | State::Closed) {
            t0 = Some(now);
        }
        while let Ok(n) = sock.recv(|b| {
            fnv.update(b);
            (b.len(), b.len())
        }) {
            if n == 0 {
                break;
            }
            bytes += n as u64;
            busy = true;
        }
        if let Some(start) = t0 {
            match sock.state() {
                State::CloseWait if sock.recv_queue() == 0 => {
                    let r = TransferFmt { bytes, micros: st.now_us() - start, checksum: fnv.finish() };
                    let _ = writeln!(out, "TCP-SINK {r}");
                    break;
                }
                State::Closed | State::Listen => {
                    let _ = writeln!(out, "GUEST-ERROR tcp-sink: connection reset after {bytes} bytes");
                    return 1;
                }
                _ => {}
            }
        }
        if st.env.should_stop() {
            return 1;
        }
        if !busy {
            st.wait(None);
        }
    }
    // Orderly close: our FIN, wait for its ACK (bounded).
    st.sockets.get_mut::<tcp::Socket>(h).close();
    let end = st.now_us() + LINGER_US;
    loop {
        let busy = st.poll();
        let state = st.sockets.get_mut::<tcp::Socket>(h).state();
        if matches!(state, State::Closed | State::TimeWait) || st.now_us() >= end {
            return 0;
        }
        if !busy {
            st.wait(Some(end));
        }
    }
}

fn tcp_source<'s, T: Transport, E: Env, W: Write>(
    st: &mut Stack<'s, T, E>,
    bufs: &'s mut SocketBufs,
    dst: Ipv4Addr,
    port: u16,
    total: u64,
    out: &mut W,
) -> u32 {
    use tcp::State;
    enum Phase {
        Connecting,
        Backoff(u64),
        Sending,
        Closing,
    }
    let h = st.sockets.add(tcp_socket(bufs, Some(TCP_SOURCE_TIMEOUT)));
    let remote = (IpAddress::Ipv4(dst), port);
    let mut local_port = 49152 + (st.now_us() % 16384) as u16;
    let connect_deadline = st.now_us() + CONNECT_DEADLINE_US;
    let connect = |st: &mut Stack<'s, T, E>, lp: u16| {
        let cx = st.iface.context();
        st.sockets.get_mut::<tcp::Socket>(h).connect(cx, remote, lp).is_ok()
    };
    if !connect(st, local_port) {
        let _ = writeln!(out, "GUEST-ERROR tcp-source: cannot connect to {dst}:{port}");
        return 1;
    }
    let mut phase = Phase::Connecting;
    let mut t0 = 0u64;
    let mut sent = 0u64;
    let mut saw_last_ack = false;
    let t1 = loop {
        let mut busy = st.poll();
        let now = st.now_us();
        let sock = st.sockets.get_mut::<tcp::Socket>(h);
        let state = sock.state();
        let mut deadline = None;
        match phase {
            Phase::Connecting => match state {
                State::Closed => {
                    if now >= connect_deadline {
                        let _ = writeln!(out, "GUEST-ERROR tcp-source: connection to {dst}:{port} failed");
                        return 1;
                    }
                    phase = Phase::Backoff(now + CONNECT_RETRY_US);
                    busy = true;
                }
                State::SynSent | State::SynReceived => deadline = Some(connect_deadline),
                _ => {
                    t0 = now;
                    phase = Phase::Sending;
                    busy = true;
                }
            },
            Phase::Backoff(at) => {
                if now >= at {
                    local_port = if local_port == 65535 { 49152 } else { local_port + 1 };
                    if !connect(st, local_port) {
                        let _ = writeln!(out, "GUEST-ERROR tcp-source: cannot connect to {dst}:{port}");
                        return 1;
                    }
                    phase = Phase::Connecting;
                    busy = true;
                } else {
                    deadline = Some(at);
                }
            }
            Phase::Sending => {
                if matches!(state, State::Closed | State::TimeWait) {
                    let _ = writeln!(out, "GUEST-ERROR tcp-source: connection reset after {sent} bytes sent");
                    return 1;
                }
                if send_pattern(sock, &mut sent, total) {
                    busy = true;
                }
                if sent == total {
                    sock.close();
                    phase = Phase::Closing;
                    busy = true;
                }
            }
            Phase::Closing => match state {
                // Everything, FIN included, is acknowledged.
                State::FinWait2 | State::TimeWait => break now,
                State::LastAck => saw_last_ack = true,
                State::Closed if saw_last_ack => break now,
                State::Closed => {
                    let _ = writeln!(out, "GUEST-ERROR tcp-source: connection reset before all {total} bytes were acknowledged");
                    return 1;
                }
                _ => {}
            },
        }
        if st.env.should_stop() {
            return 1;
        }
        if !busy {
            st.wait(deadline);
        }
    };
    let r = TransferFmt { bytes: total, micros: t1 - t0, checksum: pattern_checksum(total) };
    let _ = writeln!(out, "TCP-SOURCE {r}");
    // Let the peer finish its side of the close (bounded).
    let end = st.now_us() + LINGER_US;
    loop {
        let busy = st.poll();
        let state = st.sockets.get_mut::<tcp::Socket>(h).state();
        if matches!(state, State::Closed | State::TimeWait) || st.now_us() >= end {
            return 0;
        }
        if !busy {
            st.wait(Some(end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{spawn_switch, zeroed_static, MockDevice, MockTransport};
    use crate::virtio::{NetMem, DRIVER_FEATURES};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct TestEnv {
        start: std::time::Instant,
        stop: Arc<AtomicBool>,
    }

    impl Env for TestEnv {
        fn now_us(&self) -> u64 {
            self.start.elapsed().as_micros() as u64
        }
        fn idle(&mut self, ms: u32) {
            // Stand-in for the VMM's wait: short, so tests stay fast without a signal path.
            std::thread::sleep(std::time::Duration::from_micros(50.min(ms as u64 * 1000)));
        }
        fn should_stop(&self) -> bool {
            self.stop.load(Ordering::Relaxed)
        }
    }

    /// Start a guest program on its own thread over `dev`; returns its console and status.
    fn spawn_guest(
        dev: Arc<MockDevice>,
        ip: [u8; 4],
        cmdline: &'static str,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(String, u32)> {
        std::thread::spawn(move || {
            let prog = crate::cmdline::parse(cmdline.as_bytes()).unwrap();
            let mac = dev.regs.lock().unwrap().mac;
            let net = unsafe { VirtioNet::init(MockTransport(dev), zeroed_static::<NetMem>(), [0; 6]) }.unwrap();
            let cfg = NetConfig {
                mac: net.mac,
                ip: Ipv4Addr::from(ip),
                prefix_len: 24,
                gateway: None,
                seed: u64::from_le_bytes([mac[5], 1, 2, 3, 4, 5, 6, 7]),
            };
            let bufs = unsafe { &mut *zeroed_static::<SocketBufs>() };
            let env = TestEnv { start: std::time::Instant::now(), stop };
            let mut out = String::new();
            let status = run(prog, net, env, &cfg, bufs, &mut out);
            (out, status)
        })
    }

    fn pair(chunk: usize, a_cmd: &'static str, b_cmd: &'static str) -> ((String, u32), (String, u32), u64) {
        let a = MockDevice::new(DRIVER_FEATURES, 256, [2, 0, 0, 0, 0, 0xa]);
        let b = MockDevice::new(DRIVER_FEATURES, 256, [2, 0, 0, 0, 0, 0xb]);
        let stop = Arc::new(AtomicBool::new(false));
        let sw = spawn_switch(a.clone(), b.clone(), chunk, stop.clone());
        let ga = spawn_guest(a, [10, 0, 0, 1], a_cmd, stop.clone());
        let gb = spawn_guest(b, [10, 0, 0, 2], b_cmd, stop.clone());
        let rb = gb.join().unwrap();
        // A sink finishes on its own; udp-echo is told to stop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while a_cmd.starts_with("tcp-sink") && !ga.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let ra = ga.join().unwrap();
        let moved = sw.join().unwrap();
        (ra, rb, moved)
    }

    fn field<'a>(line: &'a str, key: &str) -> &'a str {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
    }

    #[test]
    fn ping_through_switch() {
        let ((a_out, _), (b_out, b_status), moved) = pair(2048, "udp-echo 7", "ping 10.0.0.1 3");
        assert!(a_out.starts_with("GUEST-READY mac=02:00:00:00:00:0a ip=10.0.0.1/24\nUDP-ECHO listening port=7\n"), "{a_out}");
        let lines: Vec<&str> = b_out.lines().collect();
        assert_eq!(lines[0], "GUEST-READY mac=02:00:00:00:00:0b ip=10.0.0.2/24");
        for (i, l) in lines[1..4].iter().enumerate() {
            assert!(l.starts_with(&format!("PING seq={} rtt_us=", i + 1)), "{b_out}");
        }
        assert_eq!(lines[4], "PING-DONE sent=3 received=3");
        assert_eq!(b_status, 0);
        assert!(moved >= 8, "ARP + 3 echo pairs, moved {moved}");
    }

    #[test]
    fn ping_timeout_without_peer() {
        // B pings an address nobody has: ARP goes unanswered.
        let ((_, _), (b_out, b_status), _) = pair(2048, "udp-echo 7", "ping 10.0.0.9 2");
        assert!(b_out.contains("PING seq=1 timeout\nPING seq=2 timeout\nPING-DONE sent=2 received=0\n"), "{b_out}");
        assert_eq!(b_status, 0);
    }

    fn tcp_transfer(chunk: usize, b_cmd: &'static str, bytes: u64) {
        let ((a_out, a_status), (b_out, b_status), _) = pair(chunk, "tcp-sink 5001", b_cmd);
        assert_eq!(a_status, 0, "{a_out}");
        assert_eq!(b_status, 0, "{b_out}");
        let sink = a_out.lines().find(|l| l.starts_with("TCP-SINK bytes=")).expect(&a_out);
        let src = b_out.lines().find(|l| l.starts_with("TCP-SOURCE bytes=")).expect(&b_out);
        assert_eq!(field(sink, "bytes"), bytes.to_string());
        assert_eq!(field(src, "bytes"), bytes.to_string());
        assert_eq!(field(sink, "checksum"), format!("{:016x}", pattern_checksum(bytes)));
        assert_eq!(field(sink, "checksum"), field(src, "checksum"));
        let secs: f64 = field(src, "seconds").parse().unwrap();
        let gbps: f64 = field(src, "gbps").parse().unwrap();
        assert!(secs > 0.0 && gbps > 0.0, "{src}");
        assert!(a_out.contains("TCP-SINK listening port=5001\n"));
    }

    #[test]
    fn tcp_source_to_sink() {
        tcp_transfer(2048, "tcp-source 10.0.0.1 5001 8M", 8 << 20);
    }

    #[test]
    fn tcp_with_merged_rx_buffers() {
        // 600-byte receive pieces: every full-size segment spans 3 buffers (num_buffers = 3).
        tcp_transfer(600, "tcp-source 10.0.0.1 5001 10000019", 10_000_019);
    }

    #[test]
    fn udp_echo_replies() {
        let a = MockDevice::new(DRIVER_FEATURES, 256, [2, 0, 0, 0, 0, 0xa]);
        let b = MockDevice::new(DRIVER_FEATURES, 256, [2, 0, 0, 0, 0, 0xb]);
        let stop = Arc::new(AtomicBool::new(false));
        let sw = spawn_switch(a.clone(), b.clone(), 2048, stop.clone());
        let ga = spawn_guest(a, [10, 0, 0, 1], "udp-echo 7", stop.clone());
        // B: a UDP client on the same Stack, sending 20 datagrams of growing size to A:7.
        let net = unsafe { VirtioNet::init(MockTransport(b), zeroed_static::<NetMem>(), [0; 6]) }.unwrap();
        let cfg = NetConfig { mac: net.mac, ip: Ipv4Addr::new(10, 0, 0, 2), prefix_len: 24, gateway: None, seed: 7 };
        let env = TestEnv { start: std::time::Instant::now(), stop: stop.clone() };
        let bufs = unsafe { &mut *zeroed_static::<SocketBufs>() };
        let mut meta = SocketMeta::new();
        let mut storage = [SocketStorage::EMPTY; 1];
        let mut st = Stack::new(net, env, &cfg, &mut storage[..]);
        let rx = udp::PacketBuffer::new(&mut meta.udp_rx[..], &mut bufs.udp_rx[..]);
        let tx = udp::PacketBuffer::new(&mut meta.udp_tx[..], &mut bufs.udp_tx[..]);
        let mut sock = udp::Socket::new(rx, tx);
        sock.bind(40000).unwrap();
        let h = st.sockets.add(sock);
        let peer = (IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), 7);
        let mut got = Vec::new();
        let end = st.now_us() + 10_000_000;
        for i in 0..20usize {
            let len = 1 + i * 73; // up to 1388 bytes
            let mut msg = vec![0u8; len];
            fill_pattern(&mut msg, i as u64);
            st.sockets.get_mut::<udp::Socket>(h).send_slice(&msg, peer).unwrap();
            loop {
                st.poll();
                let mut buf = [0u8; 2048];
                if let Ok((n, m)) = st.sockets.get_mut::<udp::Socket>(h).recv_slice(&mut buf) {
                    assert_eq!(m.endpoint.port, 7);
                    assert_eq!(&buf[..n], &msg[..]);
                    got.push(n);
                    break;
                }
                assert!(st.now_us() < end, "no echo for datagram {i}");
                std::thread::yield_now();
            }
        }
        assert_eq!(got.len(), 20);
        stop.store(true, Ordering::Relaxed);
        let (a_out, a_status) = ga.join().unwrap();
        sw.join().unwrap();
        assert_eq!(a_status, 0);
        assert!(a_out.ends_with("UDP-ECHO listening port=7\n"), "{a_out}");
    }
}
