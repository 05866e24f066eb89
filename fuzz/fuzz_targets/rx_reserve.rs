//! The switch's RX buffer reservation on a guest memory the fuzzer writes: a ring layout, a
//! few frame sizes with and without mergeable buffers, then the memory's bytes. For each frame
//! `RxReservation::reserve` either takes chains whose device-writable buffers lie inside guest
//! memory and hold the frame, or gives back everything it took (rewound, or returned unused);
//! every chain taken from the avail ring goes back through the used ring exactly once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_fuzz::{guest_memory, Reader, RingLayout};
use patchbay_switch::virtio::{Burst, GuestMemory, RxReservation};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Heads at avail ring positions `from..from + n`, and ids of used ring entries at positions
/// `used_from..used_from + m`, read from guest memory (None when unreadable, or when the
/// rings overlap so that writing one changes the other).
fn ring_heads(
    mem: &GuestMemory,
    layout: &RingLayout,
    (from, n): (u16, u16),
    (used_from, m): (u16, u16),
) -> Option<(Vec<u32>, Vec<u32>)> {
    let size = u64::from(layout.size);
    let avail_end = layout.avail + 4 + 2 * size;
    let used_end = layout.used + 4 + 8 * size + 2;
    if layout.avail < used_end && layout.used < avail_end {
        return None;
    }
    // A used ring outside guest memory cannot take returned chains: the guest broke its ring.
    let whole = |addr: u64, end: u64| mem.check_range(GuestAddress(addr), (end - addr) as usize);
    if !whole(layout.avail, avail_end) || !whole(layout.used, used_end) {
        return None;
    }
    let avail = (0..n)
        .map(|i| {
            let slot = u64::from(from.wrapping_add(i)) % size;
            mem.read_obj::<u16>(GuestAddress(layout.avail + 4 + 2 * slot))
                .ok()
                .map(u32::from)
        })
        .collect::<Option<Vec<_>>>()?;
    let used = (0..m)
        .map(|i| {
            let slot = u64::from(used_from.wrapping_add(i)) % size;
            mem.read_obj::<u32>(GuestAddress(layout.used + 4 + 8 * slot))
                .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some((avail, used))
}

/// The chains taken from the avail ring during one frame must be exactly the chains returned
/// through the used ring (each once), whatever happened in between.
fn check_returned(mem: &GuestMemory, layout: &RingLayout, avail: (u16, u16), used: (u16, u16)) {
    if let Some((mut taken, mut returned)) = ring_heads(mem, layout, avail, used) {
        // A head outside the queue cannot be returned (the guest broke its own ring).
        taken.retain(|h| *h < u32::from(layout.size));
        taken.sort_unstable();
        returned.sort_unstable();
        assert_eq!(
            taken, returned,
            "chains taken from avail vs returned through used"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let layout = RingLayout::read(&mut r);
    let flags = r.u8();
    let frames: Vec<(u64, bool)> = (0..4)
        .map(|i| (u64::from(r.u16()) + 12, flags & (1 << i) != 0))
        .collect();
    let map = guest_memory(flags & 0x10 != 0, r.rest());
    let mem = map.memory();
    let mut vring = layout.vring();
    let mut rx = RxReservation::default();
    for (need, mergeable) in frames {
        let (avail_before, used_before) = (vring.next_avail, vring.next_used);
        let Ok(mut burst) = Burst::open(&mut vring, map) else {
            return;
        };
        let mut bad = 0u64;
        let result = rx.reserve(&mut burst, need, mergeable, &mut bad);
        if result.is_ok() {
            let capacity: u64 = rx.heads.iter().map(|(_, c)| u64::from(*c)).sum();
            assert!(capacity >= need, "{capacity} bytes reserved for {need}");
            assert!(
                mergeable || rx.heads.len() == 1,
                "{} chains without MRG_RXBUF",
                rx.heads.len()
            );
            let in_segs: u64 = rx.segs.iter().map(|s| u64::from(s.len())).sum();
            assert_eq!(
                in_segs, capacity,
                "segments {:?} vs heads {:?}",
                rx.segs, rx.heads
            );
            for s in &rx.segs {
                assert!(map.contains(s), "segment {s:?} outside guest memory");
            }
            rx.complete(&mut burst, need);
        } else {
            // Everything taken was put back or returned unused (checked below).
            assert!(rx.heads.is_empty() && rx.segs.is_empty());
        }
        burst.publish();
        drop(burst);
        let consumed = vring.next_avail.wrapping_sub(avail_before);
        // Never more chains than the ring holds: the walk is bounded.
        assert!(
            consumed <= layout.size,
            "took {consumed} chains from a ring of {}",
            layout.size
        );
        if result.is_ok() {
            assert_eq!(u64::from(consumed), rx.heads.len() as u64 + bad);
        } else {
            assert!(
                u64::from(consumed) >= bad,
                "{consumed} chains consumed, {bad} refused"
            );
        }
        let returned = vring.next_used.wrapping_sub(used_before);
        assert!(u64::from(returned) <= u64::from(consumed));
        if let Ok(idx) = mem.read_obj::<u16>(GuestAddress(layout.used + 2)) {
            // The used index is published, unless the used ring overlaps the avail ring or
            // descriptors (the guest can scribble over its own index).
            if ring_heads(mem, &layout, (avail_before, 0), (used_before, 0)).is_some() {
                assert_eq!(idx, vring.next_used, "used index not published");
            }
        }
        check_returned(
            mem,
            &layout,
            (avail_before, consumed),
            (used_before, returned),
        );
    }
});
