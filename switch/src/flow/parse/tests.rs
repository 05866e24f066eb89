use super::*;

fn add(s: &str) -> FlowSpec {
    match parse_flow(s, FlowSyntax::Add) {
        Ok(f) => f,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn add_err(s: &str) -> ParseError {
    match parse_flow(s, FlowSyntax::Add) {
        Ok(f) => panic!("{s}: parsed as {f}"),
        Err(e) => e,
    }
}

/// The rows of a `COLUMN | MESSAGE PREFIX | FLOW` table.
fn rows(table: &str) -> Vec<(&str, usize, &str)> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let parts: Vec<&str> = l.splitn(3, " | ").collect();
            let col = parts[0].trim().parse().expect("a column");
            (parts[2], col, parts[1])
        })
        .collect()
}

/// Parses, prints, reparses, and returns the printed form.
fn round_trip(s: &str, syntax: FlowSyntax) -> String {
    let a = parse_flow(s, syntax).unwrap_or_else(|e| panic!("{s}: {e}"));
    let text = a.to_string();
    let b = parse_flow(&text, syntax).unwrap_or_else(|e| panic!("{s} -> {text}: {e}"));
    assert_eq!(a, b, "{s} -> {text}");
    text
}

#[test]
fn flow_defaults() {
    let f = add("actions=drop");
    assert_eq!(f.table, Some(0));
    assert_eq!(f.priority, DEFAULT_PRIORITY);
    assert_eq!(f.m, Match::any());
    assert!(f.actions.is_empty());
    assert_eq!((f.cookie, f.cookie_mask, f.new_cookie), (0, None, None));
    assert_eq!((f.idle_timeout, f.hard_timeout), (0, 0));
    assert_eq!(f.to_string(), "actions=drop");
    assert_eq!(add("actions=").actions, vec![]);
    assert_eq!(
        add("table=0,priority=32768,actions=drop").to_string(),
        "actions=drop"
    );
    let m = parse_flow("", FlowSyntax::MatchOnly).unwrap();
    assert_eq!(m.table, None);
    assert_eq!(m.to_string(), "");
}

#[test]
fn flow_canonical_printing() {
    let cases = [
        (
            "priority=100,ip,in_port=vm1,nw_src=10.0.0.0/24,actions=output:2",
            "priority=100,ip,in_port=vm1,nw_src=10.0.0.0/24 actions=output:2",
        ),
        (
            "nw_src=10.0.0.0/255.255.255.0 ip in_port=1 actions=2",
            "ip,in_port=1,nw_src=10.0.0.0/24 actions=output:2",
        ),
        (
            "dl_type=0x0800,nw_proto=6,actions=normal",
            "tcp actions=NORMAL",
        ),
        (
            "ip,nw_proto=17,tp_dst=53,actions=all",
            "udp,tp_dst=53 actions=ALL",
        ),
        (
            "ip,nw_proto=47,actions=flood",
            "ip,nw_proto=47 actions=FLOOD",
        ),
        (
            "dl_type=0x0806,nw_proto=1,actions=in_port",
            "arp,arp_op=1 actions=IN_PORT",
        ),
        (
            "arp,nw_src=10.0.0.1,actions=drop",
            "arp,arp_spa=10.0.0.1 actions=drop",
        ),
        (
            "icmp,icmp_code=0,icmp_type=8,actions=drop",
            "icmp,icmp_type=8,icmp_code=0 actions=drop",
        ),
        (
            "tcp,tp_dst=0x60/0xffe0,actions=drop",
            "tcp,tp_dst=0x60/0xffe0 actions=drop",
        ),
        ("tcp,tcp_dst=80,actions=drop", "tcp,tp_dst=80 actions=drop"),
        (
            "dl_vlan=10,dl_vlan_pcp=3,actions=drop",
            "dl_vlan=10,dl_vlan_pcp=3 actions=drop",
        ),
        (
            "dl_vlan=0xffff,actions=drop",
            "vlan_tci=0x0000 actions=drop",
        ),
        (
            "vlan_tci=0/0xfff,actions=drop",
            "vlan_tci=0x0000/0x0fff actions=drop",
        ),
        (
            "vlan_tci=0x1000/0x1000,actions=drop",
            "vlan_tci=0x1000/0x1000 actions=drop",
        ),
        (
            "vlan_tci=0x1005/0x1fff,actions=drop",
            "dl_vlan=5 actions=drop",
        ),
        ("dl_type=0x88cc,actions=drop", "dl_type=0x88cc actions=drop"),
        ("eth_type=0x86dd,actions=drop", "ipv6 actions=drop"),
        (
            "tun_id=0x5/0xff,tun_src=1.2.3.4,tun_dst=10.0.0.0/8,actions=drop",
            "tun_id=0x5/0xff,tun_src=1.2.3.4,tun_dst=10.0.0.0/8 actions=drop",
        ),
        ("ip,nw_tos=16,actions=drop", "ip,nw_tos=16 actions=drop"),
        (
            "cookie=0x10,table=3,idle_timeout=10,hard_timeout=20,priority=7,actions=drop",
            "cookie=0x10, table=3, idle_timeout=10, hard_timeout=20, priority=7 actions=drop",
        ),
        ("cookie=5,actions=drop", "cookie=0x5, actions=drop"),
        (
            "in_port=\"phy-br-ex\",actions=output:\"a b\"",
            "in_port=phy-br-ex actions=output:\"a b\"",
        ),
        ("in_port=\"7\",actions=drop", "in_port=\"7\" actions=drop"),
    ];
    for (input, want) in cases {
        assert_eq!(add(input).to_string(), want, "{input}");
        round_trip(input, FlowSyntax::Add);
    }
}

