//! Serves the control socket: one thread accepting, one thread per client, at most
//! `max_clients` of them (a client beyond that gets an error line and is closed, so local
//! peers cannot exhaust threads); a client idle for `idle_timeout_secs` is disconnected, so
//! idle connections cannot hold the slots forever. A bad request gets an error response and
//! is counted; it never touches the frame path.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::protocol::*;
use crate::state::StateFile;
use crate::switch::Switch;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create directory {path} for the control socket: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing the control socket directory {path}: it {problem}")]
    UnsafeDir { path: PathBuf, problem: String },
    #[error("control socket {path} is in use by a running switch")]
    InUse { path: PathBuf },
    #[error("cannot listen on control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Counts control requests by outcome, and clients turned away (exported as metrics).
#[derive(Debug, Default)]
pub struct ControlCounters {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Connections refused because `max_clients` were connected.
    pub refused_clients: AtomicU64,
    /// Clients disconnected after `idle_timeout_secs` without a request.
    pub idle_timeouts: AtomicU64,
}

/// Bounds on the control socket's clients (the `[control]` table of the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Most clients served at once.
    pub max_clients: usize,
    /// Seconds a client may stay connected without sending a request (or without reading
    /// a response) before it is disconnected.
    pub idle_timeout_secs: u64,
}

pub const DEFAULT_MAX_CLIENTS: usize = 16;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            max_clients: DEFAULT_MAX_CLIENTS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
        }
    }
}

impl ControlLimits {
    pub fn check(&self) -> Result<(), String> {
        if self.max_clients == 0 {
            return Err("field `max_clients`: must be at least 1".into());
        }
        if self.idle_timeout_secs == 0 {
            return Err("field `idle_timeout_secs`: must be at least 1".into());
        }
        Ok(())
    }
}

/// A client's place among `max_clients`; given back when the client's thread ends (or its
/// thread could not be started).
struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds the socket now (so a bad path fails before the switch starts) and serves it on a
/// background thread.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// Where accepted changes are saved, if anywhere.
    state: Option<Arc<StateFile>>,
    /// Serves a takeover request on the connection that asked (the daemon's).
    takeover: Option<TakeoverHook>,
}

/// Hands the switch over on the given connection (the `takeover` module's).
pub type TakeoverHook = Arc<dyn Fn(UnixStream) + Send + Sync>;

impl ControlServer {
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            prepare_socket_dir(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_path_buf(),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            state: None,
            takeover: None,
        })
    }

    /// Serves on a listening socket another process handed over (a takeover).
    pub fn adopt(path: &Path, listener: UnixListener) -> Self {
        ControlServer {
            listener,
            path: path.to_path_buf(),
            state: None,
            takeover: None,
        }
    }

    /// A duplicate of the listening socket, to hand over.
    pub fn listener_clone(&self) -> std::io::Result<UnixListener> {
        self.listener.try_clone()
    }

    /// Lets a client take the switch over with `hook`.
    pub fn with_takeover(mut self, hook: TakeoverHook) -> Self {
        self.takeover = Some(hook);
        self
    }

    /// Saves the running configuration to `state` after every change it accepts.
    pub fn with_state(mut self, state: Option<Arc<StateFile>>) -> Self {
        self.state = state;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn spawn(
        self,
        switch: Arc<Switch>,
        counters: Arc<ControlCounters>,
        limits: ControlLimits,
    ) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                // Only this thread takes slots, so checking then taking is not racy.
                let clients = Arc::new(AtomicUsize::new(0));
                for stream in self.listener.incoming() {
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            // Out of fds, most likely: don't spin.
                            log::warn!("control socket: accept failed: {e}");
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    if clients.load(Ordering::Acquire) >= limits.max_clients {
                        refuse_client(stream, &counters, limits.max_clients);
                        continue;
                    }
                    clients.fetch_add(1, Ordering::AcqRel);
                    let slot = ClientSlot(clients.clone());
                    let sw = switch.clone();
                    let counters = counters.clone();
                    let state = self.state.clone();
                    let takeover = self.takeover.clone();
                    let spawned =
                        thread::Builder::new()
                            .name("control-client".into())
                            .spawn(move || {
                                let _slot = slot;
                                let client = Client {
                                    state: state.as_deref(),
                                    takeover: takeover.as_ref(),
                                    limits,
                                };
                                serve_client(stream, &sw, &counters, client)
                            });
                    if let Err(e) = spawned {
                        log::warn!("control socket: cannot start a client thread: {e}");
                    }
                }
            })
    }
}

