//! Validated walks over descriptor chains and the single copy of a frame from one guest's
//! transmit buffers into another guest's receive buffers.
//!
//! `virtio_queue::DescriptorChain` ends iteration silently on a loop, a bad `next` index, an
//! unreadable descriptor or a bad indirect table; we detect that (the last descriptor still
//! says NEXT, or none came at all) and reject the chain instead of using a truncated one.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileSlice};

use super::GuestMemory;

/// A piece of a guest buffer that lies within one memory region, so it maps to one slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a descriptor chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain is broken: a loop, a next index outside the queue, an unreadable descriptor or a bad indirect table")]
    Broken,
    #[error("device-writable descriptor in a transmit chain")]
    WritableInTx,
    #[error("device-readable descriptor in a receive chain")]
    ReadableInRx,
    #[error("zero-length descriptor")]
    ZeroLength,
    #[error("buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("frame of {len} bytes is shorter than its headers")]
    Runt { len: u32 },
    #[error("frame of {len}+ bytes exceeds the {max}-byte limit")]
    TooBig { len: u64, max: u64 },
    #[error("descriptor chain is longer than the queue ({0} descriptors)")]
    TooLong(u16),
}

/// Appends `desc`'s buffer to `segs`, split at memory-region boundaries.
fn push_segments(
    mem: &GuestMemory,
    desc: &Descriptor,
    segs: &mut Vec<Segment>,
) -> Result<(), ChainError> {
    let len = desc.len();
    let out_of_range = ChainError::OutOfRange {
        addr: desc.addr().raw_value(),
        len,
    };
    if !GuestMemoryBackend::check_range(mem, desc.addr(), len as usize) {
        return Err(out_of_range);
    }
    let mut addr = desc.addr();
    let mut left = u64::from(len);
    while left > 0 {
        let region = mem.find_region(addr).ok_or(out_of_range)?;
        let in_region = region.last_addr().unchecked_offset_from(addr) + 1;
        let take = left.min(in_region);
        segs.push(Segment {
            addr,
            len: take as u32,
        });
        addr = addr.checked_add(take).ok_or(out_of_range)?;
        left -= take;
    }
    Ok(())
}

/// Walks a whole chain, checking every descriptor's direction, length and range, and stopping
/// early once more than `limit` bytes are seen. Returns the chain's byte count.
fn walk<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    device_writes: bool,
    limit: u64,
    queue_size: u16,
    segs: &mut Vec<Segment>,
) -> Result<u64, ChainError>
where
    M: Deref<Target = GuestMemory>,
{
    let mut total = 0u64;
    let mut last_has_next = false;
    let mut count = 0usize;
    for desc in chain {
        count += 1;
        // The spec bounds a chain by the queue size, indirect tables included.
        if count > usize::from(queue_size) {
            return Err(ChainError::TooLong(queue_size));
        }
        last_has_next = desc.has_next();
        if desc.is_write_only() != device_writes {
            return Err(if device_writes {
                ChainError::ReadableInRx
            } else {
                ChainError::WritableInTx
            });
        }
        if desc.len() == 0 {
            return Err(ChainError::ZeroLength);
        }
        total += u64::from(desc.len());
        if total > limit {
            return Err(ChainError::TooBig {
                len: total,
                max: limit,
            });
        }
        push_segments(mem, &desc, segs)?;
    }
    if count == 0 || last_has_next {
        return Err(ChainError::Broken);
    }
    Ok(total)
}

/// Drops the first `n` bytes described by `segs`.
fn skip_front(segs: &mut Vec<Segment>, start: usize, mut n: usize) {
    let mut i = start;
    while n > 0 && i < segs.len() {
        let seg = &mut segs[i];
        let take = n.min(seg.len as usize);
        seg.addr = GuestAddress(seg.addr.raw_value() + take as u64);
        seg.len -= take as u32;
        n -= take;
        i += 1;
    }
    let empty_prefix = segs[start..].iter().take_while(|s| s.len == 0).count();
    segs.drain(start..start + empty_prefix);
}

/// A validated transmit chain: where its frame (after the virtio-net header) lies.
#[derive(Debug, Clone, Copy)]
pub struct TxChain {
    pub head: u16,
    /// Range of the frame's segments in the caller's segment buffer.
    pub segs: (usize, usize),
    pub frame_len: u32,
}

impl TxChain {
    /// Validates a chain the guest offered for transmission. `max_frame` bounds the frame
    /// (headers included, virtio-net header excluded).
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        header_len: usize,
        max_frame: u32,
        queue_size: u16,
        segs: &mut Vec<Segment>,
    ) -> Result<TxChain, ChainError>
    where
        M: Deref<Target = GuestMemory>,
    {
        let head = chain.head_index();
        let start = segs.len();
        let limit = header_len as u64 + u64::from(max_frame);
        let result = walk(chain, mem, false, limit, queue_size, segs).and_then(|total| {
            let frame_len = total.saturating_sub(header_len as u64) as u32;
            if total < header_len as u64 + 14 {
                return Err(ChainError::Runt { len: frame_len });
            }
            Ok(frame_len)
        });
        match result {
            Ok(frame_len) => {
                skip_front(segs, start, header_len);
                Ok(TxChain {
                    head,
                    segs: (start, segs.len()),
                    frame_len,
                })
            }
            Err(e) => {
                segs.truncate(start);
                Err(e)
            }
        }
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
    /// The frame does not fit the guest's buffer and buffers cannot be merged.
    TooBig,
}

