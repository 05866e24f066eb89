//! Test harnesses for Patchbay: a userspace vhost-user frontend that plays a guest's
//! virtio-net driver (fast tests, benchmarks), real Linux guests under QEMU, an in-process
//! switch with a private socket directory, network namespaces with the kernel's VXLAN device
//! (host-side tests), and reference peers to compare with (DPDK testpmd).

pub mod frames;
pub mod frontend;
pub mod frr;
pub mod guest;
pub mod libvirt;
pub mod netns;
pub mod offload;
pub mod peers;
pub mod qmp;
pub mod switch;
pub mod vmm;
