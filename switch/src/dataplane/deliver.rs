//! Writing frames into a guest's receive ring: reserve buffers (merging several when the
//! guest allows it), write the virtio-net header and the rewritten L2 header, copy the rest
//! of the frame once from its source, hand the buffers to the guest, notify once per batch.

use super::{Delivery, Frame, Source};
use crate::flow::rewrite::HeaderBuf;
use crate::port::{DropReason, Link, Port};
use crate::virtio::chain::RxShortage;
use crate::virtio::features::{mergeable_rx, net_header_len};
use crate::virtio::net_header;
use crate::virtio::{Burst, FrameCopier, RxReservation};

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
    let map = link.mem.load();
    let mut rxv = link.rx.lock().unwrap_or_else(|p| p.into_inner());
    if !rxv.usable() {
        dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        return;
    }
    let ring = &mut *rxv;
    let call = ring.call.as_ref();
    let mut burst = match Burst::open(&mut ring.vring, &map) {
        Ok(burst) => burst,
        Err(e) => {
            dst.log_bad_input(format_args!("RX ring unusable: {e}"));
            dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
            return;
        }
    };
    let features = link.features();
    let header_len = net_header_len(features);
    let mergeable = mergeable_rx(features);
    // The chains this group will take: their descriptors start loading now.
    if burst.refresh().is_ok() {
        burst.prefetch_chains(group.len().min(usize::from(u16::MAX)) as u16);
    }
    let mut bad_chains = 0u64;
    let mut delivered = 0u64;
    let mut delivered_bytes = 0u64;
    let mut no_buffer = 0u64;
    let mut too_big = 0u64;
    // The smallest frame (bytes with its header) found too big for the receiver's buffers:
    // frames as big are refused without walking its ring again.
    let mut too_big_from = u64::MAX;
    {
        for (index, d) in group.iter().enumerate() {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            let out_len = d.out_len(frame.len, headers);
            let need = header_len as u64 + u64::from(out_len);
            if need >= too_big_from {
                too_big += 1;
                continue;
            }
            match rx.reserve(&mut burst, need, mergeable, &mut bad_chains) {
                Err(RxShortage::NoBuffer) => {
                    // Out of buffers (the chains taken went back): the rest of the group is
                    // dropped without walking them again, as DPDK's vhost ends a burst.
                    no_buffer += (group.len() - index) as u64;
                    break;
                }
                Err(RxShortage::BadChain) => {
                    // The receiver posts garbage: the rest of this batch's frames for it are
                    // dropped without walking its ring again (it loses its own frames only).
                    no_buffer += (group.len() - index) as u64;
                    break;
                }
                Err(RxShortage::TooBig) => {
                    too_big += 1;
                    too_big_from = need;
                    continue;
                }
                Ok(()) => {}
            }
            let mut net_header = [0u8; net_header::MAX_LEN];
            if frame.offload.is_some() || frame.offload.csum_valid {
                // The frame's offload, regenerated for this receiver (the group's frames all
                // fit it: `soft.rs` finished those that did not).
                let shift = prefix.len() as i32 - skip as i32;
                frame
                    .offload
                    .shifted(shift)
                    .net_header(features)
                    .emit(&mut net_header);
            }
            net_header[10..12].copy_from_slice(&(rx.heads.len() as u16).to_le_bytes());
            // SAFETY: the reservation's segments were made by `map`, held for this function.
            let mut copier = unsafe { FrameCopier::new(&rx.segs) };
            let ok = copier.write(&net_header[..header_len])
                && copier.write(prefix)
                && source.copy_into(frame, &mut copier, skip);
            if !ok || copier.written() != need {
                // The reservation was sized for the frame, so this means guest memory changed
                // under us; hand the buffers back empty rather than with a partial frame.
                rx.complete(&mut burst, 0);
                bad_chains += 1;
                continue;
            }
            rx.complete(&mut burst, need);
            delivered += 1;
            delivered_bytes += u64::from(out_len);
        }
    }
    // Counters once per batch (see `PortCounters::count_rx`).
    dst.counters.count_tx(delivered, delivered_bytes);
    dst.counters.drop(DropReason::NoBuffer, no_buffer);
    dst.counters.drop(DropReason::TooBig, too_big);
    if bad_chains > 0 {
        dst.counters.drop(DropReason::BadDescriptor, bad_chains);
        dst.log_bad_input(format_args!(
            "{bad_chains} malformed receive chains returned unused"
        ));
    }
    if delivered > 0 || bad_chains > 0 {
        // One index store and one notification decision per batch.
        burst.publish();
        if burst.needs_interrupt() && crate::port::ring::signal(call) {
            dst.counters
                .notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
