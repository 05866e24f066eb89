//! ARP and IPv6 neighbour-discovery proxy of the VTEP ("ARP suppression"; the Linux vxlan
//! device's `proxy` option).
//!
//! Why: a VNI floods by head-end replication, so every ARP request or neighbour solicitation
//! a guest sends costs one datagram per remote VTEP, and each remote floods it to all its
//! guests of the VNI. Most of them ask for addresses the VTEP has already seen answered, or
//! announced, through the tunnel. With the proxy on, such a question is answered on this
//! host, from what the tunnel taught us, and never crosses it.
//!
//! This module is what does not depend on I/O:
//! - checked views of ARP (RFC 826) and neighbour discovery (RFC 4861) messages, and [`parse`],
//!   which reads one from an untagged Ethernet frame;
//! - [`NeighTable`], the known addresses: IPv4 and IPv6 address -> MAC, per VNI, learned from
//!   ARP and ND frames that arrive decapsulated from a remote VTEP the VNI admits (the sender
//!   of an ARP packet, the source of a solicitation with its source link-layer address, the
//!   target of an advertisement with its target link-layer address), aged like the remote MAC
//!   table, bounded, plus static entries;
//! - [`answer`]: the ARP reply, or the neighbour advertisement (solicited and override flags,
//!   target link-layer address, ICMPv6 checksum), that the requester gets.
//!
//! The switch's tunnel port learns on receive and answers on send (switch/src/tunnel/proxy.rs).
//! An address is answered for only while its MAC sits behind a remote VTEP in the VTEP's MAC
//! table ([`crate::vtep::Vtep::proxy_target`]): a local guest's requests reach a local
//! address on the switch itself, and an answer for an address that moved here would be a lie.
//!
//! Unlike the kernel, which swallows every ARP request and solicitation of a proxy device
//! (answered or not), a question the table cannot answer still crosses the tunnel: turning
//! the proxy on never costs reachability, only what it saves.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::Vni;

/// Keyed with a per-process random seed: peers choose the addresses (see [`crate::vtep`]).
type S = ahash::RandomState;

/// EtherTypes the proxy reads.
pub mod ethertype {
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
}

/// Bytes of an untagged Ethernet header.
const ETH_LEN: usize = 14;
/// Bytes of the fixed IPv6 header.
const IPV6_LEN: usize = 40;
/// IPv6 next header of ICMPv6.
const ICMPV6: u8 = 58;
/// ICMPv6 types (RFC 4861 §4.3, §4.4).
pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;
/// Neighbour discovery option types (RFC 4861 §4.6.1).
const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;
/// Neighbour discovery messages are sent, and must arrive, with this hop limit (RFC 4861
/// §7.1): anything lower was routed, so it did not come from the link.
const ND_HOP_LIMIT: u8 = 255;
/// ARP operations.
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// Length of an ARP reply frame (Ethernet + ARP for Ethernet/IPv4, unpadded as the kernel
/// sends its own).
pub const ARP_FRAME_LEN: usize = ETH_LEN + ArpPacket::<&[u8]>::LEN;
/// Length of a neighbour advertisement frame with a target link-layer address option.
pub const NA_FRAME_LEN: usize = ETH_LEN + IPV6_LEN + NdPacket::<&[u8]>::LEN + 8;
/// Bytes of a frame [`parse`] may need: a solicitation with its source link-layer option
/// first among its options, as every stack sends it.
pub const PARSE_WINDOW: usize = NA_FRAME_LEN;

/// Why a frame is not an ARP or neighbour discovery message the proxy can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeighError {
    #[error("not an ARP or neighbour discovery frame")]
    NotNeighbor,
    #[error("{what} of {len} bytes is shorter than {needed}")]
    Truncated {
        what: &'static str,
        len: usize,
        needed: usize,
    },
    #[error(
        "ARP for hardware type {htype} and protocol {ptype:#06x} (only Ethernet/IPv4 is used)"
    )]
    NotEthernetIpv4 { htype: u16, ptype: u16 },
    #[error("IPv6 header of version {0}")]
    NotIpv6(u8),
    #[error("neighbour discovery message with hop limit {0} (255 is required: it was routed)")]
    HopLimit(u8),
    #[error("neighbour discovery message with code {0} (must be 0)")]
    Code(u8),
    #[error("neighbour discovery option of length 0, or running past the message")]
    BadOption,
}

fn truncated(what: &'static str, len: usize, needed: usize) -> NeighError {
    NeighError::Truncated { what, len, needed }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn mac_at(b: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    m
}

fn ipv6_at(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// A MAC that may stand for a host: unicast and not all zeros.
fn host_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// An address a host may own and be asked for: not unspecified, multicast, broadcast or
/// loopback (an IPv4-mapped IPv6 address is IPv4 in disguise and is refused too).
pub fn host_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_loopback()
                || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// A read/write view of an ARP packet (the part after the Ethernet header).
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

mod arp_field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Bytes of an ARP packet for Ethernet and IPv4.
    pub const LEN: usize = 28;

    /// Wraps a buffer without checking its length; accessors may panic on a short buffer.
    pub fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps a buffer after checking it holds a whole Ethernet/IPv4 ARP packet.
    pub fn new_checked(buffer: T) -> Result<Self, NeighError> {
        let len = buffer.as_ref().len();
        if len < Self::LEN {
            return Err(truncated("ARP packet", len, Self::LEN));
        }
        Ok(ArpPacket { buffer })
    }

    pub fn hardware_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[arp_field::HTYPE])
    }
    pub fn protocol_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[arp_field::PTYPE])
    }
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[arp_field::HLEN]
    }
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[arp_field::PLEN]
    }
    pub fn operation(&self) -> u16 {
        be16(&self.buffer.as_ref()[arp_field::OPER])
    }
    pub fn sender_hardware_addr(&self) -> [u8; 6] {
        mac_at(&self.buffer.as_ref()[arp_field::SHA])
    }
    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[arp_field::SPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    pub fn target_hardware_addr(&self) -> [u8; 6] {
        mac_at(&self.buffer.as_ref()[arp_field::THA])
    }
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[arp_field::TPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_hardware_type(&mut self, v: u16) {
        self.buffer.as_mut()[arp_field::HTYPE].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_protocol_type(&mut self, v: u16) {
        self.buffer.as_mut()[arp_field::PTYPE].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[arp_field::HLEN] = v;
    }
    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[arp_field::PLEN] = v;
    }
    pub fn set_operation(&mut self, v: u16) {
        self.buffer.as_mut()[arp_field::OPER].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_sender_hardware_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[arp_field::SHA].copy_from_slice(&a);
    }
    pub fn set_sender_protocol_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[arp_field::SPA].copy_from_slice(&a.octets());
    }
    pub fn set_target_hardware_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[arp_field::THA].copy_from_slice(&a);
    }
    pub fn set_target_protocol_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[arp_field::TPA].copy_from_slice(&a.octets());
    }
}

