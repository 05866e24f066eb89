//! Sending through the tunnel: each frame for it gets an 8-byte VXLAN header and leaves as
//! the payload of a UDP datagram to its remote VTEP (the kernel adds UDP, IP and Ethernet).
//! The datagrams of one batch go out in one `sendmmsg` per sending socket, each frame read
//! by the kernel straight from the sender's guest memory (its one copy). Where the kernel
//! segments UDP (GSO), consecutive equal-sized datagrams to one remote from one socket are
//! one message: the kernel carries them as one packet through its stack and cuts them at the
//! last moment (the segments of a guest's TCP super-frame are such a run).
//!
//! Outer source ports: RFC 7348 §5 wants them to vary per inner flow (the underlay's ECMP
//! hashes on them); one bound UDP socket has one port, so the tunnel sends from
//! [`SENDERS`] sockets on ports of the kernel's choosing, picked by a hash of the inner flow
//! (a flow stays on one socket, in order, and its runs can be coalesced).

use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use patchbay_overlay::encap::source_port;
use patchbay_overlay::vtep::TunnelDrop;
use patchbay_overlay::wire::{VxlanPacket, VxlanRepr};
use patchbay_overlay::Vni;

use super::proxy::{Answers, WINDOW};
use super::udp::{self, CmsgBuf, RawAddr, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use super::{RunCount, Tunnel, TunnelIo};
use crate::dataplane::{push_iovecs, Delivery, Frame, Headers, Source};
use crate::port::{DropReason, Port};
use crate::wire::L2Header;

/// Sockets the tunnel sends from (outer source ports).
pub const SENDERS: usize = 16;

/// The VXLAN header in front of each inner frame.
const VXLAN_LEN: usize = VxlanPacket::<&[u8]>::HEADER_LEN;

/// Most iovecs in one message (the kernel's UIO_MAXIOV).
const MAX_IOV: usize = 1024;

/// The sending sockets, and whether the kernel's UDP segmentation is in use.
pub struct Senders {
    socks: Box<[UdpSocket]>,
    /// Supported at start-up, allowed by the config, and not failed since.
    gso: AtomicBool,
}

impl Senders {
    /// Opens the sockets; `want_gso` is the config's `udp_offloads`. The second value says
    /// whether GSO is in use and, if not, why (for the start-up log).
    pub fn open(
        local: IpAddr,
        want_gso: bool,
        sndbuf: libc::c_int,
    ) -> std::io::Result<(Senders, Result<(), String>)> {
        let socks = (0..SENDERS)
            .map(|_| udp::sender(local, sndbuf))
            .collect::<std::io::Result<Vec<_>>>()?;
        let gso = if !want_gso {
            Err("off in the config (udp_offloads = false)".to_string())
        } else {
            udp::gso_supported(&socks[0])
                .map_err(|e| format!("the kernel has no UDP segmentation ({e})"))
        };
        let senders = Senders {
            socks: socks.into_boxed_slice(),
            gso: AtomicBool::new(gso.is_ok()),
        };
        Ok((senders, gso))
    }

    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }
}

/// Fills `out` with the first bytes of a frame as it leaves: `prefix` (the rewritten or
/// checked header) and then the frame's bytes from `skip` on (`rest` holds its first bytes);
/// returns how many.
fn leaving_bytes(prefix: &[u8], rest: &[u8], skip: usize, out: &mut [u8]) -> usize {
    let lead = prefix.len().min(out.len());
    out[..lead].copy_from_slice(&prefix[..lead]);
    let from = skip.min(rest.len());
    let tail = (rest.len() - from).min(out.len() - lead);
    out[lead..lead + tail].copy_from_slice(&rest[from..from + tail]);
    lead + tail
}

/// How a datagram the kernel refused is counted: too big for the path (EMSGSIZE) as
/// too-big, anything else (no route, ...) as no-remote.
fn drop_reason(err: &std::io::Error) -> (TunnelDrop, DropReason) {
    if err.raw_os_error() == Some(libc::EMSGSIZE) {
        (TunnelDrop::TooBig, DropReason::TooBig)
    } else {
        (TunnelDrop::NoRemote, DropReason::NoBuffer)
    }
}

/// One datagram to send: a delivery (frame) to one remote.
#[derive(Debug, Clone, Copy)]
struct Target {
    delivery: usize,
    vni: Vni,
    remote: IpAddr,
    inner_len: u32,
    /// Index of the socket it leaves from.
    sock: u8,
}

/// One message: targets `first..first + count` (all to one remote, from one socket).
#[derive(Debug, Clone, Copy)]
struct Message {
    first: usize,
    count: usize,
}

