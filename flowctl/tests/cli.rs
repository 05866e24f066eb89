//! Runs the `flowctl` binary against a switch started in this process. Every control request
//! is answered synchronously, so no test waits for anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use patchbay_switch::config::Config;
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::{ConnectMode, PortConfig};
use patchbay_switch::wire::EthernetAddress;

/// A running switch in a private directory; shut down and cleaned up on drop (also when a
/// test fails).
struct TestSwitch {
    dir: PathBuf,
    daemon: Daemon,
}

fn port(
    dir: &Path,
    name: &str,
    vlan_mode: Option<&str>,
    vlan: Option<u16>,
    trunks: Option<&str>,
) -> PortConfig {
    PortConfig {
        name: name.into(),
        kind: Default::default(),
        interface: None,
        socket: dir.join(format!("{name}.sock")),
        mode: ConnectMode::Server,
        mac: None,
        vlan_mode: vlan_mode.map(String::from),
        vlan,
        trunks: trunks.map(String::from),
        mac_limit: None,
        offloads: None,
        queue_pairs: None,
        allowed_macs: Vec::new(),
        allowed_ips: Vec::new(),
        dhcp_server: false,
        ingress_policing_rate: None,
        ingress_policing_burst: None,
        socket_mode: None,
        socket_group: None,
    }
}

impl TestSwitch {
    /// Ports: `vm1` access 10, `up` native-untagged 5 with 10,20-29, `tr` trunk 30.
    fn start(test: &str) -> TestSwitch {
        Self::start_with(test, |_| {})
    }

