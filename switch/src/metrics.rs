//! Prometheus metrics over HTTP. Counters live in atomics on the frame path; a scrape copies
//! them into a fresh registry and encodes it with the prometheus crate's text encoder, so
//! the frame path never touches the prometheus types.
//!
//! Metrics (all prefixed `patchbay_`):
//! - `port_rx_packets_total`, `port_rx_bytes_total`: frames the switch accepted from a port.
//! - `port_tx_packets_total`, `port_tx_bytes_total`: frames the switch delivered to a port.
//! - `port_drops_total{reason}`: drops by reason (see `port::DropReason`).
//! - `port_up`: 1 when a frontend is connected and both rings are enabled.
//! - `port_info{port,kind,socket,connect,vlan_mode,vlan,trunks}`: always 1; what the port is
//!   (join it on `port` to label other series: `* on (port) group_left(vlan) port_info`).
//! - `port_rx_ring_pending`: chains waiting in the guest's transmit ring at the switch's last
//!   look; `port_tx_ring_free`: receive buffers the guest had posted at the last delivery.
//! - `port_connects_total`: frontend connections accepted or made.
//! - `port_memory_faults_total`: connections failed because the frontend's memory shrank
//!   under the switch's mapping (a SIGBUS absorbed by the guard, see `port::memory`).
//! - `port_mac_learn_refused_total`: source addresses not learned (the port's MAC limit).
//! - `port_dataplane_panics_total`: dataplane panics while serving the port; each one fails
//!   the port's connection (logged, and shown by `flowctl show ports`) and is never silent.
//! - `mac_table_entries`, `mac_table_capacity`: learning table size and limit.
//! - `floods_total`, `mac_learned_total`, `mac_moved_total`, `mac_table_full_total`.
//! - `control_requests_total{result}`: control socket requests by outcome.
//! - `control_refused_clients_total`, `control_idle_timeouts_total`: control clients turned
//!   away (over `max_clients`) or disconnected (idle).
//! - `table_lookups_total{table}`, `table_matches_total{table}`, `table_flows{table}`,
//!   `flow_packets_total{table,cookie}`, `flow_bytes_total{table,cookie}` (at most 1000
//!   series; the rest summed under cookie="other").
//! - `flow_vlan_tag_limit_drops_total`: packets dropped because their actions would have
//!   pushed more than `flow::rewrite::MAX_PUSHED_TAGS` VLAN tags.
//! - `flow_resubmit_limit_drops_total`: packets dropped whole because they took more than
//!   `flow::pipeline::MAX_RESUBMITS` resubmits and goto_tables.
//! - `conntrack_connections`, `conntrack_max_connections`, `conntrack_zone_connections{zone}`
//!   (zones with connections), `conntrack_committed_total`, `conntrack_refused_total` (commits
//!   refused at a limit), `conntrack_evicted_total`, `conntrack_expired_total`,
//!   `conntrack_invalid_total` (packets tracked as invalid).
//! - `vxlan_vni_{rx,tx}_{packets,bytes}_total{vni}`, `vxlan_drops_total{vni,reason}`,
//!   `vxlan_remote_{rx,tx}_{packets,bytes}_total{remote}`, `vxlan_remote_macs`: the tunnel;
//!   `vxlan_proxy_replies_total{vni,protocol}`, `vxlan_proxy_table_full_total{vni}`,
//!   `vxlan_proxy_neighbors`: its ARP/ND proxy;
//!   `vxlan_{tx,rx}_{syscalls,datagrams}_total`, `vxlan_tx_gso_datagrams_total`,
//!   `vxlan_rx_gro_datagrams_total`, `vxlan_udp_gso`, `vxlan_udp_gro`: its socket I/O.
//! - `evpn_routes_received_total{type}` and `evpn_routes_withdrawn_total{type}` (type `mac`:
//!   type-2, `flood`: type-3, as zebra installed them), `evpn_routes_refused_total`,
//!   `evpn_remote_macs{vni}`, `evpn_flood_remotes{vni}`, `evpn_local_macs{vni}` (advertised),
//!   `evpn_local_macs_moved_away_total`, `evpn_netlink_errors_total`, `evpn_resyncs_total`:
//!   BGP EVPN, when configured.
//! - `metrics_refused_connections_total`, `metrics_timeouts_total`,
//!   `metrics_bad_requests_total`: this endpoint's own defences (see [`MetricsServer`]).
//! - `dataplane_busy_seconds_total{thread}`: time each dataplane thread spent on rounds that
//!   found work (its rate is the thread's busy ratio); `dataplane_sleeps_total{thread}`.
//! - `build_info{version}`: always 1.
//! - `process_*` (no prefix): the standard process metrics (CPU seconds, resident and virtual
//!   memory, open and maximum file descriptors, threads, start time), read from /proc.
//!
//! docs/metrics.md lists them with their node_exporter counterparts, the shipped Grafana
//! dashboard and the Prometheus rules.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use prometheus::{
    CounterVec, Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::control::server::ControlCounters;
