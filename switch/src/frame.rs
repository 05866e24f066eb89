//! A frame in flight: where its bytes are (a guest's transmit buffers or a host buffer), how
//! its header changes on the way out, and the metadata a tunnel attaches.

use std::net::IpAddr;

use crate::offload::Offload;
use crate::virtio::guest_map::{copy_bytes, copy_small};
use crate::virtio::{FrameCopier, GuestMap, Segment};
use crate::vlan::{Classified, Egress, Vid};
use crate::wire::checksum;
use crate::wire::{ethertype, L2Header};

/// Where a frame's bytes live.
#[derive(Debug, Clone, Copy)]
pub enum FrameBytes {
    /// In the sender's guest memory: a range of the batch's segment list.
    Guest { segs: (usize, usize) },
    /// In the batch's host buffer (frames decapsulated from the tunnel).
    Host { start: usize, len: usize },
}

/// Tunnel metadata of a frame that arrived through VXLAN (the hook for `tun_id`, `tun_src`
/// and `tun_dst` matches once flow tables land).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelMeta {
    pub vni: u32,
    /// The local VLAN the VNI maps to.
    pub vlan: Vid,
    pub remote: IpAddr,
    pub local: IpAddr,
}

/// One frame of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// The guest's TX chain head (guest frames only).
    pub head: u16,
    pub len: u32,
    pub bytes: FrameBytes,
    pub tunnel: Option<TunnelMeta>,
    /// What its sender's virtio-net header asked for (converted once, on ingress).
    pub offload: Offload,
}

/// Where the bytes of a batch's frames are: the sender's memory and segment list, or a host
/// buffer. Borrowed for the length of the batch.
pub struct Source<'a> {
    /// The sender's memory map, held for the batch: what keeps `segs` valid.
    map: Option<&'a GuestMap>,
    segs: &'a [Segment],
    host: &'a [u8],
}

