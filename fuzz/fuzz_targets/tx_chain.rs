//! The switch's TX chain validation on a guest memory the fuzzer writes: a ring layout, a
//! header length, a frame limit, then the memory's bytes (descriptor table, avail ring and
//! buffers wherever the layout put them). Every chain the ring offers goes through
//! `TxChain::parse` as `drain_tx` does, over the switch's own split ring (`Burst`); an
//! accepted chain must describe a frame inside guest memory, within the limit, in segments
//! that each lie in one region.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_fuzz::{guest_memory, Reader, RingLayout};
use patchbay_switch::virtio::{Burst, GuestMap, Segment, TxChain};

/// Batches looked at per input (`drain_tx` takes 64 chains a batch).
const BATCHES: usize = 4;

fn check_frame(map: &GuestMap, segs: &[Segment], chain: &TxChain, max_frame: u32) {
    assert!(chain.frame_len >= 14, "runt accepted: {chain:?}");
    assert!(chain.frame_len <= max_frame, "{chain:?} over {max_frame}");
    let frame = &segs[chain.segs.0..chain.segs.1];
    let total: u64 = frame.iter().map(|s| u64::from(s.len())).sum();
    assert_eq!(total, u64::from(chain.frame_len), "segments {frame:?}");
    for s in frame {
        assert!(s.len() > 0, "empty segment in {frame:?}");
        assert!(map.contains(s), "segment {s:?} is not inside one region");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let layout = RingLayout::read(&mut r);
    let flags = r.u8();
    let header_len = if flags & 1 == 0 { 12 } else { 10 };
    let max_frame = u32::from(r.u16()) + 14;
    let map = guest_memory(flags & 2 != 0, r.rest());
    let mut vring = layout.vring();
    let Ok(mut burst) = Burst::open(&mut vring, map) else {
        return;
    };
    let mut segs = Vec::new();
    for _ in 0..BATCHES {
        segs.clear();
        let Ok(waiting) = burst.refresh() else { return };
        assert!(waiting <= layout.size, "{waiting} chains in a ring of {}", layout.size);
        let take = waiting.min(64);
        for _ in 0..take {
            let head = burst.pop();
            let before = segs.len();
            match TxChain::parse(&burst, head, header_len, max_frame, true, &mut segs) {
                Ok(c) => {
                    assert_eq!((c.head, c.segs.0), (head, before));
                    check_frame(map, &segs, &c, max_frame);
                }
                Err(_) => assert_eq!(segs.len(), before, "a refused chain left segments"),
            }
            burst.push_used(head, 0);
        }
        burst.publish();
        if take < 64 {
            return;
        }
    }
});
