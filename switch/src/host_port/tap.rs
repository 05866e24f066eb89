//! A tap device through `/dev/net/tun`: created by name, brought up, closed (and so removed)
//! with its file descriptor. Written against the kernel's ioctls directly: the few calls
//! needed here are smaller than any tun crate's surface, and the crates we looked at
//! (tun, tun-tap) either pull in an async runtime or leave the fd blocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::wire::EthernetAddress;

/// An open tap device (no packet-information prefix, non-blocking), with one or more
/// queues (IFF_MULTI_QUEUE: a file descriptor each; the host's stack spreads its flows over
/// them). The device exists as long as this does (it is not made persistent).
pub struct Tap {
    queues: Vec<File>,
    name: String,
    /// The device offers the host's stack checksum and TCP segmentation offload.
    offloads: bool,
}

/// An `ifreq` with `name` in it (at most IFNAMSIZ - 1 bytes, checked by the port's config).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a valid interface name"),
        ));
    }
    // SAFETY: an all-zero ifreq is a valid value (a NUL name, a zero union).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// Whether interface `name` is up with a carrier (IFF_UP and IFF_RUNNING), asked of the
/// kernel in the caller's network namespace; None if there is no such interface.
pub fn running(name: &str) -> Option<bool> {
    let sock = control_socket().ok()?;
    let mut req = ifreq(name).ok()?;
    // SAFETY: SIOCGIFFLAGS writes the flags member of an ifreq, alive for the call.
    let flags = unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return None;
        }
        req.ifr_ifru.ifru_flags
    };
    let want = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    Some(flags & want == want)
}

/// A socket for the interface ioctls (SIOCGIFFLAGS and friends need one, of any family).
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Opens `/dev/net/tun` and attaches it to tap `name` with `flags` (creating the device
/// if it does not exist).
fn open_queue(name: &str, flags: libc::c_int) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is, alive for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    Ok(file)
}

impl Tap {
    /// Creates tap device `name` with `queues` queues (it must not exist yet: IFF_TUN_EXCL
    /// refuses an existing tap, and another device of that name fails too) and brings it
    /// up, with `mac` as its address if given. Needs CAP_NET_ADMIN.
    pub fn create(name: &str, mac: Option<EthernetAddress>, queues: usize) -> io::Result<Tap> {
        if std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a network interface named '{name}' already exists"),
            ));
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // The first queue creates the device; the others attach to it.
        let file = open_queue(name, flags | libc::IFF_TUN_EXCL)?;
        let len = super::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int, alive for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("TUNSETVNETHDRSZ {name}: {e}"),
            ));
        }
        let offload_flags =
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes its flags as the argument itself, not a pointer.
        let offloads = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                offload_flags as libc::c_ulong,
            )
        } == 0;
        if !offloads {
            log::info!(
                "{name}: no checksum or segmentation offload for the host ({}): frames cross finished",
                io::Error::last_os_error()
            );
        }
        let mut all = vec![file];
        for _ in 1..queues {
            all.push(open_queue(name, flags)?);
        }
        let tap = Tap {
            queues: all,
            name: name.to_string(),
            offloads,
        };
        if let Some(mac) = mac {
            tap.set_mac(mac)?;
        }
        tap.set_up()?;
        Ok(tap)
    }

    /// The device another process opened, from duplicates of its queues' fds (the
    /// header size, offloads and link state are the device's and stay as they were).
    pub fn adopt(name: &str, queues: Vec<File>, offloads: bool) -> io::Result<Tap> {
        if queues.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: no queue handed over"),
            ));
        }
        Ok(Tap {
            queues,
            name: name.to_string(),
            offloads,
        })
    }

    /// Duplicates of the queues' fds (for a takeover).
    pub fn duplicate_queues(&self) -> io::Result<Vec<File>> {
        self.queues.iter().map(File::try_clone).collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the host's stack hands over (and takes) super-frames and partial checksums.
    pub fn offloads(&self) -> bool {
        self.offloads
    }

    /// How many queues the device has.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    fn fd(&self, queue: usize) -> std::os::fd::RawFd {
        self.queues[queue % self.queues.len()].as_raw_fd()
    }

    fn set_mac(&self, mac: EthernetAddress) -> io::Result<()> {
        let sock = control_socket()?;
        let mut req = ifreq(&self.name)?;
        // SAFETY: writing the hwaddr member of the union, a plain sockaddr.
        unsafe {
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac.0) {
                *dst = src as libc::c_char;
            }
        }
        // SAFETY: SIOCSIFHWADDR reads an ifreq, alive for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("setting {mac} on {}: {e}", self.name),
            ));
        }
        Ok(())
    }

    fn set_up(&self) -> io::Result<()> {
        let sock = control_socket()?;
        let mut req = ifreq(&self.name)?;
        // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write an ifreq, alive for each call;
        // the flags member is the one they use.
        unsafe {
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("bringing {} up: {e}", self.name),
                ));
            }
        }
        Ok(())
    }

    /// The device's MTU now (the host's administrator may change it).
    pub fn mtu(&self) -> io::Result<u32> {
        let sock = control_socket()?;
        let mut req = ifreq(&self.name)?;
        // SAFETY: SIOCGIFMTU writes the mtu member of an ifreq, alive for the call.
        let mtu = unsafe {
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_mtu
        };
        Ok(mtu.max(0) as u32)
    }

    /// Reads one frame from `queue` into `buf`: its length, or None when nothing waits. A
    /// frame longer than `buf` comes back cut to `buf.len()` (the caller sizes `buf` one
    /// byte over its limit to tell).
    pub fn read(&self, queue: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for writes of its length for the call.
        let n = unsafe { libc::read(self.fd(queue), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => self.read(queue, buf),
            _ => Err(e),
        }
    }

    /// Writes one frame given as pieces to `queue`.
    ///
    /// # Safety
    /// Each iovec must point at memory valid for reads of its length for the call.
    pub unsafe fn write(&self, queue: usize, iov: &[libc::iovec]) -> io::Result<()> {
        loop {
            // SAFETY: the iovecs are valid for reads (the caller's contract); the count is
            // the slice's.
            let n = unsafe { libc::writev(self.fd(queue), iov.as_ptr(), iov.len() as libc::c_int) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Waits up to `timeout_ms` for a frame to read on any queue; true if one waits. An
    /// error (the device was deleted under the switch) is waited out for the same time, so
    /// the port does not spin.
    pub fn wait_readable(&self, timeout_ms: i32) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .queues
            .iter()
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds.len()` pollfds, alive for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n > 0 && fds.iter().any(|p| p.revents & libc::POLLIN != 0) {
            return true;
        }
        if n > 0 {
            std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
        }
        false
    }
}
