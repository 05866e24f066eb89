//! Human-readable output: aligned tables and key/value blocks. Scripts should use `--json`.

use std::collections::HashMap;
use std::fmt::Write as _;

use patchbay_overlay::proxy::NeighOrigin;
use patchbay_overlay::vtep::MacOrigin;
use patchbay_switch::control::protocol::{MacTableInfo, SwitchInfo};
use patchbay_switch::port::{ConnectMode, CounterSnapshot, LinkState, PortInfo};
use patchbay_switch::vlan::VlanConfig;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A table with a header row; columns are padded to their widest cell, separated by two
/// spaces, and the last column is not padded.
struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let last = i + 1 == cells.len();
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                match self.columns[i].1 {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if !last {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A VLAN policy in one phrase: `access 10`, `trunk 10,20-29`, `native-untagged 5 +10,20`.
pub fn vlan(v: &VlanConfig) -> String {
    let mut s = v.mode.clone();
    let is_trunk = v.mode != "access";
    if let Some(vid) = v.vlan {
        let _ = write!(s, " {vid}");
    }
    if let Some(t) = &v.trunks {
        let sep = if v.vlan.is_some() { " +" } else { " " };
        let _ = write!(s, "{sep}{t}");
    } else if is_trunk {
        // A trunk with no list carries every VLAN.
        let sep = if v.vlan.is_some() { " +" } else { " " };
        let _ = write!(s, "{sep}all");
    }
    s
}

fn link_state(s: LinkState) -> &'static str {
    match s {
        LinkState::Listening => "listening",
        LinkState::Connecting => "connecting",
        LinkState::Connected => "connected",
        LinkState::Removed => "removed",
        LinkState::Down => "down",
    }
}

/// `listening`, `connecting`, `connected, rings up`, `connected, rings down`; for an
/// internal port or an uplink, `up` or `down` (its interface).
pub fn state(p: &PortInfo) -> String {
    let host_port = p.kind.is_host_device();
    let state: String = match p.state {
        LinkState::Connected if host_port => "up".into(),
        LinkState::Connected if p.rings_up => "connected, rings up".into(),
        LinkState::Connected => "connected, rings down".into(),
        other => link_state(other).into(),
    };
    if p.failure.is_some() {
        format!("{state} [failed before]")
    } else {
        state
    }
}

/// The total, then the non-zero reasons: `4 (no-buffer=3 vlan-filter=1)`, or `0`.
pub fn drops(c: &CounterSnapshot) -> String {
    let total = c.total_drops();
    let reasons: Vec<String> = c
        .drops
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if reasons.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", reasons.join(" "))
    }
}

/// `1234567` exact, or `1.2M` when abbreviated (powers of 1000).
fn count(n: u64, human: bool) -> String {
    if !human || n < 1000 {
        return n.to_string();
    }
    scaled(n as f64, 1000.0, &["K", "M", "G", "T", "P", "E"])
}

/// `1234567` exact, or `1.2MiB` when abbreviated (powers of 1024).
fn bytes(n: u64, human: bool) -> String {
    if !human {
        return n.to_string();
    }
    if n < 1024 {
        return format!("{n}B");
    }
    scaled(
        n as f64,
        1024.0,
        &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
    )
}