#[test]
fn flow_actions_print_and_round_trip() {
    let cases = [
        ("actions=output:2,3,vm1", "output:2,output:3,output:vm1"),
        ("actions=NORMAL", "NORMAL"),
        (
            "actions=output:in_port,output:flood,output:ALL",
            "IN_PORT,FLOOD,ALL",
        ),
        (
            "actions=mod_vlan_vid:20,resubmit(,2)",
            "mod_vlan_vid:20,resubmit(,2)",
        ),
        (
            "actions=mod_vlan_pcp:5,strip_vlan,pop_vlan",
            "mod_vlan_pcp:5,strip_vlan,strip_vlan",
        ),
        (
            "actions=push_vlan:0x8100,set_field:4196->vlan_vid",
            "push_vlan:0x8100,mod_vlan_vid:100",
        ),
        ("actions=set_field:3->vlan_pcp", "mod_vlan_pcp:3"),
        (
            "actions=mod_dl_src:0E:00:00:00:00:01,mod_dl_dst=0:1:2:3:4:5",
            "mod_dl_src:0e:00:00:00:00:01,mod_dl_dst:00:01:02:03:04:05",
        ),
        (
            "actions=set_field:0e:00:00:00:00:01->eth_src,set_field:00:01:02:03:04:05->dl_dst",
            "set_field:0e:00:00:00:00:01->eth_src,set_field:00:01:02:03:04:05->eth_dst",
        ),
        (
            "actions=set_tunnel:5001,set_tunnel64:0xffffff",
            "set_tunnel:0x1389,set_tunnel:0xffffff",
        ),
        ("actions=set_field:100->tun_id", "set_tunnel:0x64"),
        (
            "actions=resubmit:3,resubmit(vm2,4),resubmit(5,)",
            "resubmit:3,resubmit(vm2,4),resubmit:5",
        ),
        ("actions=resubmit(in_port,7)", "resubmit(,7)"),
        ("actions=dec_ttl,goto_table:3", "dec_ttl,goto_table:3"),
        ("actions=note:00.11.2233,NORMAL", "note:00.11.22.33,NORMAL"),
        ("actions=note:", "note:"),
        (
            "actions=mod_vlan_vid:10 output:1",
            "mod_vlan_vid:10,output:1",
        ),
    ];
    for (input, want) in cases {
        let f = add(input);
        assert_eq!(format_actions(&f.actions), want, "{input}");
        round_trip(input, FlowSyntax::Add);
    }
    let f = add(
        "tcp,actions=mod_nw_src:10.0.0.1,mod_nw_dst:10.0.0.2,mod_nw_tos:8,mod_tp_src:1,\
         mod_tp_dst:2,set_field:1.2.3.4->ip_src,set_field:80->tcp_dst,set_field:4->ip_dscp",
    );
    assert_eq!(
        format_actions(&f.actions),
        "mod_nw_src:10.0.0.1,mod_nw_dst:10.0.0.2,mod_nw_tos:8,mod_tp_src:1,mod_tp_dst:2,\
         set_field:1.2.3.4->ip_src,set_field:80->tp_dst,mod_nw_tos:16"
    );
    round_trip(&f.to_string(), FlowSyntax::Add);
    assert_eq!(format_actions(&[]), "drop");
}

#[test]
fn flow_match_values_and_masks() {
    let f = add("dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=drop");
    assert_eq!(f.m.get(Field::DlDst), (0x0100_0000_0000, 0x0100_0000_0000));
    let f = add("ip,nw_src=10.1.2.3/16,nw_dst=192.168.0.1,actions=drop");
    assert_eq!(f.m.get(Field::NwSrc), (0x0a01_0000, 0xffff_0000));
    assert_eq!(f.m.get(Field::NwDst), (0xc0a8_0001, 0xffff_ffff));
    let f = add("ip,nw_src=10.0.0.0/255.0.255.0,actions=drop");
    assert_eq!(f.m.get(Field::NwSrc), (0x0a00_0000, 0xff00_ff00));
    assert_eq!(format_match(&f.m), "ip,nw_src=10.0.0.0/255.0.255.0");
    let f = add("ip,nw_src=0.0.0.0/0,actions=drop");
    assert_eq!(f.m.get(Field::NwSrc), (0, 0));
    let f = add("dl_vlan=5,actions=drop");
    assert_eq!(f.m.get(Field::VlanTci), (0x1005, 0x1fff));
    let f = add("dl_vlan_pcp=5,actions=drop");
    assert_eq!(f.m.get(Field::VlanTci), (0xb000, 0xf000));
    let f = add("dl_vlan=0xffff,actions=drop");
    assert_eq!(f.m.get(Field::VlanTci), (0, 0xffff));
    let f = add("udp,tp_src=0x1000/0xf000,actions=drop");
    assert_eq!(f.m.get(Field::TpSrc), (0x1000, 0xf000));
    let f = add("tun_id=0x1234/0xff00,actions=drop");
    assert_eq!(f.m.get(Field::TunId), (0x1200, 0xff00));
    let f = add("arp,arp_op=2,arp_tpa=10.0.0.1,actions=drop");
    assert_eq!(f.m.get(Field::NwProto), (2, 0xff));
    assert_eq!(f.m.get(Field::NwDst), (0x0a00_0001, 0xffff_ffff));
    let f = add("icmp,icmp_type=8,icmp_code=0,actions=drop");
    assert_eq!(f.m.get(Field::TpSrc), (8, 0xffff));
    assert_eq!(f.m.get(Field::TpDst), (0, 0xffff));
    // in_port waits for resolve().
    let f = add("in_port=vm1,actions=output:vm2,resubmit(vm3,2)");
    assert_eq!(f.in_port, Some(PortRef::Name("vm1".into())));
    assert_eq!(f.m.get(Field::InPort), (0, 0));
    // Redundant agreement is fine.
    add("ip,udp,dl_type=0x0800,actions=drop");
}