use crate::port::DropReason;
use crate::switch::Switch;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("patchbay"), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str, value: u64) -> Result<(), prometheus::Error> {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace("patchbay"))?;
    c.inc_by(value);
    r.register(Box::new(c))
}

fn gauge(r: &Registry, name: &str, help: &str, value: i64) -> Result<(), prometheus::Error> {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("patchbay"))?;
    g.set(value);
    r.register(Box::new(g))
}

/// Renders every metric in the Prometheus text format.
pub fn render(sw: &Switch, control: &ControlCounters) -> Result<String, MetricsError> {
    render_all(sw, control, None)
}

/// [`render`], plus the HTTP server's own counters when it is the one asking.
fn render_all(
    sw: &Switch,
    control: &ControlCounters,
    http: Option<&HttpCounters>,
) -> Result<String, MetricsError> {
    let r = Registry::new();
    let rx_packets = counter_vec(
        &r,
        "port_rx_packets_total",
        "Frames the switch accepted from the port's guest.",
        &["port"],
    )?;
    let rx_bytes = counter_vec(
        &r,
        "port_rx_bytes_total",
        "Bytes of frames accepted from the port's guest.",
        &["port"],
    )?;
    let tx_packets = counter_vec(
        &r,
        "port_tx_packets_total",
        "Frames the switch delivered to the port's guest.",
        &["port"],
    )?;
    let tx_bytes = counter_vec(
        &r,
        "port_tx_bytes_total",
        "Bytes of frames delivered to the port's guest.",
        &["port"],
    )?;
    let drops = counter_vec(
        &r,
        "port_drops_total",
        "Frames dropped, by port and reason.",
        &["port", "reason"],
    )?;
    let connects = counter_vec(
        &r,
        "port_connects_total",
        "vhost-user frontend connections on the port.",
        &["port"],
    )?;
    let announcements = counter_vec(
        &r,
        "port_announcements_total",
        "RARP broadcasts sent for the port's guest at the end of a live migration (SEND_RARP).",
        &["port"],
    )?;
    let rx_batches = counter_vec(
        &r,
        "port_rx_batches_total",
        "Batches taken from the port's transmit ring (frames received / batches = mean batch).",
        &["port"],
    )?;
    let notifications = counter_vec(
        &r,
        "port_notifications_total",
        "Interrupts (call eventfd signals) sent to the port's guest.",
        &["port"],
    )?;
    let memory_faults = counter_vec(
        &r,
        "port_memory_faults_total",
        "Connections failed because the frontend's memory shrank under the switch's mapping.",
        &["port"],
    )?;
    let learn_refused = counter_vec(
        &r,
        "port_mac_learn_refused_total",
        "Source addresses not learned because the port reached its MAC limit.",
        &["port"],
    )?;
    let panics = counter_vec(
        &r,
        "port_dataplane_panics_total",
        "Dataplane panics while serving the port (each failed the port's connection).",
        &["port"],
    )?;
    let up = IntGaugeVec::new(
        Opts::new(
            "port_up",
            "1 when a frontend is connected with both rings enabled (an internal port or an uplink: its interface is up with a carrier).",
        )
        .namespace("patchbay"),
        &["port"],
    )?;
    r.register(Box::new(up.clone()))?;
    let info = IntGaugeVec::new(
        Opts::new(
            "port_info",
            "Always 1: what the port is (kind, socket or interface, who listens, VLAN mode).",
        )
        .namespace("patchbay"),
        &[
            "port",
            "kind",
            "socket",
            "connect",
            "vlan_mode",
            "vlan",
            "trunks",
        ],
    )?;
    r.register(Box::new(info.clone()))?;
    let rx_pending = gauge_vec(
        &r,
        "port_rx_ring_pending",
        "Chains waiting in the guest's transmit ring when the switch last looked.",
        &["port"],
    )?;
    let tx_free = gauge_vec(
        &r,
        "port_tx_ring_free",
        "Receive buffers the guest had posted when the switch last delivered to it.",
        &["port"],
    )?;

    for port in sw.ports() {
        let name = port.name.as_str();
        let c = &port.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        rx_packets
            .with_label_values(&[name])
            .inc_by(load(&c.rx_packets));
        rx_bytes
            .with_label_values(&[name])
            .inc_by(load(&c.rx_bytes));
        tx_packets
            .with_label_values(&[name])
            .inc_by(load(&c.tx_packets));
        tx_bytes
            .with_label_values(&[name])
            .inc_by(load(&c.tx_bytes));
        connects
            .with_label_values(&[name])
            .inc_by(load(&c.connects));
        announcements
            .with_label_values(&[name])
            .inc_by(load(&c.announcements));
        rx_batches
            .with_label_values(&[name])
            .inc_by(load(&c.rx_batches));
        notifications
            .with_label_values(&[name])
            .inc_by(load(&c.notifications));
        memory_faults
            .with_label_values(&[name])
            .inc_by(load(&c.memory_faults));
        learn_refused
            .with_label_values(&[name])
            .inc_by(load(&c.mac_learn_refused));
        panics
            .with_label_values(&[name])
            .inc_by(load(&c.dataplane_panics));
        for reason in DropReason::ALL {
            drops
                .with_label_values(&[name, reason.label()])
                .inc_by(c.drops(reason));
        }
        let is_up = port.is_up();
        up.with_label_values(&[name]).set(i64::from(is_up));
        let labels = port_info_labels(&port);
        info.with_label_values(&labels.each()).set(1);
        let gauge_of = |a: &std::sync::atomic::AtomicU64| i64::try_from(load(a)).unwrap_or(0);
        rx_pending
            .with_label_values(&[name])
            .set(gauge_of(&c.rx_ring_pending));
        tx_free
            .with_label_values(&[name])
            .set(gauge_of(&c.tx_ring_free));
    }

    let table = sw.mac_table();
    gauge(
        &r,
        "mac_table_entries",
        "Addresses in the learning table.",
        table.len() as i64,
    )?;
    gauge(
        &r,
        "mac_table_capacity",
        "Most addresses the learning table holds.",
        table.max_entries() as i64,
    )?;
    let sc = sw.counters();
    counter(
        &r,
        "floods_total",
        "Frames flooded to every port of their VLAN.",
        sc.floods.load(Ordering::Relaxed),
    )?;
    counter(
        &r,
        "mac_learned_total",
        "Addresses learned.",
        sc.mac_learned.load(Ordering::Relaxed),
    )?;
    counter(
        &r,
        "mac_moved_total",
        "Learned addresses that moved to another port.",
        sc.mac_moved.load(Ordering::Relaxed),
    )?;
    counter(
        &r,
        "mac_table_full_total",
        "Addresses not learned because the table was full.",
        sc.mac_table_full.load(Ordering::Relaxed),
    )?;
    let requests = counter_vec(
        &r,
        "control_requests_total",
        "Control socket requests by outcome.",
        &["result"],
    )?;
    requests
        .with_label_values(&["ok"])
        .inc_by(control.ok.load(Ordering::Relaxed));
    requests
        .with_label_values(&["error"])
        .inc_by(control.errors.load(Ordering::Relaxed));
    counter(
        &r,
        "control_refused_clients_total",
        "Control socket clients refused because max_clients were connected.",
        control.refused_clients.load(Ordering::Relaxed),
    )?;
    counter(
        &r,
        "control_idle_timeouts_total",
        "Control socket clients disconnected after idle_timeout_secs without a request.",
        control.idle_timeouts.load(Ordering::Relaxed),
    )?;

    if let Some(http) = http {
        http_metrics(&r, http)?;
    }
    worker_metrics(&r, sw)?;
    build_metrics(&r)?;
    if let Some(tunnel) = sw.tunnel() {
        tunnel_metrics(&r, &tunnel.vtep.snapshot())?;
        tunnel_io_metrics(&r, tunnel)?;
    }
    if let Some(evpn) = sw.evpn() {
        evpn_metrics(&r, evpn)?;
    }
    flow_metrics(&r, sw)?;

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help).namespace("patchbay"), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The labels of a port's `port_info` series: empty values where a label does not apply
/// (no socket on the tunnel port, no `connect` on a host device).
struct PortInfoLabels {
    port: String,
    kind: &'static str,
    socket: String,
    connect: &'static str,
    vlan_mode: String,
    vlan: String,
    trunks: String,
}

