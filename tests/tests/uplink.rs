//! Uplinks: an existing interface as a switch port through AF_XDP or AF_PACKET, trunking
//! VLANs to the wire. A veth pair stands in for the NIC between two "hosts" (namespaces), each with a
//! switch whose uplink is its end of the pair (a trunk of VLANs 10 and 20) and whose host
//! reaches each VLAN through an internal port. This kernel has no 802.1Q devices (no 8021q
//! module, no VLAN-filtering bridge), so the far side is a second switch rather than Linux
//! sub-interfaces; the tags still cross the kernel: it takes them off received frames
//! (VLAN offload) and the uplink puts them back from the packet's aux data. Each VLAN
//! reaches its own far port only, and TCP crosses both ways with every byte compared.
//! Below, vhost-user guests (the test frontend) behind an uplink, with a raw packet socket
//! as the far side: their frames on the wire with their VLAN's tag and back, and the guests
//! forwarding on while the uplink's interface is deleted, re-created, and the port removed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use patchbay_switch::port::CounterSnapshot;
use patchbay_tests::frames::{push_tag, strip_tag, tag_of};
use patchbay_tests::frontend::{FrontendConfig, TestPort};
use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::netns::{self, Netns, SwitchProc};
use patchbay_tests::switch::{send_done, TestDir};

