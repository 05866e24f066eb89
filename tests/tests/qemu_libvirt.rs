//! Guests defined with libvirt's standard `<interface type='vhostuser'>` (docs/libvirt.md)
//! pass traffic through the switch, as a new user would set them up with Debian's libvirt 9:
//! QEMU runs as `libvirt-qemu`, libvirt does not chown vhost-user sockets, so the switch's
//! port socket is made group `libvirt-qemu`, mode 0660 by the port's own settings; one guest
//! with `mode='client'` (the switch listens), one with `mode='server'` (QEMU listens, the
//! switch's port connects). libvirtd (and virtlogd) are started by the test when none runs,
//! without systemd.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use patchbay_switch::port::ConnectMode;
use patchbay_tests::guest::{skip_or_fail, GuestImage};
use patchbay_tests::libvirt::{qemu_dir, qemu_user, Domain, DomainSpec, Libvirt, SocketMode};
use patchbay_tests::switch::{access, start_switch, TestDir};

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn libvirt_guests_in_client_and_server_mode_talk_through_the_switch() {
    let test = "libvirt_guests_in_client_and_server_mode_talk_through_the_switch";
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let libvirt = match Libvirt::start() {
        Ok(l) => l,
        Err(e) => return skip_or_fail(test, &e),
    };
    let dir = TestDir::new("libvirt");
    // QEMU (libvirt-qemu) reads the kernel and initramfs and creates its sockets (console,
    // and the vhost-user socket in server mode) in a directory of its own.
    let qemu = dir.join("qemu");
    qemu_dir(&qemu).expect("a directory for QEMU");
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut image = image;
    for f in [&mut image.kernel, &mut image.initrd] {
        let copy = qemu.join(f.file_name().unwrap());
        std::fs::copy(&*f, &copy).unwrap();
        *f = copy;
    }

    // vm1: the switch listens; the socket's group and mode let libvirt-qemu connect.
    let mut vm1 = access(&dir.path, "vm1", 10);
    vm1.socket_group = Some("libvirt-qemu".into());
    vm1.socket_mode = Some("0660".into());
    // vm2: QEMU listens on a socket in its directory; the switch's port connects (retrying
    // until QEMU is there).
    let mut vm2 = access(&dir.path, "vm2", 10);
    vm2.socket = qemu.join("vm2.sock");
    vm2.mode = ConnectMode::Client;
    let d = start_switch(&dir.path, vec![vm1, vm2], |_| {});

    let sock1 = dir.join("vm1.sock");
    let meta = std::fs::metadata(&sock1).unwrap();
    let (_, qemu_gid) = qemu_user().unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "vm1.sock mode");
    assert_eq!(meta.gid(), qemu_gid.as_raw(), "vm1.sock group");

    let console1 = qemu.join("vm1.console");
    let mut g1 = Domain::create(
        &dir.path,
        &DomainSpec {
            name: "patchbay-test-vm1",
            image: &image,
            socket: &sock1,
            mode: SocketMode::Client,
            mac: "52:54:00:00:10:01",
            console: &console1,
            params: "pb.ip=10.0.10.1/24",
        },
    )
    .unwrap_or_else(|e| panic!("virsh create vm1 (mode='client'): {e}"));
    // In server mode `virsh create` returns once the switch's client port has connected.
    let sock2 = qemu.join("vm2.sock");
    let console2 = qemu.join("vm2.console");
    let mut g2 = Domain::create(
        &dir.path,
        &DomainSpec {
            name: "patchbay-test-vm2",
            image: &image,
            socket: &sock2,
            mode: SocketMode::Server,
            mac: "52:54:00:00:10:02",
            console: &console2,
            params: "pb.ip=10.0.10.2/24",
        },
    )
    .unwrap_or_else(|e| panic!("virsh create vm2 (mode='server'): {e}"));

    let mac1 = g1.console.wait_ready(BOOT).expect("vm1 boots");
    let mac2 = g2.console.wait_ready(BOOT).expect("vm2 boots");
    assert_eq!(
        (mac1.as_str(), mac2.as_str()),
        ("52:54:00:00:10:01", "52:54:00:00:10:02")
    );
    let ping = g1.console.ping("10.0.10.2", 3).unwrap();
    assert_eq!(ping.received, 3, "vm1 -> vm2 through the switch: {ping:?}");
    let ping = g2.console.ping("10.0.10.1", 2).unwrap();
    assert_eq!(ping.received, 2, "vm2 -> vm1: {ping:?}");
    for port in ["vm1", "vm2"] {
        let p = d.switch.port_by_name(port).expect("port");
        assert!(p.is_up(), "{port} is up");
        assert!(
            p.counters.snapshot().rx_packets >= 5,
            "{port} carried the pings"
        );
    }
    // The switch offers only the protocol features a net backend uses: QEMU has nothing to
    // warn about (it logs "backend supports VHOST_USER_PROTOCOL_F_CONFIG but QEMU does not"
    // when the config space is offered).
    for g in [&g1, &g2] {
        let log = g.qemu_log();
        assert!(!log.is_empty(), "QEMU's log for {}", g.name);
        assert!(
            !log.contains("VHOST_USER_PROTOCOL_F_CONFIG"),
            "{}: QEMU warned about the protocol features:\n{log}",
            g.name
        );
    }
    g1.console.send_poweroff();
    g2.console.send_poweroff();
    drop((g1, g2));
    drop(libvirt);
}
