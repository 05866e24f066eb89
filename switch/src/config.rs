//! The daemon's configuration: a TOML file and/or command-line flags, checked completely
//! before anything starts, with errors that name the file, line and field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::control::server::ControlLimits;
use crate::metrics::MetricsLimits;
use crate::port::{ConnectMode, PortConfig, PortKind};
use crate::switch::Settings;
use patchbay_overlay::vtep::VtepConfig;

/// Everything the daemon needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub settings: Settings,
    pub control_socket: PathBuf,
    /// Bounds on control clients (`[control] max_clients`, `idle_timeout_secs`).
    pub control: ControlLimits,
    /// None disables the metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Bounds on metrics connections (`[metrics] max_connections`, `timeout_secs`).
    pub metrics: MetricsLimits,
    pub ports: Vec<PortConfig>,
    /// The VXLAN tunnel endpoint, if any.
    pub vxlan: Option<VtepConfig>,
    /// Limits of the flow tables' connection tracking (`[conntrack]`).
    pub conntrack: crate::conntrack::Limits,
    /// BGP EVPN through FRR (`[evpn]`), if configured.
    pub evpn: Option<crate::evpn::EvpnConfig>,
}

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9184";

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            control_socket: crate::control::default_socket_path(),
            control: ControlLimits::default(),
            metrics_listen: DEFAULT_METRICS_LISTEN.parse().ok(),
            metrics: MetricsLimits::default(),
            ports: Vec::new(),
            vxlan: None,
            conntrack: crate::conntrack::Limits::default(),
            evpn: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: {what}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        what: String,
        message: String,
    },
    #[error("--port '{spec}': {message}")]
    PortFlag { spec: String, message: String },
    #[error("{0}")]
    Setting(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    switch: Option<toml::Spanned<Settings>>,
    #[serde(default)]
    control: Option<toml::Spanned<ControlSection>>,
    #[serde(default)]
    metrics: Option<toml::Spanned<MetricsSection>>,
    #[serde(default, rename = "port")]
    ports: Vec<toml::Spanned<PortConfig>>,
    #[serde(default)]
    vxlan: Option<toml::Spanned<VtepConfig>>,
    #[serde(default)]
    conntrack: Option<toml::Spanned<ConntrackSection>>,
    #[serde(default)]
    evpn: Option<toml::Spanned<crate::evpn::EvpnConfig>>,
}

/// `[conntrack]`: `max_connections = N`, `zone_limits = [{ zone = 5, limit = 100 }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConntrackSection {
    max_connections: Option<usize>,
    #[serde(default)]
    zone_limits: Vec<ZoneLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneLimit {
    zone: u16,
    limit: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    socket: Option<PathBuf>,
    max_clients: Option<usize>,
    idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    /// `host:port`, or "off".
    listen: Option<String>,
    max_connections: Option<usize>,
    timeout_secs: Option<u64>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses the metrics address: `host:port` or `off`.
pub fn parse_metrics_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" || s == "none" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:9184 (or 'off')"))
}

