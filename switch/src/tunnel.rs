//! The VXLAN tunnel port: the switch's VTEP. Frames of a VLAN mapped to a VNI leave through
//! it encapsulated (RFC 7348) towards the remote VTEP that learned or configured their
//! destination, or to every VTEP of the VNI's flood list (head-end replication); VXLAN
//! packets arriving on the UDP port are decapsulated, checked and switched like frames from
//! any other port. Encapsulation and the tables are in the `patchbay-overlay` crate; this
//! module does the I/O.
//!
//! Sending: a raw IPv4 socket (IP_HDRINCL), because RFC 7348 §5 wants the UDP source port to
//! vary per inner flow, which one bound UDP socket cannot do. The outer IPv4/UDP/VXLAN header
//! is precomputed per (VNI, remote) and patched per packet; the kernel routes the packet and
//! adds the outer Ethernet header. `sendmmsg` takes each inner frame straight from the
//! sender's guest memory (its one copy). Receiving: a UDP socket on the VXLAN port with
//! `recvmmsg`; the inner frame is copied once more, into the receiving guest's buffers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use patchbay_overlay::decap::decap;
use patchbay_overlay::encap::{max_inner_frame, source_port, OuterTemplate, OUTER_LEN};
use patchbay_overlay::vtep::{LocalMacMove, TunnelDrop, Vtep, VtepConfig};
use patchbay_overlay::Vni;

use crate::dataplane::{
    switch_frames, Delivery, Fabric, Frame, FrameBytes, Source, SwitchScratch, TunnelEgress,
    TunnelMeta,
};
use crate::mac_table::PortId;
use crate::offload::Offload;
use crate::port::{DropReason, Port};
use crate::vlan::VlanSet;
use crate::wire::{EthernetAddress, L2Header};

/// Name of the tunnel port in the port table.
pub const TUNNEL_PORT_NAME: &str = "vxlan";

/// Socket buffer size asked for (the kernel doubles it for bookkeeping).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Sets a socket buffer size: the privileged option first (it ignores the system maximum),
/// then the ordinary one, which the kernel caps at net.core.{r,w}mem_max.
fn set_buffer(fd: std::os::fd::RawFd, forced: libc::c_int, plain: libc::c_int, size: libc::c_int) {
    for option in [forced, plain] {
        // SAFETY: setsockopt with a pointer to a c_int that lives for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Log lines about dropped tunnel packets, at most one per reason per second: the packets
/// come from the network, which must not be able to flood the log. Lines skipped in between
/// are counted into the next one (the drop counters have every packet).
#[derive(Default)]
struct DropLog {
    /// Per reason ([`TunnelDrop::ALL`] order): the second of the last line, lines skipped.
    last: [Option<u64>; TunnelDrop::ALL.len()],
    skipped: [u64; TunnelDrop::ALL.len()],
}

impl DropLog {
    fn warn(&mut self, now_secs: u64, reason: TunnelDrop, what: impl FnOnce() -> String) {
        if let Some(line) = self.line(now_secs, reason, what) {
            log::warn!("{line}");
        }
    }

    /// The line to log for this drop, or None if one was logged for `reason` this second.
    fn line(
        &mut self,
        now_secs: u64,
        reason: TunnelDrop,
        what: impl FnOnce() -> String,
    ) -> Option<String> {
        let i = TunnelDrop::ALL.iter().position(|r| *r == reason)?;
        if self.last[i] == Some(now_secs) {
            self.skipped[i] += 1;
            return None;
        }
        self.last[i] = Some(now_secs);
        let skipped = std::mem::take(&mut self.skipped[i]);
        let more = if skipped > 0 {
            format!(" ({skipped} more {} drops not logged)", reason.label())
        } else {
            String::new()
        };
        Some(format!(
            "vxlan: dropped {} ({}){more}",
            what(),
            reason.label()
        ))
    }
}

/// Packets received per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Largest UDP payload accepted: a 9216-byte underlay frame minus its IPv4 and UDP headers.
const RX_BUF: usize = 9216;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("[vxlan]: {0}")]
    Config(String),
    #[error("cannot bind the VXLAN UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("cannot open a raw IP socket to send VXLAN packets (needs root or CAP_NET_RAW): {0}")]
    RawSocket(std::io::Error),
    #[error("cannot start the VXLAN receive thread: {0}")]
    Thread(std::io::Error),
}

