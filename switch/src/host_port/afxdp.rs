//! An uplink through AF_XDP sockets (`type = "afxdp"`): the XDP program (`xdp.rs`) hands
//! every frame the interface receives to the socket of its queue, one socket per receive
//! queue, each with its own UMEM (the memory frames are received into and sent from).
//! Zero-copy where the driver has it (the NIC's DMA goes straight to the UMEM), copy mode
//! otherwise (veth, or drivers without AF_XDP support: the kernel copies once).
//!
//! Receiving: the port's thread takes a batch of descriptors off a socket's RX ring,
//! switches the frames where they lie in the UMEM, then gives their chunks back on the FILL
//! ring, one index store per ring per batch. Sending: the dataplane thread that switched a
//! group copies each frame into a free chunk and puts its descriptor on a TX ring (the
//! queue its flow hashes to, under that queue's lock: one per group and queue), then one
//! `sendto` per 32 frames in copy mode (the kernel sends that many per call), none in
//! zero-copy mode unless the driver asks for a wakeup.
//!
//! The rings are hand-written here (the protocol is a few index loads and stores) rather
//! than taken from xsk-rs, which builds libxdp and libbpf from C, or the `xdp` crate, which
//! is early; `xdp.rs` says why the program is too.
//!
//! No offloads: AF_XDP frames carry no virtio-net header, so frames leave with complete
//! checksums and cut to the interface's MTU (`soft.rs`), and arrive finished.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::afpacket::check;
use super::xdp::{XdpMode, XdpRedirect};
use crate::dataplane::{
    push_iovecs, switch_host_frames, Delivery, Fabric, Frame, FrameBytes, Headers, Source,
    SwitchScratch,
};
use crate::offload::Offload;
use crate::port::{DropReason, Port};
use crate::virtio::guest_map::copy_bytes;
use crate::wire::flow_hash;

/// Entries of each ring; also the chunks given to receiving and to sending each.
const RING: u32 = 2048;
/// Frames taken off an RX ring per batch.
pub const RX_BATCH: u32 = 32;
/// What the kernel keeps in front of a received frame in its chunk (XDP_PACKET_HEADROOM).
const XDP_HEADROOM: u32 = 256;
/// Frames the kernel sends per `sendto` in copy mode (TX_BATCH_SIZE).
const COPY_TX_BATCH: usize = 32;

/// A shared mapping, unmapped when dropped.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may touch which bytes is the ring protocol's
// business (every access goes through `Ring` or a chunk this side owns).
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: Option<&OwnedFd>, len: usize, offset: i64) -> io::Result<Mapping> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a new mapping chosen by the kernel; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; nothing refers to it any more
        // (its ring or socket goes with it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One of a socket's four rings, from this side: a producer (FILL, TX) or a consumer (RX,
/// COMPLETION). The kernel is the other side.
struct Ring<T> {
    /// Kept for the pointers below.
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    /// Our copy of our own index, and the last seen of the kernel's.
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the pointers are into `map`, owned by the ring; each ring is used under its
// side's lock.
unsafe impl<T> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(fd: &OwnedFd, off: &libc::xdp_ring_offset, page: i64) -> io::Result<Ring<T>> {
        let map = Mapping::new(Some(fd), Self::len(off), page)?;
        // SAFETY: the offsets are the kernel's (XDP_MMAP_OFFSETS), and the mapping is as
        // long as they need.
        Ok(unsafe { Self::over(map, off) })
    }

    /// Bytes a ring of RING entries with these offsets takes.
    fn len(off: &libc::xdp_ring_offset) -> usize {
        off.desc as usize + RING as usize * std::mem::size_of::<T>()
    }

