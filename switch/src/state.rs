//! The running configuration saved across restarts (`[switch] state_file`): the ports with
//! their VLAN policies, the flows, groups and meters, the tunnel's VNI mappings, flood lists
//! and static MACs, and the conntrack limits, as changed at run time through the control
//! socket. Saved atomically (a temporary file, fsync, rename) after every change the switch
//! accepted, before the change is acknowledged; restored at start.
//!
//! The config file and the saved state are merged three ways, item by item (ports by name,
//! VNIs by number), with the config file as it was at the last save as the base: what the
//! config file changed since wins, what only the running switch changed is kept. So a port
//! added with flowctl survives a restart, and so does an edit of the config file.
//! Flows, groups, meters and static MACs exist only at run time: the saved ones come back.
//!
//! A state file that cannot be read, is corrupt, or comes from a newer Patchbay stops the
//! start with an error that says so, and is left untouched: nothing it holds is lost, and
//! nothing runs with half of it.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use patchbay_overlay::proxy::NeighOrigin;
use patchbay_overlay::vtep::{MacOrigin, VniConfig};

use crate::config::Config;
use crate::control::flows::{self, FlowLine};
use crate::flow::pipeline::FlowDump;
use crate::port::PortConfig;
use crate::switch::Switch;

/// The format this switch writes; it reads this one and older ones.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt ({message}); it is left as it is: fix it, or move it \
         away to start from the config file alone"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "state file {path} was written by a newer Patchbay (state version {found}; this switch \
         reads up to {STATE_VERSION}); it is left as it is: run the newer switch, or move the \
         file away to start from the config file alone"
    )]
    Newer { path: PathBuf, found: u32 },
    #[error("state file {path}: cannot save the running configuration: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}: cannot restore {what}: {message}")]
    Restore {
        path: PathBuf,
        what: String,
        message: String,
    },
}

/// What the config file said, recorded with each save: the base of the three-way merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigBase {
    pub ports: Vec<PortConfig>,
    /// With each VNI's options (its ARP/ND proxy).
    #[serde(default)]
    pub vnis: Vec<VniConfig>,
    #[serde(default)]
    pub conntrack: Option<crate::conntrack::Limits>,
}

/// A static remote MAC of the tunnel (`flowctl tunnel add-mac`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticMac {
    pub vni: u32,
    pub mac: String,
    pub remote: std::net::IpAddr,
}

/// A static address of a VNI's ARP/ND proxy (`flowctl tunnel add-neigh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticNeighbor {
    pub vni: u32,
    pub ip: std::net::IpAddr,
    pub mac: String,
}

/// The saved running configuration (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    /// The binary that saved it, for people reading the file.
    #[serde(default)]
    pub saved_by: String,
    pub config: ConfigBase,
    pub ports: Vec<PortConfig>,
    /// Each port's number, kept across the restart (groups and `output:N` refer to them).
    #[serde(default)]
    pub port_numbers: std::collections::BTreeMap<String, u16>,
    /// In `add-meter`, `add-group` and `add-flows` syntax, in that order of restoring.
    #[serde(default)]
    pub meters: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub flows: Vec<String>,
    #[serde(default)]
    pub vnis: Vec<VniConfig>,
    #[serde(default)]
    pub static_macs: Vec<StaticMac>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_neighbors: Vec<StaticNeighbor>,
    #[serde(default)]
    pub conntrack: Option<crate::conntrack::Limits>,
}

/// Merges item lists three ways by `key`: `base` is what the config said at the last save,
/// `saved` what was running, `config` what the config says now. The config's changes since
/// the base win (added, changed or removed there); the running switch's own changes are kept
/// otherwise. Saved order first, then new config items in config order.
pub fn merge3<T: Clone + PartialEq, K: Eq + Hash>(
    base: &[T],
    saved: &[T],
    config: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let base: HashMap<K, &T> = base.iter().map(|t| (key(t), t)).collect();
    let now: HashMap<K, &T> = config.iter().map(|t| (key(t), t)).collect();
    let mut out = Vec::new();
    for s in saved {
        match (base.get(&key(s)), now.get(&key(s))) {
            (Some(b), Some(c)) if b == c => out.push(s.clone()),
            (_, Some(c)) => out.push((*c).clone()),
            (Some(_), None) => {} // removed from the config file
            (None, None) => out.push(s.clone()),
        }
    }
    let in_saved: std::collections::HashSet<K> = saved.iter().map(&key).collect();
    for c in config {
        let k = key(c);
        if in_saved.contains(&k) {
            continue;
        }
        match base.get(&k) {
            Some(b) if *b == c => {} // removed at run time, unchanged in the file
            _ => out.push(c.clone()),
        }
    }
    out
}

