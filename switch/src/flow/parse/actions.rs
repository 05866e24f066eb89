//! Actions: parsing `actions=...` and printing actions back.

use std::net::Ipv4Addr;

use super::fields::{pipeline_field, subfield_field, subfield_name, writable, Prereq};
use super::token::{Token, Tokenizer};
use super::value::*;
use super::{ParseError, Parser, MAX_TABLE};
use crate::flow::action::{Action, SubField};
use crate::flow::key::Field;

/// Action words that take no argument and that we do not support (other bare words are
/// port names).
pub(super) const UNSUPPORTED_BARE_ACTIONS: [&str; 6] = [
    "controller",
    "exit",
    "pop_queue",
    "clear_actions",
    "dec_mpls_ttl",
    "dec_nsh_ttl",
];

impl<'a> Parser<'a> {
    pub(super) fn actions(&mut self, start: usize) -> Result<Vec<Action>, ParseError> {
        let mut tokens = Tokenizer {
            line: self.line,
            pos: start,
            end: self.line.len(),
        };
        let mut out = Vec::new();
        let mut drop_at = None;
        let mut goto_at = None;
        let mut count = 0;
        while let Some(t) = tokens.next(false)? {
            count += 1;
            if let Some(g) = goto_at {
                return Err(self.err(g, "goto_table must be the last action"));
            }
            let name = t.key.to_ascii_lowercase();
            if name == "drop" {
                if t.value.is_some() {
                    return Err(self.err(t.at, "'drop' takes no argument"));
                }
                drop_at = Some(t.at);
                continue;
            }
            if name == "goto_table" {
                goto_at = Some(t.at);
            }
            out.push(self.action(&name, &t)?);
        }
        if let (Some(at), true) = (drop_at, count > 1) {
            return Err(self.err(at, "'drop' must be the only action"));
        }
        let conjunctions = out
            .iter()
            .filter(|a| matches!(a, Action::Conjunction { .. }))
            .count();
        if conjunctions > 0 && conjunctions < out.len() {
            return Err(self.err(
                start,
                "conjunction(...) cannot be mixed with other actions (a conjunctive flow only \
                 says which dimension it is)",
            ));
        }
        if let (Some(at), Some(Action::GotoTable(to))) = (goto_at, out.last()) {
            let from = self.spec.table.unwrap_or(0);
            if *to <= from {
                return Err(self.err(
                    at,
                    format!("goto_table:{to} must go to a later table than this flow's ({from})"),
                ));
            }
        }
        Ok(out)
    }

