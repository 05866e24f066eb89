//! virtio-net over split virtqueues, from the device side: which features the switch offers,
//! the guest's memory map, the ring itself, and validated access to descriptor chains.
//!
//! Guest memory is untrusted input. Every chain is walked once, bounded, every buffer is
//! range-checked against the guest's memory map before it is touched, and a chain that
//! breaks a rule is returned to the guest unused and counted, never half-used.
//!
//! - `guest_map.rs`: guest-physical to host translation, cached per region.
//! - `ring.rs`: the split ring's state and a ring opened for one burst.
//! - `chain.rs`: transmit chains, receive reservations, the frame copy.
//! - `features.rs`: feature bits and the virtio-net header length.
//! - `net_header.rs`: the virtio-net header's fields.
//! - `dirty_log.rs`: the dirty-page log of a live migration.

pub mod chain;
pub mod dirty_log;
pub mod features;
pub mod guest_map;
pub mod net_header;
pub mod ring;

pub use chain::{FrameCopier, RxReservation, TxChain};
pub use features::{net_header_len, OFFERED_FEATURES};
pub use guest_map::{GuestMap, Segment};
pub use ring::{Burst, ChainError, RingError, Vring};

/// The guest memory type every port maps (the dirty pages of a live migration are logged in
/// the frontend's own bitmap, `dirty_log.rs`, not in vm-memory's).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
