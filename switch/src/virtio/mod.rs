//! virtio-net over split virtqueues, from the device side: which features the switch offers,
//! the per-packet header, and validated access to descriptor chains in guest memory.
//!
//! Guest memory is untrusted input. Every chain is walked once, bounded by the queue size,
//! every buffer is range-checked against the guest's memory map before it is touched, and a
//! chain that breaks a rule is returned to the guest unused and counted, never half-used.

pub mod chain;
pub mod features;

pub use chain::{ChainError, FrameCopier, RxReservation, Segment, TxChain};
pub use features::{net_header_len, OFFERED_FEATURES};

/// The guest memory type every port uses (no dirty-page bitmap: no live migration yet).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
