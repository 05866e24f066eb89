//! Connection tracking against recorded exchanges: the TCP handshake, data, FIN both ways,
//! RST, windows and retransmits; UDP and ICMP; related ICMP errors; zones, limits and
//! timeouts.

use etherparse::{PacketBuilder, TcpOptionElement};

use super::ct_state::*;
use super::*;

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// A TCP segment from A (port 40000) to B (port 22), or back.
#[derive(Clone, Copy)]
struct Seg {
    from_a: bool,
    syn: bool,
    ack: Option<u32>,
    fin: bool,
    rst: bool,
    seq: u32,
    window: u16,
    payload: usize,
    wscale: Option<u8>,
}

fn seg(from_a: bool, seq: u32) -> Seg {
    Seg {
        from_a,
        syn: false,
        ack: None,
        fin: false,
        rst: false,
        seq,
        window: 64240,
        payload: 0,
        wscale: None,
    }
}

impl Seg {
    fn syn(mut self) -> Seg {
        self.syn = true;
        self
    }
    fn ack(mut self, ack: u32) -> Seg {
        self.ack = Some(ack);
        self
    }
    fn fin(mut self) -> Seg {
        self.fin = true;
        self
    }
    fn rst(mut self) -> Seg {
        self.rst = true;
        self
    }
    fn data(mut self, n: usize) -> Seg {
        self.payload = n;
        self
    }
    fn window(mut self, w: u16, scale: Option<u8>) -> Seg {
        self.window = w;
        self.wscale = scale;
        self
    }
    fn frame(&self) -> Vec<u8> {
        let (smac, dmac, src, dst, sp, dp) = if self.from_a {
            (MAC_A, MAC_B, A, B, 40000, 22)
        } else {
            (MAC_B, MAC_A, B, A, 22, 40000)
        };
        let mut b = PacketBuilder::ethernet2(smac, dmac).ipv4(src, dst, 64).tcp(
            sp,
            dp,
            self.seq,
            self.window,
        );
        if self.syn {
            b = b.syn();
        }
        if let Some(a) = self.ack {
            b = b.ack(a);
        }
        if self.fin {
            b = b.fin();
        }
        if self.rst {
            b = b.rst();
        }
        if let Some(s) = self.wscale {
            b = b
                .options(&[TcpOptionElement::WindowScale(s)])
                .expect("options fit");
        }
        let payload = vec![0x5a; self.payload];
        let mut out = Vec::new();
        b.write(&mut out, &payload).expect("frame");
        out
    }
}

fn udp(from_a: bool) -> Vec<u8> {
    if from_a {
        udp_between((A, 5000), (B, 53))
    } else {
        udp_between((B, 53), (A, 5000))
    }
}

/// A UDP datagram from `src` to `dst` (address, port).
fn udp_between(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut out, b"query")
        .expect("frame");
    out
}

const COMMIT: CommitOptions = CommitOptions {
    set_mark: None,
    set_label: None,
    force: false,
};

/// Tracks and returns the state bits.
fn track(ct: &Conntrack, frame: &[u8], commit: bool, now: u64) -> u64 {
    ct.track(frame, 0, commit.then_some(&COMMIT), now).state
}

/// A handshake A -> B (ISNs 1000 and 5000), committed; returns the table.
fn handshake(ct: &Conntrack) {
    assert_eq!(
        track(ct, &seg(true, 1000).syn().frame(), true, 0),
        TRACKED | NEW
    );
    assert_eq!(
        track(ct, &seg(false, 5000).syn().ack(1001).frame(), false, 1),
        TRACKED | ESTABLISHED | REPLY
    );
    assert_eq!(
        track(ct, &seg(true, 1001).ack(5001).frame(), false, 2),
        TRACKED | ESTABLISHED
    );
}

fn states(ct: &Conntrack) -> Vec<String> {
    ct.dump(None, 3).into_iter().map(|c| c.state).collect()
}

#[test]
fn tcp_handshake_data_and_fin_both_ways() {
    let ct = Conntrack::default();
    handshake(&ct);
    assert_eq!(states(&ct), ["ESTABLISHED"]);
    let est = TRACKED | ESTABLISHED;
    assert_eq!(
        track(&ct, &seg(true, 1001).ack(5001).data(100).frame(), false, 3),
        est
    );
    assert_eq!(
        track(
            &ct,
            &seg(false, 5001).ack(1101).data(1400).frame(),
            false,
            3
        ),
        est | REPLY
    );
    // A retransmit of data already seen is still part of the connection.
    assert_eq!(
        track(&ct, &seg(true, 1001).ack(5001).data(100).frame(), false, 3),
        est
    );
    // FIN from A, acked by B; FIN from B, acked by A.
    assert_eq!(
        track(&ct, &seg(true, 1101).ack(6401).fin().frame(), false, 4),
        est
    );
    assert_eq!(states(&ct), ["FIN_WAIT"]);
    assert_eq!(
        track(&ct, &seg(false, 6401).ack(1102).fin().frame(), false, 5),
        est | REPLY
    );
    assert_eq!(
        track(&ct, &seg(true, 1102).ack(6402).frame(), false, 6),
        est
    );
    assert_eq!(states(&ct), ["TIME_WAIT"]);
    // A new SYN on the same ports starts a new connection.
    assert_eq!(
        track(&ct, &seg(true, 90_000).syn().frame(), true, 7),
        TRACKED | NEW
    );
    assert_eq!(states(&ct), ["SYN_SENT"]);
    assert_eq!(ct.len(), 1);
}

