//! The dataplane threads. Each worker serves a set of transmit queues: queue pair `k` of port
//! `p` belongs to worker `(p + k) mod workers`, so one guest's queue pairs spread over the
//! workers; and the receive sides of host ports that offer them to the workers (an AF_XDP
//! uplink's rings: `HostIngress`), port `p` to worker `p mod workers`. One batch per queue
//! per round, so no queue can hold a worker for long. Two modes, one loop:
//!
//! - poll (`poll_cpus`): one worker pinned to each listed CPU, spinning;
//! - event (the default, `event_threads` workers): the same loop while there is work; after
//!   [`IDLE_ROUNDS`] rounds without any, the worker re-enables the guests' kicks (EVENT_IDX
//!   aware), checks the rings once more, and sleeps in epoll on the kick eventfds, the host
//!   ports' sockets and its doorbell (rung when a port's rings or sockets change). Idle, it
//!   costs nothing; under load it never sleeps and runs as the poller does.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::dataplane::{self, Fabric, HostIngress, TxScratch};
use crate::port::{Doorbell, Link, Port};

/// Empty rounds (every port of the worker looked at, nothing found) before an event-mode
/// worker goes to sleep: a few tens of microseconds, so a burst that pauses briefly (a guest
/// refilling, a closed loop turning round) does not cost a kick and a wake-up.
pub const IDLE_ROUNDS: u32 = 256;

/// Rounds between two looks at which ports a worker serves (ports come and go rarely; the
/// doorbell also makes a sleeping worker look at once).
const RESCAN_ROUNDS: u32 = 1024;

/// What a worker's epoll watches for one queue: the port, the queue pair, its connection and
/// the kick fd's generation. A different list means a fresh epoll (ports or queues came or
/// went, a kick fd changed).
type Registration = (crate::mac_table::PortId, usize, Option<(u64, u64)>);

/// A transmit queue a worker serves.
struct Served {
    port: Arc<Port>,
    queue: usize,
}

impl Served {
    fn registration(&self) -> Registration {
        let generation = self.port.with_link(|l| {
            let kick = l.pair(self.queue).map_or(0, |p| p.kick_generation());
            (l.serial, kick)
        });
        (self.port.id, self.queue, generation)
    }

    /// The epoll key of this queue's kick fd.
    fn key(&self) -> u64 {
        (u64::from(self.port.id) << 16) | self.queue as u64
    }
}

/// The queue number in a host port's registration (its receive side, not a queue pair).
const HOST_QUEUE: usize = 0xffff;

/// A host port's receive side a worker serves (an AF_XDP uplink): port `p` belongs to
/// worker `p mod workers`.
struct ServedHost {
    port: Arc<Port>,
    ingress: Arc<dyn HostIngress>,
}

impl ServedHost {
    /// Its registration (the generation of its descriptors) and the descriptors.
    fn registration(&self) -> (Registration, Vec<std::os::fd::RawFd>) {
        let mut fds = Vec::new();
        let generation = self.ingress.wait_fds(&mut fds);
        ((self.port.id, HOST_QUEUE, Some((generation, 0))), fds)
    }

    fn key(&self) -> u64 {
        (u64::from(self.port.id) << 16) | HOST_QUEUE as u64
    }
}

/// A worker's epoll and what it was built for.
struct Sleeper {
    epoll: Epoll,
    registered: Vec<Registration>,
    /// Registrations whose kick fd reported a hang-up or error (a pipe whose writer went
    /// away, say): left out until the fd changes, or the worker would wake forever.
    muted: Vec<Registration>,
}

/// What one worker does: which of the switch's ports it serves, and how it waits.
pub struct Worker {
    pub index: usize,
    pub workers: usize,
    /// Poll mode: the CPU to pin to. Event mode: None.
    pub cpu: Option<usize>,
    /// Its busy time and sleeps, read by the metrics endpoint.
    pub stats: Arc<WorkerStats>,
}

/// How a worker spends its time, for the metrics endpoint: `rate(busy_seconds)` is the
/// share of the thread's time spent on rounds that found work (a poll-mode worker spins the
/// rest; an event-mode one sleeps part of it), the figure OVS shows as a PMD's processing
/// cycles. A worker flushes its busy time at the end of each busy stretch and at least every
/// [`RESCAN_ROUNDS`] rounds, so a scrape lags the thread by at most that much.
#[derive(Debug)]
pub struct WorkerStats {
    /// The thread's name (`dataplane-N` or `poll-CPU`), the metrics' `thread` label.
    pub thread: String,
    busy_ns: AtomicU64,
    sleeps: AtomicU64,
}

impl WorkerStats {
    pub fn new(index: usize, cpu: Option<usize>) -> Self {
        let thread = match cpu {
            Some(cpu) => format!("poll-{cpu}"),
            None => format!("dataplane-{index}"),
        };
        WorkerStats {
            thread,
            busy_ns: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
        }
    }

    /// Nanoseconds spent on rounds that found work.
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }

    /// Seconds spent on rounds that found work.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_ns() as f64 / 1e9
    }

    /// Times the worker went to sleep in epoll (event mode).
    pub fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::Relaxed)
    }
}