/// Per-thread work space for sending; reused across batches (no allocation once warm).
#[derive(Default)]
pub struct TxScratch {
    targets: Vec<Target>,
    vxlan: Vec<[u8; VXLAN_LEN]>,
    iovecs: Vec<libc::iovec>,
    /// Per target: its first iovec and how many.
    spans: Vec<(usize, usize)>,
    messages: Vec<Message>,
    addrs: Vec<RawAddr>,
    cmsgs: Vec<CmsgBuf>,
    msgs: Vec<libc::mmsghdr>,
    /// The ARP/ND proxy's answers to questions of this group (sent instead of them).
    pub(super) answers: Answers,
}

impl std::fmt::Debug for TxScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxScratch")
            .field("targets", &self.targets.len())
            .finish()
    }
}

// SAFETY: the raw pointers in `iovecs` and `msgs` are only meaningful during one `transmit`
// call, which builds them, hands them to sendmmsg and clears them before returning; the
// scratch carries no live pointer from one thread to another.
unsafe impl Send for TxScratch {}

impl Tunnel {
    /// Encapsulates and sends a group of deliveries to the tunnel port.
    pub(super) fn transmit_with(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
        scratch: &mut TxScratch,
    ) {
        self.pick_targets(port, source, frames, group, headers, scratch);
        if scratch.targets.is_empty() {
            return;
        }
        // One socket's datagrams together (stable: a flow's stay in order), then each
        // datagram's pieces: VXLAN header, rewritten L2 header, the frame where it lies.
        scratch.targets.sort_by_key(|t| t.sock);
        scratch.vxlan.clear();
        for t in &scratch.targets {
            let mut h = [0u8; VXLAN_LEN];
            VxlanRepr { vni: t.vni }.emit(&mut VxlanPacket::new_unchecked(&mut h[..]));
            scratch.vxlan.push(h);
        }
        scratch.iovecs.clear();
        scratch.spans.clear();
        for (i, t) in scratch.targets.iter().enumerate() {
            let d = &group[t.delivery];
            let frame = &frames[usize::from(d.frame)];
            let start = scratch.iovecs.len();
            scratch.iovecs.push(libc::iovec {
                iov_base: scratch.vxlan[i].as_ptr() as *mut libc::c_void,
                iov_len: VXLAN_LEN,
            });
            push_iovecs(source, frame, d, headers, &mut scratch.iovecs);
            scratch.spans.push((start, scratch.iovecs.len() - start));
        }
        self.plan_messages(scratch);
        let mut first = 0;
        while first < scratch.messages.len() {
            let sock = scratch.targets[scratch.messages[first].first].sock;
            let end = first
                + scratch.messages[first..]
                    .iter()
                    .take_while(|m| scratch.targets[m.first].sock == sock)
                    .count();
            self.send_messages(port, usize::from(sock), first..end, scratch);
            first = end;
        }
        scratch.msgs.clear();
        scratch.iovecs.clear();
    }

    /// The datagrams of `group`: each delivery's VNI and remote(s); frames that cannot go are
    /// counted here.
    fn pick_targets(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
        scratch: &mut TxScratch,
    ) {
        let now = self.vtep.now();
        scratch.targets.clear();
        for (index, d) in group.iter().enumerate() {
            let frame = &frames[usize::from(d.frame)];
            // set_tunnel chose the VNI, or the VLAN's mapping does.
            let Some(vni) = d.tun_id.or_else(|| self.vtep.vni_for_vlan(d.vlan)) else {
                port.counters.drop(DropReason::VlanFilter, 1);
                continue;
            };
            let (prefix, skip) = d.prefix(headers);
            let inner_len = d.out_len(frame.len, headers);
            if inner_len > self.max_inner {
                self.vtep.count_drop(Some(vni), TunnelDrop::TooBig);
                port.counters.drop(DropReason::TooBig, 1);
                continue;
            }
            // The inner frame's first bytes, as they will leave (rewrite applied), for the
            // destination lookup and the flow hash.
            let mut rest = [0u8; WINDOW];
            let got = source.read_prefix(frame, &mut rest);
            let mut head = [0u8; 64];
            let n = leaving_bytes(prefix, &rest[..got], skip, &mut head);
            let head = &head[..n];
            let sock = (source_port(head) as usize % SENDERS) as u8;
            let Ok(inner) = L2Header::parse(head) else {
                port.counters.drop(DropReason::Runt, 1);
                continue;
            };
            // An ARP request or neighbour solicitation the VNI's proxy answers stays here.
            if patchbay_overlay::proxy::is_candidate(head) {
                let mut window = [0u8; WINDOW];
                let n = leaving_bytes(prefix, &rest[..got], skip, &mut window);
                if self.answer(vni, &window[..n], now, &mut scratch.answers) {
                    continue;
                }
            }
            let before = scratch.targets.len();
            let targets = &mut scratch.targets;
            let mut push = |remote| {
                targets.push(Target {
                    delivery: index,
                    vni,
                    remote,
                    inner_len,
                    sock,
                })
            };
            match inner
                .dst
                .is_unicast()
                .then(|| self.vtep.lookup(vni, inner.dst.0, now))
                .flatten()
            {
                Some(remote) => push(remote),
                None => self.vtep.for_each_remote(vni, &mut push),
            }
            if scratch.targets.len() == before {
                self.vtep.count_drop(Some(vni), TunnelDrop::NoRemote);
            }
        }
    }

