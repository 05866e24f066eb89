//! The frame path: drain a port's transmit ring in batches, decide where each frame goes
//! (VLAN classification, MAC learning and lookup, flooding), and copy each frame once, from
//! the sender's buffers straight into each receiver's buffers, pushing or popping the 802.1Q
//! tag on the way.
//!
//! Locking: the sender's TX ring lock is held for the batch; each destination's RX ring lock
//! is taken once per batch. RX ring locks are leaves (never held while taking another lock),
//! so there is no lock-order cycle between ports forwarding to each other.

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;

use crate::mac_table::{Learned, PortId};
use crate::port::{DropReason, Link, Port};
use crate::switch::Switch;
use crate::virtio::chain::{ChainError, RxShortage};
use crate::virtio::features::{mergeable_rx, net_header_len};
use crate::virtio::{FrameCopier, GuestMemory, RxReservation, Segment, TxChain};
use crate::vlan::{Classified, Egress, Vid, VlanMode};
use crate::wire::{ethertype, EthernetAddress, L2Header};
use std::sync::Arc;

/// Chains taken from a TX ring per batch.
pub const BATCH: usize = 64;

/// How a frame's first bytes change on the way out: `prefix` replaces the first `skip` bytes.
#[derive(Debug, Clone, Copy)]
struct Rewrite {
    prefix: [u8; 16],
    prefix_len: u8,
    skip: u8,
}

impl Rewrite {
    const NONE: Rewrite = Rewrite {
        prefix: [0; 16],
        prefix_len: 0,
        skip: 0,
    };

