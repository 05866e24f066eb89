//! A connected frontend's device state, written down for another process (`--takeover`)
//! and set up again there, so the guest never sees the switch change.
//!
//! What travels: the negotiated features, the memory table (the frontend's own region fds,
//! so the new process maps the same pages), and per ring its size, addresses, the indexes
//! the device had reached and its kick and call eventfds. File descriptors go beside the
//! JSON over SCM_RIGHTS; the JSON names them by index in an [`FdTable`].
//!
//! The `vhost` crate's message reader keeps its own record of what was negotiated (it
//! decides from it whether a request is answered with REPLY_ACK); it cannot be set from
//! outside, so the new process replays the four negotiation messages to a fresh reader over
//! a socket pair, then puts the frontend's socket in that socket's place (`dup2`).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vhost::vhost_user::message::VhostUserMemoryRegion;
use vhost::vhost_user::{BackendReqHandler, VhostUserBackendReqHandlerMut};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::backend::DeviceHandler;
use super::connection::{ConnectionContext, Session};
use super::ring::RingState;
use super::{Link, Port};
use crate::virtio::features::{VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES};

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "port {port}: its guest is migrating (dirty logging on); take over after the migration"
    )]
    Migrating { port: String },
    #[error("port {port}: cannot duplicate {what}: {source}")]
    Duplicate {
        port: String,
        what: String,
        source: std::io::Error,
    },
    #[error("port {port}: memory region at {gpa:#x} is not backed by a file")]
    Anonymous { port: String, gpa: u64 },
    #[error("the handover names file descriptor {0}, which did not arrive (or came twice)")]
    MissingFd(usize),
    /// (Reported wrapped in the switch's error, which names the port.)
    #[error("cannot set up {what} again: {message}")]
    Restore {
        port: String,
        what: String,
        message: String,
    },
}

/// File descriptors travelling with a handover, named by their index in it.
#[derive(Default)]
pub struct FdTable {
    fds: Vec<Option<OwnedFd>>,
}

impl FdTable {
    pub fn received(fds: Vec<OwnedFd>) -> FdTable {
        FdTable {
            fds: fds.into_iter().map(Some).collect(),
        }
    }

    pub fn push(&mut self, fd: OwnedFd) -> usize {
        self.fds.push(Some(fd));
        self.fds.len() - 1
    }

    /// Each fd can be taken once.
    pub fn take(&mut self, index: usize) -> Result<OwnedFd, HandoverError> {
        self.fds
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(HandoverError::MissingFd(index))
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The fds to send, in index order.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds.into_iter().flatten().collect()
    }
}

/// One frontend's device state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The features the frontend acked (None: it has not sent SET_FEATURES yet).
    pub features: Option<u64>,
    pub protocol_features: u64,
    pub regions: Vec<RegionState>,
    /// Every virtqueue, by index (2k: queue pair k's receive ring, 2k + 1 its transmit ring).
    pub rings: Vec<RingSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    pub gpa: u64,
    pub size: u64,
    /// The frontend's virtual address of the region (SET_VRING_ADDR speaks in those).
    pub user_addr: u64,
    pub file_offset: u64,
    pub file: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingSnapshot {
    pub size: u16,
    /// Guest-physical descriptor table, avail ring and used ring, once all three were set.
    pub addresses: Option<[u64; 3]>,
    pub next_avail: u16,
    pub next_used: u16,
    pub enabled: bool,
    pub started: bool,
    pub kick: Option<usize>,
    pub call: Option<usize>,
}

fn duplicate(port: &Port, what: &str, file: &File) -> Result<OwnedFd, HandoverError> {
    file.try_clone()
        .map(OwnedFd::from)
        .map_err(|source| HandoverError::Duplicate {
            port: port.name.clone(),
            what: what.to_string(),
            source,
        })
}

/// Writes down the state of `handler`'s frontend. `rings` are the link's ring states by
/// virtqueue index, locked by the caller so that no batch moves them meanwhile.
pub fn capture(
    handler: &DeviceHandler,
    rings: &[&RingState],
    fds: &mut FdTable,
) -> Result<SessionState, HandoverError> {
    let port = &handler.port;
    let features = handler.link.features();
    if features & VHOST_F_LOG_ALL != 0 {
        return Err(HandoverError::Migrating {
            port: port.name.clone(),
        });
    }
    let map = handler.link.mem.load();
    let mut regions = Vec::with_capacity(handler.mappings.len());
    for m in &handler.mappings {
        let file = map
            .memory()
            .find_region(GuestAddress(m.gpa))
            .and_then(|r| r.file_offset())
            .ok_or(HandoverError::Anonymous {
                port: port.name.clone(),
                gpa: m.gpa,
            })?;
        regions.push(RegionState {
            gpa: m.gpa,
            size: m.size,
            user_addr: m.vmm_addr,
            file_offset: file.start(),
            file: fds.push(duplicate(port, "a memory region", file.file())?),
        });
    }
    let mut snapshots = Vec::with_capacity(rings.len());
    for (index, ring) in rings.iter().enumerate() {
        let mut fd = |what: &str, f: &Option<File>| {
            f.as_ref()
                .map(|f| {
                    duplicate(port, &format!("ring {index}'s {what} eventfd"), f)
                        .map(|fd| fds.push(fd))
                })
                .transpose()
        };
        let v = &ring.vring;
        snapshots.push(RingSnapshot {
            size: v.size,
            addresses: v.addressed.then_some([v.desc, v.avail, v.used]),
            next_avail: v.next_avail,
            next_used: v.next_used,
            enabled: ring.enabled,
            started: ring.started,
            kick: fd("kick", &ring.kick)?,
            call: fd("call", &ring.call)?,
        });
    }
    Ok(SessionState {
        features: handler.negotiated.then_some(features),
        protocol_features: handler.acked_protocol_features,
        regions,
        rings: snapshots,
    })
}

