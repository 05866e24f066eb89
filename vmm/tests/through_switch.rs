//! The bundled VMM and guest on a real switch: VMs on one VLAN ping each other, a VM on
//! another VLAN cannot reach them, a TCP transfer completes with matching checksums, bad
//! input fails clearly, and a VM survives the switch restarting.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::console::Vm;

use patchbay_tests::switch::{access, start_switch, TestDir};

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchbay-vmm"))
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

const T: Duration = Duration::from_secs(30);

#[test]
fn vms_ping_within_a_vlan_not_across_and_move_tcp_intact() {
    if !common::have_kvm("vms_ping_within_a_vlan_not_across_and_move_tcp_intact") {
        return;
    }
    let dir = TestDir::new("vmm-switch");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "vm1", 10),
            access(&dir.path, "vm2", 10),
            access(&dir.path, "vm3", 20),
        ],
        |_| {},
    );
    let mut echo = Vm::start(&dir.join("vm2.sock"), "10.0.0.2/24", "udp-echo 7");
    echo.expect("UDP-ECHO listening", T);
    let mut other = Vm::start(&dir.join("vm3.sock"), "10.0.0.3/24", "udp-echo 7");
    other.expect("UDP-ECHO listening", T);

    let mut pinger = Vm::start(&dir.join("vm1.sock"), "10.0.0.1/24", "ping 10.0.0.2 3");
    let done = pinger.expect("PING-DONE", T);
    assert_eq!(field(&done, "received"), "3", "{done}");
    assert_eq!(pinger.wait(T).0, 0);

    let mut across = Vm::start(&dir.join("vm1.sock"), "10.0.0.1/24", "ping 10.0.0.3 2");
    let done = across.expect("PING-DONE", T);
    assert_eq!(
        field(&done, "received"),
        "0",
        "VLAN 10 must not reach VLAN 20: {done}"
    );
    assert_eq!(
        d.switch
            .port_by_name("vm3")
            .unwrap()
            .counters
            .snapshot()
            .tx_packets,
        0
    );
    across.wait(T);
    drop(echo);
    drop(other);

    // TCP: 32 MiB from vm1 to vm2, checksums must match.
    let mut sink = Vm::start(&dir.join("vm2.sock"), "10.0.0.2/24", "tcp-sink 5001");
    sink.expect("TCP-SINK listening", T);
    let mut source = Vm::start(
        &dir.join("vm1.sock"),
        "10.0.0.1/24",
        "tcp-source 10.0.0.2 5001 32M",
    );
    let sent = source.expect("TCP-SOURCE bytes=", Duration::from_secs(120));
    let got = sink.expect("TCP-SINK bytes=", Duration::from_secs(120));
    assert_eq!(field(&sent, "bytes"), (32u64 << 20).to_string());
    assert_eq!(field(&got, "bytes"), field(&sent, "bytes"), "{sent}\n{got}");
    assert_eq!(
        field(&got, "checksum"),
        field(&sent, "checksum"),
        "{sent}\n{got}"
    );
    eprintln!("tcp: {sent}");
    assert_eq!(source.wait(T).0, 0);
    assert_eq!(sink.wait(T).0, 0);
    d.shutdown();
}

#[test]
fn a_missing_switch_socket_is_a_clear_error() {
    if !common::have_kvm("a_missing_switch_socket_is_a_clear_error") {
        return;
    }
    let dir = TestDir::new("vmm-nosock");
    let out = vmm()
        .arg("--net")
        .arg(format!(
            "socket={},ip=10.0.0.1/24,no-reconnect",
            dir.join("absent.sock").display()
        ))
        .args(["--cmdline", "ping 10.0.0.2 1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent.sock"), "{err}");
}

#[test]
fn a_vm_survives_the_switch_restarting() {
    if !common::have_kvm("a_vm_survives_the_switch_restarting") {
        return;
    }
    let dir = TestDir::new("vmm-restart");
    let ports = || vec![access(&dir.path, "vm1", 10), access(&dir.path, "vm2", 10)];
    let d = start_switch(&dir.path, ports(), |_| {});
    let mut echo = Vm::start(&dir.join("vm2.sock"), "10.0.0.2/24", "udp-echo 7");
    echo.expect("UDP-ECHO listening", T);
    let mut first = Vm::start(&dir.join("vm1.sock"), "10.0.0.1/24", "ping 10.0.0.2 2");
    assert_eq!(field(&first.expect("PING-DONE", T), "received"), "2");
    first.wait(T);

    // The switch goes away and comes back on the same sockets; the echo VM keeps running and
    // its NIC redials.
    d.shutdown();
    let d = start_switch(&dir.path, ports(), |_| {});
    let vm2 = d.switch.port_by_name("vm2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vm2.link().is_some_and(|l| l.is_up()) {
        assert!(
            Instant::now() < deadline,
            "the running VM did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = Vm::start(&dir.join("vm1.sock"), "10.0.0.1/24", "ping 10.0.0.2 3");
    let done = second.expect("PING-DONE", T);
    assert!(
        field(&done, "received").parse::<u32>().unwrap_or(0) >= 2,
        "{done}"
    );
    assert!(
        echo.child.try_wait().unwrap().is_none(),
        "the echo VM is still running"
    );
    d.shutdown();
}

#[test]
fn a_crashing_vm_leaves_the_switch_and_other_vms_running() {
    if !common::have_kvm("a_crashing_vm_leaves_the_switch_and_other_vms_running") {
        return;
    }
    let dir = TestDir::new("vmm-crash");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "vm1", 10),
            access(&dir.path, "vm2", 10),
            access(&dir.path, "bad", 10),
        ],
        |_| {},
    );
    let mut echo = Vm::start(&dir.join("vm2.sock"), "10.0.0.2/24", "udp-echo 7");
    echo.expect("UDP-ECHO listening", T);
    // A guest that faults at once (ud2), on a live switch port.
    let crasher = common::guest_elf("crash-on-switch", &[0x0f, 0x0b]);
    let out = vmm()
        .arg("--kernel")
        .arg(&crasher)
        .arg("--net")
        .arg(format!("socket={}", dir.join("bad.sock").display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rip"),
        "registers printed"
    );
    let mut pinger = Vm::start(&dir.join("vm1.sock"), "10.0.0.1/24", "ping 10.0.0.2 3");
    assert_eq!(field(&pinger.expect("PING-DONE", T), "received"), "3");
    assert!(
        echo.child.try_wait().unwrap().is_none(),
        "the other VM still runs"
    );
    let bad = d.switch.port_by_name("bad").unwrap();
    assert!(
        bad.counters.snapshot().connects >= 1,
        "the crashed VM had connected"
    );
    d.shutdown();
}
