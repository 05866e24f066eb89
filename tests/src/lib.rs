//! Test harnesses for Patchbay: a userspace vhost-user frontend that plays a guest's
//! virtio-net driver (fast tests, benchmarks), real Linux guests under QEMU, and an
//! in-process switch with a private socket directory.

pub mod frames;
pub mod frontend;
pub mod guest;
pub mod switch;
