//! What a guest sees of an upgrade: frames lost and the gap in traffic across
//! `patchbay-switch --takeover` (in place) and across a plain restart (stop, start; the
//! frontend reconnects), measured in the same run.
//!
//! Two guests are played by Patchbay's test frontend (`TestPort`) listening on their sockets
//! (the vhost-user server side, as QEMU with `server=on` or testpmd's `server=1`); the
//! switch's ports are in client mode and dial them, so after a restart the new switch
//! reconnects by itself. Guest a sends a sequenced stream to guest b at a fixed rate (open
//! loop, paced every 100 µs) through a transmit queue like a Linux qdisc (1000 frames:
//! frames the ring cannot take yet wait there; beyond it they are dropped and counted as
//! lost). b records each frame's arrival; its receive ring (1024) is larger than a's
//! transmit ring (256), so the burst after a pause always fits. Per event: frames lost (sent
//! into the switch or dropped for want of queue, never received), the longest gap between
//! two arrivals, and the most frames queued.
//!
//! The generator is not what is measured here: it runs at a rate far below what it and the
//! switch can do, so the figures are the switch's (a restart's downtime, a takeover's
//! pause). For throughput beside other switches see `benches/peers.sh`.
//!
//! Settings (environment): `PATCHBAY_UPGRADE_ROUNDS` (default 3: that many takeovers and
//! restarts, interleaved), `PATCHBAY_UPGRADE_PPS` (default 100000).
//!
//! Run with `cargo build --release -p patchbay-switch && cargo bench -p patchbay-benches
//! --bench upgrade`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patchbay_tests::frames::{frame, mac};
use patchbay_tests::frontend::{FrontendConfig, TestPort};
use patchbay_tests::switch::{write_config_file, SwitchProcess, TestDir};

/// A Linux qdisc's default length (txqueuelen 1000).
const QUEUE: usize = 1000;
/// Pacing interval of the generator.
const TICK: Duration = Duration::from_micros(100);
const FRAME_LEN: usize = 128;
/// How long the frames generated last are given to arrive before they are counted.
const SETTLE: Duration = Duration::from_millis(50);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The two guests and the stream between them.
struct Guests {
    dir: PathBuf,
    a: TestPort,
    b: TestPort,
    pps: u64,
    /// Sequence number of the next frame to generate.
    next: u32,
    queue: VecDeque<u32>,
    dropped_at_queue: u64,
    /// Arrival time of every frame received, by sequence number.
    arrived: Vec<Option<Instant>>,
    started: Instant,
    most_queued: usize,
}

/// Listens on both guests' sockets (as QEMU with `server=on` does again after a
/// disconnect) and returns once the switch `start` starts has connected to both.
fn accept_both(
    dir: &Path,
    start: impl FnOnce() -> SwitchProcess,
) -> (TestPort, TestPort, SwitchProcess) {
    let accept = |name: &str| {
        let mut cfg = FrontendConfig::new(dir.join(format!("{name}.sock")));
        if name == "b" {
            // The receiver's ring holds a whole transmit ring and more: the burst after a
            // pause never finds it full (that drop would be the receiver's, not the event's).
            cfg.queue_size = 1024;
        }
        std::thread::spawn(move || {
            TestPort::listen_and_accept(cfg, Duration::from_secs(20)).expect("the switch connects")
        })
    };
    let (a, b) = (accept("a"), accept("b"));
    // Listening before the switch starts, so its first dial finds them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(dir.join("a.sock").exists() && dir.join("b.sock").exists()) {
        assert!(Instant::now() < deadline, "the guests listen");
        std::thread::sleep(Duration::from_millis(1));
    }
    let switch = start();
    let a = a.join().expect("guest a");
    let b = b.join().expect("guest b");
    (a, b, switch)
}