#[test]
fn tcp_segments_outside_the_windows_are_invalid() {
    let ct = Conntrack::default();
    handshake(&ct);
    let inv = TRACKED | INVALID;
    // Data far beyond what B's window allows A to send.
    assert_eq!(
        track(
            &ct,
            &seg(true, 1001 + 10_000_000).ack(5001).data(100).frame(),
            false,
            3
        ),
        inv
    );
    // Data from long before the window (not a plausible retransmit).
    assert_eq!(
        track(
            &ct,
            &seg(true, 1001u32.wrapping_sub(1_000_000))
                .ack(5001)
                .data(100)
                .frame(),
            false,
            3
        ),
        inv
    );
    // Acking data B never sent.
    assert_eq!(
        track(
            &ct,
            &seg(true, 1001).ack(5001 + 1_000_000).data(10).frame(),
            false,
            3
        ),
        inv
    );
    // The connection is unharmed.
    assert_eq!(
        track(&ct, &seg(true, 1001).ack(5001).data(10).frame(), false, 3),
        TRACKED | ESTABLISHED
    );
    assert_eq!(ct.counters.invalid.load(Ordering::Relaxed), 3);
}

#[test]
fn tcp_rst_needs_the_right_sequence_and_ends_the_connection() {
    let ct = Conntrack::default();
    handshake(&ct);
    // A blind reset with a guessed sequence number is refused.
    assert_eq!(
        track(&ct, &seg(false, 5001 + 40_000).rst().frame(), false, 3),
        TRACKED | INVALID
    );
    assert_eq!(states(&ct), ["ESTABLISHED"]);
    assert_eq!(
        track(&ct, &seg(false, 5001).rst().frame(), false, 3),
        TRACKED | ESTABLISHED | REPLY
    );
    assert_eq!(states(&ct), ["CLOSE"]);
    // A closed-by-reset connection goes after 10 s.
    assert_eq!(ct.expire(3 + 9_000), 0);
    assert_eq!(ct.expire(3 + 10_000), 1);
    assert!(ct.is_empty());
}

#[test]
fn tcp_without_a_connection_only_a_syn_is_new() {
    let ct = Conntrack::default();
    // Uncommitted: new every time, nothing stored.
    assert_eq!(
        track(&ct, &seg(true, 1000).syn().frame(), false, 0),
        TRACKED | NEW
    );
    assert_eq!(
        track(&ct, &seg(true, 1000).syn().frame(), false, 0),
        TRACKED | NEW
    );
    assert!(ct.is_empty());
    // A SYN-ACK, an ACK or data without a connection: invalid.
    for s in [
        seg(false, 5000).syn().ack(1001),
        seg(true, 1001).ack(5001),
        seg(true, 1001).ack(5001).data(10),
        seg(true, 1000).syn().fin(),
    ] {
        assert_eq!(track(&ct, &s.frame(), true, 0), TRACKED | INVALID);
    }
    assert!(ct.is_empty());
    // A SYN retransmitted before any answer stays new.
    assert_eq!(
        track(&ct, &seg(true, 1000).syn().frame(), true, 0),
        TRACKED | NEW
    );
    assert_eq!(
        track(&ct, &seg(true, 1000).syn().frame(), true, 1000),
        TRACKED | NEW
    );
    assert_eq!(ct.len(), 1);
}

#[test]
fn tcp_window_scaling_allows_large_windows() {
    let ct = Conntrack::default();
    // Both announce scale 7: 64240 << 7 is about 8 MB of window.
    let syn = seg(true, 1000).syn().window(64240, Some(7));
    assert_eq!(track(&ct, &syn.frame(), true, 0), TRACKED | NEW);
    let syn_ack = seg(false, 5000).syn().ack(1001).window(65160, Some(7));
    assert_eq!(
        track(&ct, &syn_ack.frame(), false, 0),
        TRACKED | ESTABLISHED | REPLY
    );
    assert_eq!(
        track(
            &ct,
            &seg(true, 1001).ack(5001).window(502, None).frame(),
            false,
            0
        ),
        TRACKED | ESTABLISHED
    );
    // B opens a window of 40000 << 7 (5 MB): A may send 4 MB ahead.
    assert_eq!(
        track(
            &ct,
            &seg(false, 5001).ack(1001).window(40000, None).frame(),
            false,
            0
        ),
        TRACKED | ESTABLISHED | REPLY
    );
    let far = 1001 + 4_000_000;
    assert_eq!(
        track(
            &ct,
            &seg(true, far)
                .ack(5001)
                .data(1000)
                .window(502, None)
                .frame(),
            false,
            0
        ),
        TRACKED | ESTABLISHED
    );
    // Without scaling the same segment would have been far outside the window.
    let plain = Conntrack::default();
    handshake(&plain);
    assert_eq!(
        track(
            &plain,
            &seg(false, 5001).ack(1001).window(40000, None).frame(),
            false,
            0
        ),
        TRACKED | ESTABLISHED | REPLY
    );
    assert_eq!(
        track(
            &plain,
            &seg(true, far).ack(5001).data(1000).frame(),
            false,
            0
        ),
        TRACKED | INVALID
    );
}

