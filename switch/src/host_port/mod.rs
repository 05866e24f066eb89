//! Ports behind the host's kernel other than the tunnel:
//! - the internal port, a tap device the switch creates and owns (like Open vSwitch's
//!   bridge-internal port), so the host's own stack joins the port's VLANs: give the device
//!   an address and the host pings its VMs, or serves them DHCP (below, and `tap.rs`);
//! - the uplink, an existing interface (a NIC, a veth, a bond) through AF_XDP sockets
//!   (`afxdp.rs`, with its XDP program in `xdp.rs`) or an AF_PACKET socket (`afpacket.rs`),
//!   so a VLAN or a trunk reaches the physical network ([`Uplink`]).
//!
//! Frames from the host are read from the tap (each of its queues in turn) by one thread per port and switched like a
//! guest's (`switch_frames`); frames for the host are written to the tap by the dataplane
//! thread that switched them, one `writev` each (the kernel takes one frame per call from a
//! tap). Every frame carries a virtio-net header (IFF_VNET_HDR), and the device offers the
//! host's stack checksum and TCP segmentation offload (TUNSETOFFLOAD): the host hands over
//! TCP super-frames with partial checksums, which go whole to receivers that take them, and
//! gets the same from guests, as a guest with those features would. Where the kernel refuses
//! the offloads, frames cross finished (`soft.rs` completes checksums and cuts super-frames
//! to the device's MTU). The device goes away when the port is removed or the switch stops
//! (it is not persistent).

mod afpacket;
mod afxdp;
pub mod tap;
mod xdp;

use std::sync::Arc;
use std::thread;

use crate::dataplane::SwitchScratch;
use crate::dataplane::{
    push_iovecs, switch_host_frames, Delivery, Fabric, Frame, FrameBytes, Headers, HostDevice,
    HostEgress, HostIngress, Source,
};
use crate::offload::{layout, Offload};
use crate::port::{Doorbell, DropReason, LinkState, Port, PortKind};
use crate::virtio::features::bit;
use crate::virtio::net_header::NetHeader;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_USO,
};

/// The virtio-net header the kernel reads and writes on a tap (IFF_VNET_HDR) and a packet
/// socket (PACKET_VNET_HDR): without num_buffers.
pub const VNET_HDR_LEN: usize = 10;
/// What the kernel may send us in its header, as a guest's features would say it (UDP
/// super-frames too: a packet socket hands over what UDP GRO coalesced).
pub const FROM_KERNEL: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_HOST_USO);
/// What the kernel takes from us in its header, as a receiving guest's features.
pub const TO_KERNEL: u64 = bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN);

/// The offload of a frame from the kernel, validated like a guest's (the kernel is trusted
/// to say what it did, not to say something the frame contradicts).
pub fn offload_of(header: &NetHeader, frame: &[u8]) -> Result<Offload, String> {
    if header.is_plain() {
        return Ok(Offload::NONE);
    }
    let headers = &frame[..frame.len().min(layout::MAX_HEADERS)];
    Offload::from_net_header(header, FROM_KERNEL, frame.len() as u32, headers)
        .map_err(|e| e.to_string())
}

pub use tap::Tap;

/// Takes a host port's egress out of the fabric when its receive thread ends, however it
/// ends (a panic outside the guarded switching too): the last reference to the device or
/// socket then goes with the dataplane's, and the device is removed.
struct Unregister<'a>(&'a Fabric, &'a Port);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.set_host_egress(self.1.id, None);
        self.0.set_host_ingress(self.1.id, None);
    }
}

/// Keeps a host port's state in step with its interface (up with a carrier: connected;
/// otherwise down), looked at no more than once per receive wait; logs each change.
struct LinkWatch {
    checked: Option<std::time::Instant>,
}

impl LinkWatch {
    fn new() -> LinkWatch {
        LinkWatch { checked: None }
    }

    /// Looks at the interface if it is time: `before` runs first (an uplink re-attaches
    /// there, so it is ready once shown up; false: not attached, so down), then the port's
    /// state follows the interface. Whether it is up, when it looked.
    fn check(&mut self, port: &Port, dev: &str, before: impl FnOnce() -> bool) -> Option<bool> {
        if port.is_removed() {
            return None;
        }
        let now = std::time::Instant::now();
        if self
            .checked
            .is_some_and(|t| now.duration_since(t).as_millis() < RX_WAIT_MS as u128)
        {
            return None;
        }
        self.checked = Some(now);
        let attached = before();
        let state = match tap::running(dev) {
            Some(true) if attached => LinkState::Connected,
            _ => LinkState::Down,
        };
        if port.state().0 != state {
            log::info!(
                "port {}: {dev} is {}",
                port.name,
                if state == LinkState::Connected {
                    "up"
                } else {
                    "down (or gone)"
                }
            );
            port.set_state(state);
        }
        Some(state == LinkState::Connected)
    }
}

