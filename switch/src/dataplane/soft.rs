//! Offloads done in software, for a destination that cannot take a frame's offload as it is:
//! a receiver without the matching GUEST_TSO/USO gets a super-frame cut into segments, and
//! the tunnel (which carries no virtio-net header) gets segments and checksums completed.
//! (A lone partial checksum for a receiver without GUEST_CSUM needs nothing here: delivery
//! completes it as it copies the frame, `deliver.rs`.) A super-frame is cut in place (`Cut`):
//! only its headers are gathered, and each segment is delivered as its own headers followed
//! by a window of the sender's buffers, so its payload is copied once, into the receiver, as
//! forwarding copies a frame. For a guest each segment leaves with a partial checksum (which
//! delivery completes as it copies, for a receiver without GUEST_CSUM); for the tunnel each
//! payload's sum is read where it lies. Other frames of such a group (and super-frames whose
//! headers a header buffer cannot hold) are copied, in order, into a host buffer as they
//! leave and finished there. Only groups with such a frame come here; the others go straight
//! from the sender's buffers to the receiver's.

use super::{Delivery, Frame, FrameBytes, Headers, Source, NO_HEADER};
use crate::flow::rewrite::{HeaderBuf, REWRITE_BYTES};
use crate::frame::Rewrite;
use crate::offload::segment::{
    complete_checksum, segment, segment_parts, L4Checksum, SegmentError,
};
use crate::offload::{Gso, Offload, PartialCsum};
use crate::port::{DropReason, Port};
use crate::virtio::Segment;

/// Bytes of finished frames gathered before they are delivered: about one super-frame's, so
/// the buffer stays in the core's cache between being written and copied out.
const FLUSH_BYTES: usize = 64 * 1024;

/// Work space of the software offloads, reused across batches.
#[derive(Debug, Default)]
pub struct SoftScratch {
    /// Finished frames, one after the other, and their deliveries.
    buf: Vec<u8>,
    frames: Vec<Frame>,
    deliveries: Vec<Delivery>,
    /// One frame as it leaves, before it is finished.
    work: Vec<u8>,
    lens: Vec<u32>,
    /// The segments of the super-frame being cut.
    cut: Cut,
}

/// Where a group goes, as far as the software offloads care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// A guest that negotiated `features`.
    Guest { features: u64 },
    /// A port behind the host's kernel (the VXLAN tunnel, an internal port): no offloads,
    /// and no frame over `max_frame` bytes (the tunnel's underlay MTU minus the
    /// encapsulation; the device's MTU).
    Host { max_frame: u32 },
}

impl Receiver {
    /// `gso` as this receiver gets it: for the tunnel, a TCP super-frame whose segments
    /// would not fit its frame limit is cut at a smaller segment size that does (TCP's
    /// segment sizes are the sender's choice, not part of the stream; UDP's are datagrams and
    /// stay as sent, those too big are dropped by the tunnel).
    fn fit(self, gso: Gso) -> Gso {
        match self {
            Receiver::Host { max_frame }
                if gso.kind.is_tcp()
                    && u32::from(gso.hdr_len) + u32::from(gso.size) > max_frame
                    && max_frame > u32::from(gso.hdr_len) =>
            {
                Gso {
                    size: (max_frame - u32::from(gso.hdr_len)) as u16,
                    ..gso
                }
            }
            _ => gso,
        }
    }
}

/// Whether any frame of `group` needs work here for `receiver`.
pub fn needed(frames: &[Frame], group: &[Delivery], receiver: Receiver) -> bool {
    group
        .iter()
        .any(|d| needs_work(&frames[usize::from(d.frame)].offload, receiver))
}

/// A super-frame the receiver cannot take whole, or for the tunnel any offload.
fn needs_work(offload: &Offload, receiver: Receiver) -> bool {
    match receiver {
        Receiver::Guest { features } => offload.gso.is_some() && !offload.fits(features),
        Receiver::Host { .. } => offload.is_some(),
    }
}

/// What the switch vouches for in a frame it checksummed itself.
const CHECKSUMMED: Offload = Offload {
    csum: None,
    gso: None,
    csum_valid: true,
};