impl Config {
    /// Reads and checks a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |offset: usize, what: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            what,
            message,
        };
        let mut config = Config::default();
        if let Some(s) = file.switch {
            let start = s.span().start;
            config.settings = s.into_inner();
            check_settings(&config.settings).map_err(|m| invalid(start, "[switch]".into(), m))?;
        }
        if let Some(c) = file.control {
            let start = c.span().start;
            let c = c.into_inner();
            if let Some(socket) = c.socket {
                config.control_socket = socket;
            }
            if let Some(n) = c.max_clients {
                config.control.max_clients = n;
            }
            if let Some(secs) = c.idle_timeout_secs {
                config.control.idle_timeout_secs = secs;
            }
            config
                .control
                .check()
                .map_err(|m| invalid(start, "[control]".into(), m))?;
        }
        if let Some(m) = file.metrics {
            let start = m.span().start;
            let m = m.into_inner();
            if let Some(listen) = &m.listen {
                config.metrics_listen = parse_metrics_listen(listen)
                    .map_err(|e| invalid(start, "[metrics] field `listen`".into(), e))?;
            }
            if let Some(n) = m.max_connections {
                config.metrics.max_connections = n;
            }
            if let Some(secs) = m.timeout_secs {
                config.metrics.timeout_secs = secs;
            }
            config
                .metrics
                .check()
                .map_err(|e| invalid(start, "[metrics]".into(), e))?;
        }
        if let Some(c) = file.conntrack {
            let start = c.span().start;
            let c = c.into_inner();
            if let Some(n) = c.max_connections {
                config.conntrack.max_connections = n;
            }
            for z in c.zone_limits {
                // Over the control socket a limit of 0 takes the zone's limit away; here it
                // would refuse every connection of the zone: refused, so that no one gets that.
                if z.limit == 0 {
                    return Err(invalid(
                        start,
                        "[conntrack] field `zone_limits`".into(),
                        format!(
                            "zone {}: a limit of 0 would refuse all its connections (leave the \
                             zone out for no limit)",
                            z.zone
                        ),
                    ));
                }
                if config.conntrack.zones.insert(z.zone, z.limit).is_some() {
                    return Err(invalid(
                        start,
                        "[conntrack] field `zone_limits`".into(),
                        format!("zone {} is given twice", z.zone),
                    ));
                }
            }
            let most = crate::conntrack::MAX_CONNECTIONS_LIMIT;
            if !(1..=most).contains(&config.conntrack.max_connections) {
                return Err(invalid(
                    start,
                    "[conntrack] field `max_connections`".into(),
                    format!("must be 1 to {most}"),
                ));
            }
        }
        if let Some(v) = file.vxlan {
            let start = v.span().start;
            let vtep = v.into_inner();
            vtep.validate()
                .map_err(|e| invalid(start, "[vxlan]".into(), e.to_string()))?;
            config.vxlan = Some(vtep);
        }
        if let Some(e) = file.evpn {
            let start = e.span().start;
            let evpn = e.into_inner();
            evpn.validate(config.vxlan.as_ref().map(|v| v.port))
                .map_err(|m| invalid(start, "[evpn]".into(), m))?;
            let learn = patchbay_overlay::vtep::UnknownVtepPolicy::Learn;
            if evpn.enabled
                && config
                    .vxlan
                    .as_ref()
                    .is_some_and(|v| v.unknown_vtep == learn)
            {
                return Err(invalid(
                    start,
                    "[evpn]".into(),
                    "unknown_vtep = \"learn\" in [vxlan] cannot go with EVPN: remote VTEPs come from BGP, and a sender outside a VNI's flood list is dropped".into(),
                ));
            }
            config.evpn = Some(evpn).filter(|e| e.enabled);
        }
        for spanned in file.ports {
            let start = spanned.span().start;
            let port = spanned.into_inner();
            port.validate()
                .map_err(|e| invalid(start, format!("[[port]] '{}'", port.name), e.to_string()))?;
            if let Some(first) = config.ports.iter().find(|p| p.name == port.name) {
                return Err(invalid(
                    start,
                    format!("[[port]] '{}'", port.name),
                    format!("field `name`: '{}' is used twice", first.name),
                ));
            }
            if let Some(first) = config.ports.iter().find(|p| p.same_endpoint(&port)) {
                return Err(invalid(
                    start,
                    format!("[[port]] '{}'", port.name),
                    match port.kind.is_host_device() {
                        true => format!(
                            "field `interface`: device {} is already port '{}'",
                            port.interface_name(),
                            first.name
                        ),
                        false => format!(
                            "field `socket`: {} is already port '{}'",
                            port.socket.display(),
                            first.name
                        ),
                    },
                ));
            }
            config.ports.push(port);
        }
        Ok(config)
    }

    /// Adds a port given as `--port name=N,socket=PATH[,mode=client][,mac=M][,vlan=V]
    /// [,vlan-mode=M][,trunks=LIST][,offloads=LIST][,queue-pairs=N]`. A trunk or offload list may itself
    /// contain commas.
    pub fn add_port_flag(&mut self, spec: &str) -> Result<(), ConfigError> {
        let port = parse_port_flag(spec)?;
        let err = |message: String| ConfigError::PortFlag {
            spec: spec.to_string(),
            message,
        };
        port.validate().map_err(|e| err(e.to_string()))?;
        if self.ports.iter().any(|p| p.name == port.name) {
            return Err(err(format!("a port named '{}' already exists", port.name)));
        }
        if let Some(p) = self.ports.iter().find(|p| p.socket == port.socket) {
            return Err(err(format!("socket already used by port '{}'", p.name)));
        }
        self.ports.push(port);
        Ok(())
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        check_settings(&self.settings).map_err(ConfigError::Setting)?;
        self.control
            .check()
            .map_err(|m| ConfigError::Setting(format!("[control] {m}")))?;
        self.metrics
            .check()
            .map_err(|m| ConfigError::Setting(format!("[metrics] {m}")))
    }
}

