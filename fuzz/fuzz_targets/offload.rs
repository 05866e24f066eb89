//! A guest's virtio-net offload header over an arbitrary frame, as the frame path converts it
//! (`Offload::from_net_header`), then the software fallbacks the switch runs for receivers
//! without the offload. Checks: nothing panics; a header the conversion accepted has its
//! checksum inside the frame (completion succeeds) and a super-frame it accepted is cut into
//! at most `MAX_SEGMENTS` segments, each within `hdr_len + gso_size` bytes and each with a
//! TCP/UDP checksum that verifies; a checksum never starts inside the L2 header; segments
//! cut with partial checksums complete to the fully checksummed ones; each segment's
//! TCP/UDP checksum is also the one etherparse computes (an independent reference); and the
//! checksum routines (the plain sum and the copy that sums as it goes, AVX2 where the CPU
//! has it) agree with a byte-pair sum written here, the copy with its source.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_fuzz::Reader;
use patchbay_switch::offload::layout::{l2_len, Layout, MAX_HEADERS};
use patchbay_switch::offload::segment::{
    complete_checksum, segment, segment_parts, L4Checksum, MAX_SEGMENTS,
};
use patchbay_switch::offload::Offload;
use patchbay_switch::wire::checksum;
use patchbay_switch::virtio::net_header::NetHeader;

/// RFC 1071 the slow way: big-endian byte pairs, an odd last byte padded with zero.
fn reference_sum(bytes: &[u8]) -> u16 {
    let mut acc: u64 = bytes
        .chunks(2)
        .map(|p| u64::from(u16::from_be_bytes([p[0], p.get(1).copied().unwrap_or(0)])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP or UDP checksum etherparse computes for `seg`, and the one in it; None where
/// etherparse does not see TCP or UDP over IPv4 or IPv6 without extension headers (it then
/// has no pseudo-header to agree on).
fn etherparse_checksum(seg: &[u8]) -> Option<(u16, u16)> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(seg).ok()?;
    let (v4, v6) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (Some(ip.header().to_header()), None),
        Some(NetSlice::Ipv6(ip)) if ip.extensions().is_empty() => {
            (None, Some(ip.header().to_header()))
        }
        _ => return None,
    };
    match p.transport? {
        TransportSlice::Tcp(t) => {
            // etherparse's header has no room for the three reserved bits beside the data
            // offset, so its checksum leaves them out where the segment's covers them.
            if t.header_slice().get(12).is_some_and(|b| b & 0x0e != 0) {
                return None;
            }
            let h = t.to_header();
            let want = match (v4, v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(&ip, t.payload()).ok()?,
                (_, Some(ip)) => h.calc_checksum_ipv6(&ip, t.payload()).ok()?,
                _ => return None,
            };
            Some((want, t.checksum()))
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let want = match (v4, v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(&ip, u.payload()).ok()?,
                (_, Some(ip)) => h.calc_checksum_ipv6(&ip, u.payload()).ok()?,
                _ => return None,
            };
            Some((want, u.checksum()))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    // The checksum routines over the whole input, at an offset that varies the alignment.
    let skew = data.first().map_or(0, |b| usize::from(b % 8)).min(data.len());
    let bytes = &data[skew..];
    let reference = reference_sum(bytes);
    assert_eq!(checksum::sum(bytes, 0), reference, "sum against the reference");
    let mut copy = vec![0u8; bytes.len()];
    // SAFETY: `bytes` is readable and `copy` writable for `bytes.len()` bytes; they are
    // distinct allocations.
    let summed = unsafe { checksum::copy_and_sum(bytes.as_ptr(), copy.as_mut_ptr(), bytes.len()) };
    if let Some(s) = summed {
        assert_eq!(s, reference, "copy-and-sum against the reference");
        assert_eq!(copy, bytes, "copy-and-sum copies");
    }

    let mut r = Reader::new(data);
    let Some(h) = NetHeader::parse(r.bytes(10)) else {
        return;
    };
    let features = r.u64();
    let shift = [0i32, 4, -4][usize::from(r.u8() % 3)];
    let frame = r.rest();
    let Ok(off) = Offload::from_net_header(
        &h,
        features,
        frame.len() as u32,
        &frame[..frame.len().min(MAX_HEADERS)],
    ) else {
        return;
    };
    let _ = off.shifted(shift).net_header(features);
    if let Some(csum) = off.csum {
        assert!(usize::from(csum.start) >= l2_len(frame).expect("an L2 header"));
        let mut copy = frame.to_vec();
        complete_checksum(&mut copy, csum).expect("an accepted checksum lies in the frame");
    }
    if let Some(gso) = off.gso {
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        if segment(frame, gso, &mut out, &mut lens).is_err() {
            return;
        }
        assert!(lens.len() as u32 <= MAX_SEGMENTS);
        assert_eq!(lens.iter().map(|l| *l as usize).sum::<usize>(), out.len());
        let mut n = 0;
        let mut at = 0;
        segment_parts(
            frame,
            frame.len(),
            gso,
            L4Checksum::Partial,
            |_| unreachable!("partial checksums need no payload sum"),
            |header, payload, csum| {
                let mut seg = [header, &frame[payload]].concat();
                complete_checksum(&mut seg, csum).expect("the field lies in the segment");
                let len = lens[n] as usize;
                assert_eq!(seg, &out[at..at + len], "partial segment {n} completes to the full one");
                at += len;
                n += 1;
            },
        )
        .expect("cut once already");
        assert_eq!(n, lens.len());
        let mut at = 0;
        for len in lens {
            let seg = &out[at..at + len as usize];
            at += len as usize;
            let layout = Layout::parse(seg).expect("a segment keeps its headers");
            assert!(seg.len() <= usize::from(layout.hdr_len) + usize::from(gso.size));
            let (l3, l4) = (usize::from(layout.l3), usize::from(layout.l4));
            let (src, dst) = if layout.ipv6 {
                (&seg[l3 + 8..l3 + 24], &seg[l3 + 24..l3 + 40])
            } else {
                (&seg[l3 + 12..l3 + 16], &seg[l3 + 16..l3 + 20])
            };
            let pseudo = checksum::pseudo_header(src, dst, layout.proto, (seg.len() - l4) as u32);
            assert_eq!(checksum::sum(&seg[l4..], pseudo), 0xffff, "segment checksum verifies");
            if let Some((want, got)) = etherparse_checksum(seg) {
                // One's complement has two zeros: the switch sends a computed 0 as 0xffff (as
                // Linux does; for UDP 0 would mean "no checksum").
                assert!(
                    got == want || (got == 0xffff && want == 0),
                    "segment checksum {got:#06x}, etherparse {want:#06x}"
                );
            }
        }
    }
});
