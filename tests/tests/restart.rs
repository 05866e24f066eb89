//! A switch restarted with `[switch] state_file` comes back as it was changed at run time
//! (ports added with flowctl, VLAN changes, flows, groups, meters, tunnel mappings, static
//! MACs, ARP/ND proxy settings and static addresses, conntrack limits), with the config file's own edits since merged in; a state file
//! that is corrupt or from a newer Patchbay stops the start with a clear error and is left
//! untouched.

use std::path::Path;
use std::process::Command;

use patchbay_switch::config::Config;
use patchbay_switch::daemon::Daemon;
use patchbay_tests::switch::{
    access_ports, flowctl_at, loopback_vtep, vxlan_test_port, workspace_bin, TestDir,
};

fn config(dir: &TestDir, a_vlan: u16, vxlan_port: u16) -> Config {
    let mut c = Config {
        control_socket: dir.join("control.sock"),
        metrics_listen: None,
        ports: access_ports(&dir.path, &[("a", a_vlan), ("b", 10)]),
        ..Config::default()
    };
    c.settings.state_file = Some(dir.join("state/state.json"));
    c.vxlan = Some(loopback_vtep(vxlan_port));
    c
}

fn flowctl(dir: &Path, args: &[&str]) -> String {
    flowctl_at(&dir.join("control.sock"), args)
}

/// What a restart must keep, as flowctl shows it (counters and ages left out).
fn running_configuration(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let ports: serde_json::Value =
        serde_json::from_str(&flowctl(dir, &["--json", "show", "ports"])).unwrap();
    for p in ports.as_array().unwrap() {
        // (The tunnel port comes from [vxlan], whose UDP port the test changes.)
        if p["name"] != "vxlan" {
            lines.push(format!(
                "port {} {} {} {}",
                p["id"], p["name"], p["socket"], p["vlan"]
            ));
        }
    }
    let flows: serde_json::Value =
        serde_json::from_str(&flowctl(dir, &["--json", "dump-flows"])).unwrap();
    for f in flows.as_array().unwrap() {
        lines.push(format!(
            "flow table={} cookie={} {} actions={}",
            f["table"], f["cookie"], f["match_text"], f["actions_text"]
        ));
    }
    for (cmd, field) in [("dump-groups", "group"), ("dump-meters", "meter")] {
        let v: serde_json::Value = serde_json::from_str(&flowctl(dir, &["--json", cmd])).unwrap();
        for g in v.as_array().unwrap() {
            lines.push(format!("{field} {}", g[field]));
        }
    }
    let tunnel: serde_json::Value =
        serde_json::from_str(&flowctl(dir, &["--json", "show", "tunnel"])).unwrap();
    for v in tunnel["vnis"].as_array().unwrap() {
        lines.push(format!(
            "vni {} vlan {} remotes {} proxy {}",
            v["vni"], v["vlan"], v["remotes"], v["proxy"]
        ));
    }
    for m in tunnel["macs"].as_array().unwrap() {
        if m["origin"] == "static" {
            lines.push(format!("static {} {} {}", m["vni"], m["mac"], m["remote"]));
        }
    }
    for n in tunnel["neighbors"].as_array().unwrap() {
        if n["origin"] == "static" {
            lines.push(format!(
                "static address {} {} {}",
                n["vni"], n["ip"], n["mac"]
            ));
        }
    }
    let ct: serde_json::Value =
        serde_json::from_str(&flowctl(dir, &["--json", "dump-conntrack"])).unwrap();
    lines.push(format!("ct limits {}", ct["limits"]));
    lines
}