fn counter(ns: &Netns, dev: &str, name: &str) -> u64 {
    ns.run(&format!("cat /sys/class/net/{dev}/statistics/{name}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Sends `bytes` over TCP from namespace `from` to `to_ip:port`, where a listener runs in
/// namespace `to`; returns what the listener received.
fn tcp_across(from: &str, to: &str, to_ip: &str, port: u16, bytes: &[u8]) -> Vec<u8> {
    let addr = format!("{to_ip}:{port}");
    let listener = netns::tcp_receive(to, &addr);
    netns::tcp_send(from, &addr, bytes);
    listener.join().expect("listener")
}

/// The "NIC": a veth pair with an end named `pbup` in each namespace, up.
/// Two receive and transmit queues on each end, so an AF_XDP uplink opens a socket per
/// queue and the kernel spreads the flows over them.
fn wire(near: &Netns, far: &Netns) {
    netns::output_ok(std::process::Command::new("ip").args([
        "link",
        "add",
        "pbup",
        "netns",
        near.name(),
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "pbup",
        "netns",
        far.name(),
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
    ]))
    .unwrap();
    for ns in [near, far] {
        ns.ip(&["link", "set", "pbup", "up"]).unwrap();
    }
}

#[test]
fn afpacket_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire() {
    trunk_across_the_wire(
        "afpacket_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire",
        "afpacket",
    );
}

#[test]
fn afxdp_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire() {
    trunk_across_the_wire(
        "afxdp_uplink_trunks_each_vlan_to_the_same_vlan_across_the_wire",
        "afxdp",
    );
}

/// How an uplink of `kind` attaches (`attachment` without the device), as its log says it.
fn how(kind: &str) -> &'static str {
    let a = attachment(kind);
    &a["dev pbup (".len()..a.len() - 1]
}

/// How an uplink of `kind` attaches to a veth, as `show ports` says it.
fn attachment(kind: &str) -> &'static str {
    match kind {
        // veth has no zero-copy AF_XDP; its driver runs XDP programs.
        "afxdp" => "dev pbup (AF_XDP, copy mode, native XDP, 2 queues)",
        _ => "dev pbup (AF_PACKET)",
    }
}

fn trunk_across_the_wire(test: &str, kind: &str) {
    if let Err(e) = netns::available() {
        skip_or_fail(test, &e);
        return;
    }
    let dir = TestDir::new(&format!("uplink-{kind}"));
    let near = Netns::create(&format!("pbup-{kind}-near")).unwrap();
    let far = Netns::create(&format!("pbup-{kind}-far")).unwrap();
    for ns in [&near, &far] {
        // No IPv6 chatter: the counters below count only what the test sends.
        ns.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            .unwrap();
    }
    wire(&near, &far);
    let config = |side: &str| {
        format!(
            "[[port]]\nname = \"host10\"\ntype = \"internal\"\ninterface = \"{side}10\"\nvlan = 10\n\n\
             [[port]]\nname = \"host20\"\ntype = \"internal\"\ninterface = \"{side}20\"\nvlan = 20\n\n\
             [[port]]\nname = \"up\"\ntype = \"{kind}\"\ninterface = \"pbup\"\n\
             vlan_mode = \"trunk\"\ntrunks = \"10,20\"\n"
        )
    };
    let sw_near = SwitchProc::start(&near, &dir.path, "near", &config("near"));
    let sw_far = SwitchProc::start(&far, &dir.path, "far", &config("far"));
    for (ns, dev, addr) in [
        (&near, "near10", "192.0.2.1/24"),
        (&near, "near20", "198.51.100.1/24"),
        (&far, "far10", "192.0.2.2/24"),
        (&far, "far20", "198.51.100.2/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]).unwrap();
    }
    assert_eq!(sw_near.port("up")["socket"], attachment(kind));
    // Frames for a link not (yet) up are counted dropped: start once both ends see it up
    // (attaching XDP on one end of a veth bounces the carrier of both).
    for sw in [&sw_near, &sw_far] {
        netns::wait_until(
            Duration::from_secs(5),
            "the uplinks shown connected",
            || Ok(sw.port("up")["state"] == "connected"),
        )
        .unwrap();
    }
    assert_eq!(
        sw_near.port("host10")["queue_pairs"],
        serde_json::json!([1, 1])
    );
    netns::wait_until(Duration::from_secs(5), "the uplink shown connected", || {
        Ok(sw_near.port("up")["state"] == "connected")
    })
    .unwrap();

    // Each VLAN reaches the same VLAN on the far side.
    for target in ["192.0.2.2", "198.51.100.2"] {
        let stats = netns::ping(&near, target, 3).unwrap();
        assert_eq!(stats.received, 3, "ping {target}: {stats:?}");
    }

    // Broadcasts of VLAN 10 (ARP for an address nobody has) cross tagged 10 only: the far
    // side's VLAN 20 port and the near side's see none of them.
    let far20 = counter(&far, "far20", "rx_packets");
    let near20 = counter(&near, "near20", "rx_packets");
    let far10 = counter(&far, "far10", "rx_packets");
    let _ = near.run("ping -c 3 -i 0.2 -W 1 192.0.2.99");
    netns::wait_until(
        Duration::from_secs(5),
        "VLAN 10's ARP requests at far10",
        || Ok(counter(&far, "far10", "rx_packets") >= far10 + 3),
    )
    .unwrap();
    assert_eq!(
        counter(&far, "far20", "rx_packets"),
        far20,
        "VLAN 10 leaked to far20"
    );
    assert_eq!(
        counter(&near, "near20", "rx_packets"),
        near20,
        "VLAN 10 leaked to near20"
    );

    // TCP both ways, every byte compared.
    let out = netns::pattern(4 << 20, 7);
    assert!(
        tcp_across(near.name(), far.name(), "192.0.2.2", 5001, &out) == out,
        "VLAN 10 out"
    );
    let back = netns::pattern(4 << 20, 11);
    assert!(
        tcp_across(far.name(), near.name(), "198.51.100.1", 5002, &back) == back,
        "VLAN 20 back"
    );
    for sw in [&sw_near, &sw_far] {
        let up = sw.port("up");
        let (packets, bytes) = (
            up["counters"]["rx_packets"].as_u64().unwrap(),
            up["counters"]["rx_bytes"].as_u64().unwrap(),
        );
        assert!(bytes >= 4 << 20, "a transfer came in: {up}");
        if kind == "afpacket" {
            // The hosts' TCP crossed as super-frames (the taps offer TSO, the uplinks
            // carry it in their virtio-net headers), not cut to the MTU on the way.
            assert!(
                bytes / packets > 1514,
                "super-frames crossed the wire: {up}"
            );
        } else {
            // AF_XDP carries no offloads: the switch cut the super-frames to the MTU (the
            // mean, with the other direction's ACKs, stays under a full frame).
            assert!(
                bytes / packets <= 1518,
                "MTU-sized frames crossed the wire: {up}"
            );
        }
        let drops: u64 = up["counters"]["drops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[1].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(drops, 0, "{up}");
    }

    // The interface deleted under the switch: it goes on (its control answers, its host's
    // own addresses answer); the interface re-created, both uplinks carry traffic again;
    // and the port can be removed.
    far.ip(&["link", "del", "pbup"]).unwrap();
    assert!(
        near.ip(&["link", "show", "pbup"]).is_err(),
        "the veth pair is gone"
    );
    netns::wait_until(Duration::from_secs(5), "the uplink shown down", || {
        Ok(sw_near.port("up")["state"] == "down")
    })
    .unwrap();
    assert_eq!(sw_near.port("host10")["state"], "connected");
    wire(&near, &far);
    for sw in [&sw_near, &sw_far] {
        netns::wait_until(Duration::from_secs(5), "the uplink back", || {
            Ok(sw.port("up")["state"] == "connected")
        })
        .unwrap();
        assert_eq!(sw.port("up")["socket"], attachment(kind));
    }
    let stats = netns::ping(&near, "192.0.2.2", 3).unwrap();
    assert_eq!(stats.received, 3, "across the re-created wire: {stats:?}");
    // An AF_XDP uplink's program is on the interface while the port is, and goes with it.
    let xdp_on = || {
        near.ip(&["link", "show", "pbup"])
            .unwrap()
            .contains("prog/xdp")
    };
    assert_eq!(xdp_on(), kind == "afxdp");
    let v = sw_near.call(r#"{"version":1,"command":"del-port","name":"up"}"#);
    assert_eq!(v["ok"], true, "{v}");
    netns::wait_until(Duration::from_secs(5), "the XDP program detached", || {
        Ok(!xdp_on())
    })
    .unwrap();
    // The port gone, the switch still takes the near host's frames on VLAN 10 (host10
    // counts them) but puts none on the wire: the far host sees nothing of the pings.
    // (Guests forwarding to each other meanwhile: `guests_keep_forwarding_*` below.)
    netns::wait_until(
        Duration::from_secs(5),
        "the uplink gone from show-ports",
        || {
            Ok(sw_near
                .request("show-ports")
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["name"] != "up"))
        },
    )
    .unwrap();
    let far_rx = counter(&far, "pbup", "rx_packets");
    let host10_rx = port_counters(&sw_near, "host10").rx_packets;
    let stats = netns::ping_with(&near, "192.0.2.2", 2, &["-W", "1"]).unwrap();
    assert_eq!(stats.received, 0, "no path left to the far host: {stats:?}");
    assert!(
        port_counters(&sw_near, "host10").rx_packets >= host10_rx + 2,
        "the switch took the near host's pings"
    );
    assert_eq!(
        counter(&far, "pbup", "rx_packets"),
        far_rx,
        "nothing reached the wire after the uplink was removed"
    );
}

/// An AF_XDP uplink that cannot attach (here: an MTU over what its chunks hold) falls back
/// to AF_PACKET by itself, says why, and forwards.
#[test]
fn afxdp_uplink_falls_back_to_afpacket_and_says_why() {
    const TEST: &str = "afxdp_uplink_falls_back_to_afpacket_and_says_why";
    if let Err(e) = netns::available() {
        skip_or_fail(TEST, &e);
        return;
    }
    let dir = TestDir::new("uplink-fallback");
    let near = Netns::create("pbup-fb-near").unwrap();
    let far = Netns::create("pbup-fb-far").unwrap();
    wire(&near, &far);
    for ns in [&near, &far] {
        ns.ip(&["link", "set", "pbup", "mtu", "9000"]).unwrap();
    }
    far.ip(&["addr", "add", "192.0.2.2/24", "dev", "pbup"])
        .unwrap();
    let sw = SwitchProc::start(
        &near,
        &dir.path,
        "near",
        "[[port]]\nname = \"host\"\ntype = \"internal\"\ninterface = \"near0\"\n\n\
         [[port]]\nname = \"up\"\ntype = \"afxdp\"\ninterface = \"pbup\"\n",
    );
    near.ip(&["addr", "add", "192.0.2.1/24", "dev", "near0"])
        .unwrap();
    let how = sw.port("up")["socket"].as_str().unwrap().to_string();
    assert!(
        how.starts_with("dev pbup (AF_PACKET; no AF_XDP: MTU 9000"),
        "{how}"
    );
    assert!(!near
        .ip(&["link", "show", "pbup"])
        .unwrap()
        .contains("prog/xdp"));
    let stats = netns::ping(&near, "192.0.2.2", 3).unwrap();
    assert_eq!(stats.received, 3, "through the fallback: {stats:?}");
}

// Guests behind the uplink: vhost-user ports driven by the test frontend, their frames
// read from guest memory and put on the wire (AF_XDP or AF_PACKET), and the wire's frames
// written into their receive rings. The far side is a raw packet socket on the veth's other
// end, which sees each frame with its 802.1Q tag (the kernel takes it off into the packet's
// aux data) and sends tagged frames as they are.

const FAR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xff, 0x01];
const FAR_IP: [u8; 4] = [192, 0, 2, 200];

fn port_counters(sw: &SwitchProc, name: &str) -> CounterSnapshot {
    serde_json::from_value(sw.port(name)["counters"].clone()).expect("a port's counters")
}

/// A UDP/IPv4 frame of `len` bytes (at least 60) whose payload is a pattern seeded by `seq`.
fn udp_frame(src: ([u8; 6], [u8; 4]), dst: ([u8; 6], [u8; 4]), seq: u16, len: usize) -> Vec<u8> {
    let payload = netns::pattern(len.max(60) - 42, u64::from(seq) + 1);
    let mut f = Vec::with_capacity(len);
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1, dst.1, 64)
        .udp(10_000 + seq, 7)
        .write(&mut f, &payload)
        .unwrap();
    f
}

/// A raw AF_PACKET socket on an interface of another namespace: what crosses the wire.
struct Wire {
    fd: OwnedFd,
}

impl Wire {
    /// Opens the socket on `dev` in `ns` (from a thread that enters the namespace; the
    /// socket stays bound there), with the VLAN tags of received frames in aux data.
    fn open(ns: &Netns, dev: &str) -> Wire {
        let (ns, dev) = (ns.name().to_string(), dev.to_string());
        let fd = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            netns::enter(&ns)?;
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor of our own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(dev).unwrap();
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: an all-zero sockaddr_ll is valid; bind reads `size_of` bytes of it.
            let r = unsafe {
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = ifindex as i32;
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let on: libc::c_int = 1;
            // SAFETY: an int option, its value alive for the call.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_AUXDATA,
                    &on as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fd)
        })
        .join()
        .expect("socket thread")
        .expect("a packet socket on the far end");
        Wire { fd }
    }

    /// Puts `frame` on the wire as it is (a tag in it stays).
    fn send(&self, frame: &[u8]) {
        // SAFETY: the frame is alive for the call; the socket is bound to its interface.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send on the wire: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame that came in from the wire (not one this side sent) from `src`, as
    /// (its VLAN, the frame without its tag); None if none came within `timeout`.
    fn recv_from(&self, src: [u8; 6], timeout: Duration) -> Option<(Option<u16>, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        let mut control = [0u64; 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, alive for the call.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
                if Instant::now() >= deadline {
                    return None;
                }
                continue;
            }
            // SAFETY: the message's name, buffer and control area are ours and alive for
            // the call; recvmsg writes within the lengths given.
            let (n, from, msg) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = &mut from as *mut libc::sockaddr_ll as *mut libc::c_void;
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = std::mem::size_of_val(&control);
                let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT);
                (n, from, msg)
            };
            if n < 14 || from.sll_pkttype == libc::PACKET_OUTGOING || buf[6..12] != src {
                continue;
            }
            let frame = buf[..n as usize].to_vec();
            let mut vlan = None;
            // SAFETY: walking the control messages recvmsg wrote into `control`.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux = std::ptr::read_unaligned(
                            libc::CMSG_DATA(c) as *const libc::tpacket_auxdata
                        );
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                            vlan = Some(aux.tp_vlan_tci & 0x0fff);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            // A tag the kernel left in place (not taken off on receive).
            if let (None, Some((vid, _))) = (vlan, tag_of(&frame)) {
                return Some((Some(vid), strip_tag(&frame)));
            }
            return Some((vlan, frame));
        }
    }
}

