//! Keeping a port connected: in server mode accept frontends one after another on the
//! port's socket; in client mode dial the frontend's socket, forever, with capped exponential
//! backoff (like Open vSwitch's dpdkvhostuserclient). Each connection gets a fresh `Link`, so
//! nothing of a previous frontend's state survives into the next.
//!
//! Per connection there are two threads: this one, reading vhost-user messages, and a kick
//! thread that waits on the guest's TX kick eventfd and runs the frame path (event mode).

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vhost::vhost_user::{BackendReqHandler, Error as VhostError, VhostUserBackendReqHandlerMut};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::DeviceHandler;
use super::{ConnectMode, Link, LinkState, Port};
use crate::dataplane;
use crate::switch::Switch;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts the thread that keeps `port` connected until it is removed. In server mode the
/// socket is created here, before returning, so a bad path is an error for the caller.
pub fn spawn(switch: Arc<Switch>, port: Arc<Port>) -> std::io::Result<thread::JoinHandle<()>> {
    let listener = match port.config.mode {
        ConnectMode::Server => Some(listen(&port.config.socket)?),
        ConnectMode::Client => None,
    };
    thread::Builder::new()
        .name(format!("port-{}", port.name))
        .spawn(move || match listener {
            Some(listener) => serve(&switch, &port, listener),
            None => dial(&switch, &port),
        })
}

fn listen(path: &Path) -> std::io::Result<UnixListener> {
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

/// Sleeps up to `d`, returning early (true) if the port is removed meanwhile.
fn sleep_unless_removed(port: &Port, d: Duration) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if port.is_removed() {
            return true;
        }
        let s = left.min(step);
        thread::sleep(s);
        left -= s;
    }
    port.is_removed()
}

fn serve(switch: &Arc<Switch>, port: &Arc<Port>, listener: UnixListener) {
    log::info!(
        "port {}: listening on {}",
        port.name,
        port.config.socket.display()
    );
    while !port.is_removed() {
        port.set_state(LinkState::Listening);
        match listener.accept() {
            Ok((stream, _)) => {
                if port.is_removed() {
                    break;
                }
                run_connection(switch, port, stream);
            }
            Err(e) => {
                log::warn!("port {}: accept failed: {e}", port.name);
                sleep_unless_removed(port, BACKOFF_MIN);
            }
        }
    }
    let _ = std::fs::remove_file(&port.config.socket);
}

fn dial(switch: &Arc<Switch>, port: &Arc<Port>) {
    let path = &port.config.socket;
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    while !port.is_removed() {
        port.set_state(LinkState::Connecting);
        match UnixStream::connect(path) {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                reported = false;
                run_connection(switch, port, stream);
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
                if sleep_unless_removed(port, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// `VHOST_USER_SET_VRING_ENABLE`'s request code.
const SET_VRING_ENABLE: u32 = 18;

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

/// Serves one frontend connection to its end, then forgets its rings and learned addresses.
fn run_connection(switch: &Arc<Switch>, port: &Arc<Port>, stream: UnixStream) {
    let rings_changed = match EventFd::new(EFD_NONBLOCK) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            log::error!("port {}: cannot create eventfd: {e}", port.name);
            return;
        }
    };
    let Ok(shutdown_stream) = stream.try_clone() else {
        return;
    };
    let link = Arc::new(Link::new());
    port.attach(link.clone());
    port.set_connection(Some(shutdown_stream));
    port.counters.connects.fetch_add(1, Ordering::Relaxed);
    port.set_state(LinkState::Connected);
    log::info!("port {}: frontend connected", port.name);

    let stop = Arc::new(AtomicBool::new(false));
    let kicker = {
        let (switch, port, link, rings_changed, stop) = (
            switch.clone(),
            port.clone(),
            link.clone(),
            rings_changed.clone(),
            stop.clone(),
        );
        thread::Builder::new()
            .name(format!("kick-{}", port.name))
            .spawn(move || kick_loop(&switch, &port, &link, &rings_changed, &stop))
    };

    let handler = Arc::new(Mutex::new(DeviceHandler::new(
        port.clone(),
        link.clone(),
        switch.settings().max_guest_memory_gib,
        rings_changed.clone(),
    )));
    let raw_fd = stream.as_raw_fd();
    let mut requests = BackendReqHandler::from_stream(stream, handler.clone());
    if port.is_removed() {
        port.close_connection();
    }
    loop {
        let early_enable = peek_vring_enable(raw_fd);
        match requests.handle_request() {
            Ok(()) => {}
            Err(VhostError::InactiveFeature(_)) if early_enable.is_some() => {
                // QEMU enables the queue pair before SET_FEATURES; apply it as DPDK does.
                if let Some((index, num)) = early_enable {
                    let mut h = handler.lock().unwrap_or_else(|p| p.into_inner());
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

    stop.store(true, Ordering::Release);
    let _ = rings_changed.write(1);
    if let Ok(k) = kicker {
        let _ = k.join();
    }
    port.set_connection(None);
    port.detach();
    let flushed = switch.mac_table().flush_port(port.id);
    log::info!(
        "port {}: frontend disconnected ({flushed} learned addresses forgotten)",
        port.name
    );
}

/// Event mode: waits for TX kicks and drains the ring. Re-reads the kick fd whenever the
/// message handler says rings changed. In poll mode it only keeps kicks consumed.
fn kick_loop(
    switch: &Switch,
    port: &Port,
    link: &Link,
    rings_changed: &EventFd,
    stop: &AtomicBool,
) {
    const WAKE: u64 = 0;
    const TX_KICK: u64 = 1;
    let polled = switch.settings().is_polled();
    let Ok(epoll) = Epoll::new() else {
        log::error!("port {}: cannot create epoll", port.name);
        return;
    };
    let _ = epoll.ctl(
        ControlOperation::Add,
        rings_changed.as_raw_fd(),
        EpollEvent::new(EventSet::IN, WAKE),
    );
    // The kick fd registered with epoll, and the ring's kick generation it belongs to.
    let mut watched: Option<i32> = None;
    let mut generation = u64::MAX;
    let mut events = [EpollEvent::default(); 4];
    while !stop.load(Ordering::Acquire) {
        {
            let ring = link.tx.lock().unwrap_or_else(|p| p.into_inner());
            if ring.kick_generation != generation {
                generation = ring.kick_generation;
                if let Some(fd) = watched.take() {
                    // Fails harmlessly if closing the old eventfd already removed it.
                    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                }
                if let Some(fd) = ring.kick.as_ref().map(|f| f.as_raw_fd()) {
                    match epoll.ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, TX_KICK),
                    ) {
                        Ok(()) => watched = Some(fd),
                        Err(e) => {
                            log::error!("port {}: cannot watch the TX kick fd: {e}", port.name)
                        }
                    }
                }
            }
        }
        // Frames may already be waiting when a ring comes up.
        if polled {
            // Pollers drain this ring; this thread only keeps kicks consumed.
        } else if let Some(consumed) =
            port.guard_dataplane(|| dataplane::drain_tx(switch, port, link, true))
        {
            if consumed >= dataplane::DRAIN_BUDGET {
                // The guest keeps transmitting: go round again (noticing a stop or a new
                // kick fd) without waiting for a kick, which stays disabled meanwhile.
                thread::yield_now();
                continue;
            }
        } else {
            // The panic failed the connection; its teardown stops this thread.
            return;
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("port {}: epoll failed: {e}", port.name);
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                WAKE => {
                    let _ = rings_changed.read();
                }
                _ => {
                    link.tx
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .consume_kick();
                }
            }
        }
    }
}
