//! The tunnel's UDP sockets and the kernel's UDP offloads (Linux): segmentation on send
//! (UDP_SEGMENT, "GSO": one send of equal-sized datagrams to one address, cut by the kernel as
//! late as possible) and coalescing on receive (UDP_GRO: equal-sized datagrams of one flow
//! handed over as one buffer). Written here over `libc` rather than taken from quinn-udp,
//! which sends to one destination per call where the tunnel sends one batch to many remotes
//! in one `sendmmsg`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS was 64 before 6.11).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most UDP payload bytes in one send over IPv4 (65535 minus the IPv4 and UDP headers).
pub const GSO_MAX_BYTES: usize = 65_507;

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
pub fn sender(local: Ipv4Addr, sndbuf: libc::c_int) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(local, 0))?;
    let fd = sock.as_raw_fd();
    if !setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    ) {
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