#[test]
fn udp_and_icmp_echo_become_established_on_reply() {
    let ct = Conntrack::default();
    assert_eq!(track(&ct, &udp(true), true, 0), TRACKED | NEW);
    assert_eq!(track(&ct, &udp(true), false, 0), TRACKED | NEW);
    assert_eq!(
        track(&ct, &udp(false), false, 0),
        TRACKED | ESTABLISHED | REPLY
    );
    assert_eq!(track(&ct, &udp(true), false, 0), TRACKED | ESTABLISHED);

    let echo = |request: bool, from_a: bool| {
        let (smac, dmac, src, dst) = if from_a {
            (MAC_A, MAC_B, A, B)
        } else {
            (MAC_B, MAC_A, B, A)
        };
        let b = PacketBuilder::ethernet2(smac, dmac).ipv4(src, dst, 64);
        let b = if request {
            b.icmpv4_echo_request(7, 1)
        } else {
            b.icmpv4_echo_reply(7, 1)
        };
        let mut out = Vec::new();
        b.write(&mut out, b"ping").expect("frame");
        out
    };
    // A reply with no request: invalid.
    assert_eq!(track(&ct, &echo(false, false), true, 0), TRACKED | INVALID);
    assert_eq!(track(&ct, &echo(true, true), true, 0), TRACKED | NEW);
    assert_eq!(
        track(&ct, &echo(false, false), false, 0),
        TRACKED | ESTABLISHED | REPLY
    );
    assert_eq!(ct.len(), 2);
    // Unreplied UDP goes after 30 s, answered after 120 s; ICMP after 30 s.
    assert_eq!(ct.expire(29_999), 0);
    assert_eq!(ct.expire(30_000), 1, "the ICMP echo");
    assert_eq!(ct.expire(120_000), 1, "the answered UDP flow");
    assert!(ct.is_empty());
    assert_eq!(track(&ct, &udp(false), false, 120_001), TRACKED | NEW);
}

#[test]
fn icmp_errors_for_a_connection_are_related() {
    let ct = Conntrack::default();
    assert_eq!(track(&ct, &udp(true), true, 0), TRACKED | NEW);
    // B answers A's datagram with port unreachable, quoting it.
    let quoted = &udp(true)[14..14 + 28];
    let error = |quoted: &[u8]| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv4(B, A, 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut out, quoted)
            .expect("frame");
        out
    };
    assert_eq!(
        track(&ct, &error(quoted), false, 1),
        TRACKED | RELATED | REPLY
    );
    // An error quoting a packet of no connection is invalid.
    let mut other = quoted.to_vec();
    other[22] ^= 0xff; // another destination port
    assert_eq!(track(&ct, &error(&other), false, 1), TRACKED | INVALID);
}

#[test]
fn zones_keep_connections_apart_and_commit_sets_mark_and_label() {
    let ct = Conntrack::default();
    let marked = CommitOptions {
        set_mark: Some((0x12, 0xff)),
        set_label: Some((1 << 100, 1 << 100)),
        force: false,
    };
    let t = ct.track(&udp(true), 1, Some(&marked), 0);
    assert_eq!(
        (t.state, t.zone, t.mark, t.label),
        (TRACKED | NEW, 1, 0x12, 1 << 100)
    );
    // The same packets in zone 2 know nothing of zone 1.
    assert_eq!(ct.track(&udp(false), 2, None, 0).state, TRACKED | NEW);
    let r = ct.track(&udp(false), 1, None, 0);
    assert_eq!((r.state, r.mark), (TRACKED | ESTABLISHED | REPLY, 0x12));
    let orig = r.orig.expect("the original direction");
    assert_eq!(
        (orig.src(), orig.sport(), orig.dport()),
        (IpAddr::from(A), 5000, 53)
    );
    assert_eq!(ct.zone_counts(), HashMap::from([(1, 1)]));
    assert_eq!(ct.dump(Some(2), 0), vec![]);
    assert_eq!(ct.flush(Some(2)), 0);
    assert_eq!(ct.flush(Some(1)), 1);
    assert!(ct.is_empty() && ct.zone_counts().is_empty());
}

#[test]
fn limits_refuse_new_connections_and_evict_closed_ones_first() {
    let ct = Conntrack::new(Limits {
        max_connections: 2,
        zones: HashMap::from([(5, 1)]),
    });
    let syn = |port: u16| {
        let mut f = seg(true, 1000).syn().frame();
        f[34..36].copy_from_slice(&port.to_be_bytes());
        f
    };
    assert_eq!(track(&ct, &syn(1), true, 0), TRACKED | NEW);
    assert_eq!(track(&ct, &syn(2), true, 0), TRACKED | NEW);
    assert_eq!(
        track(&ct, &syn(3), true, 0),
        TRACKED | INVALID,
        "the table is full"
    );
    assert_eq!(ct.counters.refused.load(Ordering::Relaxed), 1);
    // Close the first by a reset from A: now it can be evicted for a new one.
    let mut rst = seg(true, 1001).rst().frame();
    rst[34..36].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(track(&ct, &rst, false, 0), TRACKED | NEW);
    assert_eq!(track(&ct, &syn(3), true, 0), TRACKED | NEW);
    assert_eq!(ct.counters.evicted.load(Ordering::Relaxed), 1);
    assert_eq!(ct.len(), 2);
    // Zone 5 holds one connection.
    assert_eq!(ct.flush(None), 2);
    assert_eq!(ct.track(&syn(1), 5, Some(&COMMIT), 0).state, TRACKED | NEW);
    assert_eq!(
        ct.track(&syn(2), 5, Some(&COMMIT), 0).state,
        TRACKED | INVALID
    );
    assert_eq!(ct.track(&syn(2), 6, Some(&COMMIT), 0).state, TRACKED | NEW);
}

#[test]
fn untrackable_packets_are_invalid() {
    let ct = Conntrack::default();
    let mut frag = udp(true);
    frag[20] = 0x20; // more fragments
    let arp = {
        let mut f = udp(true);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f
    };
    for f in [frag, arp, udp(true)[..30].to_vec()] {
        assert_eq!(track(&ct, &f, true, 0), TRACKED | INVALID);
    }
    assert!(ct.is_empty());
}