/// Frames read from the device per batch.
const RX_BATCH: usize = 32;
/// How long the receive thread waits for a frame before it looks for removal or shutdown.
const RX_WAIT_MS: i32 = 200;
/// An Ethernet header over the device's MTU: the largest frame written to it (a tagged frame
/// is then held 4 bytes under what it could carry: never over).
const L2_OVERHEAD: u32 = 14;

#[derive(Debug, thiserror::Error)]
pub enum HostPortError {
    #[error("cannot create tap device '{dev}': {source}")]
    Create { dev: String, source: std::io::Error },
    #[error("cannot start the receive thread of '{dev}': {source}")]
    Thread { dev: String, source: std::io::Error },
    #[error("cannot open an AF_PACKET socket on '{dev}': {source}")]
    Packet { dev: String, source: std::io::Error },
}

/// Starts the I/O of host port `port` (an internal port or an uplink): its device or socket
/// is opened, its egress registered with the fabric, and its receive thread started; the
/// thread ends (and closes the device or socket) once the port is removed or the switch
/// stops.
pub fn start(
    fabric: Arc<Fabric>,
    port: Arc<Port>,
    doorbell: Arc<Doorbell>,
    adopted: Option<HostDevice>,
) -> Result<thread::JoinHandle<()>, HostPortError> {
    match (port.kind, adopted) {
        (PortKind::Afpacket | PortKind::Afxdp, _) => {
            Uplink::open(&port, &fabric, doorbell)?.start(fabric, port)
        }
        (_, Some(device)) => InternalPort::adopt(&port, device)?.start(fabric, port),
        (_, None) => InternalPort::open(&port)?.start(fabric, port),
    }
}

/// How an uplink reaches its interface.
enum Attachment {
    /// With why AF_XDP was not used, where it was asked for.
    Packet(afpacket::PacketSocket, Option<String>),
    Xdp(afxdp::XdpUplink),
}

impl Attachment {
    /// Opens what the port's kind asks for: AF_PACKET for `afpacket`; for `afxdp`, AF_XDP
    /// where its program and sockets attach, otherwise AF_PACKET, with the reason logged.
    fn open(port: &Port, dev: &str) -> Result<Attachment, HostPortError> {
        let packet = |why: Option<String>| {
            afpacket::PacketSocket::open(dev)
                .map(|s| Attachment::Packet(s, why))
                .map_err(|source| HostPortError::Packet {
                    dev: dev.to_string(),
                    source,
                })
        };
        if port.kind != PortKind::Afxdp {
            return packet(None);
        }
        match afxdp::XdpUplink::open(dev) {
            Ok(x) => Ok(Attachment::Xdp(x)),
            Err(e) => {
                log::warn!(
                    "port {}: AF_XDP on {dev} is not available ({e}); using AF_PACKET",
                    port.name
                );
                packet(Some(e.to_string()))
            }
        }
    }

    fn stale(&self) -> bool {
        match self {
            Attachment::Packet(s, _) => s.stale(),
            Attachment::Xdp(x) => x.stale(),
        }
    }

    fn queues(&self) -> usize {
        match self {
            Attachment::Packet(..) => 1,
            Attachment::Xdp(x) => x.queues(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Attachment::Packet(_, None) => "AF_PACKET".into(),
            Attachment::Packet(_, Some(why)) => format!("AF_PACKET; no AF_XDP: {why}"),
            Attachment::Xdp(x) => x.describe(),
        }
    }
}

/// An uplink: an existing interface, through AF_XDP sockets or an AF_PACKET socket. An
/// AF_PACKET socket is read by the port's own thread; AF_XDP rings are served by the
/// dataplane workers (`HostIngress`), and the port's thread only watches the link.
pub struct Uplink {
    /// Replaced when the interface is deleted and comes back, None in between (the
    /// dataplane loads it per group, without a lock).
    attachment: arc_swap::ArcSwapOption<Attachment>,
    dev: String,
    max_frame: u32,
    /// Changes with the attachment (what the workers wait on).
    generation: std::sync::atomic::AtomicU64,
    /// Rung when the attachment changes, so sleeping workers wait on the new sockets.
    doorbell: Arc<Doorbell>,
    /// The interface is up with a carrier, as the link watch last saw it: while it is not,
    /// frames for it are counted dropped (an AF_XDP socket would take them on its TX ring,
    /// count them sent and send them, stale, once the link is back).
    link_up: std::sync::atomic::AtomicBool,
}

/// Hands out tap queues to dataplane threads.
static NEXT_TAP_QUEUE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// The tap queue this thread writes to (modulo a device's queues).
    static TAP_QUEUE: usize = NEXT_TAP_QUEUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    /// Each dataplane thread's work space for sending on AF_PACKET uplinks.
    static UPLINK_TX: std::cell::RefCell<afpacket::TxScratch> =
        std::cell::RefCell::new(afpacket::TxScratch::default());
}

