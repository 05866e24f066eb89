//! flowctl scripts an isolation policy between two real QEMU guests: only ICMP and TCP port
//! 22 (plus ARP) may pass. The guests see exactly that: ping and an SSH-port connection work,
//! a web-port connection does not, and the flow counters account for the packets.

use std::process::Command;
use std::time::Duration;

use patchbay_tests::guest::{skip_or_fail, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{access, start_switch, workspace_bin, TestDir};

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn flowctl_policy_allows_only_icmp_and_ssh_between_guests() {
    let test = "flowctl_policy_allows_only_icmp_and_ssh_between_guests";
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let dir = TestDir::new("qemu-flows");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "vm1", 10), access(&dir.path, "vm2", 10)],
        |_| {},
    );
    let rules = dir.join("policy.txt");
    std::fs::write(
        &rules,
        "# Only ICMP and SSH between the guests\n\
         priority=300,arp actions=normal\n\
         priority=200,icmp actions=normal\n\
         priority=200,tcp,tp_dst=22 actions=normal\n\
         priority=200,tcp,tp_src=22 actions=normal\n\
         priority=100,ip actions=drop\n",
    )
    .unwrap();
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

    let mut g1 = QemuGuest::boot(
        &image,
        "g1",
        &GuestNic::new(dir.join("vm1.sock"), "52:54:00:00:0f:01"),
        "pb.ip=10.0.0.1/24",
    )
    .unwrap();
    let mut g2 = QemuGuest::boot(
        &image,
        "g2",
        &GuestNic::new(dir.join("vm2.sock"), "52:54:00:00:0f:02"),
        "pb.ip=10.0.0.2/24",
    )
    .unwrap();
    g1.wait_ready(BOOT).unwrap();
    g2.wait_ready(BOOT).unwrap();

    let ping = g1.ping("10.0.0.2", 2).unwrap();
    assert_eq!(ping.received, 2, "ICMP is allowed: {ping:?}");

    let t = Duration::from_secs(30);
    // SSH port: a listener on g2 receives what g1 sends.
    g2.run("(nc -l -p 22 > /tmp/ssh.txt &) ; sleep 0.2", t)
        .unwrap();
    let (status, out) = g1
        .run("echo through-port-22 | nc -w 3 10.0.0.2 22", t)
        .unwrap();
    assert_eq!(status, 0, "nc to port 22: {out:?}");
    let (_, got) = g2.run("sleep 0.5; cat /tmp/ssh.txt", t).unwrap();
    assert!(
        got.iter().any(|l| l.contains("through-port-22")),
        "g2 got {got:?}"
    );

    // Web port: the SYN is dropped, the connection never happens.
    g2.run("(nc -l -p 80 > /tmp/web.txt &) ; sleep 0.2", t)
        .unwrap();
    let (status, out) = g1
        .run("echo through-port-80 | nc -w 3 10.0.0.2 80", t)
        .unwrap();
    assert_ne!(status, 0, "nc to port 80 must fail: {out:?}");
    let (_, got) = g2.run("cat /tmp/web.txt", t).unwrap();
    assert!(
        !got.iter().any(|l| l.contains("through-port-80")),
        "g2 got {got:?}"
    );

    // The counters agree: the web SYNs hit the drop flow.
    let dump = Command::new(workspace_bin("flowctl"))
        .arg("--socket")
        .arg(&d.control_socket)
        .arg("dump-flows")
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let drops = dump
        .lines()
        .find(|l| l.ends_with("priority=100,ip actions=drop"))
        .and_then(|l| l.split("n_packets=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        drops >= 1,
        "the drop flow counted the blocked SYNs:\n{dump}"
    );
    g1.poweroff();
    g2.poweroff();
    d.shutdown();
}
