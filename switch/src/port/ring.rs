//! One virtqueue as the port sees it: the split ring's state plus the vhost-user state around
//! it (kick and call eventfds, enabled, started). Shared by the vhost-user message handler,
//! the kick thread and the frame path, behind one mutex per ring.

use std::fs::File;
use std::io::{Read, Write};

use crate::virtio::Vring;

#[derive(Default)]
pub struct RingState {
    pub vring: Vring,
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

impl RingState {
    /// Frames may flow: the ring is started, enabled and fully addressed.
    pub fn usable(&self) -> bool {
        self.started && self.enabled && self.vring.addressed
    }

    /// Consumes pending kicks (the eventfd counter).
    pub fn consume_kick(&self) {
        if let Some(mut f) = self.kick.as_ref() {
            let mut buf = [0u8; 8];
            let _ = f.read(&mut buf);
        }
    }
}

/// Interrupts the guest through its call eventfd; false if there is none or the write failed.
/// The fd is non-blocking (set when the frontend handed it over): a full counter (EAGAIN)
/// means an interrupt is already pending, which is as good as ours. A free function, so
/// callers can hold the ring's `vring` borrowed meanwhile.
pub fn signal(call: Option<&File>) -> bool {
    match call {
        Some(mut f) => match f.write(&1u64.to_ne_bytes()) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        },
        None => false,
    }
}