#[test]
fn flow_resolve_ports() {
    let f = add("in_port=vm1,actions=output:vm2,resubmit(vm3,2),output:7");
    let lookup = |n: &str| match n {
        "vm1" => Some(1),
        "vm2" => Some(2),
        "vm3" => Some(3),
        _ => None,
    };
    let r = f.resolve(lookup).unwrap();
    assert_eq!(r.m.get(Field::InPort), (1, 0xffff));
    assert_eq!(r.in_port, Some(PortRef::Name("vm1".into())));
    assert_eq!(
        r.actions,
        vec![
            Action::Output(PortRef::Number(2)),
            Action::Resubmit {
                port: Some(PortRef::Number(3)),
                table: Some(2)
            },
            Action::Output(PortRef::Number(7)),
        ]
    );
    assert_eq!(
        r.to_string(),
        "in_port=vm1 actions=output:2,resubmit(3,2),output:7"
    );
    let r = add("in_port=4,actions=drop").resolve(lookup).unwrap();
    assert_eq!(r.m.get(Field::InPort), (4, 0xffff));
    let e = add("actions=output:vm9").resolve(lookup).unwrap_err();
    assert_eq!(e.column, 0);
    assert_eq!(e.to_string(), "output: unknown port 'vm9'");
    let m = parse_flow("out_port=vm2", FlowSyntax::MatchOnly).unwrap();
    assert_eq!(
        m.resolve(lookup).unwrap().out_port,
        Some(PortRef::Number(2))
    );
}

#[test]
fn flow_match_only_and_modify() {
    let m = parse_flow("table=10", FlowSyntax::MatchOnly).unwrap();
    assert_eq!(m.table, Some(10));
    assert_eq!(round_trip("table=0", FlowSyntax::MatchOnly), "table=0");
    assert_eq!(
        parse_flow("table=255", FlowSyntax::MatchOnly)
            .unwrap()
            .table,
        None
    );
    let m = parse_flow("cookie=0x5/-1, out_port=2, tcp", FlowSyntax::MatchOnly).unwrap();
    assert_eq!((m.cookie, m.cookie_mask), (5, Some(u64::MAX)));
    assert_eq!(m.out_port, Some(PortRef::Number(2)));
    assert_eq!(
        round_trip("cookie=0x5/-1,out_port=2,tcp", FlowSyntax::MatchOnly),
        "cookie=0x5/-1, out_port=2, tcp"
    );
    let m = parse_flow("cookie=0x15/0xf0", FlowSyntax::MatchOnly).unwrap();
    assert_eq!((m.cookie, m.cookie_mask), (0x10, Some(0xf0)));
    round_trip("cookie=0x15/0xf0,priority=5", FlowSyntax::MatchOnly);
    let m = parse_flow("cookie=7", FlowSyntax::MatchOnly).unwrap();
    assert_eq!((m.cookie, m.cookie_mask), (7, Some(u64::MAX)));

    let m = parse_flow(
        "cookie=1/-1,cookie=2,in_port=3,actions=drop",
        FlowSyntax::Modify,
    )
    .unwrap();
    assert_eq!(
        (m.cookie, m.cookie_mask, m.new_cookie),
        (1, Some(u64::MAX), Some(2))
    );
    assert_eq!(m.table, None);
    assert_eq!(
        round_trip(
            "cookie=1/-1,cookie=2,in_port=3,actions=drop",
            FlowSyntax::Modify
        ),
        "cookie=0x1/-1, cookie=0x2, in_port=3 actions=drop"
    );
    let e = parse_flow("ip actions=drop", FlowSyntax::MatchOnly).unwrap_err();
    assert_eq!(e.column, 4);
    assert!(e.message.contains("actions are not allowed"), "{e}");
    let e = parse_flow("idle_timeout=5", FlowSyntax::MatchOnly).unwrap_err();
    assert!(e.message.contains("idle_timeout"), "{e}");
    let e = parse_flow("ip", FlowSyntax::Modify).unwrap_err();
    assert!(e.message.contains("missing actions"), "{e}");
}

