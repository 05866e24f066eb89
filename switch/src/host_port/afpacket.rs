//! An uplink on an existing interface through an AF_PACKET socket (`type = "afpacket"`):
//! frames from the interface (in promiscuous mode: the uplink carries the VMs' addresses)
//! are received in batches with `recvmmsg`, frames for it leave with one `sendmmsg` per
//! group. Both directions carry a virtio-net header (PACKET_VNET_HDR): the kernel hands over
//! its GRO super-frames and partial checksums as they are, which the frame path regenerates
//! or completes per receiver (as for a guest), and takes super-frames and partial checksums
//! from the switch, which it (or the NIC) finishes.
//!
//! VLAN tags: the kernel takes the tag off a received frame (the driver's VLAN offload) and
//! reports it beside the frame (PACKET_AUXDATA); it is put back in place here, so a trunk
//! uplink sees its tags.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{offload_of, TO_KERNEL, VNET_HDR_LEN};
use crate::dataplane::{push_iovecs, Delivery, Frame, FrameBytes, Headers, Source};
use crate::port::{DropReason, Port};
use crate::virtio::net_header::{self, NetHeader};

/// Frames received per `recvmmsg`.
pub const RX_BATCH: usize = 32;
/// Room before each received frame for the tag put back in it.
const HEADROOM: usize = 4;
/// Receive buffer asked for (send: half), forced where the switch may (CAP_NET_ADMIN).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// The AF_PACKET socket of an uplink, bound to its interface.
pub struct PacketSocket {
    fd: OwnedFd,
    name: String,
    /// The largest TCP segment frame to ask the kernel for (its MTU at opening, plus an
    /// Ethernet header): super-frames cut by the kernel or the NIC must fit the wire.
    max_segment_frame: u32,
}

/// A system call's result as an error naming `what` when it failed.
pub(super) fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
    what: &str,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to an int and its size, alive for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(r, what)
}

/// The index of interface `name`; NotFound if there is none.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: a NUL-terminated string alive for the call.
    match unsafe { libc::if_nametoindex(cname.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface named '{name}'"),
        )),
        i => Ok(i),
    }
}

/// Interface `name`'s MTU now.
pub fn mtu_of(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Makes interface `ifindex` promiscuous while packet socket `fd` is open (the kernel
/// counts such requests and drops this one with the socket).
fn add_promiscuous(fd: &OwnedFd, ifindex: i32) -> io::Result<()> {
    // SAFETY: an all-zero packet_mreq is valid; the fields set below are plain values.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: setsockopt with a packet_mreq and its size, alive for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    check(r, "promiscuous mode")
}

/// A packet socket that receives nothing (protocol 0) and keeps interface `ifindex`
/// promiscuous while it is open: for an uplink whose frames come another way (AF_XDP).
pub fn promiscuous(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and then owned.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    check(raw, "socket(AF_PACKET)")?;
    // SAFETY: `raw` was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    add_promiscuous(&fd, ifindex as i32)?;
    Ok(fd)
}

impl PacketSocket {
    /// Opens the socket on interface `name` (which must exist), in promiscuous mode, with
    /// the virtio-net header and the tags' aux data on, and its own frames not looped back.
    pub fn open(name: &str) -> io::Result<PacketSocket> {
        let ifindex = ifindex(name)? as i32;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked and then owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        check(raw, "socket(AF_PACKET)")?;
        // SAFETY: `raw` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A burst from the wire must not overflow the socket before the receive thread runs
        // (the default holds a few hundred small frames): as the tunnel's socket.
        for (forced, plain, size) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, SOCKET_BUFFER),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SOCKET_BUFFER / 2),
        ] {
            let _ = set_int(&fd, libc::SOL_SOCKET, forced, size, "buffer")
                .or_else(|_| set_int(&fd, libc::SOL_SOCKET, plain, size, "buffer"));
        }
        set_int(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            1,
            "PACKET_VNET_HDR",
        )?;
        set_int(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            1,
            "PACKET_AUXDATA",
        )?;
        set_int(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
            "PACKET_IGNORE_OUTGOING",
        )?;
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are plain values.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: bind with a sockaddr_ll and its size, alive for the call.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(r, "bind")?;
        add_promiscuous(&fd, ifindex)?;
        let mtu = mtu_of(name).unwrap_or(1500);
        Ok(PacketSocket {
            fd,
            name: name.to_string(),
            max_segment_frame: mtu + 14,
        })
    }

    /// Whether an interface of this name exists, but the socket is not bound to it (it was
    /// deleted, which unbinds the socket, and an interface of its name came back, even
    /// with the same index): the socket receives nothing from it.
    pub fn stale(&self) -> bool {
        match ifindex(&self.name) {
            Ok(now) => self.bound_ifindex() != Some(now as i32),
            Err(_) => false,
        }
    }

    /// The interface the socket is bound to now, as the kernel says (-1 once it is gone).
    fn bound_ifindex(&self) -> Option<i32> {
        // SAFETY: an all-zero sockaddr_ll is valid; getsockname writes at most `len` bytes
        // of it, both alive for the call.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            if libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut len,
            ) < 0
            {
                return None;
            }
            Some(addr.sll_ifindex)
        }
    }

    /// Waits up to `timeout_ms` for frames; true if the socket is readable. An error on the
    /// socket (its interface went away: ENETDOWN) is taken off it and waited out for the
    /// same time, so a port whose interface is gone does not spin.
    pub fn wait_readable(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            return true;
        }
        if n > 0 {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt(SO_ERROR) writes an int and its length, alive for the call.
            unsafe {
                libc::getsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
        }
        false
    }
}

