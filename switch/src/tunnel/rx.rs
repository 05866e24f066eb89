//! Receiving from the tunnel: one thread on the VXLAN UDP port takes datagrams in batches
//! (`recvmmsg`; with UDP_GRO, each buffer may hold several equal-sized datagrams of one
//! remote that the kernel coalesced), decapsulates and checks each, learns its inner source,
//! and switches the batch like frames from any other port. The inner frame is copied once,
//! into the receiving guest's buffers.

use std::os::fd::AsRawFd;

use patchbay_overlay::decap::decap;
use patchbay_overlay::vtep::TunnelDrop;

use super::udp::{self, CmsgBuf, RawAddr};
use super::{DropLog, RunCount, Tunnel, TunnelIo};
use crate::dataplane::{switch_host_frames, Fabric, Frame, FrameBytes, SwitchScratch, TunnelMeta};
use crate::offload::Offload;
use crate::port::{DropReason, Port};
use crate::wire::EthernetAddress;

/// Buffers received per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Bytes per buffer: the largest UDP payload over IPv4, so that a buffer of coalesced
/// datagrams (UDP_GRO, up to 64 KiB) or one jumbo datagram always fits.
const RX_BUF: usize = 65_536;

impl Tunnel {
    pub(super) fn rx_loop(&self, fabric: &Fabric) {
        let mut bufs = vec![0u8; RX_BATCH * RX_BUF];
        let mut addrs: Vec<RawAddr> = vec![RawAddr::empty(); RX_BATCH];
        let mut cmsgs: Vec<CmsgBuf> = vec![CmsgBuf::default(); RX_BATCH];
        let mut frames: Vec<Frame> = Vec::with_capacity(RX_BATCH);
        let mut scratch = SwitchScratch::default();
        let mut drop_log = DropLog::default();
        let fd = self.udp.as_raw_fd();
        // The message headers point into `bufs`, `addrs` and `cmsgs`, which neither move nor
        // shrink for the life of this loop; they are built from raw pointers once.
        let base = bufs.as_mut_ptr();
        let mut iovecs: Vec<libc::iovec> = (0..RX_BATCH)
            .map(|i| libc::iovec {
                // SAFETY: i * RX_BUF is inside `bufs` (RX_BATCH * RX_BUF bytes).
                iov_base: unsafe { base.add(i * RX_BUF) } as *mut libc::c_void,
                iov_len: RX_BUF,
            })
            .collect();
        let addr_base = addrs.as_mut_ptr();
        let cmsg_base = cmsgs.as_mut_ptr();
        let mut msgs: Vec<libc::mmsghdr> = (0..RX_BATCH)
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is a valid empty message header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: `i` is within each array.
                unsafe {
                    m.msg_hdr.msg_iov = iovecs.as_mut_ptr().add(i);
                    m.msg_hdr.msg_name = (*addr_base.add(i)).as_mut_ptr();
                    m.msg_hdr.msg_control = cmsg_base.add(i) as *mut libc::c_void;
                }
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        while !fabric.is_stopping() {
            for m in msgs.iter_mut() {
                m.msg_hdr.msg_namelen = RawAddr::empty().len();
                m.msg_hdr.msg_controllen = std::mem::size_of::<CmsgBuf>();
                m.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the messages point at `bufs`, `iovecs`, `addrs` and `cmsgs`, which
            // outlive the call; the socket has a read timeout, so the call returns to check
            // for shutdown.
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
            TunnelIo::add(&self.io.rx_syscalls, 1);
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
            let mut batch = RxBatch::default();
            for (i, msg) in msgs.iter().take(n as usize).enumerate() {
                let len = (msg.msg_len as usize).min(RX_BUF);
                // SAFETY: the kernel wrote this address during recvmmsg, which has returned;
                // `addr_base` points at `addrs`, alive for the loop.
                let Some(remote) = (unsafe { (*addr_base.add(i)).ip() }) else {
                    continue;
                };
                if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.vtep.count_drop(None, TunnelDrop::Truncated);
                    continue;
                }
                // Several datagrams of `size` bytes (the last may be shorter) when the
                // kernel coalesced them; one otherwise.
                let size = udp::gro_size(&msg.msg_hdr).unwrap_or(len).max(1);
                let count = len.div_ceil(size) as u64;
                TunnelIo::add(&self.io.rx_datagrams, count);
                if count > 1 {
                    TunnelIo::add(&self.io.rx_gro_datagrams, count);
                }
                let start = i * RX_BUF;
                let mut at = start;
                while at < start + len {
                    let end = (at + size).min(start + len);
                    let ctx = Datagram {
                        fabric,
                        port: &port,
                        remote,
                        now,
                    };
                    if let Some(frame) = self.admit(&ctx, &bufs, at..end, &mut batch, &mut drop_log)
                    {
                        frames.push(frame);
                    }
                    at = end;
                }
            }
            batch.counted.take(|vni, remote, packets, bytes| {
                self.vtep.count_rx_many(vni, remote, packets, bytes)
            });
            if frames.is_empty() {
                continue;
            }
            switch_host_frames(fabric, &port, &bufs, &frames, &mut scratch);
        }
    }

