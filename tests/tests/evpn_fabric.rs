//! BGP EVPN through FRR, with real zebra and bgpd, the real switch binary, VMs of the bundled
//! VMM and a plain Linux host, all in network namespaces: a fabric like FRR's own EVPN
//! topotests.
//!
//! - `rr`: the route reflector, also the underlay (a bridge, 198.51.100.1);
//! - `h1`..`h3`: Patchbay hosts (198.51.100.11-13), each with its own FRR and the switch with
//!   `[evpn]`; no remote VTEP configured anywhere;
//! - `h4`: a plain Linux host (198.51.100.14): kernel bridges and vxlan devices, FRR, and a
//!   namespace per VNI standing for its guests.
//!
//! Two VNIs (100 on VLAN 10, 200 on VLAN 20) share one IP subnet (203.0.113.0/24), so only
//! the switch keeps them apart. Shown: guests on one VNI reach each other on every pair of
//! hosts, the Linux host included; never across VNIs; every flood-list entry and remote MAC
//! came from BGP; a guest moved to another host is reachable again; a host whose switch or
//! FRR stops is withdrawn from the others.

use std::path::Path;
use std::time::Duration;

use patchbay_tests::frr::{self, Frr};
use patchbay_tests::guest::skip_or_fail;
use patchbay_tests::netns::{self, veth_pair, wait_until, Netns, SwitchProc};
use patchbay_tests::switch::{workspace_bin, TestDir};
use patchbay_tests::vmm::BundledVm;

const PATCHBAY_HOSTS: usize = 3;
const VNIS: [(u32, u16); 2] = [(100, 10), (200, 20)];
const LINUX_HOST: &str = "198.51.100.14";
const CONVERGE: Duration = Duration::from_secs(30);

fn underlay(host: usize) -> String {
    format!("198.51.100.{}", 10 + host)
}

/// Overlay address of the guest of `role` (1: echo, 2: pinger) on `host` in VNI `vni`:
/// VNI 100 uses .1-.4 (echo) and .21-.23 (pingers), VNI 200 adds 10.
fn guest_ip(host: usize, vni: u32, role: u8) -> String {
    let base = if vni == 100 { 0 } else { 10 };
    let first = if role == 1 { 0 } else { 20 };
    format!("203.0.113.{}", base + first + host)
}

fn guest_mac(host: usize, vni: u32, role: u8) -> String {
    format!("52:54:00:{host:02x}:{:02x}:{role:02x}", vni / 100)
}

/// A VM of the bundled VMM on `socket` running `program`.
fn vm(name: &str, socket: &Path, mac: &str, ip: &str, program: &str) -> BundledVm {
    BundledVm::start(
        &workspace_bin("patchbay-vmm"),
        name,
        socket,
        Some(mac),
        &format!("{ip}/24"),
        program,
    )
    .unwrap()
}

/// Waits for `vm`'s console line starting with `prefix`.
fn expect(vm: &BundledVm, prefix: &str) -> String {
    vm.wait_line(prefix, Duration::from_secs(60), |_| {})
        .unwrap()
}