impl<'a> Source<'a> {
    /// Frames in a guest's memory.
    ///
    /// # Safety
    /// `segs` must have been made by `map` (so they lie in its mappings, which `map` keeps
    /// alive for `'a`).
    pub unsafe fn guest(map: &'a GuestMap, segs: &'a [Segment]) -> Source<'a> {
        Source {
            map: Some(map),
            segs,
            host: &[],
        }
    }

    /// Frames in a host buffer.
    pub fn host(host: &'a [u8]) -> Source<'a> {
        Source {
            map: None,
            segs: &[],
            host,
        }
    }

    /// Whether the frames are in a guest's memory (which its frontend could pull away).
    pub fn is_guest(&self) -> bool {
        self.map.is_some()
    }

    fn guest_segs(&self, range: (usize, usize)) -> &[Segment] {
        match self.map {
            Some(_) => self.segs.get(range.0..range.1).unwrap_or(&[]),
            None => &[],
        }
    }

    /// Copies up to `out.len()` bytes from the start of `frame`; returns how many.
    pub fn read_prefix(&self, frame: &Frame, out: &mut [u8]) -> usize {
        match frame.bytes {
            FrameBytes::Host { start, len } => {
                let n = out.len().min(len);
                out[..n].copy_from_slice(&self.host[start..start + n]);
                n
            }
            FrameBytes::Guest { segs } => {
                let mut filled = 0;
                for seg in self.guest_segs(segs) {
                    if filled == out.len() {
                        break;
                    }
                    let want = (out.len() - filled).min(seg.len() as usize);
                    // SAFETY: `seg` was made by `self.map` (the constructor's contract), which
                    // is alive for `'a`; `out[filled..]` has room for `want` bytes.
                    unsafe {
                        copy_small(seg.host_addr(), out[filled..].as_mut_ptr() as usize, want)
                    };
                    filled += want;
                }
                filled
            }
        }
    }

    pub fn l2_header(&self, frame: &Frame) -> Option<L2Header> {
        let mut buf = [0u8; L2Header::MAX_LEN];
        let n = self.read_prefix(frame, &mut buf);
        L2Header::parse(&buf[..n]).ok()
    }

    /// Copies `frame` from byte `skip` on into a receiver's buffers.
    pub fn copy_into(&self, frame: &Frame, copier: &mut FrameCopier<'_>, skip: usize) -> bool {
        match frame.bytes {
            FrameBytes::Host { start, len } => {
                copier.write(&self.host[start + skip.min(len)..start + len])
            }
            FrameBytes::Guest { segs } => {
                let segs = self.guest_segs(segs);
                // SAFETY: the segments were made by `self.map`, alive for `'a`.
                !segs.is_empty() && unsafe { copier.copy_segments(segs, skip) }
            }
        }
    }

    /// The Internet checksum's sum ([`checksum::sum`]) of `len` bytes of `frame` from byte
    /// `from` on, read where they lie (a guest's buffers are not copied for it).
    pub fn sum_range(&self, frame: &Frame, from: usize, len: usize) -> u16 {
        let mut total = 0u16;
        let mut left = len;
        // Whether the bytes summed so far are odd in number: the next piece's words are then
        // offset by one byte, and its sum is byte-swapped (RFC 1071, section 2(B)).
        let mut odd = false;
        self.for_each_piece(frame, from, |at, n| {
            let n = n.min(left);
            if n == 0 {
                return;
            }
            // SAFETY: `for_each_piece` hands out pieces valid for reads of their length while
            // this source is alive; `n` is at most that.
            let s = unsafe { checksum::sum_raw(at as *const u8, n) };
            total = checksum::add(total, if odd { s.swap_bytes() } else { s });
            odd ^= n % 2 == 1;
            left -= n;
        });
        total
    }

    /// Where `len` bytes of `frame` from byte `from` on lie, as the bytes of a frame of their
    /// own: a host range, or guest segments appended to `segs` (deliver it from
    /// [`Source::reseated`] over `segs`).
    pub fn window(
        &self,
        frame: &Frame,
        from: usize,
        len: usize,
        segs: &mut Vec<Segment>,
    ) -> FrameBytes {
        match frame.bytes {
            FrameBytes::Host { start, .. } => FrameBytes::Host {
                start: start + from,
                len,
            },
            FrameBytes::Guest { segs: range } => {
                let first = segs.len();
                let (mut skip, mut left) = (from as u32, len as u32);
                for seg in self.guest_segs(range) {
                    if left == 0 {
                        break;
                    }
                    if skip >= seg.len() {
                        skip -= seg.len();
                        continue;
                    }
                    let piece = seg.advance(skip).truncate(left);
                    skip = 0;
                    left -= piece.len();
                    segs.push(piece);
                }
                FrameBytes::Guest {
                    segs: (first, segs.len()),
                }
            }
        }
    }

    /// This source with its segments replaced by `segs` (windows made by
    /// [`Source::window`]).
    ///
    /// # Safety
    /// Every segment in `segs` must have been made by [`Source::window`] on this source (so
    /// it lies in the same guest's mappings, which this source keeps alive).
    pub unsafe fn reseated<'b>(&'b self, segs: &'b [Segment]) -> Source<'b> {
        Source {
            map: self.map,
            segs,
            host: self.host,
        }
    }

    /// Appends `frame` from byte `skip` on to `out` (the software offloads work on a frame
    /// in a host buffer).
    pub fn append_to(&self, frame: &Frame, skip: usize, out: &mut Vec<u8>) {
        self.for_each_piece(frame, skip, |at, len| {
            out.reserve(len);
            let spare = &mut out.spare_capacity_mut()[..len];
            // SAFETY: `for_each_piece` hands out pieces valid for reads of `len` bytes while
            // this source is alive; `spare` has room for `len` bytes (reserved above), and
            // they are all written before `set_len` counts them.
            unsafe {
                copy_bytes(at, spare.as_mut_ptr() as usize, len);
                out.set_len(out.len() + len);
            }
        });
    }

    /// Calls `f` with each piece of `frame` from byte `skip` on, as (host address, length),
    /// valid while this source is (for sendmmsg: the kernel then copies straight from guest
    /// memory).
    pub fn for_each_piece(&self, frame: &Frame, mut skip: usize, mut f: impl FnMut(usize, usize)) {
        match frame.bytes {
            FrameBytes::Host { start, len } => {
                if skip < len {
                    let bytes = &self.host[start + skip..start + len];
                    f(bytes.as_ptr() as usize, bytes.len());
                }
            }
            FrameBytes::Guest { segs } => {
                for seg in self.guest_segs(segs) {
                    let len = seg.len() as usize;
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    f(seg.host_addr() + skip, len - skip);
                    skip = 0;
                }
            }
        }
    }
}

/// The L2 header a frame leaves with: `prefix` replaces the first `skip` bytes of the frame.
/// Every delivery of a guest's frame carries the whole L2 header it was switched on (the
/// addresses, the tag and the EtherType, from the one copy the decision read), so what leaves
/// is what was decided: a guest rewriting its header in its own memory meanwhile changes only
/// the payload behind it.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite {
    pub prefix: [u8; L2Header::MAX_LEN],
    pub prefix_len: u8,
    pub skip: u8,
}

impl Rewrite {
    /// Nothing replaced: the frame leaves as its bytes are (host frames, or flow outputs
    /// whose header lives in the batch's header arena).
    pub const NONE: Rewrite = Rewrite {
        prefix: [0; L2Header::MAX_LEN],
        prefix_len: 0,
        skip: 0,
    };