/// An Ethernet/IPv4 ARP packet as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Reads an ARP packet for Ethernet (hardware type 1, 6-byte addresses) and IPv4 (0x0800,
    /// 4-byte addresses); other kinds are refused.
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Result<Self, NeighError> {
        if p.hardware_type() != 1
            || p.protocol_type() != 0x0800
            || p.hardware_len() != 6
            || p.protocol_len() != 4
        {
            return Err(NeighError::NotEthernetIpv4 {
                htype: p.hardware_type(),
                ptype: p.protocol_type(),
            });
        }
        Ok(ArpRepr {
            operation: p.operation(),
            sender_mac: p.sender_hardware_addr(),
            sender_ip: p.sender_protocol_addr(),
            target_mac: p.target_hardware_addr(),
            target_ip: p.target_protocol_addr(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut ArpPacket<T>) {
        p.set_hardware_type(1);
        p.set_protocol_type(0x0800);
        p.set_hardware_len(6);
        p.set_protocol_len(4);
        p.set_operation(self.operation);
        p.set_sender_hardware_addr(self.sender_mac);
        p.set_sender_protocol_addr(self.sender_ip);
        p.set_target_hardware_addr(self.target_mac);
        p.set_target_protocol_addr(self.target_ip);
    }
}

/// A read view of an IPv6 packet's fixed header (no extension headers are followed: neighbour
/// discovery messages carry none).
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer after checking it holds the fixed header, says version 6, and holds the
    /// payload its length field announces (bytes beyond it, Ethernet padding, are ignored).
    pub fn new_checked(buffer: T) -> Result<Self, NeighError> {
        let b = buffer.as_ref();
        if b.len() < IPV6_LEN {
            return Err(truncated("IPv6 packet", b.len(), IPV6_LEN));
        }
        if b[0] >> 4 != 6 {
            return Err(NeighError::NotIpv6(b[0] >> 4));
        }
        let needed = IPV6_LEN + usize::from(be16(&b[4..6]));
        if b.len() < needed {
            return Err(truncated("IPv6 packet", b.len(), needed));
        }
        Ok(Ipv6Packet { buffer })
    }

    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }
    pub fn payload_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[4..6])
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }
    pub fn src_addr(&self) -> Ipv6Addr {
        ipv6_at(&self.buffer.as_ref()[8..24])
    }
    pub fn dst_addr(&self) -> Ipv6Addr {
        ipv6_at(&self.buffer.as_ref()[24..40])
    }
    /// The payload, as long as the header says.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV6_LEN..IPV6_LEN + usize::from(self.payload_len())]
    }
}

/// A read/write view of a neighbour solicitation or advertisement (ICMPv6 types 135 and 136,
/// which share their layout: type, code, checksum, flags, reserved, target, options).
#[derive(Debug, Clone)]
pub struct NdPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> NdPacket<T> {
    /// Bytes before the options.
    pub const LEN: usize = 24;

    pub fn new_unchecked(buffer: T) -> Self {
        NdPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, NeighError> {
        let len = buffer.as_ref().len();
        if len < Self::LEN {
            return Err(truncated("neighbour discovery message", len, Self::LEN));
        }
        Ok(NdPacket { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[2..4])
    }
    /// An advertisement's R (router) flag.
    pub fn router(&self) -> bool {
        self.buffer.as_ref()[4] & 0x80 != 0
    }
    /// An advertisement's S (solicited) flag.
    pub fn solicited(&self) -> bool {
        self.buffer.as_ref()[4] & 0x40 != 0
    }
    /// An advertisement's O (override) flag.
    pub fn override_flag(&self) -> bool {
        self.buffer.as_ref()[4] & 0x20 != 0
    }
    pub fn target_addr(&self) -> Ipv6Addr {
        ipv6_at(&self.buffer.as_ref()[8..24])
    }
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::LEN..]
    }

    /// The Ethernet address of the first link-layer address option of `kind` (1: source,
    /// 2: target), if there is one. Each option's length (in 8-byte units) is checked: a
    /// length of 0 or one running past the message makes the whole message invalid (RFC 4861
    /// §4.6: such a message must be discarded).
    pub fn link_layer_option(&self, kind: u8) -> Result<Option<[u8; 6]>, NeighError> {
        let mut opts = self.options();
        let mut found = None;
        while !opts.is_empty() {
            let Some((&[t, units], _)) = opts.split_first_chunk::<2>() else {
                return Err(NeighError::BadOption);
            };
            let len = usize::from(units) * 8;
            if len == 0 || len > opts.len() {
                return Err(NeighError::BadOption);
            }
            if t == kind && len == 8 && found.is_none() {
                found = Some(mac_at(&opts[2..8]));
            }
            opts = &opts[len..];
        }
        Ok(found)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NdPacket<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[0] = v;
    }
    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the R, S and O flags and clears the reserved bits after them.
    pub fn set_flags(&mut self, router: bool, solicited: bool, override_flag: bool) {
        let b = self.buffer.as_mut();
        b[4] =
            (u8::from(router) << 7) | (u8::from(solicited) << 6) | (u8::from(override_flag) << 5);
        b[5..8].fill(0);
    }
    pub fn set_target_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[8..24].copy_from_slice(&a.octets());
    }
}

/// The Internet checksum's one's complement sum of `data` added to `sum`, not folded.
fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(be16(w));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The sum of ICMPv6 message `msg` with its IPv6 pseudo-header (RFC 8200 §8.1), folded; the
/// message is intact if it is 0xffff, and a message whose checksum field is 0 gets its
/// checksum as `!sum`. Messages here are a few dozen bytes: the 32-bit sum cannot overflow.
fn icmpv6_sum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum = sum_words(0, &src.octets());
    sum = sum_words(sum, &dst.octets());
    sum += msg.len() as u32 + u32::from(ICMPV6);
    sum = sum_words(sum, msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A neighbour solicitation, as read by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicit {
    /// The frame's Ethernet source.
    pub eth_src: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub target: Ipv6Addr,
    pub source_lla: Option<[u8; 6]>,
    pub traffic_class: u8,
    /// Whether the ICMPv6 checksum is right (a guest that offloads checksums may send it
    /// unfinished; a remote's frames arrive complete).
    pub checksum_ok: bool,
}

/// A neighbour advertisement, as read by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    pub src: Ipv6Addr,
    pub target: Ipv6Addr,
    pub target_lla: Option<[u8; 6]>,
    pub router: bool,
    pub checksum_ok: bool,
}

/// An ARP packet or a neighbour solicitation or advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighMessage {
    Arp(ArpRepr),
    Solicit(Solicit),
    Advert(Advert),
}

