//! Validated transmit chains, receive reservations, and the single copy of a frame from one
//! guest's transmit buffers into another guest's receive buffers, over a [`Burst`].
//!
//! The chain rules themselves (direction, lengths, ranges, loops, indirect tables) are
//! checked by `Burst::walk`; this file decides what a whole frame needs.

use super::guest_map::{copy_small, Segment};
use super::net_header::{self, NetHeader};
use super::ring::{Burst, ChainError};
use crate::wire::checksum;

/// Drops the first `n` bytes described by `segs[start..]`.
fn skip_front(segs: &mut Vec<Segment>, start: usize, mut n: u32) {
    let mut empty = 0;
    for seg in &mut segs[start..] {
        if n == 0 {
            break;
        }
        let take = n.min(seg.len());
        *seg = seg.advance(take);
        n -= take;
        if seg.is_empty() {
            empty += 1;
        }
    }
    segs.drain(start..start + empty);
}

/// Copies the first `out.len()` bytes described by `segs` (fewer if they hold fewer).
///
/// # Safety
/// `segs` must come from a [`GuestMap`](super::GuestMap) that is alive for the call.
unsafe fn read_front(segs: &[Segment], out: &mut [u8]) {
    let mut filled = 0;
    for seg in segs {
        if filled == out.len() {
            break;
        }
        let n = (out.len() - filled).min(seg.len() as usize);
        // SAFETY: `seg` lies in a live mapping (the contract); `out[filled..]` has room.
        unsafe { copy_small(seg.host_addr(), out[filled..].as_mut_ptr() as usize, n) };
        filled += n;
    }
}

/// A validated transmit chain: where its frame (after the virtio-net header) lies.
#[derive(Debug, Clone, Copy)]
pub struct TxChain {
    pub head: u16,
    /// Range of the frame's segments in the caller's segment buffer.
    pub segs: (usize, usize),
    pub frame_len: u32,
    /// The guest's virtio-net header, when asked for (all zero otherwise).
    pub net_header: NetHeader,
}

impl TxChain {
    /// Validates the chain at `head` that the guest offered for transmission. `max_frame`
    /// bounds the frame (headers included, virtio-net header excluded). With `read_header`,
    /// the virtio-net header is read too (only a guest that negotiated offloads puts
    /// anything in it).
    pub fn parse(
        burst: &Burst<'_>,
        head: u16,
        header_len: usize,
        max_frame: u32,
        read_header: bool,
        segs: &mut Vec<Segment>,
    ) -> Result<TxChain, ChainError> {
        let start = segs.len();
        let limit = header_len as u64 + u64::from(max_frame);
        let total = burst.walk(head, false, limit, burst.size(), segs)?;
        let frame_len = total.saturating_sub(header_len as u64) as u32;
        if total < header_len as u64 + 14 {
            segs.truncate(start);
            return Err(ChainError::Runt { len: frame_len });
        }
        let mut net_header = NetHeader::default();
        if read_header {
            let mut raw = [0u8; net_header::MAX_LEN];
            let raw = &mut raw[..header_len.min(net_header::MAX_LEN)];
            // SAFETY: the segments were just made by `burst`'s map, alive while it is.
            unsafe { read_front(&segs[start..], raw) };
            net_header = NetHeader::parse(raw).unwrap_or_default();
        }
        skip_front(segs, start, header_len as u32);
        if let Some(first) = segs.get(start) {
            first.prefetch();
        }
        Ok(TxChain {
            head,
            segs: (start, segs.len()),
            frame_len,
            net_header,
        })
    }
}

/// Receive buffers taken from a guest's RX ring for one frame: one chain, or several when
/// mergeable buffers were negotiated.
#[derive(Debug, Default)]
pub struct RxReservation {
    /// (head index, capacity in bytes) of each chain, in ring order.
    pub heads: Vec<(u16, u32)>,
    pub segs: Vec<Segment>,
    capacity: u64,
}

/// Why a frame could not be given receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxShortage {
    /// The guest has not posted enough buffers (or its ring is not usable).
    NoBuffer,
    /// The frame does not fit the guest's buffer and buffers cannot be merged, or would
    /// need more than [`MAX_RX_CHAINS_PER_FRAME`] of them.
    TooBig,
    /// The guest posted malformed chains: they (and any good ones taken for this frame)
    /// went back to it empty, and the frame is not delivered.
    BadChain,
}

