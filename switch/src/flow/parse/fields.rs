//! Match fields: their names, value kinds and prerequisites; parsing `field=value[/mask]`
//! items and printing a match back.

use super::token::Token;
use super::value::*;
use super::{FlowSyntax, ParseError, Parser};
use crate::flow::action::PortRef;
use crate::flow::key::{consts, Field, Match};

/// How a field's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Mac,
    Ip,
    Int {
        bits: u32,
        maskable: bool,
    },
    /// A tunnel ID: at most [`MAX_TUNNEL_ID`]; any mask (its high bits match the zeros
    /// every VNI has there).
    TunnelId,
    DlVlan,
    DlVlanPcp,
    NwTos,
    /// `+trk+est-new` flags or a number/mask.
    CtState,
    /// 128 bits (ct_label): stored as two halves.
    Label,
    /// An IPv6 address with an optional prefix length: stored as two halves.
    Ipv6,
    /// `+syn-ack` flags or a number/mask.
    TcpFlags,
}

/// TCP flag names, in bit order (as ovs-ofctl prints them).
const TCP_FLAGS: [(&str, u64); 9] = [
    ("fin", 0x001),
    ("syn", 0x002),
    ("rst", 0x004),
    ("psh", 0x008),
    ("ack", 0x010),
    ("urg", 0x020),
    ("ece", 0x040),
    ("cwr", 0x080),
    ("ns", 0x100),
];

/// `+a-b`: the flags of `mask`, `+` where `v` has them.
pub(super) fn fmt_flags(v: u64, mask: u64, names: &[(&str, u64)]) -> String {
    let mut s = String::new();
    for (name, bit) in names {
        if mask & bit != 0 {
            s.push(if v & bit != 0 { '+' } else { '-' });
            s.push_str(name);
        }
    }
    s
}

/// What a field or action needs the match to say about the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prereq {
    IpOrArp,
    /// IPv4.
    Ip,
    Ipv6,
    /// IPv4 or IPv6.
    IpAny,
    Arp,
    /// TCP or UDP over IPv4 or IPv6.
    TcpOrUdp,
    Tcp,
    Udp,
    Icmpv6,
    /// ICMP or ICMPv6 (`icmp_type` as OVS's dump-flows prints it for both).
    IcmpAny,
}

impl Prereq {
    pub(super) fn holds(self, m: &Match) -> bool {
        let dl_type = exact(m, Field::DlType);
        let v4 = dl_type == Some(consts::ETH_IPV4);
        let v6 = dl_type == Some(consts::ETH_IPV6);
        let proto = if v4 || v6 {
            exact(m, Field::NwProto)
        } else {
            None
        };
        let tcp = proto == Some(consts::IP_TCP);
        let udp = proto == Some(consts::IP_UDP);
        match self {
            Prereq::IpOrArp => matches!(dl_type, Some(consts::ETH_IPV4 | consts::ETH_ARP)),
            Prereq::Ip => v4,
            Prereq::Ipv6 => v6,
            Prereq::IpAny => v4 || v6,
            Prereq::Arp => dl_type == Some(consts::ETH_ARP),
            Prereq::TcpOrUdp => tcp || udp,
            Prereq::Tcp => tcp,
            Prereq::Udp => udp,
            Prereq::Icmpv6 => v6 && proto == Some(consts::IP_ICMPV6),
            Prereq::IcmpAny => {
                (v4 && proto == Some(consts::IP_ICMP)) || (v6 && proto == Some(consts::IP_ICMPV6))
            }
        }
    }

    /// What the match lacks, and how to add it (we refuse such a flow rather than add the
    /// prerequisite behind the user's back: see the module documentation).
    pub(super) fn needs(self) -> &'static str {
        match self {
            Prereq::IpOrArp => "dl_type=0x0800 (ip) or 0x0806 (arp): add 'ip' or 'arp' to the match",
            Prereq::Ip => "dl_type=0x0800 (ip): add 'ip' to the match",
            Prereq::Ipv6 => "dl_type=0x86dd (ipv6): add 'ipv6' to the match",
            Prereq::IpAny => "ip or ipv6 (dl_type=0x0800 or 0x86dd): add 'ip' or 'ipv6' to the match",
            Prereq::Arp => "dl_type=0x0806 (arp): add 'arp' to the match",
            Prereq::TcpOrUdp => "tcp or udp (nw_proto=6 or 17 over ip or ipv6): add 'tcp', 'udp', 'tcp6' or 'udp6' to the match",
            Prereq::Tcp => "tcp (nw_proto=6 over ip or ipv6): add 'tcp' or 'tcp6' to the match",
            Prereq::Udp => "udp (nw_proto=17 over ip or ipv6): add 'udp' or 'udp6' to the match",
            Prereq::Icmpv6 => "icmp6 (dl_type=0x86dd with nw_proto=58): add 'icmp6' to the match",
            Prereq::IcmpAny => "icmp or icmp6: add 'icmp' or 'icmp6' to the match",
        }
    }

    /// What the match lacks, without the advice (which is for a flow's own match).
    pub(super) fn condition(self) -> &'static str {
        let needs = self.needs();
        needs.split_once(": add").map_or(needs, |(what, _)| what)
    }
}