#[test]
fn a_connection_costs_what_the_docs_say() {
    use std::mem::{offset_of, size_of};
    // One entry of a shard's table, which is at most half full: two cache lines, and what
    // a lookup of a connection without TCP state, mark or label reads all in the first.
    assert_eq!(size_of::<Conn>(), 128);
    assert_eq!(std::mem::align_of::<Conn>(), 64);
    for hot in [
        offset_of!(Conn, key),
        offset_of!(Conn, expires_ms),
        offset_of!(Conn, hash),
        offset_of!(Conn, used),
        offset_of!(Conn, replied),
        offset_of!(Conn, listed_closed),
        offset_of!(Conn, marked),
    ] {
        assert!(hot < 64, "a field the lookup reads at offset {hot}");
    }
    let per_conn = 2 * size_of::<Conn>();
    assert!(
        per_conn <= BYTES_PER_CONNECTION,
        "{per_conn} bytes per connection"
    );
}

#[test]
fn icmpv6_errors_for_a_connection_are_related_within_the_flow_tables_prefix() {
    let ct = Conntrack::default();
    let a: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let b: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(a, b, 64)
        .udp(5000, 53)
        .write(&mut udp6, b"query")
        .expect("frame");
    assert_eq!(track(&ct, &udp6, true, 0), TRACKED | NEW);
    let error = |quoted: &[u8]| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv6(b, a, 64)
            .icmpv6_raw(1, 4, [0; 4])
            .write(&mut out, quoted)
            .expect("frame");
        out
    };
    // The error quotes the datagram's IPv6 header and 8 bytes of UDP; tracking needs only
    // its first ICMPV6_ERROR_BYTES (the flow tables hand it at least that many).
    let quoted = &udp6[14..14 + 48];
    let frame = error(quoted);
    let prefix = &frame[..frame.len().min(super::packet::ICMPV6_ERROR_BYTES)];
    assert_eq!(track(&ct, prefix, false, 1), TRACKED | RELATED | REPLY);
    let mut other = quoted.to_vec();
    other[43] ^= 1; // another destination port
    assert_eq!(track(&ct, &error(&other), false, 1), TRACKED | INVALID);
}

#[test]
fn a_forced_commit_against_a_connection_replaces_it_in_the_packets_direction() {
    let ct = Conntrack::default();
    assert_eq!(track(&ct, &udp(true), true, 0), TRACKED | NEW);
    let force = CommitOptions {
        force: true,
        ..COMMIT
    };
    // B's datagram is A's connection's reply; forced, it becomes a new connection from B.
    let t = ct.track(&udp(false), 0, Some(&force), 1);
    assert_eq!(t.state, TRACKED | NEW);
    assert_eq!(t.orig.map(|o| o.src()), Some(IpAddr::from(B)));
    assert_eq!(ct.len(), 1);
    // A's datagram is now the reply.
    assert_eq!(
        track(&ct, &udp(true), false, 2),
        TRACKED | ESTABLISHED | REPLY
    );
    // In its own direction force changes nothing.
    assert_eq!(
        ct.track(&udp(false), 0, Some(&force), 3).state,
        TRACKED | ESTABLISHED
    );
}

#[test]
fn review_findings_hold() {
    // A connection whose two directions are one key (a host to itself, one port): its
    // packets are all of the original direction.
    let ct = Conntrack::default();
    let mut own = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_A)
        .ipv4(A, A, 64)
        .udp(7, 7)
        .write(&mut own, b"x")
        .expect("frame");
    assert_eq!(track(&ct, &own, true, 0), TRACKED | NEW);
    assert_eq!(track(&ct, &own, false, 1), TRACKED | NEW);
    assert_eq!(ct.flush(None), 1);

    // IPv6 with IPv4-mapped addresses is not the IPv4 connection's reply.
    assert_eq!(track(&ct, &udp(true), true, 0), TRACKED | NEW);
    let mapped = |ip: [u8; 4]| std::net::Ipv4Addr::from(ip).to_ipv6_mapped().octets();
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(mapped(B), mapped(A), 64)
        .udp(53, 5000)
        .write(&mut v6, b"x")
        .expect("frame");
    assert_eq!(track(&ct, &v6, false, 1), TRACKED | NEW);

    // An ICMP error sent to someone other than the quoted packet's sender is not related.
    let mut stray = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(B, [10, 0, 0, 3], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut stray, &udp(true)[14..14 + 28])
        .expect("frame");
    assert_eq!(track(&ct, &stray, false, 1), TRACKED | INVALID);
    ct.flush(None);

    // A bogus first answer (acking what was never sent) leaves the connection unanswered.
    assert_eq!(
        track(&ct, &seg(true, 1000).syn().frame(), true, 0),
        TRACKED | NEW
    );
    assert_eq!(
        track(
            &ct,
            &seg(false, 5000).syn().ack(1001 + 500_000).frame(),
            false,
            1
        ),
        TRACKED | INVALID
    );
    assert_eq!(
        track(&ct, &seg(true, 1000).syn().frame(), false, 2),
        TRACKED | NEW
    );
    assert_eq!(states(&ct), ["SYN_SENT"]);

    // A forced commit by a packet that cannot open a connection keeps the connection.
    let force = CommitOptions {
        force: true,
        ..COMMIT
    };
    let ack_only = seg(false, 5000).ack(1001).frame();
    assert_eq!(
        ct.track(&ack_only, 0, Some(&force), 3).state,
        TRACKED | ESTABLISHED | REPLY,
        "tracked as the connection's reply, not a new connection"
    );
    assert_eq!(ct.len(), 1);
}