    /// The header of a frame classified into `class`, as it leaves through `egress`: the
    /// tag pushed, rewritten, kept or popped, and everything else as the decision read it.
    pub fn for_egress(h: &L2Header, class: Classified, egress: Egress) -> Rewrite {
        let mut r = Rewrite::NONE;
        r.fill_for_egress(h, class, egress);
        r
    }

    /// [`Rewrite::for_egress`] written in place (the frame path fills the rewrite where the
    /// delivery already lies, rather than building it aside and copying it in).
    #[inline]
    pub fn fill_for_egress(&mut self, h: &L2Header, class: Classified, egress: Egress) {
        self.prefix[0..6].copy_from_slice(&h.dst.0);
        self.prefix[6..12].copy_from_slice(&h.src.0);
        let mut at = 12;
        if egress == Egress::Tagged {
            let tci = match h.vlan {
                // Same VLAN, trunk to trunk: the tag as it came.
                Some(tag) if tag.vid == class.vid => {
                    (u16::from(tag.pcp & 7) << 13) | (u16::from(tag.dei) << 12) | tag.vid
                }
                tag => {
                    let dei = tag.is_some_and(|t| t.dei);
                    (u16::from(class.pcp & 7) << 13) | (u16::from(dei) << 12) | class.vid
                }
            };
            self.prefix[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
            self.prefix[14..16].copy_from_slice(&tci.to_be_bytes());
            at = 16;
        }
        self.prefix[at..at + 2].copy_from_slice(&h.ethertype.to_be_bytes());
        self.prefix_len = (at + 2) as u8;
        self.skip = h.len() as u8;
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len)]
    }

    pub fn out_len(&self, frame_len: u32) -> u32 {
        frame_len + u32::from(self.prefix_len) - u32::from(self.skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetAddress, VlanRepr};

    fn header(tag: Option<(u16, u8)>) -> L2Header {
        L2Header {
            dst: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vlan: tag.map(|(vid, pcp)| VlanRepr {
                pcp,
                dei: false,
                vid,
                ethertype: 0x0800,
            }),
            ethertype: 0x0800,
        }
    }

    #[test]
    fn untagged_to_trunk_pushes_a_tag_with_the_priority() {
        let r = Rewrite::for_egress(
            &header(None),
            Classified { vid: 100, pcp: 0 },
            Egress::Tagged,
        );
        assert_eq!((r.prefix_len, r.skip), (18, 14));
        assert_eq!(&r.prefix[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        assert_eq!(r.out_len(60), 64);
        let r = Rewrite::for_egress(
            &header(Some((0, 5))),
            Classified { vid: 100, pcp: 5 },
            Egress::Tagged,
        );
        assert_eq!((r.prefix_len, r.skip), (18, 18));
        assert_eq!(&r.prefix[14..16], &((5u16 << 13) | 100).to_be_bytes());
    }

    #[test]
    fn tagged_to_access_pops_and_same_vlan_trunk_keeps() {
        let tagged = header(Some((100, 3)));
        let class = Classified { vid: 100, pcp: 3 };
        let pop = Rewrite::for_egress(&tagged, class, Egress::Untagged);
        assert_eq!((pop.prefix_len, pop.skip), (14, 18));
        assert_eq!(&pop.prefix[12..14], &[0x08, 0x00]);
        assert_eq!(pop.out_len(64), 60);
        let keep = Rewrite::for_egress(&tagged, class, Egress::Tagged);
        assert_eq!((keep.prefix_len, keep.skip), (18, 18));
        assert_eq!(&keep.prefix[12..18], &[0x81, 0x00, 0x60, 100, 0x08, 0x00]);
        let plain = Rewrite::for_egress(&header(None), class, Egress::Untagged);
        assert_eq!((plain.prefix_len, plain.skip), (14, 14));
        assert_eq!(&plain.prefix[..6], &[2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn host_frames_read_and_skip() {
        let host = [9u8; 10]
            .iter()
            .chain(b"abcdefghijklmnop".iter())
            .copied()
            .collect::<Vec<_>>();
        let src = Source::host(&host);
        let f = Frame {
            head: 0,
            len: 16,
            bytes: FrameBytes::Host { start: 10, len: 16 },
            tunnel: None,
            offload: Offload::NONE,
        };
        let mut out = [0u8; 4];
        assert_eq!(src.read_prefix(&f, &mut out), 4);
        assert_eq!(&out, b"abcd");
        let mut pieces = Vec::new();
        src.for_each_piece(&f, 12, |at, len| {
            // SAFETY: the piece is in `host`, alive here.
            pieces.push(unsafe { std::slice::from_raw_parts(at as *const u8, len) }.to_vec());
        });
        assert_eq!(pieces, vec![b"mnop".to_vec()]);
    }
}
