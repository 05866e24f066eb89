//! In-place upgrade: `patchbay-switch --takeover` starts beside the running switch and is
//! handed, over the control socket, everything that lets it serve the same guests without
//! them noticing: the control and metrics listeners, every vhost-user port's listening
//! socket, and every connected frontend with its memory table and ring state.
//!
//! The conversation on one control connection (docs/upgrade.md):
//! 1. new → old: `{"version":1,"command":"takeover"}`.
//! 2. old: parks every port's connection thread between two messages, then locks every ring
//!    (no batch runs, no frame lands), writes down the state and answers
//!    `{"ok":true,"result":{"fds":N}}`, then the N file descriptors (SCM_RIGHTS, in chunks),
//!    then the handover as one JSON line.
//! 3. new: sets every port up again from it, without serving anything yet, and answers
//!    `{"ready":true}` (or `{"ready":false,"error":...}`).
//! 4. old: on ready, answers `{"released":true}` and exits with the rings still locked; on
//!    anything else (an error, the new process gone, no answer in time) it unlocks the rings,
//!    resumes its connection threads and goes on as before.
//! 5. new: once the old process is gone (the connection closes), opens what cannot be shared
//!    (host ports, the VXLAN socket), starts its dataplane and serves the adopted sockets.
//!
//! Frames are not lost while paused: guests' transmit rings fill and wait, and nothing
//! arrives for their receive rings except from host ports and tunnels.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::control::server::TakeoverHook;
use crate::port::handover::{self, FdTable, HandoverError, SessionState};
use crate::port::pause::Parked;
use crate::port::ring::RingState;
use crate::state::{SavedState, StateFile};
use crate::switch::Switch;

/// Version of the handover JSON; a process refuses a newer one.
pub const HANDOVER_VERSION: u32 = 1;
/// How long the old process waits for its connection threads to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the old process waits, paused, for the new one to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the new process waits for the old one to exit after releasing.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors per SCM_RIGHTS message (the kernel takes at most 253).
const FD_CHUNK: usize = 128;
/// Longest handover line read (bytes).
const MAX_HANDOVER_LEN: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot reach the running switch at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the running switch refused the takeover: {0}")]
    Refused(String),
    #[error("the new process gave up: {0}")]
    NotReady(String),
    #[error("the handover broke off while {doing}: {source}")]
    Io {
        doing: &'static str,
        source: std::io::Error,
    },
    #[error("the handover is malformed: {0}")]
    Malformed(String),
    #[error("the handover is version {found}; this binary reads up to version {HANDOVER_VERSION}")]
    Version { found: u32 },
    #[error("the running switch went on instead of letting go: {0}")]
    Aborted(String),
    #[error(transparent)]
    Port(#[from] HandoverError),
    #[error("{0}")]
    Pause(#[from] crate::port::pause::PauseTimeout),
}

fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> TakeoverError {
    move |source| TakeoverError::Io { doing, source }
}

/// Everything handed over, as one JSON line; fds by their index in the [`FdTable`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    pub version: u32,
    /// The old process, for the new one's log.
    pub from: String,
    /// The running configuration (ports, VLANs, flows, groups, meters, tunnel entries).
    pub state: SavedState,
    pub control: usize,
    pub metrics: Option<usize>,
    pub ports: Vec<PortHandover>,
}

/// One port's sockets and frontend (a vhost-user port), or its tap device (an internal
/// port).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortHandover {
    pub name: String,
    pub listener: Option<usize>,
    pub stream: Option<usize>,
    pub session: Option<SessionState>,
    #[serde(default)]
    pub device: Option<DeviceHandover>,
}

/// An internal port's tap device: its name and its queues' fds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceHandover {
    pub name: String,
    pub queues: Vec<usize>,
    pub offloads: bool,
}

/// What the old process hands over besides its ports.
pub struct Source {
    pub switch: Arc<Switch>,
    /// Captures the running configuration (the state file's, or one kept just for this).
    pub snapshot: Arc<StateFile>,
    pub control: UnixListener,
    pub metrics: Option<TcpListener>,
}