/// Makes sure the directory that holds the control socket is the switch's own: created with
/// mode 0700 if absent; otherwise a real directory (not a symlink), owned by the switch's
/// user and writable by nobody else. Anyone who can write to the directory, or own it, could
/// replace the socket between our bind and a client's connect and catch flowctl's requests
/// (think of `/tmp/patchbay-UID` created in advance by another user).
pub fn prepare_socket_dir(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let io_err = |source| ControlError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let unsafe_dir = |problem: String| ControlError::UnsafeDir {
        path: dir.to_path_buf(),
        problem,
    };
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io_err)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                // Exactly 0700, whatever the umask.
                Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err)?,
                // Created by someone else meanwhile: checked below like any existing one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(e) => return Err(io_err(e)),
    }
    // Not following a symlink: the link itself is what an attacker would control.
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    let me = nix::unistd::Uid::effective().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by the switch's uid {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by group or others (mode {:o}); make it 0700 or 0750",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Tells a client over the limit why, then closes it.
fn refuse_client(stream: UnixStream, counters: &ControlCounters, max_clients: usize) {
    counters.refused_clients.fetch_add(1, Ordering::Relaxed);
    log::warn!(
        "control socket: refused a client: {max_clients} clients connected ([control] max_clients)"
    );
    // A fresh socket's buffer takes one short line; the timeout only guards the accept loop.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let r = Response::error(format!(
        "too many control clients: {max_clients} are connected ([control] max_clients); try again later"
    ));
    let _ = write_response(&mut &stream, &r);
}

/// What a client connection is served with.
struct Client<'a> {
    state: Option<&'a StateFile>,
    takeover: Option<&'a TakeoverHook>,
    limits: ControlLimits,
}

/// The longest a request may take to arrive once its first byte has (or the idle timeout,
/// if shorter).
const REQUEST_SECS: u64 = 10;

/// Reads one request line into `line`: up to a newline, or MAX_REQUEST_LEN + 1 bytes (the
/// caller refuses that), or the end of the stream. Waits up to `idle` for a request to
/// begin and `whole` for the rest of it; past either, a `TimedOut` error.
fn read_request(
    reader: &mut BufReader<UnixStream>,
    line: &mut Vec<u8>,
    idle: Duration,
    whole: Duration,
) -> std::io::Result<usize> {
    let mut begun: Option<std::time::Instant> = None;
    loop {
        let wait = match begun {
            None => idle,
            Some(at) => whole
                .checked_sub(at.elapsed())
                .filter(|d| !d.is_zero())
                .ok_or(std::io::ErrorKind::TimedOut)?,
        };
        reader.get_ref().set_read_timeout(Some(wait))?;
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        begun.get_or_insert_with(std::time::Instant::now);
        let room = MAX_REQUEST_LEN + 1 - line.len();
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), buf.len() >= room),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            return Ok(line.len());
        }
    }
}

/// Whether `line` asks for a takeover (parsed only when it may).
fn is_takeover(line: &[u8]) -> bool {
    line.windows(8).any(|w| w == b"takeover")
        && serde_json::from_slice::<crate::control::protocol::RequestEnvelope>(line)
            .is_ok_and(|e| e.request == Request::Takeover)
}

fn serve_client(stream: UnixStream, sw: &Arc<Switch>, counters: &ControlCounters, client: Client) {
    let Client {
        state,
        takeover,
        limits,
    } = client;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    if stream.set_read_timeout(Some(idle)).is_err() || stream.set_write_timeout(Some(idle)).is_err()
    {
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = std::io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    // A request, once begun, must end within this (a client trickling a byte a minute
    // would otherwise hold its place among `max_clients` for ever).
    let whole = idle.min(Duration::from_secs(REQUEST_SECS));
    loop {
        line.clear();
        let n = match read_request(&mut reader, &mut line, idle, whole) {
            Ok(0) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                counters.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                if line.is_empty() {
                    log::info!("control socket: client idle for {idle:?}: disconnected");
                } else {
                    log::info!(
                        "control socket: a request not complete within {whole:?} ({} bytes \
                         came): disconnected",
                        line.len()
                    );
                }
                return;
            }
            Err(_) => return,
            Ok(n) => n,
        };
        let response = if n > MAX_REQUEST_LEN {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            let r = Response::error(format!("request longer than {MAX_REQUEST_LEN} bytes"));
            let _ = write_response(&mut writer, &r);
            return;
        } else if let (Some(hook), true) = (takeover, is_takeover(&line)) {
            counters.ok.fetch_add(1, Ordering::Relaxed);
            drop(writer);
            // Nothing follows the request until the handover is answered: the reader holds
            // no buffered bytes.
            let stream = reader.into_inner();
            let _ = stream.set_read_timeout(Some(idle));
            hook(stream);
            return;
        } else {
            let r = handle_line_saving(&line, sw, counters, state);
            let counter = if r.ok { &counters.ok } else { &counters.errors };
            counter.fetch_add(1, Ordering::Relaxed);
            r
        };
        if write_response(&mut writer, &response).is_err() {
            return;
        }
    }
}

