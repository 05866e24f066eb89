//! One virtqueue as the device sees it: the `virtio_queue::Queue` plus the vhost-user state
//! around it (kick and call eventfds, enabled, started). Shared by the vhost-user message
//! handler, the kick thread and the frame path, behind one mutex per ring.

use std::fs::File;
use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::GuestMemory;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want interrupts (without EVENT_IDX).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

use super::backend::MAX_QUEUE_SIZE;

pub struct RingState {
    pub queue: Queue,
    /// Eventfd the frontend writes when it adds buffers (SET_VRING_KICK).
    pub kick: Option<File>,
    /// Eventfd the switch writes to interrupt the guest (SET_VRING_CALL).
    pub call: Option<File>,
    /// SET_VRING_ENABLE state (or enabled at SET_FEATURES without protocol features).
    pub enabled: bool,
    /// Started by a kick fd, stopped by GET_VRING_BASE.
    pub started: bool,
    /// Bumped whenever `kick` changes, so the kick thread re-registers even when a new eventfd
    /// reuses the old one's fd number.
    pub kick_generation: u64,
}

impl Default for RingState {
    fn default() -> Self {
        RingState {
            queue: Queue::new(MAX_QUEUE_SIZE as u16).expect("MAX_QUEUE_SIZE is a valid queue size"),
            kick: None,
            call: None,
            enabled: false,
            started: false,
            kick_generation: 0,
        }
    }
}

impl RingState {
    /// Frames may flow: the ring is started, enabled and fully addressed.
    pub fn usable(&self) -> bool {
        self.started && self.enabled && self.queue.ready()
    }

    /// Interrupts the guest; false if there is no call eventfd or the write failed. The fd is
    /// non-blocking (set when the frontend handed it over): a full counter (EAGAIN) means an
    /// interrupt is already pending, which is as good as ours.
    pub fn signal(&self) -> bool {
        match self.call.as_ref() {
            Some(mut f) => match f.write(&1u64.to_ne_bytes()) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            },
            None => false,
        }
    }

    /// Whether the guest wants an interrupt for the used entries added since the last call:
    /// with EVENT_IDX, its `used_event`; without, the avail ring's NO_INTERRUPT flag, which
    /// `virtio_queue` does not read (it would interrupt after every batch: a syscall per
    /// burst for a polling driver such as DPDK's virtio-user, which sets the flag).
    pub fn needs_interrupt(&mut self, mem: &GuestMemory) -> bool {
        if self.queue.event_idx_enabled() {
            return self.queue.needs_notification(mem).unwrap_or(true);
        }
        // The used index stores must be visible before the flags are read (the driver
        // clears NO_INTERRUPT, then re-reads the used index: one of us sees the other).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let flags: Result<u16, _> = mem.read_obj(GuestAddress(self.queue.avail_ring()));
        flags.map_or(true, |f| u16::from_le(f) & VRING_AVAIL_F_NO_INTERRUPT == 0)
    }

    /// Consumes pending kicks (the eventfd counter).
    pub fn consume_kick(&self) {
        if let Some(mut f) = self.kick.as_ref() {
            let mut buf = [0u8; 8];
            let _ = f.read(&mut buf);
        }
    }
}