/// The switch's log (its standard error, `SwitchProc` writes it to `dir/NAME.log`) has a
/// line containing `text`, waited for.
fn wait_log(dir: &TestDir, name: &str, text: &str) -> String {
    let path = dir.join(&format!("{name}.log"));
    let mut found = None;
    let waited = netns::wait_until(Duration::from_secs(5), text, || {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        found = log.lines().find(|l| l.contains(text)).map(str::to_string);
        Ok(found.is_some())
    });
    if let Err(e) = waited {
        panic!(
            "{e}; the log:\n{}",
            std::fs::read_to_string(&path).unwrap_or_default()
        );
    }
    found.unwrap()
}

fn no_ipv6(ns: &Netns) {
    // No IPv6 chatter on the wire: what crosses is what the test sends.
    ns.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        .unwrap();
}

/// The next frame arriving at `guest` (up to 5 s).
fn next_frame(guest: &mut TestPort) -> Option<Vec<u8>> {
    guest.recv(Duration::from_secs(5)).expect("recv")
}

#[test]
fn afpacket_uplink_puts_each_guests_frames_on_the_wire_in_its_vlan_and_brings_the_wires_back_to_that_guest_only(
) {
    guests_across_the_wire(
        "afpacket_uplink_puts_each_guests_frames_on_the_wire_in_its_vlan_and_brings_the_wires_back_to_that_guest_only",
        "afpacket",
    );
}