fn lock(ring: &std::sync::Mutex<RingState>) -> MutexGuard<'_, RingState> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts a duplicate of a listening or connected socket in the table.
fn dup(
    fds: &mut FdTable,
    what: &str,
    fd: std::io::Result<OwnedFd>,
) -> Result<usize, TakeoverError> {
    fd.map(|fd| fds.push(fd))
        .map_err(|e| TakeoverError::Refused(format!("cannot duplicate the {what} socket: {e}")))
}

fn peer_pid(stream: &UnixStream) -> String {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_or_else(|_| "?".into(), |c| c.pid().to_string())
}

fn write_line(mut stream: &UnixStream, value: &serde_json::Value) -> std::io::Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    stream.write_all(text.as_bytes())
}

impl Source {
    /// The control server's way in.
    pub fn hook(self) -> TakeoverHook {
        let source = Arc::new(self);
        Arc::new(move |stream| source.serve(stream))
    }

    /// Hands the switch over on `stream` and exits, or says why not and goes on.
    fn serve(&self, stream: UnixStream) {
        let pid = peer_pid(&stream);
        log::info!("takeover requested by process {pid}: pausing the ports");
        let started = Instant::now();
        let parked = match self.switch.pause().pause_all(PAUSE_TIMEOUT) {
            Ok(parked) => parked,
            Err(e) => {
                log::error!("takeover refused: {e}");
                let _ = write_line(
                    &stream,
                    &serde_json::json!({"ok": false, "error": e.to_string()}),
                );
                return;
            }
        };
        // Only returns if the handover failed (on success the process has exited).
        let e = self.hand_over(&stream, &parked, started);
        drop(parked);
        self.switch.pause().resume();
        log::error!(
            "takeover by process {pid} failed after {:?}; this switch goes on serving: {e}",
            started.elapsed()
        );
    }

    /// With every connection thread parked: locks every ring, sends the state, and on the
    /// new process's ready exits holding the locks. Returns why it did not.
    fn hand_over(&self, stream: &UnixStream, parked: &[Parked], started: Instant) -> TakeoverError {
        let refuse = |e: TakeoverError| {
            let _ = write_line(
                stream,
                &serde_json::json!({"ok": false, "error": e.to_string()}),
            );
            e
        };
        if let Some(problem) = parked.iter().find_map(|p| p.problem.clone()) {
            return refuse(TakeoverError::Refused(problem));
        }
        // Every ring of every connected frontend, TX rings first: the frame path holds a TX
        // ring while it takes RX rings, never the other way round.
        let sessions: Vec<_> = parked.iter().filter_map(|p| p.session.as_ref()).collect();
        let tx: Vec<Vec<MutexGuard<'_, RingState>>> = sessions
            .iter()
            .map(|s| s.link.pairs().iter().map(|p| lock(&p.tx)).collect())
            .collect();
        let rx: Vec<Vec<MutexGuard<'_, RingState>>> = sessions
            .iter()
            .map(|s| s.link.pairs().iter().map(|p| lock(&p.rx)).collect())
            .collect();
        let frozen = started.elapsed();

        let (handover, fds) = match self.describe(parked, &tx, &rx) {
            Ok(described) => described,
            Err(e) => return refuse(e),
        };
        let count = fds.len();
        if let Err(e) = send(stream, &handover, fds) {
            return e;
        }
        log::info!(
            "takeover: {} port(s) and {count} file descriptors handed over ({:?} after the request, rings held since {frozen:?}); waiting for the new process",
            handover.ports.len(),
            started.elapsed()
        );
        match await_ready(stream) {
            Ok(()) => {
                self.switch.pause().commit();
                let _ = write_line(stream, &serde_json::json!({"released": true}));
                log::info!(
                    "takeover: the new process serves the ports; exiting ({:?} after the request)",
                    started.elapsed()
                );
                log::logger().flush();
                // With the rings still locked: nothing of this process touches them again.
                std::process::exit(0);
            }
            Err(e) => {
                let _ = write_line(
                    stream,
                    &serde_json::json!({"released": false, "error": e.to_string()}),
                );
                e
            }
        }
    }