/// The value of a field matched exactly.
pub(super) fn exact(m: &Match, f: Field) -> Option<u64> {
    let (v, mask) = m.get(f);
    (mask == f.full_mask()).then_some(v)
}

pub(super) fn field_def(name: &str) -> Option<(Field, Kind, Option<Prereq>)> {
    use Field as F;
    let int = |bits, maskable| Kind::Int { bits, maskable };
    if let Some(f) = pipeline_field(name) {
        return Some((f, int(f.width(), true), None));
    }
    Some(match name {
        "dl_src" | "eth_src" => (F::DlSrc, Kind::Mac, None),
        "dl_dst" | "eth_dst" => (F::DlDst, Kind::Mac, None),
        "dl_type" | "eth_type" => (F::DlType, int(16, false), None),
        "dl_vlan" => (F::VlanTci, Kind::DlVlan, None),
        "dl_vlan_pcp" => (F::VlanTci, Kind::DlVlanPcp, None),
        "vlan_tci" => (F::VlanTci, int(16, true), None),
        "nw_src" => (F::NwSrc, Kind::Ip, Some(Prereq::IpOrArp)),
        "nw_dst" => (F::NwDst, Kind::Ip, Some(Prereq::IpOrArp)),
        "ip_src" => (F::NwSrc, Kind::Ip, Some(Prereq::Ip)),
        "ip_dst" => (F::NwDst, Kind::Ip, Some(Prereq::Ip)),
        "nw_proto" => (F::NwProto, int(8, false), Some(Prereq::IpOrArp)),
        "ip_proto" => (F::NwProto, int(8, false), Some(Prereq::Ip)),
        "nw_tos" => (F::NwTos, Kind::NwTos, Some(Prereq::IpAny)),
        "tp_src" => (F::TpSrc, int(16, true), Some(Prereq::TcpOrUdp)),
        "tp_dst" => (F::TpDst, int(16, true), Some(Prereq::TcpOrUdp)),
        "tcp_src" => (F::TpSrc, int(16, true), Some(Prereq::Tcp)),
        "tcp_dst" => (F::TpDst, int(16, true), Some(Prereq::Tcp)),
        "udp_src" => (F::TpSrc, int(16, true), Some(Prereq::Udp)),
        "udp_dst" => (F::TpDst, int(16, true), Some(Prereq::Udp)),
        "icmp_type" => (F::TpSrc, int(8, false), Some(Prereq::IcmpAny)),
        "icmp_code" => (F::TpDst, int(8, false), Some(Prereq::IcmpAny)),
        "arp_spa" => (F::NwSrc, Kind::Ip, Some(Prereq::Arp)),
        "arp_tpa" => (F::NwDst, Kind::Ip, Some(Prereq::Arp)),
        "arp_op" => (F::NwProto, int(8, false), Some(Prereq::Arp)),
        "tun_id" | "tunnel_id" => (F::TunId, Kind::TunnelId, None),
        "tun_src" => (F::TunSrc, Kind::Ip, None),
        "tun_dst" => (F::TunDst, Kind::Ip, None),
        "ct_state" => (F::CtState, Kind::CtState, None),
        "ct_zone" => (F::CtZone, int(16, false), None),
        "ct_mark" => (F::CtMark, int(32, true), None),
        "ct_label" => (F::CtLabelLo, Kind::Label, None),
        "ct_nw_src" => (F::CtNwSrc, Kind::Ip, Some(Prereq::Ip)),
        "ct_nw_dst" => (F::CtNwDst, Kind::Ip, Some(Prereq::Ip)),
        "ct_nw_proto" => (F::CtNwProto, int(8, false), Some(Prereq::IpAny)),
        "ct_tp_src" => (F::CtTpSrc, int(16, true), Some(Prereq::IpAny)),
        "ct_tp_dst" => (F::CtTpDst, int(16, true), Some(Prereq::IpAny)),
        "conj_id" => (F::ConjId, int(32, false), None),
        "ipv6_src" => (F::Ipv6SrcLo, Kind::Ipv6, Some(Prereq::Ipv6)),
        "ipv6_dst" => (F::Ipv6DstLo, Kind::Ipv6, Some(Prereq::Ipv6)),
        "ipv6_label" => (F::Ipv6Label, int(20, true), Some(Prereq::Ipv6)),
        "nd_target" => (F::NdTargetLo, Kind::Ipv6, Some(Prereq::Icmpv6)),
        "nd_sll" => (F::ArpSha, Kind::Mac, Some(Prereq::Icmpv6)),
        "nd_tll" => (F::ArpTha, Kind::Mac, Some(Prereq::Icmpv6)),
        "arp_sha" => (F::ArpSha, Kind::Mac, Some(Prereq::Arp)),
        "arp_tha" => (F::ArpTha, Kind::Mac, Some(Prereq::Arp)),
        "icmpv6_type" => (F::TpSrc, int(8, false), Some(Prereq::Icmpv6)),
        "icmpv6_code" => (F::TpDst, int(8, false), Some(Prereq::Icmpv6)),
        "nw_ttl" => (F::NwTtl, int(8, false), Some(Prereq::IpAny)),
        "nw_ecn" | "ip_ecn" => (F::NwEcn, int(2, false), Some(Prereq::IpAny)),
        "tcp_flags" => (F::TcpFlags, Kind::TcpFlags, Some(Prereq::Tcp)),
        _ => return None,
    })
}

