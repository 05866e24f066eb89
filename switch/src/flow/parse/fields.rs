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
}

/// What a field or action needs the match to say about the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prereq {
    IpOrArp,
    Ip,
    Arp,
    TcpOrUdp,
    Tcp,
    Udp,
    Icmp,
}

impl Prereq {
    pub(super) fn holds(self, m: &Match) -> bool {
        let dl_type = exact(m, Field::DlType);
        let proto = if dl_type == Some(consts::ETH_IPV4) {
            exact(m, Field::NwProto)
        } else {
            None
        };
        match self {
            Prereq::IpOrArp => matches!(dl_type, Some(consts::ETH_IPV4 | consts::ETH_ARP)),
            Prereq::Ip => dl_type == Some(consts::ETH_IPV4),
            Prereq::Arp => dl_type == Some(consts::ETH_ARP),
            Prereq::TcpOrUdp => matches!(proto, Some(consts::IP_TCP | consts::IP_UDP)),
            Prereq::Tcp => proto == Some(consts::IP_TCP),
            Prereq::Udp => proto == Some(consts::IP_UDP),
            Prereq::Icmp => proto == Some(consts::IP_ICMP),
        }
    }

    pub(super) fn needs(self) -> &'static str {
        match self {
            Prereq::IpOrArp => "dl_type=0x0800 (ip) or 0x0806 (arp)",
            Prereq::Ip => "dl_type=0x0800 (ip)",
            Prereq::Arp => "dl_type=0x0806 (arp)",
            Prereq::TcpOrUdp => "tcp or udp (dl_type=0x0800 with nw_proto=6 or 17)",
            Prereq::Tcp => "tcp (dl_type=0x0800 with nw_proto=6)",
            Prereq::Udp => "udp (dl_type=0x0800 with nw_proto=17)",
            Prereq::Icmp => "icmp (dl_type=0x0800 with nw_proto=1)",
        }
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
        "nw_tos" => (F::NwTos, Kind::NwTos, Some(Prereq::Ip)),
        "tp_src" => (F::TpSrc, int(16, true), Some(Prereq::TcpOrUdp)),
        "tp_dst" => (F::TpDst, int(16, true), Some(Prereq::TcpOrUdp)),
        "tcp_src" => (F::TpSrc, int(16, true), Some(Prereq::Tcp)),
        "tcp_dst" => (F::TpDst, int(16, true), Some(Prereq::Tcp)),
        "udp_src" => (F::TpSrc, int(16, true), Some(Prereq::Udp)),
        "udp_dst" => (F::TpDst, int(16, true), Some(Prereq::Udp)),
        "icmp_type" => (F::TpSrc, int(8, false), Some(Prereq::Icmp)),
        "icmp_code" => (F::TpDst, int(8, false), Some(Prereq::Icmp)),
        "arp_spa" => (F::NwSrc, Kind::Ip, Some(Prereq::Arp)),
        "arp_tpa" => (F::NwDst, Kind::Ip, Some(Prereq::Arp)),
        "arp_op" => (F::NwProto, int(8, false), Some(Prereq::Arp)),
        "tun_id" | "tunnel_id" => (F::TunId, Kind::TunnelId, None),
        "tun_src" => (F::TunSrc, Kind::Ip, None),
        "tun_dst" => (F::TunDst, Kind::Ip, None),
        _ => return None,
    })
}

/// `ip`, `tcp`, ...: (dl_type, nw_proto).
pub(super) fn shorthand(name: &str) -> Option<(u64, Option<u64>)> {
    Some(match name {
        "ip" => (consts::ETH_IPV4, None),
        "arp" => (consts::ETH_ARP, None),
        "icmp" => (consts::ETH_IPV4, Some(consts::IP_ICMP)),
        "tcp" => (consts::ETH_IPV4, Some(consts::IP_TCP)),
        "udp" => (consts::ETH_IPV4, Some(consts::IP_UDP)),
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
            Kind::Mac | Kind::Ip | Kind::TunnelId | Kind::Int { maskable: true, .. }
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
        };
        self.add_match(key, at, field, value & mask, mask)
    }
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
    if !is_ip && !is_arp {
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

    let (src, dst) = if is_ip && proto == Some(consts::IP_ICMP) {
        ("icmp_type", "icmp_code")
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
    items
}
