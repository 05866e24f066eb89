//! Building and reading test frames.

/// A MAC address for test station `n` (locally administered).
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An untagged frame of `len` bytes (at least 60) whose payload carries `seq`.
pub fn frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(60);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88b5u16.to_be_bytes()); // local experimental EtherType
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u8).wrapping_mul(7));
    }
    f
}

/// The same frame with an 802.1Q tag (VID, PCP) after the addresses.
pub fn tagged(dst: [u8; 6], src: [u8; 6], vid: u16, pcp: u8, seq: u32, len: usize) -> Vec<u8> {
    push_tag(&frame(dst, src, seq, len), vid, pcp)
}

/// Inserts an 802.1Q tag into an untagged frame.
pub fn push_tag(untagged: &[u8], vid: u16, pcp: u8) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&((u16::from(pcp) << 13) | vid).to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

/// (VID, PCP) of a tagged frame, or None.
pub fn tag_of(f: &[u8]) -> Option<(u16, u8)> {
    (f.len() >= 18 && f[12..14] == [0x81, 0x00]).then(|| {
        let tci = u16::from_be_bytes([f[14], f[15]]);
        (tci & 0x0fff, (tci >> 13) as u8)
    })
}

/// The frame without its outer tag.
pub fn strip_tag(f: &[u8]) -> Vec<u8> {
    if tag_of(f).is_some() {
        let mut out = f[..12].to_vec();
        out.extend_from_slice(&f[16..]);
        out
    } else {
        f.to_vec()
    }
}

/// An ARP request (`op` 1, broadcast) or reply (`op` 2, to `dst_mac`), padded to 60 bytes.
pub fn arp(
    op: u16,
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_mac: [u8; 6],
    target_ip: [u8; 4],
) -> Vec<u8> {
    let eth_dst = if op == 1 { [0xff; 6] } else { dst_mac };
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&if op == 1 { [0; 6] } else { dst_mac });
    f.extend_from_slice(&target_ip);
    f.resize(60, 0);
    f
}

/// The sender MAC of an ARP reply for `ip` in `f`, if it is one.
pub fn arp_reply_for(f: &[u8], ip: [u8; 4]) -> Option<[u8; 6]> {
    (f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == ip)
        .then(|| f[22..28].try_into().unwrap())
}