#[test]
fn flow_prerequisites() {
    const CASES: &str = r#"
      1 | nw_src requires dl_type=0x0800 (ip) or 0x0806 (arp) | nw_src=10.0.0.1,actions=drop
     16 | nw_dst requires dl_type=0x0800 (ip) or 0x0806 (arp) | dl_type=0x86dd,nw_dst=10.0.0.1,actions=drop
      5 | nw_tos requires ip or ipv6 | arp,nw_tos=4,actions=drop
      4 | arp_spa requires dl_type=0x0806 (arp) | ip,arp_spa=10.0.0.1,actions=drop
      4 | tp_dst requires tcp or udp | ip,tp_dst=80,actions=drop
     17 | tp_dst requires tcp or udp | ip,nw_proto=132,tp_dst=80,actions=drop
      5 | tcp_dst requires tcp | udp,tcp_dst=80,actions=drop
      5 | icmp_type requires icmp | tcp,icmp_type=8,actions=drop
      1 | ip_proto requires dl_type=0x0800 (ip) | ip_proto=6,actions=drop
      9 | mod_nw_src requires dl_type=0x0800 (ip) | actions=mod_nw_src:1.2.3.4
     12 | mod_tp_dst requires tcp or udp | ip,actions=mod_tp_dst:80
     13 | set_field:...->tcp_dst requires tcp | udp,actions=set_field:80->tcp_dst
"#;
    for (input, col, msg) in rows(CASES) {
        let e = add_err(input);
        assert_eq!(e.column, col, "{input}: {e}");
        assert!(e.message.starts_with(msg), "{input}: {e}");
    }
    // Order does not matter, as in ovs-ofctl.
    add("nw_src=10.0.0.1,ip,actions=drop");
    add("tp_dst=80,tcp,actions=drop");
    add("arp,nw_dst=10.0.0.1,nw_proto=2,actions=drop");
    // DSCP and ports are matched and rewritten over IPv6 too.
    add("ipv6,nw_tos=184,actions=mod_nw_tos:0,set_field:8->ip_dscp,normal");
    add("tcp6,tp_dst=80,actions=mod_tp_dst:8080,set_field:1->tcp_src,normal");
    add("udp6,actions=mod_tp_src:53,set_field:5353->udp_dst,set_field:1->tp_dst,normal");
}

#[test]
fn flow_tunnel_ids_beyond_24_bits_are_refused() {
    // Each would have become another network's VNI (0x1000005 -> 5) when sent.
    const CASES: &str = r#"
     20 | set_tunnel | 0x1000005 | actions=set_tunnel:0x1000005
     22 | set_tunnel64 | 0x100000000 | actions=set_tunnel64:0x100000000
     20 | set_tunnel | 0xffffffffffffffff | actions=set_tunnel:0xffffffffffffffff
     19 | tun_id | 0x1000005 | actions=set_field:0x1000005->tun_id
     19 | tunnel_id | 0x1000000 | actions=set_field:16777216->tunnel_id
      8 | tun_id | 0x1000005 | tun_id=0x1000005,actions=drop
      8 | tun_id | 0x1000000 | tun_id=0x1000000/0x1000000,actions=drop
     11 | tunnel_id | 0x100000005 | tunnel_id=0x100000005/0xff,actions=drop
    "#;
    for line in CASES.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let (column, what, value, flow) = (parts[0], parts[1], parts[2], parts[3]);
        let e = add_err(flow);
        assert_eq!(e.column.to_string(), column, "{flow}: {e}");
        assert!(
            e.message
                .starts_with(&format!("{what}: tunnel ID {value} "))
                && e.message.contains("24 bits"),
            "{flow}: {e}"
        );
    }
    // The largest VNI, and masks wider than 24 bits (their high bits match 0).
    assert_eq!(
        add("actions=set_tunnel:0xffffff").actions,
        vec![Action::SetTunnel(0xff_ffff)]
    );
    assert_eq!(
        add("actions=set_field:0xffffff->tun_id").actions,
        vec![Action::SetTunnel(0xff_ffff)]
    );
    assert_eq!(
        add("tun_id=0xffffff,actions=drop").m.get(Field::TunId),
        (0xff_ffff, u64::MAX)
    );
    assert_eq!(
        add("tun_id=0x5/0xffffffffffffffff,actions=drop")
            .m
            .get(Field::TunId),
        (5, u64::MAX)
    );
    // load and move reach only the low 24 bits of the tunnel ID.
    assert!(add_err("actions=load:0x1000005->NXM_NX_TUN_ID[]")
        .message
        .contains("reaches beyond bit 23 of tun_id"));
    assert!(add_err("actions=move:NXM_NX_REG0[]->NXM_NX_TUN_ID[0..31]")
        .message
        .contains("reaches beyond bit 23 of tun_id"));
    assert!(parse_flow(
        "actions=load:0xfffff->NXM_NX_TUN_ID[0..19]",
        FlowSyntax::Add
    )
    .is_ok());
}

