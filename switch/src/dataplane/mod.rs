//! The frame path: drain a port's transmit ring in batches, decide where each frame goes
//! (VLAN classification, MAC learning and lookup, flooding), and copy each frame once, from
//! the sender's buffers straight into each receiver's buffers, pushing or popping the 802.1Q
//! tag on the way. Frames that arrive through the VXLAN tunnel enter the same path from a
//! host buffer (`switch_frames`), and frames for the tunnel leave through it.
//!
//! - `frame.rs`: where a frame's bytes are, and how its header is rewritten.
//! - `deliver.rs`: writing frames into a guest's receive ring.
//! - `soft.rs`: offloads done in software for destinations that cannot take them.
//!
//! Locking: the sender's TX ring lock is held for the batch; each destination's RX ring lock
//! is taken once per batch. RX ring locks are leaves (never held while taking another lock),
//! so there is no lock-order cycle between ports forwarding to each other.

mod deliver;
mod fabric;
mod soft;

use std::sync::Arc;

pub use crate::frame::{Frame, FrameBytes, Rewrite, Source, TunnelMeta};
pub use fabric::{Fabric, HostDevice, HostEgress, HostIngress, PortTable, SwitchCounters};

use crate::flow::extract::flow_key_into;
use crate::flow::key::FlowKey;
use crate::flow::pipeline::{MissPolicy, Target};
use crate::flow::rewrite::{HeaderBuf, Matched, REWRITE_BYTES};
use crate::flow::Field;
use crate::mac_table::{Learned, PortId};
use crate::offload::layout::{MAX_HEADERS, MAX_L2};
use crate::offload::{Offload, OffloadError, HOST_OFFLOADS, MAX_SUPER_FRAME};
use crate::port::{DropReason, Link, Port, PortCounters};
use crate::virtio::features::{bit, net_header_len};
use crate::virtio::net_header::GSO_NONE;
use crate::virtio::ChainError;
use crate::virtio::{Burst, GuestMap, RxReservation, Segment, TxChain};
use crate::vlan::{Classified, Egress, IngressDrop, Vid, VlanMode};
use crate::wire::{EthernetAddress, L2Header};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_USO,
};

/// Chains taken from a TX ring per batch.
pub const BATCH: usize = 64;

/// `Delivery::header` when the frame's header is given by `rewrite` alone.
pub const NO_HEADER: u32 = u32::MAX;

/// `Delivery::header` bit: the frame leaves with its first bytes as the switch copied them
/// for the flow tables or port security (`Headers::matched`, indexed by the frame), not
/// with a rewritten header (`Headers::rewritten`).
const MATCHED: u32 = 1 << 31;

/// A frame's first bytes as the switch copied them once from the sender, for the flow
/// tables' match or port security's check. Kept for the batch: a frame whose bytes leave
/// unchanged is delivered from this copy (so the guest cannot change what was matched or
/// checked), and nothing copies them again per output.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub struct FramePrefix {
    bytes: [u8; REWRITE_BYTES],
    len: u8,
}

const _: () = assert!(REWRITE_BYTES <= u8::MAX as usize);

impl Default for FramePrefix {
    fn default() -> Self {
        FramePrefix {
            bytes: [0; REWRITE_BYTES],
            len: 0,
        }
    }
}

impl FramePrefix {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Copies `frame`'s first bytes (up to [`REWRITE_BYTES`]) from `source`.
    fn read(&mut self, source: &Source<'_>, frame: &Frame) -> &[u8] {
        let n = source.read_prefix(frame, &mut self.bytes);
        self.len = n as u8;
        self.bytes()
    }
}

/// Where deliveries' leading bytes are (see [`Delivery::prefix`]): headers rewritten by
/// flow actions or the learning switch, and the batch's frames' first bytes as matched.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    pub rewritten: &'a [HeaderBuf],
    pub matched: &'a [FramePrefix],
}

impl<'a> Headers<'a> {
    /// Only rewritten headers (deliveries made outside a batch's switching).
    pub fn rewritten(rewritten: &'a [HeaderBuf]) -> Headers<'a> {
        Headers {
            rewritten,
            matched: &[],
        }
    }
}

/// One frame going to one port.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub dst: PortId,
    pub frame: u16,
    /// The VLAN the frame was classified into (the tunnel maps it to a VNI).
    pub vlan: Vid,
    /// How the L2 header changes (the learning switch's tag push/pop).
    pub rewrite: Rewrite,
    /// Or: a header rewritten by flow actions, in the batch's header arena.
    pub header: u32,
    /// A VNI chosen by set_tunnel, for the tunnel port.
    pub tun_id: Option<u32>,
}

