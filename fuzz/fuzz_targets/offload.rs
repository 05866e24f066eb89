//! A guest's virtio-net offload header over an arbitrary frame, as the frame path converts it
//! (`Offload::from_net_header`), then the software fallbacks the switch runs for receivers
//! without the offload. Checks: nothing panics; a header the conversion accepted has its
//! checksum inside the frame (completion succeeds) and a super-frame it accepted is cut into
//! at most `MAX_SEGMENTS` segments, each within `hdr_len + gso_size` bytes and each with a
//! TCP/UDP checksum that verifies; a checksum never starts inside the L2 header; segments
//! cut with partial checksums complete to the fully checksummed ones.

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

fuzz_target!(|data: &[u8]| {
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
        }
    }
});