impl Uplink {
    pub fn open(
        port: &Port,
        fabric: &Fabric,
        doorbell: Arc<Doorbell>,
    ) -> Result<Uplink, HostPortError> {
        let dev = port.config.interface_name().to_string();
        let attachment = Attachment::open(port, &dev)?;
        let mtu = afpacket::mtu_of(&dev).unwrap_or(1500);
        if mtu + L2_OVERHEAD > fabric.max_frame_len {
            log::warn!(
                "port {}: {dev}'s MTU {mtu} is above the switch's frame limit ({} bytes): \
                 larger frames from it are dropped as too-big",
                port.name,
                fabric.max_frame_len
            );
        }
        let how = attachment.describe();
        let up = tap::running(&dev) == Some(true);
        log::info!(
            "port {}: uplink on {dev} ({how}, MTU {mtu}, link {})",
            port.name,
            if up { "up" } else { "down" }
        );
        port.set_attachment(how);
        port.set_host_queues(attachment.queues());
        Ok(Uplink {
            attachment: arc_swap::ArcSwapOption::from_pointee(attachment),
            dev,
            max_frame: mtu + L2_OVERHEAD,
            generation: std::sync::atomic::AtomicU64::new(0),
            doorbell,
            link_up: std::sync::atomic::AtomicBool::new(up),
        })
    }

    fn start(
        self,
        fabric: Arc<Fabric>,
        port: Arc<Port>,
    ) -> Result<thread::JoinHandle<()>, HostPortError> {
        let me = Arc::new(self);
        let dev = me.dev.clone();
        fabric.set_host_egress(port.id, Some(me.clone()));
        fabric.set_host_ingress(port.id, Some(me.clone()));
        me.doorbell.ring();
        thread::Builder::new()
            .name(format!("uplink-{}", port.id))
            .spawn({
                let fabric = fabric.clone();
                let port = port.clone();
                move || {
                    let _unregister = Unregister(&fabric, &port);
                    me.rx_loop(&fabric, &port);
                    log::info!("port {}: uplink on {} closed", port.name, me.dev);
                }
            })
            .map_err(|source| {
                fabric.set_host_egress(port.id, None);
                fabric.set_host_ingress(port.id, None);
                HostPortError::Thread { dev, source }
            })
    }

