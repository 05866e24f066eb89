//! `flowctl`: drives a running patchbay-switch through its control socket.
//!
//! - `client.rs`: the connection and the request/response exchange.
//! - `render.rs`: tables for people; `--json` prints the switch's `result` for scripts.
//! - `top.rs`: `flowctl top`, rates from two samples of the counters.
//!
//! Each subcommand is one variant of [`Command`]; new ones (flow tables, ...) are new variants.

mod client;
mod render;
mod top;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use patchbay_switch::config::{parse_port_flag, ConfigError};
use patchbay_switch::control::default_socket_path;
use patchbay_switch::control::flows::FlowLine;
use patchbay_switch::control::protocol::{MacTableInfo, PortAdded, PortList, Request, SwitchInfo};
use patchbay_switch::port::PortConfig;
use patchbay_switch::vlan::{parse_vid, VlanConfig, VlanSet};

use client::{Client, ClientError};

const AFTER_HELP: &str = "\
Examples:
  flowctl show ports
  flowctl --socket /run/patchbay/control.sock show macs --vlan 10
  flowctl add-port name=vm3,socket=/run/vm3.sock,vlan=10
  flowctl set-vlan vm3 trunk 10,20-29

Exit status: 0 success, 1 the switch refused the request (its message is printed),
2 usage error, 3 cannot connect to the switch.";

const SET_VLAN_HELP: &str = "\
Change a port's VLAN policy; the addresses it learned are forgotten.

  access VID                  untagged member of VLAN VID
  trunk [LIST]                carries the listed VLANs tagged (default all); drops untagged frames
  native-untagged VID [LIST]  a trunk whose native VLAN VID travels untagged
  native-tagged VID [LIST]    a trunk that accepts untagged frames into VID but sends
                              everything tagged

LIST is `all` or VLAN IDs and ranges like 10,20-29.";

