//! Applying header-changing actions to a copy of a frame's first bytes. What leaves is the
//! modified copy followed by the rest of the original frame (from `skip` on), so payloads are
//! still copied once, straight from the sender's buffers. Checksums are updated incrementally
//! (RFC 1624), so a payload never has to be read to fix them.

use std::net::Ipv4Addr;

use super::extract::l3_offset;
use super::key::consts::*;

/// Bytes of a frame the flow tables see and actions may change: Ethernet + tag + IPv4 with
/// options + a TCP header's checksum field; and what connection tracking reads of an ICMPv6
/// error (Ethernet, tag, IPv6, ICMPv6, the quoted IPv6 header and ports: 18 + 40 + 8 + 44).
pub const REWRITE_BYTES: usize = 18 + 60 + 20 + 16;
const _: () = assert!(REWRITE_BYTES >= crate::conntrack::packet::ICMPV6_ERROR_BYTES);

/// Most tags actions may add to a frame (pushes minus pops). A push beyond is refused and the
/// pipeline drops the packet (OVS also bounds the VLAN headers it pushes).
pub const MAX_PUSHED_TAGS: usize = 8;

/// The original prefix plus every tag that may be pushed onto it: bounding the growth, not
/// the number of pushes, is what keeps every push inside the buffer, and it keeps the whole
/// original prefix (the rewritable window) in the buffer, whatever the actions.
const CAPACITY: usize = REWRITE_BYTES + 4 * MAX_PUSHED_TAGS;

/// A frame's first bytes as the tables matched them, where the caller keeps them: a
/// [`HeaderBuf`] is made from them only when an action rewrites them (most runs do not,
/// and the copy, written and read back at once, cost more than their lookups).
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    pub bytes: &'a [u8],
    /// Where the frame's partial L4 checksum field is, if its sender offloaded it.
    pub partial_csum_at: Option<u16>,
}

impl Matched<'_> {
    /// A header buffer to rewrite, made from these bytes.
    pub fn to_buf(&self) -> HeaderBuf {
        HeaderBuf::new(self.bytes).with_partial_csum_at(self.partial_csum_at)
    }

    /// The outer 802.1Q tag's TCI, if tagged (a tag as [`HeaderBuf`]'s VLAN rewrites see it).
    pub fn tci(&self) -> Option<u16> {
        match self.bytes {
            [_, _, _, _, _, _, _, _, _, _, _, _, 0x81, 0x00, hi, lo, _, _, ..] => {
                Some(u16::from_be_bytes([*hi, *lo]))
            }
            _ => None,
        }
    }
}

/// A frame's first bytes, modified by actions. The frame that leaves is `bytes()` followed by
/// the original frame from `skip()` on.
#[derive(Clone, Copy)]
pub struct HeaderBuf {
    bytes: [u8; CAPACITY],
    len: usize,
    /// How many bytes of the original frame these bytes replace.
    skip: usize,
    /// Where a partial L4 checksum's field is (the sender offloaded the checksum): that
    /// field holds the pseudo-header's sum, not the complement of the whole sum.
    partial_csum_at: Option<usize>,
}

impl std::fmt::Debug for HeaderBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeaderBuf({} bytes for {})", self.len, self.skip)
    }
}

/// One's-complement update of a 16-bit checksum at `at` for a 16-bit word changing old -> new.
fn csum_update16(b: &mut [u8], at: usize, old: u16, new: u16) {
    let Some(field) = b.get(at..at + 2) else {
        return;
    };
    let hc = u16::from_be_bytes([field[0], field[1]]);
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let out = !(sum as u16);
    b[at..at + 2].copy_from_slice(&out.to_be_bytes());
}

fn csum_update32(b: &mut [u8], at: usize, old: u32, new: u32) {
    csum_update16(b, at, (old >> 16) as u16, (new >> 16) as u16);
    csum_update16(b, at, old as u16, new as u16);
}

/// A UDP checksum that comes out 0 after an update is sent as 0xffff, as one computed in
/// full would be (RFC 768): 0 means "no checksum", which an IPv6 receiver drops.
fn udp_not_zero(b: &mut [u8], at: usize, proto: u8) {
    if u64::from(proto) == IP_UDP && b.get(at..at + 2) == Some(&[0, 0][..]) {
        b[at..at + 2].copy_from_slice(&[0xff, 0xff]);
    }
}

/// The same change to a partial checksum's field, which holds a sum rather than its
/// complement: complemented around the full update.
fn partial_update32(b: &mut [u8], at: usize, old: u32, new: u32) {
    let Some(field) = b.get_mut(at..at + 2) else {
        return;
    };
    for byte in field.iter_mut() {
        *byte = !*byte;
    }
    csum_update32(b, at, old, new);
    for byte in &mut b[at..at + 2] {
        *byte = !*byte;
    }
}

impl HeaderBuf {
    /// `prefix` is the frame's first bytes (up to [`REWRITE_BYTES`]).
    pub fn new(prefix: &[u8]) -> HeaderBuf {
        let n = prefix.len().min(REWRITE_BYTES);
        let mut bytes = [0u8; CAPACITY];
        bytes[..n].copy_from_slice(&prefix[..n]);
        HeaderBuf {
            bytes,
            len: n,
            skip: n,
            partial_csum_at: None,
        }
    }

    /// `bytes` (up to [`REWRITE_BYTES`]) replacing the first `skip` bytes of a frame (a
    /// segment's own headers in front of its slice of a super-frame).
    pub fn replacing(bytes: &[u8], skip: usize) -> HeaderBuf {
        let mut h = HeaderBuf::new(bytes);
        h.skip = skip;
        h
    }

