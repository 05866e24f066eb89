//! Flow tables on the frame path, driven with the test frontend: ACLs, VLAN rewrites,
//! multi-table pipelines, header rewrites with valid checksums, timeouts, exact counters,
//! atomic bundles, and trace agreeing with what the dataplane does.

use std::time::{Duration, Instant};

use patchbay_switch::control::flows::{self, FlowLine};
use patchbay_switch::daemon::Daemon;
use patchbay_switch::flow::pipeline::MissPolicy;
use patchbay_tests::frames::*;
use patchbay_tests::switch::{
    access, connect, port, received_now as got, send_done as send, start_switch, TestDir,
};

fn lines(text: &str) -> Vec<FlowLine> {
    text.lines()
        .enumerate()
        .map(|(i, l)| FlowLine {
            line: i + 1,
            text: l.to_string(),
        })
        .collect()
}

fn add(d: &Daemon, text: &str) {
    flows::add_flows(&d.switch, &lines(text)).expect("flows accepted");
}

/// An IPv4 packet from station `src` to station `dst` (MACs mac(n), IPs 10.0.0.n).
fn ip_packet(src: u8, dst: u8, l4: &str, port: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(src), mac(dst)).ipv4(
        [10, 0, 0, src],
        [10, 0, 0, dst],
        64,
    );
    let mut out = Vec::new();
    let payload = [0x42u8; 32];
    match l4 {
        "tcp" => b
            .tcp(40000, port, 1, 1000)
            .write(&mut out, &payload)
            .unwrap(),
        "udp" => b.udp(40000, port).write(&mut out, &payload).unwrap(),
        _ => b
            .icmpv4_echo_request(1, 1)
            .write(&mut out, &payload)
            .unwrap(),
    }
    out
}

fn arp(src: u8) -> Vec<u8> {
    let mut f = frame(BROADCAST, mac(src), 0, 60);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f
}

fn checksums_ok(frame: &[u8]) -> bool {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        return false;
    };
    let hdr = ip.header().to_header();
    let tcp_ok = match p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            h.calc_checksum_ipv4(&hdr, t.payload()).ok() == Some(h.checksum)
        }
        Some(etherparse::TransportSlice::Udp(u)) => {
            let h = u.to_header();
            h.calc_checksum_ipv4(&hdr, u.payload()).ok() == Some(h.checksum)
        }
        _ => true,
    };
    hdr.calc_header_checksum() == hdr.header_checksum && tcp_ok
}

fn packets_of(d: &Daemon, match_text: &str) -> u64 {
    flows::dump_flows(&d.switch, None)
        .unwrap()
        .iter()
        .find(|f| f.match_text == match_text)
        .unwrap_or_else(|| panic!("no flow {match_text}"))
        .packets
}

#[test]
fn an_acl_lets_only_icmp_ssh_and_arp_through_and_counts_exactly() {
    let dir = TestDir::new("flows-acl");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    add(
        &d,
        "priority=200,icmp actions=normal\n\
         priority=200,tcp,tp_dst=22 actions=normal\n\
         priority=200,tcp,tp_src=22 actions=normal\n\
         priority=100,ip actions=drop\n\
         priority=50,arp actions=normal",
    );
    send(&mut a, &arp(1));
    assert!(got(&mut b).is_some(), "ARP passes");
    for n in 0..3 {
        let ssh = ip_packet(1, 2, "tcp", 22);
        send(&mut a, &ssh);
        assert_eq!(got(&mut b), Some(ssh), "SSH #{n} passes");
    }
    let ping = ip_packet(1, 2, "icmp", 0);
    send(&mut a, &ping);
    assert_eq!(got(&mut b), Some(ping));
    for (l4, port) in [("tcp", 80), ("udp", 53), ("tcp", 2222)] {
        send(&mut a, &ip_packet(1, 2, l4, port));
        assert_eq!(got(&mut b), None, "{l4}/{port} is dropped");
    }
    assert_eq!(packets_of(&d, "priority=200,tcp,tp_dst=22"), 3);
    assert_eq!(packets_of(&d, "priority=200,icmp"), 1);
    assert_eq!(packets_of(&d, "priority=100,ip"), 3);
    assert_eq!(packets_of(&d, "priority=50,arp"), 1);

    // The same counters in the metrics, summed by table and cookie.
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    for line in [
        "patchbay_flow_packets_total{cookie=\"0x0\",table=\"0\"} 8",
        "patchbay_table_lookups_total{table=\"0\"} 8",
        "patchbay_table_matches_total{table=\"0\"} 8",
        "patchbay_table_flows{table=\"0\"} 5",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "metrics have `{line}`:\n{body}"
        );
    }
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        patchbay_tests::guest::skip_or_fail("flow metrics promtool", "promtool not installed");
    }
    d.shutdown();
}

