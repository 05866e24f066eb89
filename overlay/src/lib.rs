//! VXLAN (RFC 7348) encapsulation, decapsulation and the VTEP tables.
//!
//! The switch maps a VLAN to a VNI; frames of that VLAN leaving for the underlay get a VXLAN
//! header ([`wire`]) and are sent as UDP datagrams (the kernel adds UDP and IPv4 or IPv6; the
//! sizes and the per-flow source port are in [`encap`]); datagrams received on the VXLAN UDP
//! port are validated
//! ([`mod@decap`]) and checked against the [`vtep::Vtep`] tables before their inner frame is
//! switched. Everything on the per-frame path works on borrowed buffers and does not allocate.
//! A VNI may answer ARP and IPv6 neighbour discovery for addresses known behind remote VTEPs
//! instead of flooding the questions through the tunnel ([`proxy`], off by default).

pub mod decap;
pub mod encap;
pub mod proxy;
pub mod vtep;
pub mod wire;

/// A VXLAN network identifier: 24 bits carried in a `u32`.
pub type Vni = u32;

/// Largest valid VNI (2^24 - 1).
pub const MAX_VNI: Vni = (1 << 24) - 1;

/// IANA-assigned VXLAN UDP port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

pub use decap::{decap, DecapError};
pub use encap::{max_inner_frame, source_port, OUTER_LEN};
pub use vtep::{
    LocalMacMove, TunnelDrop, UnknownVtepPolicy, VniConfig, Vtep, VtepConfig, VtepError,
    VtepSnapshot,
};
pub use wire::{VxlanPacket, VxlanRepr};

#[cfg(test)]
mod fuzz_tests;