impl Guests {
    /// Generates what is due, hands the ring as much of the queue as it takes, receives.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.tick();
            std::thread::sleep(TICK);
        }
    }

    fn tick(&mut self) {
        let due = (self.started.elapsed().as_secs_f64() * self.pps as f64) as u32;
        while self.next < due {
            if self.queue.len() < QUEUE {
                self.queue.push_back(self.next);
            } else {
                self.dropped_at_queue += 1;
            }
            self.next += 1;
        }
        self.most_queued = self.most_queued.max(self.queue.len());
        if !self.queue.is_empty() {
            let frames: Vec<Vec<u8>> = self
                .queue
                .iter()
                .take(64)
                .map(|&s| frame(mac(2), mac(1), s, FRAME_LEN))
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            // A dead connection takes nothing: the frames stay queued.
            let sent = self.a.send_batch(&refs).unwrap_or(0);
            self.queue.drain(..sent);
        }
        let now = Instant::now();
        let arrived = &mut self.arrived;
        let _ = self.b.recv_batch(&mut |f: &[u8]| {
            let seq = u32::from_be_bytes([f[14], f[15], f[16], f[17]]) as usize;
            if arrived.len() <= seq {
                arrived.resize(seq + 1, None);
            }
            arrived[seq] = Some(now);
        });
    }

    /// Frames lost among `from..to` and the longest time in which none of them arrived.
    /// Call it a while after `to` was generated: frames still on their way are not lost.
    fn account(&self, from: u32, to: u32) -> (u64, Duration) {
        let mut times: Vec<Instant> = Vec::with_capacity((to - from) as usize);
        let mut lost = 0;
        for seq in from..to {
            match self.arrived.get(seq as usize).copied().flatten() {
                Some(t) => times.push(t),
                None => lost += 1,
            }
        }
        times.sort_unstable();
        let gap = times
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        (lost, gap)
    }
}

struct Event {
    kind: &'static str,
    lost: u64,
    gap: Duration,
    most_queued: usize,
    /// How the switch put it (takeover: request to serving).
    note: String,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = env_or("PATCHBAY_UPGRADE_ROUNDS", 3);
    let pps: u64 = env_or("PATCHBAY_UPGRADE_PPS", 100_000);
    let dir = TestDir::new("bench-upgrade");
    let config = write_config_file(&dir, "", &[("a", "client", 10), ("b", "client", 10)]);
    let (a, b, mut switch) = accept_both(&dir.path, || SwitchProcess::start(&config, false));
    let mut g = Guests {
        dir: dir.path.clone(),
        a,
        b,
        pps,
        next: 0,
        queue: VecDeque::new(),
        dropped_at_queue: 0,
        arrived: Vec::new(),
        started: Instant::now(),
        most_queued: 0,
    };
    // b's address learned (its frames are not part of the stream).
    g.b.send(&frame(mac(1), mac(2), u32::MAX, 64))
        .expect("send");
    g.run_for(Duration::from_millis(500));
    let warm = g.next;
    g.run_for(SETTLE);
    let (warm_lost, _) = g.account(0, warm);
    println!(
        "upgrade: {pps} frames/s of {FRAME_LEN} bytes from a to b, queue {QUEUE} frames; \
         warm-up: {warm} frames, {warm_lost} lost"
    );

    let mut events = Vec::new();
    let mut from = warm;
    for round in 0..rounds {
        for kind in ["takeover", "restart"] {
            g.most_queued = 0;
            let note;
            if kind == "takeover" {
                let mut next = SwitchProcess::start(&config, true);
                let line = loop {
                    g.tick();
                    if let Some(l) = next.wait_log("takeover complete", Duration::ZERO) {
                        break l;
                    }
                    assert!(next.is_running(), "the new switch died: {:?}", next.log);
                    std::thread::sleep(TICK);
                };
                note = line.split("serving ").nth(1).unwrap_or(&line).to_string();
                assert!(
                    switch
                        .wait_exit(Duration::from_secs(10))
                        .is_some_and(|s| s.success()),
                    "the old switch exits"
                );
                switch = next;
            } else {
                let stopped = Instant::now();
                drop(switch); // SIGTERM, waits for the exit
                              // The guests wait for the new switch (their queue keeps what it had; the
                              // dead connection's rings are gone with it).
                let (a, b, s) = accept_both(&g.dir, || SwitchProcess::start(&config, false));
                g.a = a;
                g.b = b;
                switch = s;
                note = format!("stop to both guests reconnected {:?}", stopped.elapsed());
            }
            g.run_for(Duration::from_millis(700));
            let to = g.next;
            // The last frames arrive; they count for the next event.
            g.run_for(SETTLE);
            let (lost, gap) = g.account(from, to);
            println!(
                "round {round} {kind}: {lost} frames lost of {}, longest gap {gap:?}, \
                 at most {} frames queued; {note}",
                to - from,
                g.most_queued
            );
            from = to;
            events.push(Event {
                kind,
                lost,
                gap,
                most_queued: g.most_queued,
                note,
            });
        }
    }
    println!("\n| event | frames lost (at {pps} frames/s) | longest gap | most queued | switch's own account |");
    println!("|---|---|---|---|---|");
    for e in &events {
        println!(
            "| {} | {} | {:.1} ms | {} | {} |",
            e.kind,
            e.lost,
            e.gap.as_secs_f64() * 1e3,
            e.most_queued,
            e.note
        );
    }
    println!(
        "dropped at the generator's queue in all: {}",
        g.dropped_at_queue
    );
}
