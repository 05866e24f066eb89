//! The frame path: drain a port's transmit ring in batches, decide where each frame goes
//! (VLAN classification, MAC learning and lookup, flooding), and copy each frame once, from
//! the sender's buffers straight into each receiver's buffers, pushing or popping the 802.1Q
//! tag on the way. Frames that arrive through the VXLAN tunnel enter the same path from a
//! host buffer (`switch_frames`), and frames for the tunnel leave through it.
//!
//! - `frame.rs`: where a frame's bytes are, and how its header is rewritten.
//! - `deliver.rs`: writing frames into a guest's receive ring.
//!
//! Locking: the sender's TX ring lock is held for the batch; each destination's RX ring lock
//! is taken once per batch. RX ring locks are leaves (never held while taking another lock),
//! so there is no lock-order cycle between ports forwarding to each other.

mod deliver;
pub mod frame;

use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;

pub use frame::{Frame, FrameBytes, Rewrite, Source, TunnelMeta};

use crate::mac_table::{Learned, PortId};
use crate::port::{DropReason, Link, Port};
use crate::switch::Switch;
use crate::virtio::chain::ChainError;
use crate::virtio::features::net_header_len;
use crate::virtio::{RxReservation, Segment, TxChain};
use crate::vlan::{Classified, Egress, Vid, VlanMode};
use crate::wire::EthernetAddress;

/// Chains taken from a TX ring per batch.
pub const BATCH: usize = 64;

/// One frame going to one port.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub dst: PortId,
    pub frame: u16,
    /// The VLAN the frame was classified into (the tunnel maps it to a VNI).
    pub vlan: Vid,
    pub rewrite: Rewrite,
}

/// What a batch needs to know of each port, read once per batch rather than per frame.
#[derive(Debug, Clone)]
struct PortView {
    vlan: Arc<VlanMode>,
    connected: bool,
    /// The VXLAN tunnel port: carries its VLANs untagged, one VNI per VLAN.
    tunnel: bool,
}

impl PortView {
    fn egress(&self, vid: Vid) -> Option<Egress> {
        let e = self.vlan.egress(vid)?;
        Some(if self.tunnel { Egress::Untagged } else { e })
    }
}

/// Work space for switching a batch; reused so there is no allocation per frame.
#[derive(Debug, Default)]
pub struct SwitchScratch {
    deliveries: Vec<Delivery>,
    rx: RxReservation,
    /// Indexed by port number.
    ports: Vec<Option<PortView>>,
    /// Per-thread work space of the tunnel's transmit side.
    pub tunnel: crate::tunnel::TxScratch,
}

/// Work space for draining one TX ring.
#[derive(Debug, Default)]
pub struct TxScratch {
    segs: Vec<Segment>,
    frames: Vec<Frame>,
    bad_heads: Vec<u16>,
    switch: SwitchScratch,
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
        scratch.segs.clear();
        scratch.frames.clear();
        scratch.bad_heads.clear();
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
                            Ok(c) => s.frames.push(Frame {
                                head: c.head,
                                len: c.frame_len,
                                bytes: FrameBytes::Guest { segs: c.segs },
                                tunnel: None,
                            }),
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
            let TxScratch {
                segs,
                frames,
                switch,
                ..
            } = &mut *scratch;
            let source = Source {
                mem: Some(&mem),
                segs,
                host: &[],
            };
            switch_frames(sw, port, &source, frames, switch);
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
/// `ingress` is the port the frames arrived on (a guest's port, or the tunnel port).
pub fn switch_frames(
    sw: &Switch,
    ingress: &Port,
    source: &Source<'_>,
    frames: &[Frame],
    scratch: &mut SwitchScratch,
) {
    let table = sw.mac_table();
    let now = table.now();
    let ports = sw.ports_snapshot();
    let SwitchScratch {
        deliveries,
        rx,
        ports: views,
        tunnel: tunnel_scratch,
    } = scratch;
    deliveries.clear();
    views.clear();
    views.extend(ports.iter().map(|p| {
        p.as_ref().map(|p| PortView {
            vlan: p.vlan(),
            connected: p.is_tunnel() || p.has_link(),
            tunnel: p.is_tunnel(),
        })
    }));
    let Some(Some(ingress_view)) = views.get(usize::from(ingress.id)).cloned() else {
        return;
    };
    // Consecutive frames of one flow learn and look up the same addresses: remember the last.
    let mut last_learned = None;
    let mut last_lookup: Option<((Vid, EthernetAddress), Option<PortId>)> = None;

    for (index, frame) in frames.iter().enumerate() {
        let Some(header) = source.l2_header(frame) else {
            ingress.counters.drop(DropReason::Runt, 1);
            continue;
        };
        let class = match frame.tunnel {
            // The VNI decided the VLAN; inner frames are carried untagged.
            Some(meta) if header.vlan.is_none() => Classified {
                vid: meta.vlan,
                pcp: 0,
            },
            Some(_) => {
                ingress.counters.drop(DropReason::VlanFilter, 1);
                continue;
            }
            None => match ingress_view.vlan.ingress(header.vlan.as_ref()) {
                Ok(c) => c,
                Err(_) => {
                    ingress.counters.drop(DropReason::VlanFilter, 1);
                    continue;
                }
            },
        };
        ingress.counters.count_rx(u64::from(frame.len));
        if header.src.is_unicast() && last_learned != Some((class.vid, header.src)) {
            last_learned = Some((class.vid, header.src));
            match table.learn(class.vid, header.src, ingress.id, now) {
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
            Some(dst) if dst == ingress.id => ingress.counters.drop(DropReason::Hairpin, 1),
            Some(dst) => match views
                .get(usize::from(dst))
                .and_then(|v| v.as_ref())
                .and_then(|v| v.egress(class.vid))
            {
                Some(egress) => deliveries.push(Delivery {
                    dst,
                    frame: frame_index,
                    vlan: class.vid,
                    rewrite: Rewrite::for_egress(&header, class, egress),
                }),
                None => ingress.counters.drop(DropReason::VlanFilter, 1),
            },
            None => {
                sw.counters.count_flood();
                for (id, view) in views.iter().enumerate() {
                    let Some(view) = view else { continue };
                    // Never back out of the ingress port (split horizon for the tunnel too).
                    if id == usize::from(ingress.id) || !view.connected {
                        continue;
                    }
                    if let Some(egress) = view.egress(class.vid) {
                        deliveries.push(Delivery {
                            dst: id as PortId,
                            frame: frame_index,
                            vlan: class.vid,
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
        if dst.is_tunnel() {
            if let Some(tunnel) = sw.tunnel() {
                tunnel.transmit(dst, source, frames, group, tunnel_scratch);
            }
            continue;
        }
        let delivered =
            dst.with_link(|link| deliver::to_guest(dst, link, source, frames, group, rx));
        if delivered.is_none() {
            dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        }
    }
}