#[test]
fn flows_rewrite_vlans_between_ports() {
    let dir = TestDir::new("flows-vlan");
    let d = start_switch(
        &dir.path,
        vec![
            port(&dir.path, "t", "trunk", None, Some("10,20")),
            access(&dir.path, "v20", 20),
            access(&dir.path, "v10", 10),
        ],
        |_| {},
    );
    let mut t = connect(&dir, "t");
    let mut v20 = connect(&dir, "v20");
    let mut v10 = connect(&dir, "v10");
    // Frames tagged 10 on the trunk are moved into VLAN 20, then switched normally.
    add(
        &d,
        "priority=100,in_port=t,dl_vlan=10 actions=mod_vlan_vid:20,normal\n\
         priority=0 actions=normal",
    );
    let f = tagged(BROADCAST, mac(1), 10, 3, 1, 80);
    send(&mut t, &f);
    assert_eq!(
        got(&mut v20),
        Some(strip_tag(&f)),
        "VLAN 10 -> 20, popped on the access port"
    );
    assert_eq!(got(&mut v10), None, "no longer in VLAN 10");
    // Explicit output sends the packet as the actions left it (OpenFlow semantics).
    add(
        &d,
        "priority=100,in_port=v10 actions=push_vlan:0x8100,mod_vlan_vid:30,mod_vlan_pcp:6,output:t",
    );
    let g = frame(BROADCAST, mac(2), 2, 80);
    send(&mut v10, &g);
    let out = got(&mut t).expect("tagged copy on the trunk");
    assert_eq!(tag_of(&out), Some((30, 6)));
    assert_eq!(strip_tag(&out), g);
    d.shutdown();
}

#[test]
fn a_multi_table_pipeline_resubmits_and_rewrites_with_valid_checksums() {
    let dir = TestDir::new("flows-tables");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    add(
        &d,
        "priority=10,ip actions=resubmit(,1),resubmit(,2)\n\
         table=1,priority=10,ip,nw_dst=10.0.0.2 actions=output:b\n\
         table=2,priority=10,tcp actions=mod_nw_src:192.0.2.1,mod_tp_dst:8080,dec_ttl,mod_dl_dst:02:00:00:00:00:03,output:c\n\
         table=2,priority=5,ip actions=goto_table:3\n\
         table=3,priority=1,ip actions=output:c",
    );
    let pkt = ip_packet(1, 2, "tcp", 80);
    send(&mut a, &pkt);
    assert_eq!(
        got(&mut b),
        Some(pkt.clone()),
        "table 1 sent the original to b"
    );
    let rewritten = got(&mut c).expect("table 2 sent a rewritten copy to c");
    assert_ne!(rewritten, pkt);
    assert!(checksums_ok(&rewritten), "IP and TCP checksums updated");
    let p = etherparse::SlicedPacket::from_ethernet(&rewritten).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(ip.header().source(), [192, 0, 2, 1]);
    assert_eq!(ip.header().ttl(), 63);
    assert_eq!(&rewritten[0..6], &mac(3));
    // UDP misses table 2's tcp flow and goes through goto_table:3, unchanged.
    let udp = ip_packet(1, 2, "udp", 53);
    send(&mut a, &udp);
    assert_eq!(got(&mut b), Some(udp.clone()));
    assert_eq!(got(&mut c), Some(udp));
    d.shutdown();
}

#[test]
fn timeouts_expire_flows() {
    let dir = TestDir::new("flows-timeouts");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    add(
        &d,
        "priority=100,hard_timeout=1,ip actions=drop\npriority=90,idle_timeout=1,arp actions=drop",
    );
    send(&mut a, &ip_packet(1, 2, "icmp", 0));
    assert_eq!(got(&mut b), None, "dropped while the flow lives");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !flows::dump_flows(&d.switch, None).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "flows did not expire");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ping = ip_packet(1, 2, "icmp", 0);
    send(&mut a, &ping);
    assert_eq!(
        got(&mut b),
        Some(ping),
        "after expiry, the table miss is normal again"
    );
    d.shutdown();
}

