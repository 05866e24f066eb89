//! Assembling a running switch from a [`Config`]: everything that can fail (control socket,
//! metrics listener, every port's socket) is checked or bound before the switch is declared
//! started, so a bad configuration never leaves a half-started daemon.

use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::control::server::{ControlCounters, ControlError, ControlServer};
use crate::metrics::{MetricsError, MetricsServer};
use crate::port::pause::Gate;
use crate::state::StateFile;
use crate::switch::{Switch, SwitchError};
use crate::takeover::{Handed, Incoming, Source, TakeoverError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Port(#[from] SwitchError),
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::TunnelError),
    #[error(transparent)]
    Evpn(#[from] crate::evpn::EvpnError),
    #[error("cannot start background threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("takeover: {0}")]
    Takeover(#[from] TakeoverError),
    #[error("takeover: {0}")]
    Handover(#[from] crate::port::handover::HandoverError),
}

/// A takeover's switch before it serves anything.
struct Prepared {
    switch: Arc<Switch>,
    snapshot: Arc<StateFile>,
    saved: Option<crate::state::SavedState>,
    control: ControlServer,
    metrics: Option<MetricsServer>,
    /// Opened once the old process is gone: the adopted ports' threads wait on it.
    gate: Arc<Gate>,
    /// Internal ports' tap devices, by port name, opened once the old process is gone.
    devices: std::collections::HashMap<String, crate::dataplane::HostDevice>,
}

struct Adopted {
    /// What remains to start: ports not handed over, tunnel, EVPN.
    config: Config,
    switch_part: Prepared,
}

/// A switch with `config`'s settings and limits, its ports checked (not added).
fn new_switch(config: &Config) -> Result<Arc<Switch>, DaemonError> {
    crate::switch::keep_off_poll_cpus(&config.settings.poll_cpus);
    let switch = Switch::new(config.settings.clone()).map_err(DaemonError::Threads)?;
    switch
        .flows()
        .conntrack()
        .set_limits(config.conntrack.clone());
    for port in &config.ports {
        switch.check_port(port)?;
    }
    Ok(switch)
}

/// Captures the running configuration for the state file (if `config` names one) and for
/// a takeover; the merge base is `config` as the file says it.
fn snapshot_of(config: &Config) -> Arc<StateFile> {
    let path = config.settings.state_file.as_deref();
    Arc::new(StateFile::new(path.unwrap_or(Path::new("")), config))
}

/// Undoes a start that failed half-way. (After a takeover the adopted ports' threads wait
/// at their gate: it is opened first, so they see their ports removed and end.)
fn fail_start(switch: &Switch, control: &ControlServer, gate: Option<&Gate>) {
    if let Some(gate) = gate {
        gate.let_through();
    }
    switch.shutdown();
    let _ = std::fs::remove_file(control.path());
}

/// A running switch and the endpoints it serves.
pub struct Daemon {
    pub switch: Arc<Switch>,
    pub control_socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub control_counters: Arc<ControlCounters>,
}

impl Daemon {
    pub fn start(config: Config) -> Result<Daemon, DaemonError> {
        Self::start_with(config, None)
    }

    /// Starts the switch; with `incoming`, from what the running switch handed over
    /// (`--takeover`): its running configuration, its sockets and its connected frontends.
    /// Until the old process has let go, a failure here tells it to go on, and nothing the
    /// old process still serves is touched (no socket shut down or removed).
    pub fn start_with(config: Config, incoming: Option<Incoming>) -> Result<Daemon, DaemonError> {
        let Some(mut incoming) = incoming else {
            return Self::build(config, None);
        };
        match Self::adopt(config, &mut incoming) {
            Ok(adopted) => {
                let started = incoming.started;
                let waited = incoming.ready()?;
                log::info!(
                    "takeover: the old process let go and exited {waited:?} after the request"
                );
                let daemon = Self::build(adopted.config, Some(adopted.switch_part))?;
                log::info!(
                    "takeover complete: serving {} port(s), {:?} after the request",
                    daemon.switch.ports().len(),
                    started.elapsed()
                );
                Ok(daemon)
            }
            Err(e) => {
                incoming.fail(&e.to_string());
                Err(e)
            }
        }
    }

    /// The part of a takeover done while the old process waits: the configuration merged
    /// with the handed-over one, the switch with every handed-over port set up again (not
    /// served yet), the control and metrics listeners.
    fn adopt(mut config: Config, incoming: &mut Incoming) -> Result<Adopted, DaemonError> {
        config.check()?;
        let snapshot = snapshot_of(&config);
        log::info!("takeover: handed over by {}", incoming.handover.from);
        let saved = snapshot.merge_into(incoming.handover.state.clone(), &mut config);
        config.check()?;
        let switch = new_switch(&config)?;
        let control_fd = incoming.fds.take(incoming.handover.control)?;
        let control = ControlServer::adopt(&config.control_socket, UnixListener::from(control_fd));
        let metrics = match (incoming.handover.metrics, config.metrics_listen) {
            (Some(i), Some(_)) => {
                let listener = std::net::TcpListener::from(incoming.fds.take(i)?);
                Some(MetricsServer::adopt(listener, config.metrics)?)
            }
            _ => None,
        };
        let gate = Arc::new(Gate::closed());
        let mut rest = Vec::new();
        let mut devices = std::collections::HashMap::new();
        for port in std::mem::take(&mut config.ports) {
            let handed = incoming.take_port(&port)?;
            match handed {
                Some(Handed::Device(device)) => {
                    devices.insert(port.name.clone(), device);
                    rest.push(port);
                }
                Some(Handed::Vhost(adopted))
                    if port.kind.is_vhost()
                        && (adopted.listener.is_some() || adopted.session.is_some()) =>
                {
                    let number = saved.port_numbers.get(&port.name).copied();
                    let name = port.name.clone();
                    switch.add_port_adopted(
                        port,
                        number,
                        adopted,
                        &mut incoming.fds,
                        gate.clone(),
                    )?;
                    log::info!("takeover: port {name} adopted");
                }
                _ => rest.push(port),
            }
        }
        config.ports = rest;
        Ok(Adopted {
            config,
            switch_part: Prepared {
                switch,
                snapshot,
                saved: Some(saved),
                control,
                metrics,
                gate,
                devices,
            },
        })
    }

    /// Starts everything not handed over and serves it all.
    fn build(mut config: Config, prepared: Option<Prepared>) -> Result<Daemon, DaemonError> {
        config.check()?;
        let taken_over = prepared.is_some();
        let (switch, snapshot, saved, control, metrics, gate, mut devices) = match prepared {
            Some(p) => (
                p.switch,
                p.snapshot,
                p.saved,
                p.control,
                p.metrics,
                Some(p.gate),
                p.devices,
            ),
            None => {
                // The saved running configuration, merged into the config file's before
                // anything starts: a state file that cannot be used stops the start here,
                // untouched.
                let snapshot = snapshot_of(&config);
                let saved = match &config.settings.state_file {
                    Some(_) => snapshot.load()?,
                    None => None,
                };
                let saved = match saved {
                    Some(saved) => {
                        let saved = snapshot.merge_into(saved, &mut config);
                        config.check()?;
                        Some(saved)
                    }
                    None => None,
                };
                let switch = new_switch(&config)?;
                let control = ControlServer::bind(&config.control_socket)?;
                (
                    switch,
                    snapshot,
                    saved,
                    control,
                    None,
                    None,
                    Default::default(),
                )
            }
        };
        let metrics = match (metrics, config.metrics_listen) {
            (Some(m), _) => Some(m),
            (None, Some(addr)) => match MetricsServer::bind(addr, config.metrics) {
                Ok(m) => Some(m),
                Err(e) => {
                    fail_start(&switch, &control, gate.as_deref());
                    return Err(e.into());
                }
            },
            (None, None) => None,
        };
        let metrics_addr = metrics.as_ref().and_then(|m| m.local_addr());
        if let Some(vxlan) = config.vxlan {
            if let Err(e) = switch.enable_tunnel(vxlan) {
                fail_start(&switch, &control, gate.as_deref());
                return Err(e.into());
            }
        }
        if let Some(evpn) = &config.evpn {
            if let Err(e) = switch.enable_evpn(evpn) {
                fail_start(&switch, &control, gate.as_deref());
                return Err(e.into());
            }
        }
        // Restored ports take their old numbers back, lowest first.
        let number = |p: &crate::port::PortConfig| {
            saved
                .as_ref()
                .and_then(|s| s.port_numbers.get(&p.name).copied())
        };
        let mut ports = config.ports;
        ports.sort_by_key(|p| number(p).map_or((1, 0), |n| (0, n)));
        for port in ports {
            let wanted = number(&port);
            let device = devices.remove(&port.name);
            if let Err(e) = switch.add_port_with_device(port, wanted, device) {
                fail_start(&switch, &control, gate.as_deref());
                return Err(e.into());
            }
        }
        let state = config
            .settings
            .state_file
            .is_some()
            .then(|| snapshot.clone());
        if let Some(saved) = &saved {
            if let Err(e) = snapshot.restore(&switch, saved) {
                fail_start(&switch, &control, gate.as_deref());
                return Err(e.into());
            }
            log::info!(
                "restored {}: {} port(s), {} flow(s), {} group(s), {} meter(s)",
                if taken_over {
                    "from the handover".to_string()
                } else {
                    format!("from {}", snapshot.path().display())
                },
                switch.ports().iter().filter(|p| !p.is_tunnel()).count(),
                saved.flows.len(),
                saved.groups.len(),
                saved.meters.len()
            );
        }
        // The merged configuration is the new saved state (and its base the config file).
        if let Some(state) = &state {
            if let Err(e) = state.save(&switch) {
                fail_start(&switch, &control, gate.as_deref());
                return Err(e.into());
            }
        }
        switch.start_background().map_err(DaemonError::Threads)?;
        if let Some(gate) = gate {
            gate.let_through();
        }
        let control_counters = Arc::new(ControlCounters::default());
        let control_socket = control.path().to_path_buf();
        let source = Source {
            switch: switch.clone(),
            snapshot: snapshot.clone(),
            control: control.listener_clone().map_err(DaemonError::Threads)?,
            metrics: metrics
                .as_ref()
                .map(MetricsServer::listener_clone)
                .transpose()
                .map_err(DaemonError::Threads)?,
        };
        control
            .with_state(state)
            .with_takeover(source.hook())
            .spawn(switch.clone(), control_counters.clone(), config.control)
            .map_err(DaemonError::Threads)?;
        if let Some(m) = metrics {
            m.spawn(switch.clone(), control_counters.clone())
                .map_err(DaemonError::Threads)?;
        }
        Ok(Daemon {
            switch,
            control_socket,
            metrics_addr,
            control_counters,
        })
    }

    /// Disconnects every port and removes the sockets the daemon created.
    pub fn shutdown(&self) {
        self.switch.shutdown();
        let _ = std::fs::remove_file(&self.control_socket);
    }
}