fn scaled(mut v: f64, base: f64, units: &[&str]) -> String {
    let mut unit = "";
    for u in units {
        if v < base {
            break;
        }
        v /= base;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

/// `45s`, `12m05s`, `3h07m`, `2d04h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Queue pairs the guest enabled, of those the port offers.
fn queues(p: &PortInfo) -> String {
    let (up, max) = p.queue_pairs;
    if p.header_len.is_none() {
        format!("-/{max}")
    } else {
        format!("{up}/{max}")
    }
}

/// The negotiated offloads in short (every feature is in `show port NAME`).
fn offloads(p: &PortInfo) -> String {
    if p.header_len.is_none() {
        "-".into()
    } else {
        patchbay_switch::virtio::features::offload_summary(p.features)
    }
}

/// A table of `rows` under `columns` (name, right-aligned).
pub fn text_table(columns: &[(&'static str, bool)], rows: Vec<Vec<String>>) -> String {
    let aligned: Vec<(&'static str, Align)> = columns
        .iter()
        .map(|&(name, right)| (name, if right { Align::Right } else { Align::Left }))
        .collect();
    let mut t = Table::new(&aligned);
    for row in rows {
        t.row(row);
    }
    t.render()
}

/// `flowctl show ports`.
pub fn ports_table(ports: &[PortInfo], human: bool) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Right),
        ("NAME", Left),
        ("STATE", Left),
        ("VLAN", Left),
        ("RX-PKTS", Right),
        ("RX-BYTES", Right),
        ("TX-PKTS", Right),
        ("TX-BYTES", Right),
        ("DROPS", Left),
        ("QUEUES", Right),
        ("OFFLOADS", Left),
    ]);
    let mut sorted: Vec<&PortInfo> = ports.iter().collect();
    sorted.sort_by_key(|p| p.id);
    for p in sorted {
        let c = &p.counters;
        t.row(vec![
            p.id.to_string(),
            p.name.clone(),
            state(p),
            vlan(&p.vlan),
            count(c.rx_packets, human),
            bytes(c.rx_bytes, human),
            count(c.tx_packets, human),
            bytes(c.tx_bytes, human),
            drops(c),
            queues(p),
            offloads(p),
        ]);
    }
    let mut out = t.render();
    let _ = writeln!(
        out,
        "{} port{}",
        ports.len(),
        if ports.len() == 1 { "" } else { "s" }
    );
    out
}

/// `flowctl show port NAME`: every field of one port.
pub fn port_detail(p: &PortInfo) -> String {
    let c = &p.counters;
    let mode = match p.mode {
        ConnectMode::Server => "server (the switch listens)",
        ConnectMode::Client => "client (the switch connects)",
    };
    let header_len = p
        .header_len
        .map_or("- (not connected)".to_string(), |n| format!("{n} bytes"));
    let feature_line = if p.feature_names.is_empty() {
        format!("{:#018x}", p.features)
    } else {
        format!("{:#018x} {}", p.features, p.feature_names.join(" "))
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("id", p.id.to_string()),
        ("name", p.name.clone()),
        ("socket", p.socket.clone()),
        ("mode", mode.into()),
        (
            "state",
            format!("{} (since {} ago)", state(p), duration(p.since_secs)),
        ),
        ("vlan", vlan(&p.vlan)),
        ("features", feature_line),
        (
            "offloads",
            patchbay_switch::virtio::features::offload_summary(p.features),
        ),
        ("queue pairs", format!("{} (enabled/offered)", queues(p))),
        ("header length", header_len),
        ("rx packets", c.rx_packets.to_string()),
        ("rx bytes", c.rx_bytes.to_string()),
        ("tx packets", c.tx_packets.to_string()),
        ("tx bytes", c.tx_bytes.to_string()),
        ("drops", c.total_drops().to_string()),
    ];
    if let Some(policing) = &p.policing {
        rows.push(("ingress policing", policing.clone()));
    }
    if let Some(security) = &p.security {
        rows.push(("port security", security.clone()));
    }
    if let Some(why) = &p.failure {
        rows.push(("last failure", why.clone()));
    }
    let drop_rows: Vec<(String, String)> = c
        .drops
        .iter()
        .map(|(r, n)| (format!("  {r}"), n.to_string()))
        .collect();
    let tail: Vec<(&str, String)> = vec![
        ("connects", c.connects.to_string()),
        ("rx batches", c.rx_batches.to_string()),
        ("notifications", c.notifications.to_string()),
        ("protocol errors", c.protocol_errors.to_string()),
        ("announcements", c.announcements.to_string()),
    ];
    let width = rows
        .iter()
        .map(|(k, _)| k.len())
        .chain(drop_rows.iter().map(|(k, _)| k.len()))
        .chain(tail.iter().map(|(k, _)| k.len()))
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    };
    for (k, v) in rows.drain(..) {
        line(k, &v);
    }
    for (k, v) in &drop_rows {
        line(k, v);
    }
    for (k, v) in &tail {
        line(k, v);
    }
    out
}

