//! TCP bulk traffic between two vhost-user sockets of one switch, for the offload benchmark
//! (`benches/peers.sh`, variant `tso`): a source port sends a stream of TCP frames and a sink
//! port receives them, both Patchbay's own userspace frontend, on one thread on one CPU.
//!
//! Modes:
//! - `whole`: 64 KiB TCP super-frames (45 x 1448 payload bytes, partial checksum, gso_size 1448) from a source that
//!   negotiated CSUM and HOST_TSO4, to a sink with GUEST_CSUM and GUEST_TSO4: the switch passes
//!   each whole.
//! - `segment`: the same super-frames to a sink without offloads: the switch cuts them into
//!   MSS-sized segments and checksums each.
//! - `seg-csum`: the same to a sink with GUEST_CSUM only: the switch cuts them, and each
//!   segment keeps a partial checksum for the sink to finish (as NEEDS_CSUM allows).
//! - `mtu`: 1514-byte frames with full checksums between ports without offloads: what the
//!   guest's TCP stack would hand over without TSO.
//!
//! How the source keeps up: each TX buffer is written once (`TestPort::send_repeated`), after
//! which a frame costs it one descriptor whatever its size; the sink counts what arrives
//! without copying it (`TestPort::discard_batch`). Every mode keeps the same bytes in flight
//! (1024 frames of 1514 bytes, or 23 super-frames), so the switch reads its copies from a
//! working set of the same size (1.5 MB) in every mode: with a full ring of super-frames
//! (64 MB) the copies would come from memory and the mtu mode's from cache. The switch moves every byte, the source and
//! sink none, so the figure is the switch's (check the CPU shares: the switch's core should be
//! the busy one).
//!
//! Usage: tso-traffic MODE SOURCE_SOCKET SINK_SOCKET WARMUP_SECS SECS (a socket given as
//! `listen:PATH` is listened on, for a switch that connects to its guests)
//! Prints one line: `goodput_gbps=G frames=F bytes=B secs=S cpu=P largest=L` (TCP payload
//! bytes the sink received per second in the measurement window, this process's CPU share in
//! %, the largest frame the sink got). A sink without offloads that got a frame beyond 1514
//! bytes counts as 0 Gbit/s: a real guest could not take it.

use std::time::{Duration, Instant};

use patchbay_benches::thread_self_cpu;
use patchbay_tests::frames::mac;
use patchbay_tests::frontend::{FrontendConfig, TestPort, DEFAULT_FEATURES};
use patchbay_tests::offload::*;

/// Descriptors per queue.
const QUEUE_SIZE: usize = 1024;

/// TX bytes the source keeps in flight in every mode: a full ring of 1514-byte frames.
const IN_FLIGHT_BYTES: usize = QUEUE_SIZE * 1514;

/// Ethernet + IPv4 + TCP headers of every frame (no options): payload = bytes - this.
const HEADERS: u64 = 14 + 20 + 20;

/// A frontend on `socket`; `listen:PATH` listens there for a backend that connects (OVS's
/// dpdkvhostuserclient ports) instead of connecting to a backend's socket.
fn port(socket: &str, features: u64) -> TestPort {
    let listen = socket.strip_prefix("listen:");
    let mut cfg = FrontendConfig::new(listen.unwrap_or(socket));
    cfg.features = DEFAULT_FEATURES | features;
    cfg.queue_size = QUEUE_SIZE as u16;
    cfg.mem_size = 256 << 20;
    cfg.tx_buffer_size = 65536 + 256;
    cfg.timeout = Duration::from_secs(20);
    match listen {
        Some(_) => TestPort::listen_and_accept(cfg, Duration::from_secs(30)),
        None => TestPort::connect(cfg),
    }
    .unwrap_or_else(|e| panic!("connecting on {socket}: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: tso-traffic whole|segment|mtu SOURCE_SOCKET SINK_SOCKET WARMUP SECS");
        std::process::exit(2);
    }
    let mode = args[1].as_str();
    let warmup = Duration::from_secs_f64(args[4].parse().expect("warm-up seconds"));
    let secs = Duration::from_secs_f64(args[5].parse().expect("seconds"));
    let (src_features, sink_features) = match mode {
        "whole" => (CSUM | HOST_TSO4, GUEST_CSUM | GUEST_TSO4),
        "segment" => (CSUM | HOST_TSO4, 0),
        "seg-csum" => (CSUM | HOST_TSO4, GUEST_CSUM),
        "mtu" => (0, 0),
        other => panic!("unknown mode {other}"),
    };
    let mut src = port(&args[2], src_features);
    let mut sink = port(&args[3], sink_features);
    // The sink speaks first, so a learning switch knows where its address is.
    let hello = ip_frame(mac(1), mac(2), false, L4::Udp, None, &[0; 18]);
    sink.send(&hello).expect("sink's first frame");

    let (hdr, frame) = match mode {
        "mtu" => (
            NetHdr::default(),
            ip_frame(mac(2), mac(1), false, L4::Tcp, None, &payload(1460, 1)),
        ),
        // 45 segments of 1448 bytes, as Linux builds its largest TSO frames at that MSS
        // (DPDK's vhost, under OVS, cannot take a frame of the full 64 KiB: its buffer
        // length is 16 bits, headroom included).
        _ => offloaded(
            ip_frame(mac(2), mac(1), false, L4::Tcp, None, &payload(45 * 1448, 1)),
            Some(1448),
        ),
    };
    let hdr = header_bytes(&hdr);
    // Every mode keeps the same bytes in flight (what the mtu mode's full ring holds), so
    // the switch copies from a working set of the same size whatever the frame size.
    let in_flight = (IN_FLIGHT_BYTES / frame.len()).clamp(1, QUEUE_SIZE);
    let start = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut window: Option<(Instant, f64, u64, u64)> = None;
    loop {
        let now = Instant::now();
        if window.is_none() && now - start >= warmup {
            window = Some((now, thread_self_cpu(), frames, bytes));
        }
        if let Some((t0, _, _, _)) = window {
            if now - t0 >= secs {
                break;
            }
        }
        src.send_repeated(&hdr, &frame, 1, in_flight).expect("send");
        let (f, b) = sink.discard_batch().expect("receive");
        frames += f;
        bytes += b;
    }
    let (t0, cpu0, f0, b0) = window.expect("measured");
    let dt = t0.elapsed().as_secs_f64();
    let (f, b) = (frames - f0, bytes - b0);
    let goodput = (b.saturating_sub(f * HEADERS)) as f64 * 8.0 / dt / 1e9;
    // A sink without GUEST_TSO must never get a frame beyond its MTU: count such a switch's
    // output as nothing (a real guest would drop or mangle it).
    let largest = sink.largest_discarded();
    let goodput = if sink_features & GUEST_TSO4 == 0 && largest > 1514 {
        eprintln!("the sink without TSO received frames of up to {largest} bytes: not counted");
        0.0
    } else {
        goodput
    };
    println!(
        "goodput_gbps={goodput:.3} frames={f} bytes={b} secs={dt:.3} cpu={:.1} largest={largest}",
        100.0 * (thread_self_cpu() - cpu0) / dt
    );
}