    /// Cuts the (socket-sorted) targets into messages: with GSO, a run of datagrams to one
    /// remote from one socket, all of the first one's size but the last (which may be
    /// shorter), within the kernel's limits; without, one datagram each. Then builds the
    /// message headers (addresses and control messages first, so the pointers stay put).
    fn plan_messages(&self, scratch: &mut TxScratch) {
        let gso = self.senders.gso();
        scratch.messages.clear();
        let targets = &scratch.targets;
        let mut i = 0;
        while i < targets.len() {
            let t = targets[i];
            let size = VXLAN_LEN + t.inner_len as usize;
            let (mut count, mut bytes, mut iovs) = (1, size, scratch.spans[i].1);
            while gso && i + count < targets.len() {
                let n = targets[i + count];
                let n_size = VXLAN_LEN + n.inner_len as usize;
                let last = targets[i + count - 1];
                if n.sock != t.sock
                    || n.remote != t.remote
                    || n_size > size
                    || (last.inner_len != t.inner_len)
                    || count == GSO_MAX_SEGMENTS
                    || bytes + n_size > GSO_MAX_BYTES
                    || iovs + scratch.spans[i + count].1 > MAX_IOV
                {
                    break;
                }
                bytes += n_size;
                iovs += scratch.spans[i + count].1;
                count += 1;
            }
            scratch.messages.push(Message { first: i, count });
            i += count;
        }
        scratch.addrs.clear();
        scratch.cmsgs.clear();
        for m in &scratch.messages {
            scratch
                .addrs
                .push(RawAddr::new(targets[m.first].remote, self.dst_port));
            scratch.cmsgs.push(CmsgBuf::default());
        }
        scratch.msgs.clear();
        for (k, m) in scratch.messages.iter().enumerate() {
            // SAFETY: an all-zero mmsghdr is a valid empty message header.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            let first = scratch.spans[m.first].0;
            let (last_start, last_len) = scratch.spans[m.first + m.count - 1];
            msg.msg_hdr.msg_name = scratch.addrs[k].as_mut_ptr();
            msg.msg_hdr.msg_namelen = scratch.addrs[k].len();
            msg.msg_hdr.msg_iov = scratch.iovecs[first..].as_mut_ptr();
            msg.msg_hdr.msg_iovlen = last_start + last_len - first;
            if m.count > 1 {
                let size = VXLAN_LEN + targets[m.first].inner_len as usize;
                udp::put_gso_size(&mut msg.msg_hdr, &mut scratch.cmsgs[k], size as u16);
            }
            scratch.msgs.push(msg);
        }
    }