/// `flowctl show macs`. `names` maps port numbers to names; unknown numbers print as is.
pub fn macs_table(info: &MacTableInfo, names: &HashMap<u16, String>, vlan: Option<u16>) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("VLAN", Right),
        ("MAC", Left),
        ("PORT", Left),
        ("AGE", Right),
    ]);
    let mut entries: Vec<_> = info.entries.iter().collect();
    entries.sort_by(|a, b| (a.vlan, &a.mac).cmp(&(b.vlan, &b.mac)));
    for e in entries {
        t.row(vec![
            e.vlan.to_string(),
            e.mac.clone(),
            names
                .get(&e.port)
                .cloned()
                .unwrap_or_else(|| e.port.to_string()),
            duration(e.age),
        ]);
    }
    let mut out = t.render();
    let n = info.entries.len();
    let _ = write!(out, "{n} entr{}", if n == 1 { "y" } else { "ies" });
    if let Some(v) = vlan {
        let _ = write!(out, " in VLAN {v}");
    }
    let _ = writeln!(
        out,
        " (capacity {}, aging {} s)",
        info.capacity, info.aging_secs
    );
    out
}

/// `flowctl show switch`.
pub fn switch_info(s: &SwitchInfo) -> String {
    let cpus = if s.poll_cpus.is_empty() {
        "none (ports are served when their guests notify)".to_string()
    } else {
        s.poll_cpus
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let rows = [
        ("mtu", s.mtu.to_string()),
        ("poll cpus", cpus),
        ("ports", s.ports.to_string()),
        (
            "mac entries",
            format!("{} (capacity {})", s.mac_entries, s.mac_capacity),
        ),
        ("floods", s.floods.to_string()),
        ("macs learned", s.mac_learned.to_string()),
        ("macs moved", s.mac_moved.to_string()),
        ("mac table full", s.mac_table_full.to_string()),
        ("control errors", s.control_errors.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    out
}

/// `flowctl show evpn`: per VNI what goes to FRR and what came from it; route counters.
pub fn evpn(s: &patchbay_switch::evpn::EvpnSnapshot) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("VNI", Right),
        ("VLAN", Right),
        ("LOCAL MACS", Right),
        ("REMOTE MACS", Right),
        ("FLOOD LIST (BGP)", Left),
    ]);
    for v in &s.vnis {
        let floods: Vec<String> = v.flood_remotes.iter().map(|r| r.to_string()).collect();
        t.row(vec![
            v.vni.to_string(),
            v.vlan.to_string(),
            v.local_macs.to_string(),
            v.remote_macs.to_string(),
            if floods.is_empty() {
                "-".into()
            } else {
                floods.join(",")
            },
        ]);
    }
    let mut out = t.render();
    let _ = writeln!(
        out,
        "routes received: {} mac, {} flood; withdrawn: {} mac, {} flood; refused {}",
        s.mac_routes_received,
        s.flood_routes_received,
        s.mac_routes_withdrawn,
        s.flood_routes_withdrawn,
        s.routes_refused
    );
    let _ = writeln!(
        out,
        "local MACs moved to other hosts: {}; netlink errors: {}; FDB re-reads: {}",
        s.local_macs_moved_away, s.netlink_errors, s.resyncs
    );
    out
}

