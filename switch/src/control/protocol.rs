//! Control protocol, version 1.
//!
//! A request is one JSON object on one line: `{"version":1,"command":"show-ports"}`. The
//! response is one line: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. A client
//! may send many requests on one connection.

use serde::{Deserialize, Serialize};

use crate::mac_table::MacEntry;
use crate::port::{PortConfig, PortInfo};
use crate::vlan::VlanConfig;

pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the server reads (bytes); longer ones are refused.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Protocol and daemon versions.
    Hello,
    /// Hands every port, with its connected frontend, to the process asking: an in-place
    /// upgrade (`patchbay-switch --takeover`). The connection then carries the handover
    /// (docs/upgrade.md), not request lines.
    Takeover,
    /// All ports with state, negotiated features and counters.
    ShowPorts,
    /// The learning table, optionally one VLAN's part.
    ShowMacs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vlan: Option<u16>,
    },
    /// Switch-wide counters and settings.
    ShowSwitch,
    AddPort {
        /// Boxed: a port's description is much larger than any other request.
        port: Box<PortConfig>,
    },
    DelPort {
        name: String,
    },
    SetVlan {
        name: String,
        vlan: VlanConfig,
    },
    /// Replaces a port's security settings (both lists empty: no checks).
    SetPortSecurity {
        name: String,
        #[serde(default)]
        allowed_macs: Vec<String>,
        #[serde(default)]
        allowed_ips: Vec<String>,
        #[serde(default)]
        dhcp_server: bool,
    },
    /// The VXLAN tunnel: VNI mappings, flood lists, remote MACs, counters.
    ShowTunnel,
    /// BGP EVPN: per VNI the local MACs advertised, remote MACs and flood-list remotes
    /// installed from routes; the agent's counters.
    ShowEvpn,
    /// Maps a VNI to a local VLAN.
    TunnelMap {
        vni: u32,
        vlan: u16,
    },
    TunnelUnmap {
        vni: u32,
    },
    /// Adds a remote VTEP to a VNI's flood list.
    TunnelAddRemote {
        vni: u32,
        remote: std::net::IpAddr,
    },
    TunnelDelRemote {
        vni: u32,
        remote: std::net::IpAddr,
    },
    /// A static MAC -> remote VTEP entry (never aged, beats learning).
    TunnelAddMac {
        vni: u32,
        mac: String,
        remote: std::net::IpAddr,
    },
    TunnelDelMac {
        vni: u32,
        mac: String,
    },
    /// Turns a VNI's ARP/ND proxy on or off (`proxy` in its `[[vxlan.vnis]]` entry).
    TunnelSetProxy {
        vni: u32,
        proxy: bool,
    },
    /// A static address for a VNI's ARP/ND proxy: `ip` is at `mac` (never aged, beats
    /// learning; answered while `mac` is behind a remote VTEP).
    TunnelAddNeighbor {
        vni: u32,
        ip: std::net::IpAddr,
        mac: String,
    },
    TunnelDelNeighbor {
        vni: u32,
        ip: std::net::IpAddr,
    },
    /// Adds flows (or, with ovs-ofctl's line prefixes, modifies/deletes), all or nothing.
    AddFlows {
        flows: Vec<crate::control::flows::FlowLine>,
    },
    /// Replaces the actions of the flows a match selects (`strict`: same match + priority).
    ModFlows {
        flow: String,
        #[serde(default)]
        strict: bool,
    },
    /// Deletes the flows a match selects (all flows without one).
    DelFlows {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
        #[serde(default)]
        strict: bool,
    },
    /// Flows with counters (optionally those a match selects).
    DumpFlows {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
    /// Makes the flow set exactly these flows, atomically; unchanged flows keep counters.
    ReplaceFlows {
        flows: Vec<crate::control::flows::FlowLine>,
    },
    /// What replace-flows would change.
    DiffFlows {
        flows: Vec<crate::control::flows::FlowLine>,
    },
    /// Runs a described packet through the tables without sending it.
    Trace {
        packet: String,
    },
    /// Per-table flow counts and lookup/match counters.
    ShowTables,
    /// Tracked connections (of one zone), with the limits and counters.
    DumpConntrack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<u16>,
    },
    /// Forgets tracked connections (of one zone).
    FlushConntrack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<u16>,
    },
    /// add-group / mod-group (`modify`), in ovs-ofctl syntax.
    AddGroup {
        group: String,
        #[serde(default)]
        modify: bool,
    },
    /// Deletes a group (every group without one) and the flows that use it.
    DelGroups {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_id: Option<u32>,
    },
    DumpGroups,
    /// add-meter / mod-meter (`modify`), in ovs-ofctl syntax.
    AddMeter {
        meter: String,
        #[serde(default)]
        modify: bool,
    },
    /// Deletes a meter (every meter without one) and the flows that use it.
    DelMeters {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meter_id: Option<u32>,
    },
    DumpMeters,
    /// Changes connection limits: the total and/or per zone (a limit of 0 removes a zone's).
    SetConntrackLimits {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_connections: Option<usize>,
        #[serde(default)]
        zones: Vec<(u16, usize)>,
    },
}

