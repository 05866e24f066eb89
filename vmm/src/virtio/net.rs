//! A virtio-net device whose backend is a switch port over vhost-user.
//!
//! The VMM keeps only the control path: the virtio-mmio registers ([`MmioRegs`]), the
//! config space (MAC, link status) and the vhost-user connection. The rings live in guest
//! memory and the backend processes them directly; the guest's QueueNotify writes go to the
//! backend's kick eventfds (as KVM ioeventfds, without exiting to userspace), and the
//! backend's call eventfds are what the VMM's idle wait watches.
//!
//! # Connecting
//! - [`NetSpec::client`] `false` (default): the switch listens on the socket (port
//!   `mode = "server"`) and the VMM connects to it.
//! - `client = true`: the VMM is the vhost-user *server*: it listens on the socket and the
//!   switch dials it (port `mode = "client"`). The name follows the switch port's mode, which
//!   is what the user configures on the other side.
//!
//! [`VirtioNet::new`] waits (up to [`NetSpec::connect_timeout`]) for the first connection,
//! because the features offered to the guest and the default MAC come from the backend.
//!
//! # Reconnecting and replaying ring state
//! A supervisor thread watches the connection for hang-up. When the backend goes away it
//! keeps trying to reach it again (connect with backoff 50 ms doubling to 2 s, or accept on
//! the listening socket in client mode) and, once connected and if the guest driver is
//! running, redoes the whole setup: `SET_FEATURES`, the memory table, and per queue
//! `SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE` with the *same* kick and call eventfds (so the
//! ioeventfd registration and the VMM's idle wait never change).
//!
//! The ring position to resume from is the **used index in guest memory**: every descriptor
//! before it was completed by the old backend, so `SET_VRING_BASE(used_idx)` makes the new
//! backend start reading the avail ring at the first chain not known to be complete (this is
//! what QEMU does when a vhost-user backend dies: `virtio_queue_restore_last_avail_idx`).
//! The backend's own `next_used` continues from the same index (our switch also reads it
//! back from the used ring when the ring starts). What happens to chains in flight, i.e.
//! between the used index and the avail index:
//! - RX: they are empty buffers the guest posted; the new backend fills them. A frame the
//!   old backend was writing into one but never published is lost (a lost frame).
//! - TX: they are frames the guest queued; the new backend sends them. One the old backend
//!   had already forwarded but not yet marked used is sent twice (a duplicate frame, which
//!   the layers above tolerate as they tolerate loss).
//!
//! This relies on the old backend completing chains in order (the used ring lists heads in
//! avail order), which holds for the switch. A backend that completes out of order would
//! need vhost-user's inflight tracking (`INFLIGHT_SHMFD`), which neither side implements.
//! After a reconnect both kick eventfds are written once, so the new backend looks at chains
//! the guest published while nobody was listening (their notifications may have been
//! suppressed by the old backend's `avail_event`), and both call eventfds are written so an
//! idle guest re-polls its rings.
//!
//! With [`NetSpec::reconnect`] `false` (`--net ...,no-reconnect`) a lost backend is reported
//! instead: the socket is in [`Device::hangup_fds`] for the VMM's watcher,
//! [`Device::backend_lost`] turns `Some`, [`VirtioNet::lost_fd`] becomes readable and the call
//! fds are written so an idle wait returns; the VMM then exits with status 4.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VmFd};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{
    F_VERSION_1, NET_F_MAC, NET_F_MRG_RXBUF, NET_F_STATUS, RING_F_EVENT_IDX,
    VHOST_USER_F_PROTOCOL_FEATURES,
};
use super::mmio::{reg, Action, MmioRegs, QueueConfig, DEVICE_ID_NET};
use super::Device;

/// Queue index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Queue index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// One queue pair.
pub const NUM_QUEUES: usize = 2;
/// `QueueNumMax` of both queues.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Ring and net features passed through from the backend when it offers them.
pub const PASSTHROUGH_FEATURES: u64 = F_VERSION_1 | RING_F_EVENT_IDX | NET_F_MRG_RXBUF;
/// Features the VMM implements itself (the config space is ours).
pub const OWN_FEATURES: u64 = NET_F_MAC | NET_F_STATUS;

