//! Port security with real Debian guests under QEMU: `a`'s port allows only its own MAC and
//! 10.0.0.1; `b` and `c` have no such settings. `a` reaches `b` as itself. When `a` takes
//! another IP, or another MAC, it reaches nobody and its port counts each refusal as
//! `spoofed`; when it claims `c`'s address in gratuitous ARP, `b` keeps `c`'s real MAC for
//! it. Its neighbours keep their traffic throughout.

use std::time::Duration;

use patchbay_tests::guest::{skip_or_fail, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::switch::{access, drops, start_switch, TestDir};

const TEST: &str = "a_guest_that_takes_another_address_reaches_nobody";
const BOOT: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(60);

fn run(g: &mut QemuGuest, cmd: &str) -> Vec<String> {
    let (status, out) = g.run(cmd, T).unwrap();
    assert_eq!(status, 0, "{}: {cmd}: {out:?}", g.name);
    out
}

/// The MAC `g`'s neighbour table has for `ip` ("" if none).
fn neighbour(g: &mut QemuGuest, ip: &str) -> String {
    let (_, out) = g.run("ip neigh show dev eth0", T).unwrap();
    out.iter()
        .filter(|l| l.split_whitespace().next() == Some(ip))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|&x| x == "lladdr").and_then(|_| w.next())
        })
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_guest_that_takes_another_address_reaches_nobody() {
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(TEST, &e.to_string()),
    };
    let dir = TestDir::new("qemu-portsec");
    let mut guarded = access(&dir.path, "a", 10);
    guarded.allowed_macs = vec!["52:54:00:00:0a:01".into()];
    guarded.allowed_ips = vec!["10.0.0.1".into()];
    let d = start_switch(
        &dir.path,
        vec![
            guarded,
            access(&dir.path, "b", 10),
            access(&dir.path, "c", 10),
        ],
        |_| {},
    );
    let nic = |name: &str, mac: &str| GuestNic::new(dir.join(&format!("{name}.sock")), mac);
    let mut a = QemuGuest::boot(
        &image,
        "a",
        &nic("a", "52:54:00:00:0a:01"),
        "pb.ip=10.0.0.1/24",
    )
    .unwrap();
    let mut b = QemuGuest::boot(
        &image,
        "b",
        &nic("b", "52:54:00:00:0a:02"),
        "pb.ip=10.0.0.2/24",
    )
    .unwrap();
    let mut c = QemuGuest::boot(
        &image,
        "c",
        &nic("c", "52:54:00:00:0a:03"),
        "pb.ip=10.0.0.3/24",
    )
    .unwrap();
    for g in [&mut a, &mut b, &mut c] {
        g.wait_ready(BOOT).unwrap();
    }
    let spoofed = || drops(&d, "a", "spoofed");

    // As itself, a reaches b.
    assert_eq!(a.ping("10.0.0.2", 3).unwrap().received, 3);
    assert_eq!(spoofed(), 0, "nothing refused from a guest as itself");
    // b learns c's real MAC.
    assert_eq!(b.ping("10.0.0.3", 1).unwrap().received, 1);
    assert_eq!(neighbour(&mut b, "10.0.0.3"), "52:54:00:00:0a:03");

    // a takes another address: from it, a reaches nobody.
    run(&mut a, "ip addr add 10.0.0.9/24 dev eth0");
    let (_, out) = a
        .run("ping -c 3 -W 1 -I 10.0.0.9 10.0.0.2; echo", T)
        .unwrap();
    assert!(
        out.iter().any(|l| l.contains(" 0 packets received")),
        "a reached b from 10.0.0.9: {out:?}"
    );
    let after_ip = spoofed();
    assert!(
        after_ip >= 1,
        "the frames from 10.0.0.9 counted: {after_ip}"
    );
    run(&mut a, "ip addr del 10.0.0.9/24 dev eth0");

    // a claims c's address with gratuitous ARP (arping -U, as an attacker would): b keeps
    // c's real MAC.
    run(
        &mut a,
        "ip addr add 10.0.0.3/32 dev eth0; arping -c 3 -U -I eth0 10.0.0.3 >/dev/null 2>&1; \
         ip addr del 10.0.0.3/32 dev eth0; true",
    );
    assert!(spoofed() > after_ip, "the ARP claims counted");
    assert_eq!(
        neighbour(&mut b, "10.0.0.3"),
        "52:54:00:00:0a:03",
        "b still has c's real MAC"
    );
    assert_eq!(b.ping("10.0.0.3", 2).unwrap().received, 2);

    // a takes another MAC: it reaches nobody; back on its own, it does again.
    let before_mac = spoofed();
    run(&mut a, "ip link set eth0 address 52:54:00:00:0a:99");
    assert_eq!(a.ping("10.0.0.2", 2).unwrap().received, 0);
    assert!(spoofed() > before_mac, "frames from the new MAC counted");
    run(
        &mut a,
        "ip link set eth0 address 52:54:00:00:0a:01; ip neigh flush dev eth0",
    );
    assert_eq!(a.ping("10.0.0.2", 3).unwrap().received, 3);
    assert_eq!(
        b.ping("10.0.0.3", 2).unwrap().received,
        2,
        "the neighbours still talk"
    );
    for g in [a, b, c] {
        g.poweroff();
    }
}