/// An address and the MAC a message says it is at, for [`NeighTable::learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    /// For IPv6: whether the owner is a router, when the message says (an advertisement's R
    /// flag); an answer repeats it, since a host that reads R clear from a router drops it
    /// from its default routers (RFC 4861 §7.2.5).
    pub router: Option<bool>,
}

/// What a question asks: which protocol, who asks, for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// Where the answer goes: the ARP sender's hardware address, or a solicitation's source
    /// link-layer address (its Ethernet source without one), as the kernel answers.
    pub requester_mac: [u8; 6],
    /// The requester's address (IPv4 for ARP, IPv6 for ND).
    pub requester_ip: IpAddr,
    /// The address asked for, of the same family.
    pub target: IpAddr,
    /// A solicitation's traffic class, which the advertisement keeps (the kernel's too).
    pub traffic_class: u8,
}

/// Which protocol a question or an answer is, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Arp,
    Nd,
}

impl Protocol {
    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Arp => "arp",
            Protocol::Nd => "nd",
        }
    }
}

impl Question {
    pub fn protocol(&self) -> Protocol {
        match self.target {
            IpAddr::V4(_) => Protocol::Arp,
            IpAddr::V6(_) => Protocol::Nd,
        }
    }
}

/// Whether an untagged frame may be an ARP packet or a neighbour solicitation or
/// advertisement, from a few fixed bytes (no parsing): a cheap test for the frame path, which
/// then reads the frame ([`PARSE_WINDOW`] bytes) and [`parse`]s it. `head` is the frame's
/// start, as much as the caller has (a solicitation is at least 78 bytes long, so 64 decide).
pub fn is_candidate(head: &[u8]) -> bool {
    match head.get(12..14).map(be16) {
        Some(ethertype::ARP) => true,
        Some(ethertype::IPV6) => {
            head.get(ETH_LEN + 6) == Some(&ICMPV6)
                && matches!(
                    head.get(ETH_LEN + IPV6_LEN),
                    Some(&NEIGHBOR_SOLICIT | &NEIGHBOR_ADVERT)
                )
        }
        _ => false,
    }
}

/// Reads an ARP packet, or a neighbour solicitation or advertisement, from an untagged
/// Ethernet frame (a tagged one is [`NeighError::NotNeighbor`]: frames cross the tunnel
/// untagged). Neighbour discovery messages are checked as RFC 4861 §7.1 asks (hop limit 255,
/// code 0, sane options); their checksum is reported, not required.
pub fn parse(frame: &[u8]) -> Result<NeighMessage, NeighError> {
    if frame.len() < ETH_LEN {
        return Err(truncated("Ethernet frame", frame.len(), ETH_LEN));
    }
    let payload = &frame[ETH_LEN..];
    match be16(&frame[12..14]) {
        ethertype::ARP => ArpRepr::parse(&ArpPacket::new_checked(payload)?).map(NeighMessage::Arp),
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(payload)?;
            if ip.next_header() != ICMPV6 {
                return Err(NeighError::NotNeighbor);
            }
            let msg = ip.payload();
            let nd = NdPacket::new_checked(msg)?;
            if !matches!(nd.msg_type(), NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT) {
                return Err(NeighError::NotNeighbor);
            }
            if ip.hop_limit() != ND_HOP_LIMIT {
                return Err(NeighError::HopLimit(ip.hop_limit()));
            }
            if nd.code() != 0 {
                return Err(NeighError::Code(nd.code()));
            }
            let checksum_ok = icmpv6_sum(ip.src_addr(), ip.dst_addr(), msg) == 0xffff;
            if nd.msg_type() == NEIGHBOR_SOLICIT {
                Ok(NeighMessage::Solicit(Solicit {
                    eth_src: mac_at(&frame[6..12]),
                    src: ip.src_addr(),
                    dst: ip.dst_addr(),
                    target: nd.target_addr(),
                    source_lla: nd.link_layer_option(OPT_SOURCE_LLA)?,
                    traffic_class: ip.traffic_class(),
                    checksum_ok,
                }))
            } else {
                Ok(NeighMessage::Advert(Advert {
                    src: ip.src_addr(),
                    target: nd.target_addr(),
                    target_lla: nd.link_layer_option(OPT_TARGET_LLA)?,
                    router: nd.router(),
                    checksum_ok,
                }))
            }
        }
        _ => Err(NeighError::NotNeighbor),
    }
}

impl NeighMessage {
    /// The address and MAC the message vouches for, if any: what the table learns from a
    /// remote's frame. An ARP packet's sender (request, reply or announcement; not a probe,
    /// whose sender address is 0.0.0.0); a solicitation's source with its source link-layer
    /// address (not duplicate address detection, whose source is ::); an advertisement's
    /// target with its target link-layer address. ND messages with a wrong checksum teach
    /// nothing.
    pub fn binding(&self) -> Option<Binding> {
        let (ip, mac, router) = match *self {
            NeighMessage::Arp(a) if matches!(a.operation, ARP_REQUEST | ARP_REPLY) => {
                (IpAddr::V4(a.sender_ip), a.sender_mac, None)
            }
            NeighMessage::Arp(_) => return None,
            NeighMessage::Solicit(s) if s.checksum_ok => (IpAddr::V6(s.src), s.source_lla?, None),
            NeighMessage::Advert(a) if a.checksum_ok => {
                (IpAddr::V6(a.target), a.target_lla?, Some(a.router))
            }
            NeighMessage::Solicit(_) | NeighMessage::Advert(_) => return None,
        };
        (host_ip(ip) && host_mac(mac)).then_some(Binding { ip, mac, router })
    }

    /// The question the message asks, if the proxy could answer it: an ARP request from a
    /// host that has an address (not a probe) for another address (not an announcement), or
    /// a neighbour solicitation from an address (not duplicate address detection: that one
    /// must reach the owner, if any). The checksum of a solicitation is not required (a guest
    /// that offloads checksums sends it unfinished; the kernel does not check it either).
    pub fn question(&self) -> Option<Question> {
        let q = match *self {
            NeighMessage::Arp(a) if a.operation == ARP_REQUEST && a.sender_ip != a.target_ip => {
                Question {
                    requester_mac: a.sender_mac,
                    requester_ip: IpAddr::V4(a.sender_ip),
                    target: IpAddr::V4(a.target_ip),
                    traffic_class: 0,
                }
            }
            NeighMessage::Solicit(s) => Question {
                requester_mac: s.source_lla.unwrap_or(s.eth_src),
                requester_ip: IpAddr::V6(s.src),
                target: IpAddr::V6(s.target),
                traffic_class: s.traffic_class,
            },
            _ => return None,
        };
        (host_mac(q.requester_mac) && host_ip(q.requester_ip) && host_ip(q.target)).then_some(q)
    }
}