#[test]
fn flow_errors_name_the_thing_and_column() {
    const CASES: &str = r#"
     10 | ct_state: unknown flag 'foo' | ct_state=+foo,actions=drop
     15 | tcp_flags: unknown flag 'sin' | tcp,tcp_flags=+sin,actions=drop
     14 | ct_state: 'trk' given twice | ct_state=+trk+trk,actions=drop
     14 | ct_state: flags take no mask | ct_state=+trk/0x20,actions=drop
      4 | unsupported field 'reg16' | ip,reg16=1,actions=drop
      4 | unsupported field 'reg01' | ip,reg01=1,actions=drop
      1 | unsupported field 'ipv7' | ipv7,actions=drop
     15 | ipv6_src: invalid IPv6 address | ipv6,ipv6_src=1::2::3,actions=drop
      1 | ipv6_src requires dl_type=0x86dd (ipv6): add 'ipv6' to the match | ipv6_src=::1,actions=drop
      5 | ct_nw_src requires dl_type=0x0800 (ip) | arp,ct_nw_src=1.1.1.1,actions=drop
     22 | ct: nat is not supported | ip,actions=ct(commit,nat)
     22 | ct: alg= is not supported | ip,actions=ct(commit,alg=ftp)
     12 | ct: force needs commit | ip,actions=ct(force)
     15 | ct: unsupported option 'foo' | ip,actions=ct(foo=1)
     15 | ct: exec(...) needs commit | ip,actions=ct(exec(set_field:1->ct_mark))
     40 | ct exec: only ct_mark and ct_label can be set | ip,actions=ct(commit,exec(set_field:1->reg0))
     37 | ct_mark is 32 bits | ip,actions=ct(commit,exec(set_field:1/0x1ffffffff->ct_mark))
      9 | ct requires ip or ipv6 | actions=ct(commit)
     20 | ct zone: NXM_NX_REG6[0..7] is 8 bits | ip,actions=ct(zone=NXM_NX_REG6[0..7])
     12 | ct needs its options in parentheses | ip,actions=ct,output:1
     14 | load: 0x100 does not fit in the 8 bits | actions=load:0x100->NXM_NX_REG0[0..7]
     17 | load: NXM_OF_ETH_TYPE cannot be written | actions=load:1->NXM_OF_ETH_TYPE[]
     17 | load: arp_spa cannot be written | actions=load:1->arp_spa[]
     17 | load: unknown or unsupported field 'NXM_NX_REG16' | actions=load:1->NXM_NX_REG16[]
     14 | move: NXM_NX_REG0[0..40] is beyond the field (NXM_NX_REG0 is 32 bits) | actions=move:NXM_NX_REG0[0..40]->NXM_NX_XXREG0[]
     32 | move: the source is 16 bits and the destination 32 bits | actions=move:NXM_OF_IN_PORT[]->NXM_NX_REG6[]
     17 | load of NXM_OF_IP_SRC requires dl_type=0x0800 (ip) | actions=load:1->NXM_OF_IP_SRC[]
     12 | set_field:...->ipv6_src requires dl_type=0x86dd | ip,actions=set_field:::1->ipv6_src
     12 | set_field:...->arp_spa requires dl_type=0x0806 | ip,actions=set_field:1.2.3.4->arp_spa
     13 | mod_nw_ttl requires ip or ipv6 | arp,actions=mod_nw_ttl:5
     23 | conjunction needs (ID, K/N) | actions=conjunction(1,3/2)
     23 | conjunction needs (ID, K/N) | actions=conjunction(1,1/1)
      9 | conjunction(...) cannot be mixed | actions=conjunction(1,1/2),output:1
     22 | load: bit range [5..2] is backwards | actions=load:1->reg0[5..2]
      1 | unsupported flag 'send_flow_rem' | send_flow_rem,actions=drop
     24 | learn: 'limit' is not supported | actions=learn(table=10,limit=5,NXM_OF_VLAN_TCI[0..11])
     33 | learn load: NXM_OF_ETH_TYPE cannot be written | actions=learn(table=1,load:0x1->NXM_OF_ETH_TYPE[])
     32 | learn: a match's two sides differ in width | actions=learn(NXM_OF_ETH_DST[]=NXM_NX_REG0[])
     26 | learn of NXM_OF_IP_SRC: the learned flow requires dl_type=0x0800 (ip); match it inside | ip,actions=learn(table=1,NXM_OF_IP_SRC[])
     38 | learn of NXM_OF_IP_SRC requires dl_type=0x0800 | actions=learn(table=1,eth_type=0x800,NXM_OF_IP_SRC[])
     28 | learn load: 0x1ff does not fit in the 8 bits | actions=learn(table=1,load:0x1ff->NXM_NX_REG0[0..7])
     41 | learn: 300 does not fit in the 8 bits | actions=learn(table=1,NXM_NX_REG0[0..7]=300)
     28 | learn load: 0x100000005 reaches beyond bit 23 of tun_id | actions=learn(table=1,load:0x100000005->NXM_NX_TUN_ID[])
     28 | learn: load to NXM_NX_TUN_ID[0..31] reaches beyond bit 23 | actions=learn(table=1,load:NXM_NX_REG0[]->NXM_NX_TUN_ID[0..31])
      9 | unsupported action 'CONTROLLER' | actions=CONTROLLER:96
      9 | unsupported port 'LOCAL' | actions=LOCAL
     16 | unsupported port 'CONTROLLER' | actions=output:controller
     22 | unsupported field 'reg16' for set_field | actions=set_field:1->reg16
     20 | set_field with a mask | actions=set_field:1/1->tun_id
     10 | priority=70000 is out of range (0-65535) | priority=70000,actions=drop
      7 | table=255 is out of range | table=255,actions=drop
      9 | dl_vlan=4096 is out of range (0-4095) (or 0xffff | dl_vlan=4096,actions=drop
     13 | dl_vlan_pcp=8 is out of range (0-7) | dl_vlan_pcp=8,actions=drop
     10 | dl_vlan does not take a mask | dl_vlan=5/0xfff,actions=drop
     15 | dl_type does not take a mask | dl_type=0x0800/0xff00,actions=drop
     12 | tp_dst=65536 is out of range | tcp,tp_dst=65536,actions=drop
     11 | nw_src: invalid IPv4 address | ip,nw_src=10.0.0.256,actions=drop
     20 | nw_src prefix length=33 is out of range | ip,nw_src=10.0.0.0/33,actions=drop
      8 | dl_src: invalid Ethernet address | dl_src=00:11:22:33:44,actions=drop
     11 | nw_tos=5 is invalid | ip,nw_tos=5,actions=drop
      9 | in_port: port 99999 is out of range | in_port=99999,actions=drop
      9 | in_port: unsupported port 'LOCAL' | in_port=LOCAL,actions=drop
     12 | arp_op=256 is out of range (0-255) | arp,arp_op=256,actions=drop
     10 | priority: invalid number 'abc' | priority=abc,actions=drop
      1 | 'priority' needs a value | priority,actions=drop
      4 | 'ip' takes no value | ip=1,actions=drop
      5 | udp conflicts with an earlier match | tcp,udp,actions=drop
     19 | nw_src conflicts | ip,nw_src=1.1.1.1,nw_src=2.2.2.2,actions=drop
     16 | dl_vlan_pcp conflicts | dl_vlan=0xffff,dl_vlan_pcp=3,actions=drop
     12 | duplicate 'priority' | priority=1,priority=2,actions=drop
      9 | add-flow cannot use a cookie mask | cookie=1/1,actions=drop
      1 | out_port is only allowed | out_port=1,actions=drop
      3 | missing actions= | ip
      3 | missing actions= | ip  
      9 | 'drop' must be the only action | actions=drop,output:1
      9 | 'output' needs an argument | actions=output
     16 | 'output' needs an argument | actions=output:
      9 | 'normal' takes no argument | actions=normal:1
     22 | mod_vlan_vid=4096 is out of range (0-4095) | actions=mod_vlan_vid:4096
     22 | mod_vlan_pcp=9 is out of range (0-7) | actions=mod_vlan_pcp:9
     19 | push_vlan:0x88a8: only 0x8100 | actions=push_vlan:0x88a8
      9 | goto_table must be the last action | actions=goto_table:1,output:2
     17 | goto_table:2 must go to a later table | table=3,actions=goto_table:2
     28 | goto_table=255 is out of range (0-254) | table=3,actions=goto_table:255
     19 | resubmit table=256 is out of range | actions=resubmit(,256)
     18 | unsupported resubmit option 'ct' | actions=resubmit(1,2,ct)
      9 | resubmit needs a port or a table | actions=resubmit(,)
     14 | note: expected pairs of hex digits | actions=note:0g
     16 | note: expected pairs of hex digits | actions=note:123
     16 | output: unsupported port 'NXM_NX_REG0[0..15]' | actions=output:NXM_NX_REG0[0..15]
     17 | 'resubmit(' has no matching ')' | actions=resubmit(,1
     21 | expected ',' after ')' | actions=resubmit(,1)x
      9 | unterminated quoted string | in_port="abc,actions=drop
     11 | missing value after 'nw_src=' | ip,nw_src=,actions=drop
      1 | expected a name before '=' | =5,actions=drop
      1 | unsupported field 'dec_ttl(...)' | dec_ttl(1),actions=drop
      9 | unsupported action 'dec_ttl(...)' | actions=dec_ttl(1,2)
"#;
    for (input, col, msg) in rows(CASES) {
        let e = add_err(input);
        assert!(
            e.message.starts_with(msg),
            "{input}: got '{}', want '{msg}'",
            e.message
        );
        assert_eq!(e.column, col, "{input}: {e}");
        assert_eq!(e.to_string(), format!("column {col}: {}", e.message));
    }
}

#[test]
fn flow_columns_count_characters() {
    // 'é' is two bytes; the column is in characters.
    let e = add_err("in_port=é1,ip,foo=1,actions=drop");
    assert_eq!(e.column, 15, "{e}");
}

#[test]
fn flow_dump_flows_output_is_accepted() {
    let s = " cookie=0x98005a9960fa437, duration=4059.955s, table=0, n_packets=89, \
             n_bytes=6784, idle_age=5, priority=1,in_port=\"patch-int\" actions=resubmit(,2)";
    let f = add(s);
    assert_eq!(f.cookie, 0x98005a9960fa437);
    assert_eq!(f.in_port, Some(PortRef::Name("patch-int".into())));
    assert_eq!(
        f.to_string(),
        "cookie=0x98005a9960fa437, priority=1,in_port=patch-int actions=resubmit(,2)"
    );
}

#[test]
fn flow_file_errors_say_line_and_column() {
    let text = "# comment\n\ntable=0, priority=0, actions=resubmit(,1)  # trailing\n\
                in_port=1 actions=2\n  ip,nw_src=1.2.3.4/40,actions=drop\n";
    let e = parse_flows_file(text).unwrap_err();
    assert_eq!((e.line, e.column), (5, 21), "{e}");
    assert!(
        e.to_string()
            .starts_with("line 5, column 21: nw_src prefix length"),
        "{e}"
    );
    let ok = parse_flows_file("table=1,actions=drop\n\n# x\nin_port=\"a#b\",actions=drop # c\n")
        .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].in_port, Some(PortRef::Name("a#b".into())));
}

