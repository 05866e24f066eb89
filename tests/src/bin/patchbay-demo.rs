//! The Patchbay demo: starts the switch and three VMs of the bundled VMM on two VLANs, shows
//! who can reach whom and a TCP transfer, and prints the switch's view (flowctl) and metrics.
//! `qemu` as the first argument does the same with Debian guests under QEMU.
//!
//! `vxlan` as the first argument runs the two-host demo instead: two switches in two network
//! namespaces joined by a veth pair, one guest on each, on one VXLAN segment.
//!
//! Run it with `scripts/demo.sh [vxlan]`, which installs what is missing and builds everything.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use patchbay_tests::guest::{GuestImage, GuestNic, QemuGuest};
use patchbay_tests::vmm::BundledVm;

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

/// Two "hosts" (network namespaces) joined by a veth pair, a switch and a guest on each,
/// VLAN 10 on both mapped to VNI 42.
fn run_vxlan() -> Result<(), String> {
    use patchbay_tests::netns::{veth_pair, Netns};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let dir = std::env::temp_dir().join(format!("patchbay-vxlan-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|x| e(&x))?;

    step("Two hosts: network namespaces joined by a veth pair (underlay 198.51.100.0/24)");
    let host_a = Netns::create("hostA").map_err(|x| e(&x))?;
    let host_b = Netns::create("hostB").map_err(|x| e(&x))?;
    veth_pair(&host_a, "198.51.100.1/24", &host_b, "198.51.100.2/24").map_err(|x| e(&x))?;
    println!(
        "  {} 198.51.100.1  <-- veth -->  {} 198.51.100.2",
        host_a.name(),
        host_b.name()
    );

    let mut switches = Vec::new();
    for (ns, name, local, remote) in [
        (&host_a, "a", "198.51.100.1", "198.51.100.2"),
        (&host_b, "b", "198.51.100.2", "198.51.100.1"),
    ] {
        let config = format!(
            r#"[control]
socket = "{d}/{name}-control.sock"

[metrics]
listen = "off"

[vxlan]
local_ip = "{local}"       # this host's underlay address; UDP 4789

[[vxlan.vnis]]
vni = 42
vlan = 10
remotes = ["{remote}"]      # flood list, and the only VTEP accepted: the other host

[[port]]
name = "vm"
socket = "{d}/{name}-vm.sock"
vlan = 10
"#,
            d = dir.display()
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, &config).map_err(|x| e(&x))?;
        step(&format!(
            "Switch on host {name} (ip netns exec {} patchbay-switch --config {name}.toml)",
            ns.name()
        ));
        println!("{config}");
        let child = ns
            .exec([
                sibling("patchbay-switch").as_os_str(),
                "--config".as_ref(),
                path.as_os_str(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .map_err(|x| format!("cannot start patchbay-switch: {x}"))?;
        switches.push(Switch(child));
        let control = dir.join(format!("{name}-control.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&control).is_err() {
            if Instant::now() > deadline {
                return Err(format!("switch {name} did not start"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    step("One guest per host on VLAN 10 (guest MTU 1450: the underlay's 1500 minus 50 for VXLAN)");
    let image = GuestImage::prepare().map_err(|x| e(&x))?;
    let mut ga = QemuGuest::boot(
        &image,
        "guest-a",
        &GuestNic::new(dir.join("a-vm.sock"), "52:54:00:2a:00:01"),
        "pb.ip=203.0.113.1/24 pb.mtu=1450",
    )
    .map_err(|x| e(&x))?;
    let mut gb = QemuGuest::boot(
        &image,
        "guest-b",
        &GuestNic::new(dir.join("b-vm.sock"), "52:54:00:2a:00:02"),
        "pb.ip=203.0.113.2/24 pb.mtu=1450",
    )
    .map_err(|x| e(&x))?;
    ga.wait_ready(Duration::from_secs(240)).map_err(|x| e(&x))?;
    gb.wait_ready(Duration::from_secs(240)).map_err(|x| e(&x))?;

    step("guest-a (host A) pings guest-b (host B) across VNI 42");
    let (_, out) = ga
        .run("ping -c 3 -W 2 203.0.113.2", Duration::from_secs(30))
        .map_err(|x| e(&x))?;
    out.iter().for_each(|l| println!("  guest-a| {l}"));

    step("flowctl show tunnel (host A)");
    flowctl(&dir.join("a-control.sock"), &["show", "tunnel"]);

    step("Shutting down");
    ga.poweroff();
    gb.poweroff();
    drop(switches);
    let _ = std::fs::remove_dir_all(&dir);
    println!("done.");
    Ok(())
}

/// A VM of the bundled VMM running one guest program, beside this binary.
fn start_vm(name: &str, socket: &Path, ip: &str, program: &str) -> Result<BundledVm, String> {
    BundledVm::start(&sibling("patchbay-vmm"), name, socket, None, ip, program)
}

/// Prints console lines of `vm` until one starts with `until`; returns that line.
fn follow(vm: &BundledVm, until: &str) -> Result<String, String> {
    vm.wait_line(until, Duration::from_secs(120), |line| {
        println!("  {:6}| {line}", vm.name)
    })
}

/// The main demo: the switch and three VMs of the bundled VMM (two on VLAN 10, one on 20).
fn run_vmm() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("patchbay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let control = dir.join("control.sock");
    let metrics =
        std::env::var("PATCHBAY_DEMO_METRICS").unwrap_or_else(|_| "127.0.0.1:9184".into());
    let config = format!(
        "[control]\nsocket = \"{control}\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
         [[port]]\nname = \"web1\"\nsocket = \"{d}/web1.sock\"\nvlan = 10\n\n\
         [[port]]\nname = \"web2\"\nsocket = \"{d}/web2.sock\"\nvlan = 10\n\n\
         [[port]]\nname = \"db\"\nsocket = \"{d}/db.sock\"\nvlan = 20\n",
        control = control.display(),
        d = dir.display()
    );
    let config_path = dir.join("switch.toml");
    std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;
    step("Starting the switch (patchbay-switch --config switch.toml)");
    println!("{config}");
    let child = Command::new(sibling("patchbay-switch"))
        .arg("--config")
        .arg(&config_path)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start patchbay-switch: {e}"))?;
    let switch = Switch(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&control).is_err() {
        if Instant::now() > deadline {
            return Err(
                "the switch did not start (is port 9184 in use? set PATCHBAY_DEMO_METRICS)".into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    step("Three VMs with the bundled VMM: web1 and web2 on VLAN 10, db on VLAN 20 (same subnet)");
    let t0 = Instant::now();
    let web2 = start_vm("web2", &dir.join("web2.sock"), "10.0.0.2/24", "udp-echo 7")?;
    follow(&web2, "UDP-ECHO")?;
    let db = start_vm("db", &dir.join("db.sock"), "10.0.0.3/24", "udp-echo 7")?;
    follow(&db, "UDP-ECHO")?;
    println!(
        "  two VMs up and serving {:.0} ms after the first was started",
        t0.elapsed().as_secs_f64() * 1e3
    );

    step("web1 pings web2 (same VLAN)");
    let web1 = start_vm(
        "web1",
        &dir.join("web1.sock"),
        "10.0.0.1/24",
        "ping 10.0.0.2 3",
    )?;
    follow(&web1, "PING-DONE")?;
    // While the VMs run: a VM that stops takes its learned addresses with it.
    step("flowctl show macs (what the switch learned, per VLAN)");
    flowctl(&control, &["show", "macs"]);
    drop(web1);
    step("web1 pings db (other VLAN: the switch must not let it through)");
    let web1 = start_vm(
        "web1",
        &dir.join("web1.sock"),
        "10.0.0.1/24",
        "ping 10.0.0.3 2",
    )?;
    follow(&web1, "PING-DONE")?;
    drop(web1);
    drop(web2);

    step("TCP: web1 sends 256 MiB to web2 (payload checksums compared)");
    let sink = start_vm(
        "web2",
        &dir.join("web2.sock"),
        "10.0.0.2/24",
        "tcp-sink 5001",
    )?;
    follow(&sink, "TCP-SINK listening")?;
    let source = start_vm(
        "web1",
        &dir.join("web1.sock"),
        "10.0.0.1/24",
        "tcp-source 10.0.0.2 5001 256M",
    )?;
    let sent = follow(&source, "TCP-SOURCE bytes=")?;
    let got = follow(&sink, "TCP-SINK bytes=")?;
    let sum = |l: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("checksum="))
            .unwrap_or("")
            .to_string()
    };
    println!(
        "  checksums {}",
        if sum(&sent) == sum(&got) {
            "match"
        } else {
            "DIFFER"
        }
    );
    step("flowctl show ports");
    flowctl(&control, &["show", "ports"]);
    drop((source, sink, db));
    step(&format!(
        "Metrics (http://{metrics}/metrics, selected lines)"
    ));
    match scrape(&metrics) {
        Ok(body) => body
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("packets_total")
                        || l.contains("floods_total")
                        || (l.contains("drops_total") && !l.ends_with(" 0")))
            })
            .for_each(|l| println!("  {l}")),
        Err(e) => println!("  cannot scrape metrics: {e}"),
    }
    step("Shutting down");
    drop(switch);
    let _ = std::fs::remove_dir_all(&dir);
    println!("done. (`scripts/demo.sh qemu`: the same with Debian guests under QEMU; `scripts/demo.sh vxlan`: two hosts)");
    Ok(())
}

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        None | Some("vmm") => run_vmm(),
        Some("qemu") => run(),
        Some("vxlan") => run_vxlan(),
        Some(other) => Err(format!(
            "unknown demo '{other}' (try no argument, 'qemu' or 'vxlan')"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patchbay-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
