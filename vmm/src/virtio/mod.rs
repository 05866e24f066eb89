//! Virtio devices of the bundled VMM: the virtio-mmio (version 2) transport register file
//! ([`mmio`]) and a virtio-net device whose backend is a switch port over vhost-user
//! ([`net`]).
//!
//! # Wiring (what the VMM provides and calls)
//! - Memory: the VM's RAM as a [`vm_memory::GuestMemoryMmap`] whose regions are backed by a
//!   memfd (`FileOffset`), so the backend can map it (`SET_MEM_TABLE` sends the fd):
//!   `GuestRam::memory().clone()`.
//! - `VirtioNet::new(spec, mem, Some(&vm_fd), slot.mmio_base)` registers each queue's kick
//!   eventfd as a KVM ioeventfd on `base + 0x50` (QueueNotify) with a 4-byte datamatch = queue
//!   index, so the guest's notifies never exit to userspace. Without a `VmFd` (tests) a
//!   QueueNotify write reaches [`Device::mmio_write`] and is forwarded to the eventfd by hand
//!   ([`VirtioNet::notify`]).
//! - The device implements the VMM's [`Device`] trait (`crate::device`): the idle wait polls
//!   and drains [`Device::call_fds`]; with `no-reconnect`, [`Device::hangup_fds`] is the
//!   vhost-user socket and [`Device::backend_lost`] says why the VM must end (status 4). By
//!   default the device reconnects by itself and reports neither.
//! - Linux guests take interrupts: [`VirtioNet::register_irqfd`] makes both call eventfds KVM
//!   irqfds on the device's GSI and has `InterruptStatus` report a used-buffer interrupt.

pub mod mmio;
pub mod net;

pub use crate::device::Device;
pub use mmio::MmioRegs;
pub use net::{NetError, NetSpec, VirtioNet};

/// Virtio feature bits used by the devices here.
pub mod features {
    /// `VIRTIO_NET_F_MAC`: the config space holds the MAC address.
    pub const NET_F_MAC: u64 = 1 << 5;
    /// `VIRTIO_NET_F_MRG_RXBUF`: RX frames may span several buffers (`num_buffers`).
    pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
    /// `VIRTIO_NET_F_STATUS`: the config space has a link status field.
    pub const NET_F_STATUS: u64 = 1 << 16;
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` notification suppression.
    pub const RING_F_EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES` (vhost-user only, never offered to the guest).
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    /// `VIRTIO_F_VERSION_1`: a modern device (mandatory for virtio-mmio version 2).
    pub const F_VERSION_1: u64 = 1 << 32;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error the driver must recover from by resetting it.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}
