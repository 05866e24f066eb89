//! Flow requests on the control socket: the switch parses ovs-ofctl text itself (so port
//! names resolve against its ports), and every change is one bundle: a request with one bad
//! line changes nothing and the error names the line and column.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::flow::extract::flow_key;
use crate::flow::parse::{parse_flow, FlowSpec, FlowSyntax, ParseError};
use crate::flow::pipeline::{Flow, FlowDump, FlowFilter, FlowMod, Output, Target, TraceStep};
use crate::flow::rewrite::HeaderBuf;
use crate::flow::{Action, Field, PortRef};
use crate::frame::TunnelMeta;
use crate::switch::Switch;

/// One line of a rules file (or one add-flow argument), with its line number for errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLine {
    pub line: usize,
    pub text: String,
}

/// What a rules-file line asks for: ovs-ofctl's `add`, `modify`, `modify_strict`, `delete`,
/// `delete_strict` prefixes (default add).
fn split_command(text: &str) -> (&str, &str) {
    let t = text.trim_start();
    for cmd in ["modify_strict", "delete_strict", "modify", "delete", "add"] {
        if let Some(rest) = t.strip_prefix(cmd) {
            if rest.starts_with(char::is_whitespace) {
                return (cmd, rest);
            }
        }
    }
    ("add", t)
}

fn err_at(line: Option<usize>, e: &ParseError) -> String {
    match line {
        Some(l) => format!("line {l}, {e}"),
        None => e.to_string(),
    }
}

fn resolve(sw: &Switch, spec: &FlowSpec) -> Result<FlowSpec, ParseError> {
    spec.resolve(|name| sw.port_by_name(name).map(|p| p.id))
}

/// The pipeline's form of a parsed flow: numbers from the resolved spec, texts from the spec
/// as written (port names kept). The texts leave out what dump-flows prints in its own
/// columns (cookie, table, timeouts).
fn to_flow(written: &FlowSpec, spec: &FlowSpec) -> Flow {
    let mut bare = written.clone();
    bare.cookie = 0;
    bare.table = Some(0);
    bare.idle_timeout = 0;
    bare.hard_timeout = 0;
    let text = bare.to_string();
    let (match_text, actions_text) = match text.split_once(" actions=") {
        Some((m, a)) => (m.trim().to_string(), a.trim().to_string()),
        None => (text.trim().to_string(), "drop".to_string()),
    };
    Flow {
        table: spec.table.unwrap_or(0),
        priority: spec.priority,
        m: spec.m,
        actions: spec.actions.clone(),
        cookie: spec.cookie,
        idle_timeout: spec.idle_timeout,
        hard_timeout: spec.hard_timeout,
        match_text,
        actions_text,
    }
}

fn to_filter(spec: &FlowSpec, strict: bool) -> FlowFilter {
    FlowFilter {
        table: spec.table,
        m: spec.m,
        strict_priority: strict.then_some(spec.priority),
        cookie: spec.cookie_mask.map(|mask| (spec.cookie, mask)),
        out_port: match &spec.out_port {
            Some(PortRef::Number(n)) => Some(*n),
            _ => None,
        },
    }
}

/// Parses lines into pipeline changes; the first bad line fails the whole request.
fn parse_changes(sw: &Switch, lines: &[FlowLine]) -> Result<Vec<FlowMod>, String> {
    let mut changes = Vec::with_capacity(lines.len());
    for l in lines {
        let t = l.text.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (cmd, rest) = split_command(t);
        // Columns count from the start of the line as the user wrote it.
        let offset = l.text.len() - rest.len();
        let at = |e: ParseError| {
            let e = ParseError {
                column: e.column + offset,
                message: e.message,
            };
            // Line 0: a single flow from the command line, not a file.
            err_at((l.line > 0).then_some(l.line), &e)
        };
        let change = match cmd {
            "add" => {
                let written = parse_flow(rest, FlowSyntax::Add).map_err(at)?;
                FlowMod::Add(to_flow(&written, &resolve(sw, &written).map_err(at)?))
            }
            "modify" | "modify_strict" => {
                let written = parse_flow(rest, FlowSyntax::Modify).map_err(at)?;
                let spec = resolve(sw, &written).map_err(at)?;
                let flow = to_flow(&written, &spec);
                FlowMod::Modify {
                    filter: to_filter(&spec, cmd == "modify_strict"),
                    actions: flow.actions,
                    actions_text: flow.actions_text,
                    new_cookie: spec.new_cookie,
                }
            }
            _ => {
                let spec = resolve(sw, &parse_flow(rest, FlowSyntax::MatchOnly).map_err(at)?)
                    .map_err(at)?;
                FlowMod::Delete(to_filter(&spec, cmd == "delete_strict"))
            }
        };
        changes.push(change);
    }
    Ok(changes)
}

