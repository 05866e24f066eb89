//! Writing frames into a guest's receive rings: choose the ring (by flow, when the guest uses
//! several queue pairs), reserve buffers (merging several when the guest allows it), write
//! the virtio-net header and the rewritten L2 header, copy the rest of the frame once from its
//! source (completing a partial checksum on the way for a receiver without GUEST_CSUM), hand
//! the buffers to the guest, notify once per batch.

use super::{Delivery, Frame, Headers, Source};
use crate::port::{DropReason, Link, Port, PortCounters, MAX_QUEUE_PAIRS};
use crate::virtio::chain::RxShortage;
use crate::virtio::features::{bit, mergeable_rx, net_header_len};
use crate::virtio::net_header;
use crate::virtio::{Burst, FrameCopier, RxReservation};
use crate::wire::{checksum, flow_hash};
use virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM;

/// Work space for spreading a group over a guest's receive queues.
#[derive(Debug, Default)]
pub struct Steering {
    /// The queue (an index into the up queues) of each delivery of the group.
    queue_of: Vec<u8>,
    /// The deliveries of one queue, in group order.
    picked: Vec<Delivery>,
}

/// Delivers `group` (deliveries to `dst`, in order) into the guest's receive rings: into
/// queue pair 0's when the guest uses one pair; with several enabled, each frame goes to the
/// ring its flow hashes to (so a flow stays on one queue, in order), one pass per ring.
#[allow(clippy::too_many_arguments)]
pub(super) fn to_guest(
    dst: &Port,
    link: &Link,
    source: &Source<'_>,
    frames: &[Frame],
    group: &[Delivery],
    headers: Headers<'_>,
    rx: &mut RxReservation,
    steering: &mut Steering,
) {
    if link.memory_faulted() {
        link.fail_on_memory_fault(dst);
        dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        return;
    }
    let mut up = [0u16; MAX_QUEUE_PAIRS];
    let n = link.rx_queues_up(&mut up);
    if n <= 1 {
        // None up: queue 0's ring is not usable either, and the group is counted there.
        return to_ring(
            dst,
            link,
            usize::from(up[0]),
            source,
            frames,
            group,
            headers,
            rx,
        );
    }
    steering.queue_of.clear();
    for d in group {
        let mut head = [0u8; 64];
        let len = source.read_prefix(&frames[usize::from(d.frame)], &mut head);
        steering
            .queue_of
            .push((flow_hash(&head[..len]) % n as u32) as u8);
    }
    for (i, &queue) in up[..n].iter().enumerate() {
        steering.picked.clear();
        steering.picked.extend(
            group
                .iter()
                .zip(&steering.queue_of)
                .filter(|(_, q)| usize::from(**q) == i)
                .map(|(d, _)| *d),
        );
        if !steering.picked.is_empty() {
            to_ring(
                dst,
                link,
                usize::from(queue),
                source,
                frames,
                &steering.picked,
                headers,
                rx,
            );
        }
    }
}

/// Delivers `group` into the receive ring of queue pair `queue`.
#[allow(clippy::too_many_arguments)]
fn to_ring(
    dst: &Port,
    link: &Link,
    queue: usize,
    source: &Source<'_>,
    frames: &[Frame],
    group: &[Delivery],
    headers: Headers<'_>,
    rx: &mut RxReservation,
) {
    let Some(pair) = link.pair(queue) else {
        dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        return;
    };
    let map = link.mem.load();
    let mut rxv = pair.rx.lock().unwrap_or_else(|p| p.into_inner());
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
    let guest_csum = features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0;
    // The chains this group will take, and the used entries that return them: their
    // lines start coming over from the guest's core now, for writing.
    let posted = burst.refresh().ok();
    if let Some(free) = posted {
        PortCounters::sample_ring(&dst.counters.tx_ring_free, free);
    }
    if let (Some(_), Some(first)) = (posted, group.first()) {
        let n = group.len().min(usize::from(u16::MAX)) as u16;
        let bytes =
            header_len as u32 + first.out_len(frames[usize::from(first.frame)].len, headers);
        burst.prefetch_buffers(n, bytes);
        burst.prefetch_used(n);
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
            // A partial checksum the receiver cannot take: completed as the frame is copied.
            let mut complete = None;
            if frame.offload.is_some() || frame.offload.csum_valid {
                // The frame's offload, regenerated for this receiver (`soft.rs` cut the
                // super-frames it cannot take).
                let offload = frame.offload.shifted(prefix.len() as i32 - skip as i32);
                offload.net_header(features).emit(&mut net_header);
                if !guest_csum {
                    complete = offload.csum;
                }
            }
            net_header[10..12].copy_from_slice(&(rx.heads.len() as u16).to_le_bytes());
            // SAFETY: the reservation's segments were made by `map`, held for this function.
            let mut copier = unsafe { FrameCopier::new(&rx.segs) };
            if let Some(c) = complete {
                copier.sum_from(header_len as u64 + u64::from(c.start));
            }
            let mut ok = copier.write(&net_header[..header_len])
                && copier.write(prefix)
                && source.copy_into(frame, &mut copier, skip);
            if let Some(c) = complete.filter(|_| ok) {
                // The field held the pseudo-header's sum, so the sum is the whole sum. Its
                // place was checked against the frame's length on ingress (or made by the
                // segmentation), so it was written.
                let at = header_len as u64 + u64::from(c.start) + u64::from(c.offset);
                ok = copier.patch(at, &checksum::finish(copier.sum()).to_be_bytes());
            }
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
