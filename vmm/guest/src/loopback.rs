//! `tcp-loopback BYTES`: the tcp-source -> tcp-sink transfer inside one guest, between two
//! smoltcp interfaces joined by an in-memory wire (no NIC, no VMM exits): the ceiling of what
//! the guest's TCP stack and one vCPU can move, to compare transfers through the switch with.
use crate::net::Env;
use crate::programs::{new_tcp_socket, send_pattern, LINGER_US, TCP_BUF, TCP_SOURCE_TIMEOUT};
use crate::util::{Fnv1a64, TransferFmt};
use crate::virtio::MAX_FRAME;
use core::fmt::Write;
use core::net::Ipv4Addr;
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// Frames one direction of the wire holds (a virtio ring's worth).
pub const WIRE_SLOTS: usize = 256;
/// The direction that carries no data (ACKs, FINs) needs little buffer.
pub const SMALL_BUF: usize = 4096;
/// The source's interface and address; the sink's is `.2` / `:02`.
pub const SOURCE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const SOURCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SINK_PORT: u16 = 5001;
/// Give up when no byte moved and no socket changed state for this long.
pub const STALL_US: u64 = 30_000_000;

/// One direction of the wire: a ring of Ethernet frames.
pub struct FrameQueue {
    head: usize,
    len: usize,
    lens: [u16; WIRE_SLOTS],
    frames: [[u8; MAX_FRAME]; WIRE_SLOTS],
    /// Where a frame goes that finds the queue full (it is dropped, like a NIC would).
    spare: [u8; MAX_FRAME],
    pub frames_moved: u64,
    pub dropped: u64,
}

impl FrameQueue {
    fn push<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let len = len.min(MAX_FRAME);
        if self.len == WIRE_SLOTS {
            self.dropped += 1;
            return f(&mut self.spare[..len]);
        }
        let slot = (self.head + self.len) % WIRE_SLOTS;
        let r = f(&mut self.frames[slot][..len]);
        self.lens[slot] = len as u16;
        self.len += 1;
        self.frames_moved += 1;
        r
    }

    fn pop<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        debug_assert!(self.len > 0);
        let slot = self.head;
        let r = f(&self.frames[slot][..self.lens[slot] as usize]);
        self.head = (self.head + 1) % WIRE_SLOTS;
        self.len -= 1;
        r
    }
}

/// Everything tcp-loopback needs, all zero at start (a `.bss` static in the guest).
pub struct LoopbackMem {
    /// source -> sink and sink -> source.
    pub to_sink: FrameQueue,
    pub to_source: FrameQueue,
    pub source_tx: [u8; TCP_BUF],
    pub source_rx: [u8; SMALL_BUF],
    pub sink_rx: [u8; TCP_BUF],
    pub sink_tx: [u8; SMALL_BUF],
}

impl LoopbackMem {
    pub const fn zeroed() -> Self {
        // SAFETY: integers and byte arrays only.
        unsafe { core::mem::zeroed() }
    }
}

/// One end of the wire as a smoltcp device: receives from `rx`, transmits into `tx`.
pub struct WireEnd<'a> {
    rx: &'a mut FrameQueue,
    tx: &'a mut FrameQueue,
}

pub struct WireRx<'a>(&'a mut FrameQueue);
pub struct WireTx<'a>(&'a mut FrameQueue);

impl phy::RxToken for WireRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        self.0.pop(f)
    }
}

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.push(len, f)
    }
}

impl phy::Device for WireEnd<'_> {
    type RxToken<'b>
        = WireRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = WireTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx.len == 0 {
            return None;
        }
        // A reply built from this token with the other direction full is dropped (counted).
        Some((WireRx(self.rx), WireTx(self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len < WIRE_SLOTS {
            Some(WireTx(self.tx))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        // The same frames as the NIC's, so the comparison with the switch path is fair.
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = None;
        caps
    }
}

fn interface(mac: [u8; 6], ip: Ipv4Addr, seed: u64, dev: &mut WireEnd<'_>, now: u64) -> Interface {
    let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    c.random_seed = seed;
    let mut iface = Interface::new(c, dev, Instant::from_micros(now as i64));
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), 24));
    });
    iface
}