    /// A new attachment (or none) for the workers to wait on.
    fn attachment_changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.doorbell.ring();
    }

    /// Keeps the uplink attached to the interface of its name. When the interface was
    /// deleted and one of its name is back (the old attachment is bound to what was deleted
    /// and receives nothing), the old attachment is first taken out of the dataplane's
    /// reach and dropped by this thread once no dataplane thread uses it any more (its
    /// close waits for the kernel, and its XDP program and sockets would hold the new
    /// interface's queues); then a new one is opened. While no interface of its name
    /// exists, the uplink has no attachment: frames for it are counted dropped as for a
    /// guest without buffers, not handed to a socket bound to nothing (an AF_XDP socket
    /// takes them on its TX ring and would count them sent). False while not attached.
    fn reattach(&self, port: &Port) -> bool {
        let gone = afpacket::ifindex(&self.dev).is_err();
        if !gone && self.attachment.load().as_ref().is_some_and(|a| !a.stale()) {
            return true;
        }
        if let Some(old) = self.attachment.swap(None) {
            self.attachment_changed();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(old);
        }
        if gone {
            return false;
        }
        match Attachment::open(port, &self.dev) {
            Ok(a) => {
                let how = a.describe();
                port.set_host_queues(a.queues());
                self.attachment.store(Some(Arc::new(a)));
                self.attachment_changed();
                log::info!(
                    "port {}: {} is back; uplink re-attached ({how})",
                    port.name,
                    self.dev
                );
                port.set_attachment(how);
                true
            }
            Err(e) => {
                port.log_bad_input(format_args!("re-attaching to {}: {e}", self.dev));
                false
            }
        }
    }

    fn rx_loop(&self, fabric: &Fabric, port: &Port) {
        // Super-frames the kernel coalesced (GRO) are up to 64 KiB.
        let mut ring = afpacket::RxRing::new(crate::offload::MAX_SUPER_FRAME as usize);
        let mut frames: Vec<Frame> = Vec::with_capacity(afpacket::RX_BATCH);
        let mut scratch = SwitchScratch::default();
        let mut link = LinkWatch::new();
        let mut busy = false;
        while !fabric.is_stopping() && !port.is_removed() {
            if let Some(up) = link.check(port, &self.dev, || self.reattach(port)) {
                self.link_up.store(up, std::sync::atomic::Ordering::Relaxed);
            }
            let Some(attachment) = self.attachment.load_full() else {
                thread::sleep(std::time::Duration::from_millis(RX_WAIT_MS as u64));
                continue;
            };
            // While frames keep coming, the next batch is taken at once; the thread sleeps
            // in poll(2) only once a receive came back empty.
            busy = match &*attachment {
                Attachment::Packet(sock, _) => {
                    if !busy && !sock.wait_readable(RX_WAIT_MS) {
                        continue;
                    }
                    self.receive_packets(fabric, port, sock, &mut ring, &mut frames, &mut scratch)
                }
                Attachment::Xdp(x) => {
                    // The workers receive; frames a full send buffer left on a TX ring are
                    // looked at again soon.
                    let waiting = x.flush_tx(port);
                    drop(attachment);
                    let wait = if waiting { 1 } else { RX_WAIT_MS as u64 };
                    thread::sleep(std::time::Duration::from_millis(wait));
                    false
                }
            };
        }
    }

    /// Receives and switches a batch from an AF_PACKET socket; true if frames came (kept
    /// or dropped).
    fn receive_packets(
        &self,
        fabric: &Fabric,
        port: &Port,
        sock: &afpacket::PacketSocket,
        ring: &mut afpacket::RxRing,
        frames: &mut Vec<Frame>,
        scratch: &mut SwitchScratch,
    ) -> bool {
        let max_frame = fabric.max_frame_len;
        frames.clear();
        let got = ring.receive(sock, |r| match r {
            // What is not a super-frame is held to the switch's frame limit.
            Ok(f) if f.offload.gso.is_none() && f.len > max_frame => {
                port.counters.drop(DropReason::TooBig, 1)
            }
            Ok(f) => frames.push(f),
            Err((reason, what)) => {
                port.counters.drop(reason, 1);
                if let Some(what) = what {
                    port.log_bad_input(format_args!("a frame from {} refused: {what}", self.dev));
                }
            }
        });
        match got {
            Ok(n) => {
                if !frames.is_empty() {
                    switch_host_frames(fabric, port, &ring.buf, frames, scratch);
                }
                n > 0
            }
            Err(e) => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV)
                ) {
                    // The interface went away or down (the link watch says so): wait for it.
                    thread::sleep(std::time::Duration::from_millis(RX_WAIT_MS as u64));
                } else {
                    // A packet the kernel could not hand over (one it cannot describe in a
                    // virtio-net header: EINVAL): that one is lost, the rest go on.
                    port.counters.drop(DropReason::BadOffload, 1);
                    port.log_bad_input(format_args!("receiving on {}: {e}", self.dev));
                }
                false
            }
        }
    }
}

impl HostIngress for Uplink {
    fn receive(
        &self,
        fabric: &Fabric,
        port: &Port,
        frames: &mut Vec<Frame>,
        scratch: &mut SwitchScratch,
    ) -> usize {
        match self.attachment.load().as_deref() {
            Some(Attachment::Xdp(x)) => x.receive(fabric, port, frames, scratch) as usize,
            // AF_PACKET: the port's thread receives.
            _ => 0,
        }
    }

    fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) -> u64 {
        if let Some(Attachment::Xdp(x)) = self.attachment.load().as_deref() {
            x.wait_fds(out);
        }
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl HostEgress for Uplink {
    fn transmit(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
    ) {
        if !self.link_up.load(std::sync::atomic::Ordering::Relaxed) {
            port.counters.drop(DropReason::NoBuffer, group.len() as u64);
            return;
        }
        match self.attachment.load().as_deref() {
            Some(Attachment::Xdp(x)) => x.send(port, source, frames, group, headers),
            Some(Attachment::Packet(sock, _)) => UPLINK_TX.with(|s| match s.try_borrow_mut() {
                Ok(mut s) => sock.send(port, source, frames, group, headers, &mut s),
                Err(_) => port.counters.drop(DropReason::NoBuffer, group.len() as u64),
            }),
            // Re-attaching: as a guest without buffers.
            None => port.counters.drop(DropReason::NoBuffer, group.len() as u64),
        }
    }

    fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// AF_PACKET takes the kernel's offloads; AF_XDP none (its frames leave finished).
    fn offloads(&self) -> u64 {
        match self.attachment.load().as_deref() {
            Some(Attachment::Packet(..)) => TO_KERNEL,
            _ => 0,
        }
    }
}

/// An internal port: its tap device, open while the port exists.
pub struct InternalPort {
    tap: Tap,
    /// The largest frame written to the device: its MTU at creation plus an Ethernet header
    /// (TCP super-frames are cut to fit).
    max_frame: u32,
}

impl InternalPort {
    /// Creates the port's tap device and brings it up.
    pub fn open(port: &Port) -> Result<InternalPort, HostPortError> {
        let dev = port.config.interface_name().to_string();
        // One queue unless the port's `queue_pairs` asks for more.
        let queues = port.config.queue_pairs.map_or(1, usize::from);
        let tap = Tap::create(&dev, port.mac, queues);
        Self::with_tap(port, dev, tap, "created and up")
    }

    /// The tap device another process handed over (`--takeover`): the same device, with
    /// whatever the host configured on it.
    pub fn adopt(port: &Port, device: HostDevice) -> Result<InternalPort, HostPortError> {
        let dev = port.config.interface_name().to_string();
        let tap = Tap::adopt(&dev, device.queues, device.offloads);
        Self::with_tap(port, dev, tap, "taken over")
    }

    fn with_tap(
        port: &Port,
        dev: String,
        tap: std::io::Result<Tap>,
        how: &str,
    ) -> Result<InternalPort, HostPortError> {
        let tap = tap.map_err(|source| HostPortError::Create {
            dev: dev.clone(),
            source,
        })?;
        let queues = tap.queues();
        let mtu = tap.mtu().unwrap_or(1500);
        let plural = if queues == 1 { "" } else { "s" };
        log::info!(
            "port {}: tap device {dev} {how} (MTU {mtu}, {queues} queue{plural})",
            port.name
        );
        port.set_attachment(format!("tap, {queues} queue{plural}"));
        port.set_host_queues(queues);
        Ok(InternalPort {
            tap,
            max_frame: mtu + L2_OVERHEAD,
        })
    }

    /// Registers the port's egress with the fabric and starts its receive thread, which ends
    /// (and closes the device) once the port is removed or the switch stops.
    pub fn start(
        self,
        fabric: Arc<Fabric>,
        port: Arc<Port>,
    ) -> Result<thread::JoinHandle<()>, HostPortError> {
        let me = Arc::new(self);
        let dev = me.tap.name().to_string();
        fabric.set_host_egress(port.id, Some(me.clone()));
        let spawned = thread::Builder::new()
            .name(format!("internal-{}", port.id))
            .spawn({
                let fabric = fabric.clone();
                let port = port.clone();
                move || {
                    let _unregister = Unregister(&fabric, &port);
                    me.rx_loop(&fabric, &port);
                    log::info!("port {}: tap device {} closed", port.name, me.tap.name());
                }
            });
        spawned.map_err(|source| {
            fabric.set_host_egress(port.id, None);
            HostPortError::Thread { dev, source }
        })
    }

    fn rx_loop(&self, fabric: &Fabric, port: &Port) {
        // A virtio-net header, then a frame: up to a 64 KiB super-frame when the host's
        // stack may hand over its TSO (one byte over the limit tells a longer one).
        let largest = if self.tap.offloads() {
            crate::offload::MAX_SUPER_FRAME
        } else {
            fabric.max_frame_len
        };
        let slot = VNET_HDR_LEN + largest as usize + 1;
        let mut buf = vec![0u8; RX_BATCH * slot];
        let mut frames: Vec<Frame> = Vec::with_capacity(RX_BATCH);
        let mut scratch = SwitchScratch::default();
        let mut link = LinkWatch::new();
        let queues = self.tap.queues();
        let mut queue = 0;
        while !fabric.is_stopping() && !port.is_removed() {
            link.check(port, self.tap.name(), || true);
            if !self.tap.wait_readable(RX_WAIT_MS) {
                continue;
            }
            frames.clear();
            // One frame from each queue in turn (the turn carries over from batch to
            // batch), until a batch is full or every queue is empty.
            let mut empty = 0;
            for i in 0..RX_BATCH {
                let at = i * slot;
                let got = loop {
                    let got = self.tap.read(queue, &mut buf[at..at + slot]);
                    queue = (queue + 1) % queues;
                    match got {
                        Ok(Some(n)) => break Some(n),
                        Ok(None) => {}
                        Err(e) => {
                            port.log_bad_input(format_args!("reading {}: {e}", self.tap.name()));
                        }
                    }
                    empty += 1;
                    if empty >= queues {
                        break None;
                    }
                };
                let Some(got) = got else { break };
                empty = 0;
                if got >= slot {
                    port.counters.drop(DropReason::TooBig, 1);
                    port.log_bad_input(format_args!(
                        "a frame from {} longer than the switch's limit of {} bytes",
                        self.tap.name(),
                        fabric.max_frame_len
                    ));
                    continue;
                }
                if got < VNET_HDR_LEN + 14 {
                    port.counters.drop(DropReason::Runt, 1);
                    continue;
                }
                let (start, len) = (at + VNET_HDR_LEN, got - VNET_HDR_LEN);
                let header = NetHeader::parse(&buf[at..start]).unwrap_or_default();
                let offload = match offload_of(&header, &buf[start..start + len]) {
                    Ok(o) => o,
                    Err(e) => {
                        port.counters.drop(DropReason::BadOffload, 1);
                        port.log_bad_input(format_args!(
                            "a frame from {} refused: {e}",
                            self.tap.name()
                        ));
                        continue;
                    }
                };
                if offload.gso.is_none() && len > fabric.max_frame_len as usize {
                    port.counters.drop(DropReason::TooBig, 1);
                    continue;
                }
                frames.push(Frame {
                    head: 0,
                    len: len as u32,
                    bytes: FrameBytes::Host { start, len },
                    tunnel: None,
                    offload,
                });
            }
            if frames.is_empty() {
                continue;
            }
            switch_host_frames(fabric, port, &buf, &frames, &mut scratch);
        }
    }
}

impl HostEgress for InternalPort {
    fn transmit(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
    ) {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        let (mut sent, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        // Each dataplane thread writes to a queue of its own: a flow, which one thread
        // serves, stays in order, and threads do not meet on one queue.
        let queue = TAP_QUEUE.with(|q| *q);
        let features = self.offloads();
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            // The frame's offload, regenerated for the device (with no offloads, `soft.rs`
            // finished the frame and the header says nothing).
            let mut vnet = [0u8; VNET_HDR_LEN];
            frame
                .offload
                .shifted(prefix.len() as i32 - skip as i32)
                .net_header(features)
                .emit(&mut vnet);
            iov.clear();
            iov.push(libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: VNET_HDR_LEN,
            });
            push_iovecs(source, frame, d, headers, &mut iov);
            // SAFETY: the pieces are the frame's bytes in the batch's source (guest memory
            // held by the batch's map, or its host buffer) and the header in `headers`, all
            // alive for this call.
            match unsafe { self.tap.write(queue, &iov) } {
                Ok(()) => {
                    sent += 1;
                    bytes += u64::from(d.out_len(frame.len, headers));
                }
                Err(e) => {
                    failed += 1;
                    port.log_bad_input(format_args!("writing to {}: {e}", self.tap.name()));
                }
            }
        }
        port.counters.count_tx(sent, bytes);
        // The device refused them (down, or its queue full): as a guest without buffers.
        port.counters.drop(DropReason::NoBuffer, failed);
    }

    fn max_frame(&self) -> u32 {
        self.max_frame
    }

    fn offloads(&self) -> u64 {
        if self.tap.offloads() {
            TO_KERNEL
        } else {
            0
        }
    }

    fn handover(&self) -> Option<HostDevice> {
        match self.tap.duplicate_queues() {
            Ok(queues) => Some(HostDevice {
                queues,
                offloads: self.tap.offloads(),
            }),
            Err(e) => {
                log::warn!("{}: cannot duplicate its queues: {e}", self.tap.name());
                None
            }
        }
    }
}