/// `flowctl show tunnel`: VNIs with their VLAN, flood list and ARP/ND proxy, remote VTEPs,
/// remote MACs, and the proxy's known addresses where a VNI has the proxy on or any are known.
pub fn tunnel(s: &patchbay_overlay::vtep::VtepSnapshot) -> String {
    use Align::*;
    let drops = |d: &[(String, u64)]| {
        let total: u64 = d.iter().map(|(_, n)| n).sum();
        let parts: Vec<String> = d
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| format!("{l}={n}"))
            .collect();
        if parts.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", parts.join(" "))
        }
    };
    let mut out = String::new();
    if let Some(ip) = s.local_ip {
        let on = |b: bool| if b { "on" } else { "off" };
        let _ = writeln!(
            out,
            "local {ip}:{}, underlay MTU {}: guests on tunnelled VLANs need MTU {} or less \
             (larger frames are dropped as too-big; TCP super-frames are cut to fit)",
            s.port, s.underlay_mtu, s.guest_mtu
        );
        let _ = writeln!(
            out,
            "kernel UDP offloads: segmentation (GSO) {}, coalescing (GRO) {}",
            on(s.udp_gso),
            on(s.udp_gro)
        );
        let io = &s.io;
        let _ = writeln!(
            out,
            "sent {} datagrams in {} system calls ({} in segmented sends), received {} in {} ({} coalesced)\n",
            io.tx_datagrams,
            io.tx_syscalls,
            io.tx_gso_datagrams,
            io.rx_datagrams,
            io.rx_syscalls,
            io.rx_gro_datagrams
        );
    }
    let mut vnis = Table::new(&[
        ("VNI", Right),
        ("VLAN", Right),
        ("RX-PKTS", Right),
        ("RX-BYTES", Right),
        ("TX-PKTS", Right),
        ("TX-BYTES", Right),
        ("DROPS", Left),
        ("PROXY", Left),
        ("FLOOD LIST", Left),
    ]);
    for v in &s.vnis {
        let proxy = if v.proxy {
            let full = if v.proxy_table_full > 0 {
                format!(" full={}", v.proxy_table_full)
            } else {
                String::new()
            };
            format!(
                "on (arp={} nd={}{full})",
                v.proxy_arp_replies, v.proxy_nd_replies
            )
        } else {
            "off".into()
        };
        let remotes: Vec<String> = v
            .remotes
            .iter()
            .map(|r| {
                if v.bgp_remotes.contains(r) {
                    format!("{r}(bgp)")
                } else {
                    r.to_string()
                }
            })
            .collect();
        vnis.row(vec![
            v.vni.to_string(),
            v.vlan.to_string(),
            v.rx_packets.to_string(),
            v.rx_bytes.to_string(),
            v.tx_packets.to_string(),
            v.tx_bytes.to_string(),
            drops(&v.drops),
            proxy,
            if remotes.is_empty() {
                "-".into()
            } else {
                remotes.join(",")
            },
        ]);
    }
    out.push_str(&vnis.render());
    let _ = writeln!(out, "dropped before a VNI was known: {}", drops(&s.drops));

    let mut remotes = Table::new(&[
        ("REMOTE VTEP", Left),
        ("RX-PKTS", Right),
        ("RX-BYTES", Right),
        ("TX-PKTS", Right),
        ("TX-BYTES", Right),
        ("ORIGIN", Left),
    ]);
    for r in &s.remotes {
        remotes.row(vec![
            r.ip.to_string(),
            r.rx_packets.to_string(),
            r.rx_bytes.to_string(),
            r.tx_packets.to_string(),
            r.tx_bytes.to_string(),
            if r.learned {
                "learned"
            } else if s.vnis.iter().any(|v| v.bgp_remotes.contains(&r.ip)) {
                "bgp"
            } else {
                "configured"
            }
            .into(),
        ]);
    }
    out.push('\n');
    out.push_str(&remotes.render());

    let mut macs = Table::new(&[
        ("VNI", Right),
        ("MAC", Left),
        ("REMOTE VTEP", Left),
        ("FROM", Left),
        ("AGE", Right),
    ]);
    for m in &s.macs {
        let (from, age) = match m.origin {
            MacOrigin::Learned => ("learned", duration(m.age)),
            MacOrigin::Static => ("config", "-".into()),
            MacOrigin::Bgp => ("bgp", "-".into()),
        };
        macs.row(vec![
            m.vni.to_string(),
            m.mac.clone(),
            m.remote.to_string(),
            from.into(),
            age,
        ]);
    }
    out.push('\n');
    out.push_str(&macs.render());
    let n = s.macs.len();
    let _ = writeln!(
        out,
        "{n} remote MAC entr{}",
        if n == 1 { "y" } else { "ies" }
    );

    if s.vnis.iter().any(|v| v.proxy) || !s.neighbors.is_empty() {
        let mut known = Table::new(&[
            ("VNI", Right),
            ("ADDRESS", Left),
            ("MAC", Left),
            ("ROUTER", Left),
            ("FROM", Left),
            ("AGE", Right),
        ]);
        for k in &s.neighbors {
            let (from, age) = match k.origin {
                NeighOrigin::Learned => ("learned", duration(k.age)),
                NeighOrigin::Static => ("static", "-".into()),
            };
            known.row(vec![
                k.vni.to_string(),
                k.ip.to_string(),
                k.mac.clone(),
                if k.router { "yes" } else { "no" }.into(),
                from.into(),
                age,
            ]);
        }
        out.push('\n');
        out.push_str(&known.render());
        let n = s.neighbors.len();
        let _ = writeln!(
            out,
            "{n} address{} the ARP/ND proxy knows",
            if n == 1 { "" } else { "es" }
        );
    }
    out
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// `flowctl dump-flows`, in ovs-ofctl's style.
pub fn dump_flows(flows: &[patchbay_switch::flow::pipeline::FlowDump]) -> String {
    let mut out = String::new();
    for f in flows {
        let _ = write!(
            out,
            " cookie={:#x}, duration={}, table={}, n_packets={}, n_bytes={}, ",
            f.cookie,
            seconds(f.duration_ms),
            f.table,
            f.packets,
            f.bytes
        );
        if f.idle_timeout > 0 {
            let _ = write!(out, "idle_timeout={}, ", f.idle_timeout);
        }
        if f.hard_timeout > 0 {
            let _ = write!(out, "hard_timeout={}, ", f.hard_timeout);
        }
        let _ = write!(out, "idle_age={}, ", f.idle_age_ms / 1000);
        let _ = writeln!(out, "{} actions={}", f.match_text, f.actions_text);
    }
    out
}

