//! Keeping a port connected: in server mode accept frontends one after another on the
//! port's socket; in client mode dial the frontend's socket, forever, with capped exponential
//! backoff (like Open vSwitch's dpdkvhostuserclient). Each connection gets a fresh `Link`, so
//! nothing of a previous frontend's state survives into the next.
//!
//! Per connection there is one thread, this one, reading vhost-user messages; the dataplane
//! workers (the `worker` module, above this one) serve the rings, and the doorbell tells
//! them when rings change.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{BackendReqHandler, Error as VhostError, VhostUserBackendReqHandlerMut};

use super::backend::DeviceHandler;
use super::pause::{Gate, Parked, ParkedSession, Pause};
use super::Doorbell;
use super::{ConnectMode, Link, LinkState, Port};
use crate::mac_table::PortId;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a port's connection needs from the switch that owns the port (the port knows
/// nothing of the switch itself).
#[derive(Clone)]
pub struct ConnectionContext {
    /// Most guest memory the frontend may map (`max_guest_memory_gib`).
    pub memory_limit_gib: u64,
    /// Rung when the rings change, so the dataplane workers look again.
    pub doorbell: Arc<Doorbell>,
    /// Forgets what was learned behind a port whose frontend went away; returns how many
    /// addresses.
    pub forget_port: Arc<dyn Fn(PortId) -> usize + Send + Sync>,
    /// Holds connection threads between messages for a takeover.
    pub pause: Arc<Pause>,
    /// Sends a RARP broadcast from the MAC given, as if the port's guest had (SEND_RARP).
    pub announce: Announce,
}

/// Broadcasts a RARP from a MAC behind a port (see [`ConnectionContext::announce`]).
pub type Announce = Arc<dyn Fn(&Port, [u8; 6]) + Send + Sync>;

/// Starts the thread that keeps `port` connected until it is removed. In server mode the
/// socket is created here, before returning, so a bad path is an error for the caller.
pub fn spawn(ctx: ConnectionContext, port: Arc<Port>) -> std::io::Result<thread::JoinHandle<()>> {
    let listener = match port.config.mode {
        ConnectMode::Server => Some(listen(&port.config)?),
        ConnectMode::Client => None,
    };
    spawn_adopted(ctx, port, listener, None, Arc::new(Gate::open()))
}

/// [`spawn`] with what another process handed over (`--takeover`): the port's listening
/// socket and its connected frontend, served once `gate` opens.
pub fn spawn_adopted(
    ctx: ConnectionContext,
    port: Arc<Port>,
    listener: Option<UnixListener>,
    session: Option<Session>,
    gate: Arc<Gate>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("port-{}", port.name))
        .spawn(move || {
            let _registration = ctx.pause.enter();
            gate.wait();
            if let Some(session) = session {
                run_session(&ctx, &port, session, listener.as_ref());
            }
            match listener {
                Some(listener) => serve(&ctx, &port, listener),
                None => dial(&ctx, &port),
            }
        })
}
/// Listens on a server-mode port's socket, with the mode and group its config asks for.
fn listen(config: &super::PortConfig) -> std::io::Result<UnixListener> {
    let path = &config.socket;
    let listener = bind(path)?;
    let fail = |what: String| std::io::Error::other(format!("{}: {what}", path.display()));
    if let Some(group) = &config.socket_group {
        let gid = super::resolve_group(group).map_err(fail)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| fail(format!("cannot give it to group {group}: {e}")))?;
    }
    if let Some(mode) = &config.socket_mode {
        let mode = super::parse_socket_mode(mode).map_err(fail)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| fail(format!("cannot set mode {mode:o}: {e}")))?;
    }
    Ok(listener)
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })
}

/// Wakes a supervisor blocked in `accept()` so it notices the port was removed.
pub fn wake(port: &Port) {
    if port.config.mode == ConnectMode::Server {
        let _ = UnixStream::connect(&port.config.socket);
    }
}

/// Sleeps up to `d`, returning early (true) if the port is removed meanwhile, or (false) if
/// a pause is requested (the caller parks).
fn sleep_unless_removed(ctx: &ConnectionContext, port: &Port, d: Duration) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if port.is_removed() {
            return true;
        }
        if ctx.pause.requested() {
            return false;
        }
        let s = left.min(step);
        thread::sleep(s);
        left -= s;
    }
    port.is_removed()
}