impl SoftScratch {
    /// Finishes `group`'s frames for `receiver` and
    /// hands them, in order, to `deliver` (source, frames, deliveries, header arena). A frame
    /// that cannot be finished is dropped and counted on `ingress`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_group(
        &mut self,
        ingress: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
        receiver: Receiver,
        mut deliver: impl FnMut(&Source<'_>, &[Frame], &[Delivery], Headers<'_>),
    ) {
        self.buf.clear();
        self.frames.clear();
        self.deliveries.clear();
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            let mut offload = frame.offload.shifted(prefix.len() as i32 - skip as i32);
            offload.gso = offload.gso.map(|g| receiver.fit(g));
            let l4_checksum = match receiver {
                Receiver::Guest { .. } => L4Checksum::Partial,
                Receiver::Host { .. } => L4Checksum::Full,
            };
            if let Some(gso) = offload.gso.filter(|g| {
                let hdr = usize::from(g.hdr_len);
                needs_work(&offload, receiver) && prefix.len() <= hdr && hdr <= REWRITE_BYTES
            }) {
                // Cut straight from where the frame lies: only its headers are gathered.
                self.flush(&mut deliver);
                self.cut.deliver(
                    ingress,
                    d,
                    source,
                    frame,
                    (prefix, skip),
                    (gso, l4_checksum),
                    &mut deliver,
                );
                continue;
            }
            self.work.clear();
            self.work.extend_from_slice(prefix);
            source.append_to(frame, skip, &mut self.work);
            self.lens.clear();
            let finished = if !needs_work(&offload, receiver) {
                self.keep_work();
                Ok(offload)
            } else if let Some(gso) = offload.gso {
                if usize::from(gso.hdr_len) <= REWRITE_BYTES {
                    // Flow actions rewrote it past its headers: cut from the gathered copy.
                    self.flush(&mut deliver);
                    let gathered = Frame {
                        bytes: FrameBytes::Host {
                            start: 0,
                            len: self.work.len(),
                        },
                        len: self.work.len() as u32,
                        ..*frame
                    };
                    let work = Source::host(&self.work);
                    self.cut.deliver(
                        ingress,
                        d,
                        &work,
                        &gathered,
                        (&[], 0),
                        (gso, l4_checksum),
                        &mut deliver,
                    );
                    continue;
                }
                // Headers longer than a header buffer holds (IP and TCP options): copied.
                segment(&self.work, gso, &mut self.buf, &mut self.lens).map(|()| CHECKSUMMED)
            } else if let Some(csum) = offload.csum {
                complete_checksum(&mut self.work, csum).map(|()| {
                    self.keep_work();
                    CHECKSUMMED
                })
            } else {
                unreachable!("an offload is a checksum or a segmentation")
            };
            let offload = match finished {
                Ok(offload) => offload,
                Err(e) => {
                    drop_bad(ingress, e);
                    continue;
                }
            };
            let mut start = self.buf.len() - self.lens.iter().sum::<u32>() as usize;
            for &len in &self.lens {
                self.deliveries.push(Delivery {
                    dst: d.dst,
                    frame: self.frames.len() as u16,
                    vlan: d.vlan,
                    rewrite: Rewrite::NONE,
                    header: NO_HEADER,
                    tun_id: d.tun_id,
                });
                self.frames.push(Frame {
                    head: 0,
                    len,
                    bytes: FrameBytes::Host {
                        start,
                        len: len as usize,
                    },
                    tunnel: frame.tunnel,
                    offload,
                });
                start += len as usize;
            }
            if self.buf.len() >= FLUSH_BYTES {
                self.flush(&mut deliver);
            }
        }
        self.flush(&mut deliver);
    }

    /// Queues the frame in `work` as it is.
    fn keep_work(&mut self) {
        self.buf.extend_from_slice(&self.work);
        self.lens.push(self.work.len() as u32);
    }

    fn flush(&mut self, deliver: &mut impl FnMut(&Source<'_>, &[Frame], &[Delivery], Headers<'_>)) {
        if !self.deliveries.is_empty() {
            deliver(
                &Source::host(&self.buf),
                &self.frames,
                &self.deliveries,
                Headers::rewritten(&[]),
            );
        }
        self.buf.clear();
        self.frames.clear();
        self.deliveries.clear();
    }
}