    /// Marks the L4 checksum field at `at` (csum_start + csum_offset of the frame's offload)
    /// as partial, so that address changes keep it a valid pseudo-header sum and port
    /// changes leave it alone (the receiver, or the switch, sums the ports later).
    pub fn with_partial_csum_at(mut self, at: Option<u16>) -> HeaderBuf {
        self.partial_csum_at = at.map(usize::from);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Where the partial L4 checksum field is (see [`Self::with_partial_csum_at`]).
    pub fn partial_csum_at(&self) -> Option<u16> {
        self.partial_csum_at.and_then(|at| u16::try_from(at).ok())
    }

    pub fn skip(&self) -> usize {
        self.skip
    }

    /// Length of the frame that leaves, given the original's.
    pub fn out_len(&self, frame_len: u32) -> u32 {
        frame_len + self.len as u32 - self.skip as u32
    }

    fn tagged(&self) -> bool {
        self.len >= 18 && self.bytes[12..14] == [0x81, 0x00]
    }

    fn tci(&self) -> Option<u16> {
        self.tagged()
            .then(|| u16::from_be_bytes([self.bytes[14], self.bytes[15]]))
    }

    fn set_tci(&mut self, tci: u16) {
        self.bytes[14..16].copy_from_slice(&tci.to_be_bytes());
    }

    /// `push_vlan:0x8100` (TCI 0; mod_vlan_* fill it in). False, with nothing changed, for a
    /// runt or when the actions already added [`MAX_PUSHED_TAGS`] tags.
    pub fn push_vlan(&mut self, tpid: u16) -> bool {
        // `skip <= REWRITE_BYTES`, so the second test implies the first; both are cheap and
        // the first is what keeps `copy_within` in bounds.
        if self.len < 14
            || self.len + 4 > CAPACITY
            || self.len + 4 > self.skip + 4 * MAX_PUSHED_TAGS
        {
            return false;
        }
        self.bytes.copy_within(12..self.len, 16);
        self.bytes[12..14].copy_from_slice(&tpid.to_be_bytes());
        self.bytes[14..16].copy_from_slice(&[0, 0]);
        self.len += 4;
        true
    }

    /// `strip_vlan` / `pop_vlan`: removes the outer tag if there is one.
    pub fn strip_vlan(&mut self) {
        if self.tagged() {
            self.bytes.copy_within(16..self.len, 12);
            self.len -= 4;
        }
    }

    /// `mod_vlan_vid` (pushes a tag first if untagged, as OVS does). False, with nothing
    /// changed, if that push is refused (see [`HeaderBuf::push_vlan`]); never for an untagged
    /// header of at least 14 bytes (it carries no pushed tag).
    pub fn set_vlan_vid(&mut self, vid: u16) -> bool {
        if !self.tagged() && !self.push_vlan(0x8100) {
            return false;
        }
        let tci = self.tci().unwrap_or(0);
        self.set_tci((tci & 0xf000) | (vid & 0x0fff));
        true
    }

    /// `mod_vlan_pcp`; pushes a tag like [`HeaderBuf::set_vlan_vid`].
    pub fn set_vlan_pcp(&mut self, pcp: u8) -> bool {
        if !self.tagged() && !self.push_vlan(0x8100) {
            return false;
        }
        let tci = self.tci().unwrap_or(0);
        self.set_tci((tci & 0x1fff) | (u16::from(pcp & 7) << 13));
        true
    }

    pub fn set_dl_src(&mut self, mac: [u8; 6]) {
        if self.len >= 12 {
            self.bytes[6..12].copy_from_slice(&mac);
        }
    }

    pub fn set_dl_dst(&mut self, mac: [u8; 6]) {
        if self.len >= 6 {
            self.bytes[0..6].copy_from_slice(&mac);
        }
    }

    /// (L3 offset, protocol, L4 offset) of an IPv4 packet whose IP header is in the buffer.
    fn ipv4(&self) -> Option<(usize, u8, usize)> {
        let (l3, ethertype) = l3_offset(self.bytes())?;
        if ethertype != ETH_IPV4 || self.len < l3 + 20 || self.bytes[l3] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(self.bytes[l3] & 0x0f) * 4;
        let first_fragment =
            u16::from_be_bytes([self.bytes[l3 + 6], self.bytes[l3 + 7]]) & 0x1fff == 0;
        let l4 = if first_fragment { l3 + ihl } else { usize::MAX };
        Some((l3, self.bytes[l3 + 9], l4))
    }

    /// Where the L4 checksum is, if the packet has one in the buffer (UDP checksum 0 means
    /// "none" and stays 0).
    fn l4_checksum(&self, proto: u8, l4: usize) -> Option<usize> {
        let at = match u64::from(proto) {
            IP_TCP => l4.checked_add(16)?,
            IP_UDP => l4.checked_add(6)?,
            _ => return None,
        };
        if at + 2 > self.len {
            return None;
        }
        if u64::from(proto) == IP_UDP && self.bytes[at..at + 2] == [0, 0] && !self.is_partial(at) {
            return None;
        }
        Some(at)
    }

    /// Whether the checksum field at `at` is a partial one (see [`Self::with_partial_csum_at`]).
    /// The field moves with the tags pushed or popped in front of it.
    fn is_partial(&self, at: usize) -> bool {
        self.partial_csum_at
            .is_some_and(|p| p as isize + self.len as isize - self.skip as isize == at as isize)
    }

    fn set_ip(&mut self, offset: usize, ip: Ipv4Addr) {
        let Some((l3, proto, l4)) = self.ipv4() else {
            return;
        };
        let at = l3 + offset;
        let old = u32::from_be_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ]);
        let new = u32::from(ip);
        self.bytes[at..at + 4].copy_from_slice(&ip.octets());
        csum_update32(&mut self.bytes, l3 + 10, old, new);
        // The TCP/UDP checksum covers the addresses through the pseudo-header.
        if let Some(c) = self.l4_checksum(proto, l4) {
            if self.is_partial(c) {
                partial_update32(&mut self.bytes, c, old, new);
            } else {
                csum_update32(&mut self.bytes, c, old, new);
                udp_not_zero(&mut self.bytes, c, proto);
            }
        }
    }

    /// `mod_nw_src`
    pub fn set_nw_src(&mut self, ip: Ipv4Addr) {
        self.set_ip(12, ip);
    }

    /// `mod_nw_dst`
    pub fn set_nw_dst(&mut self, ip: Ipv4Addr) {
        self.set_ip(16, ip);
    }

    /// `mod_nw_tos`: the DSCP bits (ECN bits kept) of the IPv4 TOS (header checksum
    /// updated) or the IPv6 traffic class.
    pub fn set_nw_tos(&mut self, tos: u8) {
        if let Some((l3, _, _)) = self.ipv6() {
            // Traffic class: the low nibble of byte 0 and the high nibble of byte 1.
            let class = (self.bytes[l3] << 4) | (self.bytes[l3 + 1] >> 4);
            let class = (tos & 0xfc) | (class & 0x03);
            self.bytes[l3] = (self.bytes[l3] & 0xf0) | (class >> 4);
            self.bytes[l3 + 1] = (self.bytes[l3 + 1] & 0x0f) | (class << 4);
            return;
        }
        let Some((l3, _, _)) = self.ipv4() else {
            return;
        };
        let old_word = u16::from_be_bytes([self.bytes[l3], self.bytes[l3 + 1]]);
        self.bytes[l3 + 1] = (tos & 0xfc) | (self.bytes[l3 + 1] & 0x03);
        let new_word = u16::from_be_bytes([self.bytes[l3], self.bytes[l3 + 1]]);
        csum_update16(&mut self.bytes, l3 + 10, old_word, new_word);
    }

    /// Whether the port was there to change: not for a later fragment, nor past the
    /// bytes kept (IPv6 extension headers can push it there); the caller's key then keeps
    /// the frame's ports.
    fn set_port(&mut self, offset: usize, port: u16) -> bool {
        let Some((_, proto, l4)) = self.ipv4().or_else(|| self.ipv6()) else {
            return false;
        };
        if !matches!(u64::from(proto), IP_TCP | IP_UDP) || l4.saturating_add(offset + 2) > self.len
        {
            return false;
        }
        let at = l4 + offset;
        let old = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
        self.bytes[at..at + 2].copy_from_slice(&port.to_be_bytes());
        // A partial checksum does not cover the ports yet: whoever completes it will.
        if let Some(c) = self.l4_checksum(proto, l4).filter(|c| !self.is_partial(*c)) {
            csum_update16(&mut self.bytes, c, old, port);
            udp_not_zero(&mut self.bytes, c, proto);
        }
        true
    }

    /// `mod_tp_src`; whether the frame had a port to change (see `set_port`).
    #[must_use]
    pub fn set_tp_src(&mut self, port: u16) -> bool {
        self.set_port(0, port)
    }

    /// `mod_tp_dst`; as [`Self::set_tp_src`].
    #[must_use]
    pub fn set_tp_dst(&mut self, port: u16) -> bool {
        self.set_port(2, port)
    }

    /// `dec_ttl`: false when the TTL (IPv4) or hop limit (IPv6) is (or reaches) 0 and the
    /// packet must be dropped. Other packets pass unchanged (OVS would send them to the
    /// controller; there is none).
    pub fn dec_ttl(&mut self) -> bool {
        if let Some((l3, _, _)) = self.ipv6() {
            let hops = self.bytes[l3 + 7];
            if hops <= 1 {
                return false;
            }
            self.bytes[l3 + 7] = hops - 1;
            return true;
        }
        let Some((l3, _, _)) = self.ipv4() else {
            return true;
        };
        let ttl = self.bytes[l3 + 8];
        if ttl <= 1 {
            return false;
        }
        self.set_nw_ttl(ttl - 1);
        true
    }

    /// `mod_nw_ttl` / `set_field:...->nw_ttl`: the IPv4 TTL (header checksum updated) or the
    /// IPv6 hop limit.
    pub fn set_nw_ttl(&mut self, ttl: u8) {
        if let Some((l3, _, _)) = self.ipv6() {
            self.bytes[l3 + 7] = ttl;
            return;
        }
        let Some((l3, _, _)) = self.ipv4() else {
            return;
        };
        let old_word = u16::from_be_bytes([self.bytes[l3 + 8], self.bytes[l3 + 9]]);
        self.bytes[l3 + 8] = ttl;
        let new_word = u16::from_be_bytes([self.bytes[l3 + 8], self.bytes[l3 + 9]]);
        csum_update16(&mut self.bytes, l3 + 10, old_word, new_word);
    }

    /// `set_field:...->nw_ecn`: the two ECN bits of the IPv4 TOS or the IPv6 traffic class.
    pub fn set_nw_ecn(&mut self, ecn: u8) {
        let ecn = ecn & 3;
        if let Some((l3, _, _)) = self.ipv6() {
            // Traffic class: the low nibble of byte 0 and the high nibble of byte 1.
            self.bytes[l3 + 1] = (self.bytes[l3 + 1] & !0x30) | (ecn << 4);
            return;
        }
        let Some((l3, _, _)) = self.ipv4() else {
            return;
        };
        let old_word = u16::from_be_bytes([self.bytes[l3], self.bytes[l3 + 1]]);
        self.bytes[l3 + 1] = (self.bytes[l3 + 1] & 0xfc) | ecn;
        let new_word = u16::from_be_bytes([self.bytes[l3], self.bytes[l3 + 1]]);
        csum_update16(&mut self.bytes, l3 + 10, old_word, new_word);
    }

    /// (L3 offset, upper-layer protocol, L4 offset) of an IPv6 packet whose header is in the
    /// buffer, through hop-by-hop, routing and destination options headers (L4 at
    /// `usize::MAX` for a later fragment).
    fn ipv6(&self) -> Option<(usize, u8, usize)> {
        let (l3, ethertype) = l3_offset(self.bytes())?;
        if ethertype != ETH_IPV6 || self.len < l3 + 40 || self.bytes[l3] >> 4 != 6 {
            return None;
        }
        let mut next = self.bytes[l3 + 6];
        let mut at = l3 + 40;
        for _ in 0..8 {
            match next {
                0 | 43 | 60 if at + 2 <= self.len => {
                    next = self.bytes[at];
                    at += (usize::from(self.bytes[at + 1]) + 1) * 8;
                }
                // A first fragment's headers go on after it, as extraction reads them.
                44 if at + 4 <= self.len => {
                    let offset = u16::from_be_bytes([self.bytes[at + 2], self.bytes[at + 3]]);
                    next = self.bytes[at];
                    if offset & 0xfff8 != 0 {
                        return Some((l3, next, usize::MAX));
                    }
                    at += 8;
                }
                0 | 43 | 60 | 44 => return Some((l3, next, usize::MAX)),
                _ => break,
            }
        }
        Some((l3, next, at))
    }

    /// `set_field:...->ipv6_src` / `ipv6_dst`: the TCP, UDP or ICMPv6 checksum (all cover
    /// the addresses) follows.
    fn set_ipv6_addr(&mut self, offset: usize, addr: std::net::Ipv6Addr) {
        let Some((l3, proto, l4)) = self.ipv6() else {
            return;
        };
        let at = l3 + offset;
        let new = addr.octets();
        let mut old = [0u8; 16];
        old.copy_from_slice(&self.bytes[at..at + 16]);
        self.bytes[at..at + 16].copy_from_slice(&new);
        let csum = match u64::from(proto) {
            IP_TCP => l4.checked_add(16),
            IP_UDP => l4.checked_add(6),
            IP_ICMPV6 => l4.checked_add(2),
            _ => None,
        };
        let Some(c) = csum.filter(|c| c + 2 <= self.len) else {
            return;
        };
        let partial = self.is_partial(c);
        for i in (0..16).step_by(4) {
            let o = u32::from_be_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]);
            let n = u32::from_be_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]);
            if partial {
                partial_update32(&mut self.bytes, c, o, n);
            } else {
                csum_update32(&mut self.bytes, c, o, n);
            }
        }
        if !partial {
            udp_not_zero(&mut self.bytes, c, proto);
        }
    }

    pub fn set_ipv6_src(&mut self, addr: std::net::Ipv6Addr) {
        self.set_ipv6_addr(8, addr);
    }

    pub fn set_ipv6_dst(&mut self, addr: std::net::Ipv6Addr) {
        self.set_ipv6_addr(24, addr);
    }

    /// `set_field:...->ipv6_label` (20 bits; no checksum covers it).
    pub fn set_ipv6_label(&mut self, label: u32) {
        let Some((l3, _, _)) = self.ipv6() else {
            return;
        };
        let first = u32::from_be_bytes([
            self.bytes[l3],
            self.bytes[l3 + 1],
            self.bytes[l3 + 2],
            self.bytes[l3 + 3],
        ]);
        let new = (first & !0xf_ffff) | (label & 0xf_ffff);
        self.bytes[l3..l3 + 4].copy_from_slice(&new.to_be_bytes());
    }

    /// An Ethernet/IPv4 ARP packet's L3 offset.
    fn arp(&self) -> Option<usize> {
        let (l3, ethertype) = l3_offset(self.bytes())?;
        (ethertype == ETH_ARP
            && self.len >= l3 + 28
            && self.bytes[l3..l3 + 6] == [0, 1, 8, 0, 6, 4])
        .then_some(l3)
    }

    /// `set_field:...->arp_op|arp_spa|arp_tpa|arp_sha|arp_tha`: `field` is the key's field
    /// for it (arp_op is nw_proto, spa and tpa are nw_src and nw_dst, as OVS models them).
    pub fn set_arp(&mut self, field: super::key::Field, value: u64) {
        use super::key::Field;
        let Some(l3) = self.arp() else {
            return;
        };
        let b = value.to_be_bytes();
        match field {
            Field::NwProto => {
                self.bytes[l3 + 6..l3 + 8].copy_from_slice(&(value as u16).to_be_bytes())
            }
            Field::ArpSha => self.bytes[l3 + 8..l3 + 14].copy_from_slice(&b[2..8]),
            Field::NwSrc => self.bytes[l3 + 14..l3 + 18].copy_from_slice(&b[4..8]),
            Field::ArpTha => self.bytes[l3 + 18..l3 + 24].copy_from_slice(&b[2..8]),
            Field::NwDst => self.bytes[l3 + 24..l3 + 28].copy_from_slice(&b[4..8]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(vlan: Option<u16>) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut out = Vec::new();
        let payload = b"hello, checksums";
        match vlan {
            Some(v) => b
                .single_vlan(etherparse::VlanId::try_new(v).unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(1234, 80, 1, 1000)
                .write(&mut out, payload)
                .unwrap(),
            None => b
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(1234, 80, 1, 1000)
                .write(&mut out, payload)
                .unwrap(),
        }
        out
    }

    fn apply<R>(frame: &[u8], f: impl FnOnce(&mut HeaderBuf) -> R) -> Vec<u8> {
        let mut h = HeaderBuf::new(&frame[..frame.len().min(REWRITE_BYTES)]);
        f(&mut h);
        let mut out = h.bytes().to_vec();
        out.extend_from_slice(&frame[h.skip()..]);
        out
    }

    /// Checks every checksum with etherparse's own computation.
    fn checksums_ok(frame: &[u8]) -> bool {
        let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            return false;
        };
        let hdr = ip.header().to_header();
        if hdr.calc_header_checksum() != hdr.header_checksum {
            return false;
        }
        match p.transport {
            Some(etherparse::TransportSlice::Tcp(tcp)) => {
                let header = tcp.to_header();
                header.calc_checksum_ipv4(&hdr, tcp.payload()).ok() == Some(header.checksum)
            }
            _ => true,
        }
    }

    #[test]
    fn address_and_port_rewrites_keep_checksums_valid() {
        let f = tcp_frame(None);
        assert!(checksums_ok(&f));
        let out = apply(&f, |h| {
            h.set_nw_src(Ipv4Addr::new(192, 0, 2, 7));
            h.set_nw_dst(Ipv4Addr::new(198, 51, 100, 9));
            assert!(h.set_tp_dst(8080));
            assert!(h.set_tp_src(40000));
            h.set_nw_tos(0xb8);
            assert!(h.dec_ttl());
        });
        assert_eq!(out.len(), f.len());
        assert!(checksums_ok(&out), "checksums after rewriting");
        let p = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().source(), [192, 0, 2, 7]);
        assert_eq!(ip.header().ttl(), 63);
        assert_eq!(ip.header().dcp().value(), 0xb8 >> 2);
    }

    #[test]
    fn rewrites_keep_a_partial_checksum_a_valid_pseudo_header_sum() {
        use crate::offload::{segment::complete_checksum, PartialCsum};
        use crate::wire::checksum;
        let f = tcp_frame(None);
        let (l4, at) = (34usize, 34usize + 16);
        // The checksum as a guest that offloads it sends it: the pseudo-header's sum.
        let mut partial = f.clone();
        let pseudo = checksum::pseudo_header(&f[26..30], &f[30..34], 6, (f.len() - l4) as u32);
        partial[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        let mut h = HeaderBuf::new(&partial[..partial.len().min(REWRITE_BYTES)])
            .with_partial_csum_at(Some(at as u16));
        h.set_vlan_vid(5);
        h.set_nw_src(Ipv4Addr::new(192, 0, 2, 7));
        h.set_nw_dst(Ipv4Addr::new(198, 51, 100, 9));
        assert!(h.set_tp_src(40000));
        assert!(h.set_tp_dst(8080));
        let mut out = h.bytes().to_vec();
        out.extend_from_slice(&partial[h.skip()..]);
        // Completed where it leaves (4 bytes further on, behind the pushed tag).
        complete_checksum(
            &mut out,
            PartialCsum {
                start: l4 as u16 + 4,
                offset: 16,
            },
        )
        .unwrap();
        assert!(
            checksums_ok(&out),
            "the completed checksum is right after the rewrites"
        );
        // Without the mark, the same rewrites treat the field as a full checksum: wrong.
        let mut h = HeaderBuf::new(&partial[..partial.len().min(REWRITE_BYTES)]);
        assert!(h.set_tp_dst(8080));
        let mut wrong = h.bytes().to_vec();
        wrong.extend_from_slice(&partial[h.skip()..]);
        complete_checksum(
            &mut wrong,
            PartialCsum {
                start: l4 as u16,
                offset: 16,
            },
        )
        .unwrap();
        assert!(!checksums_ok(&wrong));
    }

    #[test]
    fn vlan_push_pop_and_modify() {
        let f = tcp_frame(None);
        let tagged = apply(&f, |h| {
            h.set_vlan_vid(42);
            h.set_vlan_pcp(5);
        });
        assert_eq!(tagged.len(), f.len() + 4);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0xa0, 42]);
        assert!(checksums_ok(&tagged));
        let untagged = apply(&tagged, |h| h.strip_vlan());
        assert_eq!(untagged, f);
        let retag = apply(&tcp_frame(Some(7)), |h| h.set_vlan_vid(9));
        assert_eq!(&retag[14..16], &[0x00, 9]);
    }

    /// `frame` with `n` tags of TCI 0 pushed in front of its own EtherType (or tag).
    fn with_pushed_tags(frame: &[u8], n: usize) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        for _ in 0..n {
            out.extend_from_slice(&[0x81, 0x00, 0, 0]);
        }
        out.extend_from_slice(&frame[12..]);
        out
    }

    fn numbered_frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f
    }

    #[test]
    fn stacked_pushes_on_long_frames_emit_every_tag_and_the_whole_frame() {
        for len in [98, 99, 102, 150, 1500, 9018] {
            let f = numbered_frame(len);
            for n in 1..=3 {
                let out = apply(&f, |h| {
                    for _ in 0..n {
                        h.push_vlan(0x8100);
                    }
                });
                assert_eq!(out, with_pushed_tags(&f, n), "{n} pushes on {len} bytes");
            }
            let out = apply(&f, |h| {
                h.push_vlan(0x8100);
                h.push_vlan(0x8100);
                h.set_vlan_vid(7);
                h.strip_vlan();
                h.push_vlan(0x8100);
                h.set_vlan_pcp(5);
            });
            let mut expected = with_pushed_tags(&f, 2);
            expected[14..16].copy_from_slice(&[0xa0, 0]);
            assert_eq!(
                out, expected,
                "push, push, vid, strip, push, pcp on {len} bytes"
            );
        }
        // A real TCP packet padded to 1500 bytes, rewritten, then double-tagged.
        let mut tcp = tcp_frame(None);
        tcp.resize(1500, 0x5a);
        let out = apply(&tcp, |h| {
            assert!(h.set_tp_dst(8080));
            h.push_vlan(0x8100);
            h.push_vlan(0x8100);
            h.set_vlan_vid(100);
        });
        let mut expected = apply(&tcp, |h| assert!(h.set_tp_dst(8080)));
        expected = with_pushed_tags(&expected, 2);
        expected[14..16].copy_from_slice(&[0, 100]);
        assert_eq!(out, expected);
    }

    #[test]
    fn pushes_beyond_the_tag_limit_are_refused_and_change_nothing() {
        for len in [14, 60, 98, 1500] {
            let f = numbered_frame(len);
            let mut h = HeaderBuf::new(&f[..len.min(REWRITE_BYTES)]);
            for n in 0..MAX_PUSHED_TAGS {
                assert!(h.push_vlan(0x8100), "push {n} on {len} bytes");
            }
            let full = emitted(&h, &f);
            assert_eq!(full, with_pushed_tags(&f, MAX_PUSHED_TAGS));
            assert!(!h.push_vlan(0x8100), "one tag too many on {len} bytes");
            h.strip_vlan();
            assert!(h.set_vlan_vid(3), "retagging the top tag needs no push");
            assert!(h.push_vlan(0x8100), "room again after a pop");
            assert_eq!(emitted(&h, &f), {
                let mut e = full.clone();
                e[18..20].copy_from_slice(&[0, 3]);
                e
            });
        }
    }

    #[test]
    fn vlan_actions_on_the_shortest_frames() {
        for len in 14..=20 {
            let f = numbered_frame(len);
            let out = apply(&f, |h| h.set_vlan_vid(9));
            let mut expected = with_pushed_tags(&f, 1);
            expected[14..16].copy_from_slice(&[0, 9]);
            assert_eq!(out, expected, "mod_vlan_vid on {len} bytes");
            let out = apply(&f, |h| {
                h.push_vlan(0x8100);
                h.strip_vlan();
                h.strip_vlan();
            });
            assert_eq!(out, f, "push, strip, strip on {len} bytes");
        }
    }

    /// xorshift64*: a deterministic generator, so a failing case can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Push,
        Strip,
        Vid(u16),
        Pcp(u8),
        DlSrc(u8),
        NwSrc(u32),
        NwTos(u8),
        TpDst(u16),
        DecTtl,
    }

    impl Op {
        fn random(rng: &mut Rng, vlan_only: bool) -> Op {
            let kinds = if vlan_only { 5 } else { 9 };
            match rng.below(kinds) {
                // Pushes weigh more so that tags stack up.
                0 | 1 if vlan_only => Op::Push,
                0 => Op::Push,
                1 => Op::Strip,
                2 => Op::Vid(rng.below(4096) as u16),
                3 => Op::Pcp(rng.below(8) as u8),
                4 => Op::DlSrc(rng.next() as u8),
                5 => Op::NwSrc(rng.next() as u32),
                6 => Op::NwTos(rng.next() as u8),
                7 => Op::TpDst(rng.next() as u16),
                _ => Op::DecTtl,
            }
        }

        /// Applies the action to the buffer; false if it refused (the buffer is unchanged).
        fn apply(self, h: &mut HeaderBuf) -> bool {
            match self {
                Op::Push => return h.push_vlan(0x8100),
                Op::Vid(v) => return h.set_vlan_vid(v),
                Op::Pcp(p) => return h.set_vlan_pcp(p),
                Op::Strip => h.strip_vlan(),
                Op::DlSrc(b) => h.set_dl_src([2, 0, 0, 0, 0, b]),
                Op::NwSrc(ip) => h.set_nw_src(Ipv4Addr::from(ip)),
                Op::NwTos(t) => h.set_nw_tos(t),
                Op::TpDst(p) => {
                    let _ = h.set_tp_dst(p);
                }
                Op::DecTtl => {
                    h.dec_ttl();
                }
            }
            true
        }

        /// The same action on a whole frame held in a Vec (VLAN and Ethernet actions only).
        fn model(self, f: &mut Vec<u8>) {
            let push = |f: &mut Vec<u8>| {
                f.splice(12..12, [0x81, 0x00, 0, 0]);
            };
            let set_tci = |f: &mut Vec<u8>, keep: u16, set: u16| {
                let tci = u16::from_be_bytes([f[14], f[15]]);
                f[14..16].copy_from_slice(&((tci & keep) | set).to_be_bytes());
            };
            match self {
                Op::Push => push(f),
                Op::Strip => {
                    if tag_at_front(f) {
                        f.drain(12..16);
                    }
                }
                Op::Vid(v) => {
                    if !tag_at_front(f) {
                        push(f);
                    }
                    set_tci(f, 0xf000, v & 0x0fff);
                }
                Op::Pcp(p) => {
                    if !tag_at_front(f) {
                        push(f);
                    }
                    set_tci(f, 0x1fff, u16::from(p & 7) << 13);
                }
                Op::DlSrc(b) => f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, b]),
                _ => unreachable!("not a VLAN or Ethernet action"),
            }
        }
    }

    /// A random frame of 14..=9018 bytes: random bytes, often shaped as a (tagged) IPv4
    /// TCP/UDP packet so that the IP and port rewrites have something to change.
    fn random_frame(rng: &mut Rng) -> Vec<u8> {
        let len = match rng.below(4) {
            0 => 14 + rng.below(100),
            1 => 94 + rng.below(12),
            2 => 1500,
            _ => 14 + rng.below(9018 - 14 + 1),
        };
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut l3 = 14;
        if rng.below(3) == 0 && len >= 18 {
            f[12..14].copy_from_slice(&[0x81, 0x00]);
            l3 = 18;
        }
        if rng.below(3) != 0 && len >= l3 {
            f[l3 - 2..l3].copy_from_slice(&[0x08, 0x00]);
            if len >= l3 + 20 {
                f[l3] = 0x40 | (5 + rng.below(11) as u8);
                f[l3 + 6] &= 0xe0;
                f[l3 + 9] = [6, 17][rng.below(2)];
            }
        }
        f
    }

    fn tag_at_front(f: &[u8]) -> bool {
        f.len() >= 18 && f[12..14] == [0x81, 0x00]
    }

    fn emitted(h: &HeaderBuf, frame: &[u8]) -> Vec<u8> {
        assert!(
            h.skip() <= frame.len(),
            "{h:?} of a {}-byte frame",
            frame.len()
        );
        let mut out = h.bytes().to_vec();
        out.extend_from_slice(&frame[h.skip()..]);
        assert_eq!(out.len() as u32, h.out_len(frame.len() as u32));
        out
    }

    #[test]
    fn random_action_sequences_never_panic_and_vlan_sequences_match_a_model() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for case in 0..20_000 {
            let frame = random_frame(&mut rng);
            let vlan_only = case % 2 == 0;
            let n_ops = rng.below(if vlan_only { 40 } else { 24 });
            let ops: Vec<Op> = (0..n_ops)
                .map(|_| Op::random(&mut rng, vlan_only))
                .collect();
            let mut h = HeaderBuf::new(&frame[..frame.len().min(REWRITE_BYTES)]);
            let mut model = frame.clone();
            for op in &ops {
                let before = emitted(&h, &frame);
                let done = op.apply(&mut h);
                let after = emitted(&h, &frame);
                // Refused exactly when a needed push would add a tag beyond the limit.
                let pushes = match op {
                    Op::Push => true,
                    Op::Vid(_) | Op::Pcp(_) => !tag_at_front(&before),
                    _ => false,
                };
                let at_limit = before.len() + 4 > frame.len() + 4 * MAX_PUSHED_TAGS;
                assert_eq!(
                    !done,
                    pushes && at_limit,
                    "case {case}: {op:?} on a {}-byte frame grown to {}",
                    frame.len(),
                    before.len()
                );
                if !done {
                    assert_eq!(after, before, "case {case}: {op:?} refused but changed");
                }
                if vlan_only && done {
                    op.model(&mut model);
                }
                if vlan_only {
                    assert_eq!(after, model, "case {case}: after {op:?} of {ops:?}");
                }
            }
            // Whatever the actions, the payload beyond the rewritable header is intact.
            let out = emitted(&h, &frame);
            if frame.len() > REWRITE_BYTES {
                let tail = frame.len() - REWRITE_BYTES;
                assert_eq!(
                    out[out.len() - tail..],
                    frame[REWRITE_BYTES..],
                    "case {case}"
                );
            }
        }
    }

    #[test]
    fn ttl_expiry_drops() {
        let mut f = tcp_frame(None);
        f[14 + 8] = 1;
        let mut h = HeaderBuf::new(&f[..f.len().min(REWRITE_BYTES)]);
        assert!(!h.dec_ttl());
    }

    /// Whether the IPv6 packet's TCP, UDP or ICMPv6 checksum is right.
    fn checksums_ok_v6(frame: &[u8]) -> bool {
        let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
            return false;
        };
        let hdr = ip.header().to_header();
        match p.transport {
            Some(etherparse::TransportSlice::Tcp(tcp)) => {
                let h = tcp.to_header();
                h.calc_checksum_ipv6(&hdr, tcp.payload()).ok() == Some(h.checksum)
            }
            Some(etherparse::TransportSlice::Udp(udp)) => {
                let h = udp.to_header();
                h.calc_checksum_ipv6(&hdr, udp.payload()).ok() == Some(h.checksum)
            }
            Some(etherparse::TransportSlice::Icmpv6(icmp)) => {
                let h = icmp.header();
                h.icmp_type
                    .calc_checksum(hdr.source, hdr.destination, icmp.payload())
                    .ok()
                    == Some(h.checksum)
            }
            _ => false,
        }
    }

    #[test]
    fn a_udp_checksum_that_comes_out_zero_leaves_as_all_ones() {
        let a: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(a, a, 64)
            .udp(1234, 53)
            .write(&mut f, b"payload")
            .unwrap();
        let (at, sport_at) = (14 + 40 + 6, 14 + 40);
        let checksum = u32::from(u16::from_be_bytes([f[at], f[at + 1]]));
        // The source port that brings the one's complement sum to zero: the checksum's
        // complement then comes out as 0x0000, which UDP must send as 0xffff.
        let sum = checksum + 1234;
        let port = ((sum & 0xffff) + (sum >> 16)) as u16;
        let out = apply(&f, |h| assert!(h.set_tp_src(port)));
        assert_eq!(out[sport_at..sport_at + 2], port.to_be_bytes());
        assert_eq!(out[at..at + 2], [0xff, 0xff]);
        assert!(checksums_ok_v6(&out), "{out:02x?}");
    }

    #[test]
    fn ipv6_ports_are_found_past_a_first_fragment_and_not_past_the_bytes_kept() {
        // Ethernet, IPv6 (next: fragment), a fragment header at offset 0 (next: destination
        // options), destination options of `opts` 8-byte units, UDP.
        let frame = |opts: usize| {
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
            let l4_len = 8 + 8 * opts + 8 + 8;
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[44, 64]);
            f.extend_from_slice(&[0xfd; 32]);
            f.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[17, (opts - 1) as u8, 1, (8 * opts - 4) as u8]);
            f.resize(f.len() + 8 * opts - 4, 0);
            let l4 = f.len();
            f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x35, 0, 16, 0, 0]);
            f.extend_from_slice(b"payload!");
            (f, l4)
        };
        let (f, l4) = frame(1);
        let out = apply(&f, |h| assert!(h.set_tp_dst(8080)));
        assert_eq!(out[l4 + 2..l4 + 4], 8080u16.to_be_bytes());
        // Options long enough to push the ports past the rewritable bytes: nothing changes,
        // and the caller is told so (its key keeps the frame's ports).
        let (f, l4) = frame(8);
        assert!(l4 + 4 > REWRITE_BYTES);
        let out = apply(&f, |h| assert!(!h.set_tp_dst(8080)));
        assert_eq!(out, f);
    }

    #[test]
    fn ipv6_ttl_ecn_label_and_arp_rewrites_keep_checksums_valid() {
        let a: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let eth = || etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut frames = Vec::new();
        for kind in 0..3 {
            let mut f = Vec::new();
            let base = eth().ipv6(a, b, 64);
            match kind {
                0 => base
                    .tcp(1234, 80, 7, 1000)
                    .write(&mut f, b"payload")
                    .unwrap(),
                1 => base.udp(1234, 53).write(&mut f, b"payload").unwrap(),
                _ => base
                    .icmpv6_echo_request(1, 2)
                    .write(&mut f, b"payload")
                    .unwrap(),
            }
            frames.push(f);
        }
        let new: std::net::Ipv6Addr = "2001:db8::99".parse().unwrap();
        for (kind, f) in frames.iter().enumerate() {
            let out = apply(f, |h| {
                h.set_ipv6_src(new);
                h.set_ipv6_dst("2001:db8::1:2".parse().unwrap());
                h.set_nw_ttl(9);
                h.set_nw_ecn(3);
                h.set_nw_tos(0xb8);
                h.set_ipv6_label(0x12345);
                // TCP and UDP have a port; ICMPv6 has none.
                assert_eq!(h.set_tp_dst(8080), kind < 2);
            });
            assert!(checksums_ok_v6(&out), "{out:02x?}");
            assert_eq!(out[22..38], new.octets());
            assert_eq!(out[21], 9, "hop limit");
            assert_eq!((out[15] >> 4) & 3, 3, "ECN");
            let class = (out[14] << 4) | (out[15] >> 4);
            assert_eq!(
                (class, out[14] >> 4),
                (0xbb, 6),
                "DSCP set, ECN and version kept"
            );
            assert_eq!(
                u32::from_be_bytes([0, out[15] & 0xf, out[16], out[17]]),
                0x12345
            );
            // dec_ttl on IPv6: the hop limit, and 1 expires.
            let out = apply(&out, |h| assert!(h.dec_ttl()));
            assert_eq!(out[21], 8);
        }
        let out = apply(&frames[0], |h| h.set_nw_ttl(1));
        assert!(!HeaderBuf::new(&out).dec_ttl());

        // IPv4: TTL and ECN under the header checksum.
        let f = tcp_frame(None);
        let out = apply(&f, |h| {
            h.set_nw_ttl(3);
            h.set_nw_ecn(1);
        });
        assert!(checksums_ok(&out));
        assert_eq!((out[22], out[15] & 3), (3, 1));

        // ARP: every field, no checksum.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let out = apply(&arp, |h| {
            use crate::flow::key::Field;
            h.set_arp(Field::NwProto, 2);
            h.set_arp(Field::ArpSha, 0x0e00_0000_0009);
            h.set_arp(Field::NwSrc, 0x0a00_0009);
            h.set_arp(Field::ArpTha, 0x0200_0000_0001);
            h.set_arp(Field::NwDst, 0x0a00_0001);
        });
        assert_eq!(out[20..22], [0, 2]);
        assert_eq!(out[22..28], [0x0e, 0, 0, 0, 0, 9]);
        assert_eq!(out[28..32], [10, 0, 0, 9]);
        assert_eq!(out[32..38], [2, 0, 0, 0, 0, 1]);
        assert_eq!(out[38..42], [10, 0, 0, 1]);
    }
}