impl PortInfoLabels {
    fn each(&self) -> [&str; 7] {
        [
            &self.port,
            self.kind,
            &self.socket,
            self.connect,
            &self.vlan_mode,
            &self.vlan,
            &self.trunks,
        ]
    }
}

fn port_info_labels(port: &crate::port::Port) -> PortInfoLabels {
    use crate::port::{ConnectMode, PortKind};
    let (kind, socket, connect) = match port.kind {
        PortKind::Vhost => (
            "vhost-user",
            port.config.socket.display().to_string(),
            match port.config.mode {
                ConnectMode::Server => "server",
                ConnectMode::Client => "client",
            },
        ),
        PortKind::Vxlan => ("vxlan", String::new(), ""),
        PortKind::Internal => ("internal", port.config.interface_name().to_string(), ""),
        PortKind::Afpacket => ("afpacket", port.config.interface_name().to_string(), ""),
        PortKind::Afxdp => ("afxdp", port.config.interface_name().to_string(), ""),
    };
    let vlan = port.vlan().describe();
    PortInfoLabels {
        port: port.name.clone(),
        kind,
        socket,
        connect,
        vlan_mode: vlan.mode,
        vlan: vlan.vlan.map(|v| v.to_string()).unwrap_or_default(),
        trunks: vlan.trunks.unwrap_or_default(),
    }
}