    /// The handover and its fds, from the parked threads and the locked rings.
    fn describe(
        &self,
        parked: &[Parked],
        tx: &[Vec<MutexGuard<'_, RingState>>],
        rx: &[Vec<MutexGuard<'_, RingState>>],
    ) -> Result<(Handover, FdTable), TakeoverError> {
        let mut fds = FdTable::default();
        let control = dup(
            &mut fds,
            "control",
            self.control.try_clone().map(OwnedFd::from),
        )?;
        let metrics = match &self.metrics {
            Some(m) => Some(dup(&mut fds, "metrics", m.try_clone().map(OwnedFd::from))?),
            None => None,
        };
        let mut ports = Vec::with_capacity(parked.len());
        let mut link = 0;
        for p in parked {
            let listener = match &p.listener {
                Some(l) => Some(dup(&mut fds, "port", l.try_clone().map(OwnedFd::from))?),
                None => None,
            };
            let (stream, session) = match &p.session {
                Some(s) => {
                    let handler = s.handler.lock().unwrap_or_else(|p| p.into_inner());
                    let rings: Vec<&RingState> = rx[link]
                        .iter()
                        .zip(&tx[link])
                        .flat_map(|(r, t)| [&**r, &**t])
                        .collect();
                    link += 1;
                    let state = handover::capture(&handler, &rings, &mut fds)?;
                    let stream = dup(
                        &mut fds,
                        "connection",
                        s.stream.try_clone().map(OwnedFd::from),
                    )?;
                    (Some(stream), Some(state))
                }
                None => (None, None),
            };
            ports.push(PortHandover {
                name: p.port.name.clone(),
                listener,
                stream,
                session,
                device: None,
            });
        }
        // Internal ports' tap devices: handed over, the device (and what the host set on
        // it) survives. Uplinks' sockets are opened again by the new process.
        for port in self.switch.ports() {
            if port.kind != crate::port::PortKind::Internal {
                continue;
            }
            let Some(device) = self
                .switch
                .fabric()
                .host_egress(&port)
                .and_then(|e| e.handover())
            else {
                continue;
            };
            ports.push(PortHandover {
                name: port.name.clone(),
                listener: None,
                stream: None,
                session: None,
                device: Some(DeviceHandover {
                    name: port.config.interface_name().to_string(),
                    queues: device
                        .queues
                        .into_iter()
                        .map(|f| fds.push(OwnedFd::from(f)))
                        .collect(),
                    offloads: device.offloads,
                }),
            });
        }
        let handover = Handover {
            version: HANDOVER_VERSION,
            from: format!(
                "patchbay-switch {} (process {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            state: self.snapshot.capture(&self.switch),
            control,
            metrics,
            ports,
        };
        Ok((handover, fds))
    }
}

/// Sends the answer line, the fds and the handover line.
fn send(stream: &UnixStream, handover: &Handover, fds: FdTable) -> Result<(), TakeoverError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = fds.into_fds();
    write_line(
        stream,
        &serde_json::json!({"ok": true, "result": {"fds": fds.len()}}),
    )
    .map_err(io("answering"))?;
    for chunk in fds.chunks(FD_CHUNK) {
        let raw: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| TakeoverError::Io {
            doing: "sending file descriptors",
            source: e.into(),
        })?;
    }
    let mut text = serde_json::to_string(handover)
        .map_err(|e| TakeoverError::Malformed(format!("cannot write it: {e}")))?;
    text.push('\n');
    (&mut &*stream)
        .write_all(text.as_bytes())
        .map_err(io("sending the handover"))
}

/// The new process's answer: Ok on `{"ready":true}`.
fn await_ready(stream: &UnixStream) -> Result<(), TakeoverError> {
    stream
        .set_read_timeout(Some(READY_TIMEOUT))
        .map_err(io("waiting for the new process"))?;
    let mut line = Vec::new();
    BufReader::new(stream)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(io("waiting for the new process"))?;
    if line.is_empty() {
        return Err(TakeoverError::NotReady(
            "it closed the connection (exited?)".into(),
        ));
    }
    let answer: serde_json::Value = serde_json::from_slice(&line)
        .map_err(|e| TakeoverError::Malformed(format!("its answer: {e}")))?;
    verdict(&answer, "ready").map_err(TakeoverError::NotReady)
}

/// Whether `answer` says `{key: true}`; else the reason it gives (`error`).
fn verdict(answer: &serde_json::Value, key: &str) -> Result<(), String> {
    if answer.get(key) == Some(&serde_json::Value::Bool(true)) {
        return Ok(());
    }
    let why = answer.get("error").and_then(|e| e.as_str());
    Err(why.unwrap_or("no reason given").to_string())
}

/// Reads one line without reading past it (what follows may carry file descriptors).
fn read_line_unbuffered(mut stream: &UnixStream) -> Result<Vec<u8>, TakeoverError> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match stream.read(&mut byte).map_err(io("reading the answer"))? {
            0 => {
                return Err(TakeoverError::Io {
                    doing: "reading the answer",
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                })
            }
            _ if byte[0] == b'\n' => return Ok(line),
            _ if line.len() > 64 * 1024 => {
                return Err(TakeoverError::Malformed("answer line too long".into()))
            }
            _ => line.push(byte[0]),
        }
    }
}

