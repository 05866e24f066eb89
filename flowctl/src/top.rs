//! `flowctl top`: the switch's ports, dataplane threads and busiest flows, refreshed every
//! interval, like top(1). Rates are differences between two samples of the counters the
//! control socket already serves (`show-ports`, `dump-flows`, `show-switch`), divided by the
//! time between them as this client measured it.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use patchbay_switch::control::protocol::{PortList, Request, SwitchInfo};
use patchbay_switch::flow::pipeline::FlowDump;

use crate::client::{Client, ClientError};
use crate::render;

/// What `flowctl top` was asked for.
pub struct TopOptions {
    pub delay: Duration,
    /// Frames to print, then exit (None: until interrupted).
    pub iterations: Option<u64>,
    /// Print frames one after the other instead of redrawing the terminal.
    pub batch: bool,
    /// How many flows to list.
    pub flows: usize,
    /// One JSON object per frame (newline-delimited), for scripts.
    pub json: bool,
}

/// The counters at one instant.
struct Sample {
    at: Instant,
    ports: PortList,
    flows: Vec<FlowDump>,
    switch: SwitchInfo,
}

impl Sample {
    fn take(client: &mut Client) -> Result<Sample, ClientError> {
        let ports = client.call_as(Request::ShowPorts)?;
        let flows = client.call_as(Request::DumpFlows { filter: None })?;
        let switch = client.call_as(Request::ShowSwitch)?;
        Ok(Sample {
            at: Instant::now(),
            ports,
            flows,
            switch,
        })
    }
}

/// One refresh: rates over the interval between two samples.
#[derive(Debug, Serialize)]
pub struct TopFrame {
    pub interval_secs: f64,
    pub mac_entries: usize,
    pub mac_capacity: usize,
    pub dataplane: Vec<ThreadRate>,
    pub ports: Vec<PortRate>,
    /// The busiest flows by packets per second (at most `flows`, only those that matched).
    pub flows: Vec<FlowRate>,
}

#[derive(Debug, Serialize)]
pub struct ThreadRate {
    pub thread: String,
    /// Share of the interval spent on rounds that found work (0..1).
    pub busy: f64,
}