#[test]
fn a_stamped_answer_holds_only_while_nothing_could_change_it() {
    let ct = Conntrack::default();
    track(&ct, &udp(true), true, 0);
    let reply = udp(false);
    let (tracked, stamp) = ct.track_stamped(&reply, 0, None, 5);
    assert_eq!(tracked.state, TRACKED | ESTABLISHED | REPLY);
    let stamp = stamp.expect("a UDP lookup that stores nothing is stamped");
    assert!(ct.answers_again(&reply, 5, &stamp));
    // Tracking it again changes nothing and answers the same, but it took the shard's lock
    // to change it: the stamp is spent.
    assert_eq!(ct.track(&reply, 0, None, 5), tracked);
    assert!(!ct.answers_again(&reply, 5, &stamp));
    let stamp = ct.track_stamped(&reply, 0, None, 5).1.expect("stamped");
    // Another clock, another key, a fragment or a malformed copy: asked again.
    let mut fragment = reply.clone();
    fragment[20] = 0x20;
    let mut malformed = reply.clone();
    malformed[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length under the header
    assert!(!ct.answers_again(&reply, 6, &stamp));
    assert!(!ct.answers_again(&udp(true), 5, &stamp));
    assert!(!ct.answers_again(&fragment, 5, &stamp));
    assert!(!ct.answers_again(&malformed, 5, &stamp));
    assert!(ct.answers_again(&reply, 5, &stamp));
    // A flush changes every shard: spent.
    ct.flush(None);
    assert!(!ct.answers_again(&reply, 5, &stamp));
    // Commits, TCP segments and invalid answers are never stamped.
    assert!(ct
        .track_stamped(&udp(true), 0, Some(&COMMIT), 5)
        .1
        .is_none());
    assert!(ct
        .track_stamped(&seg(true, 1000).syn().frame(), 0, None, 5)
        .1
        .is_none());
    assert!(ct.track_stamped(&fragment, 0, None, 5).1.is_none());
}

/// A UDP packet of connection `n` (client port `n`, from 10.1.x.y), either way.
fn udp_conn(n: u16, from_client: bool) -> Vec<u8> {
    let client = ([10, 1, (n >> 8) as u8, n as u8], n);
    if from_client {
        udp_between(client, (B, 53))
    } else {
        udp_between((B, 53), client)
    }
}

#[test]
fn thousands_of_connections_grow_the_tables_and_outlive_their_neighbours_removal() {
    let ct = Conntrack::default();
    const N: u16 = 3000;
    // Odd connections start at 0 s, even ones at 20 s; every one gets its reply.
    for n in 0..N {
        let at = if n % 2 == 0 { 20_000 } else { 0 };
        assert_eq!(track(&ct, &udp_conn(n, true), true, at), TRACKED | NEW);
        assert_eq!(
            track(&ct, &udp_conn(n, false), false, at),
            TRACKED | ESTABLISHED | REPLY,
            "connection {n}"
        );
    }
    assert_eq!(ct.len(), usize::from(N));
    // The replied odd ones time out after 120 s; removing them moves their neighbours
    // back along their probes, and each even one is still found, from either side.
    assert_eq!(ct.expire(130_000), usize::from(N / 2));
    for n in 0..N {
        let want = if n % 2 == 0 {
            TRACKED | ESTABLISHED
        } else {
            TRACKED | NEW
        };
        assert_eq!(track(&ct, &udp_conn(n, true), false, 130_000), want, "{n}");
        if n % 2 == 0 {
            assert_eq!(
                track(&ct, &udp_conn(n, false), false, 130_000),
                TRACKED | ESTABLISHED | REPLY
            );
        }
    }
    assert_eq!(ct.flush(None), usize::from(N / 2));
    assert!(ct.is_empty());
    assert_eq!(
        track(&ct, &udp_conn(2, false), false, 130_000),
        TRACKED | NEW
    );
}

#[test]
fn keys_read_back_what_they_were_made_of_and_keep_families_apart() {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let v4 = |a: [u8; 4]| IpAddr::from(a);
    let key = packet::ConnKey::new(7, packet::IP_UDP, 0, v4(A), v4(B), 40000, 53);
    assert_eq!(
        (key.zone(), key.proto(), key.icmp_type()),
        (7, packet::IP_UDP, 0)
    );
    assert_eq!((key.src(), key.dst()), (v4(A), v4(B)));
    assert_eq!((key.sport(), key.dport()), (40000, 53));
    assert_eq!(
        key.ipv4(),
        Some((u32::from_be_bytes(A), u32::from_be_bytes(B)))
    );
    let back = key.reverse();
    assert_eq!((back.src(), back.sport(), back.dport()), (v4(B), 53, 40000));
    assert_eq!(back.reverse(), key);
    // An echo request's reverse is the reply.
    let echo = packet::ConnKey::new(0, packet::IP_ICMP, 8, v4(A), v4(B), 9, 9);
    assert_eq!(echo.reverse().icmp_type(), 0);

    // The same addresses written as IPv4-mapped IPv6 are another connection's.
    let mapped = |a: [u8; 4]| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped());
    let v6_key = packet::ConnKey::new(7, packet::IP_UDP, 0, mapped(A), mapped(B), 40000, 53);
    assert_ne!(v6_key, key);
    assert_eq!((v6_key.src(), v6_key.ipv4()), (mapped(A), None));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    assert_eq!(
        packet::ConnKey::new(0, packet::IP_TCP, 0, v6, v4(B), 1, 2).src(),
        v6
    );
}