fn check_settings(s: &Settings) -> Result<(), String> {
    if !(68..=9216).contains(&s.mtu) {
        return Err(format!("field `mtu`: {} is outside 68-9216", s.mtu));
    }
    if s.mac_table_size == 0 {
        return Err("field `mac_table_size`: must be at least 1".into());
    }
    if s.mac_aging_secs == 0 {
        return Err("field `mac_aging_secs`: must be at least 1".into());
    }
    if s.max_flows == 0 {
        return Err("field `max_flows`: must be at least 1".into());
    }
    if s.max_guest_memory_gib == 0 {
        return Err("field `max_guest_memory_gib`: must be at least 1".into());
    }
    if s.mac_limit_per_port == 0 {
        return Err("field `mac_limit_per_port`: must be at least 1".into());
    }
    if let Some(m) = &s.socket_mode {
        crate::port::parse_socket_mode(m).map_err(|e| format!("field `socket_mode`: {e}"))?;
    }
    if let Some(g) = &s.socket_group {
        crate::port::resolve_group(g).map_err(|e| format!("field `socket_group`: {e}"))?;
    }
    if s.event_threads == 0 || s.event_threads > MAX_EVENT_THREADS {
        return Err(format!(
            "field `event_threads`: must be between 1 and {MAX_EVENT_THREADS}"
        ));
    }
    // CPU ids, checked against the CPUs this process may run on (taskset, a container's
    // cpuset, systemd's CPUAffinity=), not against a count of CPUs.
    let allowed = crate::switch::allowed_cpus();
    if let Some(cpu) = s.poll_cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(format!(
            "field `poll_cpus`: CPU {cpu} is not one this process may run on ({})",
            cpu_list(&allowed)
        ));
    }
    Ok(())
}

/// Most event-mode dataplane threads.
pub const MAX_EVENT_THREADS: usize = 64;

/// `0-3,6` for the CPUs [0, 1, 2, 3, 6].
fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if cpus[i] == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{}", cpus[i]));
        }
        i += 1;
    }
    out
}