    fn action(&mut self, name: &str, t: &Token<'a>) -> Result<Action, ParseError> {
        let key = t.key;
        let no_arg = |a: Action| -> Result<Action, ParseError> {
            match t.value {
                Some(_) => Err(self.err(t.at, format!("'{key}' takes no argument"))),
                None => Ok(a),
            }
        };
        let takes_arg = matches!(
            name,
            "output"
                | "mod_vlan_vid"
                | "mod_vlan_pcp"
                | "push_vlan"
                | "mod_dl_src"
                | "mod_dl_dst"
                | "mod_nw_src"
                | "mod_nw_dst"
                | "mod_nw_tos"
                | "mod_tp_src"
                | "mod_tp_dst"
                | "set_field"
                | "set_tunnel"
                | "set_tunnel64"
                | "resubmit"
                | "goto_table"
                | "note"
                | "load"
                | "move"
                | "ct"
                | "conjunction"
                | "group"
                | "meter"
                | "mod_nw_ttl"
                | "mod_nw_ecn"
        );
        let (arg, aat) = match t.value {
            Some((a, aat)) => (a, aat),
            None if name == "ct" => {
                return Err(self.err(t.at, "ct needs its options in parentheses: ct(...)"))
            }
            None if takes_arg => {
                return Err(self.err(t.at, format!("'{key}' needs an argument ({key}:VALUE)")))
            }
            None => ("", t.at),
        };
        if t.sep == b'(' && !matches!(name, "resubmit" | "ct" | "conjunction" | "learn") {
            return Err(self.err(t.at, format!("unsupported action '{key}(...)'")));
        }
        if takes_arg && arg.is_empty() && !matches!(name, "note" | "ct") {
            return Err(self.err(aat, format!("'{key}' needs an argument ({key}:VALUE)")));
        }
        Ok(match name {
            "output" => self.output(arg, aat)?,
            "in_port" => no_arg(Action::InPort)?,
            "flood" => no_arg(Action::Flood)?,
            "all" => no_arg(Action::All)?,
            "normal" => no_arg(Action::Normal)?,
            "strip_vlan" | "pop_vlan" => no_arg(Action::StripVlan)?,
            "dec_ttl" => match t.value {
                Some(_) => {
                    return Err(self.err(t.at, "unsupported action 'dec_ttl(...)' (controller ids)"))
                }
                None => Action::DecTtl,
            },
            "mod_vlan_vid" => Action::SetVlanVid(self.uint(key, arg, aat, 4095)? as u16),
            "mod_vlan_pcp" => Action::SetVlanPcp(self.uint(key, arg, aat, 7)? as u8),
            "push_vlan" => {
                let tpid = self.uint(key, arg, aat, 0xffff)?;
                if tpid != 0x8100 {
                    return Err(self.err(aat, format!("push_vlan:{arg}: only 0x8100 is supported")));
                }
                Action::PushVlan(0x8100)
            }
            "mod_dl_src" => Action::SetDlSrc(mac_bytes(self.mac(key, arg, aat)?)),
            "mod_dl_dst" => Action::SetDlDst(mac_bytes(self.mac(key, arg, aat)?)),
            "mod_nw_src" | "mod_nw_dst" => {
                let ip = Ipv4Addr::from(self.ip(key, arg, aat)? as u32);
                self.prereqs.push((Prereq::Ip, key.to_string(), t.at));
                if name == "mod_nw_src" {
                    Action::SetNwSrc(ip)
                } else {
                    Action::SetNwDst(ip)
                }
            }
            "mod_nw_tos" => {
                self.prereqs.push((Prereq::IpAny, key.to_string(), t.at));
                Action::SetNwTos(self.tos(key, arg, aat)?)
            }
            "mod_tp_src" | "mod_tp_dst" => {
                self.prereqs.push((Prereq::TcpOrUdp, key.to_string(), t.at));
                let p = self.uint(key, arg, aat, 0xffff)? as u16;
                if name == "mod_tp_src" {
                    Action::SetTpSrc(p)
                } else {
                    Action::SetTpDst(p)
                }
            }
            "set_field" => self.set_field(t.at, arg, aat)?,
            "set_tunnel" | "set_tunnel64" => Action::SetTunnel(self.tunnel_id(key, arg, aat)?),
            "resubmit" => self.resubmit(t, arg, aat)?,
            "goto_table" => {
                Action::GotoTable(self.uint(key, arg, aat, u64::from(MAX_TABLE))? as u8)
            }
            "note" => Action::Note(self.note(arg, aat)?),
            "load" => self.load(t.at, arg, aat)?,
            "move" => self.move_(t.at, arg, aat)?,
            "ct" if t.sep == b'(' => self.ct(t, arg, aat)?,
            "ct" => return Err(self.err(t.at, "ct needs its options in parentheses: ct(...)")),
            "ct_clear" => no_arg(Action::CtClear)?,
            "conjunction" if t.sep == b'(' => self.conjunction(arg, aat)?,
            "learn" if t.sep == b'(' => self.learn(arg, aat)?,
            "mod_nw_ttl" => {
                self.prereqs.push((Prereq::IpAny, key.to_string(), t.at));
                Action::SetNwTtl(self.uint(key, arg, aat, 255)? as u8)
            }
            "mod_nw_ecn" => {
                self.prereqs.push((Prereq::IpAny, key.to_string(), t.at));
                Action::SetField {
                    field: Field::NwEcn,
                    value: self.uint(key, arg, aat, 3)?,
                }
            }
            "group" => Action::Group(self.uint(key, arg, aat, u64::from(u32::MAX - 1))? as u32),
            "meter" => Action::Meter(self.uint(key, arg, aat, u64::from(u32::MAX))? as u32),
            _ if t.value.is_some() || UNSUPPORTED_BARE_ACTIONS.contains(&name) => {
                return Err(self.err(t.at, format!("unsupported action '{key}'")))
            }
            // A bare word: a port number or name, as ovs-ofctl takes `actions=2`.
            _ => match self.port("output", key, t.at)? {
                PortTok::Port(p) => Action::Output(p),
                PortTok::Reserved(r) => self.reserved_output(r, t.at)?,
            },
        })
    }