#[test]
fn run_time_changes_and_config_edits_survive_a_restart() {
    let dir = TestDir::new("restart-state");
    // (A fresh VXLAN port each start: this process's earlier tunnel socket may still be
    // closing; the VTEP's port is a switch-wide setting, not saved state.)
    let d = Daemon::start(config(&dir, 10, vxlan_test_port())).expect("switch starts");
    let c_sock = dir.join("c.sock");
    let x_sock = dir.join("x.sock");
    for args in [
        // x takes a number and leaves a gap: c keeps its higher number across the restart
        // (its group bucket says output:N).
        vec![
            "add-port",
            &*format!("name=x,socket={},vlan=20", x_sock.display()),
        ],
        vec![
            "add-port",
            &*format!("name=c,socket={},vlan=20", c_sock.display()),
        ],
        vec!["del-port", "x"],
        vec!["set-vlan", "b", "trunk", "10,30"],
        vec!["add-meter", "meter=1,pktps,bands=type=drop,rate=1000"],
        vec![
            "add-group",
            "group_id=1,type=all,bucket=output:a,bucket=output:c",
        ],
        vec![
            "add-flow",
            "cookie=0x5,priority=100,ip,nw_dst=10.0.0.9 actions=drop",
        ],
        vec![
            "add-flow",
            "table=1,priority=7,in_port=c actions=meter:1,group:1",
        ],
        vec!["add-flow", "priority=1 actions=NORMAL"],
        vec!["tunnel", "map", "77", "30"],
        vec!["tunnel", "add-remote", "77", "127.0.0.3"],
        vec!["tunnel", "add-mac", "77", "02:00:00:00:00:77", "127.0.0.3"],
        vec!["tunnel", "proxy", "77", "on"],
        vec![
            "tunnel",
            "add-neigh",
            "77",
            "10.0.0.77",
            "02:00:00:00:00:77",
        ],
        vec!["ct-set-limits", "max=5000"],
    ] {
        flowctl(&dir.path, &args);
    }
    let before = running_configuration(&dir.path);
    assert!(before.iter().any(|l| l.contains(" \"c\" ")), "{before:?}");
    for line in [
        "vni 77 vlan 30 remotes [\"127.0.0.3\"] proxy true",
        "vni 42 vlan 10 remotes [\"127.0.0.2\"] proxy false",
        "static address 77 \"10.0.0.77\" \"02:00:00:00:00:77\"",
    ] {
        assert!(before.iter().any(|l| l == line), "{line} in {before:?}");
    }
    d.shutdown();
    drop(d);

    // Restarted from the same config file: everything comes back.
    let d = Daemon::start(config(&dir, 10, vxlan_test_port())).expect("switch restarts");
    assert_eq!(running_configuration(&dir.path), before);
    d.shutdown();
    drop(d);

    // The config file changed a's VLAN meanwhile: that edit wins, the run-time changes
    // (c, b's trunk, the flows...) stay.
    let d = Daemon::start(config(&dir, 11, vxlan_test_port())).expect("switch restarts");
    let after = running_configuration(&dir.path);
    let a_line = |lines: &[String]| {
        lines
            .iter()
            .find(|l| l.contains(" \"a\" "))
            .cloned()
            .unwrap()
    };
    assert!(a_line(&after).contains("\"vlan\":11"), "{after:?}");
    let without_a = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.contains(" \"a\" "))
            .cloned()
            .collect()
    };
    assert_eq!(without_a(&after), without_a(&before));
    // Traffic-relevant: the restored port c exists with its socket, listening.
    assert!(c_sock.exists());
    d.shutdown();
}