    fn start_with(test: &str, configure: impl FnOnce(&mut Config)) -> TestSwitch {
        let dir = std::env::temp_dir().join(format!("flowctl-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config {
            control_socket: dir.join("control.sock"),
            metrics_listen: None,
            ..Config::default()
        };
        config.ports.push(port(&dir, "vm1", None, Some(10), None));
        config.ports.push(port(
            &dir,
            "up",
            Some("native-untagged"),
            Some(5),
            Some("10,20-29"),
        ));
        config
            .ports
            .push(port(&dir, "tr", Some("trunk"), None, Some("30")));
        configure(&mut config);
        let daemon = Daemon::start(config).expect("switch starts");
        TestSwitch { dir, daemon }
    }

    fn socket(&self) -> &Path {
        &self.daemon.control_socket
    }

    /// Runs flowctl with `--socket` pointing at this switch.
    fn flowctl(&self, args: &[&str]) -> Output {
        flowctl_at(self.socket(), args)
    }

    /// Runs flowctl and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.flowctl(args);
        assert!(
            out.status.success(),
            "flowctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

impl Drop for TestSwitch {
    fn drop(&mut self) {
        self.daemon.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn flowctl_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowctl"))
        .env_remove("PATCHBAY_CONTROL")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("flowctl runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The table row of port `name` in `show ports` output.
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
}

#[test]
fn show_ports_lists_ports_with_their_vlans() {
    let sw = TestSwitch::start("show_ports");
    let table = sw.ok(&["show", "ports"]);
    let header = table.lines().next().unwrap();
    for column in [
        "ID", "NAME", "STATE", "VLAN", "RX-PKTS", "TX-BYTES", "DROPS", "QUEUES", "OFFLOADS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let vm1 = row(&table, "vm1").expect(&table);
    assert!(
        vm1.contains("access 10") && vm1.contains("listening"),
        "{vm1}"
    );
    let up = row(&table, "up").expect(&table);
    assert!(up.contains("native-untagged 5 +10,20-29"), "{up}");
    let tr = row(&table, "tr").expect(&table);
    assert!(tr.contains("trunk 30"), "{tr}");
    assert!(table.trim_end().ends_with("3 ports"), "{table}");

    // The dashed alias prints the same table.
    assert_eq!(sw.ok(&["show-ports"]), table);

    let detail = sw.ok(&["show", "port", "up"]);
    for needle in [
        "native-untagged 5 +10,20-29",
        "up.sock",
        "server",
        "listening",
        "no-buffer:",
        "hairpin:",
        "header length:",
    ] {
        assert!(detail.contains(needle), "{needle} missing from:\n{detail}");
    }
}

#[test]
fn json_output_is_the_switch_result() {
    let sw = TestSwitch::start("json");
    let ports = sw.json(&["show", "ports"]);
    let names: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vm1", "up", "tr"]);
    assert_eq!(ports[0]["vlan"]["mode"], "access");
    assert_eq!(ports[0]["vlan"]["vlan"], 10);
    assert_eq!(ports[0]["counters"]["rx_packets"], 0);

    let one = sw.json(&["show", "port", "tr"]);
    assert_eq!(one["name"], "tr");
    assert_eq!(one["vlan"]["trunks"], "30");

    let switch = sw.json(&["show", "switch"]);
    assert_eq!(switch["ports"], 3);
    let macs = sw.json(&["show", "macs"]);
    assert_eq!(macs["entries"], serde_json::json!([]));
    assert!(macs["capacity"].as_u64().unwrap() > 0);
}

#[test]
fn show_macs_names_ports_and_filters_by_vlan() {
    let sw = TestSwitch::start("macs");
    let table = sw.daemon.switch.mac_table();
    let now = table.now();
    let a: EthernetAddress = "52:54:00:00:00:01".parse().unwrap();
    let b: EthernetAddress = "52:54:00:00:00:02".parse().unwrap();
    table.learn(10, a, 1, now, usize::MAX);
    table.learn(20, b, 2, now, usize::MAX);

    let all = sw.ok(&["show", "macs"]);
    let line_a = all
        .lines()
        .find(|l| l.contains("52:54:00:00:00:01"))
        .expect(&all);
    assert_eq!(
        line_a.split_whitespace().take(3).collect::<Vec<_>>(),
        ["10", "52:54:00:00:00:01", "vm1"]
    );
    assert!(
        all.contains("2 entries (capacity 8192, aging 300 s)"),
        "{all}"
    );

    let only20 = sw.ok(&["show", "macs", "--vlan", "20"]);
    assert!(
        only20.contains("52:54:00:00:00:02") && only20.contains(" up "),
        "{only20}"
    );
    assert!(!only20.contains("52:54:00:00:00:01"), "{only20}");
    assert!(only20.contains("1 entry in VLAN 20"), "{only20}");
}

#[test]
fn add_port_then_del_port_round_trip() {
    let sw = TestSwitch::start("add_del");
    let sock = sw.dir.join("vm4.sock");
    let spec = format!("name=vm4,socket={},vlan=42", sock.display());
    let added = sw.ok(&["add-port", &spec]);
    assert_eq!(added.trim(), "added port vm4 as port 4");
    let table = sw.ok(&["show", "ports"]);
    let vm4 = row(&table, "vm4").expect(&table);
    assert!(vm4.contains("access 42"), "{vm4}");
    assert!(sock.exists(), "the switch listens on the new port's socket");

    // A trunk list keeps its commas; --json prints the assigned number.
    let spec = format!(
        "name=t2,socket={},vlan-mode=trunk,trunks=10,20-29",
        sw.dir.join("t2.sock").display()
    );
    assert_eq!(sw.json(&["add-port", &spec])["id"], 5);
    let table = sw.ok(&["show", "ports"]);
    assert!(row(&table, "t2").expect(&table).contains("trunk 10,20-29"));

    assert_eq!(sw.ok(&["del-port", "vm4"]).trim(), "removed port vm4");
    sw.ok(&["del-port", "t2"]);
    let table = sw.ok(&["show", "ports"]);
    assert!(
        row(&table, "vm4").is_none() && row(&table, "t2").is_none(),
        "{table}"
    );
    assert!(table.trim_end().ends_with("3 ports"), "{table}");
}

#[test]
fn set_vlan_changes_the_vlan_shown() {
    let sw = TestSwitch::start("set_vlan");
    let out = sw.ok(&["set-vlan", "vm1", "trunk", "10,20-29"]);
    assert_eq!(out.trim(), "port vm1: vlan trunk 10,20-29");
    let table = sw.ok(&["show", "ports"]);
    assert!(
        row(&table, "vm1").unwrap().contains("trunk 10,20-29"),
        "{table}"
    );

    sw.ok(&["set-vlan", "vm1", "native-tagged", "7", "100-200"]);
    let v = sw.json(&["show", "port", "vm1"]);
    assert_eq!(
        v["vlan"],
        serde_json::json!({"mode": "native-tagged", "vlan": 7, "trunks": "100-200"})
    );

    sw.ok(&["set-vlan", "vm1", "access", "20"]);
    let table = sw.ok(&["show", "ports"]);
    assert!(row(&table, "vm1").unwrap().contains("access 20"), "{table}");
}

#[test]
fn switch_errors_exit_1_with_the_switch_message() {
    let sw = TestSwitch::start("switch_errors");
    let out = sw.flowctl(&["del-port", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim(), "flowctl: no port named 'ghost'");

    let out = sw.flowctl(&["set-vlan", "ghost", "access", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no port named 'ghost'"),
        "{}",
        stderr(&out)
    );

    let out = sw.flowctl(&["show", "port", "ghost"]);
    assert_eq!(out.status.code(), Some(1));

    // Checked by the switch: the message names the field.
    let spec = format!(
        "name=bad,socket={},vlan=5000",
        sw.dir.join("bad.sock").display()
    );
    let out = sw.flowctl(&["add-port", &spec]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("flowctl: ") && err.contains("`vlan`") && err.contains("5000"),
        "{err}"
    );

    let spec = format!("name=vm1,socket={}", sw.dir.join("dup.sock").display());
    let out = sw.flowctl(&["add-port", &spec]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2_naming_the_problem() {
    let sw = TestSwitch::start("usage_errors");
    for (args, needle) in [
        (&["add-port", "name=x"][..], "missing socket="),
        (
            &["add-port", "name=x,socket=/tmp/x.sock,colour=red"],
            "unknown key 'colour'",
        ),
        (
            &["add-port", "name=x,socket=/tmp/x.sock,mode=maybe"],
            "mode 'maybe'",
        ),
        (&["set-vlan", "vm1", "access"], "needs a VLAN ID"),
        (&["set-vlan", "vm1", "trunk", "10,5000"], "5000"),
        (&["set-vlan", "vm1", "bridge", "3"], "bridge"),
        (&["show", "macs", "--vlan", "x"], "--vlan"),
        (&["frobnicate"], "frobnicate"),
    ] {
        let out = sw.flowctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // Nothing was added.
    assert!(row(&sw.ok(&["show", "ports"]), "x").is_none());
}

#[test]
fn unreachable_switch_exits_3_with_a_hint() {
    let dir = std::env::temp_dir().join(format!("flowctl-{}-unreachable", std::process::id()));
    let missing = dir.join("no-such.sock");
    let out = flowctl_at(&missing, &["show", "ports"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "flowctl: cannot connect to switch at {}:",
            missing.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("is patchbay-switch running?") && err.contains("--socket"),
        "{err}"
    );
}

#[test]
fn patchbay_control_selects_the_socket() {
    let sw = TestSwitch::start("env_socket");
    let out = Command::new(env!("CARGO_BIN_EXE_flowctl"))
        .env("PATCHBAY_CONTROL", sw.socket())
        .args(["show", "switch"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ports:"));
}

#[test]
fn tunnel_commands_change_and_show_the_vtep() {
    // Below the kernel's ephemeral range (32768 and up): a port found by binding port 0 can
    // be taken by another socket (the tunnel's own senders use ephemeral ports) before the
    // switch binds it.
    let udp_port = (0..2000u16)
        .map(|i| 20_000 + ((std::process::id() as u16).wrapping_mul(31).wrapping_add(i) % 12_000))
        .find(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free UDP port below the ephemeral range");
    let sw = TestSwitch::start_with("tunnel", |c| {
        let mut vtep = patchbay_overlay::vtep::VtepConfig::new("127.0.0.1".parse().unwrap());
        vtep.port = udp_port;
        vtep.vnis.push(patchbay_overlay::vtep::VniConfig {
            vni: 42,
            vlan: 10,
            remotes: vec!["127.0.0.2".parse().unwrap()],
            proxy: false,
        });
        c.vxlan = Some(vtep);
    });
    let shown = sw.ok(&["show", "tunnel"]);
    assert!(
        shown.contains("42") && shown.contains("127.0.0.2"),
        "{shown}"
    );
    // The MTU guests must use (the default 1500-byte underlay less 50) and the kernel's
    // UDP offloads.
    assert!(
        shown.contains(&format!(
            "local 127.0.0.1:{udp_port}, underlay MTU 1500: guests on tunnelled VLANs need MTU 1450 or less"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("kernel UDP offloads: segmentation (GSO) "),
        "{shown}"
    );
    assert!(
        shown.contains("sent 0 datagrams in 0 system calls"),
        "{shown}"
    );
    let snap = sw.json(&["show", "tunnel"]);
    assert_eq!(
        (snap["underlay_mtu"].as_u64(), snap["guest_mtu"].as_u64()),
        (Some(1500), Some(1450))
    );
    assert!(sw
        .ok(&["tunnel", "map", "43", "30"])
        .contains("VNI 43 <-> VLAN 30"));
    sw.ok(&["tunnel", "add-remote", "43", "127.0.0.3"]);
    sw.ok(&["tunnel", "add-mac", "43", "52:54:00:00:00:09", "127.0.0.3"]);
    let snap = sw.json(&["show", "tunnel"]);
    let vni = snap["vnis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vni"] == 43)
        .expect("VNI 43 shown");
    assert_eq!(vni["vlan"], 30);
    assert_eq!(vni["remotes"][0], "127.0.0.3");
    assert_eq!(snap["macs"][0]["mac"], "52:54:00:00:00:09");
    assert_eq!(snap["macs"][0]["origin"], "static");
    let shown = sw.ok(&["show", "tunnel"]);
    let row = shown
        .lines()
        .find(|l| l.contains("52:54:00:00:00:09"))
        .unwrap_or_default();
    assert!(row.contains("config"), "where the entry came from: {shown}");
    // Without [evpn], show evpn says so.
    let evpn = sw.flowctl(&["show", "evpn"]);
    assert_eq!(evpn.status.code(), Some(1));
    assert!(stderr(&evpn).contains("[evpn]"), "{}", stderr(&evpn));
    // The tunnel port now carries VLAN 30 as well.
    let ports = sw.json(&["show", "ports"]);
    let tunnel = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "vxlan")
        .expect("the tunnel port is listed");
    assert_eq!(tunnel["vlan"]["trunks"], "10,30");
    // Errors come back from the switch.
    let dup = sw.flowctl(&["tunnel", "map", "44", "30"]);
    assert_eq!(dup.status.code(), Some(1), "{}", stderr(&dup));
    assert!(stderr(&dup).contains("30"), "{}", stderr(&dup));
    let gone = sw.flowctl(&["del-port", "vxlan"]);
    assert_eq!(gone.status.code(), Some(1));
    sw.ok(&["tunnel", "del-mac", "43", "52:54:00:00:00:09"]);
    sw.ok(&["tunnel", "unmap", "43"]);
    let after = sw.json(&["show", "tunnel"]);
    assert!(
        !after["vnis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["vni"] == 43),
        "VNI 43 is gone: {after}"
    );
}

#[test]
fn tunnel_proxy_commands_set_the_proxy_and_its_static_addresses() {
    // A free UDP port below the ephemeral range, as above.
    let udp_port = (0..2000u16)
        .map(|i| 20_000 + ((std::process::id() as u16).wrapping_mul(37).wrapping_add(i) % 12_000))
        .find(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free UDP port below the ephemeral range");
    let sw = TestSwitch::start_with("tunnel-proxy", |c| {
        let mut vtep = patchbay_overlay::vtep::VtepConfig::new("127.0.0.1".parse().unwrap());
        vtep.port = udp_port;
        vtep.vnis.push(patchbay_overlay::vtep::VniConfig {
            vni: 42,
            vlan: 10,
            remotes: vec!["127.0.0.2".parse().unwrap()],
            proxy: false,
        });
        c.vxlan = Some(vtep);
    });
    let vni42 = |snap: &serde_json::Value| snap["vnis"][0].clone();
    assert_eq!(
        vni42(&sw.json(&["show", "tunnel"]))["proxy"],
        false,
        "off by default"
    );
    assert_eq!(
        sw.ok(&["tunnel", "proxy", "42", "on"]).trim(),
        "VNI 42: ARP/ND proxy on"
    );
    let snap = sw.json(&["show", "tunnel"]);
    assert_eq!(vni42(&snap)["proxy"], true);
    assert_eq!(vni42(&snap)["proxy_arp_replies"], 0);
    assert!(sw
        .ok(&[
            "tunnel",
            "add-neigh",
            "42",
            "2001:db8::9",
            "52:54:00:00:00:09"
        ])
        .contains("VNI 42: 2001:db8::9 -> 52:54:00:00:00:09 (static)"));
    let shown = sw.ok(&["show", "tunnel"]);
    assert!(shown.contains("on (arp=0 nd=0)"), "{shown}");
    assert!(
        shown.lines().any(|l| l.contains("2001:db8::9")
            && l.contains("52:54:00:00:00:09")
            && l.contains("static")),
        "{shown}"
    );
    assert!(
        shown.contains("1 address the ARP/ND proxy knows"),
        "{shown}"
    );
    let snap = sw.json(&["show", "tunnel"]);
    let n = &snap["neighbors"][0];
    assert_eq!(
        (&n["vni"], &n["ip"], &n["mac"], &n["origin"]),
        (
            &serde_json::json!(42),
            &serde_json::json!("2001:db8::9"),
            &serde_json::json!("52:54:00:00:00:09"),
            &serde_json::json!("static")
        )
    );
    // Errors: from flowctl's own parsing (exit 2) or from the switch (exit 1).
    for (args, code, says) in [
        (vec!["tunnel", "proxy", "42", "maybe"], 2, "not on or off"),
        (
            vec!["tunnel", "proxy", "43", "on"],
            1,
            "VNI 43 is not mapped",
        ),
        (
            vec!["tunnel", "add-neigh", "42", "10.0.0.1", "nonsense"],
            1,
            "not a MAC",
        ),
        (
            vec![
                "tunnel",
                "add-neigh",
                "42",
                "255.255.255.255",
                "52:54:00:00:00:09",
            ],
            1,
            "255.255.255.255",
        ),
        (
            vec!["tunnel", "del-neigh", "42", "10.0.0.1"],
            1,
            "no static address entry",
        ),
    ] {
        let out = sw.flowctl(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    sw.ok(&["tunnel", "del-neigh", "42", "2001:db8::9"]);
    sw.ok(&["tunnel", "proxy", "42", "off"]);
    let snap = sw.json(&["show", "tunnel"]);
    assert_eq!(vni42(&snap)["proxy"], false);
    assert_eq!(snap["neighbors"], serde_json::json!([]));
    let shown = sw.ok(&["show", "tunnel"]);
    assert!(
        !shown.contains("proxy knows"),
        "no proxy, no table: {shown}"
    );
}

#[test]
fn flow_commands_work_from_files_and_report_bad_lines() {
    let sw = TestSwitch::start("flows");
    let file = sw.dir.join("rules.txt");
    std::fs::write(
        &file,
        "# policy\npriority=200,icmp actions=normal\npriority=100,ip,in_port=vm1 actions=drop\n",
    )
    .unwrap();
    sw.ok(&["add-flows", file.to_str().unwrap()]);
    let dump = sw.ok(&["dump-flows"]);
    assert!(dump.contains(" cookie=0x0, duration="), "{dump}");
    assert!(dump.contains("n_packets=0, n_bytes=0"), "{dump}");
    assert!(
        dump.contains("priority=100,ip,in_port=vm1 actions=drop"),
        "{dump}"
    );
    let json = sw.json(&["dump-flows", "ip"]);
    assert_eq!(
        json.as_array().unwrap().len(),
        2,
        "both flows match `ip` or are more specific"
    );

    // One bad line: nothing changes, the error names the line and column.
    let bad = sw.dir.join("bad.txt");
    std::fs::write(
        &bad,
        "priority=1,arp actions=normal\n\npriority=2,tcp,tp_dst=99999 actions=drop\n",
    )
    .unwrap();
    let out = sw.flowctl(&["add-flows", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 3, column"), "{}", stderr(&out));
    assert_eq!(sw.json(&["dump-flows"]).as_array().unwrap().len(), 2);

    // diff, then replace: the unchanged flow stays, the other goes, one is added.
    let next = sw.dir.join("next.txt");
    std::fs::write(
        &next,
        "priority=200,icmp actions=normal\npriority=10,arp actions=normal\n",
    )
    .unwrap();
    let diff = sw.ok(&["diff-flows", next.to_str().unwrap()]);
    assert!(
        diff.contains("-priority=100,ip,in_port=vm1 actions=drop"),
        "{diff}"
    );
    assert!(diff.contains("+priority=10,arp actions=NORMAL"), "{diff}");
    let replaced = sw.ok(&["replace-flows", next.to_str().unwrap()]);
    assert!(
        replaced.starts_with("1 added, 1 removed, 1 unchanged"),
        "{replaced}"
    );
    assert_eq!(sw.ok(&["diff-flows", next.to_str().unwrap()]), "");

    sw.ok(&["mod-flows", "--strict", "priority=10,arp actions=drop"]);
    assert!(sw
        .ok(&["dump-flows", "arp"])
        .contains("priority=10,arp actions=drop"));
    let trace = sw.ok(&["trace", "in_port=vm1,icmp,nw_src=10.0.0.1,nw_dst=10.0.0.2"]);
    assert!(
        trace.contains("table 0: priority=200,icmp") && trace.contains("normal: VLAN 10"),
        "{trace}"
    );
    sw.ok(&["del-flows", "--strict", "priority=200,icmp"]);
    sw.ok(&["del-flows"]);
    assert_eq!(sw.json(&["dump-flows"]).as_array().unwrap().len(), 0);
    let unsupported = sw.flowctl(&["add-flow", "ip actions=ct(commit,nat)"]);
    assert_eq!(unsupported.status.code(), Some(1));
    assert!(
        stderr(&unsupported).contains("nat is not supported"),
        "{}",
        stderr(&unsupported)
    );
}

#[test]
fn tunnel_ids_beyond_24_bits_are_refused_by_the_switch() {
    let sw = TestSwitch::start("tunnel_id_24_bits");
    for (flow, value) in [
        ("actions=set_tunnel:0x1000005", "0x1000005"),
        ("actions=set_tunnel64:0x100000000", "0x100000000"),
        ("ip actions=set_field:0x1000005->tun_id,normal", "0x1000005"),
        ("tun_id=16777221 actions=normal", "0x1000005"),
    ] {
        let out = sw.flowctl(&["add-flow", flow]);
        assert_eq!(out.status.code(), Some(1), "{flow} is refused");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("tunnel ID {value} does not fit in 24 bits")),
            "{flow}: {err}"
        );
    }
    assert_eq!(
        sw.json(&["dump-flows"]).as_array().unwrap().len(),
        0,
        "nothing was added"
    );
    sw.ok(&["add-flow", "actions=set_tunnel:0xffffff"]);
    assert!(sw
        .ok(&["dump-flows"])
        .contains("actions=set_tunnel:0xffffff"));
}

#[test]
fn a_rules_file_over_the_request_limit_gets_a_clear_error_not_a_broken_pipe() {
    let sw = TestSwitch::start("too_long");
    let dir = std::env::temp_dir().join(format!("pb-flowctl-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("many.flows");
    let rules: String = (0..5000)
        .map(|i| {
            format!(
                "priority=10,ip,nw_src=10.0.{}.{},actions=drop\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    std::fs::write(&file, rules).unwrap();
    let out = sw.flowctl(&["add-flows", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("over the control socket's limit of 65536")
            && err.contains("split the file")
            && !err.contains("pipe"),
        "{err}"
    );
    // Parts of a replace would each replace the last: the advice says what to do instead.
    let out = sw.flowctl(&["replace-flows", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("replace-flows takes its whole set in one request") && !err.contains("split"),
        "{err}"
    );
    assert_eq!(sw.json(&["dump-flows"]).as_array().unwrap().len(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn groups_meters_and_conntrack_commands() {
    let sw = TestSwitch::start("groups");
    sw.ok(&["add-meter", "meter=1,pktps,bands=type=drop,rate=1000"]);
    sw.ok(&["add-group", "group_id=1,type=all,bucket=output:vm1"]);
    sw.ok(&["add-flow", "ip actions=meter:1,group:1"]);
    let dup = sw.flowctl(&["add-group", "group_id=1,type=all,bucket=output:vm1"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        stderr(&dup).contains("group 1 exists already"),
        "{}",
        stderr(&dup)
    );
    let missing = sw.flowctl(&["add-flow", "ip actions=group:9"]);
    assert!(
        stderr(&missing).contains("group 9 does not exist"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(
        sw.ok(&["dump-groups"]),
        " packet_count=0, byte_count=0, group_id=1,type=all,bucket=actions=output:1\n"
    );
    assert!(sw
        .ok(&["dump-meters"])
        .contains("meter=1,pktps,bands=type=drop,rate=1000"));
    sw.ok(&["mod-group", "group_id=1,type=indirect,bucket=output:vm1"]);
    assert!(sw.ok(&["dump-groups"]).contains("type=indirect"));
    // Deleting the meter takes the flow that uses it.
    sw.ok(&["del-meters", "meter=1"]);
    assert_eq!(sw.json(&["dump-flows"]).as_array().unwrap().len(), 0);
    sw.ok(&["del-groups"]);
    assert_eq!(sw.json(&["dump-groups"]).as_array().unwrap().len(), 0);

    sw.ok(&["ct-set-limits", "max=1000", "zone=5,limit=10"]);
    let ct = sw.ok(&["dump-conntrack"]);
    assert!(
        ct.contains("0 connections in all zones (limit 1000)") && ct.contains("zone=5,limit=10"),
        "{ct}"
    );
    assert_eq!(
        sw.ok(&["flush-conntrack", "zone=5"]),
        "0 connections flushed\n"
    );
    let bad = sw.flowctl(&["ct-set-limits", "zone=5"]);
    assert_eq!(bad.status.code(), Some(2));
}