pub struct Tunnel {
    pub port_id: PortId,
    pub vtep: Vtep,
    local: Ipv4Addr,
    dst_port: u16,
    max_inner: u32,
    raw: OwnedFd,
    udp: UdpSocket,
    /// Outer headers per (VNI, remote), built on first use.
    templates: RwLock<HashMap<(Vni, Ipv4Addr), OuterTemplate, ahash::RandomState>>,
}

/// One encapsulated packet to send.
#[derive(Debug, Clone, Copy)]
struct Target {
    delivery: usize,
    vni: Vni,
    remote: Ipv4Addr,
    inner_len: u32,
    src_port: u16,
}

thread_local! {
    /// Each dataplane thread's work space for sending (per-thread state: no lock, no
    /// allocation once warm).
    static TX_SCRATCH: std::cell::RefCell<TxScratch> = std::cell::RefCell::new(TxScratch::default());
}

impl TunnelEgress for Tunnel {
    fn transmit(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: &[crate::flow::rewrite::HeaderBuf],
    ) {
        TX_SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                self.transmit_with(port, source, frames, group, headers, &mut scratch)
            }
            // Re-entered on one thread (cannot happen: transmit does not switch frames).
            Err(_) => port.counters.drop(DropReason::NoBuffer, group.len() as u64),
        });
    }
}