#[test]
fn a_bundle_with_one_bad_line_changes_nothing() {
    let dir = TestDir::new("flows-bundle");
    let d = start_switch(&dir.path, vec![access(&dir.path, "a", 1)], |_| {});
    add(&d, "priority=1 actions=normal");
    let err = flows::add_flows(&d.switch, &lines("priority=5,ip actions=drop\npriority=6,udp,tp_dst=70000 actions=drop\npriority=7 actions=drop")).unwrap_err();
    assert!(err.starts_with("line 2, column "), "{err}");
    let err = flows::add_flows(
        &d.switch,
        &lines("priority=5,ip actions=drop\npriority=9 actions=controller:64"),
    )
    .unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("controller"),
        "{err}"
    );
    let all = flows::dump_flows(&d.switch, None).unwrap();
    assert_eq!(all.len(), 1, "only the flow from before: {all:?}");
    d.shutdown();
}

#[test]
fn trace_agrees_with_the_dataplane() {
    let dir = TestDir::new("flows-trace");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    add(
        &d,
        "priority=100,tcp,tp_dst=22 actions=resubmit(,1)\n\
         table=1,priority=1,tcp actions=output:c\n\
         priority=50,ip actions=drop",
    );
    let t = flows::trace(&d.switch, "in_port=a,tcp,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=22").unwrap();
    assert_eq!(t.steps.len(), 2, "{t:?}");
    assert_eq!(t.steps[1].table, 1);
    assert_eq!(t.outputs, vec!["output to c".to_string()]);
    let pkt = ip_packet(1, 2, "tcp", 22);
    send(&mut a, &pkt);
    assert_eq!(got(&mut c), Some(pkt), "the dataplane did what trace said");
    assert_eq!(got(&mut b), None);

    let t = flows::trace(
        &d.switch,
        "in_port=a,udp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=53",
    )
    .unwrap();
    assert_eq!(t.outputs, vec!["drop".to_string()]);
    send(&mut a, &ip_packet(1, 2, "udp", 53));
    assert_eq!((got(&mut b), got(&mut c)), (None, None));
    d.shutdown();
}

#[test]
fn table_miss_can_drop() {
    let dir = TestDir::new("flows-miss");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |c| c.settings.table_miss = MissPolicy::Drop,
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    send(&mut a, &arp(1));
    assert_eq!(got(&mut b), None, "no flows and miss=drop: nothing passes");
    add(&d, "priority=1,arp actions=normal");
    let f = arp(1);
    send(&mut a, &f);
    assert_eq!(got(&mut b), Some(f));
    d.shutdown();
}

/// Two push_vlan actions on a frame whose first bytes fill the rewrite buffer used to overrun
/// it and kill the dataplane thread: now both tags leave, with the whole frame behind them, and
/// the port keeps switching.
#[test]
fn double_push_vlan_on_large_frames_keeps_the_dataplane_running() {
    let dir = TestDir::new("flows-double-push");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    add(
        &d,
        "priority=100,in_port=a,dl_type=0x88b5 actions=push_vlan:0x8100,push_vlan:0x8100,output:b\n\
         priority=0 actions=normal",
    );
    let double_tagged = |f: &[u8]| push_tag(&push_tag(f, 0, 0), 0, 0);
    for (seq, len) in [(1, 98), (2, 100), (3, 1500), (4, 60), (5, 1500)] {
        let f = frame(BROADCAST, mac(1), seq, len);
        send(&mut a, &f);
        assert_eq!(
            got(&mut b),
            Some(double_tagged(&f)),
            "frame {seq} of {len} bytes leaves with two tags"
        );
    }
    // One tag more than a frame may get: dropped and counted, and the port keeps switching.
    let nine_pushes = ["push_vlan:0x8100"; 9].join(",");
    add(
        &d,
        &format!("priority=200,in_port=a,dl_src=02:00:00:00:00:03 actions={nine_pushes},output:b"),
    );
    send(&mut a, &frame(BROADCAST, mac(3), 6, 1500));
    assert_eq!(got(&mut b), None, "nine pushes: dropped");
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    assert!(
        body.lines()
            .any(|l| l == "patchbay_flow_vlan_tag_limit_drops_total 1"),
        "{body}"
    );
    // Frames that take the learning switch still flow too.
    let ping = ip_packet(1, 2, "icmp", 0);
    send(&mut a, &ping);
    assert_eq!(got(&mut b), Some(ping));
    d.shutdown();
}