    /// Decapsulates and checks the datagram at `range` of `bufs`: the frame to switch, or
    /// None (counted, and logged at a limited rate where the sender may be misconfigured).
    fn admit(
        &self,
        ctx: &Datagram<'_>,
        bufs: &[u8],
        range: std::ops::Range<usize>,
        batch: &mut RxBatch,
        drop_log: &mut DropLog,
    ) -> Option<Frame> {
        let (fabric, port, remote, now) = (ctx.fabric, ctx.port, ctx.remote, ctx.now);
        let max_frame = fabric.max_frame_len as usize;
        let payload = &bufs[range.clone()];
        let (vni, inner) = match decap(payload) {
            Ok(v) => v,
            Err(e) => {
                self.vtep.count_drop(None, TunnelDrop::from(e));
                return None;
            }
        };
        // Admitted once per run of one remote and VNI (the VTEP's lock, not per frame).
        let admitted = batch
            .admitted
            .filter(|(v, r, _)| (*v, *r) == (vni, remote))
            .map(|(_, _, vlan)| vlan);
        let vlan = match admitted.map_or_else(|| self.vtep.admit(vni, remote), Ok) {
            Ok(vlan) => {
                batch.admitted = Some((vni, remote, vlan));
                vlan
            }
            Err(reason) => {
                self.vtep.count_drop(Some(vni), reason);
                if reason == TunnelDrop::UnknownVtep {
                    drop_log.warn(now, reason, || {
                        format!("a packet for VNI {vni} from {remote}, which is not a remote of that VNI")
                    });
                }
                return None;
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
            return None;
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
            return None;
        }
        // Learned once per run of frames from one address (the table's locks, per frame,
        // cost the receive path more than the rest of its work).
        if src.is_unicast() && batch.learned != Some((vni, src.0, remote)) {
            self.vtep.learn(vni, src.0, remote, now);
            batch.learned = Some((vni, src.0, remote));
        }
        // What an ARP or ND message says, for the VNI's proxy (if on).
        self.learn_neighbor(vni, inner, now);
        batch.counted.add(
            vni,
            remote,
            inner.len() as u64,
            |vni, remote, packets, bytes| self.vtep.count_rx_many(vni, remote, packets, bytes),
        );
        let inner_start = range.end - inner.len();
        Some(Frame {
            head: 0,
            len: inner.len() as u32,
            // The kernel checked the outer UDP checksum; the inner frame's own checksums are
            // as the remote sent them: nothing to vouch for.
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
        })
    }
}

/// What a batch of datagrams has learned and counted so far.
#[derive(Debug, Default)]
struct RxBatch {
    /// The last (VNI, remote) admitted in this batch, and the VLAN it carries.
    admitted: Option<(patchbay_overlay::Vni, std::net::IpAddr, u16)>,
    /// The last (VNI, source MAC, remote) learned in this batch.
    learned: Option<(patchbay_overlay::Vni, [u8; 6], std::net::IpAddr)>,
    counted: RunCount,
}

/// Where a datagram came from, for [`Tunnel::admit`].
struct Datagram<'a> {
    fabric: &'a Fabric,
    port: &'a Port,
    remote: std::net::IpAddr,
    now: u64,
}