/// add-flow / add-flows: all lines as one bundle.
pub fn add_flows(sw: &Switch, lines: &[FlowLine]) -> Result<usize, String> {
    let changes = parse_changes(sw, lines)?;
    sw.flows().commit(&changes).map_err(|e| e.to_string())?;
    Ok(changes.len())
}

/// mod-flows: replaces the actions of the flows the match selects.
pub fn mod_flows(sw: &Switch, text: &str, strict: bool) -> Result<usize, String> {
    let written = parse_flow(text, FlowSyntax::Modify).map_err(|e| err_at(None, &e))?;
    let spec = resolve(sw, &written).map_err(|e| err_at(None, &e))?;
    let flow = to_flow(&written, &spec);
    let counts = sw
        .flows()
        .commit(&[FlowMod::Modify {
            filter: to_filter(&spec, strict),
            actions: flow.actions,
            actions_text: flow.actions_text,
            new_cookie: spec.new_cookie,
        }])
        .map_err(|e| e.to_string())?;
    Ok(counts.iter().sum())
}

fn filter(sw: &Switch, text: Option<&str>, strict: bool) -> Result<FlowFilter, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(FlowFilter::default()),
        Some(t) => {
            let spec = resolve(
                sw,
                &parse_flow(t, FlowSyntax::MatchOnly).map_err(|e| err_at(None, &e))?,
            )
            .map_err(|e| err_at(None, &e))?;
            Ok(to_filter(&spec, strict))
        }
    }
}

pub fn del_flows(sw: &Switch, text: Option<&str>, strict: bool) -> Result<usize, String> {
    let f = filter(sw, text, strict)?;
    let counts = sw
        .flows()
        .commit(&[FlowMod::Delete(f)])
        .map_err(|e| e.to_string())?;
    Ok(counts.iter().sum())
}

pub fn dump_flows(sw: &Switch, text: Option<&str>) -> Result<Vec<FlowDump>, String> {
    Ok(sw.flows().dump(&filter(sw, text, false)?))
}

fn parse_file_flows(sw: &Switch, lines: &[FlowLine]) -> Result<Vec<Flow>, String> {
    let mut flows = Vec::new();
    for change in parse_changes(sw, lines)? {
        match change {
            FlowMod::Add(f) => flows.push(f),
            _ => return Err("replace-flows and diff-flows files may only add flows".into()),
        }
    }
    Ok(flows)
}

/// Result of replace-flows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    pub added: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// replace-flows: the switch ends up with exactly the file's flows, atomically; flows that
/// were already there keep their counters.
pub fn replace_flows(sw: &Switch, lines: &[FlowLine]) -> Result<Replaced, String> {
    let flows = parse_file_flows(sw, lines)?;
    let total = flows.len();
    let (added, removed) = sw.flows().replace_all(flows).map_err(|e| e.to_string())?;
    Ok(Replaced {
        added,
        removed,
        unchanged: total - added,
    })
}

/// Result of diff-flows: canonical lines only in the switch (`-`) or only in the file (`+`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDiff {
    pub only_in_switch: Vec<String>,
    pub only_in_file: Vec<String>,
}

fn flow_line(table: u8, m: &str, a: &str) -> String {
    let table = if table == 0 {
        String::new()
    } else {
        format!("table={table}, ")
    };
    format!("{table}{m} actions={a}")
}

pub fn diff_flows(sw: &Switch, lines: &[FlowLine]) -> Result<FlowDiff, String> {
    use std::collections::HashSet;
    let file: Vec<String> = parse_file_flows(sw, lines)?
        .iter()
        .map(|f| flow_line(f.table, &f.match_text, &f.actions_text))
        .collect();
    let switch: Vec<String> = sw
        .flows()
        .dump(&FlowFilter::default())
        .iter()
        .map(|f| flow_line(f.table, &f.match_text, &f.actions_text))
        .collect();
    // Sets, not `Vec::contains`: O(n), not O(n * m), for big rule files.
    let (in_file, in_switch): (HashSet<&String>, HashSet<&String>) =
        (file.iter().collect(), switch.iter().collect());
    Ok(FlowDiff {
        only_in_switch: switch
            .iter()
            .filter(|l| !in_file.contains(l))
            .cloned()
            .collect(),
        only_in_file: file
            .iter()
            .filter(|l| !in_switch.contains(l))
            .cloned()
            .collect(),
    })
}