impl Delivery {
    /// A copy sent as the flow actions left it (no VLAN processing).
    fn raw(dst: PortId, frame: u16, vlan: Vid, header: u32, tun_id: Option<u32>) -> Delivery {
        Delivery {
            dst,
            frame,
            vlan,
            rewrite: Rewrite::NONE,
            header,
            tun_id,
        }
    }

    /// The bytes that replace the start of the frame, and how many they replace.
    pub fn prefix<'a>(&'a self, headers: Headers<'a>) -> (&'a [u8], usize) {
        let held = match self.header {
            NO_HEADER => None,
            h if h & MATCHED != 0 => {
                let slot = headers.matched.get((h & !MATCHED) as usize);
                // Only made for a frame of the batch whose slot holds its bytes: a miss
                // would send the sender's bytes as they are now, not as matched.
                debug_assert!(slot.is_some(), "a delivery names a slot the batch lacks");
                slot.map(|p| (p.bytes(), p.bytes().len()))
            }
            h => headers
                .rewritten
                .get(h as usize)
                .map(|h| (h.bytes(), h.skip())),
        };
        held.unwrap_or((self.rewrite.prefix(), usize::from(self.rewrite.skip)))
    }

    /// Length of the frame that leaves.
    pub fn out_len(&self, frame_len: u32, headers: Headers<'_>) -> u32 {
        let (prefix, skip) = self.prefix(headers);
        frame_len + prefix.len() as u32 - skip as u32
    }
}

/// Whether `frame`'s partial checksum starts inside the `l2`-byte L2 header the switch
/// decided on (a guest can change its header between the offload check on ingress and the
/// decision): completing it would write over the addresses or the tag that leave. Dropped
/// and counted as `bad-offload`.
fn csum_in_l2(ingress: &Port, frame: &Frame, l2: usize) -> bool {
    let Some(c) = frame.offload.csum.filter(|c| usize::from(c.start) < l2) else {
        return false;
    };
    ingress.log_bad_input(format_args!(
        "frame dropped: {}",
        OffloadError::CsumInL2Header {
            start: c.start,
            l2: l2 as u16,
        }
    ));
    ingress.counters.drop(DropReason::BadOffload, 1);
    true
}

/// The VLAN an arriving frame belongs to (from its tag and the port's policy, or from the VNI
/// it came through), or None if it is refused (counted).
fn classify(
    ingress: &Port,
    view: &PortView,
    frame: &Frame,
    header: &L2Header,
) -> Option<Classified> {
    let class = match frame.tunnel {
        // The VNI decided the VLAN; inner frames are carried untagged, with no tag inside.
        Some(_) if header.has_inner_tag() => Err(IngressDrop::StackedTag),
        Some(meta) if header.vlan.is_none() => Ok(Classified {
            vid: meta.vlan,
            pcp: 0,
        }),
        Some(_) => Err(IngressDrop::NotAllowed),
        None => view.vlan.classify(header),
    };
    match class {
        Ok(class) => Some(class),
        Err(IngressDrop::StackedTag) => {
            ingress.counters.drop(DropReason::DoubleTagged, 1);
            None
        }
        Err(_) => {
            ingress.counters.drop(DropReason::VlanFilter, 1);
            None
        }
    }
}

/// The learning switch, for one batch.
struct Normal<'a> {
    fabric: &'a Fabric,
    table: &'a crate::mac_table::MacTable,
    /// This thread's cache of the table's entries.
    macs: &'a mut crate::mac_table::MacCache,
    now: u64,
    ingress: &'a Port,
    views: &'a [Option<PortView>],
    /// Consecutive frames of one flow learn and look up the same addresses: remember the last.
    last_learned: Option<(Vid, EthernetAddress)>,
    last_lookup: Option<((Vid, EthernetAddress), Option<PortId>)>,
    /// Frames flooded in this batch (added to the switch's counter once per batch).
    floods: u64,
}

