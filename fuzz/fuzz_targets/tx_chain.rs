//! The switch's TX chain validation on a guest memory the fuzzer writes: a ring layout, a
//! header length, a frame limit, then the memory's bytes (descriptor table, avail ring and
//! buffers wherever the layout put them). Every chain the ring offers goes through
//! `TxChain::parse` as `drain_tx` does; an accepted chain must describe a frame inside guest
//! memory, within the limit, in segments that each lie in one region.
//! Kept thin on purpose: the ring code under it is going to be replaced.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_fuzz::{guest_memory, Reader, RingLayout};
use patchbay_switch::virtio::{GuestMemory, Segment, TxChain};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryBackend;

/// Batches looked at per input (`drain_tx` takes 64 chains a batch).
const BATCHES: usize = 4;

fn check_frame(mem: &GuestMemory, segs: &[Segment], chain: &TxChain, max_frame: u32) {
    assert!(chain.frame_len >= 14, "runt accepted: {chain:?}");
    assert!(chain.frame_len <= max_frame, "{chain:?} over {max_frame}");
    let frame = &segs[chain.segs.0..chain.segs.1];
    let total: u64 = frame.iter().map(|s| u64::from(s.len)).sum();
    assert_eq!(total, u64::from(chain.frame_len), "segments {frame:?}");
    for s in frame {
        assert!(s.len > 0, "empty segment in {frame:?}");
        let region = mem
            .find_region(s.addr)
            .expect("segment starts in guest memory");
        let last = s.addr.0 + u64::from(s.len) - 1;
        assert!(
            last <= vm_memory::GuestMemoryRegion::last_addr(region).0,
            "segment {s:?} crosses its region's end"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let layout = RingLayout::read(&mut r);
    let flags = r.u8();
    let header_len = if flags & 1 == 0 { 12 } else { 10 };
    let max_frame = u32::from(r.u16()) + 14;
    let mem = guest_memory(flags & 2 != 0, r.rest());
    let mut queue = layout.queue();
    let mut segs = Vec::new();
    for _ in 0..BATCHES {
        segs.clear();
        let mut heads = Vec::new();
        let queue_size = queue.size();
        let Ok(chains) = queue.iter(mem) else { return };
        for chain in chains.take(64) {
            let head = chain.head_index();
            let before = segs.len();
            match TxChain::parse(chain, mem, header_len, max_frame, queue_size, &mut segs) {
                Ok(c) => {
                    assert_eq!((c.head, c.segs.0), (head, before));
                    check_frame(mem, &segs, &c, max_frame);
                }
                Err(_) => assert_eq!(segs.len(), before, "a refused chain left segments"),
            }
            heads.push(head);
        }
        for head in &heads {
            let _ = queue.add_used(mem, *head, 0);
        }
        if heads.len() < 64 {
            return;
        }
    }
});