    /// The ring in `map`, laid out as `off` says.
    ///
    /// # Safety
    /// `map` must be at least `len(off)` bytes, with the indexes and flags 4-byte aligned
    /// and the entries aligned for `T`.
    unsafe fn over(map: Mapping, off: &libc::xdp_ring_offset) -> Ring<T> {
        // SAFETY: the caller's contract: every offset lies inside the mapping.
        let at = |o: u64| unsafe { map.ptr.add(o as usize) };
        let mut ring = Ring {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            descs: at(off.desc).cast(),
            _map: map,
            cached_prod: 0,
            cached_cons: 0,
        };
        ring.cached_prod = ring.producer().load(Ordering::Relaxed);
        ring.cached_cons = ring.consumer().load(Ordering::Relaxed);
        ring
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 in the mapping, which lives as long as `self`.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    /// A producer ring's entries the kernel has not taken yet.
    fn unconsumed(&self) -> bool {
        self.consumer().load(Ordering::Acquire) != self.cached_prod
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: masked to the ring's RING entries, all inside the mapping.
        unsafe { self.descs.add((index & (RING - 1)) as usize) }
    }

    // The consumer side.

    /// How many entries wait, up to `max` (the kernel's index loaded with acquire: the
    /// entries it wrote before are visible).
    fn peek(&mut self, max: u32) -> u32 {
        self.cached_prod = self.producer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons).min(max)
    }

    /// Entry `i` of those peeked.
    fn read(&self, i: u32) -> T {
        // SAFETY: a slot the kernel filled and published (peek), not yet released.
        unsafe { std::ptr::read_volatile(self.slot(self.cached_cons.wrapping_add(i))) }
    }

    /// Gives `n` read entries back (their reads done before the store).
    fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.consumer().store(self.cached_cons, Ordering::Release);
    }

    // The producer side.

    /// How many entries may be written now, up to `max`.
    fn free(&mut self, max: u32) -> u32 {
        let free = RING - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= max {
            return max;
        }
        self.cached_cons = self.consumer().load(Ordering::Acquire);
        (RING - self.cached_prod.wrapping_sub(self.cached_cons)).min(max)
    }

    /// Writes entry `i` past the last submitted (within what `free` allowed).
    fn write(&mut self, i: u32, value: T) {
        // SAFETY: a slot the kernel has consumed (free), not yet submitted.
        unsafe { std::ptr::write_volatile(self.slot(self.cached_prod.wrapping_add(i)), value) }
    }

    /// Publishes `n` written entries (their writes visible before the index).
    fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.producer().store(self.cached_prod, Ordering::Release);
    }
}

/// The receiving side of a socket: its RX ring and the FILL ring its chunks go back on.
struct RxSide {
    rx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    /// Chunks received and not yet back on the FILL ring: the kernel publishes a batch on
    /// the RX ring before it publishes taking the chunks off FILL, so FILL can look full
    /// for a moment.
    unfilled: Vec<u64>,
}

impl RxSide {
    /// Puts what it can of `unfilled` back on the FILL ring.
    fn refill(&mut self) {
        let n = self.fill.free(self.unfilled.len() as u32);
        for (i, &addr) in self.unfilled[..n as usize].iter().enumerate() {
            self.fill.write(i as u32, addr);
        }
        self.fill.submit(n);
        self.unfilled.drain(..n as usize);
    }
}

/// The sending side: the TX ring, the COMPLETION ring the sent chunks come back on, and
/// the chunks free to send from.
struct TxSide {
    tx: Ring<libc::xdp_desc>,
    comp: Ring<u64>,
    free: Vec<u64>,
    iov: Vec<libc::iovec>,
}

// SAFETY: `iov` holds pointers only during one `send`, under the side's lock.
unsafe impl Send for TxSide {}

/// One AF_XDP socket, bound to one queue of the interface.
struct XskSocket {
    rx: Mutex<RxSide>,
    tx: Mutex<TxSide>,
    fd: OwnedFd,
    umem: Mapping,
    chunk: u32,
    zero_copy: bool,
}