fn receive_fds(stream: &UnixStream, count: usize) -> Result<Vec<OwnedFd>, TakeoverError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let mut byte = [0u8];
        let mut space = nix::cmsg_space!([RawFd; FD_CHUNK]);
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| TakeoverError::Io {
            doing: "receiving file descriptors",
            source: e.into(),
        })?;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        let mut got = 0;
        for cmsg in msg.cmsgs().map_err(|e| TakeoverError::Io {
            doing: "receiving file descriptors",
            source: e.into(),
        })? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in this process for us
                    // (SCM_RIGHTS); nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    got += 1;
                }
            }
        }
        if msg.bytes == 0 {
            return Err(TakeoverError::Io {
                doing: "receiving file descriptors",
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        if truncated || got == 0 {
            return Err(TakeoverError::Malformed(format!(
                "file descriptors lost in transit ({} of {count} arrived)",
                fds.len()
            )));
        }
    }
    Ok(fds)
}

/// Waits until process `pid` has exited (its pidfd becomes readable once every thread is
/// gone, and with them its files); at once if it is gone already.
fn wait_for_exit(pid: i32, timeout: Duration) -> std::io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(e),
        };
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
        PollFlags::POLLIN,
    )];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("process {pid} still runs after {timeout:?}"),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The new process's side: the handover received, the old process paused, waiting for
/// [`Incoming::ready`] or [`Incoming::fail`].
pub struct Incoming {
    pub handover: Handover,
    pub fds: FdTable,
    conn: BufReader<UnixStream>,
    /// The old process (its credentials on the connection), watched until it has exited.
    old_pid: Option<i32>,
    /// When the takeover was requested.
    pub started: Instant,
}

/// What was handed over of one port.
pub enum Handed {
    Vhost(crate::switch::AdoptedPort),
    Device(crate::dataplane::HostDevice),
}

/// Asks the switch on `control` to hand over (the new process's first step).
pub fn request(control: &Path) -> Result<Incoming, TakeoverError> {
    let stream = UnixStream::connect(control).map_err(|source| TakeoverError::Connect {
        path: control.to_path_buf(),
        source,
    })?;
    let started = Instant::now();
    let old_pid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid());
    (&stream)
        .write_all(b"{\"version\":1,\"command\":\"takeover\"}\n")
        .map_err(io("asking"))?;
    let answer: serde_json::Value = serde_json::from_slice(&read_line_unbuffered(&stream)?)
        .map_err(|e| TakeoverError::Malformed(format!("the answer: {e}")))?;
    verdict(&answer, "ok").map_err(TakeoverError::Refused)?;
    let count = answer
        .pointer("/result/fds")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| TakeoverError::Malformed("the answer has no fd count".into()))?;
    let count = usize::try_from(count)
        .map_err(|_| TakeoverError::Malformed(format!("{count} file descriptors")))?;
    let fds = FdTable::received(receive_fds(&stream, count)?);
    let mut conn = BufReader::new(stream);
    let mut line = Vec::new();
    (&mut conn)
        .take(MAX_HANDOVER_LEN)
        .read_until(b'\n', &mut line)
        .map_err(io("receiving the handover"))?;
    let value: serde_json::Value = serde_json::from_slice(&line)
        .map_err(|e| TakeoverError::Malformed(format!("the handover: {e}")))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| TakeoverError::Malformed("the handover has no version".into()))?;
    if version > u64::from(HANDOVER_VERSION) {
        let found = u32::try_from(version).unwrap_or(u32::MAX);
        let e = TakeoverError::Version { found };
        let mut incoming_conn = conn.into_inner();
        let _ = write_line(
            &incoming_conn,
            &serde_json::json!({"ready": false, "error": e.to_string()}),
        );
        let _ = incoming_conn.flush();
        return Err(e);
    }
    let handover: Handover = serde_json::from_value(value)
        .map_err(|e| TakeoverError::Malformed(format!("the handover: {e}")))?;
    Ok(Incoming {
        handover,
        fds,
        conn,
        old_pid,
        started,
    })
}