/// vhost-user request codes replayed to a fresh reader.
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
/// Header flags: protocol version 1.
const VERSION_1: u32 = 1;

fn message(out: &mut Vec<u8>, code: u32, value: Option<u64>) {
    let size = if value.is_some() { 8u32 } else { 0 };
    for word in [code, VERSION_1, size] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    if let Some(v) = value {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Sets up `port`'s frontend again in this process from `state`: the same link, memory and
/// rings, served by a message reader on `stream` that knows what was negotiated.
pub fn restore(
    ctx: &ConnectionContext,
    port: &Arc<Port>,
    stream: UnixStream,
    state: &SessionState,
    fds: &mut FdTable,
) -> Result<Session, HandoverError> {
    let failed = |what: &str, message: String| HandoverError::Restore {
        port: port.name.clone(),
        what: what.to_string(),
        message,
    };
    let link = Arc::new(Link::new(port.config.queue_pairs()));
    if state.rings.len() != link.pairs().len() * 2 {
        return Err(failed(
            "its rings",
            format!(
                "{} rings handed over, the port has {} (queue_pairs changed?)",
                state.rings.len(),
                link.pairs().len() * 2
            ),
        ));
    }
    let handler = Arc::new(Mutex::new(DeviceHandler::new(
        port.clone(),
        link.clone(),
        ctx.memory_limit_gib,
        ctx.doorbell.clone(),
    )));

    // The negotiation, replayed through a socket pair.
    let (ours, mut peer) =
        UnixStream::pair().map_err(|e| failed("a socket pair", e.to_string()))?;
    let ours_fd = ours.as_raw_fd();
    let mut requests = BackendReqHandler::from_stream(ours, handler.clone());
    if let Some(features) = state.features {
        let mut bytes = Vec::new();
        message(&mut bytes, GET_FEATURES, None);
        message(&mut bytes, SET_FEATURES, Some(features));
        let mut count = 2;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            message(&mut bytes, GET_PROTOCOL_FEATURES, None);
            message(
                &mut bytes,
                SET_PROTOCOL_FEATURES,
                Some(state.protocol_features),
            );
            count += 2;
        }
        peer.write_all(&bytes)
            .map_err(|e| failed("the negotiation", e.to_string()))?;
        for _ in 0..count {
            requests
                .handle_request()
                .map_err(|e| failed("the negotiation", e.to_string()))?;
        }
    }
    drop(peer);

    {
        let mut h = handler.lock().unwrap_or_else(|p| p.into_inner());
        if !state.regions.is_empty() {
            let mut regions = Vec::with_capacity(state.regions.len());
            let mut files = Vec::with_capacity(state.regions.len());
            for r in &state.regions {
                regions.push(VhostUserMemoryRegion::new(
                    r.gpa,
                    r.size,
                    r.user_addr,
                    r.file_offset,
                ));
                files.push(File::from(fds.take(r.file)?));
            }
            h.set_mem_table(&regions, files, None)
                .map_err(|e| failed("its memory table", e.to_string()))?;
        }
    }
    for (index, snapshot) in state.rings.iter().enumerate() {
        restore_ring(&link, index, snapshot, fds).map_err(|e| match e {
            RingRestoreError::Fd(e) => e,
            RingRestoreError::Ring(message) => failed(&format!("ring {index}"), message),
        })?;
    }
    link.refresh_up();

    // The frontend's socket takes the socket pair's place under the reader.
    // SAFETY: `ours_fd` is the reader's socket, open and owned by `requests` (alive here);
    // dup2 atomically closes that socket pair end and makes the fd number refer to the
    // frontend's socket instead, so the reader keeps owning one valid fd. `stream` stays
    // open (its own fd) for polling.
    let replaced = unsafe { libc::dup2(stream.as_raw_fd(), ours_fd) };
    if replaced < 0 {
        return Err(failed(
            "its socket",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Session::attach(ctx, port, link, handler, requests, stream)
        .map_err(|e| failed("its connection", e.to_string()))
}

enum RingRestoreError {
    Fd(HandoverError),
    Ring(String),
}

fn restore_ring(
    link: &Link,
    index: usize,
    s: &RingSnapshot,
    fds: &mut FdTable,
) -> Result<(), RingRestoreError> {
    let Some(pair) = link.pair(index / 2) else {
        return Err(RingRestoreError::Ring("no such queue pair".into()));
    };
    let mut eventfd = |i: Option<usize>| {
        i.map(|i| fds.take(i).map(File::from))
            .transpose()
            .map_err(RingRestoreError::Fd)
    };
    let kick = eventfd(s.kick)?;
    let call = eventfd(s.call)?;
    let ring = if index.is_multiple_of(2) {
        &pair.rx
    } else {
        &pair.tx
    };
    let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
    ring.vring
        .set_size(u32::from(s.size))
        .map_err(|e| RingRestoreError::Ring(e.to_string()))?;
    if let Some([desc, avail, used]) = s.addresses {
        ring.vring
            .set_addresses(desc, avail, used)
            .map_err(|e| RingRestoreError::Ring(e.to_string()))?;
    }
    ring.vring.next_avail = s.next_avail;
    ring.vring.next_used = s.next_used;
    ring.enabled = s.enabled;
    ring.started = s.started;
    // The eventfds keep the O_NONBLOCK the old process set: it is a flag of the open file,
    // shared by every duplicate.
    ring.kick = kick;
    ring.call = call;
    ring.kick_generation += 1;
    Ok(())
}