/// Parses the `--port` flag's key=value list.
pub fn parse_port_flag(spec: &str) -> Result<PortConfig, ConfigError> {
    let err = |message: String| ConfigError::PortFlag {
        spec: spec.to_string(),
        message,
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in spec.split(',') {
        match piece.split_once('=') {
            Some((k, v)) => pairs.push((k.trim().to_string(), v.trim().to_string())),
            None => match pairs.last_mut() {
                // A bare piece continues the previous value (trunks=10,20-29).
                Some((k, v))
                    if matches!(
                        k.as_str(),
                        "trunks"
                            | "offloads"
                            | "allowed-macs"
                            | "allowed_macs"
                            | "allowed-ips"
                            | "allowed_ips"
                    ) =>
                {
                    v.push(',');
                    v.push_str(piece.trim());
                }
                _ => return Err(err(format!("'{piece}' is not key=value"))),
            },
        }
    }
    let mut port = PortConfig::vhost("", PathBuf::new());
    for (k, v) in pairs {
        match k.as_str() {
            "name" => port.name = v,
            "type" => {
                port.kind = match v.as_str() {
                    "vhost" => PortKind::Vhost,
                    "internal" => PortKind::Internal,
                    "afpacket" => PortKind::Afpacket,
                    // The uplink kind measured fastest, AF_PACKET where it cannot attach.
                    "afxdp" | "uplink" => PortKind::Afxdp,
                    _ => {
                        return Err(err(format!(
                            "type '{v}' is not vhost, internal, uplink, afpacket or afxdp"
                        )))
                    }
                }
            }
            "interface" => port.interface = Some(v),
            "socket" | "path" => port.socket = PathBuf::from(v),
            "mode" => {
                port.mode = match v.as_str() {
                    "server" => ConnectMode::Server,
                    "client" => ConnectMode::Client,
                    _ => return Err(err(format!("mode '{v}' is not server or client"))),
                }
            }
            "mac" => port.mac = Some(v),
            "vlan" => {
                port.vlan = Some(
                    v.parse()
                        .map_err(|_| err(format!("vlan '{v}' is not a number")))?,
                )
            }
            "vlan-mode" | "vlan_mode" => port.vlan_mode = Some(v),
            "trunks" => port.trunks = Some(v),
            "offloads" => port.offloads = Some(v),
            "allowed-macs" | "allowed_macs" => {
                port.allowed_macs = v.split(',').map(|s| s.trim().to_string()).collect()
            }
            "allowed-ips" | "allowed_ips" => {
                port.allowed_ips = v.split(',').map(|s| s.trim().to_string()).collect()
            }
            "dhcp-server" | "dhcp_server" => {
                port.dhcp_server = match v.as_str() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => return Err(err(format!("dhcp-server '{v}' is not true or false"))),
                }
            }
            "ingress-policing-rate" | "ingress_policing_rate" => {
                port.ingress_policing_rate = Some(v.parse().map_err(|_| {
                    err(format!("ingress-policing-rate '{v}' is not a number (kbit/s)"))
                })?)
            }
            "socket-mode" | "socket_mode" => port.socket_mode = Some(v),
            "socket-group" | "socket_group" => port.socket_group = Some(v),
            "ingress-policing-burst" | "ingress_policing_burst" => {
                port.ingress_policing_burst = Some(v.parse().map_err(|_| {
                    err(format!("ingress-policing-burst '{v}' is not a number (kbit)"))
                })?)
            }
            "queue-pairs" | "queue_pairs" => {
                port.queue_pairs = Some(
                    v.parse()
                        .map_err(|_| err(format!("queue-pairs '{v}' is not a number")))?,
                )
            }
            "mac-limit" | "mac_limit" => {
                port.mac_limit = Some(
                    v.parse()
                        .map_err(|_| err(format!("mac-limit '{v}' is not a number")))?,
                )
            }
            other => {
                return Err(err(format!(
                "unknown key '{other}' (expected name, type, socket, interface, mode, mac, vlan, vlan-mode, trunks, mac-limit, offloads, queue-pairs)"
            )))
            }
        }
    }
    if port.name.is_empty() {
        return Err(err("missing name=".into()));
    }
    if port.kind == PortKind::Vhost && port.socket.as_os_str().is_empty() {
        return Err(err("missing socket=".into()));
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[switch]
mtu = 1500
mac_aging_secs = 60

[metrics]
listen = "127.0.0.1:9999"

[[port]]
name = "vm1"
socket = "/tmp/pb-vm1.sock"
vlan = 10

[[port]]
name = "up"
socket = "/tmp/pb-up.sock"
mode = "client"
vlan_mode = "trunk"
trunks = "10,20-30"
"#;

    #[test]
    fn reads_a_full_config() {
        let c = Config::from_toml(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.settings.mtu, 1500);
        assert_eq!(c.settings.mac_aging_secs, 60);
        assert_eq!(c.settings.mac_table_size, 8192, "defaults fill the rest");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[1].mode, ConnectMode::Client);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let bad_vlan = GOOD.replace("vlan = 10", "vlan = 5000");
        let e = Config::from_toml(Path::new("t.toml"), &bad_vlan)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:9:"), "{e}");
        assert!(
            e.contains("'vm1'") && e.contains("`vlan`") && e.contains("5000"),
            "{e}"
        );

        let typo = GOOD.replace("vlan = 10", "vlna = 10");
        let e = Config::from_toml(Path::new("t.toml"), &typo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 12") && e.contains("vlna"), "{e}");

        let dup = GOOD.replace("name = \"up\"", "name = \"vm1\"");
        let e = Config::from_toml(Path::new("t.toml"), &dup)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:14:") && e.contains("used twice"), "{e}");

        let mtu = GOOD.replace("mtu = 1500", "mtu = 20");
        let e = Config::from_toml(Path::new("t.toml"), &mtu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:2:") && e.contains("`mtu`"), "{e}");

        let trunk = GOOD.replace("10,20-30", "10,5000");
        let e = Config::from_toml(Path::new("t.toml"), &trunk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`trunks`") && e.contains("5000"), "{e}");
    }

    #[test]
    fn the_arp_nd_proxy_is_set_in_a_vni_entry() {
        let text = "[vxlan]\nlocal_ip = \"198.51.100.1\"\n\
                    [[vxlan.vnis]]\nvni = 100\nvlan = 10\nproxy = true\n\
                    [[vxlan.vnis]]\nvni = 200\nvlan = 20\n";
        let c = Config::from_toml(Path::new("t.toml"), text).unwrap();
        let vxlan = c.vxlan.unwrap();
        assert_eq!(
            (vxlan.vnis[0].proxy, vxlan.vnis[1].proxy),
            (true, false),
            "on where set, off by default"
        );
        assert_eq!(vxlan.vnis.len(), 2);
        let e = Config::from_toml(Path::new("t.toml"), &text.replace("proxy", "prox"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prox"), "{e}");
        let e = Config::from_toml(
            Path::new("t.toml"),
            &text.replace(
                "[[vxlan.vnis]]\nvni = 100",
                "neigh_table_size = 2000000\n[[vxlan.vnis]]\nvni = 100",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("neigh_table_size"), "{e}");
    }

    #[test]
    fn evpn_section_parses_and_is_checked() {
        let vxlan = "[vxlan]\nlocal_ip = \"198.51.100.1\"\nvnis = [{ vni = 100, vlan = 10 }]\n\n";
        let c = Config::from_toml(Path::new("t.toml"), &format!("{vxlan}[evpn]\n")).unwrap();
        assert_eq!(c.evpn, Some(crate::evpn::EvpnConfig::default()));
        let c = Config::from_toml(
            Path::new("t.toml"),
            &format!("{vxlan}[evpn]\nvnis = [100]\ndevice_prefix = \"ev\"\n"),
        )
        .unwrap();
        let e = c.evpn.unwrap();
        assert_eq!((e.vnis, e.device_prefix.as_str()), (Some(vec![100]), "ev"));
        let off = Config::from_toml(
            Path::new("t.toml"),
            &format!("{vxlan}[evpn]\nenabled = false\n"),
        );
        assert_eq!(off.unwrap().evpn, None);
        for (text, needle) in [
            ("[evpn]\n".to_string(), "needs the [vxlan] tunnel"),
            (
                format!("{vxlan}[evpn]\ndevice_prefix = \"toolong\"\n"),
                "device_prefix",
            ),
            (
                format!("{vxlan}[evpn]\nshadow_udp_port = 4789\n"),
                "VTEP's own port",
            ),
            (format!("{vxlan}[evpn]\nvni = [100]\n"), "vni"),
            (
                vxlan.replace("[vxlan]\n", "[vxlan]\nunknown_vtep = \"learn\"\n") + "[evpn]\n",
                "cannot go with EVPN",
            ),
        ] {
            let e = Config::from_toml(Path::new("t.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn host_ports_parse_and_their_devices_are_checked() {
        let ok = "[[port]]\nname = \"host10\"\ntype = \"internal\"\nvlan = 10\n\n\
                  [[port]]\nname = \"nic\"\ntype = \"afpacket\"\ninterface = \"eth1\"\n\
                  vlan_mode = \"trunk\"\n";
        let c = Config::from_toml(Path::new("t.toml"), ok).unwrap();
        assert_eq!(c.ports[0].kind, PortKind::Internal);
        assert_eq!(c.ports[0].interface_name(), "host10");
        assert_eq!(c.ports[1].kind, PortKind::Afpacket);
        assert_eq!(c.ports[1].interface_name(), "eth1");
        let err = |text: &str| {
            Config::from_toml(Path::new("t.toml"), text)
                .unwrap_err()
                .to_string()
        };
        // An uplink on the switch's own tap would loop its frames.
        let e = err(&ok.replace("eth1", "host10"));
        assert!(e.contains("`interface`") && e.contains("'host10'"), "{e}");
        let e = err(&ok.replace(
            "type = \"internal\"",
            "type = \"internal\"\nsocket = \"/tmp/x\"",
        ));
        assert!(e.contains("`socket`") && e.contains("no socket"), "{e}");
        let e = err(&ok.replace("name = \"host10\"", "name = \"a-name-too-long-for-linux\""));
        assert!(e.contains("interface name"), "{e}");
        let e = err(&ok.replace("\"afpacket\"", "\"dpdk\""));
        assert!(e.contains("dpdk"), "{e}");
        let c = Config::from_toml(
            Path::new("t.toml"),
            &ok.replace("\"afpacket\"", "\"afxdp\""),
        )
        .unwrap();
        assert_eq!(c.ports[1].kind, PortKind::Afxdp);
        let c = Config::from_toml(
            Path::new("t.toml"),
            &ok.replace("\"afpacket\"", "\"uplink\""),
        )
        .unwrap();
        assert_eq!(
            c.ports[1].kind,
            PortKind::Afxdp,
            "uplink: the measured default"
        );
        let spec = parse_port_flag("name=u,type=uplink,interface=eth1").unwrap();
        assert_eq!(spec.kind, PortKind::Afxdp);
        let spec = parse_port_flag("name=h,type=internal,vlan=20").unwrap();
        assert_eq!((spec.kind, spec.vlan), (PortKind::Internal, Some(20)));
    }

    #[test]
    fn port_security_parses_from_flags_and_files_and_is_checked() {
        let p = parse_port_flag(
            "name=a,socket=/tmp/a.sock,allowed-macs=52:54:00:00:0a:01,\
             allowed-ips=10.0.0.1,fd00::/64,dhcp-server=true",
        )
        .unwrap();
        assert_eq!(p.allowed_macs, ["52:54:00:00:0a:01"]);
        assert_eq!(p.allowed_ips, ["10.0.0.1", "fd00::/64"]);
        assert!(p.dhcp_server);
        let toml = "[[port]]\nname = \"a\"\nsocket = \"/tmp/a.sock\"\n\
                    allowed_ips = [\"10.0.0.0/24\"]\n";
        let c = Config::from_toml(Path::new("t.toml"), toml).unwrap();
        assert_eq!(c.ports[0].allowed_ips, ["10.0.0.0/24"]);
        let e = Config::from_toml(Path::new("t.toml"), &toml.replace("/24", "/40"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`allowed_ips`") && e.contains("0-32"), "{e}");
    }

    #[test]
    fn control_and_flow_limits_parse_and_are_checked() {
        let c = Config::from_toml(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.control, ControlLimits::default());
        assert_eq!(c.settings.max_flows, crate::switch::DEFAULT_MAX_FLOWS);
        let text = "[switch]\nmax_flows = 500\n\n[control]\nmax_clients = 4\nidle_timeout_secs = 30\n\n[metrics]\nmax_connections = 8\ntimeout_secs = 2\n";
        let c = Config::from_toml(Path::new("t.toml"), text).unwrap();
        assert_eq!(
            c.metrics,
            MetricsLimits {
                max_connections: 8,
                timeout_secs: 2
            }
        );
        assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN.parse().ok());
        assert_eq!(c.settings.max_flows, 500);
        assert_eq!(
            c.control,
            ControlLimits {
                max_clients: 4,
                idle_timeout_secs: 30
            }
        );
        assert_eq!(
            c.control_socket,
            crate::control::default_socket_path(),
            "no socket: the default"
        );
        for (bad, field) in [
            ("[control]\nmax_clients = 0\n", "`max_clients`"),
            ("[control]\nidle_timeout_secs = 0\n", "`idle_timeout_secs`"),
            ("[switch]\nmax_flows = 0\n", "`max_flows`"),
            ("[metrics]\nmax_connections = 0\n", "`max_connections`"),
            ("[metrics]\ntimeout_secs = 0\n", "`timeout_secs`"),
            (
                "[conntrack]\nzone_limits = [{ zone = 5, limit = 0 }]\n",
                "`zone_limits`",
            ),
            ("[conntrack]\nmax_connections = 0\n", "`max_connections`"),
            (
                "[conntrack]\nmax_connections = 100000000\n",
                "`max_connections`",
            ),
        ] {
            let e = Config::from_toml(Path::new("t.toml"), bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.toml:1:") && e.contains(field), "{e}");
        }
    }

    #[test]
    fn port_flags_parse_with_trunk_lists() {
        let mut c = Config::default();
        c.add_port_flag("name=t,socket=/tmp/t.sock,vlan-mode=native-tagged,vlan=5,trunks=10,20-22")
            .unwrap();
        assert_eq!(c.ports[0].trunks.as_deref(), Some("10,20-22"));
        assert!(
            c.add_port_flag("name=t,socket=/tmp/u.sock").is_err(),
            "duplicate name"
        );
        assert!(
            c.add_port_flag("socket=/tmp/x.sock").is_err(),
            "missing name"
        );
        assert!(c
            .add_port_flag("name=x,socket=/tmp/x.sock,colour=red")
            .is_err());
        assert!(c
            .add_port_flag("name=x,socket=/tmp/x.sock,mode=maybe")
            .is_err());
    }

    #[test]
    fn port_flags_set_offloads_and_queue_pairs() {
        use crate::virtio::features::{bit, ALL_OFFLOADS};
        use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_MQ};
        let mut c = Config::default();
        c.add_port_flag("name=a,socket=/tmp/a.sock,offloads=csum,guest_csum,queue-pairs=1")
            .unwrap();
        c.add_port_flag("name=b,socket=/tmp/b.sock").unwrap();
        let (a, b) = (&c.ports[0], &c.ports[1]);
        assert_eq!(a.offloads.as_deref(), Some("csum,guest_csum"));
        let fa = a.offered_features().unwrap();
        assert!(fa & bit(VIRTIO_NET_F_CSUM) != 0 && fa & ALL_OFFLOADS == 0b11);
        assert_eq!(fa & bit(VIRTIO_NET_F_MQ), 0, "one queue pair: no MQ");
        let fb = b.offered_features().unwrap();
        assert_eq!(fb & ALL_OFFLOADS, ALL_OFFLOADS, "all offloads by default");
        assert_ne!(fb & bit(VIRTIO_NET_F_MQ), 0, "8 queue pairs by default: MQ");
        assert_eq!(b.queue_pairs(), 8);
        let e = c
            .add_port_flag("name=x,socket=/tmp/x.sock,queue-pairs=65")
            .unwrap_err();
        assert!(e.to_string().contains("queue_pairs"), "{e}");
        assert!(c
            .add_port_flag("name=x,socket=/tmp/x.sock,offloads=host_tso4")
            .unwrap_err()
            .to_string()
            .contains("needs csum"));
    }
}
