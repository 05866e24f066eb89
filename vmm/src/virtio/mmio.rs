//! The virtio-mmio transport, version 2 ("modern", virtio 1.x section 4.2.2): the register
//! file as a pure state machine. It knows nothing about backends: a write returns an
//! [`Action`] for the device to carry out (kick a queue, start or stop the device).
//!
//! Rules enforced here (the spec's "driver MUST"s, so a confused guest cannot put the
//! device into a state it does not expect):
//! - registers are 32 bits wide and accessed with aligned 4-byte accesses; other accesses
//!   to the register block read as zero and are ignored when written. The device-specific
//!   config space (from 0x100) accepts any width;
//! - `DriverFeatures` is writable only before `FEATURES_OK`; `FEATURES_OK` sticks only if the
//!   driver's features are a subset of the device's and include `VERSION_1`;
//! - queue registers are writable only while the selected queue is not ready, and
//!   `QueueNum` accepts a power of two no larger than `QueueNumMax`;
//! - `DRIVER_OK` without `FEATURES_OK` sets `DEVICE_NEEDS_RESET` instead of starting;
//! - writing 0 to `Status` resets everything the driver set.

use super::features::F_VERSION_1;
use super::status;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version 2: the modern (non-legacy) interface.
pub const VERSION: u32 = 2;
/// Virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Our vendor ID ("PBAY"); any value is fine for virtio-mmio.
pub const VENDOR_ID: u32 = 0x5941_4250;
/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// Register offsets.
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// `InterruptStatus` bit: a used buffer was returned.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// One queue's driver-written configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// `QueueNumMax` (fixed by the device).
    pub max_size: u16,
    /// `QueueNum`: the ring size the driver chose (0 until written).
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the driver (avail) ring.
    pub driver: u64,
    /// Guest-physical address of the device (used) ring.
    pub device: u64,
}

impl QueueConfig {
    fn reset(&mut self) {
        *self = QueueConfig {
            max_size: self.max_size,
            ..QueueConfig::default()
        };
    }
}

/// What the device must do after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the register update.
    None,
    /// The driver notified queue `n` (QueueNotify).
    Notify(u32),
    /// The driver set `DRIVER_OK`: start the device with the negotiated features and queues.
    Activate,
    /// The driver wrote 0 to `Status`: stop the device (the registers are already reset).
    Reset,
}

/// The virtio-mmio register file of one device.
#[derive(Clone, Debug)]
pub struct MmioRegs {
    device_id: u32,
    vendor_id: u32,
    device_features: u64,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    shm_sel: u32,
    config: Vec<u8>,
    /// Report a used-buffer interrupt whenever the device is active (see
    /// [`MmioRegs::set_vring_interrupt_always`]).
    vring_always: bool,
}

fn lo(v: u64) -> u32 {
    v as u32
}

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

fn set_lo(v: &mut u64, x: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(x);
}

fn set_hi(v: &mut u64, x: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(x) << 32);
}

impl MmioRegs {
    /// A device with `device_features` (must include `VERSION_1` for a driver to accept it)
    /// and one queue per entry of `queue_max_sizes`.
    pub fn new(device_id: u32, device_features: u64, queue_max_sizes: &[u16]) -> Self {
        MmioRegs {
            device_id,
            vendor_id: VENDOR_ID,
            device_features,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: queue_max_sizes
                .iter()
                .map(|&m| QueueConfig {
                    max_size: m,
                    ..QueueConfig::default()
                })
                .collect(),
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            shm_sel: 0,
            config: Vec::new(),
            vring_always: false,
        }
    }