/// Result of trace: each table visited, and where the packet would leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The packet as understood (canonical match syntax).
    pub packet: String,
    pub steps: Vec<TraceEntry>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    pub table: u8,
    pub depth: usize,
    /// The matching flow (canonical text), or None for a miss.
    pub flow: Option<String>,
    pub actions: Option<String>,
}

/// Builds a frame carrying the fields of `spec`'s match (what `trace` runs).
fn frame_for(spec: &FlowSpec) -> Vec<u8> {
    use crate::flow::key::consts::*;
    let m = &spec.m;
    let get = |f: Field| m.get(f).0;
    let mac = |v: u64| {
        let b = v.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    };
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&mac(get(Field::DlDst)));
    f.extend_from_slice(&mac(get(Field::DlSrc)));
    let tci = get(Field::VlanTci);
    if tci & VLAN_CFI != 0 {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&((tci & !VLAN_CFI) as u16).to_be_bytes());
    }
    let dl_type = get(Field::DlType);
    f.extend_from_slice(&(dl_type as u16).to_be_bytes());
    match dl_type {
        ETH_IPV4 => {
            let proto = get(Field::NwProto) as u8;
            let l4_len = match u64::from(proto) {
                IP_TCP => 20,
                IP_UDP => 8,
                IP_ICMP => 8,
                _ => 0,
            };
            let total = (20 + l4_len) as u16;
            let mut ip = vec![0x45, get(Field::NwTos) as u8];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            ip.extend_from_slice(&(get(Field::NwSrc) as u32).to_be_bytes());
            ip.extend_from_slice(&(get(Field::NwDst) as u32).to_be_bytes());
            f.extend_from_slice(&ip);
            let (sp, dp) = (get(Field::TpSrc) as u16, get(Field::TpDst) as u16);
            match u64::from(proto) {
                IP_TCP => {
                    f.extend_from_slice(&sp.to_be_bytes());
                    f.extend_from_slice(&dp.to_be_bytes());
                    f.extend_from_slice(&[0; 8]);
                    f.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
                }
                IP_UDP => {
                    f.extend_from_slice(&sp.to_be_bytes());
                    f.extend_from_slice(&dp.to_be_bytes());
                    f.extend_from_slice(&[0, 8, 0, 0]);
                }
                IP_ICMP => f.extend_from_slice(&[sp as u8, dp as u8, 0, 0, 0, 0, 0, 0]),
                _ => {}
            }
        }
        ETH_ARP => {
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
            f.extend_from_slice(&(get(Field::NwProto) as u16).to_be_bytes());
            f.extend_from_slice(&mac(get(Field::DlSrc)));
            f.extend_from_slice(&(get(Field::NwSrc) as u32).to_be_bytes());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&(get(Field::NwDst) as u32).to_be_bytes());
        }
        _ => {}
    }
    while f.len() < 60 {
        f.push(0);
    }
    f
}

fn port_name(sw: &Switch, id: u16) -> String {
    sw.ports_snapshot()
        .get(usize::from(id))
        .and_then(|p| p.as_ref())
        .map_or_else(|| format!("port {id} (none)"), |p| p.name.clone())
}