/// Busy time and sleeps of each dataplane thread.
fn worker_metrics(r: &Registry, sw: &Switch) -> Result<(), prometheus::Error> {
    let busy = CounterVec::new(
        Opts::new(
            "dataplane_busy_seconds_total",
            "Time the dataplane thread spent on rounds that found work (rate: its busy ratio).",
        )
        .namespace("patchbay"),
        &["thread"],
    )?;
    r.register(Box::new(busy.clone()))?;
    let sleeps = counter_vec(
        r,
        "dataplane_sleeps_total",
        "Times the dataplane thread went to sleep waiting for a kick (event mode).",
        &["thread"],
    )?;
    for w in sw.worker_stats() {
        busy.with_label_values(&[w.thread.as_str()])
            .inc_by(w.busy_seconds());
        sleeps
            .with_label_values(&[w.thread.as_str()])
            .inc_by(w.sleeps());
    }
    Ok(())
}

/// `patchbay_build_info`, and the standard `process_*` metrics of this process.
fn build_metrics(r: &Registry) -> Result<(), prometheus::Error> {
    let info = IntGaugeVec::new(
        Opts::new("build_info", "Always 1: the switch's version.").namespace("patchbay"),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    r.register(Box::new(info))?;
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
}

/// Most (table, cookie) series exported; the rest are summed under cookie="other", so a
/// large flow table cannot blow up a scrape.
const MAX_FLOW_SERIES: usize = 1000;

/// Per-table lookups and matches, and flow counters summed by (table, cookie).
fn flow_metrics(r: &Registry, sw: &Switch) -> Result<(), prometheus::Error> {
    let lookups = counter_vec(
        r,
        "table_lookups_total",
        "Packets looked up in the flow table.",
        &["table"],
    )?;
    let matches = counter_vec(
        r,
        "table_matches_total",
        "Lookups in the flow table that matched a flow.",
        &["table"],
    )?;
    let flows = IntGaugeVec::new(
        Opts::new("table_flows", "Flows in the flow table.").namespace("patchbay"),
        &["table"],
    )?;
    r.register(Box::new(flows.clone()))?;
    let packets = counter_vec(
        r,
        "flow_packets_total",
        "Packets that matched flows, by table and cookie.",
        &["table", "cookie"],
    )?;
    let bytes = counter_vec(
        r,
        "flow_bytes_total",
        "Bytes of packets that matched flows, by table and cookie.",
        &["table", "cookie"],
    )?;
    let dump = sw
        .flows()
        .dump(&crate::flow::pipeline::FlowFilter::default());
    let mut series: std::collections::BTreeMap<(u8, String), (u64, u64)> =
        std::collections::BTreeMap::new();
    for f in &dump {
        let cookie = format!("{:#x}", f.cookie);
        let key =
            if series.len() < MAX_FLOW_SERIES || series.contains_key(&(f.table, cookie.clone())) {
                (f.table, cookie)
            } else {
                (f.table, "other".to_string())
            };
        let e = series.entry(key).or_default();
        e.0 += f.packets;
        e.1 += f.bytes;
    }
    for ((table, cookie), (p, b)) in &series {
        let t = table.to_string();
        packets.with_label_values(&[&t, cookie]).inc_by(*p);
        bytes.with_label_values(&[&t, cookie]).inc_by(*b);
    }
    let pipeline = sw.flows();
    counter(
        r,
        "flow_vlan_tag_limit_drops_total",
        "Packets dropped because flow actions would have pushed more VLAN tags than a frame may get.",
        pipeline.vlan_tag_limit_drops.load(Ordering::Relaxed),
    )?;
    counter(
        r,
        "flow_resubmit_limit_drops_total",
        "Packets dropped whole because they took more resubmits and goto_tables than allowed.",
        pipeline.resubmit_limit_drops.load(Ordering::Relaxed),
    )?;
    conntrack_metrics(r, pipeline.conntrack())?;
    for t in 0..=254u8 {
        let stats = sw.flows().table_stats(t);
        let l = stats.lookups.load(Ordering::Relaxed);
        let n = dump.iter().filter(|f| f.table == t).count();
        if l == 0 && n == 0 {
            continue;
        }
        let label = t.to_string();
        lookups.with_label_values(&[&label]).inc_by(l);
        matches
            .with_label_values(&[&label])
            .inc_by(stats.matches.load(Ordering::Relaxed));
        flows.with_label_values(&[&label]).set(n as i64);
    }
    Ok(())
}

/// Connection counts, limits and counters of the flow tables' connection tracking.
fn conntrack_metrics(
    r: &Registry,
    ct: &crate::conntrack::Conntrack,
) -> Result<(), prometheus::Error> {
    gauge(
        r,
        "conntrack_connections",
        "Connections tracked, in all zones.",
        ct.len() as i64,
    )?;
    gauge(
        r,
        "conntrack_max_connections",
        "Most connections tracked at once (all zones).",
        ct.limits().max_connections as i64,
    )?;
    let zones = IntGaugeVec::new(
        Opts::new(
            "conntrack_zone_connections",
            "Connections tracked in a zone.",
        )
        .namespace("patchbay"),
        &["zone"],
    )?;
    r.register(Box::new(zones.clone()))?;
    for (zone, n) in ct.zone_counts() {
        zones.with_label_values(&[&zone.to_string()]).set(n as i64);
    }
    let c = &ct.counters;
    for (name, help, value) in [
        (
            "conntrack_committed_total",
            "Connections stored by ct(commit).",
            &c.committed,
        ),
        (
            "conntrack_refused_total",
            "Commits refused because a connection limit was reached.",
            &c.refused,
        ),
        (
            "conntrack_evicted_total",
            "Closed connections removed early to make room.",
            &c.evicted,
        ),
        (
            "conntrack_expired_total",
            "Connections removed after their idle timeout.",
            &c.expired,
        ),
        (
            "conntrack_invalid_total",
            "Packets connection tracking found invalid.",
            &c.invalid,
        ),
    ] {
        counter(r, name, help, value.load(Ordering::Relaxed))?;
    }
    Ok(())
}

/// Per VNI and per remote VTEP counters of the VXLAN tunnel.
fn tunnel_metrics(
    r: &Registry,
    snap: &patchbay_overlay::vtep::VtepSnapshot,
) -> Result<(), prometheus::Error> {
    let vni_rx_packets = counter_vec(
        r,
        "vxlan_vni_rx_packets_total",
        "Frames decapsulated for the VNI.",
        &["vni"],
    )?;
    let vni_rx_bytes = counter_vec(
        r,
        "vxlan_vni_rx_bytes_total",
        "Inner bytes decapsulated for the VNI.",
        &["vni"],
    )?;
    let vni_tx_packets = counter_vec(
        r,
        "vxlan_vni_tx_packets_total",
        "Packets encapsulated for the VNI (one per remote VTEP).",
        &["vni"],
    )?;
    let vni_tx_bytes = counter_vec(
        r,
        "vxlan_vni_tx_bytes_total",
        "Inner bytes encapsulated for the VNI.",
        &["vni"],
    )?;
    let drops = counter_vec(
        r,
        "vxlan_drops_total",
        "VXLAN packets dropped, by VNI (\"none\" before one is known) and reason.",
        &["vni", "reason"],
    )?;
    let remote_rx_packets = counter_vec(
        r,
        "vxlan_remote_rx_packets_total",
        "Packets received from the remote VTEP.",
        &["remote"],
    )?;
    let remote_rx_bytes = counter_vec(
        r,
        "vxlan_remote_rx_bytes_total",
        "Inner bytes received from the remote VTEP.",
        &["remote"],
    )?;
    let remote_tx_packets = counter_vec(
        r,
        "vxlan_remote_tx_packets_total",
        "Packets sent to the remote VTEP.",
        &["remote"],
    )?;
    let remote_tx_bytes = counter_vec(
        r,
        "vxlan_remote_tx_bytes_total",
        "Inner bytes sent to the remote VTEP.",
        &["remote"],
    )?;
    let proxy_replies = counter_vec(
        r,
        "vxlan_proxy_replies_total",
        "ARP requests (protocol arp) and IPv6 neighbour solicitations (nd) the VNI's proxy answered instead of sending them through the tunnel.",
        &["vni", "protocol"],
    )?;
    let proxy_table_full = counter_vec(
        r,
        "vxlan_proxy_table_full_total",
        "Addresses the VNI's ARP/ND proxy did not learn because its table was full.",
        &["vni"],
    )?;
    for v in &snap.vnis {
        let vni = v.vni.to_string();
        proxy_replies
            .with_label_values(&[&vni, "arp"])
            .inc_by(v.proxy_arp_replies);
        proxy_replies
            .with_label_values(&[&vni, "nd"])
            .inc_by(v.proxy_nd_replies);
        proxy_table_full
            .with_label_values(&[&vni])
            .inc_by(v.proxy_table_full);
    }
    for v in &snap.vnis {
        let vni = v.vni.to_string();
        vni_rx_packets
            .with_label_values(&[&vni])
            .inc_by(v.rx_packets);
        vni_rx_bytes.with_label_values(&[&vni]).inc_by(v.rx_bytes);
        vni_tx_packets
            .with_label_values(&[&vni])
            .inc_by(v.tx_packets);
        vni_tx_bytes.with_label_values(&[&vni]).inc_by(v.tx_bytes);
        for (reason, n) in &v.drops {
            drops.with_label_values(&[&vni, reason]).inc_by(*n);
        }
    }
    for (reason, n) in &snap.drops {
        drops.with_label_values(&["none", reason]).inc_by(*n);
    }
    for remote in &snap.remotes {
        let ip = remote.ip.to_string();
        remote_rx_packets
            .with_label_values(&[&ip])
            .inc_by(remote.rx_packets);
        remote_rx_bytes
            .with_label_values(&[&ip])
            .inc_by(remote.rx_bytes);
        remote_tx_packets
            .with_label_values(&[&ip])
            .inc_by(remote.tx_packets);
        remote_tx_bytes
            .with_label_values(&[&ip])
            .inc_by(remote.tx_bytes);
    }
    let entries = IntGauge::with_opts(
        Opts::new(
            "vxlan_remote_macs",
            "MAC addresses known behind remote VTEPs.",
        )
        .namespace("patchbay"),
    )?;
    entries.set(snap.macs.len() as i64);
    r.register(Box::new(entries))?;
    let neighbors = IntGauge::with_opts(
        Opts::new(
            "vxlan_proxy_neighbors",
            "Addresses the ARP/ND proxy knows behind remote VTEPs (learned and static).",
        )
        .namespace("patchbay"),
    )?;
    neighbors.set(snap.neighbors.len() as i64);
    r.register(Box::new(neighbors))
}

/// BGP EVPN: routes received from zebra and what they installed, local MACs advertised.
fn evpn_metrics(r: &Registry, evpn: &crate::evpn::Evpn) -> Result<(), prometheus::Error> {
    let c = &evpn.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let received = counter_vec(
        r,
        "evpn_routes_received_total",
        "EVPN routes zebra installed for the switch: type mac (type-2) or flood (type-3).",
        &["type"],
    )?;
    received
        .with_label_values(&["mac"])
        .inc_by(load(&c.mac_routes_received));
    received
        .with_label_values(&["flood"])
        .inc_by(load(&c.flood_routes_received));
    let withdrawn = counter_vec(
        r,
        "evpn_routes_withdrawn_total",
        "EVPN routes withdrawn, by type.",
        &["type"],
    )?;
    withdrawn
        .with_label_values(&["mac"])
        .inc_by(load(&c.mac_routes_withdrawn));
    withdrawn
        .with_label_values(&["flood"])
        .inc_by(load(&c.flood_routes_withdrawn));
    counter(
        r,
        "evpn_routes_refused_total",
        "EVPN routes not installed (table full, a static entry holds the MAC).",
        load(&c.routes_refused),
    )?;
    counter(
        r,
        "evpn_local_macs_moved_away_total",
        "Local MACs forgotten because a route placed them on another host.",
        load(&c.local_macs_moved_away),
    )?;
    counter(
        r,
        "evpn_netlink_errors_total",
        "Failed netlink requests of the EVPN agent (each is logged).",
        load(&c.netlink_errors),
    )?;
    counter(
        r,
        "evpn_resyncs_total",
        "Full re-reads of the FDB after the kernel dropped events.",
        load(&c.resyncs),
    )?;
    let gauge_vec = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
        let g = IntGaugeVec::new(Opts::new(name, help).namespace("patchbay"), &["vni"])?;
        r.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let remote = gauge_vec(
        "evpn_remote_macs",
        "Remote MACs installed from type-2 routes.",
    )?;
    let floods = gauge_vec(
        "evpn_flood_remotes",
        "Flood-list remotes installed from type-3 routes.",
    )?;
    let local = gauge_vec(
        "evpn_local_macs",
        "Local MACs handed to zebra for advertisement.",
    )?;
    for v in evpn.status() {
        let vni = v.vni.to_string();
        remote.with_label_values(&[&vni]).set(v.remote_macs as i64);
        floods
            .with_label_values(&[&vni])
            .set(v.flood_remotes.len() as i64);
        local.with_label_values(&[&vni]).set(v.local_macs as i64);
    }
    Ok(())
}

/// The tunnel's system calls and the datagrams the kernel's UDP offloads carried.
fn tunnel_io_metrics(
    r: &Registry,
    tunnel: &crate::tunnel::Tunnel,
) -> Result<(), prometheus::Error> {
    let io = tunnel.io.snapshot();
    let (gso, gro) = tunnel.udp_offloads();
    for (name, help, value) in [
        (
            "vxlan_tx_syscalls_total",
            "System calls that sent VXLAN datagrams.",
            io.tx_syscalls,
        ),
        (
            "vxlan_tx_datagrams_total",
            "VXLAN datagrams sent.",
            io.tx_datagrams,
        ),
        (
            "vxlan_tx_gso_datagrams_total",
            "VXLAN datagrams sent in segmented sends (UDP GSO: several datagrams, one send).",
            io.tx_gso_datagrams,
        ),
        (
            "vxlan_rx_syscalls_total",
            "System calls that received VXLAN datagrams.",
            io.rx_syscalls,
        ),
        (
            "vxlan_rx_datagrams_total",
            "VXLAN datagrams received.",
            io.rx_datagrams,
        ),
        (
            "vxlan_rx_gro_datagrams_total",
            "VXLAN datagrams received coalesced (UDP GRO: several datagrams, one buffer).",
            io.rx_gro_datagrams,
        ),
    ] {
        counter(r, name, help, value)?;
    }
    gauge(
        r,
        "vxlan_udp_gso",
        "1 if the kernel segments the tunnel's sends (UDP GSO).",
        i64::from(gso),
    )?;
    gauge(
        r,
        "vxlan_udp_gro",
        "1 if the kernel coalesces the tunnel's receives (UDP GRO).",
        i64::from(gro),
    )
}

/// Bounds on the metrics endpoint (the `[metrics]` table of the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsLimits {
    /// Most connections open at once; a new one beyond it closes the oldest that has not
    /// finished sending its request.
    pub max_connections: usize,
    /// Seconds a connection may take from accept to the end of the response.
    pub timeout_secs: u64,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
pub const DEFAULT_TIMEOUT_SECS: u64 = 5;
/// Longest request head read (request line and headers); longer ones get 431.
pub const MAX_REQUEST_HEAD: usize = 8192;

impl Default for MetricsLimits {
    fn default() -> Self {
        MetricsLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }
}

impl MetricsLimits {
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("field `max_connections`: must be at least 1".into());
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err("field `timeout_secs`: must be 1-3600".into());
        }
        Ok(())
    }
}