    fn tos(&self, key: &str, arg: &str, aat: usize) -> Result<u8, ParseError> {
        let tos = self.uint(key, arg, aat, 255)?;
        if tos & 3 != 0 {
            return Err(self.err(
                aat,
                format!("{key}:{arg} is invalid: the low 2 bits (ECN) must be 0"),
            ));
        }
        Ok(tos as u8)
    }

    fn output(&self, arg: &str, aat: usize) -> Result<Action, ParseError> {
        match self.port("output", arg, aat)? {
            PortTok::Port(p) => Ok(Action::Output(p)),
            PortTok::Reserved(r) => self.reserved_output(r, aat),
        }
    }

    fn reserved_output(&self, r: &'static str, at: usize) -> Result<Action, ParseError> {
        match r {
            "IN_PORT" => Ok(Action::InPort),
            "NORMAL" => Ok(Action::Normal),
            "FLOOD" => Ok(Action::Flood),
            "ALL" => Ok(Action::All),
            _ => Err(self.err(at, format!("unsupported port '{r}'"))),
        }
    }

    fn set_field(&mut self, at: usize, arg: &str, aat: usize) -> Result<Action, ParseError> {
        let Some((val, fname)) = arg.split_once("->") else {
            return Err(self.err(aat, "set_field needs VALUE->FIELD"));
        };
        let fat = aat + val.len() + 2;
        if let Some(slash) = val.find('/') {
            return Err(self.err(aat + slash, "set_field with a mask is not supported"));
        }
        let who = format!("set_field:...->{fname}");
        let need = |p: Prereq, s: &mut Self| s.prereqs.push((p, who.clone(), at));
        Ok(match fname {
            "eth_src" | "dl_src" => Action::SetField {
                field: Field::DlSrc,
                value: self.mac(fname, val, aat)?,
            },
            "eth_dst" | "dl_dst" => Action::SetField {
                field: Field::DlDst,
                value: self.mac(fname, val, aat)?,
            },
            "ip_src" | "nw_src" | "ipv4_src" | "ip_dst" | "nw_dst" | "ipv4_dst" => {
                need(Prereq::Ip, self);
                let field = if fname.ends_with("src") {
                    Field::NwSrc
                } else {
                    Field::NwDst
                };
                Action::SetField {
                    field,
                    value: self.ip(fname, val, aat)?,
                }
            }
            "tcp_src" | "tcp_dst" | "udp_src" | "udp_dst" | "tp_src" | "tp_dst" => {
                need(
                    match &fname[..3] {
                        "tcp" => Prereq::Tcp,
                        "udp" => Prereq::Udp,
                        _ => Prereq::TcpOrUdp,
                    },
                    self,
                );
                let field = if fname.ends_with("src") {
                    Field::TpSrc
                } else {
                    Field::TpDst
                };
                Action::SetField {
                    field,
                    value: self.uint(fname, val, aat, 0xffff)?,
                }
            }
            "nw_tos" => {
                need(Prereq::IpAny, self);
                Action::SetNwTos(self.tos(fname, val, aat)?)
            }
            "ip_dscp" => {
                need(Prereq::IpAny, self);
                Action::SetNwTos((self.uint(fname, val, aat, 63)? as u8) << 2)
            }
            // OpenFlow 1.2+ vlan_vid: bit 12 says "tag present".
            "vlan_vid" => Action::SetVlanVid((self.uint(fname, val, aat, 0x1fff)? & 0xfff) as u16),
            "vlan_pcp" => Action::SetVlanPcp(self.uint(fname, val, aat, 7)? as u8),
            "tun_id" | "tunnel_id" => Action::SetTunnel(self.tunnel_id(fname, val, aat)?),
            "ipv6_src" | "ipv6_dst" => {
                need(Prereq::Ipv6, self);
                let addr = std::net::Ipv6Addr::from(self.ipv6(fname, val, aat)?);
                if fname == "ipv6_src" {
                    Action::SetIpv6Src(addr)
                } else {
                    Action::SetIpv6Dst(addr)
                }
            }
            "ipv6_label" => {
                need(Prereq::Ipv6, self);
                Action::SetField {
                    field: Field::Ipv6Label,
                    value: self.uint(fname, val, aat, 0xf_ffff)?,
                }
            }
            "nw_ttl" => {
                need(Prereq::IpAny, self);
                Action::SetNwTtl(self.uint(fname, val, aat, 255)? as u8)
            }
            "nw_ecn" | "ip_ecn" => {
                need(Prereq::IpAny, self);
                Action::SetField {
                    field: Field::NwEcn,
                    value: self.uint(fname, val, aat, 3)?,
                }
            }
            "arp_op" | "arp_spa" | "arp_tpa" | "arp_sha" | "arp_tha" => {
                need(Prereq::Arp, self);
                let (field, value) = match fname {
                    "arp_op" => (Field::NwProto, self.uint(fname, val, aat, 0xffff)?),
                    "arp_spa" => (Field::NwSrc, self.ip(fname, val, aat)?),
                    "arp_tpa" => (Field::NwDst, self.ip(fname, val, aat)?),
                    "arp_sha" => (Field::ArpSha, self.mac(fname, val, aat)?),
                    _ => (Field::ArpTha, self.mac(fname, val, aat)?),
                };
                Action::SetArp { field, value }
            }
            _ if pipeline_field(fname).is_some() => {
                let field = pipeline_field(fname).unwrap_or(Field::Metadata);
                Action::SetField {
                    field,
                    value: self.uint(fname, val, aat, field.full_mask())?,
                }
            }
            _ => return Err(self.err(fat, format!("unsupported field '{fname}' for set_field"))),
        })
    }