/// What the table knows of an address: its MAC, and (IPv6) whether it is a router's, where
/// a message said so (an advertisement's R flag; static entries are hosts').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub mac: [u8; 6],
    pub router: Option<bool>,
}

/// An answer frame, built in place (no allocation).
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    buf: [u8; NA_FRAME_LEN],
    len: usize,
}

impl Reply {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The answer to `q` from `known`, as the owner of the address would send it: an ARP reply
/// from the owner's MAC to the requester, or a solicited neighbour advertisement (override
/// set, router as known, the target link-layer address option, hop limit 255, the
/// solicitation's traffic class) from the target address to the requester's, checksummed.
pub fn answer(q: &Question, known: Known) -> Reply {
    let mut buf = [0u8; NA_FRAME_LEN];
    buf[0..6].copy_from_slice(&q.requester_mac);
    buf[6..12].copy_from_slice(&known.mac);
    let len = match (q.requester_ip, q.target) {
        (IpAddr::V4(requester_ip), IpAddr::V4(target_ip)) => {
            buf[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
            ArpRepr {
                operation: ARP_REPLY,
                sender_mac: known.mac,
                sender_ip: target_ip,
                target_mac: q.requester_mac,
                target_ip: requester_ip,
            }
            .emit(&mut ArpPacket::new_unchecked(
                &mut buf[ETH_LEN..ARP_FRAME_LEN],
            ));
            ARP_FRAME_LEN
        }
        (requester, target) => {
            // A question of mixed families cannot be built by `question`; answered as IPv6
            // with whatever it holds (no panic), it reaches nobody.
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            let (requester, target) = (v6(requester), v6(target));
            buf[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
            let msg_len = NA_FRAME_LEN - ETH_LEN - IPV6_LEN;
            let ip = &mut buf[ETH_LEN..ETH_LEN + IPV6_LEN];
            ip[0] = 0x60 | (q.traffic_class >> 4);
            ip[1] = q.traffic_class << 4;
            ip[4..6].copy_from_slice(&(msg_len as u16).to_be_bytes());
            ip[6] = ICMPV6;
            ip[7] = ND_HOP_LIMIT;
            ip[8..24].copy_from_slice(&target.octets());
            ip[24..40].copy_from_slice(&requester.octets());
            let msg = &mut buf[ETH_LEN + IPV6_LEN..NA_FRAME_LEN];
            {
                let mut nd = NdPacket::new_unchecked(&mut msg[..]);
                nd.set_msg_type(NEIGHBOR_ADVERT);
                nd.set_code(0);
                nd.set_checksum(0);
                // Callers answer for IPv6 only where the router flag is known
                // (`Vtep::proxy_target`): a host reading R clear from its router drops it.
                nd.set_flags(known.router == Some(true), true, true);
                nd.set_target_addr(target);
            }
            let opt = &mut msg[NdPacket::<&[u8]>::LEN..];
            opt[0] = OPT_TARGET_LLA;
            opt[1] = 1;
            opt[2..8].copy_from_slice(&known.mac);
            let sum = icmpv6_sum(target, requester, msg);
            NdPacket::new_unchecked(&mut msg[..]).set_checksum(!sum);
            NA_FRAME_LEN
        }
    };
    Reply { buf, len }
}

/// Where a known address came from. Learned entries age and follow the tunnel's traffic;
/// static ones stay until removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeighOrigin {
    /// From an ARP or ND frame that came through the tunnel.
    #[default]
    Learned,
    /// Configured by the operator (`flowctl tunnel add-neigh`), as `ip neigh add` fills the
    /// kernel's table for its proxy.
    Static,
}

/// What [`NeighTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighLearned {
    New,
    Refreshed,
    /// The address was at another MAC before.
    Moved,
    /// A static entry holds the address; it was left alone.
    Static,
    /// The table is at its limit: not learned (questions for it keep crossing the tunnel).
    TableFull,
    /// Not learnable: not a host address or MAC, the VNI is not mapped or its proxy is off.
    Refused,
}

/// One known address in a [`crate::vtep::VtepSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborSnapshot {
    pub vni: Vni,
    pub ip: IpAddr,
    pub mac: String,
    /// Whether it is a router's (IPv6: from an advertisement's R flag).
    #[serde(default)]
    pub router: bool,
    pub origin: NeighOrigin,
    /// Seconds since it was last seen (0 for static entries).
    pub age: u64,
}

/// The MAC (low 48 bits), router flag (bit 48) and whether that flag is known (bit 49) of an
/// entry in one word, so that a refresh or a move needs no write lock.
fn pack(k: Known) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&k.mac);
    let router = match k.router {
        None => 0,
        Some(r) => 2 | u64::from(r),
    };
    u64::from_be_bytes(b) | (router << 48)
}

fn unpack(w: u64) -> Known {
    let b = w.to_be_bytes();
    Known {
        mac: mac_at(&b[2..]),
        router: (w >> 49 & 1 != 0).then_some(w >> 48 & 1 != 0),
    }
}

struct Entry {
    link: AtomicU64,
    /// Seconds of the VTEP's clock when last seen.
    last_seen: AtomicU64,
    origin: NeighOrigin,
}

struct Inner {
    entries: HashMap<(Vni, IpAddr), Entry, S>,
    /// Entries with [`NeighOrigin::Learned`]: what the limit bounds.
    learned: usize,
    /// When the last sweep for room happened, so a full table is swept at most once a second.
    last_sweep: Option<u64>,
}

impl Inner {
    fn remove_where(&mut self, mut gone: impl FnMut(&(Vni, IpAddr), &Entry) -> bool) -> usize {
        let Inner {
            entries, learned, ..
        } = self;
        let before = entries.len();
        entries.retain(|k, e| {
            let drop = gone(k, e);
            if drop && e.origin == NeighOrigin::Learned {
                *learned = learned.saturating_sub(1);
            }
            !drop
        });
        before - entries.len()
    }
}

/// The known addresses: (VNI, IPv4 or IPv6 address) -> MAC. Read-mostly like the VTEP's MAC
/// table: a lookup or a refresh takes the read lock; only a new address takes the write lock.
/// Learned entries are at most `max` (the table is allocated for them up front, so learning
/// does not allocate) and age after `aging_secs`; static ones may go beyond `max` (the operator
/// chose them) and never age.
pub struct NeighTable {
    inner: RwLock<Inner>,
    max: usize,
    aging_secs: u64,
}