/// What a frame the learning switch forwards leaves with, before its VLAN change.
#[derive(Clone, Copy)]
enum Base<'a> {
    /// The sender's bytes, behind the L2 header the switch decides (`Delivery::rewrite`).
    Sender,
    /// The batch's copy of the frame's first bytes (`Headers::matched`), as matched or
    /// checked.
    Matched(Matched<'a>),
    /// A header rewritten by flow actions.
    Rewritten(&'a HeaderBuf),
}

/// Whether `m` already leaves as `egress` for `class` asks (no tag to pop, or the tag
/// with the class's VID and PCP), so the frame can leave from the batch's copy as it is.
fn leaves_as_matched(m: &Matched, egress: Egress, class: Classified) -> bool {
    match (egress, m.tci()) {
        (Egress::Untagged, None) => true,
        (Egress::Tagged, Some(tci)) => tci & 0x0fff == class.vid && (tci >> 13) as u8 == class.pcp,
        _ => false,
    }
}

/// Adds `h`, changed for `egress`, to the batch's rewritten headers; returns its index.
fn push_for_egress(
    headers: &mut Vec<HeaderBuf>,
    h: HeaderBuf,
    egress: Egress,
    class: Classified,
) -> u32 {
    // Copied once, into its place, and changed there.
    headers.push(h);
    let index = headers.len() - 1;
    let h = &mut headers[index];
    match egress {
        Egress::Untagged => h.strip_vlan(),
        Egress::Tagged => {
            h.set_vlan_vid(class.vid);
            h.set_vlan_pcp(class.pcp);
        }
    }
    index as u32
}

impl Normal<'_> {
    /// Learns the source, finds the destination(s) and queues deliveries. `base` is what
    /// leaves (the VLAN egress change is applied on top of it).
    fn forward(
        &mut self,
        frame: u16,
        header: &L2Header,
        class: Classified,
        base: Base<'_>,
        deliveries: &mut Vec<Delivery>,
        headers: &mut Vec<HeaderBuf>,
    ) {
        let ingress = self.ingress;
        if header.src.is_unicast() && self.last_learned != Some((class.vid, header.src)) {
            self.last_learned = Some((class.vid, header.src));
            match self.table.learn_cached(
                self.macs,
                class.vid,
                header.src,
                ingress.id,
                self.now,
                ingress.mac_limit(),
            ) {
                Learned::Refreshed => {}
                Learned::New => self.fabric.counters.count_learned(),
                Learned::Moved => self.fabric.counters.count_moved(),
                Learned::TableFull => self.fabric.counters.count_table_full(),
                Learned::PortLimit => {
                    let refused = ingress
                        .counters
                        .mac_learn_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if refused.is_power_of_two() || refused == 0 {
                        log::warn!(
                            "port {}: at its limit of {} MAC addresses; {} not learned \
                             ({} refused so far)",
                            ingress.name,
                            ingress.mac_limit(),
                            header.src,
                            refused + 1
                        );
                    }
                }
            }
        }
        let known = if header.dst.is_unicast() {
            match self.last_lookup {
                Some((key, hit)) if key == (class.vid, header.dst) => hit,
                _ => {
                    let hit = self
                        .table
                        .lookup_cached(self.macs, class.vid, header.dst, self.now);
                    self.last_lookup = Some(((class.vid, header.dst), hit));
                    hit
                }
            }
        } else {
            None
        };
        let mut deliver = |dst: PortId, egress: Egress| {
            // Popping the outer tag must not expose another one: the port's policy says
            // frames leave it untagged.
            if !crate::vlan::egress_allowed(header, egress) {
                ingress.counters.drop(DropReason::DoubleTagged, 1);
                return;
            }
            let header_index = match base {
                Base::Sender => NO_HEADER,
                Base::Matched(m) if leaves_as_matched(&m, egress, class) => {
                    MATCHED | u32::from(frame)
                }
                Base::Matched(m) => push_for_egress(headers, m.to_buf(), egress, class),
                Base::Rewritten(h) => push_for_egress(headers, *h, egress, class),
            };
            deliveries.push(Delivery {
                dst,
                frame,
                vlan: class.vid,
                rewrite: Rewrite::NONE,
                header: header_index,
                tun_id: None,
            });
            if matches!(base, Base::Sender) {
                if let Some(d) = deliveries.last_mut() {
                    d.rewrite.fill_for_egress(header, class, egress);
                }
            }
        };
        match known {
            Some(dst) if dst == ingress.id => ingress.counters.drop(DropReason::Hairpin, 1),
            Some(dst) => match self
                .views
                .get(usize::from(dst))
                .and_then(|v| v.as_ref())
                .and_then(|v| v.egress(class.vid))
            {
                Some(egress) => deliver(dst, egress),
                None => ingress.counters.drop(DropReason::VlanFilter, 1),
            },
            None => {
                self.floods += 1;
                for (id, view) in self.views.iter().enumerate() {
                    let Some(view) = view else { continue };
                    // Never back out of the ingress port (split horizon for the tunnel too).
                    if id == usize::from(ingress.id) || !view.connected {
                        continue;
                    }
                    if let Some(egress) = view.egress(class.vid) {
                        deliver(id as PortId, egress);
                    }
                }
            }
        }
    }
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
    /// Headers rewritten by flow actions, referenced by `Delivery::header`.
    headers: Vec<HeaderBuf>,
    /// The batch's frames' first bytes as matched or checked, by frame (see [`FramePrefix`]).
    matched: Vec<FramePrefix>,
    /// Outputs of one packet's pipeline run.
    outputs: Vec<crate::flow::pipeline::Output>,
    /// This thread's flow lookup cache and batch counters (allocated when flows are first
    /// used).
    flow_thread: Option<Box<crate::flow::pipeline::FlowThread>>,
    /// Frames finished in software for destinations without the offloads they ask for.
    soft: soft::SoftScratch,
    /// Deliveries spread over a receiver's queues.
    steering: deliver::Steering,
    /// This thread's cache of MAC table entries.
    macs: crate::mac_table::MacCache,
}