/// `metadata`, `reg0`-`reg15`, `xreg0`-`xreg7`: the fields a flow carries between tables.
pub(super) fn pipeline_field(name: &str) -> Option<Field> {
    let index = |s: &str, below: u8| -> Option<u8> {
        let n: u8 = s.parse().ok()?;
        (n < below && (s == "0" || !s.starts_with('0'))).then_some(n)
    };
    if name == "metadata" {
        Some(Field::Metadata)
    } else if let Some(n) = name.strip_prefix("xreg") {
        index(n, 8).map(Field::XReg)
    } else if let Some(n) = name.strip_prefix("reg") {
        index(n, 16).map(Field::Reg)
    } else {
        None
    }
}

/// The fields `load`, `move`, `set_field` and `ct(zone=...)` can name as `NAME[a..b]`, by
/// ovs-ofctl and NXM/OXM names: (names, field, prerequisite to read or write it).
const SUBFIELD_NAMES: &[(&[&str], Field, Option<Prereq>)] = &[
    (
        &["NXM_OF_IN_PORT", "OXM_OF_IN_PORT", "in_port"],
        Field::InPort,
        None,
    ),
    (&["NXM_OF_ETH_SRC", "eth_src", "dl_src"], Field::DlSrc, None),
    (&["NXM_OF_ETH_DST", "eth_dst", "dl_dst"], Field::DlDst, None),
    (
        &["NXM_OF_ETH_TYPE", "eth_type", "dl_type"],
        Field::DlType,
        None,
    ),
    (&["NXM_OF_VLAN_TCI", "vlan_tci"], Field::VlanTci, None),
    (&["nw_src"], Field::NwSrc, Some(Prereq::IpOrArp)),
    (&["nw_dst"], Field::NwDst, Some(Prereq::IpOrArp)),
    (&["nw_proto"], Field::NwProto, Some(Prereq::IpOrArp)),
    (&["NXM_OF_IP_SRC", "ip_src"], Field::NwSrc, Some(Prereq::Ip)),
    (&["NXM_OF_IP_DST", "ip_dst"], Field::NwDst, Some(Prereq::Ip)),
    (
        &["NXM_OF_IP_PROTO", "ip_proto"],
        Field::NwProto,
        Some(Prereq::IpAny),
    ),
    (&["tp_src"], Field::TpSrc, Some(Prereq::TcpOrUdp)),
    (&["tp_dst"], Field::TpDst, Some(Prereq::TcpOrUdp)),
    (
        &["NXM_OF_TCP_SRC", "tcp_src"],
        Field::TpSrc,
        Some(Prereq::Tcp),
    ),
    (
        &["NXM_OF_TCP_DST", "tcp_dst"],
        Field::TpDst,
        Some(Prereq::Tcp),
    ),
    (
        &["NXM_OF_UDP_SRC", "udp_src"],
        Field::TpSrc,
        Some(Prereq::Udp),
    ),
    (
        &["NXM_OF_UDP_DST", "udp_dst"],
        Field::TpDst,
        Some(Prereq::Udp),
    ),
    (
        &["NXM_OF_ARP_OP", "arp_op"],
        Field::NwProto,
        Some(Prereq::Arp),
    ),
    (
        &["NXM_OF_ARP_SPA", "arp_spa"],
        Field::NwSrc,
        Some(Prereq::Arp),
    ),
    (
        &["NXM_OF_ARP_TPA", "arp_tpa"],
        Field::NwDst,
        Some(Prereq::Arp),
    ),
    (
        &["NXM_NX_ARP_SHA", "arp_sha"],
        Field::ArpSha,
        Some(Prereq::Arp),
    ),
    (
        &["NXM_NX_ARP_THA", "arp_tha"],
        Field::ArpTha,
        Some(Prereq::Arp),
    ),
    (
        &["NXM_NX_TUN_ID", "tun_id", "tunnel_id"],
        Field::TunId,
        None,
    ),
    (&["OXM_OF_METADATA", "metadata"], Field::Metadata, None),
    (&["NXM_NX_CT_STATE", "ct_state"], Field::CtState, None),
    (&["NXM_NX_CT_ZONE", "ct_zone"], Field::CtZone, None),
    (&["NXM_NX_CT_MARK", "ct_mark"], Field::CtMark, None),
];