// Replays of real Linux TCP exchanges, recorded with tcpdump by `testdata/record.sh` (which
// says what each trace holds). The traces are read here with a parser of their own, so that
// what a packet is (whose, which flags) is not the tracker's word.

/// One packet of a recorded trace.
struct Recorded<'a> {
    /// The capture's timestamp, in ms.
    ms: u64,
    /// As captured: the Ethernet frame's first bytes (the snaplen cuts payloads short; the
    /// payload's length is the IP header's).
    frame: &'a [u8],
    src: (IpAddr, u16),
    flags: u8,
    seq: u32,
    /// Where the sequence number is in `frame`.
    seq_at: usize,
    payload: usize,
}

impl Recorded<'_> {
    fn describe(&self, client: (IpAddr, u16)) -> String {
        let names = [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (ACK, '.')];
        let flags: String = names
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, c)| *c)
            .collect();
        let dir = if self.src == client {
            "client -> server"
        } else {
            "server -> client"
        };
        format!("{dir} [{flags}] seq {} len {}", self.seq, self.payload)
    }

    /// A segment that carries sequence space (data, SYN or FIN).
    fn occupies_sequence_space(&self) -> bool {
        self.payload > 0 || self.flags & (SYN | FIN) != 0
    }
}

use super::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// The packets of a classic pcap file (microsecond timestamps, either byte order) of
/// Ethernet frames carrying TCP over IPv4 or IPv6.
fn read_pcap(file: &[u8]) -> Vec<Recorded<'_>> {
    let word = |at: usize| -> [u8; 4] { file[at..at + 4].try_into().expect("4 bytes") };
    let big_endian = match u32::from_le_bytes(word(0)) {
        0xa1b2_c3d4 => false,
        0xd4c3_b2a1 => true,
        magic => panic!("not a classic microsecond pcap (magic {magic:#x})"),
    };
    let u32_at = |at: usize| {
        if big_endian {
            u32::from_be_bytes(word(at))
        } else {
            u32::from_le_bytes(word(at))
        }
    };
    assert_eq!(u32_at(20), 1, "LINKTYPE_ETHERNET");
    let snaplen = u32_at(16) as usize;
    let mut packets = Vec::new();
    let mut at = 24;
    while at < file.len() {
        let (sec, usec) = (u64::from(u32_at(at)), u64::from(u32_at(at + 4)));
        let (caught, len) = (u32_at(at + 8) as usize, u32_at(at + 12) as usize);
        assert!(caught <= snaplen && caught <= len, "record at byte {at}");
        let frame = &file[at + 16..at + 16 + caught];
        packets.push(recorded(sec * 1000 + usec / 1000, frame));
        at += 16 + caught;
    }
    packets
}

/// Reads a captured frame's addresses, ports and TCP header (no VLAN tags, no IPv6
/// extension headers: a veth capture has none).
fn recorded(ms: u64, frame: &[u8]) -> Recorded<'_> {
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (src, l4, l4_len) = match be16(12) {
        0x0800 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            assert_eq!(frame[23], 6, "TCP");
            let src: [u8; 4] = frame[26..30].try_into().expect("address");
            (IpAddr::from(src), 14 + ihl, usize::from(be16(16)) - ihl)
        }
        0x86dd => {
            assert_eq!(frame[20], 6, "TCP, no extension headers");
            let src: [u8; 16] = frame[22..38].try_into().expect("address");
            (IpAddr::from(src), 14 + 40, usize::from(be16(18)))
        }
        other => panic!("ethertype {other:#x}"),
    };
    let header = usize::from(frame[l4 + 12] >> 4) * 4;
    assert!(
        frame.len() >= l4 + header,
        "the snaplen cut the TCP header short"
    );
    Recorded {
        ms,
        frame,
        src: (src, be16(l4)),
        flags: frame[l4 + 13],
        seq: u32::from_be_bytes(frame[l4 + 4..l4 + 8].try_into().expect("seq")),
        seq_at: l4 + 4,
        payload: l4_len - header,
    }
}

/// `packet`'s frame with its sequence number moved by `by` (nothing else changes: the
/// checksums go stale, which the tracker does not read).
fn with_seq_moved(packet: &Recorded, by: i32) -> Vec<u8> {
    let mut frame = packet.frame.to_vec();
    let seq = packet.seq.wrapping_add_signed(by);
    frame[packet.seq_at..packet.seq_at + 4].copy_from_slice(&seq.to_be_bytes());
    frame
}

/// Tracks `frame` as a firewall does: `ct` first, `ct(commit)` if that found it `+new`.
fn track_and_commit_new(ct: &Conntrack, frame: &[u8], now: u64) -> Tracked {
    let t = ct.track(frame, 0, None, now);
    if t.state & NEW == 0 {
        return t;
    }
    ct.track(frame, 0, Some(&CommitOptions::default()), now)
}

