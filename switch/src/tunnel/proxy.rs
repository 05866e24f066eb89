//! The ARP/ND proxy at the tunnel port: where the VTEP learns addresses and answers
//! questions (the packets and the table are `patchbay_overlay::proxy`'s; whether a VNI has
//! its proxy on is the VTEP's).
//!
//! - Receive (`rx.rs`): an admitted frame that is an ARP or neighbour discovery message
//!   teaches its VNI's table what it says ([`Tunnel::learn_neighbor`]).
//! - Send (`tx.rs`): an ARP request or neighbour solicitation leaving for the tunnel in a VNI
//!   with the proxy on, whose target is known behind a remote VTEP, is not sent; its answer is
//!   built instead ([`Tunnel::answer`]) and, once the group has been sent, switched as if it
//!   had come out of the tunnel from that VTEP ([`Tunnel::deliver_answers`]). That is what
//!   the kernel's vxlan device does with its proxy replies (it hands them to its own receive
//!   path), and it means the answer goes where the switch sends any frame from that address:
//!   to the requesting port (learned when its request came through), tagged as that port's
//!   VLAN mode says, through flow tables that match on the tunnel port, with the answering
//!   MAC learned on the tunnel port. Local ports still see a broadcast request: only the
//!   tunnel's copy is withheld. A question the table cannot answer leaves as usual.

use std::cell::RefCell;
use std::sync::Weak;

use patchbay_overlay::proxy::{self, PARSE_WINDOW};
use patchbay_overlay::Vni;

use super::Tunnel;
use crate::dataplane::{switch_host_frames, Fabric, Frame, FrameBytes, SwitchScratch, TunnelMeta};
use crate::offload::Offload;
use crate::port::Port;
use crate::wire::EthernetAddress;

/// Bytes of a frame leaving for the tunnel that [`Tunnel::answer`] reads: enough for a
/// solicitation with a few options (one whose options run past it is not answered, and
/// crosses the tunnel as without the proxy).
pub(super) const WINDOW: usize = 128;

const _: () = assert!(WINDOW >= PARSE_WINDOW);

/// Answers made while sending one group of frames to the tunnel, switched once the group is
/// sent. Kept in the sending thread's scratch, so their buffers are reused.
#[derive(Debug, Default)]
pub(super) struct Answers {
    bytes: Vec<u8>,
    frames: Vec<Frame>,
}

impl Answers {
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
    }

    fn push(&mut self, frame: &[u8], meta: TunnelMeta) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(frame);
        self.frames.push(Frame {
            head: 0,
            len: frame.len() as u32,
            // Built here, checksummed: nothing for a receiver to finish.
            offload: Offload::NONE,
            bytes: FrameBytes::Host {
                start,
                len: frame.len(),
            },
            tunnel: Some(meta),
        });
    }
}

thread_local! {
    /// Each dataplane thread's work space for switching answers: they are switched from
    /// within the switching of the batch that asked, whose own scratch is in use.
    static ANSWER_SCRATCH: RefCell<SwitchScratch> = RefCell::new(SwitchScratch::default());
}

impl Tunnel {
    /// The switch's shared state, for switching answers (None once it is shutting down).
    fn fabric(&self) -> Option<std::sync::Arc<Fabric>> {
        self.fabric.get().and_then(Weak::upgrade)
    }

    /// Whether a frame leaving for the tunnel in `vni`, whose first bytes (as it leaves) are
    /// `head`, is a question the VNI's proxy answers; if so its answer is added to `answers`
    /// and the frame must not be sent.
    pub(super) fn answer(&self, vni: Vni, head: &[u8], now: u64, answers: &mut Answers) -> bool {
        if self.vtep.proxy(vni) != Some(true) {
            return false;
        }
        let Ok(message) = proxy::parse(head) else {
            return false;
        };
        // A local host speaking for an address takes it from a remote the table had it at.
        if let Some(b) = message.binding() {
            self.vtep.neighbor_claimed_locally(vni, b.ip, b.mac);
        }
        let Some(q) = message.question() else {
            return false;
        };
        // Without the switch's tables the answer could be neither checked nor delivered: the
        // question crosses the tunnel (only while the switch starts or stops).
        let Some(fabric) = self.fabric() else {
            return false;
        };
        let Some(target) = self.vtep.proxy_target(vni, q.target, now) else {
            return false;
        };
        let Some(vlan) = self.vtep.vlan_for_vni(vni) else {
            return false;
        };
        // Someone asking for its own address learns nothing from us; and an address whose
        // MAC the switch has on a local port is answered by its owner, here, not by us (the
        // kernel's "bridge-local neighbour" check).
        if target.known.mac == q.requester_mac
            || self.on_local_port(&fabric, vlan, EthernetAddress(target.known.mac))
        {
            return false;
        }
        let reply = proxy::answer(&q, target.known);
        answers.push(
            reply.as_bytes(),
            TunnelMeta {
                vni,
                vlan,
                remote: target.remote,
                local: self.local,
            },
        );
        self.vtep.count_proxy_reply(vni, q.protocol());
        true
    }

    /// Switches `answers` as frames that came out of the tunnel port `port`.
    pub(super) fn deliver_answers(&self, port: &Port, answers: &Answers) {
        let Some(fabric) = self.fabric() else {
            return;
        };
        ANSWER_SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                switch_host_frames(&fabric, port, &answers.bytes, &answers.frames, &mut scratch)
            }
            // Re-entered: flow tables sent an answer straight back into the tunnel, whose
            // sending answered again. A scratch of its own (allocated, but only then).
            Err(_) => switch_host_frames(
                &fabric,
                port,
                &answers.bytes,
                &answers.frames,
                &mut SwitchScratch::default(),
            ),
        });
    }

    /// Teaches `vni`'s proxy what an admitted frame from the tunnel says, if it is an ARP or
    /// neighbour discovery message (the VTEP ignores it while the VNI's proxy is off).
    pub(super) fn learn_neighbor(&self, vni: Vni, inner: &[u8], now: u64) {
        if !proxy::is_candidate(inner) {
            return;
        }
        // Only a binding to the frame's own source MAC, which the VTEP has just learned
        // behind the sending remote: a remote cannot bind an address to a MAC that sits
        // behind another VTEP (or a local port) and have the proxy answer with it.
        let source = inner.get(6..12);
        if let Some(b) = proxy::parse(inner)
            .ok()
            .and_then(|m| m.binding())
            .filter(|b| source == Some(&b.mac[..]))
        {
            self.vtep.learn_neighbor(vni, b, now);
        }
    }

    /// Whether the switch has `mac` on a port other than the tunnel in `vlan`.
    fn on_local_port(&self, fabric: &Fabric, vlan: u16, mac: EthernetAddress) -> bool {
        let table = &fabric.mac_table;
        table
            .lookup(vlan, mac, table.now())
            .is_some_and(|owner| owner != self.port_id)
    }
}