/// A field by a name `NAME[a..b]` can use, with its prerequisite.
pub(super) fn subfield_field(name: &str) -> Option<(Field, Option<Prereq>)> {
    if let Some(n) = name.strip_prefix("NXM_NX_REG") {
        return pipeline_field(&format!("reg{n}")).map(|f| (f, None));
    }
    if let Some(n) = name.strip_prefix("OXM_OF_PKT_REG") {
        return pipeline_field(&format!("xreg{n}")).map(|f| (f, None));
    }
    if let Some(f) = pipeline_field(name) {
        return Some((f, None));
    }
    SUBFIELD_NAMES
        .iter()
        .find(|(names, _, _)| names.contains(&name))
        .map(|(_, f, p)| (*f, *p))
}

/// The name a subfield of `f` is printed with (one that parses back with a prerequisite
/// the flow already had).
pub(super) fn subfield_name(f: Field) -> String {
    match f {
        Field::Reg(n) => format!("NXM_NX_REG{n}"),
        Field::XReg(n) => format!("OXM_OF_PKT_REG{n}"),
        _ => SUBFIELD_NAMES
            .iter()
            .find(|(_, field, _)| *field == f)
            .map_or_else(|| format!("{f:?}"), |(names, _, _)| names[0].to_string()),
    }
}

/// Fields `load` and `move` may write (the rest are read-only, or written by `ct` only).
pub(super) fn writable(f: Field, prereq: Option<Prereq>) -> bool {
    use Field as F;
    let header = matches!(
        f,
        F::DlSrc | F::DlDst | F::VlanTci | F::NwSrc | F::NwDst | F::TpSrc | F::TpDst
    );
    let ipv4_header = matches!(f, F::NwSrc | F::NwDst | F::TpSrc | F::TpDst);
    let arp = prereq == Some(Prereq::Arp);
    matches!(
        f,
        F::InPort | F::TunId | F::Metadata | F::Reg(_) | F::XReg(_)
    ) || (header && !arp && (!ipv4_header || prereq.is_some()))
}

/// `ip`, `tcp`, ...: (dl_type, nw_proto).
pub(super) fn shorthand(name: &str) -> Option<(u64, Option<u64>)> {
    Some(match name {
        "ip" => (consts::ETH_IPV4, None),
        "arp" => (consts::ETH_ARP, None),
        "icmp" => (consts::ETH_IPV4, Some(consts::IP_ICMP)),
        "tcp" => (consts::ETH_IPV4, Some(consts::IP_TCP)),
        "udp" => (consts::ETH_IPV4, Some(consts::IP_UDP)),
        "ipv6" => (consts::ETH_IPV6, None),
        "icmp6" => (consts::ETH_IPV6, Some(consts::IP_ICMPV6)),
        "tcp6" => (consts::ETH_IPV6, Some(consts::IP_TCP)),
        "udp6" => (consts::ETH_IPV6, Some(consts::IP_UDP)),
        _ => return None,
    })
}

/// Flow flags ovs-ofctl accepts that we do not.
pub(super) const FLAGS: [&str; 5] = [
    "send_flow_rem",
    "check_overlap",
    "reset_counts",
    "no_packet_counts",
    "no_byte_counts",
];

/// dump-flows statistics, ignored (as ovs-ofctl does) so its output can be fed back.
pub(super) const STATS: [&str; 5] = ["duration", "n_packets", "n_bytes", "idle_age", "hard_age"];

impl<'a> Parser<'a> {
    /// Adds `field & mask == value & mask`, refusing to contradict an earlier item.
    fn add_match(
        &mut self,
        who: &str,
        at: usize,
        field: Field,
        value: u64,
        mask: u64,
    ) -> Result<(), ParseError> {
        let (old, old_mask) = self.spec.m.get(field);
        if (old ^ value) & old_mask & mask != 0 {
            return Err(self.err(
                at,
                format!("{who} conflicts with an earlier match on the same field"),
            ));
        }
        self.spec.m.set(field, value, mask);
        Ok(())
    }