/// Each table resubmitting twice into the next makes 2^20 paths: the packet is dropped whole
/// at the total resubmit limit (nothing output, counted), trace says why, and the switch
/// goes on switching.
#[test]
fn a_resubmit_explosion_is_dropped_whole_counted_and_traced() {
    let dir = TestDir::new("flows-resubmit-limit");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    let mut text: Vec<String> = (0..20)
        .map(|t| {
            format!(
                "table={t},priority=1 actions=resubmit(,{n}),resubmit(,{n})",
                n = t + 1
            )
        })
        .collect();
    text.push("table=20,priority=1 actions=output:b".to_string());
    add(&d, &text.join("\n"));

    send(&mut a, &ip_packet(1, 2, "udp", 53));
    assert_eq!(got(&mut b), None, "not one copy leaves");
    let body = patchbay_switch::metrics::render(&d.switch, &d.control_counters).unwrap();
    assert!(
        body.lines()
            .any(|l| l == "patchbay_flow_resubmit_limit_drops_total 1"),
        "{body}"
    );
    let t = flows::trace(&d.switch, "in_port=a,udp,nw_src=10.0.0.1,nw_dst=10.0.0.2").unwrap();
    assert_eq!(
        t.outputs,
        vec![format!(
            "drop: more than {} resubmits and goto_tables: packet dropped, nothing output",
            patchbay_switch::flow::pipeline::MAX_RESUBMITS
        )]
    );

    add(&d, "priority=100,icmp actions=output:b");
    let ping = ip_packet(1, 2, "icmp", 0);
    send(&mut a, &ping);
    assert_eq!(got(&mut b), Some(ping), "the port still switches");
    d.shutdown();
}

#[test]
fn groups_send_to_every_bucket_to_one_by_flow_hash_or_to_their_one() {
    let dir = TestDir::new("flows-groups");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    // A flow cannot use a group that does not exist.
    let refused = flows::add_flows(&d.switch, &lines("in_port=a,udp actions=group:1"));
    assert!(
        refused.is_err_and(|e| e.contains("group 1 does not exist")),
        "refused"
    );
    for g in [
        "group_id=1,type=all,bucket=output:b,bucket=output:c",
        "group_id=2,type=select,bucket=weight:1,actions=output:b,bucket=weight:1,actions=output:c",
        "group_id=3,type=indirect,bucket=actions=mod_nw_tos:16,output:c",
    ] {
        flows::add_group(&d.switch, g, false).expect("group accepted");
    }
    add(
        &d,
        "in_port=a,udp,tp_dst=1 actions=group:1\n\
         in_port=a,udp,tp_dst=2 actions=group:2\n\
         in_port=a,udp,tp_dst=3 actions=group:3",
    );
    // all: a copy to each bucket.
    let f = ip_packet(1, 9, "udp", 1);
    send(&mut a, &f);
    assert_eq!((got(&mut b), got(&mut c)), (Some(f.clone()), Some(f)));
    // select: each flow (source port) always to the same bucket, both buckets used.
    let mut to_b = 0;
    for sport in 0..64u16 {
        let mut f = ip_packet(1, 9, "udp", 2);
        f[34..36].copy_from_slice(&(1000 + sport).to_be_bytes());
        let mut first = None;
        for _ in 0..2 {
            send(&mut a, &f);
            let (in_b, in_c) = (got(&mut b).is_some(), got(&mut c).is_some());
            assert!(in_b != in_c, "exactly one bucket for flow {sport}");
            assert!(
                first.is_none_or(|x| x == in_b),
                "flow {sport} stays on its bucket"
            );
            first = Some(in_b);
        }
        to_b += usize::from(first == Some(true));
    }
    assert!((12..=52).contains(&to_b), "{to_b} of 64 flows to b");
    // indirect: its one bucket's actions (the copy is rewritten, checksums right).
    send(&mut a, &ip_packet(1, 9, "udp", 3));
    let out = got(&mut c).expect("to c");
    assert_eq!(out[15], 16, "TOS rewritten");
    assert!(checksums_ok(&out));
    let dump = flows::dump_groups(&d.switch);
    assert_eq!(dump.len(), 3);
    assert_eq!(
        (dump[0].packets, dump[1].packets, dump[2].packets),
        (1, 128, 1)
    );
    assert_eq!(
        dump[0].group,
        format!(
            "group_id=1,type=all,bucket=actions=output:{},bucket=actions=output:{}",
            d.switch.port_by_name("b").unwrap().id,
            d.switch.port_by_name("c").unwrap().id
        )
    );
    // Groups chain, but never in a loop.
    flows::add_group(&d.switch, "group_id=4,type=indirect,bucket=group:3", false).expect("a chain");
    let looped = flows::add_group(&d.switch, "group_id=3,type=indirect,bucket=group:4", true);
    assert!(
        looped.is_err_and(|e| e.contains("would reach itself")),
        "a loop is refused"
    );
    // Deleting a group takes the flows that use it.
    assert_eq!(flows::del_groups(&d.switch, Some(1)), Ok(1));
    assert_eq!(d.switch.flows().snapshot().len(), 2);
    let left = flows::dump_flows(&d.switch, None).unwrap();
    assert!(
        left.iter().all(|f| !f.actions_text.contains("group:1")),
        "{left:?}"
    );
    d.shutdown();
}