/// Per-thread work space for sending; reused across batches.
#[derive(Default)]
pub struct TxScratch {
    targets: Vec<Target>,
    headers: Vec<[u8; OUTER_LEN]>,
    addrs: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    /// (first iovec, count) per message.
    spans: Vec<(usize, usize)>,
    msgs: Vec<libc::mmsghdr>,
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

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl Tunnel {
    /// Binds the VTEP's sockets. Fails (before the switch starts) if the address is not
    /// local or the process may not open raw sockets.
    pub fn bind(port_id: PortId, cfg: VtepConfig) -> Result<Tunnel, TunnelError> {
        let local = cfg.local_ip;
        let dst_port = cfg.port;
        let max_inner = max_inner_frame(cfg.underlay_mtu);
        let addr = SocketAddrV4::new(local, dst_port);
        let udp = UdpSocket::bind(addr).map_err(|source| TunnelError::Bind { addr, source })?;
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|source| TunnelError::Bind { addr, source })?;
        // A guest's whole ring can arrive in one burst; the default buffer (~200 small
        // packets) would drop most of it before the receive thread runs.
        set_buffer(
            udp.as_raw_fd(),
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            SOCKET_BUFFER,
        );
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(TunnelError::RawSocket(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh socket we own.
        let raw = unsafe { OwnedFd::from_raw_fd(fd) };
        set_buffer(
            raw.as_raw_fd(),
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            SOCKET_BUFFER,
        );
        let vtep = Vtep::new(cfg).map_err(|e| TunnelError::Config(e.to_string()))?;
        Ok(Tunnel {
            port_id,
            vtep,
            local,
            dst_port,
            max_inner,
            raw,
            udp,
            templates: RwLock::new(HashMap::default()),
        })
    }

    /// The VLANs the tunnel carries, for its port's VLAN policy.
    pub fn vlan_set(&self) -> VlanSet {
        let mut set = VlanSet::empty();
        for vlan in self.vtep.mapped_vlans() {
            set.insert(vlan);
        }
        set
    }

    pub fn describe(&self) -> String {
        format!("vxlan udp {}:{}", self.local, self.dst_port)
    }

    fn template(&self, vni: Vni, remote: Ipv4Addr) -> OuterTemplate {
        if let Some(t) = self
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(vni, remote))
        {
            return *t;
        }
        let t = OuterTemplate::new(self.local, remote, self.dst_port, vni, 64);
        let mut templates = self.templates.write().unwrap_or_else(|p| p.into_inner());
        // Bounded: remotes are configured or learned (the VTEP caps learned remotes).
        if templates.len() > 65536 {
            templates.clear();
        }
        templates.insert((vni, remote), t);
        t
    }

    /// Encapsulates and sends a group of deliveries to the tunnel port.
    fn transmit_with(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: &[crate::flow::rewrite::HeaderBuf],
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
            let mut head = [0u8; 64];
            let lead = prefix.len().min(head.len());
            head[..lead].copy_from_slice(&prefix[..lead]);
            let mut rest = [0u8; 128];
            let got = source.read_prefix(frame, &mut rest);
            let from = skip.min(got);
            let tail = (got - from).min(head.len() - lead);
            head[lead..lead + tail].copy_from_slice(&rest[from..from + tail]);
            let head = &head[..lead + tail];
            let src_port = source_port(head);
            let Ok(inner) = L2Header::parse(head) else {
                continue;
            };
            let before = scratch.targets.len();
            let targets = &mut scratch.targets;
            let mut push = |remote| {
                targets.push(Target {
                    delivery: index,
                    vni,
                    remote,
                    inner_len,
                    src_port,
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
        if scratch.targets.is_empty() {
            return;
        }

        // Headers and addresses first, so the pointers taken below stay put.
        scratch.headers.clear();
        scratch.addrs.clear();
        for t in &scratch.targets {
            let mut header = [0u8; OUTER_LEN];
            self.template(t.vni, t.remote)
                .write(&mut header, t.inner_len as usize, t.src_port);
            scratch.headers.push(header);
            scratch.addrs.push(sockaddr(t.remote));
        }
        scratch.iovecs.clear();
        scratch.spans.clear();
        for (i, t) in scratch.targets.iter().enumerate() {
            let d = &group[t.delivery];
            let frame = &frames[usize::from(d.frame)];
            let start = scratch.iovecs.len();
            scratch.iovecs.push(libc::iovec {
                iov_base: scratch.headers[i].as_ptr() as *mut libc::c_void,
                iov_len: OUTER_LEN,
            });
            let (prefix, skip) = d.prefix(headers);
            if !prefix.is_empty() {
                scratch.iovecs.push(libc::iovec {
                    iov_base: prefix.as_ptr() as *mut libc::c_void,
                    iov_len: prefix.len(),
                });
            }
            let iovecs = &mut scratch.iovecs;
            source.for_each_piece(frame, skip, |at, len| {
                iovecs.push(libc::iovec {
                    iov_base: at as *mut libc::c_void,
                    iov_len: len,
                });
            });
            scratch.spans.push((start, scratch.iovecs.len() - start));
        }
        scratch.msgs.clear();
        for (i, (start, count)) in scratch.spans.iter().enumerate() {
            // SAFETY: an all-zero mmsghdr is a valid empty message header.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            msg.msg_hdr.msg_name =
                &mut scratch.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_hdr.msg_iov = scratch.iovecs[*start..].as_mut_ptr();
            msg.msg_hdr.msg_iovlen = *count;
            scratch.msgs.push(msg);
        }

        let mut sent = 0;
        while sent < scratch.msgs.len() {
            let rest = &mut scratch.msgs[sent..];
            // SAFETY: every message points at headers, addresses and iovecs in `scratch`,
            // at rewrite prefixes in `group`, and at frame bytes that `source` keeps mapped
            // (the sender's guest memory guard or the receive buffer) for this whole call.
            let n = unsafe {
                libc::sendmmsg(
                    self.raw.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // This message cannot go (no route, too big for the path, ...): count it and
                // carry on with the next.
                let t = scratch.targets[sent];
                log::debug!("vxlan: sending to {} failed: {err}", t.remote);
                self.vtep.count_drop(Some(t.vni), TunnelDrop::NoRemote);
                port.counters.drop(DropReason::NoBuffer, 1);
                sent += 1;
                continue;
            }
            for t in &scratch.targets[sent..sent + n as usize] {
                self.vtep.count_tx(t.vni, t.remote, u64::from(t.inner_len));
                port.counters.count_tx(1, u64::from(t.inner_len));
            }
            sent += n as usize;
        }
        scratch.msgs.clear();
        scratch.iovecs.clear();
    }

    /// Starts the receive thread: decapsulate, check, learn, switch.
    pub fn spawn_rx(
        self: &Arc<Self>,
        fabric: Arc<Fabric>,
    ) -> Result<thread::JoinHandle<()>, TunnelError> {
        let tunnel = self.clone();
        thread::Builder::new()
            .name("vxlan-rx".into())
            .spawn(move || tunnel.rx_loop(&fabric))
            .map_err(TunnelError::Thread)
    }

    /// The local port `src` is learned on in `vlan`, if a tunnel packet from that address
    /// must be refused: under `local_mac_move = "deny"`, a remote may not take over the
    /// address of a guest on this switch. Group addresses are never learned, so never owned.
    fn local_owner(&self, fabric: &Fabric, vlan: u16, src: EthernetAddress) -> Option<PortId> {
        if self.vtep.local_mac_move() == LocalMacMove::Allow || !src.is_unicast() {
            return None;
        }
        let table = &fabric.mac_table;
        table
            .lookup(vlan, src, table.now())
            .filter(|owner| *owner != self.port_id)
    }

    fn rx_loop(&self, fabric: &Fabric) {
        let mut bufs = vec![0u8; RX_BATCH * RX_BUF];
        let mut addrs: Vec<libc::sockaddr_in> = vec![sockaddr(Ipv4Addr::UNSPECIFIED); RX_BATCH];
        let mut frames: Vec<Frame> = Vec::with_capacity(RX_BATCH);
        let mut scratch = SwitchScratch::default();
        let mut drop_log = DropLog::default();
        let max_frame = fabric.max_frame_len as usize;
        let fd = self.udp.as_raw_fd();
        // The message headers point into `bufs` and `addrs`, which neither move nor shrink
        // for the life of this loop; they are rebuilt from raw pointers once, not per call.
        let base = bufs.as_mut_ptr();
        let mut iovecs: Vec<libc::iovec> = (0..RX_BATCH)
            .map(|i| libc::iovec {
                // SAFETY: i * RX_BUF is inside `bufs` (RX_BATCH * RX_BUF bytes).
                iov_base: unsafe { base.add(i * RX_BUF) } as *mut libc::c_void,
                iov_len: RX_BUF,
            })
            .collect();
        let addr_base = addrs.as_mut_ptr();
        let mut msgs: Vec<libc::mmsghdr> = (0..RX_BATCH)
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is a valid empty message header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: `i` is within both arrays.
                m.msg_hdr.msg_iov = unsafe { iovecs.as_mut_ptr().add(i) };
                m.msg_hdr.msg_iovlen = 1;
                // SAFETY: as above.
                m.msg_hdr.msg_name = unsafe { addr_base.add(i) } as *mut libc::c_void;
                m
            })
            .collect();
        while !fabric.is_stopping() {
            for m in msgs.iter_mut() {
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                m.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the messages point at `bufs`, `iovecs` and `addrs`, which outlive the
            // call; the socket has a read timeout, so the call returns to check for shutdown.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    RX_BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                continue;
            }
            let Some(port) = fabric
                .ports()
                .get(usize::from(self.port_id))
                .cloned()
                .flatten()
            else {
                continue;
            };
            let now = self.vtep.now();
            frames.clear();
            for (i, msg) in msgs.iter().take(n as usize).enumerate() {
                let len = msg.msg_len as usize;
                // SAFETY: the kernel wrote this address during recvmmsg, which has returned.
                let remote =
                    Ipv4Addr::from(u32::from_be(unsafe { (*addr_base.add(i)).sin_addr.s_addr }));
                if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.vtep.count_drop(None, TunnelDrop::Truncated);
                    continue;
                }
                let start = i * RX_BUF;
                let payload = &bufs[start..start + len.min(RX_BUF)];
                let (vni, inner) = match decap(payload) {
                    Ok(v) => v,
                    Err(e) => {
                        self.vtep.count_drop(None, TunnelDrop::from(e));
                        continue;
                    }
                };
                let vlan = match self.vtep.admit(vni, remote) {
                    Ok(vlan) => vlan,
                    Err(reason) => {
                        self.vtep.count_drop(Some(vni), reason);
                        if reason == TunnelDrop::UnknownVtep {
                            drop_log.warn(now, reason, || {
                                format!("a packet for VNI {vni} from {remote}, which is not a remote of that VNI")
                            });
                        }
                        continue;
                    }
                };
                // Nothing larger than a guest may send is delivered to a guest.
                if inner.len() > max_frame {
                    self.vtep.count_drop(Some(vni), TunnelDrop::InnerTooBig);
                    port.counters.drop(DropReason::TooBig, 1);
                    drop_log.warn(now, TunnelDrop::InnerTooBig, || {
                        format!(
                            "a {}-byte frame in VNI {vni} from {remote}: the switch's limit is {max_frame}",
                            inner.len()
                        )
                    });
                    continue;
                }
                let src = EthernetAddress::from_bytes(&inner[6..12]);
                if let Some(owner) = self.local_owner(fabric, vlan, src) {
                    self.vtep.count_drop(Some(vni), TunnelDrop::LocalMacClaim);
                    drop_log.warn(now, TunnelDrop::LocalMacClaim, || {
                        let name = fabric
                            .ports()
                            .get(usize::from(owner))
                            .cloned()
                            .flatten()
                            .map_or_else(|| format!("#{owner}"), |p| p.name.clone());
                        format!(
                            "a frame in VNI {vni} from {remote} with source {src}, which is on local port '{name}' (local_mac_move = \"deny\")"
                        )
                    });
                    continue;
                }
                if src.is_unicast() {
                    self.vtep.learn(vni, src.0, remote, now);
                }
                self.vtep.count_rx(vni, remote, inner.len() as u64);
                let inner_start = start + (payload.len() - inner.len());
                frames.push(Frame {
                    head: 0,
                    len: inner.len() as u32,
                    // The kernel checked the outer UDP checksum; the inner frame's own
                    // checksums are as the remote sent them: nothing to vouch for.
                    offload: Offload::NONE,
                    bytes: FrameBytes::Host {
                        start: inner_start,
                        len: inner.len(),
                    },
                    tunnel: Some(TunnelMeta {
                        vni,
                        vlan,
                        remote,
                        local: self.local,
                    }),
                });
            }
            if frames.is_empty() {
                continue;
            }
            let source = Source::host(&bufs);
            // A panic here is counted and shown on the tunnel port; the thread goes on with
            // the next datagrams (there is no connection to fail).
            if port
                .guard_dataplane(|| switch_frames(fabric, &port, &source, &frames, &mut scratch))
                .is_none()
            {
                scratch = SwitchScratch::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_log_lines_are_rate_limited_per_reason() {
        let mut log = DropLog::default();
        let what = || "a packet from 192.0.2.9 for VNI 42".to_string();
        assert_eq!(
            log.line(5, TunnelDrop::UnknownVtep, what).as_deref(),
            Some("vxlan: dropped a packet from 192.0.2.9 for VNI 42 (unknown-vtep)")
        );
        for _ in 0..3 {
            assert_eq!(log.line(5, TunnelDrop::UnknownVtep, what), None);
        }
        // Another reason has its own budget.
        assert!(log.line(5, TunnelDrop::LocalMacClaim, what).is_some());
        assert_eq!(
            log.line(6, TunnelDrop::UnknownVtep, what).as_deref(),
            Some(
                "vxlan: dropped a packet from 192.0.2.9 for VNI 42 (unknown-vtep) \
                 (3 more unknown-vtep drops not logged)"
            )
        );
        assert_eq!(
            log.line(7, TunnelDrop::UnknownVtep, what).as_deref(),
            Some("vxlan: dropped a packet from 192.0.2.9 for VNI 42 (unknown-vtep)")
        );
    }
}