/// The state file of a running switch.
pub struct StateFile {
    path: PathBuf,
    base: ConfigBase,
    /// Saves one at a time, each capturing the switch as it is then.
    saving: Mutex<()>,
}

/// A flow as `add-flows` takes it back.
pub fn flow_line(f: &FlowDump) -> String {
    let mut parts = Vec::new();
    if f.cookie != 0 {
        parts.push(format!("cookie={:#x}", f.cookie));
    }
    if f.table != 0 {
        parts.push(format!("table={}", f.table));
    }
    if f.idle_timeout != 0 {
        parts.push(format!("idle_timeout={}", f.idle_timeout));
    }
    if f.hard_timeout != 0 {
        parts.push(format!("hard_timeout={}", f.hard_timeout));
    }
    if !f.match_text.is_empty() {
        parts.push(f.match_text.clone());
    }
    format!("{} actions={}", parts.join(","), f.actions_text)
}

impl StateFile {
    /// The state file of a switch started from `config` (whose ports, VNIs and conntrack
    /// limits are the merge base of the next save).
    pub fn new(path: &Path, config: &Config) -> StateFile {
        StateFile {
            path: path.to_path_buf(),
            base: ConfigBase {
                ports: config.ports.clone(),
                vnis: config
                    .vxlan
                    .as_ref()
                    .map(|v| v.vnis.clone())
                    .unwrap_or_default(),
                conntrack: Some(config.conntrack.clone()),
            },
            saving: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or None when there is none yet.
    pub fn load(&self) -> Result<Option<SavedState>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: self.path.clone(),
            message,
        };
        // The version first, so a newer file is named as such rather than as corrupt.
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("no \"version\" field".into()))?;
        if version > u64::from(STATE_VERSION) {
            return Err(StateError::Newer {
                path: self.path.clone(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Merges `saved` into `config` (ports, VNIs with their options, conntrack limits) and
    /// returns what only the saved state has (flows, groups, meters, static MACs and
    /// addresses), for [`StateFile::restore`] once the switch runs.
    pub fn merge_into(&self, saved: SavedState, config: &mut Config) -> SavedState {
        config.ports = merge3(&saved.config.ports, &saved.ports, &config.ports, |p| {
            p.name.clone()
        });
        if let Some(vxlan) = &mut config.vxlan {
            vxlan.vnis = merge3(&saved.config.vnis, &saved.vnis, &vxlan.vnis, |v| v.vni);
        }
        if let Some(limits) = &saved.conntrack {
            // The config file's limits win if they changed since the save.
            if saved.config.conntrack.as_ref() == Some(&config.conntrack) {
                config.conntrack = limits.clone();
            }
        }
        saved
    }

    /// Puts back the saved meters, groups, flows, static MACs and static proxy addresses into
    /// the running switch.
    pub fn restore(&self, sw: &Switch, saved: &SavedState) -> Result<(), StateError> {
        let failed = |what: &str, message: String| StateError::Restore {
            path: self.path.clone(),
            what: what.to_string(),
            message,
        };
        for m in &saved.meters {
            flows::add_meter(sw, m, false).map_err(|e| failed(&format!("meter `{m}`"), e))?;
        }
        for g in &saved.groups {
            flows::add_group(sw, g, false).map_err(|e| failed(&format!("group `{g}`"), e))?;
        }
        let lines: Vec<FlowLine> = saved
            .flows
            .iter()
            .enumerate()
            .map(|(i, text)| FlowLine {
                line: i + 1,
                text: text.clone(),
            })
            .collect();
        if !lines.is_empty() {
            flows::add_flows(sw, &lines).map_err(|e| failed("the flows", e))?;
        }
        if !saved.static_macs.is_empty() {
            let tunnel = sw.tunnel().ok_or_else(|| {
                failed(
                    "static tunnel MACs",
                    "the config has no [vxlan] any more".into(),
                )
            })?;
            for m in &saved.static_macs {
                let mac = m
                    .mac
                    .parse::<crate::wire::EthernetAddress>()
                    .map_err(|e| failed(&format!("tunnel MAC {}", m.mac), e.to_string()))?;
                tunnel
                    .vtep
                    .add_static(m.vni, mac.0, m.remote)
                    .map_err(|e| failed(&format!("tunnel MAC {}", m.mac), e.to_string()))?;
            }
        }
        if !saved.static_neighbors.is_empty() {
            let tunnel = sw.tunnel().ok_or_else(|| {
                failed(
                    "static tunnel addresses",
                    "the config has no [vxlan] any more".into(),
                )
            })?;
            for n in &saved.static_neighbors {
                let what = || format!("tunnel address {} in VNI {}", n.ip, n.vni);
                let mac = n
                    .mac
                    .parse::<crate::wire::EthernetAddress>()
                    .map_err(|e| failed(&what(), e.to_string()))?;
                tunnel
                    .vtep
                    .add_static_neighbor(n.vni, n.ip, mac.0)
                    .map_err(|e| failed(&what(), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The running configuration of `sw` now.
    pub fn capture(&self, sw: &Switch) -> SavedState {
        let running: Vec<_> = sw.ports().into_iter().filter(|p| !p.is_tunnel()).collect();
        let port_numbers = running.iter().map(|p| (p.name.clone(), p.id)).collect();
        let ports = running
            .iter()
            .map(|p| {
                let mut config = p.config.clone();
                let vlan = p.vlan().describe();
                config.vlan_mode = Some(vlan.mode);
                config.vlan = vlan.vlan;
                config.trunks = vlan.trunks;
                let security = p.security();
                config.allowed_macs = security.allowed_macs.clone();
                config.allowed_ips = security.allowed_ips.clone();
                config.dhcp_server = security.dhcp_server;
                config
            })
            .collect();
        let (vnis, static_macs, static_neighbors) = match sw.tunnel() {
            Some(t) => {
                let snap = t.vtep.snapshot();
                (
                    t.vtep.config().vnis,
                    snap.macs
                        .into_iter()
                        .filter(|m| m.origin == MacOrigin::Static)
                        .map(|m| StaticMac {
                            vni: m.vni,
                            mac: m.mac,
                            remote: m.remote,
                        })
                        .collect(),
                    snap.neighbors
                        .into_iter()
                        .filter(|n| n.origin == NeighOrigin::Static)
                        .map(|n| StaticNeighbor {
                            vni: n.vni,
                            ip: n.ip,
                            mac: n.mac,
                        })
                        .collect(),
                )
            }
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        SavedState {
            version: STATE_VERSION,
            saved_by: format!("patchbay-switch {}", env!("CARGO_PKG_VERSION")),
            config: self.base.clone(),
            ports,
            port_numbers,
            meters: flows::dump_meters(sw)
                .into_iter()
                .map(|m| m.meter)
                .collect(),
            groups: flows::dump_groups(sw)
                .into_iter()
                .map(|g| g.group)
                .collect(),
            flows: flows::dump_flows(sw, None)
                .unwrap_or_default()
                .iter()
                .map(flow_line)
                .collect(),
            vnis,
            static_macs,
            static_neighbors,
            conntrack: Some(sw.flows().conntrack().limits()),
        }
    }

    /// Saves the running configuration: written next to the file, flushed to disk, then
    /// renamed over it, so a crash leaves the old state or the new one, never half of one.
    pub fn save(&self, sw: &Switch) -> Result<(), StateError> {
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.capture(sw);
        let write_err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        // Plain data: encoding cannot fail.
        let text = serde_json::to_string_pretty(&state).expect("state always encodes");
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        std::fs::rename(&tmp, &self.path).map_err(write_err)?;
        // The rename itself, durable.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item(&'static str, u32);

    fn merged(base: &[Item], saved: &[Item], config: &[Item]) -> Vec<Item> {
        merge3(base, saved, config, |i| i.0)
    }

    #[test]
    fn run_time_changes_survive_and_config_changes_win() {
        let base = [Item("a", 1), Item("b", 1), Item("c", 1)];
        // At run time: a's VLAN changed, c removed, d added.
        let saved = [Item("a", 2), Item("b", 1), Item("d", 1)];
        // In the file since: b changed, e added.
        let config = [Item("a", 1), Item("b", 5), Item("c", 1), Item("e", 1)];
        assert_eq!(
            merged(&base, &saved, &config),
            [Item("a", 2), Item("b", 5), Item("d", 1), Item("e", 1)]
        );
    }

    #[test]
    fn removing_from_the_file_removes_even_a_changed_item() {
        let base = [Item("a", 1), Item("b", 1)];
        let saved = [Item("a", 7), Item("b", 1)];
        let config = [Item("b", 1)];
        assert_eq!(merged(&base, &saved, &config), [Item("b", 1)]);
    }

    #[test]
    fn the_file_adding_what_run_time_added_takes_the_file() {
        let saved = [Item("x", 1)];
        let config = [Item("x", 2)];
        assert_eq!(merged(&[], &saved, &config), [Item("x", 2)]);
    }

    #[test]
    fn the_proxy_setting_of_a_vni_merges_like_the_vni() {
        use patchbay_overlay::vtep::VtepConfig;
        let vni = |n: u32, proxy: &[u32]| VniConfig {
            vni: n,
            vlan: n as u16,
            remotes: vec![],
            proxy: proxy.contains(&n),
        };
        let vtep = |proxy: Vec<u32>| VtepConfig {
            vnis: vec![vni(1, &proxy), vni(2, &proxy)],
            ..VtepConfig::new("192.0.2.1".parse().unwrap())
        };
        let proxy_vnis = |config: &Config| -> Vec<u32> {
            let vnis = &config.vxlan.as_ref().unwrap().vnis;
            vnis.iter().filter(|v| v.proxy).map(|v| v.vni).collect()
        };
        let config_with = |proxy| Config {
            vxlan: Some(vtep(proxy)),
            ..Config::default()
        };
        // Started with the proxy of VNI 1 on; at run time VNI 2's was turned on too.
        let file = StateFile::new(Path::new("/nonexistent/state.json"), &config_with(vec![1]));
        let saved = SavedState {
            config: file.base.clone(),
            vnis: vtep(vec![1, 2]).vnis,
            ..SavedState::default()
        };
        // Unchanged file: the run-time settings come back.
        let mut config = config_with(vec![1]);
        file.merge_into(saved.clone(), &mut config);
        assert_eq!(proxy_vnis(&config), vec![1, 2]);
        // The file turned VNI 1's off since: its edit wins; VNI 2 keeps the run time's.
        let mut config = config_with(vec![]);
        file.merge_into(saved, &mut config);
        assert_eq!(proxy_vnis(&config), vec![2]);
        // A state file from before the setting reads as off.
        let old: SavedState = serde_json::from_str(
            r#"{"version":1,"config":{"ports":[],"vnis":[{"vni":1,"vlan":1,"remotes":[]}]},
                "ports":[],"vnis":[{"vni":1,"vlan":1,"remotes":[]}]}"#,
        )
        .unwrap();
        assert!(!old.vnis[0].proxy);
        assert!(old.static_neighbors.is_empty());
        // And one written with the proxy off says nothing of it, for an older switch.
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("proxy"), "{json}");
    }

    #[test]
    fn flow_lines_carry_cookie_table_and_timeouts() {
        let f = FlowDump {
            table: 2,
            priority: 10,
            cookie: 0x9,
            duration_ms: 5,
            idle_age_ms: 1,
            packets: 3,
            bytes: 100,
            idle_timeout: 30,
            hard_timeout: 0,
            match_text: "priority=10,ip".into(),
            actions_text: "drop".into(),
        };
        assert_eq!(
            flow_line(&f),
            "cookie=0x9,table=2,idle_timeout=30,priority=10,ip actions=drop"
        );
    }
}