#[test]
fn afxdp_uplink_puts_each_guests_frames_on_the_wire_in_its_vlan_and_brings_the_wires_back_to_that_guest_only(
) {
    guests_across_the_wire(
        "afxdp_uplink_puts_each_guests_frames_on_the_wire_in_its_vlan_and_brings_the_wires_back_to_that_guest_only",
        "afxdp",
    );
}

const G10: ([u8; 6], [u8; 4]) = ([0x02, 0, 0, 0, 0x0a, 0x01], [192, 0, 2, 10]);
const G20: ([u8; 6], [u8; 4]) = ([0x02, 0, 0, 0, 0x14, 0x01], [198, 51, 100, 20]);
const FAR10: ([u8; 6], [u8; 4]) = (FAR_MAC, FAR_IP);
const FAR20: ([u8; 6], [u8; 4]) = (FAR_MAC, [198, 51, 100, 200]);
const BCAST: ([u8; 6], [u8; 4]) = ([0xff; 6], [255; 4]);

/// A switch in namespace `{ns}-near` with vhost-user ports `guests` (name, access VLAN) and
/// a trunk uplink (10, 20) of `kind` on a veth whose far end is in `{ns}-far`; returns once
/// the uplink is shown connected.
fn guests_behind_an_uplink(
    dir_name: &str,
    ns: &str,
    kind: &str,
    guests: &[(&str, u16)],
) -> (TestDir, Netns, Netns, SwitchProc) {
    let dir = TestDir::new(dir_name);
    let near = Netns::create(&format!("{ns}-near")).unwrap();
    let far = Netns::create(&format!("{ns}-far")).unwrap();
    for n in [&near, &far] {
        no_ipv6(n);
    }
    wire(&near, &far);
    let d = dir.path.display();
    let mut config: String = guests
        .iter()
        .map(|(name, vlan)| {
            format!("[[port]]\nname = \"{name}\"\nsocket = \"{d}/{name}.sock\"\nvlan = {vlan}\n\n")
        })
        .collect();
    config.push_str(&format!(
        "[[port]]\nname = \"up\"\ntype = \"{kind}\"\ninterface = \"pbup\"\n\
         vlan_mode = \"trunk\"\ntrunks = \"10,20\"\n"
    ));
    let sw = SwitchProc::start(&near, &dir.path, "near", &config);
    assert_eq!(sw.port("up")["socket"], attachment(kind));
    netns::wait_until(Duration::from_secs(5), "the uplink shown connected", || {
        Ok(sw.port("up")["state"] == "connected")
    })
    .unwrap();
    (dir, near, far, sw)
}

