//! smoltcp glue: a `phy::Device` over the virtio-net driver, the interface, and the poll/idle
//! loop primitives the programs use.
use crate::hw;
use crate::util::TscScale;
use crate::virtio::{RxQueue, Transport, TxQueue, VirtioNet, MAX_FRAME};
use core::net::Ipv4Addr;
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// Keep polling (no idle exit) for this long after the last frame moved: an idle exit costs
/// tens of microseconds, more than a round trip through the switch.
pub const SPIN_US: u64 = 200;
/// Longest single idle wait (port 0x502), in milliseconds.
pub const MAX_IDLE_MS: u64 = 10;

/// Time and idling, so the same loops run in the guest and in host tests.
pub trait Env {
    /// Monotonic microseconds.
    fn now_us(&self) -> u64;
    /// Block until a backend signal or `ms` milliseconds (the guest: port 0x502).
    fn idle(&mut self, ms: u32);
    /// Host tests stop endless programs with this; the guest never stops.
    fn should_stop(&self) -> bool {
        false
    }
}

/// The real guest environment: rdtsc clock scaled by BootInfo.tsc_khz, idle through port 0x502.
pub struct GuestEnv {
    tsc0: u64,
    scale: TscScale,
}

impl GuestEnv {
    pub fn new(tsc_khz: u64) -> Self {
        GuestEnv { tsc0: hw::rdtsc(), scale: TscScale::new(tsc_khz) }
    }
}

impl Env for GuestEnv {
    #[inline]
    fn now_us(&self) -> u64 {
        self.scale.ticks_to_us(hw::rdtsc().wrapping_sub(self.tsc0))
    }

    fn idle(&mut self, ms: u32) {
        hw::idle_wait(ms)
    }
}

pub struct RxTok<'a, T: Transport>(&'a mut RxQueue<T>);
pub struct TxTok<'a, T: Transport>(&'a mut TxQueue<T>);

impl<T: Transport> phy::RxToken for RxTok<'_, T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        self.0.consume(f).expect("receive token without a ready frame")
    }
}

impl<T: Transport> phy::TxToken for TxTok<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.send(len, f)
    }
}

impl<T: Transport> phy::Device for VirtioNet<T> {
    type RxToken<'a>
        = RxTok<'a, T>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a, T>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.rx.poll_ready() {
            return None;
        }
        // A reply built from this token with the transmit ring full is dropped (counted).
        Some((RxTok(&mut self.rx), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.can_send() {
            Some(TxTok(&mut self.tx))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = None;
        caps
    }
}

/// Addressing from BootInfo (MAC: the device's, if it offers one).
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub seed: u64,
}

/// Device + interface + sockets + environment, and the poll / wait loop steps.
pub struct Stack<'s, T: Transport, E: Env> {
    pub dev: VirtioNet<T>,
    pub iface: Interface,
    pub sockets: SocketSet<'s>,
    pub env: E,
    last_activity_us: u64,
    activity: u64,
    /// Idle waits taken (port 0x502 writes in the guest).
    pub idles: u64,
}

impl<'s, T: Transport, E: Env> Stack<'s, T, E> {
    pub fn new(mut dev: VirtioNet<T>, env: E, cfg: &NetConfig, storage: &'s mut [SocketStorage<'s>]) -> Self {
        let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
        c.random_seed = cfg.seed;
        let now = env.now_us();
        let mut iface = Interface::new(c, &mut dev, Instant::from_micros(now as i64));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.ip), cfg.prefix_len));
        });
        if let Some(gw) = cfg.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Stack {
            dev,
            iface,
            sockets: SocketSet::new(storage),
            env,
            last_activity_us: now,
            activity: 0,
            idles: 0,
        }
    }

    #[inline]
    pub fn now_us(&self) -> u64 {
        self.env.now_us()
    }

    /// One poll round: process every received frame, send what the sockets have, notify the
    /// device if it asked. Returns whether any frame moved.
    pub fn poll(&mut self) -> bool {
        let now = self.env.now_us();
        self.iface.poll(Instant::from_micros(now as i64), &mut self.dev, &mut self.sockets);
        self.dev.flush();
        let a = self.dev.activity();
        if a != self.activity {
            self.activity = a;
            self.last_activity_us = now;
            true
        } else {
            false
        }
    }

    /// Nothing happened in the last round: keep spinning for a short while after recent
    /// traffic, otherwise idle in the VMM until a backend signal, smoltcp's next timer, the
    /// caller's `deadline_us` or MAX_IDLE_MS, whichever comes first (at least 1 ms; with less
    /// than 1 ms to wait, keep polling).
    pub fn wait(&mut self, deadline_us: Option<u64>) {
        let now = self.env.now_us();
        if now.saturating_sub(self.last_activity_us) < SPIN_US {
            return;
        }
        let mut delay_us = match self.iface.poll_delay(Instant::from_micros(now as i64), &self.sockets) {
            Some(d) => d.total_micros(),
            None => u64::MAX,
        };
        if let Some(dl) = deadline_us {
            delay_us = delay_us.min(dl.saturating_sub(now));
        }
        if delay_us < 1000 {
            return;
        }
        let ms = (delay_us / 1000).min(MAX_IDLE_MS) as u32;
        if !self.dev.arm() {
            self.idles += 1;
            self.env.idle(ms);
        }
        self.dev.disarm();
    }

    /// Poll until the device has taken every transmitted frame (or `max_us` passed), so that
    /// the last packets are out before power-off.
    pub fn drain_tx(&mut self, max_us: u64) {
        let end = self.env.now_us() + max_us;
        loop {
            let busy = self.poll();
            self.dev.tx.reclaim();
            if self.dev.tx.free_slots() == self.dev.tx.q.size() || self.env.now_us() >= end {
                return;
            }
            if !busy {
                self.wait(Some(end));
            }
        }
    }
}