    /// The device status as the driver last set it (plus `DEVICE_NEEDS_RESET`).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Features the driver accepted (meaningful once `FEATURES_OK` is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The device is running: `DRIVER_OK` set, and neither `FAILED` nor `DEVICE_NEEDS_RESET`.
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
    }

    /// Queue `n`'s configuration.
    pub fn queue(&self, n: usize) -> Option<&QueueConfig> {
        self.queues.get(n)
    }

    /// All queues.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// The device-specific configuration space (read by the driver from offset 0x100).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Replaces the configuration space; bumps `ConfigGeneration` if it changed.
    pub fn set_config(&mut self, config: &[u8]) {
        if self.config != config {
            self.config = config.to_vec();
            self.config_generation = self.config_generation.wrapping_add(1);
        }
    }

    /// The device cannot go on: set `DEVICE_NEEDS_RESET` and raise a config interrupt.
    pub fn set_needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt_status |= INT_CONFIG;
    }

    /// Sets `InterruptStatus` bits (the guests this VMM runs never take interrupts, but the
    /// register still reads correctly).
    pub fn raise_interrupt(&mut self, bits: u32) {
        self.interrupt_status |= bits;
    }

    /// With interrupts delivered straight from the backend (KVM irqfd on the vhost-user call
    /// eventfds) the device never sees them happen, so `InterruptStatus` reads with
    /// [`INT_VRING`] set while the device is active: the driver then checks its used rings,
    /// which is what the interrupt was for.
    pub fn set_vring_interrupt_always(&mut self, on: bool) {
        self.vring_always = on;
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue if the driver may still configure it (it is not ready).
    fn configurable_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.ready)
    }

    fn reset(&mut self) {
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(QueueConfig::reset);
        self.status = 0;
        self.interrupt_status = 0;
        self.shm_sel = 0;
    }

    /// A driver read of `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            let start = offset - reg::CONFIG;
            for (i, b) in data.iter_mut().enumerate() {
                let at = start
                    .checked_add(i as u64)
                    .and_then(|a| usize::try_from(a).ok());
                if let Some(v) = at.and_then(|a| self.config.get(a)) {
                    *b = *v;
                }
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let q = self.selected_queue();
        let v = match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => self.vendor_id,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => lo(self.device_features),
                1 => hi(self.device_features),
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS if self.vring_always && self.is_active() => {
                self.interrupt_status | INT_VRING
            }
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            // No shared memory regions: a length of -1 says "does not exist".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            // Write-only or reserved.
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A driver write of `data` at `offset`; returns what the device must do about it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        if offset >= reg::CONFIG {
            // The devices here have read-only configuration spaces.
            log::debug!("virtio-mmio: config write at {offset:#x} ignored");
            return Action::None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return Action::None;
        };
        if !offset.is_multiple_of(4) {
            return Action::None;
        }
        let v = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => set_lo(&mut self.driver_features, v),
                        1 => set_hi(&mut self.driver_features, v),
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    if v.is_power_of_two() && v <= u32::from(q.max_size) {
                        q.size = v as u16;
                    } else {
                        log::warn!("virtio-mmio: queue size {v} refused (max {})", q.max_size);
                    }
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    q.ready = v == 1;
                }
            }
            reg::QUEUE_NOTIFY => return Action::Notify(v),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => return self.write_status(v),
            reg::QUEUE_DESC_LOW => self.with_queue(|q| set_lo(&mut q.desc, v)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| set_hi(&mut q.desc, v)),
            reg::QUEUE_DRIVER_LOW => self.with_queue(|q| set_lo(&mut q.driver, v)),
            reg::QUEUE_DRIVER_HIGH => self.with_queue(|q| set_hi(&mut q.driver, v)),
            reg::QUEUE_DEVICE_LOW => self.with_queue(|q| set_lo(&mut q.device, v)),
            reg::QUEUE_DEVICE_HIGH => self.with_queue(|q| set_hi(&mut q.device, v)),
            reg::SHM_SEL => self.shm_sel = v,
            _ => log::debug!("virtio-mmio: write {v:#x} to read-only/reserved {offset:#x}"),
        }
        Action::None
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut QueueConfig)) {
        if let Some(q) = self.configurable_queue() {
            f(q);
        }
    }

    fn write_status(&mut self, v: u32) -> Action {
        if v == 0 {
            // Reported even before DRIVER_OK: a device that started anything half-way (or
            // is still starting) gets to stop it.
            self.reset();
            return Action::Reset;
        }
        let old = self.status;
        // The driver only ever adds bits; DEVICE_NEEDS_RESET is the device's own.
        let mut new = (old & status::DEVICE_NEEDS_RESET) | (v & !status::DEVICE_NEEDS_RESET);
        let added = new & !old;
        if added & status::FEATURES_OK != 0 {
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & F_VERSION_1 != 0;
            if !ok {
                log::warn!(
                    "virtio-mmio: driver features {:#x} refused (device offers {:#x})",
                    self.driver_features,
                    self.device_features
                );
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                log::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK");
                self.set_needs_reset();
                return Action::None;
            }
            if new & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0 {
                return Action::Activate;
            }
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::features::{NET_F_MAC, RING_F_EVENT_IDX};
    use crate::virtio::status::*;

    const FEATURES: u64 = F_VERSION_1 | RING_F_EVENT_IDX | NET_F_MAC;

    fn regs() -> MmioRegs {
        let mut r = MmioRegs::new(DEVICE_ID_NET, FEATURES, &[256, 256]);
        r.set_config(&[1, 2, 3, 4, 5, 6, 1, 0]);
        r
    }

    fn rd(r: &MmioRegs, off: u64) -> u32 {
        let mut b = [0u8; 4];
        r.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(r: &mut MmioRegs, off: u64, v: u32) -> Action {
        r.write(off, &v.to_le_bytes())
    }

    /// Negotiates `features` the way a driver does; returns the status read back.
    fn negotiate(r: &mut MmioRegs, features: u64) -> u32 {
        wr(r, reg::STATUS, ACKNOWLEDGE);
        wr(r, reg::STATUS, ACKNOWLEDGE | DRIVER);
        wr(r, reg::DRIVER_FEATURES_SEL, 0);
        wr(r, reg::DRIVER_FEATURES, features as u32);
        wr(r, reg::DRIVER_FEATURES_SEL, 1);
        wr(r, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(r, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        rd(r, reg::STATUS)
    }

    fn setup_queue(r: &mut MmioRegs, q: u32, base: u64) {
        wr(r, reg::QUEUE_SEL, q);
        wr(r, reg::QUEUE_NUM, 128);
        wr(r, reg::QUEUE_DESC_LOW, base as u32);
        wr(r, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        wr(r, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        wr(r, reg::QUEUE_DRIVER_HIGH, ((base + 0x1000) >> 32) as u32);
        wr(r, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        wr(r, reg::QUEUE_DEVICE_HIGH, ((base + 0x2000) >> 32) as u32);
        wr(r, reg::QUEUE_READY, 1);
    }

    #[test]
    fn identification() {
        let r = regs();
        assert_eq!(rd(&r, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&r, reg::VERSION), 2);
        assert_eq!(rd(&r, reg::DEVICE_ID), 1);
        assert_eq!(rd(&r, reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(rd(&r, reg::QUEUE_NUM_MAX), 256);
        assert_eq!(rd(&r, reg::SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&r, reg::STATUS), 0);
    }

    #[test]
    fn device_features_are_paged() {
        let mut r = regs();
        assert_eq!(rd(&r, reg::DEVICE_FEATURES), FEATURES as u32);
        wr(&mut r, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&r, reg::DEVICE_FEATURES), 1); // VERSION_1 is bit 32
        wr(&mut r, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&r, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn accepted_features_and_activation() {
        let mut r = regs();
        let st = negotiate(&mut r, F_VERSION_1 | RING_F_EVENT_IDX);
        assert_eq!(st, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r.driver_features(), F_VERSION_1 | RING_F_EVENT_IDX);
        // Features are frozen once FEATURES_OK is set.
        wr(&mut r, reg::DRIVER_FEATURES_SEL, 0);
        wr(&mut r, reg::DRIVER_FEATURES, 0);
        assert_eq!(r.driver_features(), F_VERSION_1 | RING_F_EVENT_IDX);
        setup_queue(&mut r, 0, 0x10_0000);
        setup_queue(&mut r, 1, 0x1_2000_0000);
        assert!(!r.is_active());
        let a = wr(
            &mut r,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(a, Action::Activate);
        assert!(r.is_active());
        let q1 = *r.queue(1).unwrap();
        assert_eq!(
            q1,
            QueueConfig {
                max_size: 256,
                size: 128,
                ready: true,
                desc: 0x1_2000_0000,
                driver: 0x1_2000_1000,
                device: 0x1_2000_2000,
            }
        );
        // Writing the same status again does not re-activate.
        let a = wr(
            &mut r,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(a, Action::None);
    }

    #[test]
    fn unoffered_or_legacy_features_are_refused() {
        let mut r = regs();
        // Bit 15 (MRG_RXBUF) is not offered.
        let st = negotiate(&mut r, F_VERSION_1 | (1 << 15));
        assert_eq!(st & FEATURES_OK, 0);
        wr(&mut r, reg::STATUS, 0);
        // A legacy driver (no VERSION_1).
        let st = negotiate(&mut r, NET_F_MAC);
        assert_eq!(st & FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK: the device wants a reset.
        let a = wr(&mut r, reg::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(a, Action::None);
        assert_ne!(rd(&r, reg::STATUS) & DEVICE_NEEDS_RESET, 0);
        assert_ne!(rd(&r, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert!(!r.is_active());
    }

    #[test]
    fn queue_registers_follow_queue_sel_and_ready() {
        let mut r = regs();
        setup_queue(&mut r, 0, 0x4000);
        // Ready queue: writes are ignored.
        wr(&mut r, reg::QUEUE_NUM, 64);
        wr(&mut r, reg::QUEUE_DESC_LOW, 0x9999);
        assert_eq!(r.queue(0).unwrap().size, 128);
        assert_eq!(r.queue(0).unwrap().desc, 0x4000);
        assert_eq!(rd(&r, reg::QUEUE_READY), 1);
        wr(&mut r, reg::QUEUE_READY, 0);
        wr(&mut r, reg::QUEUE_NUM, 64);
        assert_eq!(r.queue(0).unwrap().size, 64);
        // Bad sizes are refused.
        wr(&mut r, reg::QUEUE_NUM, 100);
        wr(&mut r, reg::QUEUE_NUM, 512);
        assert_eq!(r.queue(0).unwrap().size, 64);
        // Queue 1 is untouched; a queue that does not exist reads as absent.
        wr(&mut r, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&r, reg::QUEUE_READY), 0);
        wr(&mut r, reg::QUEUE_SEL, 7);
        assert_eq!(rd(&r, reg::QUEUE_NUM_MAX), 0);
        wr(&mut r, reg::QUEUE_READY, 1);
        wr(&mut r, reg::QUEUE_NUM, 2);
        assert_eq!(r.queues().len(), 2);
    }

    #[test]
    fn notify_and_interrupts() {
        let mut r = regs();
        assert_eq!(wr(&mut r, reg::QUEUE_NOTIFY, 1), Action::Notify(1));
        r.raise_interrupt(INT_VRING | INT_CONFIG);
        assert_eq!(rd(&r, reg::INTERRUPT_STATUS), 3);
        wr(&mut r, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&r, reg::INTERRUPT_STATUS), INT_CONFIG);
        wr(&mut r, reg::INTERRUPT_ACK, INT_CONFIG);
        // Interrupts straight from the backend: a running device always has used buffers to
        // report, an inactive one never.
        r.set_vring_interrupt_always(true);
        assert_eq!(rd(&r, reg::INTERRUPT_STATUS), 0);
        negotiate(&mut r, F_VERSION_1);
        wr(
            &mut r,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(rd(&r, reg::INTERRUPT_STATUS), INT_VRING);
        wr(&mut r, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&r, reg::INTERRUPT_STATUS), INT_VRING);
        wr(&mut r, reg::STATUS, 0);
        assert_eq!(rd(&r, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn reset_clears_driver_state() {
        let mut r = regs();
        negotiate(&mut r, F_VERSION_1);
        setup_queue(&mut r, 0, 0x4000);
        wr(
            &mut r,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(wr(&mut r, reg::STATUS, 0), Action::Reset);
        assert_eq!(rd(&r, reg::STATUS), 0);
        assert_eq!(r.driver_features(), 0);
        assert_eq!(
            *r.queue(0).unwrap(),
            QueueConfig {
                max_size: 256,
                ..QueueConfig::default()
            }
        );
        assert!(!r.is_active());
        // The device can be brought up again.
        assert_eq!(negotiate(&mut r, F_VERSION_1) & FEATURES_OK, FEATURES_OK);
    }

    #[test]
    fn config_space_any_width_and_generation() {
        let mut r = regs();
        let mut mac = [0u8; 6];
        r.read(reg::CONFIG, &mut mac);
        assert_eq!(mac, [1, 2, 3, 4, 5, 6]);
        let mut b = [0u8; 2];
        r.read(reg::CONFIG + 6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 1);
        // Past the end reads zero, even across the end.
        let mut b = [0xffu8; 4];
        r.read(reg::CONFIG + 6, &mut b);
        assert_eq!(b, [1, 0, 0, 0]);
        r.read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
        // Config writes are ignored.
        assert_eq!(r.write(reg::CONFIG, &[9, 9]), Action::None);
        r.read(reg::CONFIG, &mut mac);
        assert_eq!(mac, [1, 2, 3, 4, 5, 6]);
        let g = rd(&r, reg::CONFIG_GENERATION);
        r.set_config(&[1, 2, 3, 4, 5, 6, 1, 0]);
        assert_eq!(rd(&r, reg::CONFIG_GENERATION), g);
        r.set_config(&[1, 2, 3, 4, 5, 7, 1, 0]);
        assert_eq!(rd(&r, reg::CONFIG_GENERATION), g.wrapping_add(1));
    }

    #[test]
    fn odd_register_accesses_are_ignored() {
        let mut r = regs();
        let mut b = [0xffu8; 2];
        r.read(reg::MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        r.read(reg::MAGIC_VALUE + 1, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(r.write(reg::QUEUE_NOTIFY, &[1, 0]), Action::None);
        assert_eq!(r.write(reg::STATUS, &[0; 8]), Action::None);
        assert_eq!(r.write(reg::QUEUE_NOTIFY + 2, &[1, 0, 0, 0]), Action::None);
        // Writes to read-only registers change nothing.
        wr(&mut r, reg::MAGIC_VALUE, 0);
        assert_eq!(rd(&r, reg::MAGIC_VALUE), MAGIC_VALUE);
    }
}
