//! A real Debian guest under QEMU reaches the host's own stack through an internal port of
//! its VLAN, and only that one. The switch binary runs in a namespace of the test's own with
//! the guest's port (access VLAN 10) and two internal ports: `pbh10` on VLAN 10 and `pbh20`
//! on VLAN 20, both with addresses in the guest's subnet. The host answers ARP only for
//! the address of the device a request came in on (arp_ignore=1), so the guest reaches
//! 192.0.2.1 (VLAN 10) and never 192.0.2.2 (VLAN 20), whose device sees none of the guest's
//! broadcasts. Then TCP both ways between the guest and the host, with offloads on at both
//! ends (the guest's virtio-net and the tap's TSO), every byte compared by SHA-256.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use patchbay_tests::guest::{skip_or_fail, GuestImage, GuestNic, QemuGuest};
use patchbay_tests::netns::{self, Netns, SwitchProc};
use patchbay_tests::switch::TestDir;

const TEST: &str = "qemu_guest_reaches_the_host_through_the_internal_port_of_its_vlan_only";
const BOOT: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(120);
const SIZE: usize = 8 << 20;

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    ns.run(&format!("cat /sys/class/net/{dev}/statistics/rx_packets"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The SHA-256 a guest command printed for `file`.
fn guest_sum(out: &[String], file: &str) -> String {
    out.iter()
        .find(|l| l.contains(file))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("(none)")
        .to_string()
}

#[test]
fn qemu_guest_reaches_the_host_through_the_internal_port_of_its_vlan_only() {
    let image = match GuestImage::prepare() {
        Ok(i) => i,
        Err(e) => return skip_or_fail(TEST, &e.to_string()),
    };
    if let Err(e) = netns::available() {
        return skip_or_fail(TEST, &e);
    }
    let dir = TestDir::new("qemu-internal");
    let ns = Netns::create("pbqi").unwrap();
    ns.run(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
         net.ipv4.conf.all.arp_ignore=1",
    )
    .unwrap();
    let socket = dir.join("vm.sock");
    let sw = SwitchProc::start(
        &ns,
        &dir.path,
        "sw",
        &format!(
            "[[port]]\nname = \"vm\"\nsocket = \"{}\"\nvlan = 10\n\n\
             [[port]]\nname = \"host10\"\ntype = \"internal\"\ninterface = \"pbh10\"\nvlan = 10\n\n\
             [[port]]\nname = \"host20\"\ntype = \"internal\"\ninterface = \"pbh20\"\nvlan = 20\n",
            socket.display()
        ),
    );
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "pbh10"])
        .unwrap();
    ns.ip(&["addr", "add", "192.0.2.2/24", "dev", "pbh20"])
        .unwrap();
    let mut vm = QemuGuest::boot(
        &image,
        "vm",
        &GuestNic::new(socket, "52:54:00:00:0a:0a"),
        "pb.ip=192.0.2.10/24",
    )
    .unwrap();
    vm.wait_ready(BOOT).unwrap();

    // The host on VLAN 10 answers; the one on VLAN 20 never hears the guest.
    let stats = vm.ping("192.0.2.1", 3).unwrap();
    assert_eq!(stats.received, 3, "ping the VLAN 10 device: {stats:?}");
    let before20 = rx_packets(&ns, "pbh20");
    let stats = vm.ping("192.0.2.2", 3).unwrap();
    assert_eq!(stats.received, 0, "the VLAN 20 device answered: {stats:?}");
    assert_eq!(
        rx_packets(&ns, "pbh20"),
        before20,
        "the guest's ARP reached VLAN 20"
    );

    // Guest to host: the host's listener reads all and sums it.
    let listener = netns::tcp_receive(ns.name(), "192.0.2.1:5001");
    let (status, out) = vm
        .run(
            &format!(
                "dd if=/dev/urandom of=/tmp/data bs=1M count={} 2>/dev/null && \
                 nc 192.0.2.1 5001 < /tmp/data && sha256sum /tmp/data",
                SIZE >> 20
            ),
            T,
        )
        .unwrap();
    assert_eq!(status, 0, "guest sending: {out:?}");
    let got = listener.join().expect("listener");
    assert_eq!(got.len(), SIZE, "the host got all of it");
    assert_eq!(sha256(&got), guest_sum(&out, "/tmp/data"), "guest to host");

    // Host to guest.
    let (status, out) = vm
        .run(
            "rm -f /tmp/got; (sleep 600 | nc -l -p 5002 > /tmp/got &) ; sleep 0.3",
            T,
        )
        .unwrap();
    assert_eq!(status, 0, "{out:?}");
    let data = netns::pattern(SIZE, 0x9e37_79b9_7f4a_7c15);
    netns::tcp_send(ns.name(), "192.0.2.10:5002", &data);
    let (_, out) = vm
        .run(
            &format!(
                "i=0; while [ \"$(stat -c %s /tmp/got)\" -lt {SIZE} ] && [ $i -lt 600 ]; \
                 do sleep 0.1; i=$((i+1)); done; sha256sum /tmp/got"
            ),
            T,
        )
        .unwrap();
    assert_eq!(guest_sum(&out, "/tmp/got"), sha256(&data), "host to guest");

    // Offloads crossed: the host's TCP reached the guest as super-frames.
    let host10 = sw.port("host10");
    let (packets, bytes) = (
        host10["counters"]["rx_packets"].as_u64().unwrap(),
        host10["counters"]["rx_bytes"].as_u64().unwrap(),
    );
    assert!(
        bytes >= SIZE as u64 && bytes / packets > 1514,
        "super-frames from the host: {host10}"
    );
    vm.poweroff();
}