/// Sends `f` from `a` as fast as the test can for 1.5 s, counting what reaches `b`; asserts
/// the offer was at least twice `rate` (frames per second) and that `b` got `rate` a second
/// plus `burst` frames, within 10%. Returns (sent, delivered).
fn offer(
    a: &mut patchbay_tests::frontend::TestPort,
    b: &mut patchbay_tests::frontend::TestPort,
    f: &[u8],
    rate: f64,
    burst: f64,
) -> (u64, u64) {
    let (mut sent, mut delivered) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        send(a, f);
        sent += 1;
        while got(b).is_some() {
            delivered += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    while got(b).is_some() {
        delivered += 1;
    }
    assert!(
        sent as f64 >= 2.0 * rate * secs,
        "the test offered only {sent} frames in {secs:.2} s: not enough to test {rate}/s"
    );
    let expected = rate * secs + burst;
    let error = (delivered as f64 - expected).abs() / expected;
    assert!(
        error <= 0.10,
        "delivered {delivered} in {secs:.2} s, expected {expected:.0} (within 10%)"
    );
    (sent, delivered)
}

#[test]
fn a_meter_holds_a_flow_to_its_rate() {
    const RATE: u64 = 2000;
    let dir = TestDir::new("flows-meter");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    flows::add_meter(
        &d.switch,
        &format!("meter=1,pktps,burst,bands=type=drop,rate={RATE},burst_size=20"),
        false,
    )
    .expect("meter accepted");
    add(&d, "in_port=a,udp actions=meter:1,output:b");
    let f = ip_packet(1, 2, "udp", 9);
    let (sent, delivered) = offer(&mut a, &mut b, &f, RATE as f64, 20.0);
    let m = &flows::dump_meters(&d.switch)[0];
    assert_eq!((m.packets, m.dropped), (sent, sent - delivered));
    assert_eq!(
        m.meter,
        format!("meter=1,pktps,burst,bands=type=drop,rate={RATE},burst_size=20")
    );
    d.shutdown();
}

#[test]
fn a_kbps_meter_holds_a_flow_to_its_bit_rate() {
    const KBPS: u64 = 8000; // 1 MB/s: 1000 frames of 1000 bytes a second
    let dir = TestDir::new("flows-meter-kbps");
    let d = start_switch(
        &dir.path,
        vec![access(&dir.path, "a", 1), access(&dir.path, "b", 1)],
        |_| {},
    );
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    let spec = format!("meter=2,kbps,burst,bands=type=drop,rate={KBPS},burst_size=80");
    flows::add_meter(&d.switch, &spec, false).expect("meter accepted");
    add(&d, "in_port=a actions=meter:2,output:b");
    let f = frame(mac(2), mac(1), 0, 1000);
    // 1000-byte frames: KBPS / 8 frames per second, a burst of ten.
    let (sent, delivered) = offer(&mut a, &mut b, &f, KBPS as f64 / 8.0, 10.0);
    let m = &flows::dump_meters(&d.switch)[0];
    assert_eq!((m.packets, m.dropped), (sent, sent - delivered));
    assert_eq!(m.meter, spec);
    d.shutdown();
}

#[test]
fn a_policed_port_sends_at_its_rate_and_counts_the_rest() {
    const KBPS: u32 = 8000; // 1 MB/s: 1000 frames of 1000 bytes a second
    let dir = TestDir::new("flows-policing");
    let mut policed = access(&dir.path, "a", 1);
    policed.ingress_policing_rate = Some(KBPS);
    policed.ingress_policing_burst = Some(80); // ten frames
    let d = start_switch(&dir.path, vec![policed, access(&dir.path, "b", 1)], |_| {});
    let (mut a, mut b) = (connect(&dir, "a"), connect(&dir, "b"));
    // b announces itself first, so a's frames go to it alone.
    send(&mut b, &frame(mac(1), mac(2), 0, 60));
    while got(&mut a).is_some() {}
    let f = frame(mac(2), mac(1), 0, 1000);
    // 1000-byte frames: KBPS / 8 frames per second.
    let (sent, delivered) = offer(&mut a, &mut b, &f, f64::from(KBPS) / 8.0, 10.0);
    let info = d.switch.port_by_name("a").unwrap().info();
    let policed_drops = info
        .counters
        .drops
        .iter()
        .find(|(reason, _)| reason == "policed")
        .map(|(_, n)| *n);
    assert_eq!(policed_drops, Some(sent - delivered));
    assert_eq!(info.policing.as_deref(), Some("8000 kbit/s, burst 80 kbit"));
    d.shutdown();
}

#[test]
fn learn_builds_a_mac_learning_switch_out_of_flows() {
    let dir = TestDir::new("flows-learn");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    add(
        &d,
        "table=0 actions=learn(table=10,hard_timeout=300,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),resubmit(,10)\n\
         table=10,priority=0 actions=FLOOD",
    );
    // a to b: b is unknown, the frame floods; a is learned.
    let ab = frame(mac(2), mac(1), 0, 60);
    send(&mut a, &ab);
    assert_eq!(
        (got(&mut b), got(&mut c)),
        (Some(ab.clone()), Some(ab.clone()))
    );
    // b answers: to a only, by the flow learned from a's frame.
    let ba = frame(mac(1), mac(2), 0, 60);
    send(&mut b, &ba);
    assert_eq!((got(&mut a), got(&mut c)), (Some(ba), None));
    send(&mut a, &ab);
    assert_eq!((got(&mut b), got(&mut c)), (Some(ab), None));
    let learned = flows::dump_flows(&d.switch, Some("table=10")).unwrap();
    assert_eq!(learned.len(), 3, "{learned:?}");
    assert!(learned
        .iter()
        .any(|f| f.match_text == "dl_dst=02:00:00:00:00:01"
            && f.actions_text == format!("output:{}", d.switch.port_by_name("a").unwrap().id)
            && f.hard_timeout == 300));
    d.shutdown();
}

#[test]
fn a_fast_failover_group_moves_to_its_backup_when_the_watched_port_goes_down() {
    let dir = TestDir::new("flows-ff");
    let d = start_switch(
        &dir.path,
        vec![
            access(&dir.path, "a", 1),
            access(&dir.path, "b", 1),
            access(&dir.path, "c", 1),
        ],
        |_| {},
    );
    let (mut a, mut b, mut c) = (connect(&dir, "a"), connect(&dir, "b"), connect(&dir, "c"));
    flows::add_group(
        &d.switch,
        "group_id=7,type=fast_failover,bucket=watch_port:b,actions=output:b,bucket=watch_port:c,actions=output:c",
        false,
    )
    .expect("group accepted");
    add(&d, "in_port=a actions=group:7");
    let f = frame(mac(9), mac(1), 0, 60);
    send(&mut a, &f);
    assert_eq!(
        (got(&mut b), got(&mut c)),
        (Some(f.clone()), None),
        "b while it is up"
    );
    // b's guest goes away: the same flow now leaves through c.
    drop(b);
    patchbay_tests::switch::eventually("frames move to c", || {
        send(&mut a, &f);
        got(&mut c).is_some()
    });
    d.shutdown();
}