fn set<T>(fd: &OwnedFd, opt: libc::c_int, value: &T, what: &str) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a `T` and its size, alive for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(r, what)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock (a bug) leaves the rings as consistent as any batch end.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl XskSocket {
    fn open(ifindex: u32, queue: u32, chunk: u32) -> io::Result<XskSocket> {
        // SAFETY: plain socket(2); the result is checked and then owned.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw, "socket(AF_XDP)")?;
        // SAFETY: `raw` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Half the chunks receive, half send. Anonymous 4 KiB pages: no hugepages needed.
        let umem = Mapping::new(None, 2 * RING as usize * chunk as usize, 0)
            .map_err(|e| io::Error::new(e.kind(), format!("UMEM: {e}")))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: chunk,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        set(&fd, libc::XDP_UMEM_REG, &reg, "XDP_UMEM_REG").map_err(|e| {
            match e.raw_os_error() {
                // The kernel pins the UMEM, counted against RLIMIT_MEMLOCK.
                Some(libc::ENOBUFS | libc::ENOMEM | libc::EPERM) => io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (the UMEM is {} MiB of locked memory: needs CAP_IPC_LOCK or a \
                         larger RLIMIT_MEMLOCK)",
                        umem.len >> 20
                    ),
                ),
                _ => e,
            }
        })?;
        let size = RING as libc::c_int;
        set(&fd, libc::XDP_UMEM_FILL_RING, &size, "FILL ring")?;
        set(
            &fd,
            libc::XDP_UMEM_COMPLETION_RING,
            &size,
            "COMPLETION ring",
        )?;
        set(&fd, libc::XDP_RX_RING, &size, "RX ring")?;
        set(&fd, libc::XDP_TX_RING, &size, "TX ring")?;
        // SAFETY: an all-zero xdp_mmap_offsets is valid; getsockopt writes at most `len`
        // bytes of it, both alive for the call.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: as above.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        check(r, "XDP_MMAP_OFFSETS")?;
        let rx = Ring::map(&fd, &off.rx, libc::XDP_PGOFF_RX_RING)?;
        let tx = Ring::map(&fd, &off.tx, libc::XDP_PGOFF_TX_RING)?;
        let mut fill = Ring::map(&fd, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING as i64)?;
        let comp = Ring::map(&fd, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64)?;
        // Every receiving chunk goes to the kernel now.
        let n = fill.free(RING);
        for i in 0..n {
            fill.write(i, u64::from(i) * u64::from(chunk));
        }
        fill.submit(n);
        let zero_copy = Self::bind(&fd, ifindex, queue)?;
        Ok(XskSocket {
            rx: Mutex::new(RxSide {
                rx,
                fill,
                unfilled: Vec::with_capacity(RING as usize),
            }),
            tx: Mutex::new(TxSide {
                tx,
                comp,
                free: (RING..2 * RING)
                    .rev()
                    .map(|i| u64::from(i) * u64::from(chunk))
                    .collect(),
                iov: Vec::with_capacity(8),
            }),
            fd,
            umem,
            chunk,
            zero_copy,
        })
    }

    /// Binds zero-copy if the driver can, else in copy mode; true if zero-copy.
    fn bind(fd: &OwnedFd, ifindex: u32, queue: u32) -> io::Result<bool> {
        let mut last = None;
        for (zero_copy, mode) in [(true, libc::XDP_ZEROCOPY), (false, libc::XDP_COPY)] {
            // A socket of the interface closed just before (re-attaching) may hold the
            // queue for a moment.
            for _ in 0..20 {
                let addr = libc::sockaddr_xdp {
                    sxdp_family: libc::AF_XDP as u16,
                    sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
                    sxdp_ifindex: ifindex,
                    sxdp_queue_id: queue,
                    sxdp_shared_umem_fd: 0,
                };
                // SAFETY: bind with a sockaddr_xdp and its size, alive for the call.
                let r = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_xdp).cast(),
                        std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                    )
                };
                if r == 0 {
                    return Ok(zero_copy);
                }
                let e = io::Error::last_os_error();
                let busy = e.raw_os_error() == Some(libc::EBUSY);
                last = Some(e);
                if !busy {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
        let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
        Err(io::Error::new(
            e.kind(),
            format!("binding to queue {queue}: {e}"),
        ))
    }

    /// A wakeup for the kernel (copy-mode sends happen in it; a zero-copy driver may ask
    /// for one): `sendto` with nothing, or `recvfrom` for the receiving side.
    fn kick(&self, send: bool) -> io::Result<()> {
        // SAFETY: a zero-length send or receive with no buffer and no address.
        let r = unsafe {
            if send {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            } else {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes what waits on the RX ring (up to RX_BATCH frames) and switches it; the chunks
    /// go back on the FILL ring after. How many frames came.
    fn receive(
        &self,
        fabric: &Fabric,
        port: &Port,
        frames: &mut Vec<Frame>,
        scratch: &mut SwitchScratch,
    ) -> u32 {
        let mut side = lock(&self.rx);
        if !side.unfilled.is_empty() {
            side.refill();
        }
        let n = side.rx.peek(RX_BATCH);
        if n == 0 {
            if side.fill.needs_wakeup() {
                let _ = self.kick(false);
            }
            return 0;
        }
        frames.clear();
        // Receiving chunks are the UMEM's first half; the kernel's descriptors stay in it,
        // checked anyway, since a wrong one would make the frame path read out of bounds.
        let rx_half = RING as usize * self.chunk as usize;
        let room = self.chunk - XDP_HEADROOM;
        for i in 0..n {
            let d = side.rx.read(i);
            let (start, len) = (d.addr as usize, d.len as usize);
            let chunk_end = (start.min(rx_half) / self.chunk as usize + 1) * self.chunk as usize;
            if start >= rx_half || start + len > chunk_end.min(rx_half) || d.len > room {
                port.counters.drop(DropReason::TooBig, 1);
                continue;
            }
            if len < 14 {
                port.counters.drop(DropReason::Runt, 1);
                continue;
            }
            frames.push(Frame {
                head: 0,
                len: d.len,
                bytes: FrameBytes::Host { start, len },
                tunnel: None,
                offload: Offload::NONE,
            });
        }
        if !frames.is_empty() {
            // SAFETY: the receiving half of the UMEM mapping, which lives as long as `self`.
            // The frame path reads only the frames' bytes, in chunks the kernel handed over
            // on the RX ring and gets back on the FILL ring below, after the frames are
            // switched; the kernel writes only chunks it holds (on the FILL ring), as a
            // NIC's DMA writes only buffers it was given, and nothing of this process writes
            // this half (sending uses the other).
            let umem = unsafe { std::slice::from_raw_parts(self.umem.ptr, rx_half) };
            switch_host_frames(fabric, port, umem, frames, scratch);
        }
        let mask = !(u64::from(self.chunk) - 1);
        for i in 0..n {
            let addr = side.rx.read(i).addr & mask;
            side.unfilled.push(addr);
        }
        side.rx.release(n);
        side.refill();
        if side.fill.needs_wakeup() {
            let _ = self.kick(false);
        }
        n
    }

    /// Sends a group through this socket's TX ring.
    fn send(
        &self,
        side: &mut TxSide,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
    ) {
        let TxSide {
            tx,
            comp,
            free,
            iov,
        } = side;
        let mask = !(u64::from(self.chunk) - 1);
        let done = comp.peek(RING);
        for i in 0..done {
            free.push(comp.read(i) & mask);
        }
        comp.release(done);
        let room = tx.free(group.len() as u32);
        let (mut put, mut bytes, mut too_big, mut no_room) = (0u32, 0u64, 0u64, 0u64);
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let len = d.out_len(frame.len, headers);
            if len > self.chunk {
                too_big += 1;
                continue;
            }
            if put == room {
                no_room += 1;
                continue;
            }
            let Some(addr) = free.pop() else {
                no_room += 1;
                continue;
            };
            iov.clear();
            push_iovecs(source, frame, d, headers, iov);
            let mut at = 0usize;
            for piece in iov.iter() {
                let n = piece.iov_len.min(self.chunk as usize - at);
                // SAFETY: the piece is readable for `iov_len` bytes while `source` and
                // `headers` are (push_iovecs); the destination is `n` bytes inside chunk
                // `addr` of the UMEM, which this side owns until the kernel takes it from
                // the TX ring.
                unsafe {
                    copy_bytes(
                        piece.iov_base as usize,
                        self.umem.ptr as usize + addr as usize + at,
                        n,
                    )
                };
                at += n;
            }
            tx.write(
                put,
                libc::xdp_desc {
                    addr,
                    len: at as u32,
                    options: 0,
                },
            );
            put += 1;
            bytes += at as u64;
        }
        iov.clear();
        if put > 0 {
            tx.submit(put);
            self.wake_tx(tx, put as usize, port);
        }
        port.counters.count_tx(u64::from(put), bytes);
        port.counters.drop(DropReason::TooBig, too_big);
        port.counters.drop(DropReason::NoBuffer, no_room);
    }

    /// Wakes the kernel again for frames left on the TX ring (a wakeup that found the
    /// socket's send buffer full leaves them there); true if some are still there. Skipped
    /// while a sender holds the ring (it wakes the kernel itself).
    fn flush_tx(&self, port: &Port) -> bool {
        let Ok(side) = self.tx.try_lock() else {
            return false;
        };
        if !side.tx.unconsumed() {
            return false;
        }
        self.wake_tx(&side.tx, COPY_TX_BATCH, port);
        side.tx.unconsumed()
    }

    /// Has the kernel send what is on the TX ring: in copy mode it sends COPY_TX_BATCH
    /// frames per call and says EAGAIN while more wait.
    fn wake_tx(&self, tx: &Ring<libc::xdp_desc>, put: usize, port: &Port) {
        if !tx.needs_wakeup() {
            return;
        }
        for _ in 0..put / COPY_TX_BATCH + 2 {
            match self.kick(true) {
                Ok(()) => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EBUSY | libc::EINTR) => continue,
                    // The interface is down or gone, or out of buffers: what is on the
                    // ring goes with the next wakeup, or with the socket.
                    Some(libc::ENETDOWN | libc::ENXIO | libc::ENOBUFS) => return,
                    _ => {
                        port.log_bad_input(format_args!("AF_XDP send: {e}"));
                        return;
                    }
                },
            }
        }
    }
}