/// Most malformed receive chains one frame's reservation consumes before giving up: the
/// receiving guest posts them, but the sending port's thread walks them, so the receiver
/// must not be able to make that thread's work unbounded.
pub const MAX_BAD_RX_CHAINS: usize = 8;

/// Most receive chains merged for one frame (Linux posts buffers of at least 1500 bytes;
/// a 9018-byte frame needs 7 of those).
pub const MAX_RX_CHAINS_PER_FRAME: usize = 64;

/// Most descriptors walked for one receive chain (Linux's "big packets" receive chains have
/// up to 19); a longer chain counts as malformed.
pub const MAX_RX_CHAIN_DESCRIPTORS: u16 = 64;

impl RxReservation {
    pub fn clear(&mut self) {
        self.heads.clear();
        self.segs.clear();
        self.capacity = 0;
    }

    /// Takes enough chains from `burst` to hold `need` bytes (virtio-net header included).
    /// The avail index is read again only when the chains known to wait run out.
    ///
    /// What the frontend sees, whatever happens: every chain it posted comes back in the used
    /// ring exactly once. Malformed chains met before any good one are returned empty (up to
    /// [`MAX_BAD_RX_CHAINS`] per frame) and counted in `bad`. A malformed chain met after good
    /// ones ends the reservation: all of them go back empty, because rewinding the ring past
    /// a chain already returned would return it twice. On a shortage of buffers the good
    /// chains taken are put back, in ring order, for the next frame.
    pub fn reserve(
        &mut self,
        burst: &mut Burst<'_>,
        need: u64,
        mergeable: bool,
        bad: &mut u64,
    ) -> Result<(), RxShortage> {
        self.clear();
        let mut bad_run = 0;
        let max_descriptors = burst.size().min(MAX_RX_CHAIN_DESCRIPTORS);
        while self.capacity < need {
            if burst.pending() == 0 && burst.refresh().map_or(true, |n| n == 0) {
                self.put_back(burst);
                return Err(RxShortage::NoBuffer);
            }
            let head = burst.pop();
            let seg_start = self.segs.len();
            match burst.walk(
                head,
                true,
                u64::from(u32::MAX),
                max_descriptors,
                &mut self.segs,
            ) {
                Ok(cap) => {
                    if (!mergeable && cap < need) || self.heads.len() == MAX_RX_CHAINS_PER_FRAME {
                        self.segs.truncate(seg_start);
                        burst.unpop(1);
                        self.put_back(burst);
                        return Err(RxShortage::TooBig);
                    }
                    self.heads.push((head, cap.min(u64::from(u32::MAX)) as u32));
                    self.capacity += cap;
                }
                Err(_) => {
                    *bad += 1;
                    if !self.heads.is_empty() {
                        self.complete(burst, 0);
                        self.clear();
                        burst.push_used(head, 0);
                        return Err(RxShortage::BadChain);
                    }
                    burst.push_used(head, 0);
                    bad_run += 1;
                    if bad_run == MAX_BAD_RX_CHAINS {
                        return Err(RxShortage::BadChain);
                    }
                }
            }
        }
        Ok(())
    }

    fn put_back(&mut self, burst: &mut Burst<'_>) {
        burst.unpop(self.heads.len() as u16);
        self.clear();
    }

    /// Hands the written chains to the guest: each gets the bytes that landed in it. They
    /// become visible with the burst's `publish`.
    pub fn complete(&self, burst: &mut Burst<'_>, written: u64) {
        burst.log_written(&self.segs, written);
        let mut left = written;
        for (head, cap) in &self.heads {
            let used = left.min(u64::from(*cap));
            left -= used;
            burst.push_used(*head, used as u32);
        }
    }
}

/// Writes into a reservation's segments in order.
pub struct FrameCopier<'a> {
    segs: &'a [Segment],
    idx: usize,
    off: u32,
    written: u64,
    /// The Internet checksum of what is written from a point on, if asked for.
    sum: Option<RunningSum>,
}

/// The checksum sum of the bytes written from byte `from` on, kept as they land: each run is
/// summed where it was just written (in the core's cache), so a frame whose checksum the
/// receiver cannot complete costs one pass over its bytes, not a read of the sender's buffers
/// before the copy. Summing what the receiver got also makes the checksum match its bytes
/// even if the sender changes its buffers meanwhile.
#[derive(Debug, Clone, Copy)]
struct RunningSum {
    from: u64,
    total: u16,
}

