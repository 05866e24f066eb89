//! An in-place upgrade under real QEMU guests: two takeovers in a row
//! (`patchbay-switch --takeover`) while a TCP stream and pings run between two Debian guests.
//! QEMU never reconnects (the new processes count no connect), the stream arrives whole
//! (SHA-256 compared) and the pings are counted across both takeovers.

use std::time::{Duration, Instant};

use patchbay_tests::guest::{
    received_sum, skip_or_fail, start_tcp_sink, start_tcp_stream, sum_of, GuestImage, GuestNic,
    QemuGuest,
};
use patchbay_tests::switch::{flowctl_at, write_config_file, SwitchProcess, TestDir};

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn qemu_guests_keep_their_tcp_stream_across_two_takeovers() {
    let test = "qemu_guests_keep_their_tcp_stream_across_two_takeovers";
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let dir = TestDir::new("qemu-takeover");
    let control = dir.join("control.sock");
    let config = write_config_file(&dir, "", &[("a", "server", 10), ("b", "server", 10)]);
    let mut switch = SwitchProcess::start(&config, false);
    switch
        .wait_log("switch running", Duration::from_secs(20))
        .expect("the switch starts");

    let mut a = QemuGuest::boot(
        &image,
        "a",
        &GuestNic::new(dir.join("a.sock"), "52:54:00:00:78:01"),
        "pb.ip=10.0.78.1/24",
    )
    .unwrap();
    let mut b = QemuGuest::boot(
        &image,
        "b",
        &GuestNic::new(dir.join("b.sock"), "52:54:00:00:78:02"),
        "pb.ip=10.0.78.2/24",
    )
    .unwrap();
    a.wait_ready(BOOT).unwrap();
    b.wait_ready(BOOT).unwrap();
    let warm = b.ping("10.0.78.1", 2).unwrap();
    assert_eq!(warm.received, 2, "before the takeovers: {warm:?}");

    // A TCP stream into a and pings to it, running across both takeovers.
    start_tcp_sink(&mut a);
    start_tcp_stream(
        &mut b,
        "10.0.78.1",
        24,
        "ping -c 40 -i 0.2 -W 1 10.0.78.1 > /tmp/ping 2>&1",
    );
    for round in 1..=2 {
        let started = Instant::now();
        let mut next = SwitchProcess::start(&config, true);
        let line = next
            .wait_log("takeover complete", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("takeover {round} completes: {:?}", next.log));
        let status = switch.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "the old switch exits cleanly after takeover {round}: {status:?}"
        );
        println!(
            "takeover {round}: {line} (test saw {:?})",
            started.elapsed()
        );
        switch = next;
        std::thread::sleep(Duration::from_secs(2));
    }

    let (got, _) = received_sum(&mut a, 24 << 20);
    let out = b.run_ok("sleep 6; sha256sum /tmp/data; tail -n 3 /tmp/ping");
    let sent = sum_of(&out, "/tmp/data").expect("sender's sum");
    assert_eq!(got, sent, "the TCP stream crossed both takeovers whole");
    let summary = out
        .iter()
        .find(|l| l.contains("packets transmitted"))
        .cloned()
        .unwrap_or_default();
    println!("pings across two takeovers: {summary}");
    assert!(
        summary.contains("40 packets transmitted, 40 packets received"),
        "{out:?}"
    );
    // QEMU never reconnected: the last switch counted no connect on either port, and both
    // are connected.
    let ports: serde_json::Value =
        serde_json::from_str(&flowctl_at(&control, &["--json", "show", "ports"])).unwrap();
    for p in ports.as_array().unwrap() {
        assert_eq!(p["state"], "connected", "{p}");
        assert_eq!(p["counters"]["connects"], 0, "QEMU reconnected: {p}");
    }
    let after = b.ping("10.0.78.1", 3).unwrap();
    assert_eq!(after.received, 3, "after the takeovers: {after:?}");
    a.poweroff();
    b.poweroff();
}