/// trace: runs a described packet through the tables without sending it, and says what the
/// dataplane would do (for `normal`, what the learning switch would decide now).
pub fn trace(sw: &Arc<Switch>, text: &str) -> Result<Trace, String> {
    let spec = resolve(
        sw,
        &parse_flow(text, FlowSyntax::MatchOnly).map_err(|e| err_at(None, &e))?,
    )
    .map_err(|e| err_at(None, &e))?;
    let in_port = spec.m.get(Field::InPort).0 as u16;
    if in_port == 0 {
        return Err("trace needs in_port=PORT".into());
    }
    let frame = frame_for(&spec);
    let tunnel = (spec.m.get(Field::TunId).1 != 0).then(|| TunnelMeta {
        vni: spec.m.get(Field::TunId).0 as u32,
        vlan: 0,
        remote: std::net::Ipv4Addr::from(spec.m.get(Field::TunSrc).0 as u32).into(),
        local: std::net::Ipv4Addr::from(spec.m.get(Field::TunDst).0 as u32).into(),
    });
    let key = flow_key(&frame, in_port, tunnel.as_ref());
    let pipeline = sw.flows();
    let tables = pipeline.snapshot();
    let mut outputs: Vec<Output> = Vec::new();
    let mut steps: Vec<TraceStep> = Vec::new();
    let halt = pipeline.run_untracked(
        &tables,
        &key,
        HeaderBuf::new(&frame),
        frame.len() as u32,
        &mut outputs,
        &mut steps,
    );
    let steps = steps
        .into_iter()
        .map(|s| TraceEntry {
            table: s.table,
            depth: s.depth,
            flow: s.flow.as_ref().map(|f| f.match_text.clone()),
            actions: s.flow.as_ref().map(|f| f.actions_text.clone()),
        })
        .collect();
    let table = sw.mac_table();
    let outputs = outputs
        .iter()
        .map(|o| {
            let changed = if o.modified() {
                " (headers rewritten)"
            } else {
                ""
            };
            match o.target {
                Target::Port(p) if p == in_port => format!(
                    "output:{} skipped: it is the ingress port (use in_port){changed}",
                    port_name(sw, p)
                ),
                Target::Port(p) => format!("output to {}{changed}", port_name(sw, p)),
                Target::InPort => format!("back out of {}{changed}", port_name(sw, in_port)),
                Target::Flood | Target::All => {
                    format!("to every port but {}{changed}", port_name(sw, in_port))
                }
                Target::Normal => {
                    let h = o.header_bytes(&frame);
                    let dst = crate::wire::EthernetAddress::from_bytes(&h[0..6]);
                    let port = sw.port_by_name(&port_name(sw, in_port));
                    let vlan = port.and_then(|p| {
                        let tag = crate::wire::L2Header::parse(h).ok().and_then(|x| x.vlan);
                        p.vlan().ingress(tag.as_ref()).ok()
                    });
                    match vlan {
                        None => "normal: refused by the ingress port's VLAN policy".to_string(),
                        Some(c) => match dst
                            .is_unicast()
                            .then(|| table.lookup(c.vid, dst, table.now()))
                            .flatten()
                        {
                            Some(p) => format!(
                                "normal: VLAN {}, {dst} learned on {}{changed}",
                                c.vid,
                                port_name(sw, p)
                            ),
                            None => format!(
                                "normal: VLAN {}, {dst} unknown: flooded in the VLAN{changed}",
                                c.vid
                            ),
                        },
                    }
                }
            }
        })
        .collect::<Vec<_>>();
    // Say why the run stopped early (after any copies that still leave).
    let mut outputs = outputs;
    match halt {
        Some(why) => outputs.push(format!("drop: {why}")),
        None if outputs.is_empty() => outputs.push("drop".to_string()),
        None => {}
    }
    let packet = spec.to_string();
    let packet = packet
        .split(" actions=")
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(Trace {
        packet,
        steps,
        outputs,
    })
}

/// Per-table counters, for `flowctl show tables` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub table: u8,
    pub flows: usize,
    pub lookups: u64,
    pub matches: u64,
}

pub fn tables(sw: &Switch) -> Vec<TableInfo> {
    use std::sync::atomic::Ordering;
    let dump = sw.flows().dump(&FlowFilter::default());
    (0..=254u8)
        .filter_map(|t| {
            let stats = sw.flows().table_stats(t);
            let lookups = stats.lookups.load(Ordering::Relaxed);
            let flows = dump.iter().filter(|f| f.table == t).count();
            (flows > 0 || lookups > 0).then(|| TableInfo {
                table: t,
                flows,
                lookups,
                matches: stats.matches.load(Ordering::Relaxed),
            })
        })
        .collect()
}

#[allow(dead_code)]
fn _uses(_: Action) {}

/// `dump-conntrack`: the connections (of `zone`), limits and counters.
pub fn dump_conntrack(sw: &Switch, zone: Option<u16>) -> crate::control::protocol::ConntrackDump {
    use std::sync::atomic::Ordering::Relaxed;
    let pipeline = sw.flows();
    let ct = pipeline.conntrack();
    let c = &ct.counters;
    crate::control::protocol::ConntrackDump {
        connections: ct.dump(zone, pipeline.now_ms()),
        total: ct.len(),
        limits: ct.limits(),
        committed: c.committed.load(Relaxed),
        refused: c.refused.load(Relaxed),
        evicted: c.evicted.load(Relaxed),
        expired: c.expired.load(Relaxed),
        invalid: c.invalid.load(Relaxed),
    }
}