    /// Sends messages `range` (all from socket `sock`) and counts what went and what did not.
    fn send_messages(
        &self,
        port: &Port,
        sock: usize,
        range: std::ops::Range<usize>,
        scratch: &mut TxScratch,
    ) {
        let fd = self.senders.socks[sock].as_raw_fd();
        let mut sent = range.start;
        while sent < range.end {
            let rest = &mut scratch.msgs[sent..range.end];
            // SAFETY: every message points at addresses, control buffers, VXLAN headers and
            // iovecs in `scratch`, at rewrite prefixes in the batch's header arena, and at
            // frame bytes that the caller's `source` keeps mapped (the sender's guest memory
            // guard or the receive buffer) for this whole call.
            let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
            TunnelIo::add(&self.io.tx_syscalls, 1);
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                self.send_failed(port, sock, scratch.messages[sent], err, scratch);
                sent += 1;
                continue;
            }
            let went = &scratch.messages[sent..sent + n as usize];
            let datagrams: usize = went.iter().map(|m| m.count).sum();
            let coalesced: usize = went.iter().filter(|m| m.count > 1).map(|m| m.count).sum();
            TunnelIo::add(&self.io.tx_datagrams, datagrams as u64);
            TunnelIo::add(&self.io.tx_gso_datagrams, coalesced as u64);
            // Counted once per run of one VNI and remote, and once for the port.
            let mut run = RunCount::default();
            let count =
                |vni, remote, packets, bytes| self.vtep.count_tx_many(vni, remote, packets, bytes);
            let mut bytes = 0u64;
            for m in went {
                for t in &scratch.targets[m.first..m.first + m.count] {
                    run.add(t.vni, t.remote, u64::from(t.inner_len), count);
                    bytes += u64::from(t.inner_len);
                }
            }
            run.take(count);
            port.counters.count_tx(datagrams as u64, bytes);
            sent += n as usize;
        }
    }

    /// Sends one datagram made of `iovecs` to `remote` from socket `sock` (retried when
    /// interrupted).
    fn send_one(
        &self,
        sock: usize,
        remote: IpAddr,
        iovecs: &mut [libc::iovec],
    ) -> std::io::Result<()> {
        let mut addr = RawAddr::new(remote, self.dst_port);
        // SAFETY: an all-zero msghdr is a valid empty message header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = addr.as_mut_ptr();
        msg.msg_namelen = addr.len();
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        let fd = self.senders.socks[sock].as_raw_fd();
        loop {
            // SAFETY: as for sendmmsg in `send_messages`; `addr` and `iovecs` live for the
            // call.
            let rc = unsafe { libc::sendmsg(fd, &msg, 0) };
            TunnelIo::add(&self.io.tx_syscalls, 1);
            if rc >= 0 {
                TunnelIo::add(&self.io.tx_datagrams, 1);
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// A message the kernel refused: too big for the path (EMSGSIZE) is counted as too-big;
    /// a segmented send the kernel cannot do after all turns GSO off (logged once) and its
    /// datagrams go one by one; anything else (no route, ...) is counted as no-remote.
    fn send_failed(
        &self,
        port: &Port,
        sock: usize,
        m: Message,
        err: std::io::Error,
        scratch: &mut TxScratch,
    ) {
        let targets = &scratch.targets[m.first..m.first + m.count];
        let remote = targets[0].remote;
        let code = err.raw_os_error();
        if m.count > 1 && matches!(code, Some(libc::EIO) | Some(libc::EINVAL)) {
            // The segmented send failed: the datagrams go one by one. If they go that way,
            // the kernel cannot segment for this path after all (EIO: a device without
            // checksum offload on an older kernel; EINVAL: segments it will not take) and
            // segmentation is turned off; if they fail too, the path is at fault, not GSO.
            let mut went = 0;
            for (j, t) in targets.iter().enumerate() {
                let (start, len) = scratch.spans[m.first + j];
                match self.send_one(sock, remote, &mut scratch.iovecs[start..start + len]) {
                    Ok(()) => {
                        went += 1;
                        self.vtep.count_tx(t.vni, t.remote, u64::from(t.inner_len));
                        port.counters.count_tx(1, u64::from(t.inner_len));
                    }
                    Err(e) => {
                        let (reason, port_reason) = drop_reason(&e);
                        self.vtep.count_drop(Some(t.vni), reason);
                        port.counters.drop(port_reason, 1);
                    }
                }
            }
            if went > 0 && self.senders.gso.swap(false, Ordering::Relaxed) {
                log::warn!("vxlan: UDP segmentation failed ({err}); sending datagram by datagram");
            }
            return;
        }
        let (reason, port_reason) = drop_reason(&err);
        log::debug!(
            "vxlan: sending {} datagrams to {remote} failed: {err}",
            m.count
        );
        for t in targets {
            self.vtep.count_drop(Some(t.vni), reason);
        }
        port.counters.drop(port_reason, m.count as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_bytes_put_the_prefix_before_the_rest_of_the_frame() {
        let frame: Vec<u8> = (0..100).collect();
        // A 4-byte tag popped: the 12 addresses as the prefix, the frame from byte 16 on.
        let prefix: Vec<u8> = (0..12).collect();
        let mut out = [0u8; 64];
        let n = leaving_bytes(&prefix, &frame, 16, &mut out);
        assert_eq!(n, 64);
        assert_eq!(&out[..12], &frame[..12]);
        assert_eq!(&out[12..], &frame[16..68]);
        // Short frames, long prefixes, skips past the end: whatever there is, no panic.
        assert_eq!(leaving_bytes(&prefix, &frame[..10], 16, &mut out), 12);
        assert_eq!(leaving_bytes(&[7; 80], &frame, 0, &mut out), 64);
        assert_eq!(out, [7; 64]);
        assert_eq!(leaving_bytes(&[], &frame[..20], 0, &mut out), 20);
        let mut window = [0u8; WINDOW];
        assert_eq!(leaving_bytes(&[], &frame, 0, &mut window), 100);
    }
}