#[test]
fn flow_registers_conntrack_and_ipv6_round_trip() {
    // Lines in the style of Neutron's OVS firewall driver and OVN: (input, dump-flows form).
    let cases = [
        (
            "table=0,priority=100,in_port=1,actions=load:0x1->NXM_NX_REG5[],load:0x5->NXM_NX_REG6[],resubmit(,71)",
            "priority=100,in_port=1 actions=load:0x1->NXM_NX_REG5[],load:0x5->NXM_NX_REG6[],resubmit(,71)",
        ),
        (
            "table=72,priority=90,ct_state=-trk,ip,reg5=0x1,actions=ct(table=73,zone=NXM_NX_REG6[0..15])",
            "table=72, priority=90,ip,ct_state=-trk,reg5=0x1 actions=ct(zone=NXM_NX_REG6[0..15],table=73)",
        ),
        (
            "table=73,priority=77,ct_state=+est-rel-rpl,tcp,reg5=0x1,tp_dst=22,actions=resubmit(,74)",
            "table=73, priority=77,tcp,ct_state=+est-rel-rpl,reg5=0x1,tp_dst=22 actions=resubmit(,74)",
        ),
        (
            "table=74,ct_state=+new-est,ipv6,reg6=0x5/0xffff,actions=ct(commit,zone=NXM_NX_REG6[0..15],exec(set_field:0x1->ct_mark,set_field:0x10/0xff->ct_label)),output:2",
            "table=74, ipv6,ct_state=+new-est,reg6=0x5/0xffff actions=ct(commit,zone=NXM_NX_REG6[0..15],exec(set_field:0x1->ct_mark,set_field:0x10/0xff->ct_label)),output:2",
        ),
        (
            "ip,actions=ct(force,commit,zone=3)",
            "ip actions=ct(commit,force,zone=3)",
        ),
        (
            "tcp,tcp_flags=syn-ack+fin,actions=drop",
            "tcp,tcp_flags=+fin+syn-ack actions=drop",
        ),
        (
            "tcp,tcp_flags=0x800/0x800,actions=drop",
            "tcp,tcp_flags=0x800/0x800 actions=drop",
        ),
        (
            "ct_state=0x21,ip,actions=drop",
            "ip,ct_state=+new-est-rel-rpl-inv+trk-snat-dnat actions=drop",
        ),
        (
            "ct_state=+trk+inv,ip,actions=drop",
            "ip,ct_state=+inv+trk actions=drop",
        ),
        (
            "ct_state=0x21/0x21,ct_zone=5,ct_mark=0x1/0x1,ct_label=0x1/0x1,ip,ct_nw_src=10.0.0.1,ct_nw_proto=6,ct_tp_dst=22,actions=ct_clear,resubmit(,1)",
            "ip,ct_state=+new+trk,ct_zone=5,ct_mark=0x1/0x1,ct_label=0x1/0x1,ct_nw_src=10.0.0.1,ct_nw_proto=6,ct_tp_dst=22 actions=ct_clear,resubmit(,1)",
        ),
        (
            "metadata=0x5,xreg1=0x100000002,actions=move:NXM_OF_IN_PORT[]->NXM_NX_REG6[0..15],move:reg0[0..7]->OXM_OF_METADATA[8..15],set_field:0x7->reg3,set_field:0x9->metadata",
            "metadata=0x5,reg2=0x1,reg3=0x2 actions=move:NXM_OF_IN_PORT[]->NXM_NX_REG6[0..15],move:NXM_NX_REG0[0..7]->OXM_OF_METADATA[8..15],set_field:0x7->reg3,set_field:0x9->metadata",
        ),
        (
            "icmp6,ipv6_src=fd00::1/64,ipv6_dst=fd00::2,icmpv6_type=135,nd_target=fd00::2,nd_sll=52:54:00:00:00:01,actions=NORMAL",
            "icmp6,ipv6_src=fd00::/64,ipv6_dst=fd00::2,nd_target=fd00::2,nd_sll=52:54:00:00:00:01,icmpv6_type=135 actions=NORMAL",
        ),
        (
            "tcp6,ipv6_label=0x12345,nw_ttl=64,tcp_flags=0x2/0x12,tcp_dst=80,actions=NORMAL",
            "tcp6,ipv6_label=0x12345,nw_ttl=64,tp_dst=80,tcp_flags=+syn-ack actions=NORMAL",
        ),
        (
            "priority=7,ip,nw_src=10.0.0.1,actions=conjunction(5, 1/2),conjunction(6,2/3)",
            "priority=7,ip,nw_src=10.0.0.1 actions=conjunction(5,1/2),conjunction(6,2/3)",
        ),
        (
            "ipv6,actions=set_field:2001:db8::1->ipv6_src,set_field:0x5->ipv6_label,mod_nw_ttl:9,set_field:1->nw_ecn,dec_ttl",
            "ipv6 actions=set_field:2001:db8::1->ipv6_src,set_field:0x5->ipv6_label,mod_nw_ttl:9,set_field:1->nw_ecn,dec_ttl",
        ),
        (
            "arp,actions=set_field:2->arp_op,set_field:10.0.0.9->arp_spa,set_field:0e:00:00:00:00:09->arp_sha,set_field:10.0.0.1->arp_tpa",
            "arp actions=set_field:2->arp_op,set_field:10.0.0.9->arp_spa,set_field:0e:00:00:00:00:09->arp_sha,set_field:10.0.0.1->arp_tpa",
        ),
        (
            "table=2 actions=learn(table=10, NXM_OF_VLAN_TCI[0..11], NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[], load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15], load:0->NXM_NX_REG1[], output:OXM_OF_IN_PORT[], idle_timeout=30, priority=5, cookie=0x9),resubmit(,3)",
            "table=2, actions=learn(table=10,idle_timeout=30,priority=5,cookie=0x9,NXM_OF_VLAN_TCI[0..11],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15],load:0x0->NXM_NX_REG1[],output:NXM_OF_IN_PORT[]),resubmit(,3)",
        ),
        (
            "priority=7,conj_id=5,ip,actions=output:1",
            "priority=7,ip,conj_id=5 actions=output:1",
        ),
        (
            "arp,arp_sha=52:54:00:00:00:01,arp_tha=00:00:00:00:00:00,arp_op=1,actions=move:NXM_NX_ARP_SHA[]->NXM_OF_ETH_DST[],NORMAL",
            "arp,arp_op=1,arp_sha=52:54:00:00:00:01,arp_tha=00:00:00:00:00:00 actions=move:NXM_NX_ARP_SHA[]->NXM_OF_ETH_DST[],NORMAL",
        ),
    ];
    for (input, want) in cases {
        let spec = add(input);
        let printed = spec.to_string();
        assert_eq!(printed, want, "{input}");
        assert_eq!(add(&printed), spec, "{input} printed as {printed}");
    }
}

