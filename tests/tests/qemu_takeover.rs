//! An in-place upgrade under real QEMU guests: two takeovers in a row
//! (`patchbay-switch --takeover`) while a TCP stream and pings run between two Debian guests.
//! QEMU never reconnects (the new processes count no connect), the stream arrives whole
//! (SHA-256 compared) and the pings are counted across both takeovers.

use std::time::{Duration, Instant};

use patchbay_tests::guest::{received_sum, skip_or_fail, sum_of, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{flowctl_at, SwitchProcess, TestDir};

const BOOT: Duration = Duration::from_secs(120);
const LONG: Duration = Duration::from_secs(180);

fn ok(g: &mut QemuGuest, command: &str) -> Vec<String> {
    let (status, out) = g.run(command, LONG).unwrap();
    assert_eq!(status, 0, "{}: `{command}`: {out:?}", g.name);
    out
}

#[test]
fn qemu_guests_keep_their_tcp_stream_across_two_takeovers() {
    let test = "qemu_guests_keep_their_tcp_stream_across_two_takeovers";
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let dir = TestDir::new("qemu-takeover");
    let control = dir.join("control.sock");
    let config = dir.join("switch.toml");
    std::fs::write(
        &config,
        format!(
            "[control]\nsocket = \"{}\"\n[metrics]\nlisten = \"off\"\n\
             [[port]]\nname = \"a\"\nsocket = \"{}\"\nvlan = 10\n\
             [[port]]\nname = \"b\"\nsocket = \"{}\"\nvlan = 10\n",
            control.display(),
            dir.join("a.sock").display(),
            dir.join("b.sock").display()
        ),
    )
    .unwrap();
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
    ok(
        &mut a,
        "rm -f /tmp/got; (sleep 600 | nc -l -p 5000 > /tmp/got &) ; sleep 0.3",
    );
    ok(
        &mut b,
        "dd if=/dev/urandom of=/tmp/data bs=1M count=24 2>/dev/null; \
         (nc 10.0.78.1 5000 < /tmp/data > /dev/null 2>&1 &); \
         (ping -c 40 -i 0.2 -W 1 10.0.78.1 > /tmp/ping 2>&1 &); sleep 1",
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
    let out = ok(&mut b, "sleep 6; sha256sum /tmp/data; tail -n 3 /tmp/ping");
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
