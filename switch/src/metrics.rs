//! Prometheus metrics over HTTP. Counters live in atomics on the frame path; a scrape copies
//! them into a fresh registry and encodes it with the prometheus crate's text encoder, so
//! the frame path never touches the prometheus types.
//!
//! Metrics (all prefixed `patchbay_`):
//! - `port_rx_packets_total`, `port_rx_bytes_total`: frames the switch accepted from a port.
//! - `port_tx_packets_total`, `port_tx_bytes_total`: frames the switch delivered to a port.
//! - `port_drops_total{reason}`: drops by reason (see `port::DropReason`).
//! - `port_up`: 1 when a frontend is connected and both rings are enabled.
//! - `port_connects_total`: frontend connections accepted or made.
//! - `mac_table_entries`, `mac_table_capacity`: learning table size and limit.
//! - `floods_total`, `mac_learned_total`, `mac_moved_total`, `mac_table_full_total`.
//! - `control_requests_total{result}`: control socket requests by outcome.
//! - `table_lookups_total{table}`, `table_matches_total{table}`, `table_flows{table}`,
//!   `flow_packets_total{table,cookie}`, `flow_bytes_total{table,cookie}` (at most 1000
//!   series; the rest summed under cookie="other").
//! - `flow_vlan_tag_limit_drops_total`: packets dropped because their actions would have
//!   pushed more than `flow::rewrite::MAX_PUSHED_TAGS` VLAN tags.
//! - `flow_resubmit_limit_drops_total`: packets dropped whole because they took more than
//!   `flow::pipeline::MAX_RESUBMITS` resubmits and goto_tables.
//! - `vxlan_vni_{rx,tx}_{packets,bytes}_total{vni}`, `vxlan_drops_total{vni,reason}`,
//!   `vxlan_remote_{rx,tx}_{packets,bytes}_total{remote}`, `vxlan_remote_macs`: the tunnel.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
    let notifications = counter_vec(
        &r,
        "port_notifications_total",
        "Interrupts (call eventfd signals) sent to the port's guest.",
        &["port"],
    )?;
    let up = IntGaugeVec::new(
        Opts::new(
            "port_up",
            "1 when a frontend is connected with both rings enabled.",
        )
        .namespace("patchbay"),
        &["port"],
    )?;
    r.register(Box::new(up.clone()))?;

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
        notifications
            .with_label_values(&[name])
            .inc_by(load(&c.notifications));
        for reason in DropReason::ALL {
            drops
                .with_label_values(&[name, reason.label()])
                .inc_by(c.drops(reason));
        }
        let is_up = port.link().is_some_and(|l| l.is_up());
        up.with_label_values(&[name]).set(i64::from(is_up));
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
    let sc = &sw.counters;
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

    if let Some(tunnel) = sw.tunnel() {
        tunnel_metrics(&r, &tunnel.vtep.snapshot())?;
    }
    flow_metrics(&r, sw)?;

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
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
    r.register(Box::new(entries))
}

/// The bound HTTP listener, ready to serve.
pub struct MetricsServer {
    server: tiny_http::Server,
}

impl MetricsServer {
    /// Binds now, so a bad address fails before the switch starts.
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        tiny_http::Server::http(addr)
            .map(|server| MetricsServer { server })
            .map_err(|e| MetricsError::Bind {
                addr,
                message: e.to_string(),
            })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.server_addr().to_ip()
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
                for request in self.server.incoming_requests() {
                    let url = request.url().split('?').next().unwrap_or("").to_string();
                    let response = match url.as_str() {
                        "/metrics" => match render(&sw, &control) {
                            Ok(text) => tiny_http::Response::from_string(text).with_header(
                                tiny_http::Header::from_bytes(
                                    &b"Content-Type"[..],
                                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                                )
                                .expect("static header is valid"),
                            ),
                            Err(e) => tiny_http::Response::from_string(e.to_string())
                                .with_status_code(500),
                        },
                        "/" => tiny_http::Response::from_string(
                            "patchbay-switch: metrics at /metrics\n",
                        ),
                        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
                    };
                    let _ = request.respond(response);
                }
            })
    }
}