    fn resubmit(&self, t: &Token<'a>, arg: &str, aat: usize) -> Result<Action, ParseError> {
        let (port_s, table_s) = if t.sep == b'(' {
            let mut parts = arg.splitn(3, ',');
            let port_s = parts.next().unwrap_or("");
            let table_s = parts.next();
            if let Some(extra) = parts.next() {
                return Err(self.err(
                    aat,
                    format!("unsupported resubmit option '{}'", extra.trim()),
                ));
            }
            (port_s, table_s)
        } else {
            (arg, None)
        };
        let port = match port_s.trim() {
            "" => None,
            s => match self.port("resubmit", s, aat)? {
                PortTok::Port(p) => Some(p),
                PortTok::Reserved("IN_PORT") => None,
                PortTok::Reserved(r) => {
                    return Err(self.err(aat, format!("resubmit: unsupported port '{r}'")))
                }
            },
        };
        let tat = aat + port_s.len() + 1;
        let table = match table_s.map(str::trim) {
            None | Some("") => None,
            Some(s) => match self.uint("resubmit table", s, tat, 255)? {
                255 => None, // the current table
                n => Some(n as u8),
            },
        };
        if port.is_none() && table.is_none() {
            return Err(self.err(t.at, "resubmit needs a port or a table"));
        }
        Ok(Action::Resubmit { port, table })
    }

    fn note(&self, arg: &str, aat: usize) -> Result<Vec<u8>, ParseError> {
        let mut out = Vec::new();
        let b = arg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'.' {
                i += 1;
                continue;
            }
            let pair = arg
                .get(i..i + 2)
                .filter(|p| p.chars().all(|c| c.is_ascii_hexdigit()));
            match pair {
                Some(p) => out.push(u8::from_str_radix(p, 16).unwrap_or(0)),
                None => {
                    return Err(self.err(
                        aat + i,
                        "note: expected pairs of hex digits (optionally separated by '.')",
                    ))
                }
            }
            i += 2;
        }
        Ok(out)
    }
}