fn write_response(w: &mut impl Write, r: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// Parses and executes one request line.
pub fn handle_line(line: &[u8], sw: &Arc<Switch>, counters: &ControlCounters) -> Response {
    handle_line_saving(line, sw, counters, None)
}

/// [`handle_line`], saving the running configuration to `state` after a change the switch
/// accepted, before answering: an acknowledged change survives a restart. A change made but
/// not saved is answered with an error that says both.
pub fn handle_line_saving(
    line: &[u8],
    sw: &Arc<Switch>,
    counters: &ControlCounters,
    state: Option<&StateFile>,
) -> Response {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim(),
        Err(_) => return Response::error("request is not UTF-8"),
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Response::error(format!("request is not JSON: {e}")),
    };
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Response::error(format!(
                "protocol version {v} is not supported (this switch speaks {PROTOCOL_VERSION})"
            ))
        }
        None => return Response::error("request has no \"version\" field"),
    }
    let envelope: RequestEnvelope = match serde_json::from_value(value) {
        Ok(e) => e,
        Err(e) => return Response::error(format!("bad request: {e}")),
    };
    let changes = envelope.request.changes_configuration();
    let response = execute(envelope.request, sw, counters);
    match state {
        Some(state) if changes && response.ok => match state.save(sw) {
            Ok(()) => response,
            Err(e) => {
                log::error!("{e}");
                Response::error(format!(
                    "the change was made but not saved, so it will not survive a restart: {e}"
                ))
            }
        },
        _ => response,
    }
}

fn execute(request: Request, sw: &Arc<Switch>, counters: &ControlCounters) -> Response {
    match request {
        Request::Takeover => {
            Response::error("a takeover is served only on a running daemon's control socket")
        }
        Request::Hello => Response::ok(Hello {
            protocol: PROTOCOL_VERSION,
            daemon: format!("patchbay-switch {}", env!("CARGO_PKG_VERSION")),
        }),
        Request::ShowPorts => {
            let ports: PortList = sw.ports().iter().map(|p| p.info()).collect();
            Response::ok(ports)
        }
        Request::ShowMacs { vlan } => {
            let table = sw.mac_table();
            let entries = table
                .snapshot(table.now())
                .into_iter()
                .filter(|e| vlan.is_none_or(|v| v == e.vlan))
                .collect();
            Response::ok(MacTableInfo {
                entries,
                capacity: table.max_entries(),
                aging_secs: table.aging().as_secs(),
            })
        }
        Request::ShowSwitch => {
            let c = sw.counters();
            Response::ok(SwitchInfo {
                mtu: sw.settings().mtu,
                ports: sw.ports().len(),
                mac_entries: sw.mac_table().len(),
                mac_capacity: sw.mac_table().max_entries(),
                floods: c.floods.load(Ordering::Relaxed),
                mac_learned: c.mac_learned.load(Ordering::Relaxed),
                mac_moved: c.mac_moved.load(Ordering::Relaxed),
                mac_table_full: c.mac_table_full.load(Ordering::Relaxed),
                control_errors: counters.errors.load(Ordering::Relaxed),
                poll_cpus: sw.settings().poll_cpus.clone(),
                dataplane: sw
                    .worker_stats()
                    .iter()
                    .map(|w| DataplaneThread {
                        thread: w.thread.clone(),
                        busy_ns: w.busy_ns(),
                        sleeps: w.sleeps(),
                    })
                    .collect(),
            })
        }
        Request::AddPort { port } => match sw.add_port(*port) {
            Ok(id) => Response::ok(PortAdded { id }),
            Err(e) => Response::error(e.to_string()),
        },
        Request::DelPort { name } => match sw.remove_port(&name) {
            Ok(()) => Response::ok(serde_json::Value::Null),
            Err(e) => Response::error(e.to_string()),
        },
        Request::SetVlan { name, vlan } => match sw.set_vlan(&name, &vlan) {
            Ok(()) => Response::ok(serde_json::Value::Null),
            Err(e) => Response::error(e.to_string()),
        },
        Request::SetPortSecurity {
            name,
            allowed_macs,
            allowed_ips,
            dhcp_server,
        } => match sw.set_port_security(&name, allowed_macs, allowed_ips, dhcp_server) {
            Ok(()) => Response::ok(serde_json::Value::Null),
            Err(e) => Response::error(e.to_string()),
        },
        Request::AddFlows { flows } => {
            result(super::flows::add_flows(sw, &flows).map(|n| serde_json::json!({ "changes": n })))
        }
        Request::ModFlows { flow, strict } => result(
            super::flows::mod_flows(sw, &flow, strict).map(|n| serde_json::json!({ "flows": n })),
        ),
        Request::DelFlows { filter, strict } => result(
            super::flows::del_flows(sw, filter.as_deref(), strict)
                .map(|n| serde_json::json!({ "flows": n })),
        ),
        Request::DumpFlows { filter } => result(super::flows::dump_flows(sw, filter.as_deref())),
        Request::ReplaceFlows { flows } => result(super::flows::replace_flows(sw, &flows)),
        Request::DiffFlows { flows } => result(super::flows::diff_flows(sw, &flows)),
        Request::Trace { packet } => result(super::flows::trace(sw, &packet)),
        Request::ShowTables => Response::ok(super::flows::tables(sw)),
        Request::ShowEvpn => match sw.evpn() {
            Some(e) => Response::ok(e.snapshot()),
            None => Response::error("EVPN is not running (add an [evpn] section to the config)"),
        },
        Request::DumpConntrack { zone } => Response::ok(super::flows::dump_conntrack(sw, zone)),
        Request::AddGroup { group, modify } => result(super::flows::add_group(sw, &group, modify)),
        Request::DelGroups { group_id } => result(super::flows::del_groups(sw, group_id)),
        Request::DumpGroups => Response::ok(super::flows::dump_groups(sw)),
        Request::AddMeter { meter, modify } => result(super::flows::add_meter(sw, &meter, modify)),
        Request::DelMeters { meter_id } => result(super::flows::del_meters(sw, meter_id)),
        Request::DumpMeters => Response::ok(super::flows::dump_meters(sw)),
        Request::FlushConntrack { zone } => Response::ok(sw.flows().conntrack().flush(zone)),
        Request::SetConntrackLimits {
            max_connections,
            zones,
        } => result(super::flows::set_conntrack_limits(
            sw,
            max_connections,
            &zones,
        )),
        request => tunnel_request(request, sw),
    }
}

