//! `patchbay-switch`: the vhost-user switch daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use nix::sys::signal::{SigSet, Signal};
use sd_notify::NotifyState;

use patchbay_switch::config::{parse_metrics_listen, Config};
use patchbay_switch::daemon::Daemon;

/// A vhost-user virtual switch: each port is a vhost-user socket that a VM's virtio-net
/// device (QEMU, Patchbay's VMM, ...) connects to. Ports switch frames with MAC learning per
/// VLAN; access and trunk ports push and pop 802.1Q tags.
///
/// Configure ports in a TOML file (--config) and/or with --port flags; flags add to the file.
/// Drive the running switch with `flowctl`, scrape metrics at http://ADDR/metrics.
#[derive(Debug, Parser)]
#[command(name = "patchbay-switch", version, verbatim_doc_comment)]
struct Args {
    /// TOML configuration file with [switch], [control], [metrics] and [[port]] tables
    /// (see README.md).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Add a port. SPEC is name=NAME,socket=PATH followed by any of mode=server|client
    /// (server: the switch listens, the default; client: the switch connects and retries
    /// forever), vlan-mode=access|trunk|native-untagged|native-tagged (default access),
    /// vlan=VID (access VLAN or native VLAN, default 1), trunks=LIST (e.g. 10,20-29; default
    /// all), mac=MAC (offered to frontends that read the config space), socket-mode=0660 and
    /// socket-group=GROUP (the socket's permissions, for a QEMU running as another user).
    /// Repeatable.
    #[arg(long = "port", value_name = "SPEC")]
    ports: Vec<String>,

    /// Control socket for flowctl [default: /run/patchbay/control.sock as root, else under
    /// $XDG_RUNTIME_DIR; or $PATCHBAY_CONTROL].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,

    /// Address for the Prometheus endpoint (GET /metrics), or "off".
    /// [default: 127.0.0.1:9184]
    #[arg(long, value_name = "ADDR|off")]
    metrics_listen: Option<String>,

    /// Serve ports with busy-polling threads pinned to these CPUs (e.g. 1 or 2,3). Without
    /// it (event mode), dataplane threads poll while there is traffic and sleep on the
    /// guests' notifications when the rings go quiet, leaving CPU to the guests.
    #[arg(long, value_name = "CPUS", value_delimiter = ',')]
    poll_cpus: Option<Vec<usize>>,

    /// Dataplane threads in event mode (1-64) [default: 1].
    #[arg(long, value_name = "N")]
    event_threads: Option<usize>,

    /// Largest L3 payload carried (68-9216) [default: 9000].
    #[arg(long)]
    mtu: Option<u32>,

    /// Seconds an idle learned MAC address is kept [default: 300].
    #[arg(long, value_name = "SECS")]
    mac_aging: Option<u64>,

    /// Most MAC addresses the learning table holds [default: 8192].
    #[arg(long, value_name = "N")]
    mac_table_size: Option<usize>,

    /// Save the running configuration (ports, VLANs, flows, groups, meters, tunnel entries)
    /// to FILE after every change and restore it at start ([switch] state_file).
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,

    /// Upgrade in place: take the ports, their connected guests and the control and metrics
    /// sockets over from the switch running on the control socket, which then exits. Guests
    /// see no disconnect; frames wait in their rings meanwhile (docs/upgrade.md). If this
    /// process cannot take over, the running switch goes on as before.
    #[arg(long)]
    takeover: bool,

    /// Check the configuration and exit without starting.
    #[arg(long)]
    check: bool,

    /// Log level: error, warn, info, debug, trace (or RUST_LOG).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn build_config(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    for spec in &args.ports {
        config.add_port_flag(spec).map_err(|e| e.to_string())?;
    }
    if let Some(p) = &args.control_socket {
        config.control_socket = p.clone();
    }
    if let Some(m) = &args.metrics_listen {
        config.metrics_listen =
            parse_metrics_listen(m).map_err(|e| format!("--metrics-listen: {e}"))?;
    }
    if let Some(cpus) = &args.poll_cpus {
        config.settings.poll_cpus = cpus.clone();
    }
    if let Some(n) = args.event_threads {
        config.settings.event_threads = n;
    }
    if let Some(v) = args.mtu {
        config.settings.mtu = v;
    }
    if let Some(v) = args.mac_aging {
        config.settings.mac_aging_secs = v;
    }
    if let Some(v) = args.mac_table_size {
        config.settings.mac_table_size = v;
    }
    if let Some(p) = &args.state_file {
        config.settings.state_file = Some(p.clone());
    }
    config.check().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Logs to stderr: with a timestamp on a terminal or in a file; under systemd (stderr is the
/// journal, `JOURNAL_STREAM` set) one line per event with a syslog priority prefix that
/// journald turns into the entry's level, and no timestamp of our own (journald adds it).
fn init_logging(level: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}: {}", record.target(), record.args())
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// Under systemd with `WatchdogSec=`: feeds the watchdog at half its interval while the
/// switch's housekeeping thread keeps going round (a switch whose threads are stuck stops
/// feeding it, and systemd restarts it).
fn feed_watchdog(switch: std::sync::Arc<patchbay_switch::switch::Switch>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    // Housekeeping goes round once a second: a longer silence means it is stuck.
    let stuck_after = Duration::from_secs(3);
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut last = switch.housekeeping_rounds();
            let mut progressed = std::time::Instant::now();
            while !switch.is_stopping() {
                std::thread::sleep(interval);
                let now = switch.housekeeping_rounds();
                if now != last {
                    last = now;
                    progressed = std::time::Instant::now();
                }
                if progressed.elapsed() < stuck_after {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                } else {
                    log::warn!(
                        "housekeeping stuck for {:?}: not feeding the watchdog",
                        progressed.elapsed()
                    );
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the watchdog thread: {e}");
    }
}

fn main() -> ExitCode {
    if let Some(code) = patchbay_clidocs::intercept(Args::command) {
        return code;
    }
    let args = Args::parse();
    init_logging(&args.log_level);

    let config = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("patchbay-switch: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "configuration is valid: {} port(s), control socket {}",
            config.ports.len(),
            config.control_socket.display()
        );
        return ExitCode::SUCCESS;
    }

    // Block the termination signals in every thread; the main thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("patchbay-switch: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }

    let incoming = if args.takeover {
        match patchbay_switch::takeover::request(&config.control_socket) {
            Ok(incoming) => Some(incoming),
            Err(e) => {
                eprintln!("patchbay-switch: takeover: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let daemon = match Daemon::start_with(config, incoming) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("patchbay-switch: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "switch running: {} port(s), control socket {}, metrics {}",
        daemon.switch.ports().len(),
        daemon.control_socket.display(),
        daemon
            .metrics_addr
            .map_or("off".to_string(), |a| format!("http://{a}/metrics"))
    );
    // systemd (Type=notify): ready once the ports, control socket and metrics are up.
    let status = format!("{} port(s)", daemon.switch.ports().len());
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]);
    feed_watchdog(daemon.switch.clone());
    let signal = signals.wait();
    log::info!("{:?}: shutting down", signal.ok());
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    daemon.shutdown();
    ExitCode::SUCCESS
}