/// Actions as ovs-ofctl prints them; `drop` for none.
pub fn format_actions(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "drop".to_string();
    }
    actions
        .iter()
        .map(format_action)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn format_action(a: &Action) -> String {
    match a {
        Action::Output(p) => format!("output:{}", fmt_port(p)),
        Action::InPort => "IN_PORT".to_string(),
        Action::Flood => "FLOOD".to_string(),
        Action::All => "ALL".to_string(),
        Action::Normal => "NORMAL".to_string(),
        Action::SetVlanVid(v) => format!("mod_vlan_vid:{v}"),
        Action::SetVlanPcp(p) => format!("mod_vlan_pcp:{p}"),
        Action::StripVlan => "strip_vlan".to_string(),
        Action::PushVlan(tpid) => format!("push_vlan:{tpid:#06x}"),
        Action::SetDlSrc(mac) => format!("mod_dl_src:{}", fmt_mac(mac_u64(mac))),
        Action::SetDlDst(mac) => format!("mod_dl_dst:{}", fmt_mac(mac_u64(mac))),
        Action::SetNwSrc(ip) => format!("mod_nw_src:{ip}"),
        Action::SetNwDst(ip) => format!("mod_nw_dst:{ip}"),
        Action::SetNwTos(tos) => format!("mod_nw_tos:{tos}"),
        Action::SetTpSrc(p) => format!("mod_tp_src:{p}"),
        Action::SetTpDst(p) => format!("mod_tp_dst:{p}"),
        Action::DecTtl => "dec_ttl".to_string(),
        Action::SetNwTtl(t) => format!("mod_nw_ttl:{t}"),
        Action::SetIpv6Src(a) => format!("set_field:{a}->ipv6_src"),
        Action::SetIpv6Dst(a) => format!("set_field:{a}->ipv6_dst"),
        Action::SetArp { field, value } => {
            let (name, text) = match field {
                Field::NwProto => ("arp_op", value.to_string()),
                Field::NwSrc => ("arp_spa", Ipv4Addr::from(*value as u32).to_string()),
                Field::NwDst => ("arp_tpa", Ipv4Addr::from(*value as u32).to_string()),
                Field::ArpSha => ("arp_sha", fmt_mac(*value)),
                _ => ("arp_tha", fmt_mac(*value)),
            };
            format!("set_field:{text}->{name}")
        }
        Action::SetField { field, value } => {
            let (name, text) = match field {
                Field::Reg(n) => (format!("reg{n}"), format!("{value:#x}")),
                Field::XReg(n) => (format!("xreg{n}"), format!("{value:#x}")),
                Field::Metadata => ("metadata".to_string(), format!("{value:#x}")),
                Field::Ipv6Label => ("ipv6_label".to_string(), format!("{value:#x}")),
                Field::NwEcn => ("nw_ecn".to_string(), value.to_string()),
                f => {
                    let (name, text) = set_field_text(*f, *value);
                    (name.to_string(), text)
                }
            };
            format!("set_field:{text}->{name}")
        }
        Action::SetTunnel(vni) => format!("set_tunnel:{vni:#x}"),
        Action::Load { dst, value } => format!("load:{value:#x}->{}", fmt_subfield(dst)),
        Action::Move { src, dst } => format!("move:{}->{}", fmt_subfield(src), fmt_subfield(dst)),
        Action::Ct(ct) => super::ct::format_ct(ct),
        Action::CtClear => "ct_clear".to_string(),
        Action::Conjunction { id, k, n } => format!("conjunction({id},{k}/{n})"),
        Action::Group(g) => format!("group:{g}"),
        Action::Learn(l) => super::learn::format_learn(l),
        Action::Meter(m) => format!("meter:{m}"),
        Action::Resubmit { port, table } => match (port, table) {
            (Some(p), None) => format!("resubmit:{}", fmt_port(p)),
            (p, t) => format!(
                "resubmit({},{})",
                p.as_ref().map(fmt_port).unwrap_or_default(),
                t.map(|t| t.to_string()).unwrap_or_default()
            ),
        },
        Action::GotoTable(t) => format!("goto_table:{t}"),
        Action::Note(bytes) => {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("note:{}", hex.join("."))
        }
    }
}

