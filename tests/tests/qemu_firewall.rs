//! A stateful firewall between two real QEMU guests, from a rules file in the layout of
//! OpenStack Neutron's OVS firewall driver (tests/tests/data/firewall.flows: conntrack zones
//! per port, registers, ct_state, ct(commit) with a mark, a conjunction of an address set and
//! a port for a remote group) loaded with flowctl. What the guests
//! see: A's TCP connection to B's port 22 works both ways; B cannot open one to A, nor A to
//! B's port 80; the ICMP port-unreachable errors for A's UDP probes come back to A (related),
//! but only for the ports B's policy lets in; and the switch's connection table holds exactly
//! the connections each zone committed. The same file is accepted by `ovs-ofctl
//! parse-flows`.

use std::process::Command;
use std::time::Duration;

use patchbay_switch::flow::parse::parse_flows_file;
use patchbay_tests::guest::{skip_or_fail, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{access, start_switch, workspace_bin, TestDir};

const BOOT: Duration = Duration::from_secs(240);
const RULES: &str = include_str!("data/firewall.flows");

#[test]
fn firewall_rules_are_ovs_ofctl_syntax() {
    let test = "firewall_rules_are_ovs_ofctl_syntax";
    assert!(parse_flows_file(RULES).is_ok(), "Patchbay parses the rules");
    let dir = TestDir::new("firewall-ofctl");
    let file = dir.join("firewall.flows");
    std::fs::write(&file, RULES).unwrap();
    let out = match Command::new("ovs-ofctl")
        .arg("parse-flows")
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(e) => return skip_or_fail(test, &format!("ovs-ofctl: {e}")),
    };
    assert!(
        out.status.success(),
        "ovs-ofctl parse-flows refused the rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let adds = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ADD"))
        .count();
    let rules = RULES
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    assert_eq!(adds, rules, "ovs-ofctl read every rule");
}