/// Two guests, on access VLANs 10 and 20, behind a trunk uplink (10, 20) of `kind`.
fn guests_across_the_wire(test: &str, kind: &str) {
    if let Err(e) = netns::available() {
        skip_or_fail(test, &e);
        return;
    }
    let (dir, _near, far, sw) = guests_behind_an_uplink(
        &format!("uplink-guests-{kind}"),
        &format!("pbug-{kind}"),
        kind,
        &[("g10", 10), ("g20", 20)],
    );
    let mut g10 = TestPort::connect(FrontendConfig::new(dir.join("g10.sock"))).expect("g10");
    let mut g20 = TestPort::connect(FrontendConfig::new(dir.join("g20.sock"))).expect("g20");
    let wire_end = Wire::open(&far, "pbup");

    // Out: what each guest sends leaves tagged with its VLAN, every byte as the guest wrote
    // it, up to a frame of the MTU (1514 bytes, 1518 on the wire with its tag).
    let sizes = [60, 590, 1514];
    let mut sent = 0u64;
    for (guest, me, vid) in [(&mut g10, G10, 10u16), (&mut g20, G20, 20)] {
        let to = if vid == 10 { FAR10 } else { FAR20 };
        for (i, len) in sizes.into_iter().enumerate() {
            let f = udp_frame(me, to, vid * 100 + i as u16, len);
            send_done(guest, &f);
            sent += 1;
            let (tag, got) = wire_end
                .recv_from(me.0, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("VLAN {vid}'s {len}-byte frame on the wire"));
            assert_eq!(tag, Some(vid), "the {len}-byte frame of VLAN {vid}'s tag");
            assert!(
                got == f,
                "the {len}-byte frame of VLAN {vid} crossed intact ({} bytes came)",
                got.len()
            );
        }
    }
    let up = port_counters(&sw, "up");
    assert_eq!(up.tx_packets, sent, "{up:?}");
    assert_eq!(up.total_drops(), 0, "{up:?}");

    // In: what the far side sends tagged 10 reaches g10 untagged and intact, unicast to
    // its address (learned above) and broadcast, up to a frame of the MTU; tagged 20, g20.
    // Each guest's first frame is the first of its own VLAN's, and a last broadcast of its
    // own VLAN comes next after them: nothing of the other VLAN came in between.
    for (guest, me, vid) in [(&mut g10, G10, 10u16), (&mut g20, G20, 20)] {
        let from = if vid == 10 { FAR10 } else { FAR20 };
        for (i, len) in sizes.into_iter().enumerate() {
            for dst in [me, BCAST] {
                let f = udp_frame(from, dst, 1000 + vid * 100 + i as u16, len);
                wire_end.send(&push_tag(&f, vid, 0));
                let got = next_frame(guest)
                    .unwrap_or_else(|| panic!("the wire's {len}-byte frame at VLAN {vid}'s guest"));
                assert!(
                    got == f,
                    "the wire's {len}-byte frame to {dst:?} reached VLAN {vid}'s guest intact \
                     ({} bytes came, tag {:?})",
                    got.len(),
                    tag_of(&got)
                );
            }
        }
    }
    // A VLAN the trunk does not carry reaches no guest; the uplink counts it refused.
    let refused = port_counters(&sw, "up").drop_count("vlan-filter");
    wire_end.send(&push_tag(&udp_frame(FAR10, BCAST, 3000, 60), 30, 0));
    netns::wait_until(
        Duration::from_secs(5),
        "VLAN 30 refused at the uplink",
        || Ok(port_counters(&sw, "up").drop_count("vlan-filter") == refused + 1),
    )
    .unwrap();
    for (guest, from, vid) in [(&mut g10, FAR10, 10u16), (&mut g20, FAR20, 20)] {
        let last = udp_frame(from, BCAST, 4000 + vid, 60);
        wire_end.send(&push_tag(&last, vid, 0));
        assert_eq!(
            next_frame(guest).as_deref(),
            Some(&last[..]),
            "VLAN {vid}'s guest got only its own VLAN's frames"
        );
    }
    let up = port_counters(&sw, "up");
    assert_eq!(up.rx_packets, 2 * 2 * sizes.len() as u64 + 2, "{up:?}");
    assert_eq!(up.drop_count("vlan-filter"), 1, "{up:?}");
    for name in ["g10", "g20"] {
        let c = port_counters(&sw, name);
        assert_eq!(c.tx_packets, 2 * sizes.len() as u64 + 1, "{name}: {c:?}");
        assert_eq!(c.total_drops(), 0, "{name}: {c:?}");
    }
}