/// `set_field` of a header field: (name, value as ovs-ofctl prints it).
fn set_field_text(field: Field, value: u64) -> (&'static str, String) {
    let value = &value;
    match field {
        Field::DlSrc => ("eth_src", fmt_mac(*value)),
        Field::DlDst => ("eth_dst", fmt_mac(*value)),
        Field::NwSrc => ("ip_src", Ipv4Addr::from(*value as u32).to_string()),
        Field::NwDst => ("ip_dst", Ipv4Addr::from(*value as u32).to_string()),
        Field::TpSrc => ("tp_src", value.to_string()),
        Field::TpDst => ("tp_dst", value.to_string()),
        Field::TunId => ("tun_id", format!("{value:#x}")),
        Field::VlanTci => ("vlan_tci", format!("{value:#06x}")),
        Field::NwTos => ("nw_tos", value.to_string()),
        Field::InPort => ("in_port", value.to_string()),
        Field::DlType => ("dl_type", format!("{value:#06x}")),
        Field::NwProto => ("nw_proto", value.to_string()),
        Field::TunSrc => ("tun_src", Ipv4Addr::from(*value as u32).to_string()),
        Field::TunDst => ("tun_dst", Ipv4Addr::from(*value as u32).to_string()),
        _ => ("?", format!("{value:#x}")),
    }
}

/// `NAME[]`, `NAME[a]` or `NAME[a..b]`.
pub(super) fn fmt_subfield(sf: &SubField) -> String {
    let name = subfield_name(sf.field);
    if u32::from(sf.n_bits) == sf.field.width() && sf.ofs == 0 {
        format!("{name}[]")
    } else if sf.n_bits == 1 {
        format!("{name}[{}]", sf.ofs)
    } else {
        format!("{name}[{}..{}]", sf.ofs, sf.ofs + sf.n_bits - 1)
    }
}