    /// The change needed for a frame classified into `class` to leave as `egress`.
    fn for_egress(h: &L2Header, class: Classified, egress: Egress) -> Rewrite {
        let mut r = Rewrite::NONE;
        r.prefix[0..6].copy_from_slice(&h.dst.0);
        r.prefix[6..12].copy_from_slice(&h.src.0);
        match (h.vlan, egress) {
            (Some(tag), Egress::Tagged) if tag.vid == class.vid => Rewrite::NONE,
            (None, Egress::Untagged) => Rewrite::NONE,
            (tag, Egress::Tagged) => {
                let dei = tag.is_some_and(|t| t.dei);
                let tci = (u16::from(class.pcp & 7) << 13) | (u16::from(dei) << 12) | class.vid;
                r.prefix[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
                r.prefix[14..16].copy_from_slice(&tci.to_be_bytes());
                r.prefix_len = 16;
                r.skip = if tag.is_some() { 16 } else { 12 };
                r
            }
            (Some(_), Egress::Untagged) => {
                r.prefix_len = 12;
                r.skip = 16;
                r
            }
        }
    }

    fn out_len(&self, frame_len: u32) -> u32 {
        frame_len + u32::from(self.prefix_len) - u32::from(self.skip)
    }
}

#[derive(Debug, Clone, Copy)]
struct Delivery {
    dst: PortId,
    frame: u16,
    rewrite: Rewrite,
}

/// What a batch needs to know of each port, read once per batch rather than per frame.
#[derive(Debug, Clone)]
struct PortView {
    vlan: Arc<VlanMode>,
    connected: bool,
}

/// Reusable work space for draining one TX ring: no allocation per frame once warmed up.
#[derive(Debug, Default)]
pub struct TxScratch {
    segs: Vec<Segment>,
    frames: Vec<TxChain>,
    bad_heads: Vec<u16>,
    deliveries: Vec<Delivery>,
    rx: RxReservation,
    /// Indexed by port number.
    ports: Vec<Option<PortView>>,
}

impl TxScratch {
    fn clear(&mut self) {
        self.segs.clear();
        self.frames.clear();
        self.bad_heads.clear();
        self.deliveries.clear();
        self.ports.clear();
    }
}

fn drop_reason(e: &ChainError) -> DropReason {
    match e {
        ChainError::Runt { .. } => DropReason::Runt,
        ChainError::TooBig { .. } => DropReason::TooBig,
        _ => DropReason::BadDescriptor,
    }
}

/// Switches every frame waiting in `port`'s transmit ring. In event mode (`event_mode`),
/// drains until the ring is empty and re-arms the guest's kick (EVENT_IDX aware); in poll
/// mode takes one batch and leaves kicks off. Returns the number of chains consumed.
pub fn drain_tx(sw: &Switch, port: &Port, link: &Link, event_mode: bool) -> usize {
    let mem = link.mem.memory();
    let mut txv = link.tx.lock().unwrap_or_else(|p| p.into_inner());
    if !txv.usable() {
        return 0;
    }
    let header_len = net_header_len(link.features());
    let max_frame = sw.settings().max_frame_len();
    let mut scratch = link.tx_scratch.lock().unwrap_or_else(|p| p.into_inner());
    let mut consumed = 0;
    loop {
        // Kicks stay off while we drain (event mode re-arms them below; pollers never need them).
        let _ = txv.queue.disable_notification(&*mem);
        scratch.clear();
        let mut popped = 0;
        {
            let queue = &mut txv.queue;
            let queue_size = queue.size();
            // One read of the guest's avail index per batch.
            match queue.iter(&*mem) {
                Ok(chains) => {
                    for chain in chains.take(BATCH) {
                        popped += 1;
                        let head = chain.head_index();
                        let s = &mut *scratch;
                        match TxChain::parse(
                            chain,
                            &mem,
                            header_len,
                            max_frame,
                            queue_size,
                            &mut s.segs,
                        ) {
                            Ok(frame) => s.frames.push(frame),
                            Err(e) => {
                                log::debug!("port {}: TX chain {head} rejected: {e}", port.name);
                                port.counters.drop(drop_reason(&e), 1);
                                s.bad_heads.push(head);
                            }
                        }
                    }
                }
                Err(e) => {
                    // The avail index moved further than the ring holds: the guest broke its
                    // own ring. Count once per pass and leave it alone.
                    log::debug!("port {}: TX ring unusable: {e}", port.name);
                    port.counters.drop(DropReason::BadDescriptor, 1);
                }
            }
        }
        if popped > 0 {
            switch_batch(sw, port, &mem, &mut scratch);
            let queue = &mut txv.queue;
            for head in scratch
                .frames
                .iter()
                .map(|f| f.head)
                .chain(scratch.bad_heads.iter().copied())
            {
                // A head outside the queue cannot be returned: nothing else to do with it.
                let _ = queue.add_used(&*mem, head, 0);
            }
            let notify = queue.needs_notification(&*mem).unwrap_or(true);
            if notify && txv.signal() {
                port.counters
                    .notifications
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            consumed += popped;
        }
        if popped < BATCH {
            if !event_mode {
                break;
            }
            // Re-arm; if the guest added chains meanwhile, go round again.
            match txv.queue.enable_notification(&*mem) {
                Ok(true) => continue,
                _ => break,
            }
        } else if !event_mode {
            break;
        }
    }
    consumed
}

/// Decides the destinations of every frame in the batch, then delivers per destination.
fn switch_batch(sw: &Switch, port: &Port, mem: &GuestMemory, scratch: &mut TxScratch) {
    let table = sw.mac_table();
    let now = table.now();
    let ports = sw.ports_snapshot();
    let TxScratch {
        segs,
        frames,
        deliveries,
        rx,
        ports: views,
        ..
    } = scratch;
    views.extend(ports.iter().map(|p| {
        p.as_ref().map(|p| PortView {
            vlan: p.vlan(),
            connected: p.has_link(),
        })
    }));
    let Some(Some(ingress)) = views.get(usize::from(port.id)).cloned() else {
        return;
    };
    // Consecutive frames of one flow learn and look up the same addresses: remember the last.
    let mut last_learned = None;
    let mut last_lookup: Option<((Vid, EthernetAddress), Option<PortId>)> = None;

    for (index, frame) in frames.iter().enumerate() {
        let Some(header) = frame.l2_header(mem, segs) else {
            port.counters.drop(DropReason::Runt, 1);
            continue;
        };
        let class = match ingress.vlan.ingress(header.vlan.as_ref()) {
            Ok(c) => c,
            Err(_) => {
                port.counters.drop(DropReason::VlanFilter, 1);
                continue;
            }
        };
        port.counters.count_rx(u64::from(frame.frame_len));
        if header.src.is_unicast() && last_learned != Some((class.vid, header.src)) {
            last_learned = Some((class.vid, header.src));
            match table.learn(class.vid, header.src, port.id, now) {
                Learned::Refreshed => {}
                Learned::New => sw.counters.count_learned(),
                Learned::Moved => sw.counters.count_moved(),
                Learned::TableFull => sw.counters.count_table_full(),
            }
        }
        let known = if header.dst.is_unicast() {
            match last_lookup {
                Some((key, hit)) if key == (class.vid, header.dst) => hit,
                _ => {
                    let hit = table.lookup(class.vid, header.dst, now);
                    last_lookup = Some(((class.vid, header.dst), hit));
                    hit
                }
            }
        } else {
            None
        };
        let frame_index = index as u16;
        match known {
            Some(dst) if dst == port.id => port.counters.drop(DropReason::Hairpin, 1),
            Some(dst) => {
                let egress = views
                    .get(usize::from(dst))
                    .and_then(|v| v.as_ref())
                    .and_then(|v| v.vlan.egress(class.vid));
                match egress {
                    Some(egress) => deliveries.push(Delivery {
                        dst,
                        frame: frame_index,
                        rewrite: Rewrite::for_egress(&header, class, egress),
                    }),
                    None => port.counters.drop(DropReason::VlanFilter, 1),
                }
            }
            None => {
                sw.counters.count_flood();
                for (id, view) in views.iter().enumerate() {
                    let Some(view) = view else { continue };
                    if id == usize::from(port.id) || !view.connected {
                        continue;
                    }
                    if let Some(egress) = view.vlan.egress(class.vid) {
                        deliveries.push(Delivery {
                            dst: id as PortId,
                            frame: frame_index,
                            rewrite: Rewrite::for_egress(&header, class, egress),
                        });
                    }
                }
            }
        }
    }

    // Group by destination, keeping frame order within each destination.
    deliveries.sort_by_key(|d| d.dst);
    for group in deliveries.chunk_by(|a, b| a.dst == b.dst) {
        let dst_id = group[0].dst;
        let Some(dst) = ports.get(usize::from(dst_id)).and_then(|p| p.as_ref()) else {
            continue;
        };
        let delivered = dst.with_link(|link| deliver(dst, link, mem, segs, frames, group, rx));
        if delivered.is_none() {
            dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        }
    }
}

/// Writes a group of frames into one destination's receive ring and notifies it once.
fn deliver(
    dst: &Port,
    link: &Link,
    src_mem: &GuestMemory,
    segs: &[Segment],
    frames: &[TxChain],
    group: &[Delivery],
    rx: &mut RxReservation,
) {
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
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let out_len = d.rewrite.out_len(frame.frame_len);
            let need = header_len as u64 + u64::from(out_len);
            match rx.reserve(queue, &dst_mem, need, mergeable, &mut bad_chains) {
                Err(RxShortage::NoBuffer) => {
                    dst.counters.drop(DropReason::NoBuffer, 1);
                    continue;
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
                && copier.write(&d.rewrite.prefix[..usize::from(d.rewrite.prefix_len)])
                && copier.copy_from_guest(
                    src_mem,
                    &segs[frame.segs.0..frame.segs.1],
                    usize::from(d.rewrite.skip),
                );
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
    }
    if delivered > 0 || bad_chains > 0 {
        let notify = rxv.queue.needs_notification(&*dst_mem).unwrap_or(true);
        if notify && rxv.signal() {
            dst.counters
                .notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
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
        assert_eq!((r.prefix_len, r.skip), (16, 12));
        assert_eq!(&r.prefix[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(r.out_len(60), 64);

        // A priority tag (VID 0) from an access port keeps its PCP on the trunk.
        let r = Rewrite::for_egress(
            &header(Some((0, 5))),
            Classified { vid: 100, pcp: 5 },
            Egress::Tagged,
        );
        assert_eq!((r.prefix_len, r.skip), (16, 16));
        assert_eq!(&r.prefix[14..16], &((5u16 << 13) | 100).to_be_bytes());
    }

    #[test]
    fn tagged_to_access_pops_and_same_vlan_trunk_keeps() {
        let tagged = header(Some((100, 3)));
        let class = Classified { vid: 100, pcp: 3 };
        let pop = Rewrite::for_egress(&tagged, class, Egress::Untagged);
        assert_eq!((pop.prefix_len, pop.skip), (12, 16));
        assert_eq!(pop.out_len(64), 60);
        let keep = Rewrite::for_egress(&tagged, class, Egress::Tagged);
        assert_eq!((keep.prefix_len, keep.skip), (0, 0));
        let plain = Rewrite::for_egress(&header(None), class, Egress::Untagged);
        assert_eq!((plain.prefix_len, plain.skip), (0, 0));
    }
}
