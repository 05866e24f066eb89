//! Keeping a port connected: in server mode accept frontends one after another on the
//! port's socket; in client mode dial the frontend's socket, forever, with capped exponential
//! backoff (like Open vSwitch's dpdkvhostuserclient). Each connection gets a fresh
//! `VhostUserDaemon`, so nothing of a previous frontend's state survives into the next.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;

use super::backend::PortBackend;
use super::{ConnectMode, LinkState, Port};
use crate::switch::Switch;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts the thread that keeps `port` connected until it is removed. In server mode the
/// socket is created here, before returning, so a bad path is an error for the caller.
pub fn spawn(switch: Arc<Switch>, port: Arc<Port>) -> std::io::Result<thread::JoinHandle<()>> {
    let listener = match port.config.mode {
        ConnectMode::Server => Some(listen(&port)?),
        ConnectMode::Client => None,
    };
    thread::Builder::new()
        .name(format!("port-{}", port.name))
        .spawn(move || match listener {
            Some(listener) => serve(&switch, &port, listener),
            None => dial(&switch, &port),
        })
}

fn listen(port: &Port) -> std::io::Result<Listener> {
    let path = &port.config.socket;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by another process", path.display()),
        ));
    }
    Listener::new(path, true)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {}: {e}", path.display())))
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

fn new_daemon(switch: &Arc<Switch>, port: &Arc<Port>) -> Option<VhostUserDaemon<Arc<PortBackend>>> {
    let backend = Arc::new(PortBackend::new(port.clone(), switch.clone()));
    let mem = backend.memory();
    match VhostUserDaemon::new(format!("vhost-{}", port.name), backend, mem) {
        Ok(d) => Some(d),
        Err(e) => {
            log::error!("port {}: cannot create vhost-user daemon: {e}", port.name);
            None
        }
    }
}

/// Runs one connected frontend to its end, then forgets its rings and learned addresses.
fn run_connection(switch: &Switch, port: &Port, mut daemon: VhostUserDaemon<Arc<PortBackend>>) {
    port.counters
        .connects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    port.set_state(LinkState::Connected);
    port.set_shutdown(daemon.shutdown_handle());
    log::info!("port {}: frontend connected", port.name);
    if port.is_removed() {
        daemon.request_shutdown();
    }
    if let Err(e) = daemon.wait() {
        log::warn!("port {}: connection ended with error: {e}", port.name);
    }
    port.set_shutdown(None);
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    port.detach();
    drop(daemon);
    let flushed = switch.mac_table().flush_port(port.id);
    log::info!(
        "port {}: frontend disconnected ({flushed} learned addresses forgotten)",
        port.name
    );
}

fn serve(switch: &Arc<Switch>, port: &Arc<Port>, mut listener: Listener) {
    let path = &port.config.socket;
    log::info!("port {}: listening on {}", port.name, path.display());
    while !port.is_removed() {
        port.set_state(LinkState::Listening);
        let Some(mut daemon) = new_daemon(switch, port) else {
            sleep_unless_removed(port, BACKOFF_MAX);
            continue;
        };
        if let Err(e) = daemon.start(&mut listener) {
            log::warn!("port {}: accepting a frontend failed: {e}", port.name);
            sleep_unless_removed(port, BACKOFF_MIN);
            continue;
        }
        if port.is_removed() {
            daemon.request_shutdown();
            let _ = daemon.wait();
            break;
        }
        run_connection(switch, port, daemon);
    }
    let _ = std::fs::remove_file(path);
}

fn dial(switch: &Arc<Switch>, port: &Arc<Port>) {
    let path = port.config.socket.to_string_lossy().into_owned();
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    while !port.is_removed() {
        port.set_state(LinkState::Connecting);
        let Some(mut daemon) = new_daemon(switch, port) else {
            sleep_unless_removed(port, BACKOFF_MAX);
            continue;
        };
        match daemon.start_client(&path) {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                reported = false;
                run_connection(switch, port, daemon);
            }
            Err(e) => {
                if !reported {
                    log::info!(
                        "port {}: cannot reach {path} yet ({e}); retrying",
                        port.name
                    );
                    reported = true;
                }
                drop(daemon);
                if sleep_unless_removed(port, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
