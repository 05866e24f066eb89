//! Patchbay's CPL-3 network test guest, as a library.
//!
//! Everything that touches hardware (port I/O, MMIO, rdtsc) sits behind small functions or the
//! [`virtio::Transport`] / [`net::Env`] traits, so the ring logic, the smoltcp glue and the
//! programs themselves are unit-tested on the host against an emulated virtio-net device
//! (`cargo test`). The freestanding entry point lives in `main.rs` and calls [`guest::main`].
#![cfg_attr(not(test), no_std)]

pub mod bootinfo;
pub mod cmdline;
pub mod runtime;
pub mod hw;
pub mod loopback;
pub mod mem;
pub mod net;
pub mod programs;
pub mod util;
pub mod virtio;

#[cfg(test)]
mod mock;
