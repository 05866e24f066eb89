//! The tunnel's UDP sockets and the kernel's UDP offloads (Linux): segmentation on send
//! (UDP_SEGMENT, "GSO": one send of equal-sized datagrams to one address, cut by the kernel as
//! late as possible) and coalescing on receive (UDP_GRO: equal-sized datagrams of one flow
//! handed over as one buffer). Written here over `libc` rather than taken from quinn-udp,
//! which sends to one destination per call where the tunnel sends one batch to many remotes
//! in one `sendmmsg`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS was 64 before 6.11).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most UDP payload bytes in one send: 65535 less the IPv4 and UDP headers (IPv6's limit,
/// 65527, is higher; the lower one serves both).
pub const GSO_MAX_BYTES: usize = 65_507;

/// A socket address as the kernel takes and gives it (`sockaddr_in` or `sockaddr_in6`).
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(ip: IpAddr, port: u16) -> RawAddr {
        // SAFETY: an all-zero sockaddr_storage is valid (family AF_UNSPEC).
        let mut a = RawAddr {
            storage: unsafe { std::mem::zeroed() },
            len: 0,
        };
        let at = &mut a.storage as *mut libc::sockaddr_storage;
        match ip {
            IpAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr.
                unsafe { (at as *mut libc::sockaddr_in).write(sin) };
                a.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            IpAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: port.to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above.
                unsafe { (at as *mut libc::sockaddr_in6).write(sin6) };
                a.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        a
    }

    /// Room for the kernel to write any address into (recvmmsg).
    pub fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: an all-zero sockaddr_storage is valid (family AF_UNSPEC).
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        &mut self.storage as *mut libc::sockaddr_storage as *mut libc::c_void
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// The address the kernel wrote (its family says which form), if IPv4 or IPv6. An
    /// IPv4-mapped IPv6 address (from a dual-stack socket) is read as the IPv4 address.
    pub fn ip(&self) -> Option<IpAddr> {
        let at = &self.storage as *const libc::sockaddr_storage;
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(at as *const libc::sockaddr_in) };
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(at as *const libc::sockaddr_in6) };
                Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_canonical())
            }
            _ => None,
        }
    }
}

/// Room for one control message carrying a 16- or 32-bit value (`CMSG_SPACE(4)`), as 8-byte
/// words so the header inside is aligned.
pub type CmsgBuf = [u64; 4];

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt with a pointer to a c_int that lives for the call.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Sets a socket buffer size: the privileged option first (it ignores the system maximum),
/// then the ordinary one, which the kernel caps at net.core.{r,w}mem_max.
pub fn set_buffer(fd: RawFd, forced: libc::c_int, plain: libc::c_int, size: libc::c_int) {
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, forced, size)
        || setsockopt_int(fd, libc::SOL_SOCKET, plain, size);
}

/// A socket to send from: bound to `local` on a port of the kernel's choosing, DF set on
/// every datagram (IP_PMTUDISC_PROBE: the interface's MTU, not a learned path MTU, as the
/// raw header's DF bit did), so a frame too big for the underlay fails with EMSGSIZE rather
/// than being fragmented.
pub fn sender(local: IpAddr, sndbuf: libc::c_int) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(local, 0))?;
    let fd = sock.as_raw_fd();
    let ok = match local {
        IpAddr::V4(_) => setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        ),
        IpAddr::V6(_) => setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        ),
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, sndbuf);
    Ok(sock)
}

/// Whether the kernel segments UDP sends for this socket (Linux 4.18+): asked the way
/// wireguard-go and quinn ask, by reading the option.
pub fn gso_supported(sock: &UdpSocket) -> Result<(), std::io::Error> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int and its length, both alive for the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel to coalesce received datagrams (Linux 5.0+); the error says why not.
pub fn enable_gro(sock: &UdpSocket) -> Result<(), std::io::Error> {
    if setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1) {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes a UDP_SEGMENT control message of `size` into `buf` and points `msg` at it.
pub fn put_gso_size(msg: &mut libc::msghdr, buf: &mut CmsgBuf, size: u16) {
    *buf = [0; 4];
    msg.msg_control = buf.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
    // SAFETY: `msg_control` points at `buf`, at least CMSG_SPACE(2) bytes and aligned for a
    // cmsghdr, so CMSG_FIRSTHDR returns its start, with room for the header and 2 bytes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, size);
    }
}

/// The segment size of a received buffer of coalesced datagrams (UDP_GRO), if the kernel
/// attached one to `msg` (whose control buffer the kernel filled).
pub fn gro_size(msg: &libc::msghdr) -> Option<usize> {
    if msg.msg_control.is_null() || msg.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into the buffer
    // `msg_control` points at; the CMSG_* macros walk them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                // The kernel writes an int (udp_cmsg_recv).
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                return usize::try_from(size).ok().filter(|s| *s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gso_size_written_is_read_back_as_the_kernel_lays_it_out() {
        // SAFETY: an all-zero msghdr is a valid empty message header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut buf = CmsgBuf::default();
        put_gso_size(&mut msg, &mut buf, 1458);
        // SAFETY: `msg` points at `buf`, written just above.
        let cmsg = unsafe { &*libc::CMSG_FIRSTHDR(&msg) };
        assert_eq!(
            (cmsg.cmsg_level, cmsg.cmsg_type),
            (libc::SOL_UDP, libc::UDP_SEGMENT)
        );
        // What the kernel hands back on receive: the same layout with an int and UDP_GRO.
        let mut rx = CmsgBuf::default();
        // SAFETY: an all-zero msghdr is a valid empty message header.
        let mut got: libc::msghdr = unsafe { std::mem::zeroed() };
        got.msg_control = rx.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE is a size computation; the header and data fit in `rx`.
        unsafe {
            got.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&got);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_GRO;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, 1458);
        }
        assert_eq!(gro_size(&got), Some(1458));
        got.msg_controllen = 0;
        assert_eq!(gro_size(&got), None, "no control message: single datagrams");
    }
}
