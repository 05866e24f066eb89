//! RX buffer reservation when a guest's receive ring mixes good and malformed chains (found
//! by the `rx_reserve` fuzz target): a frame that does not fit must leave every chain the guest
//! posted either still available or returned exactly once, never one returned twice and
//! another lost.

use patchbay_switch::virtio::chain::RxShortage;
use patchbay_switch::virtio::{Burst, GuestMap, GuestMemory, RxReservation, Vring};
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 8;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUFS: u64 = 0x4000;
const VIRTQ_DESC_F_WRITE: u16 = 2;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn descriptor(mem: &GuestMemory, index: u16, len: u32, flags: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&(BUFS + u64::from(index) * 0x800).to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&d, GuestAddress(DESC + 16 * u64::from(index)))
        .unwrap();
}

/// Posts `heads` in the avail ring.
fn post(mem: &GuestMemory, heads: &[u16]) {
    for (slot, head) in heads.iter().enumerate() {
        mem.write_obj(*head, GuestAddress(AVAIL + 4 + 2 * slot as u64))
            .unwrap();
    }
    mem.write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
        .unwrap();
}

fn queue() -> Vring {
    let mut q = Vring::default();
    q.set_size(u32::from(SIZE)).unwrap();
    q.set_addresses(DESC, AVAIL, USED).unwrap();
    q
}

/// Heads the device returned (and published) through the used ring, in order.
fn used_heads(mem: &GuestMemory) -> Vec<u32> {
    let n: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    (0..n)
        .map(|i| {
            mem.read_obj::<u32>(GuestAddress(USED + 4 + 8 * u64::from(i % SIZE)))
                .unwrap()
        })
        .collect()
}

#[test]
fn a_frame_too_big_for_good_then_bad_chains_loses_no_chain_and_returns_none_twice() {
    let map = GuestMap::new(memory());
    let mem = map.memory();
    // Chain 0: a good 100-byte receive buffer. Chain 1: device-readable, so malformed in RX.
    descriptor(mem, 0, 100, VIRTQ_DESC_F_WRITE);
    descriptor(mem, 1, 100, 0);
    post(mem, &[0, 1]);
    let mut q = queue();
    let mut rx = RxReservation::default();
    let mut bad = 0;

    // 1000 bytes do not fit in chain 0 alone; chain 1 is malformed: both go back empty.
    let mut burst = Burst::open(&mut q, &map).unwrap();
    assert_eq!(
        rx.reserve(&mut burst, 1000, true, &mut bad),
        Err(RxShortage::BadChain)
    );
    burst.publish();
    assert_eq!(bad, 1);
    let used = used_heads(mem);
    assert_eq!(
        used.iter().filter(|h| **h == 1).count(),
        1,
        "used ring {used:?}"
    );

    // A small frame then gets chain 0 (still the guest's to offer, or already returned) and
    // never chain 1 a second time.
    let small = rx.reserve(&mut burst, 50, true, &mut bad);
    if small.is_ok() {
        assert_eq!(rx.heads, vec![(0, 100)]);
        rx.complete(&mut burst, 50);
    }
    burst.publish();
    let used = used_heads(mem);
    assert_eq!(
        used.iter().filter(|h| **h == 1).count(),
        1,
        "chain 1 returned twice: used ring {used:?}"
    );
    assert_eq!(
        used.iter().filter(|h| **h == 0).count(),
        1,
        "chain 0 lost: used ring {used:?}"
    );
}