/// Receive buffers and message headers of one uplink, reused for every batch.
pub struct RxRing {
    /// `RX_BATCH` slots of `slot` bytes: HEADROOM, the virtio-net header, the frame.
    pub buf: Vec<u8>,
    slot: usize,
    aux: Vec<[u64; 8]>,
}

impl RxRing {
    /// Slots for frames of up to `max_frame` bytes (one byte more tells a longer one).
    pub fn new(max_frame: usize) -> RxRing {
        let slot = HEADROOM + VNET_HDR_LEN + max_frame + 1;
        RxRing {
            buf: vec![0u8; RX_BATCH * slot],
            slot,
            aux: vec![[0u64; 8]; RX_BATCH],
        }
    }

    /// Takes what waits (up to RX_BATCH frames, one system call) and calls `each` with every
    /// frame in order, its bytes in `buf` (`Err` with the drop reason, and what to log if
    /// anything, for a frame that cannot be switched).
    pub fn receive(
        &mut self,
        sock: &PacketSocket,
        mut each: impl FnMut(Result<Frame, (DropReason, Option<String>)>),
    ) -> io::Result<usize> {
        let base = self.buf.as_mut_ptr();
        let aux = self.aux.as_mut_ptr();
        let mut iovecs: [libc::iovec; RX_BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; RX_BATCH];
        // SAFETY: an all-zero mmsghdr is a valid empty message header.
        let mut msgs: [libc::mmsghdr; RX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..RX_BATCH {
            // SAFETY: slot i lies inside `buf` (RX_BATCH * slot bytes).
            iovecs[i].iov_base = unsafe { base.add(i * self.slot + HEADROOM) }.cast();
            iovecs[i].iov_len = self.slot - HEADROOM;
            msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            // SAFETY: entry i lies inside `aux` (RX_BATCH entries).
            msgs[i].msg_hdr.msg_control = unsafe { aux.add(i) }.cast();
            msgs[i].msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>();
        }
        // SAFETY: the messages point at `buf`, `iovecs` and `aux`, alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (i, msg) in msgs.iter().take(n).enumerate() {
            let at = i * self.slot;
            let got = msg.msg_len as usize;
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || got >= self.slot - HEADROOM {
                each(Err((DropReason::TooBig, None)));
                continue;
            }
            if got < VNET_HDR_LEN + 14 {
                each(Err((DropReason::Runt, None)));
                continue;
            }
            let hdr_at = at + HEADROOM;
            let Some(mut header) = NetHeader::parse(&self.buf[hdr_at..hdr_at + VNET_HDR_LEN])
            else {
                each(Err((DropReason::Runt, None)));
                continue;
            };
            let mut start = hdr_at + VNET_HDR_LEN;
            let mut len = got - VNET_HDR_LEN;
            if let Some((tpid, tci)) = vlan_of(&msg.msg_hdr) {
                // The tag goes back after the addresses: the addresses move 4 bytes to the
                // front, into the virtio-net header's bytes (parsed above) and the headroom.
                start -= 4;
                self.buf.copy_within(start + 4..start + 16, start);
                self.buf[start + 12..start + 14].copy_from_slice(&tpid.to_be_bytes());
                self.buf[start + 14..start + 16].copy_from_slice(&tci.to_be_bytes());
                len += 4;
                if header.flags & net_header::F_NEEDS_CSUM != 0 {
                    header.csum_start = header.csum_start.saturating_add(4);
                }
                if header.gso_type != net_header::GSO_NONE {
                    header.hdr_len = header.hdr_len.saturating_add(4);
                }
            }
            match offload_of(&header, &self.buf[start..start + len]) {
                Ok(offload) => each(Ok(Frame {
                    head: 0,
                    len: len as u32,
                    bytes: FrameBytes::Host { start, len },
                    tunnel: None,
                    offload,
                })),
                Err(e) => each(Err((DropReason::BadOffload, Some(e)))),
            }
        }
        Ok(n)
    }
}