impl Incoming {
    /// What was handed over of port `port` (as this process's config describes it): a
    /// vhost-user port's sockets, or an internal port's tap device if it is the same device
    /// (name and queues) the config asks for; taken out of the table.
    pub fn take_port(
        &mut self,
        port: &crate::port::PortConfig,
    ) -> Result<Option<Handed>, TakeoverError> {
        let name = &port.name;
        let Some(index) = self.handover.ports.iter().position(|p| &p.name == name) else {
            return Ok(None);
        };
        let p = self.handover.ports.remove(index);
        if let Some(d) = p.device {
            let same = port.kind == crate::port::PortKind::Internal
                && d.name == port.interface_name()
                && d.queues.len() == port.queue_pairs.map_or(1, usize::from);
            let mut queues = Vec::with_capacity(d.queues.len());
            for i in d.queues {
                queues.push(std::fs::File::from(self.fds.take(i)?));
            }
            if !same {
                log::warn!(
                    "takeover: port {name}: the config changed its device; {} is created anew",
                    port.interface_name()
                );
                return Ok(None);
            }
            return Ok(Some(Handed::Device(crate::dataplane::HostDevice {
                queues,
                offloads: d.offloads,
            })));
        }
        let listener = p
            .listener
            .map(|i| self.fds.take(i).map(UnixListener::from))
            .transpose()?;
        let session = match (p.stream, p.session) {
            (Some(i), Some(state)) => Some((UnixStream::from(self.fds.take(i)?), state)),
            (None, None) => None,
            _ => {
                return Err(TakeoverError::Malformed(format!(
                    "port {name}: a connection without its state, or the other way round"
                )))
            }
        };
        Ok(Some(Handed::Vhost(crate::switch::AdoptedPort {
            listener,
            session,
        })))
    }

    /// Tells the old process this one is ready, and waits until it has let go and exited.
    /// Afterwards this process alone serves the ports.
    pub fn ready(mut self) -> Result<Duration, TakeoverError> {
        write_line(self.conn.get_ref(), &serde_json::json!({"ready": true}))
            .map_err(io("saying ready"))?;
        self.conn
            .get_ref()
            .set_read_timeout(Some(EXIT_TIMEOUT))
            .map_err(io("waiting for the old process"))?;
        let mut line = Vec::new();
        (&mut self.conn)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .map_err(io("waiting for the old process"))?;
        if !line.is_empty() {
            let answer: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| TakeoverError::Malformed(format!("its release: {e}")))?;
            verdict(&answer, "released").map_err(TakeoverError::Aborted)?;
        }
        // Then the end of the connection, and the end of the process: the connection
        // closes while the exiting process is still closing its other fds (AF_XDP sockets,
        // tap devices, the VXLAN socket, which this one opens next); its exit comes after.
        let mut rest = Vec::new();
        (&mut self.conn)
            .take(64 * 1024)
            .read_to_end(&mut rest)
            .map_err(io("waiting for the old process to exit"))?;
        if let Some(pid) = self.old_pid {
            wait_for_exit(pid, EXIT_TIMEOUT).map_err(io("waiting for the old process to exit"))?;
        }
        Ok(self.started.elapsed())
    }

    /// Tells the old process to go on: this one cannot take over.
    pub fn fail(self, why: &str) {
        let _ = write_line(
            self.conn.get_ref(),
            &serde_json::json!({"ready": false, "error": why}),
        );
    }
}