#[derive(Debug, Serialize)]
pub struct PortRate {
    pub name: String,
    pub state: String,
    pub rx_pps: f64,
    pub rx_bps: f64,
    pub tx_pps: f64,
    pub tx_bps: f64,
    pub drops_per_sec: f64,
    /// Non-zero drop rates by reason.
    pub drop_reasons: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
pub struct FlowRate {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub pps: f64,
    pub bps: f64,
    pub match_text: String,
    pub actions_text: String,
}

/// A counter's rate; a counter that went back (a port or flow replaced) counts from zero.
fn rate(before: u64, after: u64, secs: f64) -> f64 {
    let delta = if after >= before {
        after - before
    } else {
        after
    };
    delta as f64 / secs
}

fn frame(prev: &Sample, cur: &Sample, max_flows: usize) -> TopFrame {
    let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let before: HashMap<&str, _> = prev
        .ports
        .iter()
        .map(|p| (p.name.as_str(), &p.counters))
        .collect();
    let ports = cur
        .ports
        .iter()
        .map(|p| {
            let c = &p.counters;
            let b = before.get(p.name.as_str()).copied();
            let r = |f: fn(&patchbay_switch::port::CounterSnapshot) -> u64| {
                rate(b.map_or(0, f), f(c), secs)
            };
            let drop_reasons: Vec<(String, f64)> = c
                .drops
                .iter()
                .map(|(reason, n)| {
                    let was = b.map_or(0, |b| b.drop_count(reason));
                    (reason.clone(), rate(was, *n, secs))
                })
                .filter(|(_, r)| *r > 0.0)
                .collect();
            PortRate {
                name: p.name.clone(),
                state: render::state(p),
                rx_pps: r(|c| c.rx_packets),
                rx_bps: 8.0 * r(|c| c.rx_bytes),
                tx_pps: r(|c| c.tx_packets),
                tx_bps: 8.0 * r(|c| c.tx_bytes),
                drops_per_sec: drop_reasons.iter().fold(0.0, |sum, (_, r)| sum + r),
                drop_reasons,
            }
        })
        .collect();
    // A flow is the same flow in both samples if its table, priority and match are.
    let flow_key = |f: &FlowDump| (f.table, f.priority, f.match_text.clone());
    let earlier: HashMap<_, &FlowDump> = prev.flows.iter().map(|f| (flow_key(f), f)).collect();
    let mut flows: Vec<FlowRate> = cur
        .flows
        .iter()
        .filter_map(|f| {
            let was = earlier.get(&flow_key(f));
            let pps = rate(was.map_or(0, |w| w.packets), f.packets, secs);
            (pps > 0.0).then(|| FlowRate {
                table: f.table,
                priority: f.priority,
                cookie: f.cookie,
                pps,
                bps: 8.0 * rate(was.map_or(0, |w| w.bytes), f.bytes, secs),
                match_text: f.match_text.clone(),
                actions_text: f.actions_text.clone(),
            })
        })
        .collect();
    flows.sort_by(|a, b| b.pps.total_cmp(&a.pps));
    flows.truncate(max_flows);
    let busy_before: HashMap<&str, u64> = prev
        .switch
        .dataplane
        .iter()
        .map(|t| (t.thread.as_str(), t.busy_ns))
        .collect();
    let dataplane = cur
        .switch
        .dataplane
        .iter()
        .map(|t| {
            let was = busy_before.get(t.thread.as_str()).copied().unwrap_or(0);
            ThreadRate {
                thread: t.thread.clone(),
                busy: (rate(was, t.busy_ns, secs) / 1e9).min(1.0),
            }
        })
        .collect();
    TopFrame {
        interval_secs: secs,
        mac_entries: cur.switch.mac_entries,
        mac_capacity: cur.switch.mac_capacity,
        dataplane,
        ports,
        flows,
    }
}

/// `12.3M` style rates (powers of 1000), exact below 1000.
fn si(v: f64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// The frame as text: a summary line, the ports, the busiest flows.
pub fn render_frame(f: &TopFrame) -> String {
    let mut out = String::new();
    let threads: Vec<String> = f
        .dataplane
        .iter()
        .map(|t| format!("{} {:.0}%", t.thread, t.busy * 100.0))
        .collect();
    out.push_str(&format!(
        "patchbay top: every {:.1}s, {} ports, MACs {}/{}, busy: {}\n\n",
        f.interval_secs,
        f.ports.len(),
        f.mac_entries,
        f.mac_capacity,
        if threads.is_empty() {
            "-".to_string()
        } else {
            threads.join(", ")
        }
    ));
    let ports: Vec<Vec<String>> = f
        .ports
        .iter()
        .map(|p| {
            let reasons: Vec<String> = p
                .drop_reasons
                .iter()
                .map(|(r, n)| format!("{r}={}", si(*n)))
                .collect();
            vec![
                p.name.clone(),
                p.state.clone(),
                si(p.rx_pps),
                si(p.rx_bps),
                si(p.tx_pps),
                si(p.tx_bps),
                if reasons.is_empty() {
                    si(p.drops_per_sec)
                } else {
                    format!("{} ({})", si(p.drops_per_sec), reasons.join(" "))
                },
            ]
        })
        .collect();
    out.push_str(&render::text_table(
        &[
            ("PORT", false),
            ("STATE", false),
            ("RX-PPS", true),
            ("RX-BIT/S", true),
            ("TX-PPS", true),
            ("TX-BIT/S", true),
            ("DROPS/S", false),
        ],
        ports,
    ));
    out.push('\n');
    if f.flows.is_empty() {
        out.push_str("no flow matched packets in this interval\n");
    } else {
        let flows: Vec<Vec<String>> = f
            .flows
            .iter()
            .map(|fl| {
                vec![
                    fl.table.to_string(),
                    format!("{:#x}", fl.cookie),
                    si(fl.pps),
                    si(fl.bps),
                    format!("{} actions={}", fl.match_text, fl.actions_text),
                ]
            })
            .collect();
        out.push_str(&render::text_table(
            &[
                ("TABLE", true),
                ("COOKIE", false),
                ("PPS", true),
                ("BIT/S", true),
                ("FLOW", false),
            ],
            flows,
        ));
    }
    out
}

/// Runs the view: a sample, then a frame per interval.
pub fn run(client: &mut Client, opts: &TopOptions) -> Result<(), ClientError> {
    let redraw = !opts.batch && !opts.json && std::io::stdout().is_terminal();
    let mut prev = Sample::take(client)?;
    let mut shown = 0u64;
    while opts.iterations.is_none_or(|n| shown < n) {
        std::thread::sleep(opts.delay);
        let cur = Sample::take(client)?;
        let f = frame(&prev, &cur, opts.flows);
        let text = if opts.json {
            // Plain numbers and strings: encoding cannot fail.
            serde_json::to_string(&f).expect("frames always encode") + "\n"
        } else if redraw {
            // Home the cursor and clear the screen, then draw.
            format!("\x1b[H\x1b[2J{}", render_frame(&f))
        } else {
            render_frame(&f) + "\n"
        };
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`flowctl top | head`) ends the view quietly.
        if stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
        prev = cur;
        shown += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_a_reset_counter_from_zero() {
        assert_eq!(rate(100, 300, 2.0), 100.0);
        assert_eq!(rate(500, 40, 1.0), 40.0);
    }

    #[test]
    fn si_scales_by_thousands() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1500.0), "1.5K");
        assert_eq!(si(2_500_000_000.0), "2.5G");
    }
}