    pub(super) fn match_item(&mut self, t: &Token<'a>) -> Result<(), ParseError> {
        let key = t.key;
        if t.sep == b'(' {
            return Err(self.err(t.at, format!("unsupported field '{key}(...)'")));
        }
        if let Some((dl_type, proto)) = shorthand(key) {
            if let Some((_, vat)) = t.value {
                return Err(self.err(vat, format!("'{key}' takes no value")));
            }
            self.add_match(key, t.at, Field::DlType, dl_type, 0xffff)?;
            if let Some(p) = proto {
                self.add_match(key, t.at, Field::NwProto, p, 0xff)?;
            }
            return Ok(());
        }
        if FLAGS.contains(&key) {
            return Err(self.err(t.at, format!("unsupported flag '{key}'")));
        }
        let def = field_def(key);
        let known = def.is_some()
            || STATS.contains(&key)
            || matches!(
                key,
                "table"
                    | "priority"
                    | "cookie"
                    | "idle_timeout"
                    | "hard_timeout"
                    | "out_port"
                    | "in_port"
            );
        if !known {
            return Err(self.err(t.at, format!("unsupported field '{key}'")));
        }
        let Some((v, vat)) = t.value else {
            return Err(self.err(t.at, format!("'{key}' needs a value ({key}=VALUE)")));
        };
        if v.is_empty() {
            return Err(self.err(vat, format!("missing value after '{key}='")));
        }
        if let Some((field, kind, prereq)) = def {
            if let Some(p) = prereq {
                self.prereqs.push((p, key.to_string(), t.at));
            }
            return self.field(key, t.at, field, kind, v, vat);
        }
        let syntax = self.syntax;
        match key {
            "table" => {
                self.once("table", t.at)?;
                let n = self.uint("table", v, vat, 255)? as u8;
                self.spec.table = match (n, syntax) {
                    (255, FlowSyntax::Add) => {
                        return Err(self.err(vat, "table=255 is out of range (0-254)"))
                    }
                    (255, _) => None,
                    (n, _) => Some(n),
                };
            }
            "priority" => {
                self.once("priority", t.at)?;
                self.spec.priority = self.uint("priority", v, vat, 0xffff)? as u16;
            }
            "idle_timeout" | "hard_timeout" => {
                if syntax == FlowSyntax::MatchOnly {
                    return Err(self.err(
                        t.at,
                        format!("{key} is not allowed in a del-flows/dump-flows filter"),
                    ));
                }
                let n = self.uint(key, v, vat, 0xffff)? as u16;
                if key == "idle_timeout" {
                    self.once("idle_timeout", t.at)?;
                    self.spec.idle_timeout = n;
                } else {
                    self.once("hard_timeout", t.at)?;
                    self.spec.hard_timeout = n;
                }
            }
            "out_port" => {
                if syntax != FlowSyntax::MatchOnly {
                    return Err(self.err(
                        t.at,
                        "out_port is only allowed in del-flows/dump-flows filters",
                    ));
                }
                self.once("out_port", t.at)?;
                self.spec.out_port = Some(self.plain_port("out_port", v, vat)?);
            }
            "in_port" => {
                self.once("in_port", t.at)?;
                self.spec.in_port = Some(self.plain_port("in_port", v, vat)?);
            }
            "cookie" => self.cookie(t.at, v, vat)?,
            _ => {} // STATS: ignored
        }
        Ok(())
    }

    fn cookie(&mut self, at: usize, v: &str, vat: usize) -> Result<(), ParseError> {
        let (val, mask) = match v.split_once('/') {
            Some((val, m)) => (val, Some((m, vat + val.len() + 1))),
            None => (v, None),
        };
        let value = self.uint("cookie", val, vat, u64::MAX)?;
        let mask = match mask {
            None => None,
            Some(("-1", _)) => Some(u64::MAX),
            Some((m, mat)) => Some(self.uint("cookie mask", m, mat, u64::MAX)?),
        };
        match (self.syntax, mask) {
            (FlowSyntax::Add, Some(_)) => {
                return Err(self.err(
                    vat + val.len(),
                    "add-flow cannot use a cookie mask (cookie=V/M filters mod-flows, \
                     del-flows and dump-flows)",
                ))
            }
            (FlowSyntax::Add, None) => {
                self.once("cookie", at)?;
                self.spec.cookie = value;
            }
            (FlowSyntax::Modify, None) => {
                self.once("cookie", at)?;
                self.spec.new_cookie = Some(value);
            }
            (_, mask) => {
                self.once("cookie=V/M", at)?;
                let mask = mask.unwrap_or(u64::MAX);
                self.spec.cookie = value & mask;
                self.spec.cookie_mask = Some(mask);
            }
        }
        Ok(())
    }