/// Result of `dump-groups`: each group as `add-group` takes it, with counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDump {
    pub group: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Result of `dump-meters`: each meter as `add-meter` takes it, with counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterDump {
    pub meter: String,
    pub packets: u64,
    pub bytes: u64,
    /// Packets over the rate, dropped.
    pub dropped: u64,
}

/// Result of `dump-conntrack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackDump {
    pub connections: Vec<crate::conntrack::ConnInfo>,
    /// Stored connections in all zones.
    pub total: usize,
    pub limits: crate::conntrack::Limits,
    pub committed: u64,
    pub refused: u64,
    pub evicted: u64,
    pub expired: u64,
    pub invalid: u64,
}

impl Request {
    /// Whether the request changes the running configuration (what the state file saves);
    /// reads, traces and conntrack flushes do not.
    pub fn changes_configuration(&self) -> bool {
        matches!(
            self,
            Request::AddPort { .. }
                | Request::DelPort { .. }
                | Request::SetVlan { .. }
                | Request::SetPortSecurity { .. }
                | Request::TunnelMap { .. }
                | Request::TunnelUnmap { .. }
                | Request::TunnelAddRemote { .. }
                | Request::TunnelDelRemote { .. }
                | Request::TunnelAddMac { .. }
                | Request::TunnelDelMac { .. }
                | Request::TunnelSetProxy { .. }
                | Request::TunnelAddNeighbor { .. }
                | Request::TunnelDelNeighbor { .. }
                | Request::AddFlows { .. }
                | Request::ModFlows { .. }
                | Request::DelFlows { .. }
                | Request::ReplaceFlows { .. }
                | Request::AddGroup { .. }
                | Request::DelGroups { .. }
                | Request::AddMeter { .. }
                | Request::DelMeters { .. }
                | Request::SetConntrackLimits { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        Response {
            ok: true,
            result: Some(serde_json::to_value(result).unwrap_or(serde_json::Value::Null)),
            error: None,
        }
    }
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

/// Result of `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub daemon: String,
}

/// Result of `show-ports`.
pub type PortList = Vec<PortInfo>;

/// Result of `show-macs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacTableInfo {
    pub entries: Vec<MacEntry>,
    pub capacity: usize,
    pub aging_secs: u64,
}

/// Result of `show-switch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchInfo {
    pub mtu: u32,
    pub ports: usize,
    pub mac_entries: usize,
    pub mac_capacity: usize,
    pub floods: u64,
    pub mac_learned: u64,
    pub mac_moved: u64,
    pub mac_table_full: u64,
    pub control_errors: u64,
    pub poll_cpus: Vec<usize>,
    /// Each dataplane thread's busy time (`flowctl top` shows its share of each interval).
    #[serde(default)]
    pub dataplane: Vec<DataplaneThread>,
}

/// A dataplane thread's counters, as in the metrics' `patchbay_dataplane_*{thread}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneThread {
    pub thread: String,
    /// Nanoseconds spent on rounds that found work.
    pub busy_ns: u64,
    /// Times it slept waiting for a kick (event mode).
    pub sleeps: u64,
}

/// Result of `add-port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAdded {
    pub id: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let req = RequestEnvelope {
            version: 1,
            request: Request::DelPort { name: "vm1".into() },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"version":1,"command":"del-port","name":"vm1"}"#);
        assert_eq!(serde_json::from_str::<RequestEnvelope>(&line).unwrap(), req);
        let hello: RequestEnvelope =
            serde_json::from_str(r#"{"version":1,"command":"hello"}"#).unwrap();
        assert_eq!(hello.request, Request::Hello);
        assert!(
            serde_json::from_str::<RequestEnvelope>(r#"{"version":1,"command":"reboot"}"#).is_err()
        );
    }
}