/// The segments of one super-frame, cut where the frame lies: each a window of the frame
/// over its payload and up to a header's length of bytes before it, those bytes replaced by
/// the segment's own headers (a header buffer, as flow rewrites are). Only the outgoing
/// headers are gathered; payload checksums are left partial, or summed in place.
#[derive(Debug, Default)]
struct Cut {
    /// The frame's outgoing headers.
    heads: Vec<u8>,
    headers: Vec<HeaderBuf>,
    frames: Vec<Frame>,
    deliveries: Vec<Delivery>,
    /// The guest segments of those frames' windows.
    segs: Vec<Segment>,
}

impl Cut {
    /// Cuts `frame` (from `source`, leaving as `prefix` in place of its first `skip` bytes,
    /// the prefix within its headers) and hands the segments to `deliver`; a frame that
    /// cannot be cut is dropped and counted on `ingress`.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        ingress: &Port,
        d: &Delivery,
        source: &Source<'_>,
        frame: &Frame,
        prefix_skip: (&[u8], usize),
        how: (Gso, L4Checksum),
        deliver: &mut impl FnMut(&Source<'_>, &[Frame], &[Delivery], Headers<'_>),
    ) {
        match self.cut(d, source, frame, prefix_skip, how) {
            // SAFETY: `segs` were made by `source.window` in `cut`.
            Ok(()) => deliver(
                &unsafe { source.reseated(&self.segs) },
                &self.frames,
                &self.deliveries,
                Headers::rewritten(&self.headers),
            ),
            Err(e) => drop_bad(ingress, e),
        }
    }

    fn cut(
        &mut self,
        d: &Delivery,
        source: &Source<'_>,
        frame: &Frame,
        (prefix, skip): (&[u8], usize),
        (gso, l4_checksum): (Gso, L4Checksum),
    ) -> Result<(), SegmentError> {
        let hdr = usize::from(gso.hdr_len);
        let out_len = frame.len as usize + prefix.len() - skip;
        // Outgoing byte `o` past the prefix is the frame's byte `o - prefix.len() + skip`.
        let at = |o: usize| o - prefix.len() + skip;
        self.heads.clear();
        self.heads.extend_from_slice(prefix);
        let mut head = [0u8; REWRITE_BYTES + 32];
        let want = (skip + hdr - prefix.len()).min(head.len());
        let got = source.read_prefix(frame, &mut head[..want]);
        self.heads.extend_from_slice(&head[skip.min(got)..got]);
        let Cut {
            heads,
            headers,
            frames,
            deliveries,
            segs,
        } = self;
        headers.clear();
        frames.clear();
        deliveries.clear();
        segs.clear();
        let mut too_long = false;
        segment_parts(
            heads,
            out_len,
            gso,
            l4_checksum,
            |payload| source.sum_range(frame, at(payload.start), payload.len()),
            |header, payload, csum| {
                if header.len() > REWRITE_BYTES {
                    // Checked by the caller from the frame's metadata; never truncated.
                    too_long = true;
                    return;
                }
                let start = at(payload.start);
                let before = start.min(header.len());
                let len = before + payload.len();
                deliveries.push(Delivery {
                    dst: d.dst,
                    frame: frames.len() as u16,
                    vlan: d.vlan,
                    rewrite: Rewrite::NONE,
                    header: headers.len() as u32,
                    tun_id: d.tun_id,
                });
                headers.push(HeaderBuf::replacing(header, before));
                // The frame's offsets are the window's; delivery moves them by what the
                // header adds (as it does a tag's).
                let shift = header.len() - before;
                let offload = match l4_checksum {
                    L4Checksum::Full => CHECKSUMMED,
                    L4Checksum::Partial => Offload {
                        csum: Some(PartialCsum {
                            // The segment's L4 header lies past what it replaces: no underflow.
                            start: csum.start.saturating_sub(shift as u16),
                            offset: csum.offset,
                        }),
                        ..Offload::NONE
                    },
                };
                frames.push(Frame {
                    head: 0,
                    len: len as u32,
                    bytes: source.window(frame, start - before, len, segs),
                    tunnel: frame.tunnel,
                    offload,
                });
            },
        )?;
        if too_long {
            return Err(SegmentError::HeadersTooLong);
        }
        Ok(())
    }
}

fn drop_bad(ingress: &Port, e: SegmentError) {
    ingress.log_bad_input(format_args!("frame dropped: {e}"));
    ingress.counters.drop(DropReason::BadOffload, 1);
}