/// Replies received by a pinger VM: `ping IP COUNT`, then its PING-DONE line.
fn vm_ping(sock: &Path, mac: &str, ip: &str, target: &str, count: u32) -> u32 {
    let pinger = vm("pinger", sock, mac, ip, &format!("ping {target} {count}"));
    let done = expect(&pinger, "PING-DONE");
    done.split_whitespace()
        .find_map(|w| w.strip_prefix("received="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad line {done}"))
}

struct PatchbayHost {
    ns: Netns,
    frr: Frr,
    switch: Option<SwitchProc>,
}

impl PatchbayHost {
    fn switch(&self) -> &SwitchProc {
        self.switch.as_ref().expect("switch running")
    }

    fn tunnel(&self) -> serde_json::Value {
        self.switch().tunnel()
    }

    /// Flood-list remotes of `vni` and those of them from BGP.
    fn floods(&self, vni: u32) -> (Vec<String>, Vec<String>) {
        let t = self.tunnel();
        let v = t["vnis"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["vni"] == vni))
            .cloned()
            .unwrap_or_default();
        let list = |k: &str| -> Vec<String> {
            let mut l: Vec<String> = v[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            l.sort();
            l
        };
        (list("remotes"), list("bgp_remotes"))
    }

    /// (remote VTEP, origin) of `mac` in `vni`, if the VTEP has it.
    fn remote_mac(&self, vni: u32, mac: &str) -> Option<(String, String)> {
        let t = self.tunnel();
        t["macs"].as_array()?.iter().find_map(|m| {
            (m["vni"] == vni && m["mac"] == mac).then(|| {
                (
                    m["remote"].as_str().unwrap_or("").to_string(),
                    m["origin"].as_str().unwrap_or("").to_string(),
                )
            })
        })
    }

    fn sock(&self, dir: &TestDir, host: usize, port: &str) -> std::path::PathBuf {
        dir.join(&format!("h{host}-{port}.sock"))
    }
}

fn switch_config(dir: &TestDir, host: usize) -> String {
    let mut c = format!(
        "[vxlan]\nlocal_ip = \"{}\"\nvnis = [{{ vni = 100, vlan = 10 }}, {{ vni = 200, vlan = 20 }}]\n\n[evpn]\n\n",
        underlay(host)
    );
    for (vni, vlan) in VNIS {
        for role in ["e", "p", "m"] {
            c.push_str(&format!(
                "[[port]]\nname = \"{role}{vni}\"\nsocket = \"{}\"\nvlan = {vlan}\n\n",
                dir.join(&format!("h{host}-{role}{vni}.sock")).display()
            ));
        }
    }
    c
}

/// Everything this test needs, or why not.
fn prerequisites() -> Result<(), String> {
    netns::vxlan_available()?;
    frr::available()?;
    if !Path::new("/dev/kvm").exists() {
        return Err("the bundled VMM needs /dev/kvm".into());
    }
    Ok(())
}

#[test]
fn evpn_fabric_with_frr_and_a_linux_host() {
    const TEST: &str = "evpn_fabric_with_frr_and_a_linux_host";
    if let Err(e) = prerequisites() {
        skip_or_fail(TEST, &e);
        return;
    }
    let dir = TestDir::new("evpn");
    let frr_dir = dir.join("frr");

    // The underlay: a bridge in the reflector's namespace, a veth to each host.
    let rr = Netns::create("pb-rr").unwrap();
    rr.ip(&["link", "add", "name", "fab", "type", "bridge"])
        .unwrap();
    rr.ip(&["addr", "add", "198.51.100.1/24", "dev", "fab"])
        .unwrap();
    rr.ip(&["link", "set", "fab", "up"]).unwrap();
    let attach = |ns: &Netns, ip: &str| {
        let v = veth_pair(&rr, "", ns, &format!("{ip}/24")).unwrap();
        rr.ip(&["link", "set", &v.a, "master", "fab"]).unwrap();
    };
    let clients: Vec<String> = (1..=PATCHBAY_HOSTS + 1).map(underlay).collect();
    let client_refs: Vec<&str> = clients.iter().map(String::as_str).collect();
    let rr_frr = Frr::start(
        &rr,
        &frr_dir,
        "rr",
        &frr::reflector_bgpd_conf("198.51.100.1", &client_refs),
    )
    .unwrap();

    // The plain Linux host: per VNI a bridge, a vxlan device and a guest namespace.
    let h4 = Netns::create("pb-h4").unwrap();
    attach(&h4, LINUX_HOST);
    let mut linux_guests = Vec::new();
    for (vni, _) in VNIS {
        let (br, vx) = (format!("br{vni}"), format!("vx{vni}"));
        h4.ip(&["link", "add", "name", &br, "type", "bridge"])
            .unwrap();
        h4.ip(&[
            "link",
            "add",
            &vx,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "dstport",
            "4789",
            "local",
            LINUX_HOST,
            "nolearning",
        ])
        .unwrap();
        h4.ip(&["link", "set", &vx, "master", &br]).unwrap();
        h4.run(&format!("bridge link set dev {vx} learning off"))
            .unwrap();
        let g = Netns::create(&format!("pb-g{vni}")).unwrap();
        let v = veth_pair(&h4, "", &g, &format!("{}/24", guest_ip(4, vni, 1))).unwrap();
        h4.ip(&["link", "set", &v.a, "master", &br]).unwrap();
        for d in [&br, &vx] {
            h4.ip(&["link", "set", d, "up"]).unwrap();
        }
        linux_guests.push(g);
    }
    let h4_frr = Frr::start(
        &h4,
        &frr_dir,
        "h4",
        &frr::host_bgpd_conf(LINUX_HOST, "198.51.100.1"),
    )
    .unwrap();

    // The Patchbay hosts.
    let mut hosts: Vec<PatchbayHost> = (1..=PATCHBAY_HOSTS)
        .map(|h| {
            let ns = Netns::create(&format!("pb-h{h}")).unwrap();
            attach(&ns, &underlay(h));
            let frr = Frr::start(
                &ns,
                &frr_dir,
                &format!("h{h}"),
                &frr::host_bgpd_conf(&underlay(h), "198.51.100.1"),
            )
            .unwrap();
            let switch =
                SwitchProc::start(&ns, &dir.path, &format!("h{h}"), &switch_config(&dir, h));
            PatchbayHost {
                ns,
                frr,
                switch: Some(switch),
            }
        })
        .collect();

    if let Err(e) = rr_frr.wait_established(PATCHBAY_HOSTS + 1, CONVERGE) {
        panic!("{e}\n{}", rr_frr.logs());
    }

    // Type-3 routes: every host floods to every other, and only because of BGP.
    for (i, h) in hosts.iter().enumerate() {
        let mut others: Vec<String> = (1..=PATCHBAY_HOSTS + 1)
            .filter(|o| *o != i + 1)
            .map(underlay)
            .collect();
        others.sort();
        for (vni, _) in VNIS {
            wait_until(
                CONVERGE,
                &format!("h{} flood list of VNI {vni}", i + 1),
                || Ok(h.floods(vni) == (others.clone(), others.clone())),
            )
            .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", h.floods(vni), h.frr.logs()));
        }
    }
    for (vni, _) in VNIS {
        wait_until(CONVERGE, &format!("h4 flood list of VNI {vni}"), || {
            let fdb = h4.fdb(&format!("vx{vni}"))?;
            Ok((1..=PATCHBAY_HOSTS)
                .all(|h| fdb.contains(&format!("00:00:00:00:00:00 dst {} self", underlay(h)))))
        })
        .unwrap();
    }

    // A guest answering pings on each VNI of each Patchbay host.
    let mut echoes = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let host = i + 1;
        for (vni, _) in VNIS {
            let echo = vm(
                &format!("echo h{host} {vni}"),
                &h.sock(&dir, host, &format!("e{vni}")),
                &guest_mac(host, vni, 1),
                &guest_ip(host, vni, 1),
                "udp-echo 7",
            );
            expect(&echo, "UDP-ECHO");
            echoes.push(((host, vni), echo));
        }
    }

    // Every pair of hosts, on both VNIs: the Linux host's guests ping each Patchbay guest,
    // and each Patchbay host's pinger pings the guests of the Patchbay hosts after it.
    for (g, (vni, _)) in linux_guests.iter().zip(VNIS) {
        for host in 1..=PATCHBAY_HOSTS {
            let target = guest_ip(host, vni, 1);
            let s = netns::ping(g, &target, 4).unwrap();
            assert!(
                s.received >= 2,
                "Linux guest -> h{host} VNI {vni} ({target}): {s:?}"
            );
        }
    }
    for (vni, _) in VNIS {
        for from in 1..=PATCHBAY_HOSTS {
            for to in (from + 1..=PATCHBAY_HOSTS + 1).map(|t| guest_ip(t, vni, 1)) {
                let h = &hosts[from - 1];
                let got = vm_ping(
                    &h.sock(&dir, from, &format!("p{vni}")),
                    &guest_mac(from, vni, 2),
                    &guest_ip(from, vni, 2),
                    &to,
                    4,
                );
                assert!(got >= 2, "h{from} VNI {vni} -> {to}: {got} of 4 replies");
            }
        }
    }

    // Never across VNIs: the same subnet, a different VNI.
    let s = netns::ping(&linux_guests[0], &guest_ip(1, 200, 1), 3).unwrap();
    assert_eq!(s.received, 0, "VNI 100 reached a VNI 200 guest: {s:?}");
    let got = vm_ping(
        &hosts[0].sock(&dir, 1, "p100"),
        &guest_mac(1, 100, 2),
        &guest_ip(1, 100, 2),
        &guest_ip(2, 200, 1),
        3,
    );
    assert_eq!(got, 0, "h1 VNI 100 reached h2's VNI 200 guest");

    // Type-2 routes: each Patchbay host has the others' guests from BGP, behind their host.
    for (i, h) in hosts.iter().enumerate() {
        for other in (1..=PATCHBAY_HOSTS).filter(|o| *o != i + 1) {
            for (vni, _) in VNIS {
                let mac = guest_mac(other, vni, 1);
                wait_until(CONVERGE, &format!("h{} route for {mac}", i + 1), || {
                    Ok(h.remote_mac(vni, &mac) == Some((underlay(other), "bgp".into())))
                })
                .unwrap_or_else(|e| panic!("{e}: {:?}", h.remote_mac(vni, &mac)));
            }
        }
    }
    // show-evpn counts the same: the flood list, the guests behind the other Patchbay hosts,
    // and the local guests handed to FRR.
    let evpn = hosts[0].switch().request("show-evpn");
    let vni100 = evpn["vnis"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["vni"] == 100))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        vni100["flood_remotes"].as_array().map(Vec::len),
        Some(PATCHBAY_HOSTS),
        "{evpn}"
    );
    assert!(vni100["remote_macs"].as_u64() >= Some(2), "{evpn}");
    assert!(vni100["local_macs"].as_u64() >= Some(1), "{evpn}");
    assert!(evpn["mac_routes_received"].as_u64() >= Some(2), "{evpn}");
    assert_eq!(evpn["netlink_errors"], 0, "{evpn}");
    // On the wire, standard EVPN: what the reflector holds from a Patchbay host carries the
    // route target ASN:VNI, and its type-3 route ingress replication with the VNI as label.
    let routes = |kind: &str, key: &str| -> Vec<String> {
        let out = rr_frr
            .vtysh(&format!("show bgp l2vpn evpn route detail type {kind}"))
            .unwrap();
        // Each path's block starts after "  Route [" with the route's key.
        out.split("  Route [")
            .filter(|b| b.starts_with(key))
            .map(String::from)
            .collect()
    };
    for host in 1..=PATCHBAY_HOSTS {
        let imet = routes("multicast", &format!("3]:[0]:[32]:[{}]", underlay(host)));
        for (vni, _) in VNIS {
            assert!(
                imet.iter().any(|r| r.contains(&format!("RT:65000:{vni}"))
                    && r.contains(&format!(
                        "PMSI Tunnel Type: Ingress Replication, label: {vni}"
                    ))),
                "h{host} VNI {vni}: {imet:?}"
            );
            let key = format!("2]:[0]:[48]:[{}] VNI {vni}", guest_mac(host, vni, 1));
            let macip = routes("macip", &key);
            assert!(
                macip.iter().any(|r| r.contains(&format!("RT:65000:{vni}"))),
                "{key}: {macip:?}"
            );
        }
    }
    // And the Linux host has them from its zebra, which got them from ours.
    let h4_fdb = h4.fdb("vx100").unwrap();
    for host in 1..=PATCHBAY_HOSTS {
        let line = format!("{} dst {} self", guest_mac(host, 100, 1), underlay(host));
        assert!(h4_fdb.contains(&line), "no '{line}' in h4's FDB:\n{h4_fdb}");
    }

    // A guest moves: h1's VNI 100 guest stops and starts again, same MAC and address, on h3.
    let moved_mac = guest_mac(1, 100, 1);
    echoes.retain(|(k, _)| *k != (1, 100));
    let moved = vm(
        "moved guest",
        &hosts[2].sock(&dir, 3, "m100"),
        &moved_mac,
        &guest_ip(1, 100, 1),
        "udp-echo 7",
    );
    expect(&moved, "UDP-ECHO");
    wait_until(CONVERGE, "the moved guest to answer the Linux host", || {
        Ok(netns::ping(&linux_guests[0], &guest_ip(1, 100, 1), 1)?.received == 1)
    })
    .unwrap();
    wait_until(CONVERGE, "h2 to learn the move from BGP", || {
        Ok(hosts[1].remote_mac(100, &moved_mac) == Some((underlay(3), "bgp".into())))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", hosts[1].remote_mac(100, &moved_mac)));
    let got = vm_ping(
        &hosts[1].sock(&dir, 2, "p100"),
        &guest_mac(2, 100, 2),
        &guest_ip(2, 100, 2),
        &guest_ip(1, 100, 1),
        4,
    );
    assert!(got >= 2, "h2 -> the moved guest on h3: {got} of 4 replies");

    // A host whose switch stops is withdrawn: its flood-list entries and MACs go everywhere.
    let gone = underlay(2);
    drop(hosts[1].switch.take());
    wait_until(CONVERGE, "h2's routes to be withdrawn", || {
        let h1 = &hosts[0];
        let t = h1.tunnel();
        let macs_left = t["macs"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["remote"] == gone.as_str()));
        let fdb = h4.fdb("vx100")?;
        Ok(!h1.floods(100).0.contains(&gone) && !macs_left && !fdb.contains(&gone))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: h1 {:?} {}\nh4:\n{}",
            hosts[0].floods(100),
            hosts[0].tunnel()["macs"],
            h4.fdb("vx100").unwrap_or_default()
        )
    });

    // So is a host whose FRR stops.
    let gone = underlay(3);
    hosts[2].frr.stop();
    wait_until(CONVERGE, "h3's routes to be withdrawn", || {
        let fdb = h4.fdb("vx100")?;
        Ok(!hosts[0].floods(100).0.contains(&gone) && !fdb.contains(&gone))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", hosts[0].floods(100)));

    drop(moved);
    drop(echoes);
    drop(h4_frr);
    drop(rr_frr);
    for h in &mut hosts {
        h.switch.take();
    }
    // Each switch removed its shadow devices on the way out.
    for h in &hosts {
        let left = h.ns.ip(&["-br", "link"]).unwrap();
        for dev in ["pbbr", "pbvx", "pbtap"] {
            assert!(!left.contains(dev), "shadow devices left behind:\n{left}");
        }
    }
}