/// `ct-set-limits`: the total and per-zone limits (a zone's limit 0 removes it).
pub fn set_conntrack_limits(
    sw: &Switch,
    max_connections: Option<usize>,
    zones: &[(u16, usize)],
) -> Result<crate::conntrack::Limits, String> {
    let ct = sw.flows().conntrack();
    let mut limits = ct.limits();
    if let Some(n) = max_connections {
        if n == 0 || n > crate::conntrack::MAX_CONNECTIONS_LIMIT {
            return Err(format!(
                "max_connections must be 1 to {}",
                crate::conntrack::MAX_CONNECTIONS_LIMIT
            ));
        }
        limits.max_connections = n;
    }
    for &(zone, limit) in zones {
        if limit == 0 {
            limits.zones.remove(&zone);
        } else {
            limits.zones.insert(zone, limit);
        }
    }
    ct.set_limits(limits.clone());
    Ok(limits)
}

/// add-group / mod-group.
pub fn add_group(sw: &Switch, text: &str, modify: bool) -> Result<usize, String> {
    let mut group = crate::flow::parse::parse_group(text).map_err(|e| err_at(None, &e))?;
    // Port names in buckets, as in flows.
    for bucket in &mut group.buckets {
        if let Some(PortRef::Name(name)) = &bucket.watch_port {
            let id = sw
                .port_by_name(name)
                .map(|p| p.id)
                .ok_or_else(|| format!("bucket: watch_port: unknown port '{name}'"))?;
            bucket.watch_port = Some(PortRef::Number(id));
        }
        for a in &mut bucket.actions {
            if let Action::Output(PortRef::Name(name))
            | Action::Resubmit {
                port: Some(PortRef::Name(name)),
                ..
            } = a
            {
                let id = sw
                    .port_by_name(name)
                    .map(|p| p.id)
                    .ok_or_else(|| format!("bucket: unknown port '{name}'"))?;
                match a {
                    Action::Output(p) => *p = PortRef::Number(id),
                    Action::Resubmit { port, .. } => *port = Some(PortRef::Number(id)),
                    _ => {}
                }
            }
        }
    }
    let change = if modify {
        FlowMod::ModGroup(group)
    } else {
        FlowMod::AddGroup(group)
    };
    sw.flows()
        .commit(&[change])
        .map(|c| c.iter().sum())
        .map_err(|e| e.to_string())
}

pub fn del_groups(sw: &Switch, id: Option<u32>) -> Result<usize, String> {
    sw.flows()
        .commit(&[FlowMod::DelGroups(id)])
        .map(|c| c.iter().sum())
        .map_err(|e| e.to_string())
}

pub fn dump_groups(sw: &Switch) -> Vec<crate::control::protocol::GroupDump> {
    use std::sync::atomic::Ordering::Relaxed;
    let tables = sw.flows().snapshot();
    let mut groups: Vec<_> = tables.groups.values().collect();
    groups.sort_by_key(|g| g.group.id);
    groups
        .into_iter()
        .map(|g| crate::control::protocol::GroupDump {
            group: crate::flow::parse::format_group(&g.group),
            packets: g.stats.packets.load(Relaxed),
            bytes: g.stats.bytes.load(Relaxed),
        })
        .collect()
}

/// add-meter / mod-meter.
pub fn add_meter(sw: &Switch, text: &str, modify: bool) -> Result<usize, String> {
    let meter = crate::flow::parse::parse_meter(text).map_err(|e| err_at(None, &e))?;
    let change = if modify {
        FlowMod::ModMeter(meter)
    } else {
        FlowMod::AddMeter(meter)
    };
    sw.flows()
        .commit(&[change])
        .map(|c| c.iter().sum())
        .map_err(|e| e.to_string())
}

pub fn del_meters(sw: &Switch, id: Option<u32>) -> Result<usize, String> {
    sw.flows()
        .commit(&[FlowMod::DelMeters(id)])
        .map(|c| c.iter().sum())
        .map_err(|e| e.to_string())
}

pub fn dump_meters(sw: &Switch) -> Vec<crate::control::protocol::MeterDump> {
    use std::sync::atomic::Ordering::Relaxed;
    let tables = sw.flows().snapshot();
    let mut meters: Vec<_> = tables.meters.values().collect();
    meters.sort_by_key(|m| m.meter.id);
    meters
        .into_iter()
        .map(|m| crate::control::protocol::MeterDump {
            meter: crate::flow::parse::format_meter(&m.meter),
            packets: m.stats.packets.load(Relaxed),
            bytes: m.stats.bytes.load(Relaxed),
            dropped: m.stats.dropped.load(Relaxed),
        })
        .collect()
}