#[test]
fn a_corrupt_or_newer_state_file_stops_the_start_and_is_left_untouched() {
    let dir = TestDir::new("restart-bad-state");
    let state = dir.join("state/state.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let port = vxlan_test_port();
    for (text, expected) in [
        ("{\"version\": 1, \"ports\": [", "is corrupt"),
        ("{\"ports\": []}", "no \"version\" field"),
        (
            "{\"version\": 1, \"config\": {\"ports\": []}, \"ports\": 5}",
            "is corrupt",
        ),
        (
            "{\"version\": 99, \"something\": \"from the future\"}",
            "written by a newer Patchbay (state version 99",
        ),
    ] {
        std::fs::write(&state, text).unwrap();
        let err = match Daemon::start(config(&dir, 10, port)) {
            Ok(d) => {
                d.shutdown();
                panic!("started with state {text}")
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{err}");
        assert!(err.contains(&state.display().to_string()), "{err}");
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            text,
            "left as it was"
        );
        // Nothing half-started: the control socket is free for the next start.
        assert!(!dir.join("control.sock").exists());
    }
}

/// Two VMs of the bundled VMM ping across the switch; the switch is stopped and started
/// again (a new `Daemon` on the same config, as a restarted process would be): the VMs
/// reconnect by themselves and the pings go through again. The time from the new switch's
/// start to the first reply is printed (the figure, not a pass mark: docs/restart.md).
#[test]
fn bundled_vm_guests_reconnect_and_traffic_resumes_after_a_restart() {
    use patchbay_tests::vmm::BundledVm;
    use std::time::{Duration, Instant};
    let test = "bundled_vm_guests_reconnect_and_traffic_resumes_after_a_restart";
    if !Path::new("/dev/kvm").exists() {
        return patchbay_tests::guest::skip_or_fail(test, "the bundled VMM needs /dev/kvm");
    }
    let dir = TestDir::new("restart-vms");
    let start = || {
        Daemon::start(Config {
            control_socket: dir.join("control.sock"),
            metrics_listen: None,
            ports: access_ports(&dir.path, &[("a", 10), ("b", 10)]),
            ..Config::default()
        })
        .expect("switch starts")
    };
    let d = start();
    let vm = |name: &str, port: &str, ip: &str, program: &str| {
        BundledVm::start(
            &workspace_bin("patchbay-vmm"),
            name,
            &dir.join(&format!("{port}.sock")),
            None,
            ip,
            program,
        )
        .unwrap()
    };
    let wait = Duration::from_secs(60);
    let echo = vm("echo", "b", "10.9.0.2/24", "udp-echo 7");
    echo.wait_line("GUEST-READY", wait, |_| {}).unwrap();
    let pinger = vm("pinger", "a", "10.9.0.1/24", "ping 10.9.0.2 100000");
    let seq_of = |line: &str| -> Option<u32> {
        line.strip_prefix("PING seq=")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let first = pinger.wait_line("PING seq=", wait, |_| {}).unwrap();
    assert!(
        first.contains("rtt_us="),
        "the first ping is answered: {first}"
    );

    d.shutdown();
    drop(d);
    let stopped_at = Instant::now();
    // What the pinger printed before the switch went away (no reply can come now).
    let mut last_before = seq_of(&first).unwrap_or(0);
    while let Ok(l) = pinger.wait_line("PING seq=", Duration::from_millis(300), |_| {}) {
        if l.contains("rtt_us=") {
            last_before = last_before.max(seq_of(&l).unwrap_or(0));
        }
    }
    let d = start();
    let started = Instant::now();
    // Pings sent while the switch was away time out; then replies come again.
    let mut timeouts = 0;
    let replied = loop {
        let l = pinger
            .wait_line("PING seq=", wait, |l| {
                if l.ends_with("timeout") {
                    timeouts += 1;
                }
            })
            .expect("pings are answered again after the restart");
        if l.contains("rtt_us=") && seq_of(&l) > Some(last_before) {
            break l;
        }
    };
    println!(
        "restart: switch down {:?}; first reply {:?} after the new switch started \
         ({timeouts} pings timed out; reply {replied}, seq {:?})",
        started - stopped_at,
        started.elapsed(),
        seq_of(&replied)
    );
    let b = d.switch.port_by_name("b").expect("port b");
    assert!(b.is_up(), "the echo VM reconnected");
    d.shutdown();
}

/// A change the switch made but could not save is answered with an error that says both,
/// and the switch keeps running with the change.
#[test]
fn a_change_that_cannot_be_saved_is_reported_as_such() {
    let dir = TestDir::new("restart-unsaved");
    let d = Daemon::start(config(&dir, 10, vxlan_test_port())).expect("switch starts");
    // The state's directory becomes a plain file: the next save cannot write there.
    let state_dir = dir.join("state");
    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::write(&state_dir, "in the way").unwrap();
    let out = Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .args(["add-flow", "priority=9,ip actions=drop"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the change was made but not saved") && err.contains("state.json"),
        "{err}"
    );
    assert_eq!(d.switch.flows().snapshot().len(), 1, "the flow is in");
    d.shutdown();
}