/// Times a worker's busy stretches: the clock is read once per idle round (the thread has
/// nothing better to do) and at most once per [`RESCAN_ROUNDS`] rounds under load, never per
/// frame or per batch.
struct BusyClock<'a> {
    stats: &'a WorkerStats,
    /// When the current busy stretch began (the start of its first round).
    busy_since: Option<Instant>,
    /// When the current round began, read only while idle.
    round_start: Option<Instant>,
}

impl<'a> BusyClock<'a> {
    fn new(stats: &'a WorkerStats) -> Self {
        BusyClock {
            stats,
            busy_since: None,
            round_start: None,
        }
    }

    /// A round begins.
    fn round(&mut self) {
        if self.busy_since.is_none() {
            self.round_start = Some(Instant::now());
        }
    }

    /// The round just run found work (`true`) or none.
    fn ended(&mut self, busy: bool) {
        match (busy, self.busy_since) {
            (true, None) => self.busy_since = self.round_start.take(),
            (false, Some(since)) => {
                self.add(since.elapsed());
                self.busy_since = None;
            }
            _ => {}
        }
    }

    /// Publishes the stretch so far (a long busy stretch shows up before it ends).
    fn flush(&mut self) {
        if let Some(since) = self.busy_since {
            let now = Instant::now();
            self.add(now.duration_since(since));
            self.busy_since = Some(now);
        }
    }