/// `/proc/net/snmp`'s Icmp InDestUnreachs of a guest.
fn dest_unreachables(g: &mut QemuGuest) -> u64 {
    let (_, lines) = g
        .run("grep '^Icmp:' /proc/net/snmp", Duration::from_secs(10))
        .unwrap();
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("Icmp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let (names, values) = (&rows[0], &rows[1]);
    let i = names
        .iter()
        .position(|n| *n == "InDestUnreachs")
        .expect("InDestUnreachs");
    values[i].parse().unwrap()
}

/// `flowctl dump-conntrack zone=Z --json`'s connections.
fn connections(socket: &std::path::Path, zone: u16) -> Vec<serde_json::Value> {
    let out = Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .arg("dump-conntrack")
        .arg(format!("zone={zone}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["connections"].as_array().unwrap().clone()
}

/// Whether `conns` has one of `proto` from `src` to a port in `dports` (any if `None`).
fn has(
    conns: &[serde_json::Value],
    proto: u64,
    src: &str,
    dports: Option<std::ops::RangeInclusive<u64>>,
) -> bool {
    conns.iter().any(|c| {
        c["proto"] == proto
            && c["src"] == src
            && dports
                .as_ref()
                .is_none_or(|d| c["dport"].as_u64().is_some_and(|p| d.contains(&p)))
    })
}

#[test]
fn neutron_style_firewall_allows_replies_and_related_and_nothing_else_in() {
    let test = "neutron_style_firewall_allows_replies_and_related_and_nothing_else_in";
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let dir = TestDir::new("qemu-firewall");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "vm1", 10), access(&dir.path, "vm2", 10)],
        |_| {},
    );
    // The rules name ports by number.
    for (name, id) in [("vm1", 1), ("vm2", 2)] {
        assert_eq!(d.switch.port_by_name(name).map(|p| p.id), Some(id));
    }
    let rules = dir.join("firewall.flows");
    std::fs::write(&rules, RULES).unwrap();
    let out = Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(&d.control_socket)
        .arg("add-flows")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flowctl add-flows: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut a = QemuGuest::boot(
        &image,
        "fw-a",
        &GuestNic::new(dir.join("vm1.sock"), "52:54:00:00:1f:01"),
        "pb.ip=10.0.0.1/24",
    )
    .unwrap();
    let mut b = QemuGuest::boot(
        &image,
        "fw-b",
        &GuestNic::new(dir.join("vm2.sock"), "52:54:00:00:1f:02"),
        "pb.ip=10.0.0.2/24",
    )
    .unwrap();
    a.wait_ready(BOOT).unwrap();
    b.wait_ready(BOOT).unwrap();
    let t = Duration::from_secs(30);

    // ICMP echo is allowed into both.
    assert_eq!(a.ping("10.0.0.2", 2).unwrap().received, 2, "A pings B");
    assert_eq!(b.ping("10.0.0.1", 2).unwrap().received, 2, "B pings A");

    // A opens TCP to B's port 22: data goes out and the reply comes back.
    b.run(
        "(echo from-b | nc -l -p 22 > /tmp/in22.txt &) ; sleep 0.2",
        t,
    )
    .unwrap();
    let (status, out) = a.run("echo from-a | nc -w 3 10.0.0.2 22", t).unwrap();
    assert_eq!(status, 0, "A to B:22: {out:?}");
    assert!(
        out.iter().any(|l| l.contains("from-b")),
        "B's reply reached A: {out:?}"
    );
    let (_, got) = b.run("sleep 0.5; cat /tmp/in22.txt", t).unwrap();
    assert!(got.iter().any(|l| l.contains("from-a")), "B got {got:?}");

    // B cannot open a connection to A (A's group lets no TCP in), nor A one to B's port 80.
    a.run("(nc -l -p 22 > /tmp/in22.txt &) ; sleep 0.2", t)
        .unwrap();
    let (status, out) = b.run("echo from-b | nc -w 3 10.0.0.1 22", t).unwrap();
    assert_ne!(status, 0, "B to A:22 must fail: {out:?}");
    let (_, got) = a.run("cat /tmp/in22.txt", t).unwrap();
    assert!(!got.iter().any(|l| l.contains("from-b")), "A got {got:?}");
    b.run("(nc -l -p 80 > /tmp/in80.txt &) ; sleep 0.2", t)
        .unwrap();
    let (status, out) = a.run("echo from-a | nc -w 3 10.0.0.2 80", t).unwrap();
    assert_ne!(status, 0, "A to B:80 must fail: {out:?}");
    let (_, got) = b.run("cat /tmp/in80.txt", t).unwrap();
    assert!(!got.iter().any(|l| l.contains("from-a")), "B got {got:?}");

    // A's UDP probes (traceroute's, to the base port + 1) to a closed port of B that B's
    // group lets in: B answers port unreachable, and that error (related to A's connection) reaches A. To a port the group
    // does not let in, nothing comes back.
    let before = dest_unreachables(&mut a);
    let (_, out) = a
        .run("traceroute -n -m 1 -q 1 -w 2 -p 10000 10.0.0.2", t)
        .unwrap();
    let after = dest_unreachables(&mut a);
    assert!(after > before, "A got the port unreachable: {out:?}");
    // The range's second piece (10016-10017): the probe goes to 10017.
    let (_, out) = a
        .run("traceroute -n -m 1 -q 1 -w 2 -p 10016 10.0.0.2", t)
        .unwrap();
    let after = {
        let now = dest_unreachables(&mut a);
        assert!(
            now > after,
            "A got the port unreachable from 10017: {out:?}"
        );
        now
    };
    let (_, out) = a
        .run("traceroute -n -m 1 -q 1 -w 2 -p 20000 10.0.0.2", t)
        .unwrap();
    assert_eq!(
        dest_unreachables(&mut a),
        after,
        "nothing came back from a port B does not let in: {out:?}"
    );

    // The connection table: zone 1 holds what A sent (and the pings B sent A), zone 2 what
    // B let in and what B sent; the refused openings never reached the other zone.
    let zone1 = connections(&d.control_socket, 1);
    let zone2 = connections(&d.control_socket, 2);
    let (tcp, udp, icmp) = (6, 17, 1);
    assert!(has(&zone1, tcp, "10.0.0.1", Some(22..=22)), "{zone1:?}");
    assert!(has(&zone2, tcp, "10.0.0.1", Some(22..=22)), "{zone2:?}");
    assert!(
        has(&zone1, tcp, "10.0.0.1", Some(80..=80)),
        "A committed its opening: {zone1:?}"
    );
    assert!(
        !has(&zone2, tcp, "10.0.0.1", Some(80..=80)),
        "B never let it in: {zone2:?}"
    );
    assert!(
        has(&zone2, tcp, "10.0.0.2", Some(22..=22)),
        "B committed its opening: {zone2:?}"
    );
    assert!(
        !has(&zone1, tcp, "10.0.0.2", None),
        "A never let it in: {zone1:?}"
    );
    assert!(
        has(&zone1, udp, "10.0.0.1", Some(10000..=10015)),
        "{zone1:?}"
    );
    assert!(
        has(&zone2, udp, "10.0.0.1", Some(10000..=10015)),
        "{zone2:?}"
    );
    assert!(
        has(&zone2, udp, "10.0.0.1", Some(10017..=10017)),
        "{zone2:?}"
    );
    assert!(
        has(&zone1, udp, "10.0.0.1", Some(20000..=20015)),
        "{zone1:?}"
    );
    assert!(
        !has(&zone2, udp, "10.0.0.1", Some(20000..=20015)),
        "{zone2:?}"
    );
    for zone in [&zone1, &zone2] {
        assert!(has(zone, icmp, "10.0.0.1", None) && has(zone, icmp, "10.0.0.2", None));
    }
    // The SSH connection carries the mark its ingress rule set (in B's zone).
    let ssh = zone2
        .iter()
        .find(|c| c["proto"] == tcp && c["src"] == "10.0.0.1" && c["dport"] == 22)
        .unwrap();
    assert_eq!(ssh["mark"], 0x22, "{ssh}");
    let ct = d.switch.flows().conntrack();
    assert_eq!(ct.len(), zone1.len() + zone2.len());
    assert_eq!(
        ct.zone_counts(),
        std::collections::HashMap::from([(1, zone1.len()), (2, zone2.len())])
    );
    // The metrics say the same.
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    for line in [
        format!("patchbay_conntrack_connections {}", ct.len()),
        format!(
            "patchbay_conntrack_zone_connections{{zone=\"1\"}} {}",
            zone1.len()
        ),
        format!(
            "patchbay_conntrack_zone_connections{{zone=\"2\"}} {}",
            zone2.len()
        ),
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in:\n{body}");
    }

    // `flowctl flush-conntrack zone=1` empties zone 1 and leaves zone 2; without a zone it
    // empties the table.
    let flush = |zone: Option<&str>| {
        let mut cmd = Command::new(workspace_bin("flowctl"));
        cmd.arg("--socket")
            .arg(&d.control_socket)
            .arg("--json")
            .arg("flush-conntrack");
        cmd.args(zone);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<usize>(&out.stdout).unwrap()
    };
    // (Counts up to what was dumped: a connection closed by a reset may expire meanwhile.)
    let flushed = flush(Some("zone=1"));
    assert!(
        flushed > 0 && flushed <= zone1.len(),
        "{flushed} of {zone1:?}"
    );
    assert!(connections(&d.control_socket, 1).is_empty());
    let left = connections(&d.control_socket, 2);
    let tuple =
        |c: &serde_json::Value| ["proto", "src", "dst", "sport", "dport"].map(|k| c[k].to_string());
    let before: Vec<_> = zone2.iter().map(tuple).collect();
    assert!(
        !left.is_empty() && left.iter().all(|c| before.contains(&tuple(c))),
        "zone 2 kept: {left:?}"
    );
    assert!(flush(None) >= left.len());
    assert!(ct.is_empty() && connections(&d.control_socket, 2).is_empty());
    a.poweroff();
    b.poweroff();
    d.shutdown();
}
