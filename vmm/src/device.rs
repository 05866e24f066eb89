//! The seam between the vCPU loop and MMIO devices (the virtio-mmio NICs of `src/virtio/`).

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::abi::{MAX_VIRTIO, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};

/// A device on the VM's MMIO bus. Called from the vCPU thread on MMIO exits, with `offset`
/// relative to the device's base; devices use interior mutability.
pub trait Device: Send + Sync {
    /// A guest read of `data.len()` bytes (1, 2, 4 or 8) at `offset`.
    fn mmio_read(&self, offset: u64, data: &mut [u8]);

    /// A guest write of `data` at `offset`.
    fn mmio_write(&self, offset: u64, data: &[u8]);

    /// Eventfds the backend signals (the vhost-user call fds). While the guest says it is idle
    /// (port 0x502) the VMM polls them, then reads (drains) each that fired before resuming the
    /// guest. An empty list is fine (not started yet).
    fn call_fds(&self) -> Vec<RawFd>;

    /// Fds whose hang-up means the backend is gone (e.g. the vhost-user socket). A VMM thread
    /// polls them for POLLRDHUP/POLLHUP/POLLERR only (never POLLIN, so it does not steal
    /// replies) for the whole run; a hang-up ends the VM with exit status 4. Queried once, when
    /// the VM starts running.
    fn hangup_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// `Some(reason)` once the device has lost its backend (e.g. a vhost-user message failed).
    /// Checked after each MMIO access to the device and after idle waits; the VM then ends with
    /// exit status 4.
    fn backend_lost(&self) -> Option<String> {
        None
    }
}

/// Where device `index` lives: its MMIO window and (for Linux guests) its interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    pub index: usize,
    pub mmio_base: u64,
    pub mmio_size: u64,
    /// GSI for Linux guests (the `virtio_mmio.device=4K@BASE:IRQ` entry); the CPL-3 guest
    /// never takes interrupts.
    pub irq: u32,
}

/// First GSI handed to virtio-mmio devices (4 is COM1).
pub const FIRST_DEVICE_IRQ: u32 = 5;

impl DeviceSlot {
    pub fn new(index: usize) -> DeviceSlot {
        DeviceSlot {
            index,
            mmio_base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
            mmio_size: VIRTIO_MMIO_SIZE,
            irq: FIRST_DEVICE_IRQ + index as u32,
        }
    }

    /// The kernel command-line entry that announces this device to Linux.
    pub fn linux_cmdline(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.mmio_size / 1024,
            self.mmio_base,
            self.irq
        )
    }
}

/// The MMIO bus: maps exit addresses to devices.
#[derive(Default, Clone)]
pub struct MmioBus {
    devices: Vec<(DeviceSlot, Arc<dyn Device>)>,
}

impl MmioBus {
    pub fn new() -> MmioBus {
        MmioBus::default()
    }

    /// The slot the next device gets.
    pub fn next_slot(&self) -> Option<DeviceSlot> {
        (self.devices.len() < MAX_VIRTIO).then(|| DeviceSlot::new(self.devices.len()))
    }

    /// Adds a device in the next slot and returns the slot; `None` when all are taken.
    pub fn add(&mut self, device: Arc<dyn Device>) -> Option<DeviceSlot> {
        let slot = self.next_slot()?;
        self.devices.push((slot, device));
        Some(slot)
    }

    pub fn devices(&self) -> impl Iterator<Item = &(DeviceSlot, Arc<dyn Device>)> {
        self.devices.iter()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<dyn Device>)> {
        self.devices.iter().find_map(|(slot, dev)| {
            (addr >= slot.mmio_base && addr - slot.mmio_base < slot.mmio_size)
                .then(|| (addr - slot.mmio_base, dev))
        })
    }

    /// Dispatches a read; unclaimed addresses read as all ones. Returns the device, if any.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<&Arc<dyn Device>> {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.mmio_read(offset, data);
                Some(dev)
            }
            None => {
                data.fill(0xff);
                None
            }
        }
    }

    /// Dispatches a write; unclaimed addresses ignore it. Returns the device, if any.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<&Arc<dyn Device>> {
        let (offset, dev) = self.find(addr)?;
        dev.mmio_write(offset, data);
        Some(dev)
    }

    /// Every device's call fds.
    pub fn call_fds(&self) -> Vec<RawFd> {
        self.devices
            .iter()
            .flat_map(|(_, d)| d.call_fds())
            .collect()
    }

    /// The first lost backend's reason, if any.
    pub fn backend_lost(&self) -> Option<String> {
        self.devices.iter().find_map(|(slot, d)| {
            d.backend_lost().map(|why| {
                format!(
                    "virtio device {} at {:#x}: {why}",
                    slot.index, slot.mmio_base
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl Device for Recorder {
        fn mmio_read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn mmio_write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
        fn call_fds(&self) -> Vec<RawFd> {
            vec![42]
        }
    }

    #[test]
    fn bus_dispatch() {
        let mut bus = MmioBus::new();
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        assert_eq!(bus.add(a.clone()).unwrap().mmio_base, 0xd000_0000);
        let slot = bus.add(b.clone()).unwrap();
        assert_eq!((slot.mmio_base, slot.irq), (0xd000_1000, 6));
        assert_eq!(slot.linux_cmdline(), "virtio_mmio.device=4K@0xd0001000:6");
        let mut data = [0u8; 4];
        assert!(bus.read(0xd000_1070, &mut data).is_some());
        assert_eq!(data, [0x70; 4]);
        assert!(bus.read(0xd000_2000, &mut data).is_none());
        assert_eq!(data, [0xff; 4]);
        bus.write(0xd000_0050, &[1, 0, 0, 0]);
        assert_eq!(a.0.lock().unwrap().as_slice(), &[(0x50, vec![1, 0, 0, 0])]);
        assert!(b.0.lock().unwrap().is_empty());
        assert_eq!(bus.call_fds(), vec![42, 42]);
        bus.add(a.clone()).unwrap();
        bus.add(a.clone()).unwrap();
        assert!(bus.add(a).is_none(), "BootInfo describes at most 4 devices");
    }
}
