//! The Patchbay demo: starts the switch, boots three Debian guests under QEMU on two VLANs,
//! shows who can reach whom, and prints the switch's view (flowctl) and its metrics.
//!
//! Run it with `scripts/demo.sh`, which installs what is missing and builds everything.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use patchbay_tests::guest::{GuestImage, GuestNic, QemuGuest};

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

struct Switch(Child);
impl Drop for Switch {
    fn drop(&mut self) {
        // SIGTERM lets the switch remove its sockets.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn flowctl(socket: &Path, args: &[&str]) {
    let out = Command::new(sibling("flowctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output();
    match out {
        Ok(o) => {
            print!("{}", String::from_utf8_lossy(&o.stdout));
            eprint!("{}", String::from_utf8_lossy(&o.stderr));
        }
        Err(e) => println!("(flowctl not available: {e})"),
    }
}

fn scrape(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    std::io::Write::write_all(
        &mut s,
        format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(body))
}

fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("patchbay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let control = dir.join("control.sock");
    let metrics =
        std::env::var("PATCHBAY_DEMO_METRICS").unwrap_or_else(|_| "127.0.0.1:9184".into());
    let config = format!(
        r#"# Patchbay demo switch
[control]
socket = "{control}"

[metrics]
listen = "{metrics}"

[[port]]
name = "web1"
socket = "{d}/web1.sock"
vlan = 10

[[port]]
name = "web2"
socket = "{d}/web2.sock"
vlan = 10

[[port]]
name = "db"
socket = "{d}/db.sock"
vlan = 20
"#,
        control = control.display(),
        d = dir.display()
    );
    let config_path = dir.join("switch.toml");
    std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;

    step("Starting the switch");
    println!("{config}");
    let mut child = Command::new(sibling("patchbay-switch"))
        .arg("--config")
        .arg(&config_path)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start patchbay-switch: {e}"))?;
    let stderr = child.stderr.take();
    let switch = Switch(child);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    if let Some(stderr) = stderr {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("switch running") {
                    let _ = ready_tx.send(());
                }
                if std::env::var_os("PATCHBAY_DEMO_VERBOSE").is_some() || line.contains("ERROR") {
                    eprintln!("  switch| {line}");
                }
            }
        });
    }
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| {
            "the switch did not start (is port 9184 in use? set PATCHBAY_DEMO_METRICS)".to_string()
        })?;

    step("Booting three Debian guests under QEMU (software emulation; takes a few seconds)");
    let image = GuestImage::prepare().map_err(|e| e.to_string())?;
    let nic = |port: &str, mac: &str| GuestNic::new(dir.join(format!("{port}.sock")), mac);
    let t0 = Instant::now();
    let mut web1 = QemuGuest::boot(
        &image,
        "web1",
        &nic("web1", "52:54:00:0a:00:01"),
        "pb.ip=10.0.0.1/24",
    )
    .map_err(|e| e.to_string())?;
    let mut web2 = QemuGuest::boot(
        &image,
        "web2",
        &nic("web2", "52:54:00:0a:00:02"),
        "pb.ip=10.0.0.2/24",
    )
    .map_err(|e| e.to_string())?;
    let mut db = QemuGuest::boot(
        &image,
        "db",
        &nic("db", "52:54:00:14:00:03"),
        "pb.ip=10.0.0.3/24",
    )
    .map_err(|e| e.to_string())?;
    for g in [&mut web1, &mut web2, &mut db] {
        g.wait_ready(Duration::from_secs(240))
            .map_err(|e| e.to_string())?;
        println!(
            "  {:5} up after {:.1} s",
            g.name,
            t0.elapsed().as_secs_f64()
        );
    }
    println!("  web1 10.0.0.1 and web2 10.0.0.2 on VLAN 10; db 10.0.0.3 on VLAN 20 (same subnet, other VLAN)");

    step("web1 pings web2 (same VLAN)");
    let (_, out) = web1
        .run("ping -c 3 -W 2 10.0.0.2", Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    out.iter().for_each(|l| println!("  web1| {l}"));
    step("web1 pings db (other VLAN: the switch must not let it through)");
    let (_, out) = web1
        .run("ping -c 2 -W 1 10.0.0.3", Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    out.iter().for_each(|l| println!("  web1| {l}"));

    step("flowctl show ports");
    flowctl(&control, &["show", "ports"]);
    step("flowctl show macs");
    flowctl(&control, &["show", "macs"]);

    step(&format!(
        "Metrics (http://{metrics}/metrics, selected lines)"
    ));
    match scrape(&metrics) {
        Ok(body) => body
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("packets_total")
                        || l.contains("mac_table_entries")
                        || l.contains("floods")
                        || l.contains("port_up")
                        || (l.contains("drops_total") && !l.ends_with(" 0")))
            })
            .for_each(|l| println!("  {l}")),
        Err(e) => println!("  cannot scrape metrics: {e}"),
    }

    step("Shutting down");
    for g in [web1, web2, db] {
        g.poweroff();
    }
    drop(switch);
    let _ = std::fs::remove_dir_all(&dir);
    println!("done.");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patchbay-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