impl<'a> Parser<'a> {
    /// `NAME[]`, `NAME[a]`, `NAME[a..b]` or `NAME`: (name, offset, bits), the range checked
    /// against `width` only by the caller.
    pub(super) fn bits_of<'s>(
        &self,
        what: &str,
        s: &'s str,
        at: usize,
    ) -> Result<(&'s str, u32, u32), ParseError> {
        let Some(open) = s.find('[') else {
            return Ok((s, 0, 128));
        };
        let name = &s[..open];
        let Some(inner) = s[open + 1..].strip_suffix(']') else {
            return Err(self.err(at + open, format!("{what}: expected ']' after '{s}'")));
        };
        let iat = at + open + 1;
        let (lo, hi) = match inner.split_once("..") {
            _ if inner.is_empty() => return Ok((name, 0, 128)),
            Some((a, b)) => (
                self.uint(what, a, iat, 127)?,
                self.uint(what, b, iat + a.len() + 2, 127)?,
            ),
            None => {
                let bit = self.uint(what, inner, iat, 127)?;
                (bit, bit)
            }
        };
        if hi < lo {
            return Err(self.err(iat, format!("{what}: bit range [{inner}] is backwards")));
        }
        Ok((name, lo as u32, (hi - lo + 1) as u32))
    }

    /// A subfield of a field in the key; its prerequisite becomes the flow's.
    pub(super) fn subfield(
        &mut self,
        what: &str,
        s: &str,
        at: usize,
    ) -> Result<SubField, ParseError> {
        let (name, ofs, n_bits) = self.bits_of(what, s, at)?;
        let Some((field, prereq)) = subfield_field(name) else {
            return Err(self.err(at, format!("{what}: unknown or unsupported field '{name}'")));
        };
        let width = field.width();
        let whole = n_bits == 128 && ofs == 0;
        let n_bits = if whole { width } else { n_bits };
        if ofs + n_bits > width {
            return Err(self.err(
                at,
                format!("{what}: {s} is beyond the field ({name} is {width} bits)"),
            ));
        }
        if let Some(p) = prereq {
            self.prereqs.push((p, format!("{what} of {name}"), at));
        }
        Ok(SubField {
            field,
            ofs: ofs as u8,
            n_bits: n_bits as u8,
        })
    }

    /// A subfield an action writes.
    pub(super) fn writable_subfield(
        &mut self,
        what: &str,
        s: &str,
        at: usize,
    ) -> Result<SubField, ParseError> {
        let (name, _, _) = self.bits_of(what, s, at)?;
        let sf = self.subfield(what, s, at)?;
        let prereq = subfield_field(name).and_then(|(_, p)| p);
        if !writable(sf.field, prereq) {
            return Err(self.err(
                at,
                format!(
                    "{what}: {name} cannot be written (registers, metadata, in_port, tun_id, \
                     Ethernet addresses, vlan_tci and IPv4 addresses and ports can)"
                ),
            ));
        }
        if sf.field == Field::TunId
            && u32::from(sf.ofs) + u32::from(sf.n_bits) > 24
            && what == "move"
        {
            return Err(self.err(
                at,
                format!("{what}: {s} reaches beyond bit 23 of tun_id (VXLAN VNIs are 24 bits)"),
            ));
        }
        Ok(sf)
    }

    /// `conjunction(ID, K/N)`: 1 <= K <= N, 2 <= N <= 64.
    fn conjunction(&self, arg: &str, aat: usize) -> Result<Action, ParseError> {
        let usage = "conjunction needs (ID, K/N) with 1 <= K <= N and 2 <= N <= 64";
        let Some((id, kn)) = arg.split_once(',') else {
            return Err(self.err(aat, usage));
        };
        let kat = aat + id.len() + 1 + (kn.len() - kn.trim_start().len());
        let Some((k, n)) = kn.trim().split_once('/') else {
            return Err(self.err(kat, usage));
        };
        let id = self.uint("conjunction id", id.trim(), aat, u64::from(u32::MAX))? as u32;
        let k = self.uint("conjunction k", k.trim(), kat, 64)? as u8;
        let n = self.uint("conjunction n", n.trim(), kat + k.to_string().len() + 1, 64)? as u8;
        if k == 0 || n < 2 || k > n {
            return Err(self.err(kat, usage));
        }
        Ok(Action::Conjunction { id, k, n })
    }

    /// `load:VALUE->DST[a..b]`
    pub(super) fn load(&mut self, _at: usize, arg: &str, aat: usize) -> Result<Action, ParseError> {
        let Some((val, dst)) = arg.split_once("->") else {
            return Err(self.err(aat, "load needs VALUE->DST[a..b]"));
        };
        let dst = self.writable_subfield("load", dst, aat + val.len() + 2)?;
        let value = self.uint("load", val, aat, u64::MAX)?;
        self.fits("load", val, value, dst, aat)?;
        Ok(Action::Load { dst, value })
    }

    /// A literal `value` (written `text`) loaded into `dst` must fit it (a VNI in 24 bits),
    /// never be cut.
    pub(super) fn fits(
        &self,
        what: &str,
        text: &str,
        value: u64,
        dst: SubField,
        at: usize,
    ) -> Result<(), ParseError> {
        if dst.n_bits < 64 && value >> dst.n_bits != 0 {
            return Err(self.err(
                at,
                format!(
                    "{what}: {text} does not fit in the {} bits of the destination",
                    dst.n_bits
                ),
            ));
        }
        if dst.field == Field::TunId && (value << dst.ofs) > super::MAX_TUNNEL_ID {
            return Err(self.err(
                at,
                format!("{what}: {text} reaches beyond bit 23 of tun_id (VXLAN VNIs are 24 bits)"),
            ));
        }
        Ok(())
    }

    /// `move:SRC[a..b]->DST[c..d]`
    pub(super) fn move_(
        &mut self,
        _at: usize,
        arg: &str,
        aat: usize,
    ) -> Result<Action, ParseError> {
        let Some((src, dst)) = arg.split_once("->") else {
            return Err(self.err(aat, "move needs SRC[a..b]->DST[c..d]"));
        };
        let src_sf = self.subfield("move", src, aat)?;
        let dat = aat + src.len() + 2;
        let dst_sf = self.writable_subfield("move", dst, dat)?;
        if src_sf.n_bits != dst_sf.n_bits {
            return Err(self.err(
                dat,
                format!(
                    "move: the source is {} bits and the destination {} bits",
                    src_sf.n_bits, dst_sf.n_bits
                ),
            ));
        }
        Ok(Action::Move {
            src: src_sf,
            dst: dst_sf,
        })
    }
}