/// Replays `packets` through `ct` (calling `before` ahead of each), asserting each one's
/// `ct_state`: the client's SYN (and any copy of it before the server answered) `+new`;
/// from the server's first packet (the SYN-ACK) on, all `+est`, the server's also `+rpl`;
/// none `+inv`. Returns the connection's state name after each packet.
fn replay(
    name: &str,
    packets: &[Recorded],
    ct: &Conntrack,
    mut before: impl FnMut(usize, &Recorded),
) -> Vec<String> {
    let client = packets[0].src;
    let mut answered = false;
    let mut names = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        before(i, p);
        let what = format!("{name}: packet {} ({})", i + 1, p.describe(client));
        let from_client = p.src == client;
        if !from_client && !answered {
            assert_eq!(p.flags, SYN | ACK, "{what}: the server's first packet");
            answered = true;
        }
        let want = match (answered, from_client) {
            (false, _) => {
                assert_eq!(
                    p.flags, SYN,
                    "{what}: the client's packets before an answer"
                );
                TRACKED | NEW
            }
            (true, true) => TRACKED | ESTABLISHED,
            (true, false) => TRACKED | ESTABLISHED | REPLY,
        };
        let t = track_and_commit_new(ct, p.frame, p.ms);
        assert_eq!(t.state, want, "{what}: ct_state {:#x}", t.state);
        let orig = t.orig.expect("a connection");
        assert_eq!((orig.src(), orig.sport()), client, "{what}: its direction");
        let dump = ct.dump(None, p.ms);
        assert_eq!(dump.len(), 1, "{what}: one connection");
        names.push(dump[0].state.clone());
    }
    names
}

/// The state names in order, each once.
fn progression(names: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = names.iter().map(String::as_str).collect();
    out.dedup();
    out
}

/// The recorded SYN with another initial sequence number: the same ports, a new connection.
fn next_syn(packets: &[Recorded]) -> Vec<u8> {
    with_seq_moved(&packets[0], 1 << 30)
}

/// The states of an exchange closed by a FIN each way, in order, as conntrack tools name
/// them.
const CLOSED_BY_FINS: [&str; 5] = [
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "TIME_WAIT",
];

const TCP4_FIN: &[u8] = include_bytes!("testdata/tcp4_fin.pcap");
const TCP6_FIN: &[u8] = include_bytes!("testdata/tcp6_fin.pcap");
const TCP4_RST: &[u8] = include_bytes!("testdata/tcp4_rst.pcap");
const TCP4_RETRANSMIT: &[u8] = include_bytes!("testdata/tcp4_retransmit.pcap");

/// A recorded exchange closed by a FIN each way: every packet as `replay` wants it, the
/// states as conntrack tools name them in order, and once closed the ports free for a new
/// connection.
fn check_closed_by_fins(name: &str, file: &[u8]) -> Vec<String> {
    let packets = read_pcap(file);
    let client = packets[0].src;
    let fins: Vec<usize> = (0..packets.len())
        .filter(|&i| packets[i].flags & FIN != 0)
        .collect();
    assert_eq!(fins.len(), 2, "{name}: a FIN each way");
    let (first_fin, last) = (fins[0], packets.len() - 1);
    assert_eq!(packets[first_fin].src, client, "{name}: the client closes");
    assert_eq!(
        packets[last].flags, ACK,
        "{name}: ends acking the server's FIN"
    );
    assert!(
        packets.iter().any(|p| p.payload > 0 && p.src == client)
            && packets.iter().any(|p| p.payload > 0 && p.src != client),
        "{name}: data both ways"
    );

    let ct = Conntrack::default();
    let names = replay(name, &packets, &ct, |i, p| {
        if i == first_fin {
            // Until the close, a SYN on the same ports is no new connection (it is far
            // outside the windows).
            assert_eq!(
                ct.track(&next_syn(&packets), 0, Some(&COMMIT), p.ms).state,
                TRACKED | INVALID,
                "{name}: a SYN while established"
            );
        }
    });
    assert_eq!(progression(&names), CLOSED_BY_FINS, "{name}");
    assert_eq!(
        names[first_fin - 1],
        "ESTABLISHED",
        "{name}: before the FIN"
    );
    assert_eq!(names[first_fin], "FIN_WAIT", "{name}: at the client's FIN");
    assert_eq!(names[last - 1], "FIN_WAIT", "{name}: before the last ACK");
    assert_eq!(names[last], "TIME_WAIT", "{name}: after the last ACK");
    assert_eq!(ct.counters.invalid.load(Ordering::Relaxed), 1, "{name}");
    assert_eq!(ct.counters.committed.load(Ordering::Relaxed), 1, "{name}");

    // Closed: it goes after 2 minutes idle (established, it would stay 5 days) ...
    let end = packets[last].ms;
    assert_eq!(ct.expire(end + 119_999), 0, "{name}");
    assert_eq!(ct.expire(end + 120_000), 1, "{name}");
    // ... and a new SYN on its ports opens a new connection in its place.
    let ct = Conntrack::default();
    replay(name, &packets, &ct, |_, _| {});
    assert_eq!(
        ct.track(&next_syn(&packets), 0, Some(&COMMIT), end + 1)
            .state,
        TRACKED | NEW,
        "{name}: a SYN after the close"
    );
    assert_eq!(ct.len(), 1, "{name}");
    assert_eq!(states_at(&ct, end + 1), ["SYN_SENT"], "{name}");
    names
}

fn states_at(ct: &Conntrack, now: u64) -> Vec<String> {
    ct.dump(None, now).into_iter().map(|c| c.state).collect()
}

#[test]
fn recorded_ipv4_exchange_closed_by_fins_both_ways() {
    let names = check_closed_by_fins("tcp4_fin", TCP4_FIN);
    assert_eq!(names.len(), 21);
}

#[test]
fn recorded_ipv6_exchange_closed_by_fins_both_ways() {
    let packets = read_pcap(TCP6_FIN);
    assert!(packets.iter().all(|p| p.src.0.is_ipv6()));
    let names = check_closed_by_fins("tcp6_fin", TCP6_FIN);
    assert_eq!(names.len(), 21);
}