/// The tag the kernel took off a received frame, from its PACKET_AUXDATA message.
fn vlan_of(hdr: &libc::msghdr) -> Option<(u16, u16)> {
    // SAFETY: the kernel filled `hdr`'s control buffer during recvmmsg; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay inside msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let whole =
                libc::CMSG_LEN(std::mem::size_of::<libc::tpacket_auxdata>() as u32) as usize;
            if (*c).cmsg_level == libc::SOL_PACKET
                && (*c).cmsg_type == libc::PACKET_AUXDATA
                && (*c).cmsg_len as usize >= whole
            {
                let aux: libc::tpacket_auxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID == 0 {
                    return None;
                }
                let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    0x8100
                };
                return Some((tpid, aux.tp_vlan_tci));
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// Per-group scratch of the sending side (per thread: no allocation once warm).
#[derive(Default)]
pub struct TxScratch {
    headers: Vec<[u8; VNET_HDR_LEN]>,
    iovecs: Vec<libc::iovec>,
    spans: Vec<(usize, usize)>,
    msgs: Vec<libc::mmsghdr>,
    lens: Vec<u32>,
}

impl PacketSocket {
    /// Sends a group of deliveries, each with its virtio-net header, in as few `sendmmsg`
    /// calls as the kernel takes them in.
    pub fn send(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
        s: &mut TxScratch,
    ) {
        s.headers.clear();
        s.iovecs.clear();
        s.spans.clear();
        s.lens.clear();
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            let mut h = [0u8; VNET_HDR_LEN];
            let mut offload = frame.offload.shifted(prefix.len() as i32 - skip as i32);
            // A TCP super-frame from a guest with a larger MTU is cut smaller for the wire
            // (TCP's segment size is the sender's choice; UDP's datagrams stay as sent).
            if let Some(g) = offload.gso.as_mut().filter(|g| g.kind.is_tcp()) {
                let room = self.max_segment_frame.saturating_sub(u32::from(g.hdr_len));
                if u32::from(g.size) > room && room > 0 {
                    g.size = room as u16;
                }
            }
            offload.net_header(TO_KERNEL).emit(&mut h);
            s.headers.push(h);
            s.lens.push(d.out_len(frame.len, headers));
        }
        for (i, d) in group.iter().enumerate() {
            let frame = &frames[usize::from(d.frame)];
            let first = s.iovecs.len();
            s.iovecs.push(libc::iovec {
                iov_base: s.headers[i].as_ptr() as *mut libc::c_void,
                iov_len: VNET_HDR_LEN,
            });
            push_iovecs(source, frame, d, headers, &mut s.iovecs);
            s.spans.push((first, s.iovecs.len() - first));
        }
        s.msgs.clear();
        for &(first, count) in &s.spans {
            // SAFETY: an all-zero mmsghdr is a valid empty message header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = s.iovecs[first..].as_mut_ptr();
            m.msg_hdr.msg_iovlen = count;
            s.msgs.push(m);
        }
        let (mut sent, mut bytes, mut too_big, mut failed) = (0u64, 0u64, 0u64, 0u64);
        let mut next = 0;
        while next < s.msgs.len() {
            // SAFETY: the messages point at `s.iovecs`, whose entries point at the
            // virtio-net headers in `s.headers`, the rewritten headers in `headers` and the
            // frames' bytes in `source`, all alive for the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    s.msgs[next..].as_mut_ptr(),
                    (s.msgs.len() - next) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let n = n as usize;
                sent += n as u64;
                bytes += s.lens[next..next + n]
                    .iter()
                    .map(|&l| u64::from(l))
                    .sum::<u64>();
                next += n;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EMSGSIZE) => too_big += 1,
                Some(
                    libc::EAGAIN | libc::ENOBUFS | libc::ENETDOWN | libc::ENXIO | libc::ENODEV,
                ) => {
                    // The interface's queue is full, or it is down or gone: the rest of the
                    // group is dropped at once, not tried one by one.
                    failed += (s.msgs.len() - next) as u64;
                    break;
                }
                _ => {
                    failed += 1;
                    port.log_bad_input(format_args!("sending on {}: {e}", self.name));
                }
            }
            // The message at `next` failed: skip it, go on with the rest.
            next += 1;
        }
        port.counters.count_tx(sent, bytes);
        port.counters.drop(DropReason::TooBig, too_big);
        port.counters.drop(DropReason::NoBuffer, failed);
    }
}