/// Control a running Patchbay switch: list ports, counters and learned MAC addresses; add and
/// remove ports; change a port's VLAN policy.
///
/// flowctl talks to the switch's control socket (newline-delimited JSON, see
/// docs/control-protocol.md). Human-readable tables by default; --json prints the switch's
/// answer as JSON for scripts.
#[derive(Debug, Parser)]
#[command(
    name = "flowctl",
    version,
    after_help = AFTER_HELP
)]
struct Cli {
    /// The switch's control socket [default: $PATCHBAY_CONTROL, else /run/patchbay/control.sock
    /// as root, else $XDG_RUNTIME_DIR/patchbay/control.sock, else /tmp/patchbay-UID/control.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print the switch's `result` as pretty JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the switch to answer.
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value = "5",
        value_parser = parse_timeout
    )]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show ports, one port, the MAC table or the switch's settings and counters.
    ///
    /// Also spelled show-ports, show-port, show-macs and show-switch.
    #[command(
        after_help = "Examples:\n  flowctl show ports\n  flowctl show port vm1\n  \
                            flowctl show macs --vlan 10\n  flowctl show switch --json"
    )]
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Same as `flowctl show ports`.
    #[command(name = "show-ports", hide = true)]
    ShowPorts(PortsArgs),
    /// Same as `flowctl show port NAME`.
    #[command(name = "show-port", hide = true)]
    ShowPort(PortArgs),
    /// Same as `flowctl show macs`.
    #[command(name = "show-macs", hide = true)]
    ShowMacs(MacsArgs),
    /// Same as `flowctl show switch`.
    #[command(name = "show-switch", hide = true)]
    ShowSwitch,

    /// Add a port; prints its port number.
    ///
    /// SPEC is name=NAME,socket=PATH followed by any of: mode=server|client (server, the
    /// default: the switch listens on PATH; client: the switch connects to PATH and keeps
    /// retrying), vlan-mode=access|trunk|native-untagged|native-tagged (default access),
    /// vlan=VID (the access VLAN or the native VLAN; default 1), trunks=LIST (allowed VLANs
    /// of a trunk, e.g. 10,20-29; default all), mac=MAC (offered in the device's config
    /// space), offloads=all|none|LIST (the checksum and segmentation offloads offered, by
    /// QEMU's names: csum,guest_csum,host_tso4,host_tso6,host_ecn,host_uso,guest_tso4,
    /// guest_tso6,guest_ecn,guest_uso4,guest_uso6; default all), queue-pairs=N (virtio-net
    /// multiqueue, 1-64; default 8), socket-mode=0660 and socket-group=GROUP (the socket's
    /// permissions, server mode), allowed-macs=LIST, allowed-ips=LIST and dhcp-server=true|false
    /// (port security: the only source MACs and IP prefixes the port may send as; see
    /// set-port-security). The same syntax as patchbay-switch --port.
    #[command(
        after_help = "Examples:\n  flowctl add-port name=vm3,socket=/run/vm3.sock,vlan=10\n  \
                            flowctl add-port name=up,socket=/run/up.sock,mode=client,vlan-mode=trunk,trunks=10,20-29"
    )]
    AddPort {
        /// name=NAME,socket=PATH[,mode=client][,vlan=V][,vlan-mode=M][,trunks=LIST][,mac=M]
        /// [,offloads=LIST][,queue-pairs=N][,socket-mode=MODE][,socket-group=GROUP]
        /// [,allowed-macs=LIST][,allowed-ips=LIST][,dhcp-server=BOOL]
        #[arg(value_name = "SPEC", value_parser = parse_spec)]
        spec: Box<PortConfig>,
    },

    /// Remove a port: its frontend is disconnected and its learned addresses are forgotten.
    #[command(after_help = "Example:\n  flowctl del-port vm3")]
    DelPort {
        /// The port's name (see `flowctl show ports`).
        name: String,
    },

    #[command(
        about = "Change a port's VLAN policy; the addresses it learned are forgotten",
        long_about = SET_VLAN_HELP,
        after_help = "Examples:\n  flowctl set-vlan vm1 access 20\n  flowctl set-vlan up trunk 10,20-29\n  \
                      flowctl set-vlan up native-untagged 5 10,20"
    )]
    SetVlan(SetVlanArgs),

    /// Replace a port's security settings: the only source MACs and IP prefixes it may send
    /// as (and claim in ARP and neighbour discovery), and whether it may answer as a DHCP
    /// server. Settings not given are cleared; with no lists the port is not checked.
    /// Addresses the port learned before are forgotten. The same keys as add-port's SPEC.
    #[command(
        name = "set-port-security",
        after_help = "Examples:\n  flowctl set-port-security vm1 allowed-macs=52:54:00:00:0a:01 allowed-ips=10.0.0.1,fd00::/64\n  \
                      flowctl set-port-security dhcp1 allowed-macs=52:54:00:00:0a:09 dhcp-server=true\n  \
                      flowctl set-port-security vm1"
    )]
    SetPortSecurity(SetPortSecurityArgs),

    /// Add one flow (ovs-ofctl syntax). Changes are atomic: a bad flow changes nothing.
    #[command(
        name = "add-flow",
        after_help = "Examples:\n  flowctl add-flow 'priority=100,ip,in_port=vm1,nw_dst=10.0.0.0/24 actions=output:vm2'\n  \
                      flowctl add-flow 'table=0,priority=0 actions=normal'"
    )]
    AddFlow {
        /// Accepted for ovs-ofctl compatibility: every change is already one atomic bundle.
        #[arg(long)]
        bundle: bool,
        flow: String,
    },
    /// Add the flows of FILE (one per line, # comments; `-` reads stdin), all or nothing.
    /// Lines may start with ovs-ofctl's add, modify, modify_strict, delete or delete_strict.
    #[command(
        name = "add-flows",
        after_help = "Example:\n  flowctl add-flows rules.txt"
    )]
    AddFlows {
        /// Accepted for ovs-ofctl compatibility: the file is always applied as one bundle.
        #[arg(long)]
        bundle: bool,
        file: PathBuf,
    },
    /// Replace the actions of the flows a match selects (at least as specific; --strict: the
    /// same match and priority).
    #[command(
        name = "mod-flows",
        after_help = "Example:\n  flowctl mod-flows 'ip,nw_src=10.0.0.1 actions=drop'"
    )]
    ModFlows {
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        bundle: bool,
        flow: String,
    },
    /// Delete the flows a match selects (all flows without one).
    #[command(
        name = "del-flows",
        after_help = "Examples:\n  flowctl del-flows\n  flowctl del-flows --strict 'priority=100,ip,nw_src=10.0.0.1'"
    )]
    DelFlows {
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        bundle: bool,
        #[arg(value_name = "MATCH")]
        filter: Option<String>,
    },
    /// Show flows with counters, in ovs-ofctl dump-flows style.
    #[command(
        name = "dump-flows",
        after_help = "Examples:\n  flowctl dump-flows\n  flowctl dump-flows 'table=1,ip'"
    )]
    DumpFlows {
        #[arg(value_name = "MATCH")]
        filter: Option<String>,
    },
    /// Make the switch's flows exactly those of FILE, atomically; flows already there keep
    /// their counters.
    #[command(
        name = "replace-flows",
        after_help = "Example:\n  flowctl replace-flows rules.txt"
    )]
    ReplaceFlows {
        #[arg(long)]
        bundle: bool,
        file: PathBuf,
    },
    /// Show how the switch's flows differ from FILE's (`-` only in the switch, `+` only in FILE).
    #[command(
        name = "diff-flows",
        after_help = "Example:\n  flowctl diff-flows rules.txt"
    )]
    DiffFlows { file: PathBuf },
    /// Follow a packet through the tables: each table's matching flow and its actions, and
    /// where the packet would leave. The packet is described like a match and needs in_port.
    #[command(
        after_help = "Example:\n  flowctl trace 'in_port=vm1,tcp,dl_src=52:54:00:00:00:01,dl_dst=52:54:00:00:00:02,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=22'"
    )]
    Trace { packet: String },
    /// Show tracked connections (of one zone), like `ovs-appctl dpctl/dump-conntrack`, with
    /// the limits and counters.
    #[command(
        name = "dump-conntrack",
        after_help = "Examples:\n  flowctl dump-conntrack\n  flowctl dump-conntrack zone=5"
    )]
    DumpConntrack {
        #[arg(value_name = "zone=N", value_parser = parse_zone)]
        zone: Option<u16>,
    },
    /// Forget tracked connections (of one zone): their next packets are new again.
    #[command(
        name = "flush-conntrack",
        after_help = "Examples:\n  flowctl flush-conntrack\n  flowctl flush-conntrack zone=5"
    )]
    FlushConntrack {
        #[arg(value_name = "zone=N", value_parser = parse_zone)]
        zone: Option<u16>,
    },
    /// Add a group (ovs-ofctl syntax): buckets of actions that `group:N` in a flow uses.
    #[command(
        name = "add-group",
        after_help = "Examples:\n  flowctl add-group 'group_id=1,type=all,bucket=output:vm2,bucket=output:vm3'\n  \
                      flowctl add-group 'group_id=2,type=select,bucket=weight:10,actions=output:2,bucket=weight:20,actions=output:3'"
    )]
    AddGroup { group: String },
    /// Replace a group (its counters are kept).
    #[command(name = "mod-group")]
    ModGroup { group: String },
    /// Delete a group (every group without one) and the flows that use it.
    #[command(
        name = "del-groups",
        after_help = "Example:\n  flowctl del-groups group_id=1"
    )]
    DelGroups {
        #[arg(value_name = "group_id=N", value_parser = parse_group_id)]
        group_id: Option<u32>,
    },
    /// Show groups with counters.
    #[command(name = "dump-groups")]
    DumpGroups,
    /// Add a meter (ovs-ofctl syntax): a rate limit that `meter:N` in a flow applies.
    #[command(
        name = "add-meter",
        after_help = "Examples:\n  flowctl add-meter 'meter=1,pktps,bands=type=drop,rate=1000'\n  \
                      flowctl add-meter 'meter=2,kbps,burst,bands=type=drop,rate=10000,burst_size=1000'"
    )]
    AddMeter { meter: String },
    /// Replace a meter.
    #[command(name = "mod-meter")]
    ModMeter { meter: String },
    /// Delete a meter (every meter without one) and the flows that use it.
    #[command(
        name = "del-meters",
        after_help = "Example:\n  flowctl del-meters meter=1"
    )]
    DelMeters {
        #[arg(value_name = "meter=N", value_parser = parse_meter_id)]
        meter_id: Option<u32>,
    },
    /// Show meters with counters.
    #[command(name = "dump-meters")]
    DumpMeters,
    /// Change connection tracking limits: `max=N` for all zones together, `zone=Z,limit=L`
    /// per zone (a limit of 0 removes the zone's).
    #[command(
        name = "ct-set-limits",
        after_help = "Example:\n  flowctl ct-set-limits max=100000 zone=5,limit=1000"
    )]
    CtSetLimits {
        #[arg(value_name = "max=N|zone=Z,limit=L", required = true, value_parser = parse_ct_limit)]
        limits: Vec<CtLimit>,
    },

    /// Change the VXLAN tunnel: VNI mappings, flood lists, static remote MACs, the ARP/ND
    /// proxy.
    #[command(
        after_help = "Examples:\n  flowctl tunnel map 42 10\n  flowctl tunnel add-remote 42 192.0.2.2\n  \
                      flowctl tunnel add-mac 42 52:54:00:00:00:02 192.0.2.2\n  \
                      flowctl tunnel proxy 42 on\n  flowctl tunnel add-neigh 42 10.0.0.2 52:54:00:00:00:02\n  \
                      flowctl show tunnel"
    )]
    Tunnel {
        #[command(subcommand)]
        op: TunnelOp,
    },

    /// A live view like top(1): each port's packet and bit rates and drops per second, each
    /// dataplane thread's busy share, and the busiest flows, refreshed every interval.
    ///
    /// Redraws the terminal; with -b (or when stdout is not a terminal) prints one frame after
    /// another; with --json prints one JSON object per frame. Quit with Ctrl-C.
    #[command(
        after_help = "Examples:\n  flowctl top\n  flowctl top -d 5 --flows 20\n  \
                      flowctl top -b -n 3 > capture.txt\n  flowctl top --json -n 10"
    )]
    Top(TopArgs),
}