fn result<T: serde::Serialize>(r: Result<T, String>) -> Response {
    match r {
        Ok(v) => Response::ok(v),
        Err(e) => Response::error(e),
    }
}

fn tunnel_request(request: Request, sw: &Arc<Switch>) -> Response {
    let Some(tunnel) = sw.tunnel() else {
        return Response::error(
            "no VXLAN tunnel is configured (add a [vxlan] section to the config)",
        );
    };
    let vtep = &tunnel.vtep;
    let parse_mac = |mac: &str| {
        mac.parse::<crate::wire::EthernetAddress>()
            .map(|m| m.0)
            .map_err(|e| e.to_string())
    };
    let result: Result<(), String> = match request {
        Request::ShowTunnel => {
            let mut snap = vtep.snapshot();
            (snap.udp_gso, snap.udp_gro) = tunnel.udp_offloads();
            snap.io = tunnel.io.snapshot();
            return Response::ok(snap);
        }
        Request::TunnelMap { vni, vlan } => vtep.map(vni, vlan).map_err(|e| e.to_string()),
        Request::TunnelUnmap { vni } => vtep.unmap(vni).map_err(|e| e.to_string()),
        Request::TunnelAddRemote { vni, remote } => {
            vtep.add_remote(vni, remote).map_err(|e| e.to_string())
        }
        Request::TunnelDelRemote { vni, remote } => {
            vtep.remove_remote(vni, remote).map_err(|e| e.to_string())
        }
        Request::TunnelAddMac { vni, mac, remote } => {
            parse_mac(&mac).and_then(|m| vtep.add_static(vni, m, remote).map_err(|e| e.to_string()))
        }
        Request::TunnelDelMac { vni, mac } => {
            parse_mac(&mac).and_then(|m| vtep.remove_static(vni, m).map_err(|e| e.to_string()))
        }
        Request::TunnelSetProxy { vni, proxy } => {
            vtep.set_proxy(vni, proxy).map_err(|e| e.to_string())
        }
        Request::TunnelAddNeighbor { vni, ip, mac } => parse_mac(&mac).and_then(|m| {
            vtep.add_static_neighbor(vni, ip, m)
                .map_err(|e| e.to_string())
        }),
        Request::TunnelDelNeighbor { vni, ip } => vtep
            .remove_static_neighbor(vni, ip)
            .map_err(|e| e.to_string()),
        _ => Err("not a tunnel request".to_string()),
    };
    match result {
        Ok(()) => {
            sw.refresh_tunnel_vlans();
            Response::ok(serde_json::Value::Null)
        }
        Err(e) => Response::error(e),
    }
}