    fn add(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.stats.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Worker {
    pub fn spawn(
        self,
        fabric: Arc<Fabric>,
        doorbell: Arc<Doorbell>,
    ) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name(self.stats.thread.clone())
            .spawn(move || self.run(&fabric, &doorbell))
    }

    fn run(&self, fabric: &Fabric, doorbell: &Doorbell) {
        if let Some(cpu) = self.cpu {
            let mut set = nix::sched::CpuSet::new();
            if set.set(cpu).is_ok() {
                if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
                    log::warn!("poller {}: cannot pin to CPU {cpu}: {e}", self.index);
                }
            }
            log::info!("poller {} running on CPU {cpu}", self.index);
        }
        let mut served: Vec<Served> = Vec::new();
        let mut hosts: Vec<ServedHost> = Vec::new();
        // This thread's work space (per-thread state: nothing shared, nothing locked).
        let mut scratch = TxScratch::default();
        let mut epoll = None;
        let mut rounds = 0u32;
        let mut idle = 0u32;
        let mut clock = BusyClock::new(&self.stats);
        while !fabric.is_stopping() {
            if rounds.is_multiple_of(RESCAN_ROUNDS) {
                clock.flush();
                self.rescan(fabric, &mut served, &mut hosts);
            }
            rounds = rounds.wrapping_add(1);
            clock.round();
            let mut work = 0;
            for s in &served {
                work += s
                    .port
                    .with_link(|link| {
                        // Pairs past the first are served once the guest enables them (one
                        // atomic load each round until then).
                        if s.queue > 0 && !link.pair(s.queue).is_some_and(|p| p.tx_up()) {
                            return 0;
                        }
                        s.port
                            .guard_dataplane(|| {
                                dataplane::drain_tx(fabric, &s.port, link, s.queue, &mut scratch)
                            })
                            .unwrap_or_else(|| {
                                // A batch that panicked left its scratch as it was, with
                                // the port policies it read (a policy change waits for them).
                                scratch = TxScratch::default();
                                0
                            })
                    })
                    .unwrap_or(0);
            }
            for h in &hosts {
                work += h
                    .port
                    .guard_dataplane(|| {
                        dataplane::receive_host(fabric, &h.port, &*h.ingress, &mut scratch)
                    })
                    .unwrap_or(0);
            }
            clock.ended(work > 0);
            if work > 0 {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if self.cpu.is_some() {
                if idle > IDLE_ROUNDS
                    && hosts.is_empty()
                    && served.iter().all(|s| !s.port.has_link())
                {
                    // Nothing connected: don't burn the CPU.
                    thread::sleep(Duration::from_millis(1));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            if idle < IDLE_ROUNDS {
                std::hint::spin_loop();
                continue;
            }
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            if self.sleep(doorbell, &served, &hosts, &mut epoll) {
                rounds = 0; // rescan: the doorbell rang
            }
            idle = 0;
        }
    }

    /// Re-reads which queues this worker serves: of every port's queue pairs, those that are
    /// its share and that the guest enabled (pair 0 always, so a guest is served from its
    /// first frame).
    fn rescan(&self, fabric: &Fabric, served: &mut Vec<Served>, hosts: &mut Vec<ServedHost>) {
        served.clear();
        hosts.clear();
        for port in fabric.ports().iter().flatten() {
            if usize::from(port.id) % self.workers != self.index {
                continue;
            }
            if let Some(ingress) = fabric.host_ingress(port) {
                hosts.push(ServedHost {
                    port: port.clone(),
                    ingress,
                });
            }
        }
        for port in fabric.ports().iter().flatten().filter(|p| !p.is_tunnel()) {
            for queue in 0..port.config.queue_pairs() {
                let up = queue == 0
                    || port
                        .with_link(|l| l.pair(queue).is_some_and(|p| p.tx_up()))
                        .unwrap_or(false);
                if up && (usize::from(port.id) + queue) % self.workers == self.index {
                    served.push(Served {
                        port: port.clone(),
                        queue,
                    });
                }
            }
        }
    }

    /// Arms every served ring's kicks and sleeps until a kick or the doorbell. Returns true
    /// if the doorbell rang (ports or rings changed).
    fn sleep(
        &self,
        doorbell: &Doorbell,
        served: &[Served],
        hosts: &[ServedHost],
        epoll: &mut Option<Sleeper>,
    ) -> bool {
        const DOORBELL: u64 = u64::MAX;
        let mut current: Vec<Registration> = served.iter().map(Served::registration).collect();
        let host_regs: Vec<_> = hosts.iter().map(ServedHost::registration).collect();
        current.extend(host_regs.iter().map(|(r, _)| *r));
        // A fresh epoll whenever what it watches changed, so a closed fd whose number was
        // reused by another port can never leave a stale registration behind.
        if epoll.as_ref().is_none_or(|e| e.registered != current) {
            let Ok(fresh) = Epoll::new() else {
                log::error!("dataplane worker {}: cannot create epoll", self.index);
                thread::sleep(Duration::from_millis(1));
                return true;
            };
            if let Some(fd) = doorbell.fd(self.index) {
                let _ = fresh.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, DOORBELL),
                );
            }
            let muted: Vec<Registration> = epoll
                .take()
                .map(|e| e.muted)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| current.contains(m))
                .collect();
            for (s, id) in served.iter().zip(&current) {
                if !muted.contains(id) {
                    s.port.with_link(|link| register_kick(&fresh, link, s));
                }
            }
            for (h, (id, fds)) in hosts.iter().zip(&host_regs) {
                if muted.contains(id) {
                    continue;
                }
                for &fd in fds {
                    if let Err(e) = fresh.ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, h.key()),
                    ) {
                        log::error!("port {}: cannot wait for its frames: {e}", h.port.name);
                    }
                }
            }
            *epoll = Some(Sleeper {
                epoll: fresh,
                registered: current,
                muted,
            });
        }
        let Some(sleeper) = epoll.as_mut() else {
            return true;
        };
        // Kicks on, then one more look: a chain added before the guest could see kicks
        // enabled would otherwise wait for the next one.
        let mut pending = false;
        for s in served {
            pending |= s
                .port
                .with_link(|l| dataplane::arm_kicks(l, s.queue))
                .unwrap_or(false);
        }
        if pending {
            return false;
        }
        let mut events = [EpollEvent::default(); 16];
        let n = match sleeper.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return false,
            Err(e) => {
                log::error!("dataplane worker {}: epoll failed: {e}", self.index);
                thread::sleep(Duration::from_millis(1));
                return true;
            }
        };
        let mut rang = false;
        for ev in &events[..n] {
            if ev.data() == DOORBELL {
                doorbell.answer(self.index);
                rang = true;
                continue;
            }
            if let Some(h) = hosts.iter().find(|h| h.key() == ev.data()) {
                if ev
                    .event_set()
                    .intersects(EventSet::HANG_UP | EventSet::ERROR)
                {
                    // A socket in error (its interface went away): not waited on until
                    // its port re-attaches; frames that come are still served while the
                    // worker is awake.
                    h.port.log_bad_input(format_args!(
                        "its receive sockets failed; not waiting on them"
                    ));
                    sleeper.muted.push(h.registration().0);
                    sleeper.registered.clear();
                }
                continue;
            }
            let Some(s) = served.iter().find(|s| s.key() == ev.data()) else {
                continue;
            };
            if ev
                .event_set()
                .intersects(EventSet::HANG_UP | EventSet::ERROR)
            {
                // Not an eventfd the frontend still writes: stop watching it (it would
                // wake this worker forever); the ring is still served while the worker is
                // awake, and a new kick fd brings it back.
                s.port.log_bad_input(format_args!(
                    "TX kick fd of queue pair {} hung up or failed; not waiting on it",
                    s.queue
                ));
                sleeper.muted.push(s.registration());
                sleeper.registered.clear(); // rebuild without it next time
                continue;
            }
            s.port.with_link(|l| {
                if let Some(pair) = l.pair(s.queue) {
                    pair.consume_tx_kick();
                }
            });
        }
        rang
    }
}

/// Registers the TX kick fd of a served queue under its key. Without a kick fd the ring is
/// served only while the worker is awake (warned about when it was set).
fn register_kick(epoll: &Epoll, link: &Link, served: &Served) {
    let Some(pair) = link.pair(served.queue) else {
        return;
    };
    let ring = pair.tx.lock().unwrap_or_else(|p| p.into_inner());
    let Some(kick) = ring.kick.as_ref() else {
        return;
    };
    if let Err(e) = epoll.ctl(
        ControlOperation::Add,
        kick.as_raw_fd(),
        EpollEvent::new(EventSet::IN, served.key()),
    ) {
        log::error!(
            "port {}: cannot watch the TX kick fd of queue pair {}: {e}",
            served.port.name,
            served.queue
        );
    }
}