/// Sends `total` bytes of the tcp-source pattern from one interface to a sink on the other,
/// prints `TCP-LOOPBACK bytes=N seconds=S gbps=G checksum=C` (the sink's count and FNV-1a of
/// what it received; timed from the connection being established to the sink having read
/// everything and the FIN) and returns the power-off status (0; 1 after `GUEST-ERROR`).
pub fn run<E: Env, W: Write>(total: u64, env: E, seed: u64, mem: &mut LoopbackMem, out: &mut W) -> u32 {
    let LoopbackMem { to_sink, to_source, source_tx, source_rx, sink_rx, sink_tx } = mem;
    let now = env.now_us();
    let mut source_if = interface(SOURCE_MAC, SOURCE_IP, seed, &mut WireEnd { rx: to_source, tx: to_sink }, now);
    let mut sink_if = interface(SINK_MAC, SINK_IP, seed ^ 0x5a5a, &mut WireEnd { rx: to_sink, tx: to_source }, now);
    let mut source_storage = [SocketStorage::EMPTY; 1];
    let mut sink_storage = [SocketStorage::EMPTY; 1];
    let mut source_set = SocketSet::new(&mut source_storage[..]);
    let mut sink_set = SocketSet::new(&mut sink_storage[..]);

    let mut sink = new_tcp_socket(&mut sink_rx[..], &mut sink_tx[..], None);
    if sink.listen(SINK_PORT).is_err() {
        let _ = writeln!(out, "GUEST-ERROR tcp-loopback: cannot listen on port {SINK_PORT}");
        return 1;
    }
    let hk = sink_set.add(sink);
    let mut source = new_tcp_socket(&mut source_rx[..], &mut source_tx[..], Some(TCP_SOURCE_TIMEOUT));
    let local_port = 49152 + (seed % 16384) as u16;
    if source.connect(source_if.context(), (IpAddress::Ipv4(SINK_IP), SINK_PORT), local_port).is_err() {
        let _ = writeln!(out, "GUEST-ERROR tcp-loopback: cannot connect");
        return 1;
    }
    let hs = source_set.add(source);

    let mut t0: Option<u64> = None;
    let mut sent = 0u64;
    let mut received = 0u64;
    let mut fnv = Fnv1a64::new();
    let mut last_progress = now;
    let mut states = (State::SynSent, State::Listen);
    let t1 = loop {
        let now = env.now_us();
        let ts = Instant::from_micros(now as i64);
        source_if.poll(ts, &mut WireEnd { rx: to_source, tx: to_sink }, &mut source_set);
        sink_if.poll(ts, &mut WireEnd { rx: to_sink, tx: to_source }, &mut sink_set);
        let (before_sent, before_received) = (sent, received);

        let src = source_set.get_mut::<tcp::Socket>(hs);
        let src_state = src.state();
        if t0.is_none() && !matches!(src_state, State::SynSent | State::SynReceived | State::Closed) {
            t0 = Some(now);
        }
        if t0.is_some() && sent < total {
            if matches!(src_state, State::Closed | State::TimeWait) {
                let _ = writeln!(out, "GUEST-ERROR tcp-loopback: connection reset after {sent} bytes sent");
                return 1;
            }
            send_pattern(src, &mut sent, total);
            if sent == total {
                src.close();
            }
        } else if t0.is_some() && total == 0 && matches!(src_state, State::Established) {
            src.close();
        }

        let snk = sink_set.get_mut::<tcp::Socket>(hk);
        while let Ok(n) = snk.recv(|b| {
            fnv.update(b);
            (b.len(), b.len())
        }) {
            if n == 0 {
                break;
            }
            received += n as u64;
        }
        let snk_state = snk.state();
        if let Some(start) = t0 {
            match snk_state {
                State::CloseWait if snk.recv_queue() == 0 => break (now, start),
                State::Closed | State::Listen if received > 0 || src_state == State::Closed => {
                    let _ = writeln!(out, "GUEST-ERROR tcp-loopback: connection reset after {received} bytes received");
                    return 1;
                }
                _ => {}
            }
        }

        if sent != before_sent || received != before_received || states != (src_state, snk_state) {
            states = (src_state, snk_state);
            last_progress = now;
        } else if now - last_progress > STALL_US {
            let _ = writeln!(out, "GUEST-ERROR tcp-loopback: stalled after {received} bytes received");
            return 1;
        }
        if env.should_stop() {
            return 1;
        }
    };
    let (t1, start) = t1;
    if received != total {
        let _ = writeln!(out, "GUEST-ERROR tcp-loopback: the sink got {received} of {total} bytes");
        return 1;
    }
    // Orderly close of both ends (bounded), then the result.
    sink_set.get_mut::<tcp::Socket>(hk).close();
    let end = t1 + LINGER_US;
    loop {
        let now = env.now_us();
        let ts = Instant::from_micros(now as i64);
        source_if.poll(ts, &mut WireEnd { rx: to_source, tx: to_sink }, &mut source_set);
        sink_if.poll(ts, &mut WireEnd { rx: to_sink, tx: to_source }, &mut sink_set);
        let a = source_set.get_mut::<tcp::Socket>(hs).state();
        let b = sink_set.get_mut::<tcp::Socket>(hk).state();
        let done = |s: State| matches!(s, State::Closed | State::TimeWait);
        if (done(a) && done(b)) || now >= end || env.should_stop() {
            break;
        }
    }
    let r = TransferFmt { bytes: received, micros: t1 - start, checksum: fnv.finish() };
    let _ = writeln!(out, "TCP-LOOPBACK {r}");
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::zeroed_static;
    use crate::util::pattern_checksum;

    struct Clock(std::time::Instant);

    impl Env for Clock {
        fn now_us(&self) -> u64 {
            self.0.elapsed().as_micros() as u64
        }
        fn idle(&mut self, _ms: u32) {
            unreachable!("tcp-loopback never idles")
        }
    }

    fn transfer(bytes: u64) -> String {
        let mem = unsafe { &mut *zeroed_static::<LoopbackMem>() };
        let mut out = String::new();
        let status = run(bytes, Clock(std::time::Instant::now()), 12345, mem, &mut out);
        assert_eq!(status, 0, "{out}");
        assert_eq!(mem.to_sink.dropped + mem.to_source.dropped, 0);
        out
    }

    fn field<'a>(line: &'a str, key: &str) -> &'a str {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
    }

    #[test]
    fn moves_the_pattern_intact() {
        for bytes in [8u64 << 20, 1_000_003, 1] {
            let out = transfer(bytes);
            let line = out.strip_prefix("TCP-LOOPBACK ").expect(&out).trim_end();
            assert_eq!(out.lines().count(), 1, "{out}");
            assert_eq!(field(line, "bytes"), bytes.to_string());
            assert_eq!(field(line, "checksum"), format!("{:016x}", pattern_checksum(bytes)));
            let secs: f64 = field(line, "seconds").parse().unwrap();
            assert!(secs > 0.0 || bytes < 1 << 20, "{line}");
            assert!(field(line, "gbps").parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn zero_bytes() {
        let out = transfer(0);
        assert!(out.starts_with("TCP-LOOPBACK bytes=0 "), "{out}");
        assert!(out.contains(&format!("checksum={:016x}", pattern_checksum(0))), "{out}");
    }

    #[test]
    fn a_full_wire_drops_and_counts() {
        let q = unsafe { &mut *zeroed_static::<FrameQueue>() };
        for i in 0..WIRE_SLOTS + 3 {
            q.push(60, |b| b[0] = i as u8);
        }
        assert_eq!((q.len, q.dropped, q.frames_moved), (WIRE_SLOTS, 3, WIRE_SLOTS as u64));
        assert_eq!(q.pop(|b| (b.len(), b[0])), (60, 0));
        q.push(100, |b| b[99] = 7);
        for i in 1..WIRE_SLOTS {
            assert_eq!(q.pop(|b| b[0]), i as u8);
        }
        assert_eq!(q.pop(|b| (b.len(), b[99])), (100, 7));
        assert_eq!(q.len, 0);
    }
}