#[test]
fn recorded_ipv4_exchange_closed_by_a_reset() {
    let packets = read_pcap(TCP4_RST);
    let last = packets.len() - 1;
    assert_eq!(packets.len(), 8);
    assert_eq!(packets[last].flags, RST | ACK, "the client's close");
    assert!(packets[..last].iter().all(|p| p.flags & (RST | FIN) == 0));
    let ct = Conntrack::default();
    let names = replay("tcp4_rst", &packets, &ct, |_, _| {});
    assert_eq!(
        progression(&names),
        ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "CLOSE"]
    );
    assert_eq!(names[last - 1], "ESTABLISHED");
    assert_eq!(ct.counters.invalid.load(Ordering::Relaxed), 0);
    // Reset: it goes after 10 s idle.
    let end = packets[last].ms;
    assert_eq!(ct.expire(end + 9_999), 0);
    assert_eq!(ct.expire(end + 10_000), 1);
    // Before that, a new SYN on its ports opens a new connection in its place.
    let ct = Conntrack::default();
    replay("tcp4_rst", &packets, &ct, |_, _| {});
    assert_eq!(
        ct.track(&next_syn(&packets), 0, Some(&COMMIT), end + 1)
            .state,
        TRACKED | NEW
    );
    assert_eq!(states_at(&ct, end + 1), ["SYN_SENT"]);
}

#[test]
fn recorded_retransmits_are_part_of_the_connection() {
    let packets = read_pcap(TCP4_RETRANSMIT);
    let client = packets[0].src;
    // The retransmits the trace holds: segments repeating an earlier one's sequence space.
    let retransmits: Vec<usize> = (0..packets.len())
        .filter(|&i| {
            let p = &packets[i];
            p.occupies_sequence_space()
                && packets[..i].iter().any(|q| {
                    (q.src, q.seq, q.payload, q.flags & (SYN | FIN))
                        == (p.src, p.seq, p.payload, p.flags & (SYN | FIN))
                })
        })
        .collect();
    let kinds: Vec<(bool, u8, bool)> = retransmits
        .iter()
        .map(|&i| {
            let p = &packets[i];
            (p.src == client, p.flags & (SYN | ACK), p.payload > 0)
        })
        .collect();
    // The client's SYN, the server's SYN-ACK (twice: answering the SYN, and on its timer),
    // a data segment each way.
    assert_eq!(
        kinds,
        [
            (true, SYN, false),
            (false, SYN | ACK, false),
            (false, SYN | ACK, false),
            (true, ACK, true),
            (false, ACK, true),
        ],
        "retransmits at packets {retransmits:?} (from 0)"
    );
    let ct = Conntrack::default();
    let names = replay("tcp4_retransmit", &packets, &ct, |_, _| {});
    assert_eq!(progression(&names), CLOSED_BY_FINS);
    assert_eq!(ct.counters.invalid.load(Ordering::Relaxed), 0);
    assert_eq!(ct.counters.committed.load(Ordering::Relaxed), 1);
}

#[test]
fn recorded_segments_moved_outside_the_window_are_invalid() {
    for (name, file) in [("tcp4_fin", TCP4_FIN), ("tcp6_fin", TCP6_FIN)] {
        let packets = read_pcap(file);
        let client = packets[0].src;
        // The first data segment each way.
        let first_data = |from_client: bool| {
            (0..packets.len())
                .find(|&i| packets[i].payload > 0 && (packets[i].src == client) == from_client)
                .expect("data")
        };
        let targets = [first_data(true), first_data(false)];
        let mut injected = 0;
        let ct = Conntrack::default();
        replay(name, &packets, &ct, |i, p| {
            if !targets.contains(&i) {
                return;
            }
            // 1 MiB ahead of or behind the recorded segment: beyond what the receiver's
            // window allows, and further back than a retransmit could be.
            for by in [1 << 20, -(1 << 20)] {
                let moved = with_seq_moved(p, by);
                assert_eq!(
                    ct.track(&moved, 0, None, p.ms).state,
                    TRACKED | INVALID,
                    "{name}: packet {} moved by {by}",
                    i + 1
                );
                injected += 1;
            }
        });
        assert_eq!(injected, 4, "{name}");
        // The control: the same segments unmoved, tracked by `replay` right after, were the
        // connection's; the invalid copies changed nothing that a later packet noticed.
        assert_eq!(ct.counters.invalid.load(Ordering::Relaxed), 4, "{name}");
    }
}

#[test]
fn pcaps_are_read_in_either_byte_order() {
    // The little-endian file rewritten big-endian: the global header's fields (magic,
    // versions, zone, sigfigs, snaplen, linktype) and each record header's four words.
    let mut swapped = TCP4_RST.to_vec();
    let swap = |b: &mut [u8], at: usize, n: usize| b[at..at + n].reverse();
    for (at, n) in [(0, 4), (4, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4)] {
        swap(&mut swapped, at, n);
    }
    let mut at = 24;
    while at < swapped.len() {
        let caught = u32::from_le_bytes(swapped[at + 8..at + 12].try_into().expect("len"));
        for word in 0..4 {
            swap(&mut swapped, at + 4 * word, 4);
        }
        at += 16 + caught as usize;
    }
    assert_eq!(&swapped[..4], [0xa1, 0xb2, 0xc3, 0xd4]);
    let (le, be) = (read_pcap(TCP4_RST), read_pcap(&swapped));
    assert_eq!(le.len(), be.len());
    for (a, b) in le.iter().zip(&be) {
        assert_eq!((a.ms, a.frame, a.src, a.seq), (b.ms, b.frame, b.src, b.seq));
    }
}