/// What the HTTP server turned away (exported with the other metrics).
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections closed unserved because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because request and response took longer than `timeout_secs`.
    pub timeouts: AtomicU64,
    /// Requests answered with an error status (malformed, too long, not GET).
    pub bad_requests: AtomicU64,
}

fn http_metrics(r: &Registry, c: &HttpCounters) -> Result<(), prometheus::Error> {
    counter(
        r,
        "metrics_refused_connections_total",
        "Metrics connections closed unserved because max_connections were open.",
        c.refused.load(Ordering::Relaxed),
    )?;
    counter(
        r,
        "metrics_timeouts_total",
        "Metrics connections closed because the exchange took longer than timeout_secs.",
        c.timeouts.load(Ordering::Relaxed),
    )?;
    counter(
        r,
        "metrics_bad_requests_total",
        "Metrics requests answered with an error status.",
        c.bad_requests.load(Ordering::Relaxed),
    )
}

/// The bound HTTP listener, ready to serve.
///
/// A small HTTP/1.x responder of our own rather than tiny_http, which spawns a thread per
/// connection with no bound and no timeouts: here one thread serves every connection with
/// poll(2), so idle or slow clients cost a slot and a file descriptor, never a thread. At
/// most `max_connections` are open; a new one beyond that closes the oldest connection that
/// is still sending its request (a real scraper sends its request at once, so it is never
/// the oldest; an attacker's idle connections are), and everything must be done within
/// `timeout_secs` of accept (a one-byte-per-second sender is cut). Only GET and HEAD of
/// `/metrics` and `/` are served; every response closes the connection.
pub struct MetricsServer {
    listener: TcpListener,
    limits: MetricsLimits,
}

