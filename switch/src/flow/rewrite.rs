//! Applying header-changing actions to a copy of a frame's first bytes. What leaves is the
//! modified copy followed by the rest of the original frame (from `skip` on), so payloads are
//! still copied once, straight from the sender's buffers. Checksums are updated incrementally
//! (RFC 1624), so a payload never has to be read to fix them.

use std::net::Ipv4Addr;

use super::extract::l3_offset;
use super::key::consts::*;

/// Bytes of a frame actions may change: Ethernet + tag + IPv4 with options + a TCP header's
/// checksum field.
pub const REWRITE_BYTES: usize = 18 + 60 + 20;

/// A frame's first bytes, modified by actions.
#[derive(Clone, Copy)]
pub struct HeaderBuf {
    bytes: [u8; REWRITE_BYTES + 4],
    len: usize,
    /// How many bytes of the original frame these bytes replace.
    skip: usize,
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

impl HeaderBuf {
    /// `prefix` is the frame's first bytes (up to [`REWRITE_BYTES`]).
    pub fn new(prefix: &[u8]) -> HeaderBuf {
        let n = prefix.len().min(REWRITE_BYTES);
        let mut bytes = [0u8; REWRITE_BYTES + 4];
        bytes[..n].copy_from_slice(&prefix[..n]);
        HeaderBuf {
            bytes,
            len: n,
            skip: n,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
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

    /// `push_vlan:0x8100` (TCI 0; mod_vlan_* fill it in).
    pub fn push_vlan(&mut self, tpid: u16) {
        if self.len < 14 {
            return;
        }
        self.bytes.copy_within(12..self.len, 16);
        self.bytes[12..14].copy_from_slice(&tpid.to_be_bytes());
        self.bytes[14..16].copy_from_slice(&[0, 0]);
        self.len += 4;
    }

    /// `strip_vlan` / `pop_vlan`: removes the outer tag if there is one.
    pub fn strip_vlan(&mut self) {
        if self.tagged() {
            self.bytes.copy_within(16..self.len, 12);
            self.len -= 4;
        }
    }

    /// `mod_vlan_vid` (pushes a tag first if untagged, as OVS does).
    pub fn set_vlan_vid(&mut self, vid: u16) {
        if !self.tagged() {
            self.push_vlan(0x8100);
        }
        let tci = self.tci().unwrap_or(0);
        self.set_tci((tci & 0xf000) | (vid & 0x0fff));
    }

    /// `mod_vlan_pcp`
    pub fn set_vlan_pcp(&mut self, pcp: u8) {
        if !self.tagged() {
            self.push_vlan(0x8100);
        }
        let tci = self.tci().unwrap_or(0);
        self.set_tci((tci & 0x1fff) | (u16::from(pcp & 7) << 13));
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
        if u64::from(proto) == IP_UDP && self.bytes[at..at + 2] == [0, 0] {
            return None;
        }
        Some(at)
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
            csum_update32(&mut self.bytes, c, old, new);
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

    /// `mod_nw_tos`: the DSCP bits (ECN bits kept).
    pub fn set_nw_tos(&mut self, tos: u8) {
        let Some((l3, _, _)) = self.ipv4() else {
            return;
        };
        let old_word = u16::from_be_bytes([self.bytes[l3], self.bytes[l3 + 1]]);
        self.bytes[l3 + 1] = (tos & 0xfc) | (self.bytes[l3 + 1] & 0x03);
        let new_word = u16::from_be_bytes([self.bytes[l3], self.bytes[l3 + 1]]);
        csum_update16(&mut self.bytes, l3 + 10, old_word, new_word);
    }

    fn set_port(&mut self, offset: usize, port: u16) {
        let Some((_, proto, l4)) = self.ipv4() else {
            return;
        };
        if !matches!(u64::from(proto), IP_TCP | IP_UDP) || l4.saturating_add(offset + 2) > self.len
        {
            return;
        }
        let at = l4 + offset;
        let old = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
        self.bytes[at..at + 2].copy_from_slice(&port.to_be_bytes());
        if let Some(c) = self.l4_checksum(proto, l4) {
            csum_update16(&mut self.bytes, c, old, port);
        }
    }

    /// `mod_tp_src`
    pub fn set_tp_src(&mut self, port: u16) {
        self.set_port(0, port);
    }

    /// `mod_tp_dst`
    pub fn set_tp_dst(&mut self, port: u16) {
        self.set_port(2, port);
    }

    /// `dec_ttl`: false when the TTL is (or reaches) 0 and the packet must be dropped.
    /// Non-IPv4 packets pass unchanged (OVS would send them to the controller; there is none).
    pub fn dec_ttl(&mut self) -> bool {
        let Some((l3, _, _)) = self.ipv4() else {
            return true;
        };
        let ttl = self.bytes[l3 + 8];
        if ttl <= 1 {
            return false;
        }
        let old_word = u16::from_be_bytes([self.bytes[l3 + 8], self.bytes[l3 + 9]]);
        self.bytes[l3 + 8] = ttl - 1;
        let new_word = u16::from_be_bytes([self.bytes[l3 + 8], self.bytes[l3 + 9]]);
        csum_update16(&mut self.bytes, l3 + 10, old_word, new_word);
        true
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

    fn apply(frame: &[u8], f: impl FnOnce(&mut HeaderBuf)) -> Vec<u8> {
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
            h.set_tp_dst(8080);
            h.set_tp_src(40000);
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

    #[test]
    fn ttl_expiry_drops() {
        let mut f = tcp_frame(None);
        f[14 + 8] = 1;
        let mut h = HeaderBuf::new(&f[..f.len().min(REWRITE_BYTES)]);
        assert!(!h.dec_ttl());
    }
}