/// An AF_XDP uplink: the program on the interface and a socket per receive queue.
pub struct XdpUplink {
    /// Dropped first: the program goes (frames go to the kernel's stack again) before
    /// the sockets it redirects to close.
    redirect: XdpRedirect,
    sockets: Vec<XskSocket>,
    /// Keeps the interface promiscuous while the uplink is open (the kernel counts it).
    _promisc: OwnedFd,
    name: String,
}

impl XdpUplink {
    /// Attaches to interface `name`: the program, then a socket on each receive queue.
    pub fn open(name: &str) -> io::Result<XdpUplink> {
        let ifindex = super::afpacket::ifindex(name)?;
        let mtu = super::afpacket::mtu_of(name).unwrap_or(1500);
        // A tagged frame of the MTU must fit a chunk after the kernel's headroom (frames
        // over one chunk need multi-buffer sockets, which this port does not use).
        let largest = mtu + 18;
        let chunk = [2048u32, 4096]
            .into_iter()
            .find(|c| largest <= c - XDP_HEADROOM)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "MTU {mtu} is over what an AF_XDP chunk holds ({} bytes)",
                        4096 - XDP_HEADROOM - 18
                    ),
                )
            })?;
        let queues = std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count() as u32
            })
            .unwrap_or(1)
            .max(1);
        let promisc = super::afpacket::promiscuous(ifindex)?;
        let redirect = XdpRedirect::attach(ifindex, queues)?;
        let mut sockets = Vec::with_capacity(queues as usize);
        for queue in 0..queues {
            let sock = XskSocket::open(ifindex, queue, chunk)?;
            redirect.insert(queue, sock.fd.as_raw_fd())?;
            sockets.push(sock);
        }
        Ok(XdpUplink {
            sockets,
            redirect,
            _promisc: promisc,
            name: name.to_string(),
        })
    }

    /// Receive queues served (a socket each).
    pub fn queues(&self) -> usize {
        self.sockets.len()
    }

    /// How the uplink is attached, for the log and `flowctl show ports`.
    pub fn describe(&self) -> String {
        format!(
            "AF_XDP, {} mode, {}, {} queue{}",
            if self.sockets.iter().all(|s| s.zero_copy) {
                "zero-copy"
            } else {
                "copy"
            },
            match self.redirect.mode {
                XdpMode::Native => "native XDP",
                XdpMode::Generic => "generic XDP",
            },
            self.sockets.len(),
            if self.sockets.len() == 1 { "" } else { "s" }
        )
    }

    /// Whether an interface of this name exists but the program is not attached to it (it
    /// was deleted, which detaches the program and unbinds the sockets, and came back).
    pub fn stale(&self) -> bool {
        match super::afpacket::ifindex(&self.name) {
            Ok(now) => self.redirect.attached_ifindex() != Some(now),
            Err(_) => false,
        }
    }

    /// Appends the sockets' descriptors (readable while frames wait on their RX rings).
    pub fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) {
        out.extend(self.sockets.iter().map(|s| s.fd.as_raw_fd()));
    }

    /// Switches a batch from each queue; how many frames came.
    pub fn receive(
        &self,
        fabric: &Fabric,
        port: &Port,
        frames: &mut Vec<Frame>,
        scratch: &mut SwitchScratch,
    ) -> u32 {
        self.sockets
            .iter()
            .map(|s| s.receive(fabric, port, frames, scratch))
            .sum()
    }

    /// Sends a group, each frame on the queue its flow hashes to (one queue: all on it), so
    /// a flow stays in order.
    pub fn send(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: Headers<'_>,
    ) {
        let n = self.sockets.len();
        if n == 1 {
            let s = &self.sockets[0];
            return s.send(&mut lock(&s.tx), port, source, frames, group, headers);
        }
        STEERING.with(|st| {
            let Ok(mut st) = st.try_borrow_mut() else {
                port.counters.drop(DropReason::NoBuffer, group.len() as u64);
                return;
            };
            let (queue_of, picked) = &mut *st;
            queue_of.clear();
            for d in group {
                let mut head = [0u8; 64];
                let len = source.read_prefix(&frames[usize::from(d.frame)], &mut head);
                queue_of.push(flow_hash(&head[..len]) as usize % n);
            }
            for (i, s) in self.sockets.iter().enumerate() {
                picked.clear();
                picked.extend(
                    group
                        .iter()
                        .zip(queue_of.iter())
                        .filter(|(_, q)| **q == i)
                        .map(|(d, _)| *d),
                );
                if !picked.is_empty() {
                    s.send(&mut lock(&s.tx), port, source, frames, picked, headers);
                }
            }
        });
    }

    /// Wakes the kernel for frames a full send buffer left on a TX ring; true if some are
    /// still waiting (the receive thread then looks again soon).
    pub fn flush_tx(&self, port: &Port) -> bool {
        // Every socket, not only up to the first with frames waiting.
        let mut waiting = false;
        for s in &self.sockets {
            waiting |= s.flush_tx(port);
        }
        waiting
    }
}