/// Poisoning only means another thread panicked mid-update; every update leaves the table
/// consistent, and the frame path must not panic in turn.
fn read(lock: &RwLock<Inner>) -> RwLockReadGuard<'_, Inner> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write(lock: &RwLock<Inner>) -> RwLockWriteGuard<'_, Inner> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl NeighTable {
    pub fn new(max: usize, aging_secs: u64) -> NeighTable {
        NeighTable {
            inner: RwLock::new(Inner {
                entries: HashMap::with_capacity_and_hasher(max, S::new()),
                learned: 0,
                last_sweep: None,
            }),
            max,
            aging_secs: aging_secs.max(1),
        }
    }

    /// The most learned entries held.
    pub fn max(&self) -> usize {
        self.max
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        e.origin == NeighOrigin::Learned
            && now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) >= self.aging_secs
    }

    /// Records that `b.ip` is at `b.mac` in `vni`. A static entry wins; a full table refuses
    /// new addresses (after sweeping expired ones, at most once a second). The caller checks
    /// that the VNI is mapped with its proxy on, and holds that check for the call.
    pub fn learn(&self, vni: Vni, b: Binding, now: u64) -> NeighLearned {
        if !host_ip(b.ip) || !host_mac(b.mac) {
            return NeighLearned::Refused;
        }
        let key = (vni, b.ip);
        let known = |e: &Entry| {
            if e.origin == NeighOrigin::Static {
                return NeighLearned::Static;
            }
            // A message that does not say whether the owner routes keeps what was known of
            // that MAC.
            let old = unpack(e.link.load(Ordering::Relaxed));
            let new = Known {
                mac: b.mac,
                router: b.router.or(old.router.filter(|_| old.mac == b.mac)),
            };
            let moved = unpack(e.link.swap(pack(new), Ordering::Relaxed)).mac != b.mac;
            if e.last_seen.load(Ordering::Relaxed) != now {
                e.last_seen.store(now, Ordering::Relaxed);
            }
            if moved {
                NeighLearned::Moved
            } else {
                NeighLearned::Refreshed
            }
        };
        if let Some(e) = read(&self.inner).entries.get(&key) {
            return known(e);
        }
        let mut t = write(&self.inner);
        if let Some(e) = t.entries.get(&key) {
            return known(e);
        }
        if t.learned >= self.max {
            if t.last_sweep == Some(now) {
                return NeighLearned::TableFull;
            }
            t.last_sweep = Some(now);
            t.remove_where(|_, e| self.expired(e, now));
            if t.learned >= self.max {
                return NeighLearned::TableFull;
            }
        }
        t.entries.insert(
            key,
            Entry {
                link: AtomicU64::new(pack(Known {
                    mac: b.mac,
                    router: b.router,
                })),
                last_seen: AtomicU64::new(now),
                origin: NeighOrigin::Learned,
            },
        );
        t.learned += 1;
        NeighLearned::New
    }

    /// What is known of `ip` in `vni`, unless unknown or aged out.
    pub fn lookup(&self, vni: Vni, ip: IpAddr, now: u64) -> Option<Known> {
        let t = read(&self.inner);
        let e = t.entries.get(&(vni, ip))?;
        if self.expired(e, now) {
            return None;
        }
        Some(unpack(e.link.load(Ordering::Relaxed)))
    }

    /// Pins `ip` at `mac` in `vni` (replacing a learned entry); false if they cannot stand for
    /// a host.
    pub fn add_static(&self, vni: Vni, ip: IpAddr, mac: [u8; 6], now: u64) -> bool {
        if !host_ip(ip) || !host_mac(mac) {
            return false;
        }
        let mut t = write(&self.inner);
        let old = t.entries.insert(
            (vni, ip),
            Entry {
                link: AtomicU64::new(pack(Known {
                    mac,
                    router: Some(false),
                })),
                last_seen: AtomicU64::new(now),
                origin: NeighOrigin::Static,
            },
        );
        if old.is_some_and(|o| o.origin == NeighOrigin::Learned) {
            t.learned = t.learned.saturating_sub(1);
        }
        true
    }

    /// A local host says `ip` is at `mac` (its ARP or neighbour discovery leaving for the
    /// tunnel): a learned entry that puts `ip` elsewhere is dropped, so the proxy does not
    /// answer for an address that moved here until the old binding ages out. Whether one was.
    pub fn claimed_locally(&self, vni: Vni, ip: IpAddr, mac: [u8; 6]) -> bool {
        let elsewhere = |e: &Entry| {
            e.origin == NeighOrigin::Learned && unpack(e.link.load(Ordering::Relaxed)).mac != mac
        };
        if !read(&self.inner)
            .entries
            .get(&(vni, ip))
            .is_some_and(elsewhere)
        {
            return false;
        }
        let mut t = write(&self.inner);
        if !t.entries.get(&(vni, ip)).is_some_and(elsewhere) {
            return false;
        }
        t.entries.remove(&(vni, ip));
        t.learned = t.learned.saturating_sub(1);
        true
    }

    /// Removes the static entry for `ip` in `vni`; whether there was one.
    pub fn remove_static(&self, vni: Vni, ip: IpAddr) -> bool {
        let mut t = write(&self.inner);
        let is_static = t
            .entries
            .get(&(vni, ip))
            .is_some_and(|e| e.origin == NeighOrigin::Static);
        if is_static {
            t.entries.remove(&(vni, ip));
        }
        is_static
    }

    /// Forgets the learned entries of `vni` (and the static ones too with `all`).
    pub fn forget(&self, vni: Vni, all: bool) -> usize {
        write(&self.inner)
            .remove_where(|k, e| k.0 == vni && (all || e.origin == NeighOrigin::Learned))
    }

    /// Drops aged-out learned entries; how many.
    pub fn expire(&self, now: u64) -> usize {
        write(&self.inner).remove_where(|_, e| self.expired(e, now))
    }

    /// Live entries, sorted by VNI then address.
    pub fn snapshot(&self, now: u64) -> Vec<NeighborSnapshot> {
        let mut out: Vec<NeighborSnapshot> = read(&self.inner)
            .entries
            .iter()
            .filter(|(_, e)| !self.expired(e, now))
            .map(|((vni, ip), e)| {
                let k = unpack(e.link.load(Ordering::Relaxed));
                let m = k.mac;
                NeighborSnapshot {
                    vni: *vni,
                    ip: *ip,
                    mac: format!(
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        m[0], m[1], m[2], m[3], m[4], m[5]
                    ),
                    router: k.router == Some(true),
                    origin: e.origin,
                    age: match e.origin {
                        NeighOrigin::Static => 0,
                        NeighOrigin::Learned => {
                            now.saturating_sub(e.last_seen.load(Ordering::Relaxed))
                        }
                    },
                }
            })
            .collect();
        out.sort_by_key(|n| (n.vni, n.ip));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType, Icmpv6Slice, Icmpv6Type,
        Ipv6HeaderSlice,
    };

    const GUEST_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const GUEST_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// An Ethernet/IPv4 ARP frame, padded to 60 bytes as on the wire.
    fn arp_frame(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&sha);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa.octets());
        f.extend_from_slice(&tha);
        f.extend_from_slice(&tpa.octets());
        f.resize(60, 0);
        f
    }

    /// An ND message (type 135 or 136) in an Ethernet frame, checksummed, with `options`:
    /// every field a test varies is a parameter.
    #[allow(clippy::too_many_arguments)]
    fn nd_frame(
        msg_type: u8,
        flags: u8,
        eth_src: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        options: &[u8],
        hop_limit: u8,
    ) -> Vec<u8> {
        let mut msg = vec![msg_type, 0, 0, 0, flags, 0, 0, 0];
        msg.extend_from_slice(&target.octets());
        msg.extend_from_slice(options);
        let sum = icmpv6_sum(src, dst, &msg);
        msg[2..4].copy_from_slice(&(!sum).to_be_bytes());
        let mut f = vec![0x33, 0x33, 0xff, 0, 0, 2];
        f.extend_from_slice(&eth_src);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        f.extend_from_slice(&[ICMPV6, hop_limit]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&msg);
        f
    }

    fn lla(kind: u8, mac: [u8; 6]) -> Vec<u8> {
        let mut o = vec![kind, 1];
        o.extend_from_slice(&mac);
        o
    }

    #[test]
    fn an_arp_request_asks_and_tells() {
        let f = arp_frame(ARP_REQUEST, GUEST_A, IP_A, [0; 6], IP_B);
        assert!(is_candidate(&f));
        let m = parse(&f).unwrap();
        assert_eq!(
            m.question(),
            Some(Question {
                requester_mac: GUEST_A,
                requester_ip: IP_A.into(),
                target: IP_B.into(),
                traffic_class: 0,
            })
        );
        assert_eq!(m.question().unwrap().protocol(), Protocol::Arp);
        assert_eq!(
            m.binding(),
            Some(Binding {
                ip: IP_A.into(),
                mac: GUEST_A,
                router: None
            })
        );
        // A reply tells but does not ask; a gratuitous ARP tells; a probe does neither.
        let reply = parse(&arp_frame(ARP_REPLY, GUEST_B, IP_B, GUEST_A, IP_A)).unwrap();
        assert_eq!(reply.question(), None);
        assert_eq!(reply.binding().unwrap().mac, GUEST_B);
        let garp = parse(&arp_frame(ARP_REQUEST, GUEST_B, IP_B, [0; 6], IP_B)).unwrap();
        assert_eq!(garp.question(), None, "an announcement is not a question");
        assert_eq!(garp.binding().unwrap().ip, IpAddr::V4(IP_B));
        let probe = parse(&arp_frame(
            ARP_REQUEST,
            GUEST_A,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            IP_B,
        ))
        .unwrap();
        assert_eq!((probe.question(), probe.binding()), (None, None));
        // Nothing is learned for a group MAC, nor asked for a broadcast or loopback target.
        let group = parse(&arp_frame(
            ARP_REQUEST,
            [1, 0, 0, 0, 0, 1],
            IP_A,
            [0; 6],
            IP_B,
        ))
        .unwrap();
        assert_eq!((group.question(), group.binding()), (None, None));
        for target in [
            Ipv4Addr::BROADCAST,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            let m = parse(&arp_frame(ARP_REQUEST, GUEST_A, IP_A, [0; 6], target)).unwrap();
            assert_eq!(m.question(), None, "{target}");
        }
    }

    #[test]
    fn malformed_arp_is_refused_with_its_reason() {
        let f = arp_frame(ARP_REQUEST, GUEST_A, IP_A, [0; 6], IP_B);
        assert_eq!(
            parse(&f[..14 + 27]),
            Err(NeighError::Truncated {
                what: "ARP packet",
                len: 27,
                needed: 28
            })
        );
        let mut other = f.clone();
        other[16..18].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert!(matches!(
            parse(&other),
            Err(NeighError::NotEthernetIpv4 { ptype: 0x86dd, .. })
        ));
        let mut ip = f.clone();
        ip[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(parse(&ip), Err(NeighError::NotNeighbor));
        assert!(!is_candidate(&ip));
        assert!(parse(&f[..10]).is_err());
    }

    #[test]
    fn the_arp_reply_is_what_the_owner_would_send() {
        let q = parse(&arp_frame(ARP_REQUEST, GUEST_A, IP_A, [0; 6], IP_B))
            .unwrap()
            .question()
            .unwrap();
        let reply = answer(
            &q,
            Known {
                mac: GUEST_B,
                router: None,
            },
        );
        let bytes = reply.as_bytes();
        assert_eq!(bytes.len(), ARP_FRAME_LEN);
        let eth = etherparse::Ethernet2HeaderSlice::from_slice(bytes).unwrap();
        assert_eq!(
            (eth.destination(), eth.source(), eth.ether_type()),
            (GUEST_A, GUEST_B, EtherType::ARP)
        );
        let arp = ArpPacketSlice::from_slice(&bytes[14..]).unwrap();
        assert_eq!(arp.hw_addr_type(), ArpHardwareId::ETHERNET);
        assert_eq!(arp.proto_addr_type(), EtherType::IPV4);
        assert_eq!(arp.operation(), ArpOperation::REPLY);
        assert_eq!(arp.sender_hw_addr(), &GUEST_B);
        assert_eq!(arp.sender_protocol_addr(), &IP_B.octets());
        assert_eq!(arp.target_hw_addr(), &GUEST_A);
        assert_eq!(arp.target_protocol_addr(), &IP_A.octets());
        // And it reads back as a reply that teaches B's address.
        let m = parse(bytes).unwrap();
        assert_eq!(m.question(), None);
        assert_eq!(
            m.binding(),
            Some(Binding {
                ip: IP_B.into(),
                mac: GUEST_B,
                router: None
            })
        );
    }

    #[test]
    fn solicitations_and_advertisements_are_read_per_rfc_4861() {
        let (a, b) = (v6("2001:db8::a"), v6("2001:db8::b"));
        let snm = v6("ff02::1:ff00:b");
        let ns = nd_frame(
            NEIGHBOR_SOLICIT,
            0,
            GUEST_A,
            a,
            snm,
            b,
            &lla(OPT_SOURCE_LLA, GUEST_A),
            255,
        );
        assert!(is_candidate(&ns[..64]));
        let m = parse(&ns).unwrap();
        assert_eq!(
            m.question(),
            Some(Question {
                requester_mac: GUEST_A,
                requester_ip: a.into(),
                target: b.into(),
                traffic_class: 0,
            })
        );
        assert_eq!(m.question().unwrap().protocol(), Protocol::Nd);
        assert_eq!(
            m.binding(),
            Some(Binding {
                ip: a.into(),
                mac: GUEST_A,
                router: None
            })
        );
        // Without a source link-layer option: asked from the Ethernet source, teaches nothing.
        let bare = parse(&nd_frame(NEIGHBOR_SOLICIT, 0, GUEST_A, a, snm, b, &[], 255)).unwrap();
        assert_eq!(bare.question().unwrap().requester_mac, GUEST_A);
        assert_eq!(bare.binding(), None);
        // Duplicate address detection (source ::) is neither.
        let dad = parse(&nd_frame(
            NEIGHBOR_SOLICIT,
            0,
            GUEST_A,
            Ipv6Addr::UNSPECIFIED,
            snm,
            b,
            &[],
            255,
        ))
        .unwrap();
        assert_eq!((dad.question(), dad.binding()), (None, None));
        // An advertisement teaches its target, with the R flag.
        let na = parse(&nd_frame(
            NEIGHBOR_ADVERT,
            0xe0,
            GUEST_B,
            b,
            a,
            b,
            &lla(OPT_TARGET_LLA, GUEST_B),
            255,
        ))
        .unwrap();
        assert_eq!(na.question(), None);
        assert_eq!(
            na.binding(),
            Some(Binding {
                ip: b.into(),
                mac: GUEST_B,
                router: Some(true)
            })
        );
        // Routed (hop limit below 255), a non-zero code, broken options: refused.
        assert_eq!(
            parse(&nd_frame(NEIGHBOR_SOLICIT, 0, GUEST_A, a, snm, b, &[], 64)),
            Err(NeighError::HopLimit(64))
        );
        let mut coded = ns.clone();
        coded[14 + 40 + 1] = 1;
        assert_eq!(parse(&coded), Err(NeighError::Code(1)));
        for bad in [
            vec![1, 0, 0, 0, 0, 0, 0, 0],
            vec![1, 2, 0, 0, 0, 0, 0, 0],
            vec![1],
        ] {
            assert_eq!(
                parse(&nd_frame(
                    NEIGHBOR_SOLICIT,
                    0,
                    GUEST_A,
                    a,
                    snm,
                    b,
                    &bad,
                    255
                )),
                Err(NeighError::BadOption),
                "{bad:?}"
            );
        }
        // A wrong checksum teaches nothing, but the question stands (offloaded checksums).
        let mut corrupt = ns.clone();
        corrupt[14 + 40 + 2] ^= 0xff;
        let m = parse(&corrupt).unwrap();
        assert_eq!(m.binding(), None);
        assert!(m.question().is_some());
        // Other ICMPv6 and IPv6 traffic is not neighbour discovery.
        let mut echo = ns.clone();
        echo[14 + 40] = 128;
        assert!(!is_candidate(&echo));
        assert_eq!(parse(&echo), Err(NeighError::NotNeighbor));
        let mut udp = ns.clone();
        udp[14 + 6] = 17;
        assert_eq!(parse(&udp), Err(NeighError::NotNeighbor));
        // The payload length is believed only as far as the frame goes.
        assert!(matches!(
            parse(&ns[..ns.len() - 1]),
            Err(NeighError::Truncated { .. })
        ));
    }

    #[test]
    fn the_neighbor_advertisement_is_solicited_checksummed_and_carries_the_mac() {
        let (a, b) = (v6("2001:db8::a"), v6("fe80::b"));
        let mut ns = nd_frame(
            NEIGHBOR_SOLICIT,
            0,
            [0x02, 0, 0, 0, 0, 0x99],
            a,
            v6("ff02::1:ff00:b"),
            b,
            &lla(OPT_SOURCE_LLA, GUEST_A),
            255,
        );
        // Traffic class 0xb8 (EF): the answer keeps it.
        ns[14] = 0x6b;
        ns[15] = 0x80;
        let q = parse(&ns).unwrap().question().unwrap();
        assert_eq!(
            q.requester_mac, GUEST_A,
            "the source link-layer option wins"
        );
        for router in [false, true] {
            let reply = answer(
                &q,
                Known {
                    mac: GUEST_B,
                    router: Some(router),
                },
            );
            let bytes = reply.as_bytes();
            assert_eq!(bytes.len(), NA_FRAME_LEN);
            let eth = etherparse::Ethernet2HeaderSlice::from_slice(bytes).unwrap();
            assert_eq!(
                (eth.destination(), eth.source(), eth.ether_type()),
                (GUEST_A, GUEST_B, EtherType::IPV6)
            );
            let ip = Ipv6HeaderSlice::from_slice(&bytes[14..]).unwrap();
            assert_eq!(ip.source_addr(), b);
            assert_eq!(ip.destination_addr(), a);
            assert_eq!(ip.hop_limit(), 255);
            assert_eq!(ip.traffic_class(), 0xb8);
            assert_eq!(usize::from(ip.payload_length()), 32);
            let icmp = Icmpv6Slice::from_slice(&bytes[54..]).unwrap();
            assert!(
                icmp.is_checksum_valid(b.octets(), a.octets()),
                "ICMPv6 checksum"
            );
            let Icmpv6Type::NeighborAdvertisement(h) = icmp.icmp_type() else {
                panic!("not an advertisement: {:?}", icmp.icmp_type());
            };
            assert!(h.solicited && h.r#override);
            assert_eq!(h.router, router);
            let na = match icmp.payload_slice().unwrap() {
                etherparse::icmpv6::Icmpv6PayloadSlice::NeighborAdvertisement(na) => na,
                other => panic!("{other:?}"),
            };
            assert_eq!(na.target_address(), b);
            assert_eq!(na.options(), &lla(OPT_TARGET_LLA, GUEST_B)[..]);
            // Our own reading agrees, and would learn B from it.
            let m = parse(bytes).unwrap();
            assert_eq!(
                m.binding(),
                Some(Binding {
                    ip: b.into(),
                    mac: GUEST_B,
                    router: Some(router)
                })
            );
        }
    }

    #[test]
    fn the_table_learns_moves_ages_and_keeps_statics() {
        let t = NeighTable::new(8, 10);
        let bind = |ip: IpAddr, mac| Binding {
            ip,
            mac,
            router: None,
        };
        let (a, b) = (IpAddr::V4(IP_A), IpAddr::V6(v6("2001:db8::b")));
        assert_eq!(t.learn(42, bind(a, GUEST_A), 0), NeighLearned::New);
        assert_eq!(t.learn(42, bind(a, GUEST_A), 1), NeighLearned::Refreshed);
        assert_eq!(t.learn(42, bind(a, GUEST_B), 2), NeighLearned::Moved);
        assert_eq!(t.lookup(42, a, 2).map(|k| k.mac), Some(GUEST_B));
        assert_eq!(t.lookup(43, a, 2), None, "per VNI");
        // The router flag is kept by messages that do not say, for the same MAC.
        let r = Binding {
            ip: b,
            mac: GUEST_B,
            router: Some(true),
        };
        assert_eq!(t.learn(42, r, 2), NeighLearned::New);
        assert_eq!(t.learn(42, bind(b, GUEST_B), 3), NeighLearned::Refreshed);
        assert_eq!(t.lookup(42, b, 3).unwrap().router, Some(true));
        // Aging: a is last seen at 2, b at 3 (aging 10 seconds). Nothing said whether a's
        // owner routes.
        assert_eq!(
            t.lookup(42, a, 11),
            Some(Known {
                mac: GUEST_B,
                router: None
            })
        );
        assert_eq!(t.lookup(42, a, 12), None);
        assert_eq!(t.expire(12), 1);
        assert_eq!(t.snapshot(12).len(), 1);
        // Statics win over learning, never age, and only remove_static removes them.
        assert!(t.add_static(42, a, GUEST_A, 12));
        assert_eq!(t.learn(42, bind(a, GUEST_B), 13), NeighLearned::Static);
        assert_eq!(t.lookup(42, a, 1_000).map(|k| k.mac), Some(GUEST_A));
        assert_eq!(t.forget(42, false), 1, "only b, learned");
        assert!(t.lookup(42, a, 1_000).is_some());
        assert!(t.remove_static(42, a));
        assert!(!t.remove_static(42, a));
        // Not host addresses: refused.
        assert!(!t.add_static(42, IpAddr::V4(Ipv4Addr::BROADCAST), GUEST_A, 0));
        assert!(!t.add_static(42, a, [0xff; 6], 0));
        assert_eq!(
            t.learn(42, bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED), GUEST_A), 0),
            NeighLearned::Refused
        );
        assert_eq!(t.learn(42, bind(a, [0; 6]), 0), NeighLearned::Refused);
    }

    #[test]
    fn a_local_claim_drops_a_learned_binding_elsewhere_but_not_a_static_one() {
        let t = NeighTable::new(8, 10);
        let a = IpAddr::V4(IP_A);
        let learned = Binding {
            ip: a,
            mac: GUEST_B,
            router: None,
        };
        t.learn(42, learned, 0);
        assert!(!t.claimed_locally(42, a, GUEST_B), "the same MAC: kept");
        assert!(!t.claimed_locally(43, a, GUEST_A), "another VNI: kept");
        assert!(t.claimed_locally(42, a, GUEST_A), "moved here: dropped");
        assert_eq!(t.lookup(42, a, 1), None);
        assert!(!t.claimed_locally(42, a, GUEST_A), "nothing left to drop");
        assert!(t.add_static(42, a, GUEST_B, 1));
        assert!(
            !t.claimed_locally(42, a, GUEST_A),
            "the operator's entry stays"
        );
        assert_eq!(t.lookup(42, a, 2).map(|k| k.mac), Some(GUEST_B));
    }

    #[test]
    fn the_table_is_bounded_and_sweeps_for_room() {
        let t = NeighTable::new(2, 10);
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 1, n));
        let bind = |n: u8| Binding {
            ip: ip(n),
            mac: [2, 0, 0, 0, 1, n],
            router: None,
        };
        assert_eq!(t.learn(1, bind(1), 0), NeighLearned::New);
        assert_eq!(t.learn(2, bind(2), 5), NeighLearned::New);
        assert_eq!(t.learn(1, bind(3), 6), NeighLearned::TableFull);
        assert_eq!(
            t.learn(1, bind(3), 6),
            NeighLearned::TableFull,
            "no sweep twice a second"
        );
        // Statics go beyond the limit and do not count against it.
        assert!(t.add_static(1, ip(9), [2, 0, 0, 0, 1, 9], 6));
        // Entry 1 ages out at 10, making room.
        assert_eq!(t.learn(1, bind(3), 10), NeighLearned::New);
        assert_eq!(t.learn(1, bind(4), 10), NeighLearned::TableFull);
        // A static replacing a learned entry frees its place.
        assert!(t.add_static(2, ip(2), [2, 0, 0, 0, 1, 2], 11));
        assert_eq!(t.learn(1, bind(4), 11), NeighLearned::New);
        assert_eq!(t.snapshot(11).len(), 4);
    }

    #[test]
    fn checksum_matches_a_known_advertisement() {
        // The sum of a message whose checksum field holds its checksum is 0xffff.
        let f = nd_frame(
            NEIGHBOR_ADVERT,
            0x60,
            GUEST_B,
            v6("fe80::b"),
            v6("fe80::a"),
            v6("fe80::b"),
            &lla(OPT_TARGET_LLA, GUEST_B),
            255,
        );
        let msg = &f[54..];
        assert_eq!(icmpv6_sum(v6("fe80::b"), v6("fe80::a"), msg), 0xffff);
        let icmp = Icmpv6Slice::from_slice(msg).unwrap();
        assert!(icmp.is_checksum_valid(v6("fe80::b").octets(), v6("fe80::a").octets()));
        // An odd-length message sums its last byte as the high half of a word.
        assert_eq!(sum_words(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn no_input_makes_parse_or_answer_panic() {
        // Every prefix of valid frames, and each with every byte flipped in turn.
        let (a, b) = (v6("2001:db8::a"), v6("2001:db8::b"));
        let frames = [
            arp_frame(ARP_REQUEST, GUEST_A, IP_A, [0; 6], IP_B),
            nd_frame(
                NEIGHBOR_SOLICIT,
                0,
                GUEST_A,
                a,
                b,
                b,
                &lla(OPT_SOURCE_LLA, GUEST_A),
                255,
            ),
            nd_frame(
                NEIGHBOR_ADVERT,
                0x60,
                GUEST_B,
                b,
                a,
                b,
                &[
                    lla(OPT_TARGET_LLA, GUEST_B),
                    vec![14, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ]
                .concat(),
                255,
            ),
        ];
        let known = Known {
            mac: GUEST_B,
            router: Some(false),
        };
        for f in &frames {
            for len in 0..=f.len() {
                let _ = is_candidate(&f[..len]);
                if let Ok(m) = parse(&f[..len]) {
                    let _ = m.binding();
                    if let Some(q) = m.question() {
                        let _ = answer(&q, known);
                    }
                }
            }
            for at in 0..f.len() {
                for bit in 0..8 {
                    let mut g = f.clone();
                    g[at] ^= 1 << bit;
                    if let Ok(m) = parse(&g) {
                        let _ = m.binding();
                        if let Some(q) = m.question() {
                            let r = answer(&q, known);
                            assert!(parse(r.as_bytes()).is_ok(), "an answer reads back");
                        }
                    }
                }
            }
        }
    }
}
