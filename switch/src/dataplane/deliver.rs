//! Writing frames into a guest's receive ring: reserve buffers (merging several when the
//! guest allows it), write the virtio-net header and the rewritten L2 header, copy the rest
//! of the frame once from its source, hand the buffers to the guest, notify once per batch.

use vm_memory::GuestAddressSpace;

use super::{Delivery, Frame, Source};
use crate::flow::rewrite::HeaderBuf;
use crate::port::{DropReason, Link, Port};
use crate::virtio::chain::RxShortage;
use crate::virtio::features::{mergeable_rx, net_header_len};
use crate::virtio::{FrameCopier, RxReservation};

pub(super) fn to_guest(
    dst: &Port,
    link: &Link,
    source: &Source<'_>,
    frames: &[Frame],
    group: &[Delivery],
    headers: &[HeaderBuf],
    rx: &mut RxReservation,
) {
    if link.memory_faulted() {
        link.fail_on_memory_fault(dst);
        dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        return;
    }
    let dst_mem = link.mem.memory();
    let mut rxv = link.rx.lock().unwrap_or_else(|p| p.into_inner());
    if !rxv.usable() {
        dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        return;
    }
    let features = link.features();
    let header_len = net_header_len(features);
    let mergeable = mergeable_rx(features);
    let mut bad_chains = 0u64;
    let mut delivered = 0u64;
    {
        let queue = &mut rxv.queue;
        for (index, d) in group.iter().enumerate() {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            let out_len = d.out_len(frame.len, headers);
            let need = header_len as u64 + u64::from(out_len);
            match rx.reserve(queue, &dst_mem, need, mergeable, &mut bad_chains) {
                Err(RxShortage::NoBuffer) => {
                    dst.counters.drop(DropReason::NoBuffer, 1);
                    continue;
                }
                Err(RxShortage::BadChain) => {
                    // The receiver posts garbage: the rest of this batch's frames for it are
                    // dropped without walking its ring again (it loses its own frames only).
                    let rest = group.len() - index;
                    dst.counters.drop(DropReason::NoBuffer, rest as u64);
                    break;
                }
                Err(RxShortage::TooBig) => {
                    dst.counters.drop(DropReason::TooBig, 1);
                    continue;
                }
                Ok(()) => {}
            }
            let mut net_header = [0u8; 12];
            net_header[10..12].copy_from_slice(&(rx.heads.len() as u16).to_le_bytes());
            let mut copier = FrameCopier::new(&dst_mem, &rx.segs);
            let ok = copier.write(&net_header[..header_len])
                && copier.write(prefix)
                && source.copy_into(frame, &mut copier, skip);
            if !ok || copier.written() != need {
                // The reservation was sized for the frame, so this means guest memory changed
                // under us; hand the buffers back empty rather than with a partial frame.
                rx.complete(queue, &dst_mem, 0);
                bad_chains += 1;
                continue;
            }
            rx.complete(queue, &dst_mem, need);
            dst.counters.count_tx(u64::from(out_len));
            delivered += 1;
        }
    }
    if bad_chains > 0 {
        dst.counters.drop(DropReason::BadDescriptor, bad_chains);
        dst.log_bad_input(format_args!(
            "{bad_chains} malformed receive chains returned unused"
        ));
    }
    if delivered > 0 || bad_chains > 0 {
        let notify = rxv.needs_interrupt(&dst_mem);
        if notify && rxv.signal() {
            dst.counters
                .notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