#[test]
fn afpacket_uplink_gone_and_back_and_removed_leaves_the_guests_forwarding_counted_and_logged() {
    guests_keep_forwarding(
        "afpacket_uplink_gone_and_back_and_removed_leaves_the_guests_forwarding_counted_and_logged",
        "afpacket",
    );
}

#[test]
fn afxdp_uplink_gone_and_back_and_removed_leaves_the_guests_forwarding_counted_and_logged() {
    guests_keep_forwarding(
        "afxdp_uplink_gone_and_back_and_removed_leaves_the_guests_forwarding_counted_and_logged",
        "afxdp",
    );
}

const A: ([u8; 6], [u8; 4]) = ([0x02, 0, 0, 0, 0x0a, 0x0a], [192, 0, 2, 10]);
const B: ([u8; 6], [u8; 4]) = ([0x02, 0, 0, 0, 0x0a, 0x0b], [192, 0, 2, 11]);

/// A broadcast from `a` reaches `b` intact and, if `wire_end` is given, the wire tagged 10;
/// a unicast from `b` reaches `a` intact.
fn a_and_b_exchange(
    a: &mut TestPort,
    b: &mut TestPort,
    wire_end: Option<&Wire>,
    seq: u16,
    len: usize,
) {
    let flood = udp_frame(A, BCAST, seq, len);
    send_done(a, &flood);
    assert_eq!(
        next_frame(b).as_deref(),
        Some(&flood[..]),
        "a's {len}-byte broadcast {seq} at b"
    );
    if let Some(w) = wire_end {
        let (tag, got) = w
            .recv_from(A.0, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("a's broadcast {seq} on the wire"));
        assert_eq!(tag, Some(10));
        assert!(got == flood, "a's broadcast {seq} crossed the wire intact");
    }
    let back = udp_frame(B, A, seq, len);
    send_done(b, &back);
    assert_eq!(
        next_frame(a).as_deref(),
        Some(&back[..]),
        "b's {len}-byte unicast {seq} at a"
    );
}