/// `flowctl trace`: table by table, then where the packet leaves.
pub fn trace(t: &patchbay_switch::control::flows::Trace) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Packet: {}", t.packet);
    for s in &t.steps {
        let indent = "    ".repeat(s.depth);
        match (&s.flow, &s.actions) {
            (Some(f), Some(a)) => {
                let _ = writeln!(out, "{indent}table {}: {f}", s.table);
                let _ = writeln!(out, "{indent}    actions: {a}");
            }
            _ => {
                let _ = writeln!(out, "{indent}table {}: no match", s.table);
            }
        }
    }
    let _ = writeln!(out, "Result:");
    for o in &t.outputs {
        let _ = writeln!(out, "    {o}");
    }
    out
}

/// `flowctl show tables`.
pub fn tables(tables: &[patchbay_switch::control::flows::TableInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("TABLE", Right),
        ("FLOWS", Right),
        ("LOOKUPS", Right),
        ("MATCHES", Right),
    ]);
    for i in tables {
        t.row(vec![
            i.table.to_string(),
            i.flows.to_string(),
            i.lookups.to_string(),
            i.matches.to_string(),
        ]);
    }
    t.render()
}

/// `dump-conntrack` as `ovs-appctl dpctl/dump-conntrack` prints connections, then the
/// limits and counters.
pub fn conntrack(d: &patchbay_switch::control::protocol::ConntrackDump) -> String {
    let mut out = String::new();
    for c in &d.connections {
        let proto = match c.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 => "icmp".to_string(),
            58 => "icmpv6".to_string(),
            p => format!("proto={p}"),
        };
        let (sport, dport) = match c.proto {
            1 | 58 => ("id", "id"),
            _ => ("sport", "dport"),
        };
        let _ = write!(
            out,
            "{proto},orig=(src={},dst={},{sport}={},{dport}={}),reply=(src={},dst={},{sport}={},{dport}={})",
            c.src, c.dst, c.sport, c.dport, c.dst, c.src, c.dport, c.sport
        );
        if c.zone != 0 {
            let _ = write!(out, ",zone={}", c.zone);
        }
        if c.mark != 0 {
            let _ = write!(out, ",mark={}", c.mark);
        }
        if c.label != 0 {
            let _ = write!(out, ",labels={:#x}", c.label);
        }
        let _ = writeln!(
            out,
            ",protoinfo=(state={}),expires={}s",
            c.state, c.expires_in_s
        );
    }
    let _ = writeln!(
        out,
        "{} connections in all zones (limit {}); committed {}, refused {}, evicted {}, expired {}, invalid packets {}",
        d.total, d.limits.max_connections, d.committed, d.refused, d.evicted, d.expired, d.invalid
    );
    let mut zones: Vec<_> = d.limits.zones.iter().collect();
    zones.sort();
    for (zone, limit) in zones {
        let _ = writeln!(out, "zone={zone},limit={limit}");
    }
    out
}