/// What woke a connection thread.
enum Wake {
    /// The socket has something (a message, a connection, a hangup).
    Socket,
    /// A pause was requested: park before reading anything.
    Pause,
}

/// Waits until `socket` is readable or a pause is requested (the pause first: a message
/// already waiting is left for whoever serves the socket next).
fn wait(ctx: &ConnectionContext, socket: BorrowedFd<'_>) -> Wake {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [
            PollFd::new(ctx.pause.fd(), PollFlags::POLLIN),
            PollFd::new(socket, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                if ready(&fds[0]) {
                    return Wake::Pause;
                }
                if ready(&fds[1]) {
                    return Wake::Socket;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            // Not expected for two valid fds; let the socket call report what is wrong.
            Err(_) => return Wake::Socket,
        }
    }
}

/// Parks this connection thread with what it serves, until the pause ends.
fn park(
    ctx: &ConnectionContext,
    port: &Arc<Port>,
    listener: Option<&UnixListener>,
    session: Option<&Session>,
) {
    let mut problem = None;
    let mut note = |what: &str, e: std::io::Error| {
        problem = Some(format!(
            "port {}: cannot duplicate its {what}: {e}",
            port.name
        ));
    };
    let listener =
        listener.and_then(|l| l.try_clone().map_err(|e| note("listening socket", e)).ok());
    let session = session.and_then(|s| {
        let stream = s
            .stream
            .try_clone()
            .map_err(|e| note("connection", e))
            .ok()?;
        Some(ParkedSession {
            stream,
            handler: s.handler.clone(),
            link: s.link.clone(),
        })
    });
    ctx.pause.park(Parked {
        port: port.clone(),
        listener,
        session,
        problem,
    });
}

fn serve(ctx: &ConnectionContext, port: &Arc<Port>, listener: UnixListener) {
    log::info!(
        "port {}: listening on {}",
        port.name,
        port.config.socket.display()
    );
    while !port.is_removed() {
        port.set_state(LinkState::Listening);
        if let Wake::Pause = wait(ctx, listener.as_fd()) {
            park(ctx, port, Some(&listener), None);
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if port.is_removed() {
                    break;
                }
                if let Some(session) = open_session(ctx, port, stream) {
                    run_session(ctx, port, session, Some(&listener));
                }
            }
            Err(e) => {
                log::warn!("port {}: accept failed: {e}", port.name);
                sleep_unless_removed(ctx, port, BACKOFF_MIN);
            }
        }
    }
    let _ = std::fs::remove_file(&port.config.socket);
}

