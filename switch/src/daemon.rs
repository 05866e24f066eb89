//! Assembling a running switch from a [`Config`]: everything that can fail (control socket,
//! metrics listener, every port's socket) is checked or bound before the switch is declared
//! started, so a bad configuration never leaves a half-started daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::control::server::{ControlCounters, ControlError, ControlServer};
use crate::metrics::{MetricsError, MetricsServer};
use crate::switch::{Switch, SwitchError};

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
}

/// A running switch and the endpoints it serves.
pub struct Daemon {
    pub switch: Arc<Switch>,
    pub control_socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub control_counters: Arc<ControlCounters>,
}

impl Daemon {
    pub fn start(mut config: Config) -> Result<Daemon, DaemonError> {
        config.check()?;
        // The saved running configuration, merged into the config file's before anything
        // starts: a state file that cannot be used stops the start here, untouched.
        let state = config
            .settings
            .state_file
            .clone()
            .map(|path| crate::state::StateFile::new(&path, &config));
        let saved = match &state {
            Some(s) => s.load()?,
            None => None,
        };
        let saved = match (&state, saved) {
            (Some(s), Some(saved)) => {
                let saved = s.merge_into(saved, &mut config);
                config.check()?;
                Some(saved)
            }
            _ => None,
        };
        crate::switch::keep_off_poll_cpus(&config.settings.poll_cpus);
        let switch = Switch::new(config.settings.clone()).map_err(DaemonError::Threads)?;
        switch
            .flows()
            .conntrack()
            .set_limits(config.conntrack.clone());
        for port in &config.ports {
            switch.check_port(port)?;
        }
        let control = ControlServer::bind(&config.control_socket)?;
        let metrics = config
            .metrics_listen
            .map(|addr| MetricsServer::bind(addr, config.metrics))
            .transpose()?;
        let metrics_addr = metrics.as_ref().and_then(|m| m.local_addr());
        if let Some(vxlan) = config.vxlan {
            if let Err(e) = switch.enable_tunnel(vxlan) {
                switch.shutdown();
                let _ = std::fs::remove_file(control.path());
                return Err(e.into());
            }
        }
        if let Some(evpn) = &config.evpn {
            if let Err(e) = switch.enable_evpn(evpn) {
                switch.shutdown();
                let _ = std::fs::remove_file(control.path());
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
            if let Err(e) = switch.add_port_numbered(port, wanted) {
                switch.shutdown();
                let _ = std::fs::remove_file(control.path());
                return Err(e.into());
            }
        }
        if let (Some(state), Some(saved)) = (&state, &saved) {
            if let Err(e) = state.restore(&switch, saved) {
                switch.shutdown();
                let _ = std::fs::remove_file(control.path());
                return Err(e.into());
            }
            log::info!(
                "restored from {}: {} port(s), {} flow(s), {} group(s), {} meter(s)",
                state.path().display(),
                switch.ports().iter().filter(|p| !p.is_tunnel()).count(),
                saved.flows.len(),
                saved.groups.len(),
                saved.meters.len()
            );
        }
        // The merged configuration is the new saved state (and its base the config file).
        if let Some(state) = &state {
            if let Err(e) = state.save(&switch) {
                switch.shutdown();
                let _ = std::fs::remove_file(control.path());
                return Err(e.into());
            }
        }
        switch.start_background().map_err(DaemonError::Threads)?;
        let control_counters = Arc::new(ControlCounters::default());
        let control_socket = control.path().to_path_buf();
        control
            .with_state(state.map(Arc::new))
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