/// Per-zone connection limits, one line each (nothing when there are none).
pub fn ct_limits(l: &patchbay_switch::conntrack::Limits) -> String {
    let mut zones: Vec<_> = l.zones.iter().collect();
    zones.sort();
    let mut out = format!("max={}\n", l.max_connections);
    for (zone, limit) in zones {
        let _ = writeln!(out, "zone={zone},limit={limit}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(mode: &str, vlan: Option<u16>, trunks: Option<&str>) -> VlanConfig {
        VlanConfig {
            mode: mode.into(),
            vlan,
            trunks: trunks.map(String::from),
        }
    }

    #[test]
    fn vlans_read_as_one_phrase() {
        assert_eq!(vlan(&vc("access", Some(10), None)), "access 10");
        assert_eq!(vlan(&vc("trunk", None, Some("10,20-29"))), "trunk 10,20-29");
        assert_eq!(vlan(&vc("trunk", None, None)), "trunk all");
        assert_eq!(
            vlan(&vc("native-untagged", Some(5), Some("10,20"))),
            "native-untagged 5 +10,20"
        );
        assert_eq!(
            vlan(&vc("native-tagged", Some(5), Some("all"))),
            "native-tagged 5 +all"
        );
    }

    #[test]
    fn evpn_shows_each_vni_and_the_route_counters() {
        let s = patchbay_switch::evpn::EvpnSnapshot {
            vnis: vec![patchbay_switch::evpn::agent::VniStatus {
                vni: 100,
                vlan: 10,
                local_macs: 2,
                remote_macs: 5,
                flood_remotes: vec!["198.51.100.12".parse().unwrap()],
            }],
            mac_routes_received: 7,
            flood_routes_received: 1,
            ..Default::default()
        };
        let out = evpn(&s);
        let row = out.lines().nth(1).unwrap_or_default();
        let words: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(words, ["100", "10", "2", "5", "198.51.100.12"], "{out}");
        assert!(out.contains("routes received: 7 mac, 1 flood"), "{out}");
    }

    #[test]
    fn drops_list_only_nonzero_reasons() {
        let mut c = CounterSnapshot {
            drops: vec![
                ("no-buffer".into(), 3),
                ("bad-descriptor".into(), 0),
                ("vlan-filter".into(), 1),
            ],
            ..Default::default()
        };
        assert_eq!(drops(&c), "4 (no-buffer=3 vlan-filter=1)");
        c.drops.iter_mut().for_each(|d| d.1 = 0);
        assert_eq!(drops(&c), "0");
    }

    #[test]
    fn numbers_are_exact_unless_abbreviated() {
        assert_eq!(count(1_234_567, false), "1234567");
        assert_eq!(count(1_234_567, true), "1.2M");
        assert_eq!(count(999, true), "999");
        assert_eq!(bytes(1023, true), "1023B");
        assert_eq!(bytes(1536, true), "1.5KiB");
        assert_eq!(bytes(50 * 1024 * 1024, true), "50MiB");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(725), "12m05s");
        assert_eq!(duration(3 * 3600 + 7 * 60), "3h07m");
        assert_eq!(duration(2 * 86400 + 4 * 3600), "2d04h");
    }

    fn port(id: u16, name: &str, vlan: VlanConfig, features: u64) -> PortInfo {
        PortInfo {
            id,
            kind: Default::default(),
            name: name.into(),
            socket: format!("/tmp/{name}.sock"),
            mode: ConnectMode::Server,
            state: LinkState::Connected,
            since_secs: 0,
            rings_up: true,
            vlan,
            features,
            feature_names: Vec::new(),
            header_len: Some(12),
            queue_pairs: (1, 8),
            counters: CounterSnapshot::default(),
            failure: None,
            security: None,
            policing: None,
        }
    }

    #[test]
    fn ports_table_shows_queue_pairs_and_negotiated_offloads() {
        use patchbay_switch::virtio::features::{parse_offloads, BASE_FEATURES};
        // vm1: no guest yet; vm2: a multiqueue guest with 4 of 8 pairs enabled that sends
        // checksum- and TSO-offloaded frames and takes partial checksums only; vm3: a guest
        // that negotiated no offload and has one pair of the one offered.
        let waiting = PortInfo {
            state: LinkState::Listening,
            rings_up: false,
            features: 0,
            header_len: None,
            queue_pairs: (0, 8),
            ..port(1, "vm1", vc("access", Some(10), None), 0)
        };
        let mq = PortInfo {
            queue_pairs: (4, 8),
            counters: CounterSnapshot {
                rx_packets: 12,
                rx_bytes: 3456,
                tx_packets: 7,
                tx_bytes: 890,
                drops: vec![("no-buffer".into(), 2)],
                ..Default::default()
            },
            ..port(
                2,
                "vm2",
                vc("trunk", None, Some("10,20")),
                BASE_FEATURES | parse_offloads("csum,host_tso4,host_tso6,guest_csum").unwrap(),
            )
        };
        let plain = PortInfo {
            queue_pairs: (1, 1),
            ..port(3, "vm3", vc("access", Some(20), None), BASE_FEATURES)
        };
        // Given out of order: the table sorts by id.
        let out = ports_table(&[plain, mq, waiting], false);
        assert_eq!(
            out,
            "\
ID  NAME  STATE                VLAN         RX-PKTS  RX-BYTES  TX-PKTS  TX-BYTES  DROPS            QUEUES  OFFLOADS
 1  vm1   listening            access 10          0         0        0         0  0                   -/8  -
 2  vm2   connected, rings up  trunk 10,20       12      3456        7       890  2 (no-buffer=2)     4/8  tx:csum,tso4,tso6 rx:csum
 3  vm3   connected, rings up  access 20          0         0        0         0  0                   1/1  -
3 ports
"
        );
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&[("ID", Align::Right), ("NAME", Align::Left)]);
        t.row(vec!["1".into(), "a".into()]);
        t.row(vec!["12".into(), "bb".into()]);
        assert_eq!(t.render(), "ID  NAME\n 1  a\n12  bb\n");
    }
}
