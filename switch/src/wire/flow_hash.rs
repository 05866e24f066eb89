//! A hash of a frame's flow, for spreading frames over a guest's receive queues: every frame
//! of one TCP or UDP connection (or, beyond IP, one MAC pair) hashes alike, so a flow stays on
//! one queue and in order, as the Linux guest's own transmit side does with its queues.

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// FNV-1a over `bytes`, folded into `h`.
fn fnv(mut h: u32, bytes: &[u8]) -> u32 {
    for b in bytes {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The flow hash of the frame starting with `b` (its first 64 bytes suffice): IP addresses,
/// protocol and ports for unfragmented TCP/UDP over IPv4 or IPv6 (behind up to two tags),
/// the addresses alone for other IP packets, the MAC addresses for anything else. Callers
/// take it modulo a queue count, so its low bits must depend on every input bit: FNV-1a's
/// multiply only carries upwards (its low two bits see only the low two bits of each byte),
/// so the result is mixed once more at the end.
pub fn flow_hash(b: &[u8]) -> u32 {
    mix(fnv_of_flow(b))
}

/// A 32-bit finaliser (lowbias32): every output bit depends on every input bit.
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

fn fnv_of_flow(b: &[u8]) -> u32 {
    const SEED: u32 = 0x811c_9dc5;
    let macs = b.get(..12).unwrap_or(b);
    let mut l3 = 12;
    let mut ethertype = be16(b, l3).unwrap_or(0);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        l3 += 4;
        ethertype = be16(b, l3).unwrap_or(0);
    }
    l3 += 2;
    let (addrs, proto, l4) = match ethertype {
        0x0800 => {
            let Some(&vihl) = b.get(l3) else {
                return fnv(SEED, macs);
            };
            let fragment = be16(b, l3 + 6).unwrap_or(0) & 0x3fff != 0;
            let proto = b.get(l3 + 9).copied().filter(|_| !fragment);
            (
                b.get(l3 + 12..l3 + 20),
                proto,
                l3 + usize::from(vihl & 0x0f) * 4,
            )
        }
        0x86dd => (b.get(l3 + 8..l3 + 40), b.get(l3 + 6).copied(), l3 + 40),
        _ => return fnv(SEED, macs),
    };
    let Some(addrs) = addrs else {
        return fnv(SEED, macs);
    };
    let h = fnv(SEED, addrs);
    match proto {
        Some(p @ (6 | 17)) => match b.get(l4..l4 + 4) {
            Some(ports) => fnv(fnv(h, &[p]), ports),
            None => h,
        },
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src_port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(src_port, 80, seq, 1000)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn one_flow_hashes_alike_and_flows_spread() {
        let a = flow_hash(&tcp(1000, 1, b"first"));
        assert_eq!(
            a,
            flow_hash(&tcp(1000, 9999, b"another segment of the flow"))
        );
        let mut queues = [0u32; 4];
        for port in 0..400 {
            queues[(flow_hash(&tcp(port, 1, b"x")) % 4) as usize] += 1;
        }
        assert!(
            queues.iter().all(|&n| n > 50),
            "400 flows over 4 queues: {queues:?}"
        );
        // Ports that differ only above their low two bits (as a client's ephemeral ports
        // may) spread too.
        let mut queues = [0u32; 4];
        for i in 0..64 {
            queues[(flow_hash(&tcp(40_000 + 4 * i, 1, b"x")) % 4) as usize] += 1;
        }
        assert!(
            queues.iter().all(|&n| n >= 8),
            "64 flows, ports 4 apart, over 4 queues: {queues:?}"
        );
        // Not IP: the MAC pair decides; a runt still hashes.
        let mut arp = tcp(1, 1, b"");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(flow_hash(&arp), flow_hash(&arp[..12]));
        // Tagged or not, one flow hashes alike.
        let plain = tcp(7, 1, b"x");
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(flow_hash(&tagged), flow_hash(&plain));
        let _ = flow_hash(&[1, 2, 3]);
    }
}