    fn field(
        &mut self,
        key: &str,
        at: usize,
        field: Field,
        kind: Kind,
        v: &str,
        vat: usize,
    ) -> Result<(), ParseError> {
        let (val, mask) = match v.split_once('/') {
            Some((val, m)) => (val, Some((m, vat + val.len() + 1))),
            None => (v, None),
        };
        let maskable = matches!(
            kind,
            Kind::Mac
                | Kind::Ip
                | Kind::TunnelId
                | Kind::CtState
                | Kind::Label
                | Kind::Ipv6
                | Kind::TcpFlags
                | Kind::Int { maskable: true, .. }
        );
        if let (Some((_, mat)), false) = (mask, maskable) {
            let hint = if matches!(kind, Kind::DlVlan | Kind::DlVlanPcp) {
                " (use vlan_tci=VALUE/MASK)"
            } else {
                ""
            };
            return Err(self.err(mat - 1, format!("{key} does not take a mask{hint}")));
        }
        let (value, mask) = match kind {
            Kind::Mac => {
                let value = self.mac(key, val, vat)?;
                let mask = match mask {
                    Some((m, mat)) => self.mac(key, m, mat)?,
                    None => field.full_mask(),
                };
                (value, mask)
            }
            Kind::Ip => {
                let value = self.ip(key, val, vat)?;
                let mask = match mask {
                    Some((m, mat)) if m.contains('.') => self.ip(key, m, mat)?,
                    Some((m, mat)) => {
                        let bits = self.uint(&format!("{key} prefix length"), m, mat, 32)?;
                        (0xffff_ffffu64 << (32 - bits)) & 0xffff_ffff
                    }
                    None => field.full_mask(),
                };
                (value, mask)
            }
            Kind::Int { bits, .. } => {
                let max = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                let value = self.uint(key, val, vat, max)?;
                let mask = match mask {
                    Some((m, mat)) => self.uint(&format!("{key} mask"), m, mat, max)?,
                    None => field.full_mask(),
                };
                (value, mask)
            }
            Kind::TunnelId => {
                let value = self.tunnel_id(key, val, vat)?;
                let mask = match mask {
                    Some((m, mat)) => self.uint(&format!("{key} mask"), m, mat, u64::MAX)?,
                    None => field.full_mask(),
                };
                (value, mask)
            }
            Kind::DlVlan => match number(val) {
                Some(Some(0xffff)) => (0, 0xffff),
                _ => {
                    let vid = self.uint(key, val, vat, 4095).map_err(|e| ParseError {
                        message: format!("{} (or 0xffff for untagged)", e.message),
                        ..e
                    })?;
                    (consts::VLAN_CFI | vid, 0x1fff)
                }
            },
            Kind::DlVlanPcp => {
                let pcp = self.uint(key, val, vat, 7)?;
                ((pcp << 13) | consts::VLAN_CFI, 0xf000)
            }
            Kind::NwTos => {
                let tos = self.uint(key, val, vat, 255)?;
                if tos & 3 != 0 {
                    return Err(self.err(
                        vat,
                        format!("{key}={val} is invalid: the low 2 bits (ECN) must be 0"),
                    ));
                }
                (tos, 0xff)
            }
            Kind::CtState => self.ct_state(key, val, vat, mask)?,
            Kind::TcpFlags => self.flags(key, val, vat, mask, &TCP_FLAGS, 0xfff)?,
            Kind::Label => {
                let value = self.uint128(key, val, vat)?;
                let mask = match mask {
                    Some((m, mat)) => self.uint128(&format!("{key} mask"), m, mat)?,
                    None => u128::MAX,
                };
                let (v, m) = (value & mask, mask);
                self.add_match(
                    key,
                    at,
                    Field::CtLabelHi,
                    (v >> 64) as u64,
                    (m >> 64) as u64,
                )?;
                return self.add_match(key, at, Field::CtLabelLo, v as u64, m as u64);
            }
            Kind::Ipv6 => {
                let addr = self.ipv6(key, val, vat)?;
                let mask = match mask {
                    Some((m, mat)) if m.contains(':') => self.ipv6(key, m, mat)?,
                    Some((m, mat)) => {
                        let bits = self.uint(&format!("{key} prefix length"), m, mat, 128)?;
                        u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0)
                    }
                    None => u128::MAX,
                };
                let (v, m) = (addr & mask, mask);
                let (hi, lo) = ipv6_halves(field);
                self.add_match(key, at, hi, (v >> 64) as u64, (m >> 64) as u64)?;
                return self.add_match(key, at, lo, v as u64, m as u64);
            }
        };
        self.add_match(key, at, field, value & mask, mask)
    }
}

impl<'a> Parser<'a> {
    /// A flag set: `+name-name...` (each at most once) or a number with an optional mask
    /// (`full` without one).
    pub(super) fn flags(
        &self,
        key: &str,
        val: &str,
        vat: usize,
        mask: Option<(&str, usize)>,
        names: &[(&str, u64)],
        full: u64,
    ) -> Result<(u64, u64), ParseError> {
        // A leading name without a sign means `+name` (`tcp_flags=syn+ack`); the offset
        // moves back by the sign added, so columns still point into the text.
        let signed;
        let (val, vat) = if val.starts_with(|c: char| c.is_ascii_alphabetic()) {
            signed = format!("+{val}");
            (signed.as_str(), vat.saturating_sub(1))
        } else {
            (val, vat)
        };
        if !val.starts_with(['+', '-']) {
            let value = self.uint(key, val, vat, full)?;
            let mask = match mask {
                Some((m, mat)) => self.uint(&format!("{key} mask"), m, mat, full)?,
                None => full,
            };
            return Ok((value, mask));
        }
        if let Some((_, mat)) = mask {
            return Err(self.err(mat - 1, format!("{key}: flags take no mask")));
        }
        let (mut value, mut mask) = (0u64, 0u64);
        let mut rest = val;
        let mut at = vat;
        while let Some(sign) = rest.chars().next() {
            let end = rest[1..].find(['+', '-']).map_or(rest.len(), |i| i + 1);
            let name = &rest[1..end];
            let Some((_, bit)) = names.iter().find(|(n, _)| *n == name) else {
                let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                return Err(self.err(
                    at,
                    format!("{key}: unknown flag '{name}' (one of {})", all.join(", ")),
                ));
            };
            if mask & bit != 0 {
                return Err(self.err(at, format!("{key}: '{name}' given twice")));
            }
            mask |= bit;
            if sign == '+' {
                value |= bit;
            }
            at += end;
            rest = &rest[end..];
        }
        Ok((value, mask))
    }
}