/// Work space for draining TX rings: one per dataplane thread (reused for every port it
/// serves, so there is no allocation per frame and nothing shared between threads).
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

/// The port whose next TX batch panics (its address; 0: none), so tests can prove a
/// dataplane panic is caught, counted and shown. One relaxed load per batch.
static PANIC_NEXT_BATCH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes the next TX batch of `port` panic (for tests of the dataplane's failure handling).
#[doc(hidden)]
pub fn inject_panic(port: &Port) {
    let id = port as *const Port as usize;
    PANIC_NEXT_BATCH.store(id, std::sync::atomic::Ordering::Relaxed);
}

/// Switches one batch (up to [`BATCH`] chains) from the transmit ring of `port`'s queue pair
/// `queue`, with the guest's kicks off (the workers re-arm them before they sleep, see
/// [`arm_kicks`]). Returns the number of chains consumed.
pub fn drain_tx(
    fabric: &Fabric,
    port: &Port,
    link: &Link,
    queue: usize,
    scratch: &mut TxScratch,
) -> usize {
    let Some(pair) = link.pair(queue) else {
        return 0;
    };
    let map = link.mem.load();
    let mut txv = pair.tx.lock().unwrap_or_else(|p| p.into_inner());
    if !txv.usable() {
        return 0;
    }
    let ring = &mut *txv;
    let call = ring.call.as_ref();
    let mut burst = match Burst::open(&mut ring.vring, &map) {
        Ok(burst) => burst,
        Err(e) => {
            port.log_bad_input(format_args!("TX ring unusable: {e}"));
            port.counters.drop(DropReason::BadDescriptor, 1);
            return 0;
        }
    };
    burst.disable_kicks();
    // One read of the guest's avail index per batch.
    let waiting = match burst.refresh() {
        Ok(0) => {
            PortCounters::sample_ring(&port.counters.rx_ring_pending, 0);
            return 0;
        }
        Ok(n) => {
            PortCounters::sample_ring(&port.counters.rx_ring_pending, n);
            n
        }
        Err(e) => {
            // The avail index moved further than the ring holds: the guest broke its own
            // ring. Count it; the next round looks again, so a guest that repairs its index
            // carries on.
            port.log_bad_input(format_args!("TX ring unusable: {e}"));
            port.counters.drop(DropReason::BadDescriptor, 1);
            return 0;
        }
    };
    let features = link.features();
    let header_len = net_header_len(features);
    let max_frame = fabric.max_frame_len;
    // A sender that may segment offloads hands over super-frames of up to 64 KiB; what it
    // sends unsegmented is still held to the switch's frame limit (below).
    let read_header = features & HOST_OFFLOADS != 0;
    let chain_limit = if features & SUPER_FRAMES != 0 {
        max_frame.max(MAX_SUPER_FRAME)
    } else {
        max_frame
    };
    scratch.segs.clear();
    scratch.frames.clear();
    scratch.bad_heads.clear();
    let popped = usize::from(waiting).min(BATCH);
    // The batch's descriptors start loading now (each is a miss: the guest's core wrote it).
    burst.prefetch_chains(popped as u16);
    burst.prefetch_used(popped as u16);
    for _ in 0..popped {
        let head = burst.pop();
        let s = &mut *scratch;
        match TxChain::parse(
            &burst,
            head,
            header_len,
            chain_limit,
            read_header,
            &mut s.segs,
        ) {
            Ok(c) => match offload_of(&map, &s.segs, &c, features, max_frame) {
                Ok(offload) => s.frames.push(Frame {
                    head: c.head,
                    len: c.frame_len,
                    bytes: FrameBytes::Guest { segs: c.segs },
                    tunnel: None,
                    offload,
                }),
                Err((reason, e)) => {
                    port.log_bad_input(format_args!("TX chain {head} rejected: {e}"));
                    port.counters.drop(reason, 1);
                    s.segs.truncate(c.segs.0);
                    s.bad_heads.push(head);
                }
            },
            Err(e) => {
                port.log_bad_input(format_args!("TX chain {head} rejected: {e}"));
                port.counters.drop(drop_reason(&e), 1);
                s.bad_heads.push(head);
            }
        }
    }
    port.counters
        .rx_batches
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let injected = PANIC_NEXT_BATCH.load(std::sync::atomic::Ordering::Relaxed);
    if injected == port as *const Port as usize {
        PANIC_NEXT_BATCH.store(0, std::sync::atomic::Ordering::Relaxed);
        panic!("injected for a test");
    }
    let TxScratch {
        segs,
        frames,
        switch,
        bad_heads,
    } = scratch;
    // SAFETY: `segs` were made by `map` in this batch (`TxChain::parse` above), and `map`
    // is held until the end of this function.
    let source = unsafe { Source::guest(&map, segs) };
    switch_frames(fabric, port, &source, frames, switch);
    // Any fault on this link's memory since it last looked (one atomic load while nothing
    // faulted anywhere), whenever in the batch it happened.
    if link.memory_faulted() {
        link.fail_on_memory_fault(port);
    }
    for head in frames
        .iter()
        .map(|f| f.head)
        .chain(bad_heads.iter().copied())
    {
        burst.push_used(head, 0);
    }
    // One index store and one notification decision per batch.
    burst.publish();
    if burst.needs_interrupt() && crate::port::ring::signal(call) {
        port.counters
            .notifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    popped
}

/// Features that let a sender hand over super-frames.
const SUPER_FRAMES: u64 =
    bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_HOST_USO);

/// The offload a transmit chain's virtio-net header asks for, checked against what its
/// sender negotiated and against the frame (the reason and the error if refused).
fn offload_of(
    map: &GuestMap,
    segs: &[Segment],
    chain: &TxChain,
    features: u64,
    max_frame: u32,
) -> Result<Offload, (DropReason, String)> {
    let h = &chain.net_header;
    let offload = if h.is_plain() {
        Offload::NONE
    } else {
        let mut headers = [0u8; MAX_HEADERS];
        let want = if h.gso_type != GSO_NONE {
            MAX_HEADERS
        } else {
            MAX_L2
        };
        let n = {
            let frame = Frame {
                head: chain.head,
                len: chain.frame_len,
                bytes: FrameBytes::Guest { segs: chain.segs },
                tunnel: None,
                offload: Offload::NONE,
            };
            // SAFETY: `segs` were made by `map` in this batch (the caller's `TxChain::parse`).
            unsafe { Source::guest(map, segs) }.read_prefix(&frame, &mut headers[..want])
        };
        Offload::from_net_header(h, features, chain.frame_len, &headers[..n])
            .map_err(|e| (DropReason::BadOffload, e.to_string()))?
    };
    if offload.gso.is_none() && chain.frame_len > max_frame {
        let e = ChainError::TooBig {
            len: u64::from(chain.frame_len),
            max: u64::from(max_frame),
        };
        return Err((DropReason::TooBig, e.to_string()));
    }
    Ok(offload)
}

/// Asks the guest behind `link` to kick when it transmits again on queue pair `queue`
/// (EVENT_IDX aware); true if chains are already waiting (the caller should drain instead of
/// sleeping).
pub fn arm_kicks(link: &Link, queue: usize) -> bool {
    let Some(pair) = link.pair(queue) else {
        return false;
    };
    let map = link.mem.load();
    let mut txv = pair.tx.lock().unwrap_or_else(|p| p.into_inner());
    if !txv.usable() {
        return false;
    }
    match Burst::open(&mut txv.vring, &map) {
        Ok(mut burst) => burst.enable_kicks(),
        Err(_) => false,
    }
}

/// Appends to `out` the pieces of `d`'s frame as it leaves: the rewritten L2 header (in
/// `headers` or the delivery), then the frame's bytes where they lie (the sender's memory or
/// the batch's host buffer), for a `writev`/`sendmmsg` that copies each byte once. The
/// iovecs point into `source`, `headers` and `d`: valid while those are.
pub fn push_iovecs(
    source: &Source<'_>,
    frame: &Frame,
    d: &Delivery,
    headers: Headers<'_>,
    out: &mut Vec<libc::iovec>,
) {
    let (prefix, skip) = d.prefix(headers);
    if !prefix.is_empty() {
        out.push(libc::iovec {
            iov_base: prefix.as_ptr() as *mut libc::c_void,
            iov_len: prefix.len(),
        });
    }
    source.for_each_piece(frame, skip, |at, len| {
        out.push(libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: len,
        })
    });
}