#[derive(Debug, Args)]
struct TopArgs {
    /// Seconds between refreshes (0.1 to 30).
    #[arg(short = 'd', long, value_name = "SECS", default_value = "1", value_parser = parse_top_delay)]
    delay: Duration,
    /// Print this many frames, then exit.
    #[arg(short = 'n', long, value_name = "COUNT")]
    iterations: Option<u64>,
    /// Batch mode: print frames one after the other instead of redrawing the screen.
    #[arg(short = 'b', long)]
    batch: bool,
    /// How many of the busiest flows to list.
    #[arg(long, value_name = "N", default_value = "10")]
    flows: usize,
}

#[derive(Debug, Subcommand)]
enum Show {
    /// Every port: state, VLAN, counters, drops by reason, queue pairs, negotiated offloads.
    ///
    /// Counts are exact unless --human is given. DROPS is the total followed by the non-zero
    /// reasons; `flowctl show port NAME` lists every reason.
    #[command(
        after_help = "Examples:\n  flowctl show ports\n  flowctl show ports --human\n  \
                            flowctl show ports --json"
    )]
    Ports(PortsArgs),
    /// One port in detail: socket, mode, state, VLAN, features, every counter.
    #[command(after_help = "Example:\n  flowctl show port vm1")]
    Port(PortArgs),
    /// The MAC learning table: which port each address was last seen on, per VLAN.
    #[command(after_help = "Examples:\n  flowctl show macs\n  flowctl show macs --vlan 10")]
    Macs(MacsArgs),
    /// The switch's settings and switch-wide counters.
    #[command(after_help = "Example:\n  flowctl show switch")]
    Switch,
    /// Flow tables in use: flows, lookups and matches per table.
    #[command(after_help = "Example:\n  flowctl show tables")]
    Tables,
    /// The VXLAN tunnel: VNIs with their VLAN, flood list and counters; remote VTEPs; MAC
    /// addresses learned (or set) behind remote VTEPs.
    #[command(after_help = "Example:\n  flowctl show tunnel")]
    Tunnel,
    /// BGP EVPN: per VNI the local MACs handed to FRR, the remote MACs and flood-list
    /// remotes installed from its routes; route counters.
    #[command(after_help = "Example:\n  flowctl show evpn")]
    Evpn,
}

