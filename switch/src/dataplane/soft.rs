//! Offloads done in software, for a destination that cannot take a frame's offload as it is:
//! a receiver without GUEST_CSUM gets its checksums completed, one without the matching
//! GUEST_TSO/USO gets the super-frame cut into segments, and the tunnel (which carries no
//! virtio-net header) gets both. The group's frames are copied, in order, into a host buffer
//! as they leave (rewrite applied), finished there, and handed to the same delivery code as
//! any host frames. Only groups with such a frame come here; the others go straight from the
//! sender's buffers to the receiver's.

use super::{Delivery, Frame, FrameBytes, Source, NO_HEADER};
use crate::flow::rewrite::HeaderBuf;
use crate::frame::Rewrite;
use crate::offload::segment::{complete_checksum, segment};
use crate::offload::Offload;
use crate::port::{DropReason, Port};

/// Bytes of finished frames gathered before they are delivered: about one super-frame's
/// segments, so the buffer stays in the core's cache between being written and copied out
/// (at 512 KiB it did not, and segmenting ran at two thirds of the speed).
const FLUSH_BYTES: usize = 64 * 1024;

/// Work space of the software offloads, reused across batches.
#[derive(Debug, Default)]
pub struct SoftScratch {
    /// Finished frames, one after the other.
    buf: Vec<u8>,
    frames: Vec<Frame>,
    deliveries: Vec<Delivery>,
    /// One frame as it leaves, before it is finished.
    work: Vec<u8>,
    lens: Vec<u32>,
}

/// Whether any frame of `group` needs work a receiver with `features` (None: the tunnel,
/// which takes no offloads) cannot do.
pub fn needed(frames: &[Frame], group: &[Delivery], features: Option<u64>) -> bool {
    group.iter().any(|d| {
        let offload = &frames[usize::from(d.frame)].offload;
        offload.is_some() && !features.is_some_and(|f| offload.fits(f))
    })
}

impl SoftScratch {
    /// Finishes `group`'s frames for a destination with `features` (None: the tunnel) and
    /// hands them, in order and in runs of about [`FLUSH_BYTES`], to `deliver`. A frame that
    /// cannot be finished is dropped and counted on `ingress`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_group(
        &mut self,
        ingress: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: &[HeaderBuf],
        features: Option<u64>,
        mut deliver: impl FnMut(&Source<'_>, &[Frame], &[Delivery]),
    ) {
        self.buf.clear();
        self.frames.clear();
        self.deliveries.clear();
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            self.work.clear();
            self.work.extend_from_slice(prefix);
            source.append_to(frame, skip, &mut self.work);
            let offload = frame.offload.shifted(prefix.len() as i32 - skip as i32);
            self.lens.clear();
            let finished = if !offload.is_some() || features.is_some_and(|f| offload.fits(f)) {
                self.buf.extend_from_slice(&self.work);
                self.lens.push(self.work.len() as u32);
                Ok(offload)
            } else if let Some(gso) = offload.gso {
                segment(&self.work, gso, &mut self.buf, &mut self.lens).map(|()| Offload {
                    csum_valid: true,
                    ..Offload::NONE
                })
            } else if let Some(csum) = offload.csum {
                complete_checksum(&mut self.work, csum).map(|()| {
                    self.buf.extend_from_slice(&self.work);
                    self.lens.push(self.work.len() as u32);
                    Offload {
                        csum_valid: true,
                        ..Offload::NONE
                    }
                })
            } else {
                unreachable!("an offload is a checksum or a segmentation")
            };
            let offload = match finished {
                Ok(offload) => offload,
                Err(e) => {
                    ingress.log_bad_input(format_args!("frame dropped: {e}"));
                    ingress.counters.drop(DropReason::BadOffload, 1);
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

    fn flush(&mut self, deliver: &mut impl FnMut(&Source<'_>, &[Frame], &[Delivery])) {
        if !self.deliveries.is_empty() {
            deliver(&Source::host(&self.buf), &self.frames, &self.deliveries);
        }
        self.buf.clear();
        self.frames.clear();
        self.deliveries.clear();
    }
}