fn dial(ctx: &ConnectionContext, port: &Arc<Port>) {
    let path = &port.config.socket;
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    while !port.is_removed() {
        if ctx.pause.requested() {
            park(ctx, port, None, None);
            continue;
        }
        port.set_state(LinkState::Connecting);
        match UnixStream::connect(path) {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                reported = false;
                if let Some(session) = open_session(ctx, port, stream) {
                    run_session(ctx, port, session, None);
                }
            }
            Err(e) => {
                if !reported {
                    log::info!(
                        "port {}: cannot reach {} yet ({e}); retrying with backoff",
                        port.name,
                        path.display()
                    );
                    reported = true;
                }
                if sleep_unless_removed(ctx, port, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// `VHOST_USER_SET_VRING_ENABLE`'s request code.
const SET_VRING_ENABLE: u32 = 18;
/// `VHOST_USER_SEND_RARP`'s request code.
const SEND_RARP: u32 = 19;
/// Header flags: a reply, and "the frontend wants a reply" (REPLY_ACK).
const FLAG_REPLY: u32 = 1 << 2;
const FLAG_NEED_REPLY: u32 = 1 << 3;

/// `VHOST_USER_SET_LOG_FD`'s request code.
const SET_LOG_FD: u32 = 7;

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Serves the requests the `vhost` crate's dispatcher does not know (it would close the
/// connection on them): SEND_RARP and SET_LOG_FD. Returns false if the next message is
/// neither (or not acceptable here), leaving it for the dispatcher.
fn serve_outside_dispatcher(ctx: &ConnectionContext, port: &Arc<Port>, session: &Session) -> bool {
    let mut hdr = [0u8; 12];
    let fd = session.stream.as_raw_fd();
    let peeked = nix::sys::socket::recv(fd, &mut hdr, nix::sys::socket::MsgFlags::MSG_PEEK);
    if peeked != Ok(hdr.len()) {
        return false;
    }
    let (rarp, reply_ack) = {
        let h = session.handler.lock().unwrap_or_else(|p| p.into_inner());
        let acked = |f: VhostUserProtocolFeatures| h.acked_protocol_features & f.bits() != 0;
        (
            acked(VhostUserProtocolFeatures::RARP),
            acked(VhostUserProtocolFeatures::REPLY_ACK),
        )
    };
    let (code, size) = (word(&hdr, 0), word(&hdr, 8));
    // On the destination of a migration QEMU sends SEND_RARP before SET_FEATURES (the
    // device starts when the guest runs): the protocol features are all there is to go by.
    let failed = match (code, size) {
        (SEND_RARP, 8) if rarp => send_rarp(ctx, port, session),
        (SET_LOG_FD, 0) => set_log_fd(port, session),
        _ => return false,
    };
    let Some(failed) = failed else {
        return false;
    };
    if reply_ack && word(&hdr, 4) & FLAG_NEED_REPLY != 0 {
        use std::io::Write;
        let mut reply = Vec::with_capacity(20);
        for w in [code, 1 | FLAG_REPLY, 8] {
            reply.extend_from_slice(&w.to_le_bytes());
        }
        reply.extend_from_slice(&u64::from(failed).to_le_bytes());
        let _ = (&session.stream).write_all(&reply);
    }
    true
}

/// SEND_RARP: QEMU sends it after a migration when the guest cannot announce itself (no
/// GUEST_ANNOUNCE), with the guest's MAC; the switch broadcasts a RARP from that MAC as if
/// the guest had, so every learning table on the way (this one, and over tunnels the other
/// hosts') learns where the guest is now. Some(whether it was refused), None if the message
/// could not be read.
fn send_rarp(ctx: &ConnectionContext, port: &Arc<Port>, session: &Session) -> Option<bool> {
    use std::io::Read;
    let mut msg = [0u8; 20];
    (&session.stream).read_exact(&mut msg).ok()?;
    let mac: [u8; 6] = [msg[12], msg[13], msg[14], msg[15], msg[16], msg[17]];
    let ok = mac[0] & 1 == 0 && mac != [0; 6];
    if ok {
        log::info!(
            "port {}: migration done: announcing {} with a RARP broadcast",
            port.name,
            crate::wire::EthernetAddress(mac)
        );
        (ctx.announce)(port, mac);
        port.counters.announcements.fetch_add(1, Ordering::Relaxed);
    } else {
        port.counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        port.log_bad_input(format_args!(
            "SEND_RARP with {} refused: not a unicast address",
            crate::wire::EthernetAddress(mac)
        ));
    }
    Some(!ok)
}

/// SET_LOG_FD: an eventfd the backend may signal after writing to the dirty log. The dirty
/// log is read by QEMU at each migration round whether signalled or not, so the fd is
/// accepted and closed (as DPDK's vhost library does). Some(false), None if unreadable.
fn set_log_fd(port: &Port, session: &Session) -> Option<bool> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut hdr = [0u8; 12];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let mut iov = [std::io::IoSliceMut::new(&mut hdr)];
    let msg = recvmsg::<()>(
        session.stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = 0;
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` for us (SCM_RIGHTS); owning it
                // closes it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                fds += 1;
            }
        }
    }
    if msg.bytes != hdr.len() {
        return None;
    }
    log::debug!(
        "port {}: SET_LOG_FD ({fds} fd) accepted; the dirty log is read without it",
        port.name
    );
    Some(false)
}

/// Peeks at the next message without consuming it: if it is SET_VRING_ENABLE, returns its
/// (ring index, enable) body. The `vhost` crate's dispatcher refuses this message before
/// SET_FEATURES (the spec wants PROTOCOL_FEATURES negotiated first), but QEMU's virtio-net
/// sends it exactly then and never repeats it, so we apply it ourselves.
fn peek_vring_enable(fd: std::os::fd::RawFd) -> Option<(u32, u32)> {
    let mut buf = [0u8; 20];
    let n = nix::sys::socket::recv(fd, &mut buf, nix::sys::socket::MsgFlags::MSG_PEEK).ok()?;
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    (n == buf.len() && word(0) == SET_VRING_ENABLE).then(|| (word(12), word(16)))
}

/// Whether the message that caused `e` was consumed whole, so the connection can go on.
/// These are a frontend's protocol mistakes (or orderings we tolerate, like QEMU's early
/// SET_VRING_ENABLE), not broken sockets.
fn is_recoverable(e: &VhostError) -> bool {
    matches!(
        e,
        VhostError::InactiveFeature(_)
            | VhostError::InactiveOperation(_)
            | VhostError::InvalidParam
            | VhostError::InvalidOperation(_)
            | VhostError::ReqHandlerError(_)
    )
}

/// One connected frontend: its link, its device handler and the message reader.
pub struct Session {
    pub link: Arc<Link>,
    pub handler: Arc<Mutex<DeviceHandler>>,
    pub requests: BackendReqHandler<Mutex<DeviceHandler>>,
    /// The socket (a duplicate of the reader's): polled, and handed over on a takeover.
    pub stream: UnixStream,
}

impl Session {
    /// A session for `stream`: `link` attached to `port` as its current connection.
    pub fn attach(
        ctx: &ConnectionContext,
        port: &Arc<Port>,
        link: Arc<Link>,
        handler: Arc<Mutex<DeviceHandler>>,
        requests: BackendReqHandler<Mutex<DeviceHandler>>,
        stream: UnixStream,
    ) -> std::io::Result<Session> {
        port.set_connection(Some(stream.try_clone()?));
        port.attach(link.clone());
        port.set_state(LinkState::Connected);
        ctx.doorbell.ring();
        Ok(Session {
            link,
            handler,
            requests,
            stream,
        })
    }
}

/// A fresh session for a frontend that just connected.
fn open_session(ctx: &ConnectionContext, port: &Arc<Port>, stream: UnixStream) -> Option<Session> {
    let reader = stream.try_clone().ok()?;
    let link = Arc::new(Link::new(port.config.queue_pairs()));
    let handler = Arc::new(Mutex::new(DeviceHandler::new(
        port.clone(),
        link.clone(),
        ctx.memory_limit_gib,
        ctx.doorbell.clone(),
    )));
    let requests = BackendReqHandler::from_stream(reader, handler.clone());
    let session = Session::attach(ctx, port, link, handler, requests, stream).ok()?;
    port.counters.connects.fetch_add(1, Ordering::Relaxed);
    log::info!("port {}: frontend connected", port.name);
    Some(session)
}

/// Serves one frontend connection to its end, then forgets its rings and learned addresses.
/// Parks between messages while a pause is requested (`listener` is the port's, handed
/// over with the connection).
fn run_session(
    ctx: &ConnectionContext,
    port: &Arc<Port>,
    mut session: Session,
    listener: Option<&UnixListener>,
) {
    if port.is_removed() {
        port.close_connection();
    }
    let raw_fd = session.stream.as_raw_fd();
    loop {
        if let Wake::Pause = wait(ctx, session.stream.as_fd()) {
            park(ctx, port, listener, Some(&session));
            continue;
        }
        if serve_outside_dispatcher(ctx, port, &session) {
            continue;
        }
        let early_enable = peek_vring_enable(raw_fd);
        match session.requests.handle_request() {
            Ok(()) => {}
            Err(VhostError::InactiveFeature(_)) if early_enable.is_some() => {
                // QEMU enables the queue pair before SET_FEATURES; apply it as DPDK does.
                if let Some((index, num)) = early_enable {
                    let mut h = session.handler.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = h.set_vring_enable(index, num == 1);
                }
            }
            Err(e) if is_recoverable(&e) => {
                port.counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                port.log_bad_input(format_args!("vhost-user request refused: {e}"));
            }
            Err(VhostError::Disconnected | VhostError::PartialMessage) => break,
            Err(e) => {
                log::warn!("port {}: closing connection: {e}", port.name);
                break;
            }
        }
    }

    port.set_connection(None);
    port.detach();
    ctx.doorbell.ring();
    let flushed = (ctx.forget_port)(port.id);
    log::info!(
        "port {}: frontend disconnected ({flushed} learned addresses forgotten)",
        port.name
    );
}