/// Changes to the VXLAN tunnel at run time.
#[derive(Debug, Subcommand)]
enum TunnelOp {
    /// Map a VNI to a local VLAN: that VLAN's frames travel to remote VTEPs in this VNI.
    Map { vni: u32, vlan: u16 },
    /// Remove a VNI (its flood list and remote MACs go with it).
    Unmap { vni: u32 },
    /// Add a remote VTEP to the VNI's flood list (head-end replication).
    AddRemote { vni: u32, remote: std::net::IpAddr },
    /// Remove a remote VTEP from the VNI's flood list.
    DelRemote { vni: u32, remote: std::net::IpAddr },
    /// A static entry: MAC is behind REMOTE in VNI (never aged, beats learning).
    AddMac {
        vni: u32,
        mac: String,
        remote: std::net::IpAddr,
    },
    /// Remove a static entry.
    DelMac { vni: u32, mac: String },
    /// Turn the VNI's ARP/ND proxy on or off: ARP requests and IPv6 neighbour solicitations
    /// from local guests for addresses known behind remote VTEPs are answered here instead of
    /// crossing the tunnel (as the kernel vxlan device's `proxy`). Off forgets what it learned.
    Proxy {
        vni: u32,
        #[arg(action = clap::ArgAction::Set, value_parser = parse_on_off, value_name = "on|off")]
        state: bool,
    },
    /// A static address for the VNI's proxy: IP is at MAC (never aged, beats learning;
    /// answered while MAC is behind a remote VTEP), as `ip neigh add` for the kernel's.
    AddNeigh {
        vni: u32,
        ip: std::net::IpAddr,
        mac: String,
    },
    /// Remove a static proxy address.
    DelNeigh { vni: u32, ip: std::net::IpAddr },
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

#[derive(Debug, Args)]
struct PortsArgs {
    /// Abbreviate counts (1.2M) and byte counts (3.4GiB) instead of printing them exactly.
    #[arg(long)]
    human: bool,
}

#[derive(Debug, Args)]
struct PortArgs {
    /// The port's name.
    name: String,
}

#[derive(Debug, Args)]
struct MacsArgs {
    /// Only this VLAN's addresses.
    #[arg(long, value_name = "VID")]
    vlan: Option<u16>,
}

#[derive(Debug, Args)]
struct SetVlanArgs {
    /// The port's name.
    name: String,
    /// The VLAN mode.
    #[arg(value_enum)]
    mode: VlanModeArg,
    /// VID and/or LIST, as the mode needs (see above).
    #[arg(num_args = 0..=2, value_name = "VID|LIST")]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct SetPortSecurityArgs {
    /// The port's name.
    name: String,
    /// allowed-macs=LIST, allowed-ips=LIST (addresses or prefixes), dhcp-server=true|false.
    #[arg(value_name = "KEY=VALUE", value_parser = parse_security_setting)]
    settings: Vec<SecuritySetting>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SecuritySetting {
    Macs(Vec<String>),
    Ips(Vec<String>),
    DhcpServer(bool),
}

fn parse_security_setting(s: &str) -> Result<SecuritySetting, String> {
    let list = |v: &str| v.split(',').map(|x| x.trim().to_string()).collect();
    match s.split_once('=') {
        Some(("allowed-macs" | "allowed_macs", v)) => Ok(SecuritySetting::Macs(list(v))),
        Some(("allowed-ips" | "allowed_ips", v)) => Ok(SecuritySetting::Ips(list(v))),
        Some(("dhcp-server" | "dhcp_server", v)) => match v {
            "true" => Ok(SecuritySetting::DhcpServer(true)),
            "false" => Ok(SecuritySetting::DhcpServer(false)),
            _ => Err(format!("dhcp-server is true or false, not '{v}'")),
        },
        _ => Err(format!(
            "'{s}' is not allowed-macs=LIST, allowed-ips=LIST or dhcp-server=true|false"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VlanModeArg {
    Access,
    Trunk,
    NativeUntagged,
    NativeTagged,
}

/// `flowctl top -d`: at most 30 s, so the view never idles out of the control socket (its
/// default idle timeout is 60 s).
fn parse_top_delay(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.1..=30.0).contains(&secs) {
        return Err(format!("{s} must be between 0.1 and 30"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86400.0) {
        return Err(format!("{s} must be more than 0 and at most 86400"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses add-port's SPEC with the daemon's own `--port` parser.
fn parse_spec(s: &str) -> Result<Box<PortConfig>, String> {
    parse_port_flag(s).map(Box::new).map_err(|e| match e {
        ConfigError::PortFlag { message, .. } => message,
        other => other.to_string(),
    })
}

impl SetVlanArgs {
    /// The words after the port name, checked here so mistakes are usage errors.
    fn vlan_config(&self) -> Result<VlanConfig, String> {
        let (mode, needs_vid) = match self.mode {
            VlanModeArg::Access => ("access", true),
            VlanModeArg::Trunk => ("trunk", false),
            VlanModeArg::NativeUntagged => ("native-untagged", true),
            VlanModeArg::NativeTagged => ("native-tagged", true),
        };
        let mut words = self.args.iter();
        let vlan = if needs_vid {
            let w = words
                .next()
                .ok_or_else(|| format!("{mode} needs a VLAN ID"))?;
            Some(parse_vid(w).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let trunks = words.next().cloned();
        if self.mode == VlanModeArg::Access && trunks.is_some() {
            return Err("access takes one VLAN ID and no list".into());
        }
        if let Some(list) = &trunks {
            list.parse::<VlanSet>().map_err(|e| e.to_string())?;
        }
        if let Some(extra) = words.next() {
            return Err(format!("unexpected '{extra}'"));
        }
        let config = VlanConfig {
            mode: mode.into(),
            vlan,
            trunks,
        };
        config.to_mode().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Reports a usage mistake found after clap's parsing the way clap reports its own: exit 2.
/// `zone=N`.
fn parse_zone(s: &str) -> Result<u16, String> {
    s.strip_prefix("zone=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("'{s}': expected zone=N with N in 0-65535"))
}

/// `group_id=N`.
fn parse_group_id(s: &str) -> Result<u32, String> {
    s.strip_prefix("group_id=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("'{s}': expected group_id=N"))
}

/// `meter=N`.
fn parse_meter_id(s: &str) -> Result<u32, String> {
    s.strip_prefix("meter=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("'{s}': expected meter=N"))
}

#[derive(Debug, Clone, Copy)]
enum CtLimit {
    Max(usize),
    Zone(u16, usize),
}

/// `max=N` or `zone=Z,limit=L`.
fn parse_ct_limit(s: &str) -> Result<CtLimit, String> {
    if let Some(n) = s.strip_prefix("max=") {
        return n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(CtLimit::Max)
            .ok_or_else(|| format!("'{s}': expected max=N with N at least 1"));
    }
    let parsed = s.split_once(',').and_then(|(z, l)| {
        let zone = parse_zone(z).ok()?;
        let limit = l.strip_prefix("limit=")?.parse().ok()?;
        Some(CtLimit::Zone(zone, limit))
    });
    parsed.ok_or_else(|| format!("'{s}': expected max=N or zone=Z,limit=L"))
}

fn usage_error(subcommand: &str, message: String) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    let sub = cmd
        .find_subcommand_mut(subcommand)
        .map(|c| c.clone().bin_name(format!("flowctl {subcommand}")));
    match sub {
        Some(mut c) => c.error(ErrorKind::ValueValidation, message).exit(),
        None => cmd.error(ErrorKind::ValueValidation, message).exit(),
    }
}

/// Reads a rules file (or stdin for `-`) as numbered lines; the switch parses them so that
/// port names resolve against its ports, and reports errors by line and column.
fn read_flow_file(path: &std::path::Path) -> Result<Vec<FlowLine>, ClientError> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| FlowLine {
            line: i + 1,
            text: l.to_string(),
        })
        .collect())
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("flowctl: cannot print JSON: {e}"),
    }
}

fn main() -> ExitCode {
    if let Some(code) = patchbay_clidocs::intercept(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    // Check everything that can be checked before talking to the switch.
    let vlan = match &cli.command {
        Command::SetVlan(a) => Some(
            a.vlan_config()
                .unwrap_or_else(|e| usage_error("set-vlan", e)),
        ),
        _ => None,
    };
    let socket = cli.socket.clone().unwrap_or_else(default_socket_path);
    let result =
        Client::connect(&socket, cli.timeout).and_then(|mut client| run(&cli, &mut client, vlan));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: &Cli, client: &mut Client, vlan: Option<VlanConfig>) -> Result<(), ClientError> {
    let json = cli.json;
    match &cli.command {
        Command::Show {
            what: Show::Ports(a),
        }
        | Command::ShowPorts(a) => {
            let ports: PortList = client.call_as(Request::ShowPorts)?;
            if json {
                print_json(&ports);
            } else {
                print!("{}", render::ports_table(&ports, a.human));
            }
        }
        Command::Show {
            what: Show::Port(a),
        }
        | Command::ShowPort(a) => {
            let ports: PortList = client.call_as(Request::ShowPorts)?;
            let port = ports
                .into_iter()
                .find(|p| p.name == a.name)
                .ok_or_else(|| ClientError::Switch(format!("no port named '{}'", a.name)))?;
            if json {
                print_json(&port);
            } else {
                print!("{}", render::port_detail(&port));
            }
        }
        Command::Show {
            what: Show::Macs(a),
        }
        | Command::ShowMacs(a) => {
            let request = Request::ShowMacs { vlan: a.vlan };
            if json {
                print_json(&client.call(request)?);
            } else {
                // Names first: a port added between the two requests just shows as a number.
                let names: HashMap<u16, String> = client
                    .call_as::<PortList>(Request::ShowPorts)?
                    .into_iter()
                    .map(|p| (p.id, p.name))
                    .collect();
                let table: MacTableInfo = client.call_as(request)?;
                print!("{}", render::macs_table(&table, &names, a.vlan));
            }
        }
        Command::Show { what: Show::Switch } | Command::ShowSwitch => {
            if json {
                print_json(&client.call(Request::ShowSwitch)?);
            } else {
                let info: SwitchInfo = client.call_as(Request::ShowSwitch)?;
                print!("{}", render::switch_info(&info));
            }
        }
        Command::AddFlow { flow, .. } => {
            let r = client.call(Request::AddFlows {
                flows: vec![FlowLine {
                    line: 0,
                    text: flow.clone(),
                }],
            })?;
            if json {
                print_json(&r);
            }
        }
        Command::AddFlows { file, .. } => {
            let r = client.call(Request::AddFlows {
                flows: read_flow_file(file)?,
            })?;
            if json {
                print_json(&r);
            }
        }
        Command::ModFlows { flow, strict, .. } => {
            let r = client.call(Request::ModFlows {
                flow: flow.clone(),
                strict: *strict,
            })?;
            if json {
                print_json(&r);
            }
        }
        Command::DelFlows { filter, strict, .. } => {
            let r = client.call(Request::DelFlows {
                filter: filter.clone(),
                strict: *strict,
            })?;
            if json {
                print_json(&r);
            }
        }
        Command::DumpFlows { filter } => {
            if json {
                print_json(&client.call(Request::DumpFlows {
                    filter: filter.clone(),
                })?);
            } else {
                let flows: Vec<patchbay_switch::flow::pipeline::FlowDump> =
                    client.call_as(Request::DumpFlows {
                        filter: filter.clone(),
                    })?;
                print!("{}", render::dump_flows(&flows));
            }
        }
        Command::ReplaceFlows { file, .. } => {
            let r: patchbay_switch::control::flows::Replaced =
                client.call_as(Request::ReplaceFlows {
                    flows: read_flow_file(file)?,
                })?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "{} added, {} removed, {} unchanged (counters kept)",
                    r.added, r.removed, r.unchanged
                );
            }
        }
        Command::DiffFlows { file } => {
            let d: patchbay_switch::control::flows::FlowDiff =
                client.call_as(Request::DiffFlows {
                    flows: read_flow_file(file)?,
                })?;
            if json {
                print_json(&d);
            } else {
                for l in &d.only_in_switch {
                    println!("-{l}");
                }
                for l in &d.only_in_file {
                    println!("+{l}");
                }
            }
        }
        Command::Trace { packet } => {
            if json {
                print_json(&client.call(Request::Trace {
                    packet: packet.clone(),
                })?);
            } else {
                let t: patchbay_switch::control::flows::Trace = client.call_as(Request::Trace {
                    packet: packet.clone(),
                })?;
                print!("{}", render::trace(&t));
            }
        }
        Command::DumpConntrack { zone } => {
            let request = Request::DumpConntrack { zone: *zone };
            if json {
                print_json(&client.call(request)?);
            } else {
                let d: patchbay_switch::control::protocol::ConntrackDump =
                    client.call_as(request)?;
                print!("{}", render::conntrack(&d));
            }
        }
        Command::AddGroup { group } | Command::ModGroup { group } => {
            let modify = matches!(&cli.command, Command::ModGroup { .. });
            let _: usize = client.call_as(Request::AddGroup {
                group: group.clone(),
                modify,
            })?;
        }
        Command::DelGroups { group_id } => {
            let n: usize = client.call_as(Request::DelGroups {
                group_id: *group_id,
            })?;
            if json {
                print_json(&n);
            }
        }
        Command::DumpGroups => {
            let groups: Vec<patchbay_switch::control::protocol::GroupDump> =
                client.call_as(Request::DumpGroups)?;
            if json {
                print_json(&groups);
            } else {
                for g in groups {
                    println!(
                        " packet_count={}, byte_count={}, {}",
                        g.packets, g.bytes, g.group
                    );
                }
            }
        }
        Command::AddMeter { meter } | Command::ModMeter { meter } => {
            let modify = matches!(&cli.command, Command::ModMeter { .. });
            let _: usize = client.call_as(Request::AddMeter {
                meter: meter.clone(),
                modify,
            })?;
        }
        Command::DelMeters { meter_id } => {
            let n: usize = client.call_as(Request::DelMeters {
                meter_id: *meter_id,
            })?;
            if json {
                print_json(&n);
            }
        }
        Command::DumpMeters => {
            let meters: Vec<patchbay_switch::control::protocol::MeterDump> =
                client.call_as(Request::DumpMeters)?;
            if json {
                print_json(&meters);
            } else {
                for m in meters {
                    println!(
                        " packet_count={}, byte_count={}, dropped={}, {}",
                        m.packets, m.bytes, m.dropped, m.meter
                    );
                }
            }
        }
        Command::FlushConntrack { zone } => {
            let n: usize = client.call_as(Request::FlushConntrack { zone: *zone })?;
            if json {
                print_json(&n);
            } else {
                println!("{n} connections flushed");
            }
        }
        Command::CtSetLimits { limits } => {
            let mut max_connections = None;
            let mut zones = Vec::new();
            for l in limits {
                match *l {
                    CtLimit::Max(n) => max_connections = Some(n),
                    CtLimit::Zone(z, n) => zones.push((z, n)),
                }
            }
            let now: patchbay_switch::conntrack::Limits =
                client.call_as(Request::SetConntrackLimits {
                    max_connections,
                    zones,
                })?;
            if json {
                print_json(&now);
            } else {
                print!("{}", render::ct_limits(&now));
            }
        }
        Command::Show { what: Show::Tables } => {
            if json {
                print_json(&client.call(Request::ShowTables)?);
            } else {
                let t: Vec<patchbay_switch::control::flows::TableInfo> =
                    client.call_as(Request::ShowTables)?;
                print!("{}", render::tables(&t));
            }
        }
        Command::Show { what: Show::Evpn } => {
            if json {
                print_json(&client.call(Request::ShowEvpn)?);
            } else {
                let snap: patchbay_switch::evpn::EvpnSnapshot =
                    client.call_as(Request::ShowEvpn)?;
                print!("{}", render::evpn(&snap));
            }
        }
        Command::Show { what: Show::Tunnel } => {
            if json {
                print_json(&client.call(Request::ShowTunnel)?);
            } else {
                let snap: patchbay_overlay::vtep::VtepSnapshot =
                    client.call_as(Request::ShowTunnel)?;
                print!("{}", render::tunnel(&snap));
            }
        }
        Command::Top(a) => top::run(
            client,
            &top::TopOptions {
                delay: a.delay,
                iterations: a.iterations,
                batch: a.batch,
                flows: a.flows,
                json,
            },
        )?,
        Command::Tunnel { op } => {
            let (request, done) = match op {
                TunnelOp::Map { vni, vlan } => (
                    Request::TunnelMap {
                        vni: *vni,
                        vlan: *vlan,
                    },
                    format!("VNI {vni} <-> VLAN {vlan}"),
                ),
                TunnelOp::Unmap { vni } => (
                    Request::TunnelUnmap { vni: *vni },
                    format!("VNI {vni} removed"),
                ),
                TunnelOp::AddRemote { vni, remote } => (
                    Request::TunnelAddRemote {
                        vni: *vni,
                        remote: *remote,
                    },
                    format!("VNI {vni}: {remote} added to the flood list"),
                ),
                TunnelOp::DelRemote { vni, remote } => (
                    Request::TunnelDelRemote {
                        vni: *vni,
                        remote: *remote,
                    },
                    format!("VNI {vni}: {remote} removed from the flood list"),
                ),
                TunnelOp::AddMac { vni, mac, remote } => (
                    Request::TunnelAddMac {
                        vni: *vni,
                        mac: mac.clone(),
                        remote: *remote,
                    },
                    format!("VNI {vni}: {mac} -> {remote} (static)"),
                ),
                TunnelOp::DelMac { vni, mac } => (
                    Request::TunnelDelMac {
                        vni: *vni,
                        mac: mac.clone(),
                    },
                    format!("VNI {vni}: {mac} removed"),
                ),
                TunnelOp::Proxy { vni, state } => (
                    Request::TunnelSetProxy {
                        vni: *vni,
                        proxy: *state,
                    },
                    format!(
                        "VNI {vni}: ARP/ND proxy {}",
                        if *state { "on" } else { "off" }
                    ),
                ),
                TunnelOp::AddNeigh { vni, ip, mac } => (
                    Request::TunnelAddNeighbor {
                        vni: *vni,
                        ip: *ip,
                        mac: mac.clone(),
                    },
                    format!("VNI {vni}: {ip} -> {mac} (static)"),
                ),
                TunnelOp::DelNeigh { vni, ip } => (
                    Request::TunnelDelNeighbor { vni: *vni, ip: *ip },
                    format!("VNI {vni}: {ip} removed"),
                ),
            };
            let result = client.call(request)?;
            if json {
                print_json(&result);
            } else {
                println!("{done}");
            }
        }
        Command::AddPort { spec } => {
            let name = spec.name.clone();
            let added: PortAdded = client.call_as(Request::AddPort { port: spec.clone() })?;
            if json {
                print_json(&added);
            } else {
                println!("added port {name} as port {}", added.id);
            }
        }
        Command::DelPort { name } => {
            let result = client.call(Request::DelPort { name: name.clone() })?;
            if json {
                print_json(&result);
            } else {
                println!("removed port {name}");
            }
        }
        Command::SetVlan(a) => {
            let vlan = vlan.expect("checked in main");
            let words = render::vlan(&vlan);
            let result = client.call(Request::SetVlan {
                name: a.name.clone(),
                vlan,
            })?;
            if json {
                print_json(&result);
            } else {
                println!("port {}: vlan {words}", a.name);
            }
        }
        Command::SetPortSecurity(a) => {
            let (mut allowed_macs, mut allowed_ips, mut dhcp_server) = (vec![], vec![], false);
            for s in &a.settings {
                match s {
                    SecuritySetting::Macs(m) => allowed_macs.clone_from(m),
                    SecuritySetting::Ips(i) => allowed_ips.clone_from(i),
                    SecuritySetting::DhcpServer(d) => dhcp_server = *d,
                }
            }
            let off = allowed_macs.is_empty() && allowed_ips.is_empty();
            let result = client.call(Request::SetPortSecurity {
                name: a.name.clone(),
                allowed_macs,
                allowed_ips,
                dhcp_server,
            })?;
            if json {
                print_json(&result);
            } else if off {
                println!("port {}: security off", a.name);
            } else {
                println!("port {}: security set", a.name);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_vlan(words: &[&str]) -> Result<VlanConfig, String> {
        let mut argv = vec!["flowctl", "set-vlan", "p"];
        argv.extend_from_slice(words);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::SetVlan(a) => a.vlan_config(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn set_vlan_words() {
        let v = set_vlan(&["access", "10"]).unwrap();
        assert_eq!(
            (v.mode.as_str(), v.vlan, v.trunks),
            ("access", Some(10), None)
        );
        let v = set_vlan(&["trunk"]).unwrap();
        assert_eq!((v.mode.as_str(), v.vlan, v.trunks), ("trunk", None, None));
        let v = set_vlan(&["trunk", "10,20-29"]).unwrap();
        assert_eq!(v.trunks.as_deref(), Some("10,20-29"));
        let v = set_vlan(&["native-untagged", "5", "10,20"]).unwrap();
        assert_eq!(
            (v.mode.as_str(), v.vlan, v.trunks.as_deref()),
            ("native-untagged", Some(5), Some("10,20"))
        );
        assert!(set_vlan(&["access"])
            .unwrap_err()
            .contains("needs a VLAN ID"));
        assert!(set_vlan(&["access", "10", "20"]).is_err());
        assert!(set_vlan(&["access", "5000"]).unwrap_err().contains("5000"));
        assert!(set_vlan(&["trunk", "10,x"]).unwrap_err().contains("'x'"));
        assert!(set_vlan(&["native-tagged"]).is_err());
        assert!(set_vlan(&["bridge", "1"]).is_err());
    }

    #[test]
    fn add_port_spec_errors_name_the_problem() {
        let e = Cli::try_parse_from(["flowctl", "add-port", "name=x"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("missing socket="), "{e}");
    }
}