impl MetricsServer {
    /// Binds now, so a bad address fails before the switch starts.
    pub fn bind(addr: SocketAddr, limits: MetricsLimits) -> Result<Self, MetricsError> {
        let bind_err = |e: std::io::Error| MetricsError::Bind {
            addr,
            message: e.to_string(),
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(MetricsServer { listener, limits })
    }

    /// Serves on a listening socket another process handed over (a takeover).
    pub fn adopt(listener: TcpListener, limits: MetricsLimits) -> Result<Self, MetricsError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| MetricsError::Bind {
                addr: listener
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                message: e.to_string(),
            })?;
        Ok(MetricsServer { listener, limits })
    }

    /// A duplicate of the listening socket, to hand over.
    pub fn listener_clone(&self) -> std::io::Result<TcpListener> {
        self.listener.try_clone()
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `/metrics` on a background thread.
    pub fn spawn(
        self,
        sw: Arc<Switch>,
        control: Arc<ControlCounters>,
    ) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let mut server = HttpServer {
                    listener: self.listener,
                    limits: self.limits,
                    conns: Vec::new(),
                    counters: HttpCounters::default(),
                };
                server.run(&sw, &control)
            })
    }
}

/// One client connection and where it is in its exchange.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    state: ConnState,
}

enum ConnState {
    /// Reading the request head.
    Reading(Vec<u8>),
    /// Sending the response; closed when done.
    Writing {
        out: Vec<u8>,
        sent: usize,
    },
    Done,
}