thread_local! {
    /// Each dataplane thread's work space for spreading a group over an uplink's queues.
    static STEERING: std::cell::RefCell<(Vec<usize>, Vec<Delivery>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in anonymous memory, with its indexes starting at `start`; the test plays
    /// the kernel through `kernel_*`.
    fn ring<T: Copy>(start: u32) -> Ring<T> {
        let off = libc::xdp_ring_offset {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let map = Mapping::new(None, Ring::<T>::len(&off), 0).unwrap();
        // SAFETY: the mapping is len(off) bytes, page-aligned, the offsets aligned.
        let mut r = unsafe { Ring::<T>::over(map, &off) };
        r.producer().store(start, Ordering::Relaxed);
        r.consumer().store(start, Ordering::Relaxed);
        r.cached_prod = start;
        r.cached_cons = start;
        r
    }

    fn kernel_write<T: Copy>(r: &Ring<T>, values: &[T]) {
        let p = r.producer().load(Ordering::Relaxed);
        for (i, v) in values.iter().enumerate() {
            // SAFETY: a slot of the ring, as the kernel writes it.
            unsafe { r.slot(p.wrapping_add(i as u32)).write(*v) };
        }
        r.producer()
            .store(p.wrapping_add(values.len() as u32), Ordering::Release);
    }

    fn kernel_take<T: Copy>(r: &Ring<T>, n: u32) -> Vec<T> {
        let c = r.consumer().load(Ordering::Relaxed);
        // SAFETY: slots the producer published.
        let v = (0..n)
            .map(|i| unsafe { r.slot(c.wrapping_add(i)).read() })
            .collect();
        r.consumer().store(c.wrapping_add(n), Ordering::Release);
        v
    }

    #[test]
    fn a_consumer_ring_reads_what_was_published_across_the_index_wrap() {
        let mut rx = ring::<u64>(u32::MAX - 3);
        assert_eq!(rx.peek(RX_BATCH), 0);
        kernel_write(&rx, &[10, 11, 12, 13, 14, 15]);
        assert_eq!(rx.peek(4), 4, "held to the batch asked for");
        assert_eq!(
            (0..4).map(|i| rx.read(i)).collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        rx.release(4);
        assert_eq!(rx.consumer().load(Ordering::Relaxed), 0, "wrapped");
        assert_eq!(rx.peek(RX_BATCH), 2);
        assert_eq!((rx.read(0), rx.read(1)), (14, 15));
    }

    #[test]
    fn a_producer_ring_never_overwrites_what_the_kernel_has_not_taken() {
        let mut fill = ring::<u64>(u32::MAX - 1);
        assert_eq!(fill.free(RING + 5), RING);
        for i in 0..RING {
            fill.write(i, u64::from(i));
        }
        fill.submit(RING);
        assert_eq!(fill.free(1), 0, "full until the kernel takes some");
        assert_eq!(kernel_take(&fill, 3), [0, 1, 2]);
        assert_eq!(fill.free(8), 3);
        assert!(fill.unconsumed());
    }

    #[test]
    fn chunks_that_do_not_fit_on_the_fill_ring_wait_for_room() {
        let mut side = RxSide {
            rx: ring(0),
            fill: ring(0),
            unfilled: Vec::new(),
        };
        // The kernel has not yet published taking the chunks off FILL (it publishes RX
        // first): FILL looks full.
        let n = side.fill.free(RING);
        for i in 0..n {
            side.fill.write(i, u64::from(i) * 2048);
        }
        side.fill.submit(n);
        side.unfilled.extend([7 * 2048, 9 * 2048]);
        side.refill();
        assert_eq!(side.unfilled.len(), 2, "kept, not lost");
        kernel_take(&side.fill, 1);
        side.refill();
        assert_eq!(side.unfilled, [9 * 2048]);
        kernel_take(&side.fill, RING - 1);
        side.refill();
        assert!(side.unfilled.is_empty());
        assert_eq!(kernel_take(&side.fill, 2), [7 * 2048, 9 * 2048]);
    }
}