impl<'a> FrameCopier<'a> {
    /// # Safety
    /// `segs` must come from a [`GuestMap`](super::GuestMap) that stays alive while the
    /// copier is used (the frame path holds the receiver's map for the burst).
    pub unsafe fn new(segs: &'a [Segment]) -> Self {
        FrameCopier {
            segs,
            idx: 0,
            off: 0,
            written: 0,
            sum: None,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts summing what is written from byte `from` on (see [`FrameCopier::sum`]).
    pub fn sum_from(&mut self, from: u64) {
        self.sum = Some(RunningSum { from, total: 0 });
    }

    /// The checksum sum ([`checksum::sum`]) of the bytes written from the `sum_from` point on
    /// (0 if none was set).
    pub fn sum(&self) -> u16 {
        self.sum.map_or(0, |s| s.total)
    }

    /// Adds the run of `n` bytes just written at `dst` (ending at byte `self.written`).
    #[inline]
    fn add_to_sum(&mut self, dst: usize, n: usize) {
        let Some(from) = self.sum.map(|s| s.from) else {
            return;
        };
        let end = self.written;
        let begin = from.max(end - n as u64);
        if begin >= end {
            return;
        }
        let at = dst + (begin - (end - n as u64)) as usize;
        // SAFETY: `at..at + (end - begin)` lies in the run just written, inside a segment of
        // the reservation (valid while the copier is, by `new`'s contract).
        let s = unsafe { checksum::sum_raw(at as *const u8, (end - begin) as usize) };
        self.add_run_sum(begin, s);
    }

    /// Adds the sum `s` of a run written from byte `begin` (at or after the `sum_from` point).
    #[inline]
    fn add_run_sum(&mut self, begin: u64, s: u16) {
        let Some(sum) = &mut self.sum else {
            return;
        };
        // A run starting an odd number of bytes after `from` holds words offset by one byte:
        // its sum is byte-swapped (RFC 1071, section 2(B)).
        let s = if (begin - sum.from) % 2 == 1 {
            s.swap_bytes()
        } else {
            s
        };
        sum.total = checksum::add(sum.total, s);
    }

    /// Overwrites the bytes at `at` (already written) with `bytes`; false if they were not
    /// written yet.
    pub fn patch(&mut self, at: u64, bytes: &[u8]) -> bool {
        if at + bytes.len() as u64 > self.written {
            return false;
        }
        let mut pos = 0u64;
        let mut next = 0;
        for seg in self.segs {
            let len = u64::from(seg.len());
            while next < bytes.len() && at + (next as u64) < pos + len {
                let off = at + next as u64 - pos;
                // SAFETY: `off` is inside this segment of the reservation (valid while the
                // copier is, by `new`'s contract), and the byte was written by this copier.
                unsafe { ((seg.host_addr() + off as usize) as *mut u8).write(bytes[next]) };
                next += 1;
            }
            if next == bytes.len() {
                return true;
            }
            pos += len;
        }
        false
    }

    /// The next destination run with room, at most `max` bytes long: (host address, length).
    #[inline]
    fn next_run(&mut self, max: usize) -> Option<(usize, usize)> {
        while self.idx < self.segs.len() {
            let seg = self.segs[self.idx];
            let room = (seg.len() - self.off) as usize;
            if room == 0 {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = room.min(max);
            let at = seg.host_addr() + self.off as usize;
            self.off += n as u32;
            self.written += n as u64;
            return Some((at, n));
        }
        None
    }

    /// Copies `len` bytes from host address `src`; false if the reservation ran out.
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes of reads.
    #[inline]
    unsafe fn copy_raw(&mut self, mut src: usize, mut len: usize) -> bool {
        while len > 0 {
            let Some((dst, n)) = self.next_run(len) else {
                return false;
            };
            // A run wholly inside the summed range is copied and summed in one pass, unless
            // it overlaps its source (a guest may post receive buffers over its own transmit
            // buffers, and a flow may send a frame back to its sender): that one is moved.
            let apart = src + n <= dst || dst + n <= src;
            let fused = match self.sum {
                Some(sum) if apart && self.written - n as u64 >= sum.from => {
                    // SAFETY: as below, and the two ranges do not overlap (checked above).
                    unsafe { checksum::copy_and_sum(src as *const u8, dst as *mut u8, n) }
                }
                _ => None,
            };
            match fused {
                Some(s) => self.add_run_sum(self.written - n as u64, s),
                None => {
                    // SAFETY: `dst` is a run of a segment made by the caller's map, alive for
                    // the burst; `src` is valid for `len >= n` bytes by this function's
                    // contract.
                    unsafe { copy_small(src, dst, n) };
                    self.add_to_sum(dst, n);
                }
            }
            src += n;
            len -= n;
        }
        true
    }

    /// Writes `bytes`; returns false if the reservation ran out.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        // SAFETY: a slice is valid for reads of its length.
        unsafe { self.copy_raw(bytes.as_ptr() as usize, bytes.len()) }
    }

    /// Copies the frame described by `src_segs`, from byte `skip` on: the one copy a frame
    /// gets on its way between two guests.
    ///
    /// # Safety
    /// `src_segs` must come from a [`GuestMap`](super::GuestMap) that is alive for the call.
    pub unsafe fn copy_segments(&mut self, src_segs: &[Segment], skip: usize) -> bool {
        let mut skip = skip as u32;
        for seg in src_segs {
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let seg = seg.advance(skip);
            skip = 0;
            // SAFETY: `seg` was made by a map alive for this call (the contract), so it is
            // valid for reads of its length.
            if !unsafe { self.copy_raw(seg.host_addr(), seg.len() as usize) } {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    //! RX reservations against a model of what a frontend expects from its receive ring:
    //! every chain it posted comes back in the used ring exactly once (written, or empty if
    //! it was malformed or given up on), chains put back are offered again in ring order,
    //! and the used index moves by exactly the entries written.

    use super::*;
    use crate::virtio::ring::Vring;
    use crate::virtio::{GuestMap, GuestMemory};
    use vm_memory::{Bytes, GuestAddress};

    const QSIZE: u16 = 64;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUFS: u64 = 0x10000;

    /// A tiny deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    struct Ring {
        map: GuestMap,
        vring: Vring,
        posted: u16,
    }

    impl Ring {
        fn new() -> Ring {
            let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
            let mut vring = Vring::default();
            vring.set_size(u32::from(QSIZE)).unwrap();
            vring.set_addresses(DESC, AVAIL, USED).unwrap();
            Ring {
                map: GuestMap::new(mem),
                vring,
                posted: 0,
            }
        }

        /// Posts chain `head` (one descriptor): device-writable of `cap` bytes, or
        /// device-readable (malformed for RX).
        fn post(&mut self, head: u16, cap: u32, good: bool) {
            let flags: u16 = if good { 2 } else { 0 };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&(BUFS + u64::from(head) * 0x10000).to_le_bytes());
            d[8..12].copy_from_slice(&cap.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            let m = self.map.memory();
            m.write_slice(&d, GuestAddress(DESC + 16 * u64::from(head)))
                .unwrap();
            let slot = u64::from(self.posted % QSIZE);
            m.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
            self.posted = self.posted.wrapping_add(1);
            m.write_obj(self.posted, GuestAddress(AVAIL + 2)).unwrap();
        }

        fn used(&self) -> Vec<(u32, u32)> {
            let m = self.map.memory();
            let idx: u16 = m.read_obj(GuestAddress(USED + 2)).unwrap();
            (0..idx)
                .map(|i| {
                    let at = USED + 4 + 8 * u64::from(i % QSIZE);
                    let id: u32 = m.read_obj(GuestAddress(at)).unwrap();
                    let len: u32 = m.read_obj(GuestAddress(at + 4)).unwrap();
                    (id, len)
                })
                .collect()
        }
    }

    /// What the frontend expects, chain by chain: the model of one reservation.
    fn model(
        posted: &[(u16, u32, bool)],
        pos: &mut usize,
        need: u64,
        used: &mut Vec<(u32, u32)>,
    ) -> Result<(), RxShortage> {
        let mut taken: Vec<(u16, u32)> = Vec::new();
        let mut bad_run = 0;
        let mut cap = 0u64;
        let start = *pos;
        let mut first_good = None;
        while cap < need {
            let Some(&(head, c, good)) = posted.get(*pos) else {
                // Out of buffers: the good chains go back and are offered again.
                *pos = first_good.unwrap_or(*pos);
                return Err(RxShortage::NoBuffer);
            };
            *pos += 1;
            if !good {
                used.push((u32::from(head), 0));
                if !taken.is_empty() {
                    // A malformed chain after good ones: they all come back empty.
                    let bad = used.pop().unwrap();
                    used.extend(taken.iter().map(|&(h, _)| (u32::from(h), 0)));
                    used.push(bad);
                    return Err(RxShortage::BadChain);
                }
                bad_run += 1;
                if bad_run == MAX_BAD_RX_CHAINS {
                    return Err(RxShortage::BadChain);
                }
                continue;
            }
            if taken.len() == MAX_RX_CHAINS_PER_FRAME {
                *pos = first_good.unwrap_or(start);
                return Err(RxShortage::TooBig);
            }
            first_good.get_or_insert(*pos - 1);
            taken.push((head, c));
            cap += u64::from(c);
        }
        let mut left = need;
        for (h, c) in taken {
            let n = left.min(u64::from(c));
            left -= n;
            used.push((u32::from(h), n as u32));
        }
        Ok(())
    }

    #[test]
    fn the_copier_sums_what_it_writes_and_patches_across_buffers() {
        let ring = Ring::new();
        // Receive buffers of awkward (odd) sizes, scattered in guest memory.
        let mut segs = Vec::new();
        for (i, len) in [7u32, 1, 13, 100, 333, 4000].into_iter().enumerate() {
            assert!(ring
                .map
                .segments(BUFS + i as u64 * 0x10000, len, |s| segs.push(s)));
        }
        let header = [0xabu8; 12];
        let frame: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
        for from in [0u64, 5, 12, 20, 21, 127, 1000] {
            // SAFETY: the segments were made by `ring.map`, alive for the test.
            let mut copier = unsafe { FrameCopier::new(&segs) };
            copier.sum_from(from);
            assert!(copier.write(&header));
            // In pieces of odd lengths, as a sender's chain may hand them over.
            let mut at = 0;
            for piece in [1usize, 99, 1, 1700, 1199] {
                assert!(copier.write(&frame[at..at + piece]));
                at += piece;
            }
            let written = [&header[..], &frame].concat();
            let expected = checksum::sum(&written[from as usize..], 0);
            assert_eq!(copier.sum(), expected, "summed from {from}");
            // The patch lands across the boundary of the first two buffers (7 | 1 | 13).
            assert!(copier.patch(6, &[0x11, 0x22, 0x33]));
            assert!(
                !copier.patch(written.len() as u64 - 1, &[0, 0]),
                "not written yet"
            );
            let mut back = [0u8; 10];
            let mut filled = 0;
            for seg in &segs[..3] {
                let n = (seg.len() as usize).min(back.len() - filled);
                // SAFETY: as above; `back` has room for `n` more bytes.
                unsafe { copy_small(seg.host_addr(), back[filled..].as_mut_ptr() as usize, n) };
                filled += n;
            }
            assert_eq!(&back[5..10], &[0xab, 0x11, 0x22, 0x33, 0xab]);
        }
    }

    #[test]
    fn mergeable_reservations_match_the_frontends_model() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut ring = Ring::new();
            let mut posted = Vec::new();
            for head in 0..QSIZE {
                let good = rng.below(5) != 0;
                let cap = [12u32, 100, 1526, 4096][rng.below(4) as usize];
                ring.post(head, cap, good);
                posted.push((head, cap, good));
            }
            let (mut pos, mut expected) = (0usize, Vec::new());
            let mut rx = RxReservation::default();
            for frame in 0..40 {
                let need = 12 + [60u64, 1500, 9018, 3000][rng.below(4) as usize];
                let mut bad = 0;
                let mut burst = Burst::open(&mut ring.vring, &ring.map).unwrap();
                let got = rx.reserve(&mut burst, need, true, &mut bad);
                let want = model(&posted, &mut pos, need, &mut expected);
                assert_eq!(
                    got, want,
                    "seed {seed} frame {frame}: outcome for {need} bytes"
                );
                if got.is_ok() {
                    rx.complete(&mut burst, need);
                }
                burst.publish();
                assert_eq!(
                    ring.used(),
                    expected,
                    "seed {seed} frame {frame}: used ring"
                );
                assert_eq!(
                    usize::from(ring.vring.next_avail),
                    pos,
                    "seed {seed} frame {frame}: next chain offered"
                );
            }
            // Every head came back at most once: nothing was posted twice.
            let mut heads: Vec<u32> = ring.used().iter().map(|u| u.0).collect();
            heads.sort_unstable();
            heads.dedup();
            assert_eq!(
                heads.len(),
                ring.used().len(),
                "seed {seed}: a head returned twice"
            );
        }
    }
}