/// The (high, low) halves of a 128-bit field named by its low half.
pub(super) fn ipv6_halves(lo: Field) -> (Field, Field) {
    match lo {
        Field::Ipv6SrcLo => (Field::Ipv6SrcHi, Field::Ipv6SrcLo),
        Field::Ipv6DstLo => (Field::Ipv6DstHi, Field::Ipv6DstLo),
        Field::NdTargetLo => (Field::NdTargetHi, Field::NdTargetLo),
        _ => (Field::CtLabelHi, Field::CtLabelLo),
    }
}

/// A 128-bit (value, mask) from two halves.
pub(super) fn get128(m: &Match, lo: Field) -> (u128, u128) {
    let (hi, lo) = ipv6_halves(lo);
    let (vh, mh) = m.get(hi);
    let (vl, ml) = m.get(lo);
    (
        (u128::from(vh) << 64) | u128::from(vl),
        (u128::from(mh) << 64) | u128::from(ml),
    )
}

/// The match part as ovs-ofctl prints it (`ip,in_port=1,nw_src=10.0.0.0/24`); empty when
/// the match is empty.
pub fn format_match(m: &Match) -> String {
    match_items(m, None).join(",")
}

pub(super) fn fmt_masked_hex(name: &str, v: u64, mask: u64, full: u64) -> String {
    if mask == full {
        format!("{name}={v:#x}")
    } else {
        format!("{name}={v:#x}/{mask:#x}")
    }
}