/// Serves one batch of a host port's receive side from a dataplane worker's loop (an
/// AF_XDP uplink's rings), with the worker's scratch; how many frames came.
pub fn receive_host(
    fabric: &Fabric,
    port: &Port,
    ingress: &dyn HostIngress,
    scratch: &mut TxScratch,
) -> usize {
    ingress.receive(fabric, port, &mut scratch.frames, &mut scratch.switch)
}

// Port security checks what the frame path sends from its own copy, and no more.
const _: () = assert!(crate::port_security::PREFIX == REWRITE_BYTES);

/// [`switch_frames`] for frames in a host buffer (from the tunnel, an internal port, an
/// uplink), under the port's panic guard: a panic is counted and shown on the port, and the
/// receiving thread goes on with fresh scratch (there is no connection to fail).
pub fn switch_host_frames(
    fabric: &Fabric,
    ingress: &Port,
    bytes: &[u8],
    frames: &[Frame],
    scratch: &mut SwitchScratch,
) {
    let source = Source::host(bytes);
    if ingress
        .guard_dataplane(|| switch_frames(fabric, ingress, &source, frames, scratch))
        .is_none()
    {
        *scratch = SwitchScratch::default();
    }
}

/// Decides the destinations of every frame in the batch, then delivers per destination.
/// `ingress` is the port the frames arrived on (a guest's port, or the tunnel port). With no
/// flows installed this is the learning switch; otherwise each frame first runs through the
/// flow tables, whose outputs (including `normal`) become the deliveries.
pub fn switch_frames(
    fabric: &Fabric,
    ingress: &Port,
    source: &Source<'_>,
    frames: &[Frame],
    scratch: &mut SwitchScratch,
) {
    let table = &fabric.mac_table;
    let ports = fabric.ports();
    let SwitchScratch {
        deliveries,
        rx,
        ports: views,
        headers,
        matched,
        outputs,
        flow_thread,
        soft,
        steering,
        macs,
    } = scratch;
    deliveries.clear();
    headers.clear();
    // Grown to the largest batch once; a frame's slot is written before it is read.
    if matched.len() < frames.len() {
        matched.resize(frames.len(), FramePrefix::default());
    }
    views.clear();
    views.extend(ports.iter().map(|p| {
        p.as_ref().map(|p| PortView {
            vlan: p.vlan(),
            connected: p.is_host_port() || p.has_link(),
            tunnel: p.is_tunnel(),
        })
    }));
    let Some(Some(ingress_view)) = views.get(usize::from(ingress.id)).cloned() else {
        // Held no longer than the batch (see the end of the frame loop).
        views.clear();
        return;
    };
    let pipeline = &fabric.flows;
    let flow_tables = pipeline.batch_snapshot();
    let use_flows = !flow_tables.is_empty() || pipeline.miss == MissPolicy::Drop;
    if use_flows {
        let thread = flow_thread.get_or_insert_with(Box::default);
        pipeline.begin_batch(thread);
        // fast_failover groups watch ports: which are up, as this batch sees them.
        if flow_tables.watches_ports {
            thread.live_ports.clear();
            thread.live_ports.extend(
                views
                    .iter()
                    .map(|v| v.as_ref().is_some_and(|v| v.connected)),
            );
        }
    }
    let mut normal = Normal {
        fabric,
        table,
        macs,
        now: table.now(),
        ingress,
        views,
        last_learned: None,
        last_lookup: None,
        floods: 0,
    };

    // Counted once per batch (see `PortCounters::count_rx`).
    let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
    let security_settings = ingress.security();
    let security = security_settings.checks.as_ref();
    // The flow tables' key of each frame in turn, made where it lies.
    let mut key = FlowKey::default();
    // Ingress policing: one clock read per batch, only on a policed port.
    let policing = ingress.policer.as_ref().map(|p| (p, fabric.flows.now_ms()));
    for (index, frame) in frames.iter().enumerate() {
        let frame_index = index as u16;
        if let Some((policer, now_ms)) = policing {
            if !policer.admit(frame.len, now_ms) {
                ingress.counters.drop(DropReason::Policed, 1);
                continue;
            }
        }
        // Port security first: a spoofed frame is neither learned from nor matched. The
        // frame's first bytes are copied once, checked, and leave from that copy (as the
        // frame's header), so the guest cannot change them after the check.
        let partial_csum_at = frame.offload.csum.map(|c| c.start.saturating_add(c.offset));
        let slot = &mut matched[index];
        if let Some(security) = security {
            let checked = slot.read(source, frame);
            let csum = frame.offload.csum.map(|c| (c.start, c.offset));
            if let Err(v) = security.check(checked, csum) {
                ingress.counters.drop(DropReason::Spoofed, 1);
                ingress.log_bad_input(format_args!("a frame refused: {}", v.describe()));
                continue;
            }
        }
        if !use_flows {
            let header = match security {
                Some(_) => L2Header::parse(slot.bytes()).ok(),
                None => source.l2_header(frame),
            };
            let Some(header) = header else {
                ingress.counters.drop(DropReason::Runt, 1);
                continue;
            };
            if csum_in_l2(ingress, frame, header.len()) {
                continue;
            }
            let Some(class) = classify(ingress, &ingress_view, frame, &header) else {
                continue;
            };
            rx_packets += 1;
            rx_bytes += u64::from(frame.len);
            let base = match security {
                Some(_) => Base::Matched(Matched {
                    bytes: slot.bytes(),
                    partial_csum_at,
                }),
                None => Base::Sender,
            };
            normal.forward(frame_index, &header, class, base, deliveries, headers);
            continue;
        }

        let prefix = match security {
            Some(_) => slot.bytes(),
            None => slot.read(source, frame),
        };
        let n = prefix.len();
        if n < 14 {
            ingress.counters.drop(DropReason::Runt, 1);
            continue;
        }
        let l2 = L2Header::parse(prefix).map_or(n, |h| h.len());
        if csum_in_l2(ingress, frame, l2) {
            continue;
        }
        rx_packets += 1;
        rx_bytes += u64::from(frame.len);
        flow_key_into(prefix, ingress.id, frame.tunnel.as_ref(), &mut key);
        outputs.clear();
        let thread = flow_thread.get_or_insert_with(Box::default);
        let as_matched = Matched {
            bytes: prefix,
            partial_csum_at,
        };
        pipeline.run_frame(&flow_tables, &key, as_matched, frame.len, outputs, thread);
        for out in outputs.iter() {
            // The parser keeps tunnel IDs to 24 bits; one wider would alias another VNI if
            // cut, so it goes nowhere.
            let tun_id = match out.tun_id.map(u32::try_from) {
                Some(Ok(v)) if u64::from(v) <= crate::flow::parse::MAX_TUNNEL_ID => Some(v),
                Some(_) => continue,
                None => None,
            };
            // The copy the tables matched on leaves with the frame, rewritten or not, so a
            // guest cannot change what was matched after the match.
            let custom = |headers: &mut Vec<HeaderBuf>| match &out.header {
                Some(h) => {
                    headers.push(*h);
                    (headers.len() - 1) as u32
                }
                None => MATCHED | u32::from(frame_index),
            };
            let vlan = (key.get(Field::VlanTci) & 0x0fff) as Vid;
            match out.target {
                Target::Port(p) if p == ingress.id => {} // OpenFlow: only `in_port` sends back
                Target::Port(p) => {
                    if views.get(usize::from(p)).is_some_and(|v| v.is_some()) {
                        let header = custom(headers);
                        deliveries.push(Delivery::raw(p, frame_index, vlan, header, tun_id));
                    }
                }
                Target::InPort => {
                    let header = custom(headers);
                    deliveries.push(Delivery::raw(ingress.id, frame_index, vlan, header, tun_id));
                }
                Target::Flood | Target::All => {
                    let header = custom(headers);
                    for (id, view) in views.iter().enumerate() {
                        if id != usize::from(ingress.id)
                            && view.as_ref().is_some_and(|v| v.connected)
                        {
                            deliveries.push(Delivery::raw(
                                id as PortId,
                                frame_index,
                                vlan,
                                header,
                                tun_id,
                            ));
                        }
                    }
                }
                Target::Normal => {
                    let Ok(header) = L2Header::parse(out.header_bytes(prefix)) else {
                        continue;
                    };
                    let Some(class) = classify(ingress, &ingress_view, frame, &header) else {
                        continue;
                    };
                    // The copy the tables matched on, modified or not, is what leaves: without
                    // it the learning switch writes only the L2 header it decided on and the
                    // rest comes from the guest's buffer again, which the guest may have
                    // changed since (a frame dropped as UDP leaving as UDP after all).
                    let base = match &out.header {
                        Some(h) => Base::Rewritten(h),
                        None => Base::Matched(as_matched),
                    };
                    normal.forward(frame_index, &header, class, base, deliveries, headers);
                }
            }
        }
    }

    ingress.counters.count_rx(rx_packets, rx_bytes);
    if let (true, Some(thread)) = (use_flows, flow_thread.as_deref_mut()) {
        pipeline.flush(thread);
    }
    if normal.floods > 0 {
        fabric
            .counters
            .floods
            .fetch_add(normal.floods, std::sync::atomic::Ordering::Relaxed);
    }
    // The ports' VLAN policies are held no longer than the batch reads them: a policy
    // change waits for the batches that read the old one (`Switch::set_vlan`).
    drop(ingress_view);
    views.clear();

    // Reading the sender's frames may have hit memory its frontend pulled away (the guard
    // turned it into zeros): deliver nothing of such a batch.
    if source.is_guest() && ingress.with_link(Link::memory_faulted) == Some(true) {
        return;
    }
    // Offloads the destination cannot take are done in software (`soft.rs`); most batches
    // have none, and skip the question.
    let offloads = frames.iter().any(|f| f.offload.is_some());
    let headers = Headers {
        rewritten: headers,
        matched,
    };
    // Group by destination, keeping frame order within each destination.
    deliveries.sort_by_key(|d| d.dst);
    for group in deliveries.chunk_by(|a, b| a.dst == b.dst) {
        let dst_id = group[0].dst;
        let Some(dst) = ports.get(usize::from(dst_id)).and_then(|p| p.as_ref()) else {
            continue;
        };
        if dst.is_host_port() {
            match fabric.host_egress(dst) {
                Some(egress) => {
                    let receiver = match egress.offloads() {
                        0 => soft::Receiver::Host {
                            max_frame: egress.max_frame(),
                        },
                        features => soft::Receiver::Guest { features },
                    };
                    if offloads && soft::needed(frames, group, receiver) {
                        soft.finish_group(
                            ingress,
                            source,
                            frames,
                            group,
                            headers,
                            receiver,
                            |s, f, g, h| egress.transmit(dst, s, f, g, h),
                        );
                    } else {
                        egress.transmit(dst, source, frames, group, headers);
                    }
                }
                None => dst.counters.drop(DropReason::NoBuffer, group.len() as u64),
            }
            continue;
        }
        let delivered = dst.with_link(|link| {
            let receiver = soft::Receiver::Guest {
                features: link.features(),
            };
            if offloads && soft::needed(frames, group, receiver) {
                soft.finish_group(
                    ingress,
                    source,
                    frames,
                    group,
                    headers,
                    receiver,
                    |s, f, g, h| deliver::to_guest(dst, link, s, f, g, h, rx, steering),
                );
            } else {
                deliver::to_guest(dst, link, source, frames, group, headers, rx, steering)
            }
        });
        if delivered.is_none() {
            dst.counters.drop(DropReason::NoBuffer, group.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: Option<u16>) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(tci) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(f.len() + 46, 0xab);
        f
    }

    fn matched(bytes: &[u8]) -> Matched<'_> {
        Matched {
            bytes,
            partial_csum_at: None,
        }
    }

    #[test]
    fn a_frame_leaves_from_the_batch_copy_only_when_its_tag_is_already_right() {
        let class = Classified { vid: 10, pcp: 3 };
        let untagged = frame(None);
        let right = frame(Some((3 << 13) | 10));
        let other_vid = frame(Some((3 << 13) | 20));
        let other_pcp = frame(Some(10));
        let dei = frame(Some((3 << 13) | 0x1000 | 10));
        let short = &right[..16];
        // (header, egress, leaves from the batch's copy as it is)
        let cases: [(&[u8], Egress, bool); 8] = [
            (&untagged, Egress::Untagged, true),
            (&untagged, Egress::Tagged, false),
            (&right, Egress::Tagged, true),
            (&right, Egress::Untagged, false),
            (&other_vid, Egress::Tagged, false),
            (&other_pcp, Egress::Tagged, false),
            // The VLAN rewrites keep the DEI bit, so a tag with it set needs no change either.
            (&dei, Egress::Tagged, true),
            // Whatever it says, a header too short to hold a tag has none.
            (short, Egress::Tagged, false),
        ];
        for (i, (bytes, egress, as_is)) in cases.into_iter().enumerate() {
            assert_eq!(
                leaves_as_matched(&matched(bytes), egress, class),
                as_is,
                "case {i}"
            );
        }
    }

    #[test]
    fn a_delivery_finds_its_bytes_in_the_arena_it_names() {
        let bytes = frame(Some(10));
        let mut prefix = FramePrefix::default();
        let source = Source::host(&bytes);
        let f = Frame {
            head: 0,
            len: bytes.len() as u32,
            bytes: FrameBytes::Host {
                start: 0,
                len: bytes.len(),
            },
            tunnel: None,
            offload: Offload::NONE,
        };
        assert_eq!(prefix.read(&source, &f), &bytes[..]);
        let mut rewritten = HeaderBuf::new(&bytes);
        rewritten.strip_vlan();
        let prefixes = [FramePrefix::default(), prefix];
        let rewritten = [rewritten];
        let headers = Headers {
            rewritten: &rewritten,
            matched: &prefixes,
        };
        let mut d = Delivery::raw(1, 1, 10, MATCHED | 1, None);
        assert_eq!(d.prefix(headers), (&bytes[..], bytes.len()));
        assert_eq!(d.out_len(f.len, headers), f.len);
        d.header = 0;
        assert_eq!(d.prefix(headers).0.len(), bytes.len() - 4);
        assert_eq!(d.out_len(f.len, headers), f.len - 4);
        // A rewritten index past the arena falls back to the delivery's own rewrite (none).
        d.header = 7;
        assert_eq!(d.prefix(headers), (&[][..], 0));
        d.header = NO_HEADER;
        assert_eq!(d.prefix(headers), (&[][..], 0));
    }
}