#[test]
fn groups_and_meters_parse_print_and_refuse_what_is_not_supported() {
    use crate::flow::group::GroupKind;
    use crate::flow::meter::MeterUnit;
    let g = parse_group(
        "group_id=2,type=select,selection_method=hash,bucket=bucket_id:0,weight:10,actions=output:1,bucket=weight:20,mod_vlan_vid:5,output:2",
    )
    .unwrap();
    assert_eq!((g.id, g.kind, g.buckets.len()), (2, GroupKind::Select, 2));
    assert_eq!((g.buckets[0].weight, g.buckets[1].weight), (10, 20));
    let printed = format_group(&g);
    assert_eq!(
        printed,
        "group_id=2,type=select,bucket=weight:10,actions=output:1,bucket=weight:20,actions=mod_vlan_vid:5,output:2"
    );
    assert_eq!(parse_group(&printed).unwrap(), g);
    let all = parse_group("group_id=1,type=all,bucket=output:1,bucket=output:2").unwrap();
    assert_eq!(parse_group(&format_group(&all)).unwrap(), all);
    let ff = parse_group(
        "group_id=5,type=fast_failover,bucket=watch_port:1,output:1,bucket=watch_port:vm2,actions=output:2",
    )
    .unwrap();
    assert_eq!(ff.kind, GroupKind::FastFailover);
    assert_eq!(
        format_group(&ff),
        "group_id=5,type=fast_failover,bucket=watch_port:1,actions=output:1,bucket=watch_port:vm2,actions=output:2"
    );
    assert_eq!(parse_group(&format_group(&ff)).unwrap(), ff);
    for (text, want) in [
        (
            "group_id=1,type=ff,bucket=watch_group:1,output:1",
            "watch_group is not supported",
        ),
        (
            "group_id=1,type=bogus,bucket=output:1",
            "expected all, select, indirect or fast_failover",
        ),
        (
            "group_id=1,type=indirect,bucket=output:1,bucket=output:2",
            "exactly one bucket",
        ),
        ("type=all,bucket=output:1", "needs group_id"),
        ("group_id=1,bucket=output:1", "needs type"),
        (
            "group_id=1,type=all,bucket=output:1,goto_table:2",
            "goto_table and conjunction",
        ),
        (
            "group_id=1,type=all,bucket=output:LOCAL",
            "bucket: unsupported port 'LOCAL'",
        ),
        (
            "group_id=1,group_id=2,type=all,bucket=output:1",
            "group_id is given twice",
        ),
        (
            "group_id=1,type=all,type=select,bucket=output:1",
            "type is given twice",
        ),
    ] {
        let e = parse_group(text).unwrap_err();
        assert!(e.message.contains(want), "{text}: {e}");
    }
    let m =
        parse_meter("meter=3,pktps,burst,stats,bands=type=drop,rate=500,burst_size=50").unwrap();
    assert_eq!(
        (m.id, m.unit, m.rate, m.burst),
        (3, MeterUnit::Pktps, 500, Some(50))
    );
    assert_eq!(parse_meter(&format_meter(&m)).unwrap(), m);
    let k = parse_meter("meter=4,kbps,bands=type=drop,rate=10000").unwrap();
    assert_eq!((k.unit, k.burst), (MeterUnit::Kbps, None));
    for (text, want) in [
        ("meter=1,kbps", "needs bands"),
        (
            "meter=1,kbps,bands=type=dscp_remark,rate=10,prec_level=1",
            "only drop",
        ),
        (
            "meter=1,kbps,bands=type=drop,rate=10,type=drop,rate=20",
            "only one band",
        ),
        (
            "meter=1,kbps,bands=type=drop,rate=10,burst_size=5",
            "burst flag",
        ),
        ("meter=0,kbps,bands=type=drop,rate=10", "meter: '0'"),
        ("kbps,bands=type=drop,rate=10", "needs meter=N"),
        (
            "meter=1,kbps,pktps,bands=type=drop,rate=10",
            "kbps or pktps is given twice",
        ),
        (
            "meter=1,meter=2,kbps,bands=type=drop,rate=10",
            "meter is given twice",
        ),
        (
            "meter=1,kbps,bands=type=drop,rate=10,rate=20",
            "rate is given twice",
        ),
        (
            "meter=1,kbps,burst,bands=type=drop,rate=10,burst_size=80,burst_size=90",
            "burst_size is given twice",
        ),
    ] {
        let e = parse_meter(text).unwrap_err();
        assert!(e.message.contains(want), "{text}: {e}");
    }
}