struct HttpServer {
    listener: TcpListener,
    limits: MetricsLimits,
    conns: Vec<Conn>,
    counters: HttpCounters,
}

impl HttpServer {
    fn run(&mut self, sw: &Switch, control: &ControlCounters) {
        loop {
            let ready = match self.wait() {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("metrics: poll failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let now = Instant::now();
            for (i, readable) in ready.into_iter().enumerate() {
                if readable {
                    self.progress(i, sw, control);
                }
            }
            for c in &mut self.conns {
                if !matches!(c.state, ConnState::Done) && now >= c.deadline {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    c.state = ConnState::Done;
                }
            }
            self.conns.retain(|c| !matches!(c.state, ConnState::Done));
            self.accept_new(sw, control);
        }
    }

    /// Waits until the listener or a connection is ready, or the nearest deadline passes;
    /// returns, per connection, whether it is ready.
    fn wait(&self) -> nix::Result<Vec<bool>> {
        let mut fds: Vec<PollFd> = Vec::with_capacity(self.conns.len() + 1);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        for c in &self.conns {
            let events = match c.state {
                ConnState::Writing { .. } => PollFlags::POLLOUT,
                _ => PollFlags::POLLIN,
            };
            fds.push(PollFd::new(c.stream.as_fd(), events));
        }
        let now = Instant::now();
        let timeout = self
            .conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            // Rounded up, so a deadline is never woken for a moment early in a loop.
            .map(|d| {
                PollTimeout::try_from(d + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            })
            .unwrap_or(PollTimeout::NONE);
        poll(&mut fds, timeout)?;
        Ok(fds[1..]
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect())
    }

    /// Takes every pending connection; beyond `max_connections`, the oldest that is still
    /// reading its request is closed to make room (or, if every one is being answered, the
    /// new one is).
    fn accept_new(&mut self, sw: &Switch, control: &ControlCounters) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of file descriptors, most likely: let others finish first.
                    log::warn!("metrics: accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                let oldest = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c.state, ConnState::Reading(_)))
                    .min_by_key(|(_, c)| c.deadline)
                    .map(|(i, _)| i);
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                match oldest {
                    Some(i) => {
                        self.conns.remove(i);
                    }
                    None => continue,
                }
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.conns.push(Conn {
                stream,
                deadline: Instant::now() + Duration::from_secs(self.limits.timeout_secs),
                state: ConnState::Reading(Vec::new()),
            });
            // The request is usually there already.
            let last = self.conns.len() - 1;
            self.progress(last, sw, control);
        }
    }

    /// Reads or writes what a connection can without blocking.
    fn progress(&mut self, i: usize, sw: &Switch, control: &ControlCounters) {
        let counters = &self.counters;
        let c = &mut self.conns[i];
        if let ConnState::Reading(buf) = &mut c.state {
            let mut chunk = [0u8; 2048];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        c.state = ConnState::Done;
                        return;
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = head_end(buf) {
                            let out = respond(&buf[..end], sw, control, counters);
                            c.state = ConnState::Writing { out, sent: 0 };
                            break;
                        }
                        if buf.len() > MAX_REQUEST_HEAD {
                            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                            let out = response(
                                431,
                                "Request Header Fields Too Large",
                                "",
                                "request head too long\n",
                                true,
                            );
                            c.state = ConnState::Writing { out, sent: 0 };
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.state = ConnState::Done;
                        return;
                    }
                }
            }
        }
        if let ConnState::Writing { out, sent } = &mut c.state {
            while *sent < out.len() {
                match c.stream.write(&out[*sent..]) {
                    Ok(0) => break,
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            c.state = ConnState::Done;
        }
    }
}

/// Where the request head ends (after the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A whole response; `head_only` for HEAD requests.
fn response(status: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let content_type = if content_type.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        content_type
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Answers one request head.
fn respond(
    head: &[u8],
    sw: &Switch,
    control: &ControlCounters,
    counters: &HttpCounters,
) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        return response(400, "Bad Request", "", "bad request\n", false);
    };
    if !version.starts_with("HTTP/1.") {
        counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        return response(
            505,
            "HTTP Version Not Supported",
            "",
            "HTTP/1.x only\n",
            false,
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return response(405, "Method Not Allowed", "", "only GET and HEAD\n", false);
        }
    };
    match target.split('?').next().unwrap_or("") {
        "/metrics" => match render_all(sw, control, Some(counters)) {
            Ok(text) => response(200, "OK", TEXT_FORMAT, &text, head_only),
            Err(e) => response(500, "Internal Server Error", "", &e.to_string(), head_only),
        },
        "/" => response(
            200,
            "OK",
            "",
            "patchbay-switch: metrics at /metrics\n",
            head_only,
        ),
        _ => response(404, "Not Found", "", "not found\n", head_only),
    }
}