/// ovs-ofctl's order: shorthand, tunnel, in_port, VLAN, Ethernet, L3, L4.
pub(super) fn match_items(m: &Match, in_port: Option<&PortRef>) -> Vec<String> {
    let mut items = Vec::new();
    let dl_type = exact(m, Field::DlType);
    let proto = exact(m, Field::NwProto);
    let is_ip = dl_type == Some(consts::ETH_IPV4);
    let is_arp = dl_type == Some(consts::ETH_ARP);
    let is_ipv6 = dl_type == Some(consts::ETH_IPV6);
    let mut skip_proto = false;
    if is_ip {
        let (name, skip) = match proto {
            Some(consts::IP_ICMP) => ("icmp", true),
            Some(consts::IP_TCP) => ("tcp", true),
            Some(consts::IP_UDP) => ("udp", true),
            _ => ("ip", false),
        };
        items.push(name.to_string());
        skip_proto = skip;
    } else if is_arp {
        items.push("arp".to_string());
    } else if is_ipv6 {
        let (name, skip) = match proto {
            Some(consts::IP_ICMPV6) => ("icmp6", true),
            Some(consts::IP_TCP) => ("tcp6", true),
            Some(consts::IP_UDP) => ("udp6", true),
            _ => ("ipv6", false),
        };
        items.push(name.to_string());
        skip_proto = skip;
    }

    let (v, mask) = m.get(Field::TunId);
    if mask != 0 {
        items.push(fmt_masked_hex("tun_id", v, mask, u64::MAX));
    }
    for (f, name) in [(Field::TunSrc, "tun_src"), (Field::TunDst, "tun_dst")] {
        let (v, mask) = m.get(f);
        if mask != 0 {
            items.push(format!("{name}={}", fmt_ip_masked(v, mask)));
        }
    }

    match in_port {
        Some(p) => items.push(format!("in_port={}", fmt_port(p))),
        None => {
            let (v, mask) = m.get(Field::InPort);
            if mask != 0 {
                items.push(format!("in_port={v}"));
            }
        }
    }

    super::ct::ct_match_items(m, &mut items);
    let mut pipeline_fields = vec![Field::Metadata];
    pipeline_fields.extend((0..16).map(Field::Reg));
    for f in pipeline_fields {
        let (v, mask) = m.get(f);
        if mask != 0 {
            let name = match f {
                Field::Reg(n) => format!("reg{n}"),
                _ => "metadata".to_string(),
            };
            items.push(fmt_masked_hex(&name, v, mask, f.full_mask()));
        }
    }
    if let Some(id) = exact(m, Field::ConjId) {
        items.push(format!("conj_id={id}"));
    }

    let (tci, mask) = m.get(Field::VlanTci);
    if mask != 0 {
        let vid_mask = mask & 0x0fff;
        let pcp_mask = mask & 0xe000;
        if mask & consts::VLAN_CFI != 0
            && tci & consts::VLAN_CFI != 0
            && (vid_mask == 0 || vid_mask == 0x0fff)
            && (pcp_mask == 0 || pcp_mask == 0xe000)
            && (vid_mask != 0 || pcp_mask != 0)
        {
            if vid_mask != 0 {
                items.push(format!("dl_vlan={}", tci & 0x0fff));
            }
            if pcp_mask != 0 {
                items.push(format!("dl_vlan_pcp={}", tci >> 13));
            }
        } else if mask == 0xffff {
            items.push(format!("vlan_tci={tci:#06x}"));
        } else {
            items.push(format!("vlan_tci={tci:#06x}/{mask:#06x}"));
        }
    }

    for (f, name) in [(Field::DlSrc, "dl_src"), (Field::DlDst, "dl_dst")] {
        let (v, mask) = m.get(f);
        if mask == f.full_mask() {
            items.push(format!("{name}={}", fmt_mac(v)));
        } else if mask != 0 {
            items.push(format!("{name}={}/{}", fmt_mac(v), fmt_mac(mask)));
        }
    }
    if !is_ip && !is_arp && !is_ipv6 {
        let (v, mask) = m.get(Field::DlType);
        if mask != 0 {
            items.push(format!("dl_type={v:#06x}"));
        }
    }

    let (src, dst) = if is_arp {
        ("arp_spa", "arp_tpa")
    } else {
        ("nw_src", "nw_dst")
    };
    for (f, name) in [(Field::NwSrc, src), (Field::NwDst, dst)] {
        let (v, mask) = m.get(f);
        if mask != 0 {
            items.push(format!("{name}={}", fmt_ip_masked(v, mask)));
        }
    }
    let (v, mask) = m.get(Field::NwProto);
    if mask != 0 && !skip_proto {
        let name = if is_arp { "arp_op" } else { "nw_proto" };
        items.push(format!("{name}={v}"));
    }
    let (v, mask) = m.get(Field::NwTos);
    if mask != 0 {
        items.push(format!("nw_tos={v}"));
    }
    for (lo, name) in [
        (Field::Ipv6SrcLo, "ipv6_src"),
        (Field::Ipv6DstLo, "ipv6_dst"),
        (Field::NdTargetLo, "nd_target"),
    ] {
        let (v, mask) = get128(m, lo);
        if mask == u128::MAX {
            items.push(format!("{name}={}", std::net::Ipv6Addr::from(v)));
        } else if mask != 0 {
            let prefix = mask.leading_ones();
            if mask.checked_shl(prefix).unwrap_or(0) == 0 {
                items.push(format!("{name}={}/{prefix}", std::net::Ipv6Addr::from(v)));
            } else {
                items.push(format!(
                    "{name}={}/{}",
                    std::net::Ipv6Addr::from(v),
                    std::net::Ipv6Addr::from(mask)
                ));
            }
        }
    }
    let (v, mask) = m.get(Field::Ipv6Label);
    if mask != 0 {
        items.push(fmt_masked_hex(
            "ipv6_label",
            v,
            mask,
            Field::Ipv6Label.full_mask(),
        ));
    }
    for (f, name) in [(Field::NwTtl, "nw_ttl"), (Field::NwEcn, "nw_ecn")] {
        if let Some(v) = exact(m, f) {
            items.push(format!("{name}={v}"));
        }
    }
    let (sha, tha) = if is_arp {
        ("arp_sha", "arp_tha")
    } else {
        ("nd_sll", "nd_tll")
    };
    for (f, name) in [(Field::ArpSha, sha), (Field::ArpTha, tha)] {
        let (v, mask) = m.get(f);
        if mask == f.full_mask() {
            items.push(format!("{name}={}", fmt_mac(v)));
        } else if mask != 0 {
            items.push(format!("{name}={}/{}", fmt_mac(v), fmt_mac(mask)));
        }
    }

    let (src, dst) = if is_ip && proto == Some(consts::IP_ICMP) {
        ("icmp_type", "icmp_code")
    } else if is_ipv6 && proto == Some(consts::IP_ICMPV6) {
        ("icmpv6_type", "icmpv6_code")
    } else {
        ("tp_src", "tp_dst")
    };
    for (f, name) in [(Field::TpSrc, src), (Field::TpDst, dst)] {
        let (v, mask) = m.get(f);
        if mask == f.full_mask() {
            items.push(format!("{name}={v}"));
        } else if mask != 0 {
            items.push(format!("{name}={v:#x}/{mask:#x}"));
        }
    }
    let (v, mask) = m.get(Field::TcpFlags);
    if mask & !0x1ff == 0 && mask != 0 {
        items.push(format!("tcp_flags={}", fmt_flags(v, mask, &TCP_FLAGS)));
    } else if mask != 0 {
        items.push(fmt_masked_hex(
            "tcp_flags",
            v,
            mask,
            Field::TcpFlags.full_mask(),
        ));
    }
    items
}