/// Two guests on VLAN 10 behind a trunk uplink of `kind`: they go on exchanging frames
/// while the uplink's interface is deleted, after it is re-created, and after the uplink
/// port is removed; what the switch could not send on the missing interface is counted
/// dropped, not sent, and each change is logged.
fn guests_keep_forwarding(test: &str, kind: &str) {
    if let Err(e) = netns::available() {
        skip_or_fail(test, &e);
        return;
    }
    let (dir, near, far, sw) = guests_behind_an_uplink(
        &format!("uplink-gone-{kind}"),
        &format!("pbuk-{kind}"),
        kind,
        &[("a", 10), ("b", 10)],
    );
    wait_log(
        &dir,
        "near",
        &format!("port up: uplink on pbup ({}, MTU 1500, link up)", how(kind)),
    );
    let mut a = TestPort::connect(FrontendConfig::new(dir.join("a.sock"))).expect("a");
    let mut b = TestPort::connect(FrontendConfig::new(dir.join("b.sock"))).expect("b");
    let wire_end = Wire::open(&far, "pbup");
    a_and_b_exchange(&mut a, &mut b, Some(&wire_end), 1, 1514);

    // The interface set down: the same as gone for what is sent on it (counted dropped, not
    // sent, and nothing stale leaves once it is up again).
    near.ip(&["link", "set", "pbup", "down"]).unwrap();
    netns::wait_until(Duration::from_secs(5), "the uplink shown down", || {
        Ok(sw.port("up")["state"] == "down")
    })
    .unwrap();
    let before = port_counters(&sw, "up");
    const WHILE_DOWN: u16 = 4;
    for seq in 0..WHILE_DOWN {
        a_and_b_exchange(&mut a, &mut b, None, 50 + seq, 1514);
    }
    let down = port_counters(&sw, "up");
    assert_eq!(
        down.tx_packets, before.tx_packets,
        "nothing counted sent on a downed interface: {down:?}"
    );
    assert_eq!(
        down.drop_count("no-buffer"),
        before.drop_count("no-buffer") + u64::from(WHILE_DOWN),
        "each broadcast for the downed interface counted dropped: {down:?}"
    );
    near.ip(&["link", "set", "pbup", "up"]).unwrap();
    netns::wait_until(Duration::from_secs(5), "the uplink shown up again", || {
        Ok(sw.port("up")["state"] == "connected")
    })
    .unwrap();
    a_and_b_exchange(&mut a, &mut b, Some(&wire_end), 60, 1514);
    assert!(
        wire_end
            .recv_from(A.0, Duration::from_millis(300))
            .is_none(),
        "nothing sent while down left late"
    );

    // The interface deleted under the switch (the whole veth pair goes).
    drop(wire_end);
    far.ip(&["link", "del", "pbup"]).unwrap();
    netns::wait_until(Duration::from_secs(5), "the uplink shown down", || {
        Ok(sw.port("up")["state"] == "down")
    })
    .unwrap();
    wait_log(&dir, "near", "port up: pbup is down (or gone)");
    let up = port_counters(&sw, "up");
    let (a0, b0) = (port_counters(&sw, "a"), port_counters(&sw, "b"));
    const WHILE_GONE: u16 = 8;
    for seq in 0..WHILE_GONE {
        a_and_b_exchange(
            &mut a,
            &mut b,
            None,
            100 + seq,
            [60, 1514][usize::from(seq % 2)],
        );
    }
    // Each of a's broadcasts was for the uplink too: dropped there, counted, not sent.
    let gone = port_counters(&sw, "up");
    assert_eq!(
        gone.tx_packets, up.tx_packets,
        "nothing counted sent on a missing interface: {gone:?}"
    );
    assert_eq!(
        gone.drop_count("no-buffer"),
        up.drop_count("no-buffer") + u64::from(WHILE_GONE),
        "each broadcast for the missing interface counted dropped: {gone:?}"
    );
    for (name, before) in [("a", &a0), ("b", &b0)] {
        let now = port_counters(&sw, name);
        assert_eq!(now.rx_packets, before.rx_packets + u64::from(WHILE_GONE));
        assert_eq!(now.tx_packets, before.tx_packets + u64::from(WHILE_GONE));
        assert_eq!(now.total_drops(), 0, "{name}: {now:?}");
    }

    // The interface back (a new veth pair of the same name): the uplink re-attaches, says
    // so, and carries the guests' frames both ways again.
    wire(&near, &far);
    netns::wait_until(Duration::from_secs(5), "the uplink back", || {
        Ok(sw.port("up")["state"] == "connected")
    })
    .unwrap();
    wait_log(
        &dir,
        "near",
        &format!("port up: pbup is back; uplink re-attached ({})", how(kind)),
    );
    wait_log(&dir, "near", "port up: pbup is up");
    assert_eq!(sw.port("up")["socket"], attachment(kind));
    let wire_end = Wire::open(&far, "pbup");
    a_and_b_exchange(&mut a, &mut b, Some(&wire_end), 200, 1514);
    let f = udp_frame(FAR10, A, 201, 1514);
    wire_end.send(&push_tag(&f, 10, 0));
    assert_eq!(
        next_frame(&mut a).as_deref(),
        Some(&f[..]),
        "the re-created wire's frame at a"
    );

    // The uplink removed: a and b go on, and nothing of theirs reaches the interface.
    let v = sw.call(r#"{"version":1,"command":"del-port","name":"up"}"#);
    assert_eq!(v["ok"], true, "{v}");
    wait_log(&dir, "near", "port up: uplink on pbup closed");
    let near_tx = counter(&near, "pbup", "tx_packets");
    for seq in 0..4 {
        a_and_b_exchange(&mut a, &mut b, None, 300 + seq, 1514);
    }
    assert_eq!(
        counter(&near, "pbup", "tx_packets"),
        near_tx,
        "a's broadcasts no longer go out on pbup"
    );
    assert!(
        wire_end.recv_from(A.0, Duration::ZERO).is_none(),
        "and none reached the far end"
    );
}
