//! The vhost-user device side of a port, one instance per frontend connection: what the
//! device offers, its config space, and what happens when a ring is kicked.
//!
//! The vhost-user protocol itself (memory tables, ring addresses, eventfds) is handled by
//! `vhost-user-backend`; this type answers its questions and hands the rings to the frame path.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::{Link, Port};
use crate::dataplane::{self, TxScratch};
use crate::switch::Switch;
use crate::virtio::{GuestMemory, OFFERED_FEATURES};

/// Queue indices of a virtio-net device with one queue pair.
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Largest ring a frontend may configure (QEMU allows up to 1024).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// `VIRTIO_NET_S_LINK_UP` in the config space's status field.
const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub struct PortBackend {
    port: Arc<Port>,
    switch: Arc<Switch>,
    mem: GuestMemoryAtomic<GuestMemory>,
    features: Arc<AtomicU64>,
    attached: AtomicBool,
    /// Rings are drained by poller threads; kicks only need acknowledging.
    polled: bool,
    /// Serialises attaching (the worker thread and a poller may race on the first event).
    attach_lock: Mutex<()>,
}

impl PortBackend {
    pub fn new(port: Arc<Port>, switch: Arc<Switch>) -> Self {
        let polled = switch.settings().is_polled();
        PortBackend {
            port,
            switch,
            mem: GuestMemoryAtomic::new(GuestMemory::new()),
            features: Arc::new(AtomicU64::new(0)),
            attached: AtomicBool::new(false),
            polled,
            attach_lock: Mutex::new(()),
        }
    }

    /// The memory handle shared with `vhost-user-backend`: it swaps the map inside on every
    /// SET_MEM_TABLE, and the frame path sees the new one on its next batch.
    pub fn memory(&self) -> GuestMemoryAtomic<GuestMemory> {
        self.mem.clone()
    }

    /// Publishes this connection's rings to the frame path the first time they are seen.
    fn attach(&self, vrings: &[VringRwLock<GuestMemoryAtomic<GuestMemory>>]) {
        if self.attached.load(Ordering::Acquire) || vrings.len() < NUM_QUEUES {
            return;
        }
        let _guard = self.attach_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.attached.load(Ordering::Acquire) {
            return;
        }
        self.port.attach(Arc::new(Link {
            mem: self.mem.clone(),
            rx: vrings[RX_QUEUE as usize].clone(),
            tx: vrings[TX_QUEUE as usize].clone(),
            features: self.features.clone(),
            tx_scratch: Mutex::new(TxScratch::default()),
        }));
        self.attached.store(true, Ordering::Release);
        log::info!("port {}: rings attached", self.port.name);
    }

    /// The MAC offered in config space: the configured one, or a stable locally administered
    /// address derived from the port name.
    fn config_mac(&self) -> [u8; 6] {
        if let Some(mac) = self.port.mac {
            return mac.0;
        }
        let h = self
            .port
            .name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let b = h.to_be_bytes();
        [0x02, 0x50, 0x42, b[0], b[1], b[2]]
    }
}

impl VhostUserBackend for PortBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMemoryAtomic<GuestMemory>>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.features.store(features, Ordering::Release);
        log::info!(
            "port {}: features negotiated {:#x} ({})",
            self.port.name,
            features,
            crate::virtio::features::feature_names(features).join(" ")
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The rings carry the flag themselves (set by vhost-user-backend); the frame path
        // asks them.
    }

    /// `struct virtio_net_config`: mac[6], status, max_virtqueue_pairs, (mtu not offered).
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut config = [0u8; 10];
        config[0..6].copy_from_slice(&self.config_mac());
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        // Same handle as `self.mem`: the new map is already visible through it.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.attach(vrings);
        // RX kicks mean the guest posted buffers; frames are never queued waiting for them,
        // so there is nothing to do. TX kicks mean frames to switch.
        if device_event == TX_QUEUE && !self.polled {
            if let Some(link) = self.port.link() {
                dataplane::drain_tx(&self.switch, &self.port, &link, true);
            }
        }
        Ok(())
    }
}