impl RxReservation {
    pub fn clear(&mut self) {
        self.heads.clear();
        self.segs.clear();
        self.capacity = 0;
    }

    /// Takes enough chains from `queue` to hold `need` bytes (virtio-net header included).
    /// On shortage every chain taken is put back. Malformed chains met on the way are
    /// returned to the guest unused and counted in `bad`.
    pub fn reserve(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        need: u64,
        mergeable: bool,
        bad: &mut u64,
    ) -> Result<(), RxShortage> {
        self.clear();
        // Once a malformed chain is returned behind chains we hold, rewinding the ring would
        // offer that returned chain again and skip the held ones.
        let mut returned_behind_held = false;
        while self.capacity < need {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => None,
            };
            let Some(chain) = chain else {
                if returned_behind_held {
                    self.give_back_unused(queue, mem);
                } else {
                    self.put_back(queue);
                }
                return Err(RxShortage::NoBuffer);
            };
            let head = chain.head_index();
            let seg_start = self.segs.len();
            // A receive chain longer than any frame we send is fine; bound the walk anyway.
            let queue_size = queue.size();
            match walk(
                chain,
                mem,
                true,
                u64::from(u32::MAX),
                queue_size,
                &mut self.segs,
            ) {
                Ok(cap) => {
                    if !mergeable && cap < need {
                        self.segs.truncate(seg_start);
                        queue.go_to_previous_position();
                        return Err(RxShortage::TooBig);
                    }
                    self.heads.push((head, cap.min(u64::from(u32::MAX)) as u32));
                    self.capacity += cap;
                }
                Err(_) => {
                    self.segs.truncate(seg_start);
                    *bad += 1;
                    returned_behind_held |= !self.heads.is_empty();
                    // A head outside the queue cannot be returned; the guest broke its ring.
                    let _ = queue.add_used(mem, head, 0);
                }
            }
        }
        Ok(())
    }

    /// Returns the chains taken so far to the guest unused (when they cannot be put back).
    fn give_back_unused(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        for (head, _) in &self.heads {
            let _ = queue.add_used(mem, *head, 0);
        }
        self.clear();
    }

    fn put_back(&mut self, queue: &mut Queue) {
        for _ in 0..self.heads.len() {
            queue.go_to_previous_position();
        }
        self.clear();
    }

    /// Hands the written chains to the guest: each gets the bytes that landed in it.
    pub fn complete(&self, queue: &mut Queue, mem: &GuestMemory, written: u64) {
        let mut left = written;
        for (head, cap) in &self.heads {
            let used = left.min(u64::from(*cap));
            left -= used;
            let _ = queue.add_used(mem, *head, used as u32);
        }
    }
}

/// Writes into a reservation's segments in order.
pub struct FrameCopier<'a> {
    mem: &'a GuestMemory,
    segs: &'a [Segment],
    idx: usize,
    off: usize,
    written: u64,
}

impl<'a> FrameCopier<'a> {
    pub fn new(mem: &'a GuestMemory, segs: &'a [Segment]) -> Self {
        FrameCopier {
            mem,
            segs,
            idx: 0,
            off: 0,
            written: 0,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The next destination slice with room, at most `max` bytes long.
    fn next_slice(&mut self, max: usize) -> Option<VolatileSlice<'a>> {
        while self.idx < self.segs.len() {
            let seg = self.segs[self.idx];
            let room = seg.len as usize - self.off;
            if room == 0 {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = room.min(max);
            let slice = self
                .mem
                .get_slice(GuestAddress(seg.addr.raw_value() + self.off as u64), n)
                .ok()?;
            self.off += n;
            self.written += n as u64;
            return Some(slice);
        }
        None
    }

    /// Writes `bytes`; returns false if the reservation ran out.
    pub fn write(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let Some(dst) = self.next_slice(bytes.len()) else {
                return false;
            };
            let n = dst.len();
            dst.copy_from(&bytes[..n]);
            bytes = &bytes[n..];
        }
        true
    }

    /// Copies the frame described by `src_segs` in `src_mem`, from byte `skip` on: the one
    /// copy a frame gets on its way between two guests.
    pub fn copy_from_guest(
        &mut self,
        src_mem: &GuestMemory,
        src_segs: &[Segment],
        mut skip: usize,
    ) -> bool {
        for seg in src_segs {
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let Ok(mut src) =
                src_mem.get_slice(GuestAddress(seg.addr.raw_value() + skip as u64), len - skip)
            else {
                return false;
            };
            skip = 0;
            while !src.is_empty() {
                let Some(dst) = self.next_slice(src.len()) else {
                    return false;
                };
                let n = dst.len();
                src.copy_to_volatile_slice(dst);
                if n == src.len() {
                    break;
                }
                src = match src.offset(n) {
                    Ok(rest) => rest,
                    Err(_) => return false,
                };
            }
        }
        true
    }
}