/// `VIRTIO_NET_S_LINK_UP`.
const NET_S_LINK_UP: u16 = 1;
/// Protocol features we use when the backend offers them.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
/// `SET_MEM_TABLE` carries at most this many regions.
const MEM_TABLE_MAX: usize = 8;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A backend that does not answer a request within this long is treated as gone.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the backend (`--net socket=PATH[,mac=MAC][,client][,no-reconnect]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The guest's MAC; `None` asks the backend (`GET_CONFIG`), falling back to an address
    /// derived from the socket path.
    pub mac: Option<[u8; 6]>,
    /// `false`: connect to the switch listening on `socket` (switch port `mode = "server"`).
    /// `true`: listen on `socket` and let the switch connect (switch port `mode = "client"`).
    pub client: bool,
    /// Reconnect forever when the backend goes away (default); `false` reports it lost.
    pub reconnect: bool,
    /// How long [`VirtioNet::new`] waits for the first connection.
    pub connect_timeout: Duration,
}

impl NetSpec {
    /// Defaults: connect to `socket`, MAC from the backend, reconnect forever, wait up to
    /// 10 s for the first connection (a switch in client mode retries every 5 s at most).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        NetSpec {
            socket: socket.into(),
            mac: None,
            client: false,
            reconnect: true,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of the virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Connecting to (or listening on) the vhost-user socket failed.
    #[error("vhost-user socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Nobody answered on the socket before the deadline.
    #[error("vhost-user socket {path}: no switch {what} within {timeout:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// "listening" or "connected".
        what: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// A vhost-user request failed or was refused.
    #[error("vhost-user {op} on {path}: {source}")]
    Vhost {
        /// The request.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The `vhost` crate's error.
        source: vhost::Error,
    },
    /// The backend lacks features the guest was offered.
    #[error("backend on {path} lacks features {missing:#x} (offers {offered:#x})")]
    MissingFeatures {
        /// The socket path.
        path: PathBuf,
        /// Needed and not offered.
        missing: u64,
        /// What the backend offers.
        offered: u64,
    },
    /// The backend's answer makes no sense.
    #[error("backend on {path}: {what}")]
    BadBackend {
        /// The socket path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The VM's memory cannot be shared with a backend.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest configured a queue the device cannot use.
    #[error("queue {queue}: {what}")]
    BadQueue {
        /// The queue index.
        queue: usize,
        /// What is wrong.
        what: String,
    },
    /// Creating an eventfd failed.
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    /// Registering QueueNotify as a KVM ioeventfd failed.
    #[error("KVM ioeventfd for queue {queue} at {addr:#x}: {source}")]
    IoEvent {
        /// The queue index.
        queue: usize,
        /// The guest-physical address of QueueNotify.
        addr: u64,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Registering a call eventfd as a KVM irqfd failed.
    #[error("KVM irqfd for queue {queue} on GSI {gsi}: {source}")]
    IrqFd {
        /// The queue index.
        queue: usize,
        /// The interrupt line.
        gsi: u32,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// The supervisor thread could not be started.
    #[error("starting the vhost-user supervisor thread: {0}")]
    Thread(io::Error),
}

type Result<T> = std::result::Result<T, NetError>;

/// Who is at fault when the rings cannot be started.
enum Fault {
    /// The guest's queue setup is unusable: the device needs a reset.
    Guest(NetError),
    /// The connection failed: reconnect.
    Backend(NetError),
}

/// One vhost-user connection after the handshake.
struct Link {
    fe: Frontend,
    /// A duplicate of the socket, polled for hang-up by the supervisor.
    watch: Arc<UnixStream>,
    /// Virtio features the backend offers.
    offered: u64,
    /// Protocol features negotiated.
    protocol: VhostUserProtocolFeatures,
}

/// Connection state, behind one mutex (always taken before `regs`).
struct ConnState {
    link: Option<Link>,
    /// The current link failed; the supervisor replaces it.
    broken: bool,
    /// The guest set DRIVER_OK and has not reset the device since.
    active: bool,
    /// The rings are set up on the current link.
    started: bool,
    /// The rings were started at least once since the guest activated the device: a later
    /// start is a replay and resumes from the used index.
    ever_started: bool,
}

struct Shared {
    spec: NetSpec,
    mem: GuestMemoryMmap,
    mac: [u8; 6],
    regs: Mutex<MmioRegs>,
    conn: Mutex<ConnState>,
    kicks: [EventFd; NUM_QUEUES],
    calls: [EventFd; NUM_QUEUES],
    /// Wakes the supervisor (link broken, shutdown).
    wake: EventFd,
    /// Readable once the backend is lost for good (no-reconnect).
    lost_event: EventFd,
    lost: AtomicBool,
    shutdown: AtomicBool,
    /// Client mode: the socket we listen on for the switch.
    listener: Option<UnixListener>,
    connections: AtomicU64,
}

/// A virtio-net device backed by a vhost-user switch port. See the module documentation.
pub struct VirtioNet {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("socket", &self.shared.spec.socket)
            .field("mac", &format_args!("{}", format_mac(&self.shared.mac)))
            .field("connections", &self.connections())
            .field("lost", &self.shared.lost.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A stable locally administered unicast address derived from the socket path (FNV-1a).
fn derived_mac(path: &Path) -> [u8; 6] {
    let h = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
        .to_be_bytes();
    [0x02, 0x56, 0x4d, h[0], h[1], h[2]]
}

/// `struct virtio_net_config` as far as the offered features reach: mac, status, and
/// max_virtqueue_pairs = 1.
fn config_space(mac: &[u8; 6]) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[..6].copy_from_slice(mac);
    c[6..8].copy_from_slice(&NET_S_LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c
}

/// Borrows an eventfd's descriptor for `poll`.
fn borrow(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `e`, which outlives the returned borrow, so it stays
    // open (and is not reused) while the BorrowedFd exists.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let t = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX),
    };
    loop {
        match poll(&mut pfds, t) {
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

impl Shared {
    fn vhost_err(&self, op: &'static str) -> impl FnOnce(vhost::Error) -> NetError + '_ {
        move |source| NetError::Vhost {
            op,
            path: self.spec.socket.clone(),
            source,
        }
    }

    /// One connection attempt without waiting: `Ok(None)` means "nobody there yet".
    fn try_connect(&self) -> Result<Option<UnixStream>> {
        let path = &self.spec.socket;
        match &self.listener {
            Some(l) => match l.accept() {
                Ok((s, _)) => Ok(Some(s)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(None)
                }
                Err(source) => Err(NetError::Socket {
                    path: path.clone(),
                    source,
                }),
            },
            None => match UnixStream::connect(path) {
                Ok(s) => Ok(Some(s)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound
                            | io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(None)
                }
                Err(source) => Err(NetError::Socket {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// Waits up to `d` for a reason to retry: the listening socket becomes readable (client
    /// mode) or the device is woken (shutdown). Plain sleeping is not enough for the latter.
    fn wait_retry(&self, d: Option<Duration>) {
        let mut fds = vec![borrow(&self.wake)];
        if let Some(l) = &self.listener {
            fds.push(l.as_fd());
        }
        match wait_readable(&fds, d) {
            Ok(r) if r.first() == Some(&true) => {
                let _ = self.wake.read();
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("net {}: poll failed: {e}", self.spec.socket.display());
                thread::sleep(d.unwrap_or(BACKOFF_MIN).min(BACKOFF_MIN));
            }
        }
    }

    /// Session setup up to protocol features (what every connection needs before the guest
    /// driver's state matters).
    fn handshake(&self, stream: UnixStream) -> Result<Link> {
        let io_err = |source| NetError::Socket {
            path: self.spec.socket.clone(),
            source,
        };
        stream.set_nonblocking(false).map_err(io_err)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(io_err)?;
        let watch = Arc::new(stream.try_clone().map_err(io_err)?);
        let mut fe = Frontend::from_stream(stream, NUM_QUEUES as u64);
        fe.set_owner().map_err(self.vhost_err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(self.vhost_err("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let p = fe
                .get_protocol_features()
                .map_err(self.vhost_err("GET_PROTOCOL_FEATURES"))?;
            protocol = p & WANTED_PROTOCOL;
            fe.set_protocol_features(protocol)
                .map_err(self.vhost_err("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every later request waits for the backend's verdict: a refused
                // SET_VRING_ADDR fails here instead of silently.
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        Ok(Link {
            fe,
            watch,
            offered,
            protocol,
        })
    }

    /// The MAC in the backend's config space, if it has one to tell.
    fn backend_mac(&self, link: &mut Link) -> Result<Option<[u8; 6]>> {
        if !link.protocol.contains(VhostUserProtocolFeatures::CONFIG)
            || link.offered & NET_F_MAC == 0
        {
            return Ok(None);
        }
        let (_, payload) = link
            .fe
            .get_config(0, 6, VhostUserConfigFlags::empty(), &[0u8; 6])
            .map_err(self.vhost_err("GET_CONFIG"))?;
        let mac: [u8; 6] = payload
            .get(..6)
            .and_then(|m| m.try_into().ok())
            .ok_or_else(|| NetError::BadBackend {
                path: self.spec.socket.clone(),
                what: format!("GET_CONFIG returned {} bytes", payload.len()),
            })?;
        // An all-zero or multicast address is no address.
        Ok((mac != [0; 6] && mac[0] & 1 == 0).then_some(mac))
    }

    /// The memory table as vhost-user sees it.
    fn regions(&self) -> Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| {
                    NetError::Memory(format!(
                        "region at {:#x} is not file-backed (use a memfd): {e}",
                        r.start_addr().0
                    ))
                })
            })
            .collect()
    }

    /// The host address of `len` bytes of guest memory at `gpa`, which must lie in one
    /// region and be `align`-aligned.
    fn ring_part(&self, queue: usize, what: &str, gpa: u64, len: u64, align: u64) -> Result<u64> {
        let err = |why: &str| NetError::BadQueue {
            queue,
            what: format!("{what} at {gpa:#x} ({len} bytes) {why}"),
        };
        if !gpa.is_multiple_of(align) {
            return Err(err("is misaligned"));
        }
        let addr = GuestAddress(gpa);
        self.mem
            .get_slice(addr, len as usize)
            .map_err(|_| err("is not in guest RAM"))?;
        let hva = self
            .mem
            .get_host_address(addr)
            .map_err(|_| err("is not in guest RAM"))?;
        Ok(hva as u64)
    }

    fn vring_config(&self, queue: usize, q: &QueueConfig) -> Result<VringConfigData> {
        let bad = |what: String| NetError::BadQueue { queue, what };
        if !q.ready {
            return Err(bad("not ready at DRIVER_OK".into()));
        }
        if q.size == 0 || !q.size.is_power_of_two() || q.size > q.max_size {
            return Err(bad(format!("size {} is unusable", q.size)));
        }
        let n = u64::from(q.size);
        Ok(VringConfigData {
            queue_max_size: q.max_size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: self.ring_part(queue, "descriptor table", q.desc, 16 * n, 16)?,
            avail_ring_addr: self.ring_part(queue, "driver ring", q.driver, 6 + 2 * n, 2)?,
            used_ring_addr: self.ring_part(queue, "device ring", q.device, 6 + 8 * n, 4)?,
            log_addr: None,
        })
    }

    /// The used index the guest's used ring holds now.
    fn used_idx(&self, q: &QueueConfig) -> Option<u16> {
        let at = q.device.checked_add(2)?;
        self.mem
            .load::<u16>(GuestAddress(at), Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }

    /// Sets the backend up for the running guest driver: features, memory, rings.
    /// `replay`: resume every ring from its used index instead of 0.
    fn start_rings(&self, link: &mut Link, replay: bool) -> std::result::Result<(), Fault> {
        let (driver_features, queues) = {
            let regs = lock(&self.regs);
            (regs.driver_features(), regs.queues().to_vec())
        };
        let needed = driver_features & PASSTHROUGH_FEATURES;
        if needed & !link.offered != 0 {
            return Err(Fault::Backend(NetError::MissingFeatures {
                path: self.spec.socket.clone(),
                missing: needed & !link.offered,
                offered: link.offered,
            }));
        }
        // Check the guest's rings before touching the backend.
        let mut configs = Vec::with_capacity(NUM_QUEUES);
        for (i, q) in queues.iter().enumerate().take(NUM_QUEUES) {
            configs.push(self.vring_config(i, q).map_err(Fault::Guest)?);
        }
        let be = |op| {
            let f = self.vhost_err(op);
            move |e| Fault::Backend(f(e))
        };
        let fe = &mut link.fe;
        let features =
            (driver_features & link.offered) | (link.offered & VHOST_USER_F_PROTOCOL_FEATURES);
        fe.set_features(features).map_err(be("SET_FEATURES"))?;
        let regions = self.regions().map_err(Fault::Guest)?;
        if regions.len() <= MEM_TABLE_MAX {
            fe.set_mem_table(&regions).map_err(be("SET_MEM_TABLE"))?;
        } else if link
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            for r in &regions {
                fe.add_mem_region(r).map_err(be("ADD_MEM_REG"))?;
            }
        } else {
            return Err(Fault::Backend(NetError::BadBackend {
                path: self.spec.socket.clone(),
                what: format!(
                    "{} memory regions need CONFIGURE_MEM_SLOTS, which it does not offer",
                    regions.len()
                ),
            }));
        }
        for (i, (q, config)) in queues.iter().zip(&configs).enumerate() {
            let base = if replay {
                self.used_idx(q).ok_or_else(|| {
                    Fault::Guest(NetError::BadQueue {
                        queue: i,
                        what: format!("used ring at {:#x} unreadable", q.device),
                    })
                })?
            } else {
                0
            };
            if replay {
                log::info!(
                    "net {}: queue {i} resumes at used idx {base}",
                    self.spec.socket.display()
                );
            }
            fe.set_vring_num(i, q.size).map_err(be("SET_VRING_NUM"))?;
            fe.set_vring_base(i, base).map_err(be("SET_VRING_BASE"))?;
            fe.set_vring_addr(i, config).map_err(be("SET_VRING_ADDR"))?;
            fe.set_vring_call(i, &self.calls[i])
                .map_err(be("SET_VRING_CALL"))?;
            fe.set_vring_kick(i, &self.kicks[i])
                .map_err(be("SET_VRING_KICK"))?;
        }
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for i in 0..NUM_QUEUES {
                fe.set_vring_enable(i, true)
                    .map_err(be("SET_VRING_ENABLE"))?;
            }
        }
        // Let the backend look at what the guest published meanwhile, and an idle guest
        // look at its used rings.
        for i in 0..NUM_QUEUES {
            let _ = self.kicks[i].write(1);
            if replay {
                let _ = self.calls[i].write(1);
            }
        }
        Ok(())
    }

    /// Stops the backend's rings (the guest reset the device).
    fn stop_rings(&self, link: &mut Link) -> Result<()> {
        for i in 0..NUM_QUEUES {
            link.fe
                .get_vring_base(i)
                .map_err(self.vhost_err("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    /// Starts the rings on the current link; on failure either asks the guest to reset or
    /// hands the link to the supervisor.
    fn start_or_fail(&self, c: &mut ConnState) {
        let replay = c.ever_started;
        let Some(link) = c.link.as_mut().filter(|_| !c.broken) else {
            return;
        };
        match self.start_rings(link, replay) {
            Ok(()) => {
                c.started = true;
                c.ever_started = true;
                log::info!(
                    "net {}: backend running{}",
                    self.spec.socket.display(),
                    if replay { " (ring state replayed)" } else { "" }
                );
            }
            Err(Fault::Guest(e)) => {
                log::warn!(
                    "net {}: {e}; the device needs a reset",
                    self.spec.socket.display()
                );
                c.active = false;
                lock(&self.regs).set_needs_reset();
            }
            Err(Fault::Backend(e)) => {
                log::warn!("net {}: {e}", self.spec.socket.display());
                self.mark_broken(c);
            }
        }
    }

    fn mark_broken(&self, c: &mut ConnState) {
        c.broken = true;
        c.started = false;
        let _ = self.wake.write(1);
    }

    /// DRIVER_OK.
    fn activate(&self) {
        let mut c = lock(&self.conn);
        c.active = true;
        c.ever_started = false;
        self.start_or_fail(&mut c);
    }

    /// Status = 0.
    fn deactivate(&self) {
        let mut c = lock(&self.conn);
        let was_started = c.started;
        c.active = false;
        c.started = false;
        c.ever_started = false;
        if !was_started || c.broken {
            return;
        }
        if let Some(link) = c.link.as_mut() {
            if let Err(e) = self.stop_rings(link) {
                log::warn!("net {}: {e}", self.spec.socket.display());
                self.mark_broken(&mut c);
            }
        }
    }

    /// A fresh connection: handshake, check it can serve what the guest was offered, and
    /// start the rings if the driver is running.
    fn establish(&self, stream: UnixStream) -> Result<()> {
        let link = self.handshake(stream)?;
        let offered_to_guest = lock(&self.regs).device_features() & PASSTHROUGH_FEATURES;
        if offered_to_guest & !link.offered != 0 {
            return Err(NetError::MissingFeatures {
                path: self.spec.socket.clone(),
                missing: offered_to_guest & !link.offered,
                offered: link.offered,
            });
        }
        let mut c = lock(&self.conn);
        c.link = Some(link);
        c.broken = false;
        c.started = false;
        self.connections.fetch_add(1, Ordering::Relaxed);
        log::info!("net {}: backend connected", self.spec.socket.display());
        if c.active {
            self.start_or_fail(&mut c);
            if c.broken {
                c.link = None;
                return Err(NetError::BadBackend {
                    path: self.spec.socket.clone(),
                    what: "ring setup failed after reconnecting".into(),
                });
            }
        }
        Ok(())
    }

    /// Reports the backend lost for good (no-reconnect).
    fn report_lost(&self) {
        log::error!(
            "net {}: backend lost (no-reconnect)",
            self.spec.socket.display()
        );
        self.lost.store(true, Ordering::Release);
        let _ = self.lost_event.write(1);
        for c in &self.calls {
            let _ = c.write(1);
        }
    }

    /// The supervisor: watches the link, replaces it when it breaks.
    fn supervise(&self) {
        let mut backoff = BACKOFF_MIN;
        let mut reported = false;
        while !self.shutdown.load(Ordering::Acquire) {
            let watch = {
                let c = lock(&self.conn);
                match (&c.link, c.broken) {
                    (Some(l), false) => Some(l.watch.clone()),
                    _ => None,
                }
            };
            if let Some(w) = watch {
                self.watch_link(&w);
                continue;
            }
            let had_link = {
                let mut c = lock(&self.conn);
                c.started = false;
                if self.spec.reconnect {
                    c.link.take().is_some()
                } else {
                    // Keep the dead socket open: its descriptor is in the VMM's hang-up
                    // watcher (hangup_fds) and must not be reused meanwhile.
                    c.link.is_some()
                }
            };
            if had_link {
                log::warn!(
                    "net {}: backend disconnected{}",
                    self.spec.socket.display(),
                    if self.spec.reconnect {
                        "; reconnecting"
                    } else {
                        ""
                    }
                );
                if !self.spec.reconnect {
                    self.report_lost();
                    return;
                }
                backoff = BACKOFF_MIN;
                reported = false;
            }
            match self.try_connect() {
                Ok(Some(stream)) => match self.establish(stream) {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                    Err(e) => log::warn!("net {}: {e}", self.spec.socket.display()),
                },
                Ok(None) => {}
                Err(e) if !reported => {
                    log::warn!("net {}: {e}; retrying", self.spec.socket.display());
                    reported = true;
                }
                Err(_) => {}
            }
            if self.listener.is_some() {
                // Accepting needs no backoff: wait for the switch to dial in.
                self.wait_retry(Some(BACKOFF_MAX));
            } else {
                self.wait_retry(Some(backoff));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Blocks until the link hangs up (then marks it broken) or the supervisor is woken.
    fn watch_link(&self, w: &Arc<UnixStream>) {
        // Raw poll(2): nix's PollFlags does not know POLLRDHUP and would hide it.
        let mut fds = [
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            // Replies to requests make the socket readable; only a hang-up matters here.
            libc::pollfd {
                fd: w.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call,
        // and both descriptors stay open (owned by `self` and by `w`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!("net {}: poll failed: {e}", self.spec.socket.display());
                thread::sleep(BACKOFF_MIN);
            }
            return;
        }
        if fds[0].revents != 0 {
            let _ = self.wake.read();
        }
        if fds[1].revents != 0 {
            let mut c = lock(&self.conn);
            let same = c.link.as_ref().is_some_and(|l| Arc::ptr_eq(&l.watch, w));
            if same {
                self.mark_broken(&mut c);
            }
        }
    }
}

impl VirtioNet {
    /// Creates the device at MMIO `base`, connects to its backend (waiting up to
    /// `spec.connect_timeout`) and starts the supervisor thread.
    ///
    /// `mem` is the VM's RAM; every region must be file-backed (memfd) so the backend can
    /// map it. With `vm`, QueueNotify (`base + 0x50`) is registered as a KVM ioeventfd per
    /// queue (4-byte write, datamatch = queue index) on the queue's kick eventfd.
    pub fn new(spec: NetSpec, mem: GuestMemoryMmap, vm: Option<&VmFd>, base: u64) -> Result<Self> {
        let efd = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        let kicks = [efd()?, efd()?];
        let calls = [efd()?, efd()?];
        let listener = if spec.client {
            Some(listen(&spec.socket)?)
        } else {
            None
        };
        let mut shared = Shared {
            mac: spec.mac.unwrap_or([0; 6]),
            spec,
            mem,
            regs: Mutex::new(MmioRegs::new(
                DEVICE_ID_NET,
                0,
                &[QUEUE_MAX_SIZE; NUM_QUEUES],
            )),
            conn: Mutex::new(ConnState {
                link: None,
                broken: false,
                active: false,
                started: false,
                ever_started: false,
            }),
            kicks,
            calls,
            wake: efd()?,
            lost_event: efd()?,
            lost: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            listener,
            connections: AtomicU64::new(0),
        };
        // Fail early on memory a backend cannot map.
        shared.regions()?;

        let mut link = shared.first_link()?;
        let mac = match shared.spec.mac {
            Some(m) => m,
            None => shared
                .backend_mac(&mut link)?
                .unwrap_or_else(|| derived_mac(&shared.spec.socket)),
        };
        shared.mac = mac;
        let device_features = (link.offered & PASSTHROUGH_FEATURES) | OWN_FEATURES;
        if device_features & F_VERSION_1 == 0 {
            return Err(NetError::MissingFeatures {
                path: shared.spec.socket.clone(),
                missing: F_VERSION_1,
                offered: link.offered,
            });
        }
        {
            let mut regs = MmioRegs::new(DEVICE_ID_NET, device_features, &[QUEUE_MAX_SIZE; 2]);
            regs.set_config(&config_space(&mac));
            *lock(&shared.regs) = regs;
            lock(&shared.conn).link = Some(link);
        }
        shared.connections.store(1, Ordering::Relaxed);
        log::info!(
            "net {}: connected, mac {}, features {device_features:#x}",
            shared.spec.socket.display(),
            format_mac(&mac)
        );

        if let Some(vm) = vm {
            let addr = base + reg::QUEUE_NOTIFY;
            for (queue, kick) in shared.kicks.iter().enumerate() {
                vm.register_ioevent(kick, &IoEventAddress::Mmio(addr), queue as u32)
                    .map_err(|source| NetError::IoEvent {
                        queue,
                        addr,
                        source,
                    })?;
            }
        }

        let shared = Arc::new(shared);
        let s = shared.clone();
        let supervisor = thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || s.supervise())
            .map_err(NetError::Thread)?;
        Ok(VirtioNet {
            shared,
            supervisor: Some(supervisor),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.shared.mac
    }

    /// Features offered to the guest.
    pub fn device_features(&self) -> u64 {
        lock(&self.shared.regs).device_features()
    }

    /// Notifies queue `queue` (the path of a QueueNotify write that reaches userspace: no
    /// ioeventfd registered, as in tests).
    pub fn notify(&self, queue: u32) {
        match self.shared.kicks.get(queue as usize) {
            Some(k) => {
                let _ = k.write(1);
            }
            None => log::debug!("virtio-net: notify of queue {queue} ignored"),
        }
    }

    /// Connections made to the backend so far (1 after `new`, +1 per reconnect).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The guest driver is running and its rings are set up on a live connection.
    pub fn is_running(&self) -> bool {
        let c = lock(&self.shared.conn);
        c.active && c.started && !c.broken && c.link.is_some()
    }

    /// Linux guests: delivers the backend's used-buffer notifications as interrupts on `gsi`
    /// (both call eventfds become KVM irqfds) and makes `InterruptStatus` report them. The
    /// idle wait of CPL-3 guests must then not poll [`Device::call_fds`] (KVM consumes them).
    pub fn register_irqfd(&self, vm: &VmFd, gsi: u32) -> Result<()> {
        for (queue, call) in self.shared.calls.iter().enumerate() {
            vm.register_irqfd(call, gsi)
                .map_err(|source| NetError::IrqFd { queue, gsi, source })?;
        }
        lock(&self.shared.regs).set_vring_interrupt_always(true);
        Ok(())
    }

    /// An eventfd that becomes readable when [`Device::backend_lost`] turns `Some`.
    pub fn lost_fd(&self) -> RawFd {
        self.shared.lost_event.as_raw_fd()
    }
}

impl Shared {
    /// The first connection, within `connect_timeout`.
    fn first_link(&self) -> Result<Link> {
        let deadline = Instant::now() + self.spec.connect_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            if let Some(stream) = self.try_connect()? {
                return self.handshake(stream);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NetError::Timeout {
                    path: self.spec.socket.clone(),
                    what: if self.listener.is_some() {
                        "connected"
                    } else {
                        "listening"
                    },
                    timeout: self.spec.connect_timeout,
                });
            }
            self.wait_retry(Some(backoff.min(left)));
            backoff = (backoff * 2).min(BACKOFF_MIN * 4);
        }
    }
}

/// Listens on `path` (client mode), replacing a stale socket file but not a live one.
fn listen(path: &Path) -> Result<UnixListener> {
    let err = |source| NetError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on it",
            )));
        }
        fs::remove_file(path).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

impl Device for VirtioNet {
    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.shared.regs).read(offset, data);
    }

    fn mmio_write(&self, offset: u64, data: &[u8]) {
        let action = lock(&self.shared.regs).write(offset, data);
        match action {
            Action::None => {}
            Action::Notify(q) => self.notify(q),
            Action::Activate => self.shared.activate(),
            Action::Reset => self.shared.deactivate(),
        }
    }

    fn call_fds(&self) -> Vec<RawFd> {
        self.shared.calls.iter().map(|c| c.as_raw_fd()).collect()
    }

    /// Only with `no-reconnect`: the vhost-user socket (kept open after a hang-up, so the
    /// descriptor stays valid for the VMM's watcher). A reconnecting device handles hang-ups
    /// itself.
    fn hangup_fds(&self) -> Vec<RawFd> {
        if self.shared.spec.reconnect {
            return Vec::new();
        }
        lock(&self.shared.conn)
            .link
            .as_ref()
            .map(|l| vec![l.watch.as_raw_fd()])
            .unwrap_or_default()
    }

    fn backend_lost(&self) -> Option<String> {
        self.shared.lost.load(Ordering::Acquire).then(|| {
            format!(
                "vhost-user backend on {} disconnected (no-reconnect)",
                self.shared.spec.socket.display()
            )
        })
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _ = self.shared.wake.write(1);
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
        if self.shared.listener.is_some() {
            let _ = fs::remove_file(&self.shared.spec.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let c = config_space(&[2, 0, 0, 0, 0, 1]);
        assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), NET_S_LINK_UP);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
    }

    #[test]
    fn derived_mac_is_local_unicast_and_stable() {
        let a = derived_mac(Path::new("/run/a.sock"));
        let b = derived_mac(Path::new("/run/b.sock"));
        assert_eq!(a, derived_mac(Path::new("/run/a.sock")));
        assert_ne!(a, b);
        assert_eq!(a[0] & 3, 2);
        assert_eq!(
            format_mac(&[2, 0x56, 0x4d, 0, 0xab, 1]),
            "02:56:4d:00:ab:01"
        );
    }

    #[test]
    fn spec_defaults() {
        let s = NetSpec::new("/tmp/x.sock");
        assert!(!s.client);
        assert!(s.reconnect);
        assert_eq!(s.mac, None);
    }
}
