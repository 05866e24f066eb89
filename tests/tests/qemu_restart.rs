//! A plain restart under real QEMU guests whose NICs redial (`reconnect=1`), or which
//! listen and are redialled by the switch's client-mode ports: the switch
//! process stops and a new one starts from the same config and state file; QEMU reconnects
//! to the recreated sockets, the run-time change made before (a flow added with flowctl)
//! is back, a TCP stream between the guests that runs across the restart arrives whole
//! (TCP resends what the restart lost), and pings are answered again. It prints how long
//! after the new switch started the first ping was answered (a figure, not a pass mark).

use std::time::{Duration, Instant};

use patchbay_tests::guest::{
    received_sum, skip_or_fail, start_tcp_sink, start_tcp_stream, sum_of, GuestImage, GuestNic,
    QemuGuest,
};
use patchbay_tests::switch::{flowctl_at, write_config_file, SwitchProcess, TestDir};

const BOOT: Duration = Duration::from_secs(120);

/// QEMU dials the switch's sockets and redials every second (`reconnect=1`).
#[test]
fn qemu_guests_reconnect_and_keep_their_tcp_stream_across_a_restart() {
    restart_under_guests(
        "qemu_guests_reconnect_and_keep_their_tcp_stream_across_a_restart",
        false,
    );
}

/// QEMU listens (`server=on`, libvirt's `mode='server'`) and the switch's ports dial it:
/// the new switch reconnects as soon as it starts.
#[test]
fn client_mode_ports_redial_qemu_at_once_after_a_restart() {
    restart_under_guests(
        "client_mode_ports_redial_qemu_at_once_after_a_restart",
        true,
    );
}

/// One restart at a time: four TCG guests on two cores would make the figure meaningless.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn restart_under_guests(test: &str, qemu_listens: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let dir = TestDir::new(if qemu_listens {
        "qemu-restart-client"
    } else {
        "qemu-restart"
    });
    let mode = if qemu_listens { "client" } else { "server" };
    let control = dir.join("control.sock");
    let state = format!(
        "[switch]\nstate_file = \"{}\"\n",
        dir.join("state.json").display()
    );
    let config = write_config_file(&dir, &state, &[("a", mode, 10), ("b", mode, 10)]);
    let mut switch = SwitchProcess::start(&config, false);
    switch
        .wait_log("switch running", Duration::from_secs(20))
        .expect("the switch starts");
    let nic = |name: &str, mac: &str| GuestNic {
        reconnect: (!qemu_listens).then_some(1),
        server: qemu_listens,
        ..GuestNic::new(dir.join(&format!("{name}.sock")), mac)
    };
    let mut a = QemuGuest::boot(
        &image,
        "a",
        &nic("a", "52:54:00:00:79:01"),
        "pb.ip=10.0.79.1/24",
    )
    .unwrap();
    let mut b = QemuGuest::boot(
        &image,
        "b",
        &nic("b", "52:54:00:00:79:02"),
        "pb.ip=10.0.79.2/24",
    )
    .unwrap();
    a.wait_ready(BOOT).unwrap();
    b.wait_ready(BOOT).unwrap();
    let warm = b.ping("10.0.79.1", 2).unwrap();
    assert_eq!(warm.received, 2, "before the restart: {warm:?}");
    flowctl_at(
        &control,
        &["add-flow", "cookie=0x79,priority=5,ip,actions=NORMAL"],
    );

    start_tcp_sink(&mut a);
    start_tcp_stream(&mut b, "10.0.79.1", 24, "");
    drop(switch); // SIGTERM: the switch stops, the guests' connections close
    let mut switch = SwitchProcess::start(&config, false);
    switch
        .wait_log("switch running", Duration::from_secs(20))
        .expect("the new switch starts");
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        if b.ping("10.0.79.1", 1).unwrap().received == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pings answered again after the restart"
        );
    }
    println!(
        "restart ({}): first ping answered {:?} after the new switch started ({attempts} attempts)",
        if qemu_listens {
            "QEMU listens, the ports dial"
        } else {
            "QEMU dials, reconnect=1"
        },
        started.elapsed()
    );
    let (got, _) = received_sum(&mut a, 24 << 20);
    let out = b.run_ok("sha256sum /tmp/data");
    let sent = sum_of(&out, "/tmp/data").expect("sender's sum");
    assert_eq!(got, sent, "the TCP stream crossed the restart whole");
    assert!(
        flowctl_at(&control, &["dump-flows"]).contains("cookie=0x79"),
        "the flow added before the restart is back"
    );
    let ports: serde_json::Value =
        serde_json::from_str(&flowctl_at(&control, &["--json", "show", "ports"])).unwrap();
    for p in ports.as_array().unwrap() {
        assert_eq!(p["state"], "connected", "QEMU reconnected: {p}");
    }
    a.poweroff();
    b.poweroff();
}
