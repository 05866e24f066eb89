//! ovs-ofctl flow syntax, both ways.
//!
//! [`parse_flow`] reads one flow the way `ovs-ofctl add-flow`, `mod-flows`, `del-flows` and
//! `dump-flows` take it: `key=value` items separated by commas and/or spaces, then
//! `actions=` and the rest of the line. `Display` for [`FlowSpec`] prints it back the way
//! `dump-flows` does (without counters), so that `parse(format(parse(x))) == parse(x)`.
//! Errors name the field or action at fault and carry the 1-based character column.
//!
//! Where this differs from ovs-ofctl:
//! - Anything not supported is an error naming it (ovs-ofctl would accept it); `nw_*` and
//!   `tp_*` fields without their prerequisite are errors (old ovs-ofctl silently dropped
//!   them).
//! - A field matched twice with conflicting values (`tcp,udp`) is an error, not "last wins".
//! - `cookie=V` without a mask in a del-flows/dump-flows filter means `cookie=V/-1`.
//! - `arp_op` is 8 bits (it shares the `nw_proto` slot of the key); `push_vlan` takes 0x8100
//!   only; `set_field:V->vlan_vid`/`vlan_pcp`/`tun_id` become `mod_vlan_vid`/`mod_vlan_pcp`/
//!   `set_tunnel` (the same effect, so they print that way).
//! - Actions that modify IP or L4 headers need the matching prerequisite in the match, as
//!   OpenFlow's consistency check requires.
//! - Tunnel IDs (`tun_id=`, `set_tunnel`, `set_tunnel64`, `set_field:...->tun_id`) are VXLAN
//!   VNIs, so at most 24 bits: a larger value is an error, never truncated into another
//!   network's VNI.

use std::fmt;
use std::net::Ipv4Addr;

use super::action::{Action, PortRef};
use super::key::{consts, Field, Match};

/// Priority of a flow that does not say.
pub const DEFAULT_PRIORITY: u16 = 32768;
/// Highest table number (255 in a filter means every table).
pub const MAX_TABLE: u8 = 254;
/// Largest tunnel ID: the only tunnel is VXLAN, whose VNI is 24 bits.
pub const MAX_TUNNEL_ID: u64 = 0xff_ffff;
/// Highest port number a flow can name (0xff00 and up are OpenFlow's reserved ports, which
/// are written by name).
pub const MAX_PORT: u16 = 0xfeff;

/// Which command's syntax a flow is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowSyntax {
    /// add-flow / add-flows: match + `actions=` (required).
    Add,
    /// del-flows / dump-flows filters: match only, optional `table=`, `cookie=V/M`,
    /// `out_port=`.
    MatchOnly,
    /// mod-flows: match + `actions=` (required); `cookie=V/M` filters, `cookie=V` sets.
    Modify,
}

/// One flow as a user writes it (add-flow, a line of a rules file, or a filter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowSpec {
    /// The syntax it was parsed with: decides defaults and whether `actions=` is printed.
    pub syntax: FlowSyntax,
    /// `table=`. Add: always `Some` (default 0). MatchOnly/Modify: `None` = every table.
    pub table: Option<u8>,
    pub priority: u16,
    /// `in_port=` as written. [`FlowSpec::resolve`] puts its number into `m`.
    pub in_port: Option<PortRef>,
    /// Everything matched except `in_port` (until resolved).
    pub m: Match,
    /// Empty means drop.
    pub actions: Vec<Action>,
    /// Add: the flow's cookie. With `cookie_mask`: the filter value (already masked).
    pub cookie: u64,
    /// `cookie=V/M` filter (mod-flows, del-flows, dump-flows).
    pub cookie_mask: Option<u64>,
    /// mod-flows `cookie=V` (no mask): the cookie to give the modified flows.
    pub new_cookie: Option<u64>,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    /// `out_port=` filter (del-flows, dump-flows): flows that output to this port.
    pub out_port: Option<PortRef>,
}

impl FlowSpec {
    /// A flow with every default: matches everything, drops, table 0 for `Add`.
    pub fn new(syntax: FlowSyntax) -> FlowSpec {
        FlowSpec {
            syntax,
            table: (syntax == FlowSyntax::Add).then_some(0),
            priority: DEFAULT_PRIORITY,
            in_port: None,
            m: Match::any(),
            actions: Vec::new(),
            cookie: 0,
            cookie_mask: None,
            new_cookie: None,
            idle_timeout: 0,
            hard_timeout: 0,
            out_port: None,
        }
    }

    /// Turns port names into numbers with `lookup`: sets `Field::InPort` in the match from
    /// `in_port` (which keeps the name for printing), and rewrites named `output`,
    /// `resubmit` and `out_port` ports as numbers (print the unresolved spec to show names).
    /// Errors have column 0 (they are not tied to the text).
    pub fn resolve(&self, lookup: impl Fn(&str) -> Option<u16>) -> Result<FlowSpec, ParseError> {
        let number = |p: &PortRef, what: &str| -> Result<u16, ParseError> {
            match p {
                PortRef::Number(n) => Ok(*n),
                PortRef::Name(name) => lookup(name).ok_or_else(|| ParseError {
                    column: 0,
                    message: format!("{what}: unknown port '{name}'"),
                }),
            }
        };
        let mut out = self.clone();
        if let Some(p) = &self.in_port {
            out.m
                .set_exact(Field::InPort, u64::from(number(p, "in_port")?));
        }
        if let Some(p) = &mut out.out_port {
            *p = PortRef::Number(number(p, "out_port")?);
        }
        for a in &mut out.actions {
            match a {
                Action::Output(p) => *p = PortRef::Number(number(p, "output")?),
                Action::Resubmit { port: Some(p), .. } => {
                    *p = PortRef::Number(number(p, "resubmit")?)
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A syntax error in one flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.column, .message))]
pub struct ParseError {
    /// 1-based character position in the line; 0 when not tied to the text.
    pub column: usize,
    pub message: String,
}

fn describe(column: &usize, message: &str) -> String {
    if *column == 0 {
        message.to_string()
    } else {
        format!("column {column}: {message}")
    }
}

/// An error in a rules file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct FileError {
    /// 1-based.
    pub line: usize,
    /// 1-based character position in the line.
    pub column: usize,
    pub message: String,
}

/// Parses one flow.
pub fn parse_flow(text: &str, syntax: FlowSyntax) -> Result<FlowSpec, ParseError> {
    Parser::new(text, syntax).run()
}

/// A rules file: one add-flow flow per line; `#` starts a comment, blank lines are ignored.
pub fn parse_flows_file(text: &str) -> Result<Vec<FlowSpec>, FileError> {
    let mut flows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            continue;
        }
        let spec = parse_flow(line, FlowSyntax::Add).map_err(|e| FileError {
            line: i + 1,
            column: e.column,
            message: e.message,
        })?;
        flows.push(spec);
    }
    Ok(flows)
}

/// `line` up to a `#` that is not inside a quoted port name.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

// ---------------------------------------------------------------------------------------
// Tokens

/// One `key`, `key=value`, `key:value` or `key(value)` item; offsets are bytes in the line.
#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    key: &'a str,
    at: usize,
    /// The value and its offset.
    value: Option<(&'a str, usize)>,
    /// `=`, `:` or `(` (0 without a value).
    sep: u8,
}

fn is_delim(b: u8) -> bool {
    b == b',' || b.is_ascii_whitespace()
}

/// Splits `key=value` items (ovs-ofctl's `ofputil_parse_key_value` rules: values end at a
/// comma or space outside parentheses and quotes).
struct Tokenizer<'a> {
    line: &'a str,
    pos: usize,
    end: usize,
}

impl<'a> Tokenizer<'a> {
    /// The next item; with `stop_at_actions`, `actions=` takes the rest of the line.
    fn next(&mut self, stop_at_actions: bool) -> Result<Option<Token<'a>>, ParseError> {
        let b = self.line.as_bytes();
        while self.pos < self.end && is_delim(b[self.pos]) {
            self.pos += 1;
        }
        if self.pos >= self.end {
            return Ok(None);
        }
        let at = self.pos;
        while self.pos < self.end && !is_delim(b[self.pos]) && !b"=:(".contains(&b[self.pos]) {
            if b[self.pos] == b')' {
                return Err(err(self.line, self.pos, "unbalanced ')'"));
            }
            self.pos += 1;
        }
        let key = &self.line[at..self.pos];
        if self.pos >= self.end || is_delim(b[self.pos]) {
            return Ok(Some(Token {
                key,
                at,
                value: None,
                sep: 0,
            }));
        }
        let sep = b[self.pos];
        if key.is_empty() {
            return Err(err(
                self.line,
                at,
                format!("expected a name before '{}'", sep as char),
            ));
        }
        self.pos += 1;
        let vstart = self.pos;
        if stop_at_actions && sep == b'=' && (key == "actions" || key == "action") {
            self.pos = self.end;
            return Ok(Some(Token {
                key,
                at,
                value: Some((&self.line[vstart..self.end], vstart)),
                sep,
            }));
        }
        let mut depth = usize::from(sep == b'(');
        let mut quoted = false;
        let mut escaped = false;
        while self.pos < self.end {
            let c = b[self.pos];
            if quoted {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    quoted = false;
                }
            } else if c == b'"' {
                quoted = true;
            } else if c == b'(' {
                depth += 1;
            } else if c == b')' {
                if depth == 0 {
                    return Err(err(self.line, self.pos, "unbalanced ')'"));
                }
                depth -= 1;
                if depth == 0 && sep == b'(' {
                    break;
                }
            } else if depth == 0 && is_delim(c) {
                break;
            }
            self.pos += 1;
        }
        if quoted {
            return Err(err(self.line, vstart, "unterminated quoted string"));
        }
        if depth > 0 {
            return Err(err(
                self.line,
                vstart - 1,
                format!("'{key}(' has no matching ')'"),
            ));
        }
        let value = &self.line[vstart..self.pos];
        if sep == b'(' {
            self.pos += 1; // the ')'
            if self.pos < self.end && !is_delim(b[self.pos]) {
                return Err(err(self.line, self.pos, "expected ',' after ')'"));
            }
        }
        Ok(Some(Token {
            key,
            at,
            value: Some((value, vstart)),
            sep,
        }))
    }
}

fn column(line: &str, byte: usize) -> usize {
    line.get(..byte).map_or(byte, |s| s.chars().count()) + 1
}

fn err(line: &str, byte: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column: column(line, byte),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Values

/// Decimal or `0x` hex; `None` if it is not a number at all, `Some(None)` if it overflows.
fn number(s: &str) -> Option<Option<u64>> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(u64::from_str_radix(digits, radix).ok())
}

fn parse_mac(s: &str) -> Option<u64> {
    let mut out = 0u64;
    let mut n = 0;
    for part in s.split(':') {
        if part.is_empty() || part.len() > 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        out = (out << 8) | u64::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

fn mac_bytes(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn fmt_mac(v: u64) -> String {
    let b = mac_bytes(v);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

fn parse_ip(s: &str) -> Option<u32> {
    let mut out = 0u32;
    let mut n = 0;
    for part in s.split('.') {
        if part.is_empty() || part.len() > 3 || !part.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        out = (out << 8) | u32::from(part.parse::<u8>().ok()?);
        n += 1;
    }
    (n == 4).then_some(out)
}

/// `a.b.c.d`, `/N` or `/255.255.255.0` masked; printed as ovs-ofctl does.
fn fmt_ip_masked(v: u64, mask: u64) -> String {
    let ip = Ipv4Addr::from(v as u32);
    let mask = mask as u32;
    if mask == u32::MAX {
        ip.to_string()
    } else if mask.leading_ones() + mask.trailing_zeros() == 32 {
        format!("{ip}/{}", mask.leading_ones())
    } else {
        format!("{ip}/{}", Ipv4Addr::from(mask))
    }
}

/// A port as written: reserved OpenFlow ports are words (any case).
enum PortTok {
    Port(PortRef),
    Reserved(&'static str),
}

const RESERVED_PORTS: [&str; 9] = [
    "IN_PORT",
    "NORMAL",
    "FLOOD",
    "ALL",
    "LOCAL",
    "CONTROLLER",
    "TABLE",
    "NONE",
    "ANY",
];

/// Whether a port name can be written without quotes.
fn plain_port_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().all(|c| c.is_ascii_digit())
        && !RESERVED_PORTS.iter().any(|r| r.eq_ignore_ascii_case(name))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@+%".contains(c) || !c.is_ascii())
}

fn fmt_port(p: &PortRef) -> String {
    match p {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(name) if plain_port_name(name) => name.clone(),
        PortRef::Name(name) => {
            let mut s = String::from("\"");
            for c in name.chars() {
                if c == '"' || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
            s
        }
    }
}

// ---------------------------------------------------------------------------------------
// Match fields

/// How a field's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
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
enum Prereq {
    IpOrArp,
    Ip,
    Arp,
    TcpOrUdp,
    Tcp,
    Udp,
    Icmp,
}

impl Prereq {
    fn holds(self, m: &Match) -> bool {
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

    fn needs(self) -> &'static str {
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
fn exact(m: &Match, f: Field) -> Option<u64> {
    let (v, mask) = m.get(f);
    (mask == f.full_mask()).then_some(v)
}

fn field_def(name: &str) -> Option<(Field, Kind, Option<Prereq>)> {
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
fn shorthand(name: &str) -> Option<(u64, Option<u64>)> {
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
const FLAGS: [&str; 5] = [
    "send_flow_rem",
    "check_overlap",
    "reset_counts",
    "no_packet_counts",
    "no_byte_counts",
];

/// dump-flows statistics, ignored (as ovs-ofctl does) so its output can be fed back.
const STATS: [&str; 5] = ["duration", "n_packets", "n_bytes", "idle_age", "hard_age"];

/// Action words that take no argument and that we do not support (other bare words are
/// port names).
const UNSUPPORTED_BARE_ACTIONS: [&str; 8] = [
    "ct",
    "ct_clear",
    "controller",
    "exit",
    "pop_queue",
    "clear_actions",
    "dec_mpls_ttl",
    "dec_nsh_ttl",
];

// ---------------------------------------------------------------------------------------
// The parser

struct Parser<'a> {
    line: &'a str,
    syntax: FlowSyntax,
    spec: FlowSpec,
    /// Prerequisites to check once the whole match is known: (what, who, byte offset).
    prereqs: Vec<(Prereq, String, usize)>,
    /// Keywords that may appear once.
    seen: Vec<&'static str>,
}

impl<'a> Parser<'a> {
    fn new(line: &'a str, syntax: FlowSyntax) -> Parser<'a> {
        Parser {
            line,
            syntax,
            spec: FlowSpec::new(syntax),
            prereqs: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn err(&self, at: usize, message: impl Into<String>) -> ParseError {
        err(self.line, at, message)
    }

    fn run(mut self) -> Result<FlowSpec, ParseError> {
        let mut tokens = Tokenizer {
            line: self.line,
            pos: 0,
            end: self.line.len(),
        };
        let mut actions = None;
        while let Some(t) = tokens.next(true)? {
            if t.sep == b'=' && (t.key == "actions" || t.key == "action") {
                actions = Some(t);
                break;
            }
            self.match_item(&t)?;
        }
        for (p, who, at) in &self.prereqs {
            if !p.holds(&self.spec.m) {
                return Err(self.err(*at, format!("{who} requires {}", p.needs())));
            }
        }
        match (actions, self.syntax) {
            (Some(t), FlowSyntax::MatchOnly) => {
                return Err(self.err(
                    t.at,
                    "actions are not allowed in a del-flows/dump-flows filter",
                ))
            }
            (None, FlowSyntax::Add | FlowSyntax::Modify) => {
                return Err(self.err(
                    self.line.trim_end().len(),
                    "missing actions= (a flow needs actions, e.g. actions=drop)",
                ))
            }
            (Some(t), _) => {
                let (_, start) = t.value.unwrap_or(("", self.line.len()));
                self.prereqs.clear();
                self.spec.actions = self.actions(start)?;
                for (p, who, at) in &self.prereqs {
                    if !p.holds(&self.spec.m) {
                        return Err(self.err(*at, format!("{who} requires {}", p.needs())));
                    }
                }
            }
            (None, FlowSyntax::MatchOnly) => {}
        }
        Ok(self.spec)
    }

    fn once(&mut self, what: &'static str, at: usize) -> Result<(), ParseError> {
        if self.seen.contains(&what) {
            return Err(self.err(at, format!("duplicate '{what}'")));
        }
        self.seen.push(what);
        Ok(())
    }

    /// An unsigned number no larger than `max`.
    fn uint(&self, what: &str, s: &str, at: usize, max: u64) -> Result<u64, ParseError> {
        match number(s) {
            None if s.is_empty() => Err(self.err(at, format!("missing value for {what}"))),
            None => Err(self.err(at, format!("{what}: invalid number '{s}'"))),
            Some(Some(v)) if v <= max => Ok(v),
            Some(_) => Err(self.err(at, format!("{what}={s} is out of range (0-{max})"))),
        }
    }

    /// A tunnel ID (VXLAN VNI): refused beyond 24 bits rather than truncated on the wire,
    /// which would put the packet in another network.
    fn tunnel_id(&self, what: &str, s: &str, at: usize) -> Result<u64, ParseError> {
        let v = self.uint(what, s, at, u64::MAX)?;
        if v > MAX_TUNNEL_ID {
            return Err(self.err(
                at,
                format!(
                    "{what}: tunnel ID {v:#x} does not fit in 24 bits (VXLAN VNIs are 0-{MAX_TUNNEL_ID:#x})"
                ),
            ));
        }
        Ok(v)
    }

    fn mac(&self, what: &str, s: &str, at: usize) -> Result<u64, ParseError> {
        parse_mac(s).ok_or_else(|| {
            self.err(
                at,
                format!("{what}: invalid Ethernet address '{s}' (expected xx:xx:xx:xx:xx:xx)"),
            )
        })
    }

    fn ip(&self, what: &str, s: &str, at: usize) -> Result<u64, ParseError> {
        parse_ip(s)
            .map(u64::from)
            .ok_or_else(|| self.err(at, format!("{what}: invalid IPv4 address '{s}'")))
    }

    fn port(&self, what: &str, s: &str, at: usize) -> Result<PortTok, ParseError> {
        if s.is_empty() {
            return Err(self.err(at, format!("{what}: missing port")));
        }
        if let Some(inner) = s.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                return Err(self.err(at, format!("{what}: unterminated quoted port name")));
            };
            let mut name = String::new();
            let mut escaped = false;
            for c in inner.chars() {
                if escaped || c != '\\' {
                    name.push(c);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            if name.is_empty() {
                return Err(self.err(at, format!("{what}: empty port name")));
            }
            return Ok(PortTok::Port(PortRef::Name(name)));
        }
        if s.chars().all(|c| c.is_ascii_digit()) {
            let n = self.uint(what, s, at, u64::from(MAX_PORT)).map_err(|_| {
                self.err(
                    at,
                    format!(
                        "{what}: port {s} is out of range (0-{MAX_PORT}; reserved ports are \
                         written by name)"
                    ),
                )
            })?;
            return Ok(PortTok::Port(PortRef::Number(n as u16)));
        }
        if let Some(r) = RESERVED_PORTS.iter().find(|r| r.eq_ignore_ascii_case(s)) {
            return Ok(PortTok::Reserved(r));
        }
        if s.contains('[') {
            return Err(self.err(
                at,
                format!("{what}: unsupported port '{s}' (a field as port)"),
            ));
        }
        if let Some(bad) = s.chars().find(|c| "()[]=:/>\"',".contains(*c)) {
            return Err(self.err(
                at,
                format!("{what}: invalid port name '{s}' (contains '{bad}')"),
            ));
        }
        Ok(PortTok::Port(PortRef::Name(s.to_string())))
    }

    /// A port that must be a real one (in_port, out_port).
    fn plain_port(&self, what: &str, s: &str, at: usize) -> Result<PortRef, ParseError> {
        match self.port(what, s, at)? {
            PortTok::Port(p) => Ok(p),
            PortTok::Reserved(r) => Err(self.err(at, format!("{what}: unsupported port '{r}'"))),
        }
    }

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

    fn match_item(&mut self, t: &Token<'a>) -> Result<(), ParseError> {
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

    // -----------------------------------------------------------------------------------
    // Actions

    fn actions(&mut self, start: usize) -> Result<Vec<Action>, ParseError> {
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
        );
        let (arg, aat) = match t.value {
            Some((a, aat)) => (a, aat),
            None if takes_arg => {
                return Err(self.err(t.at, format!("'{key}' needs an argument ({key}:VALUE)")))
            }
            None => ("", t.at),
        };
        if t.sep == b'(' && !matches!(name, "resubmit") {
            return Err(self.err(t.at, format!("unsupported action '{key}(...)'")));
        }
        if takes_arg && arg.is_empty() && name != "note" {
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
                self.prereqs.push((Prereq::Ip, key.to_string(), t.at));
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
                need(Prereq::Ip, self);
                Action::SetNwTos(self.tos(fname, val, aat)?)
            }
            "ip_dscp" => {
                need(Prereq::Ip, self);
                Action::SetNwTos((self.uint(fname, val, aat, 63)? as u8) << 2)
            }
            // OpenFlow 1.2+ vlan_vid: bit 12 says "tag present".
            "vlan_vid" => Action::SetVlanVid((self.uint(fname, val, aat, 0x1fff)? & 0xfff) as u16),
            "vlan_pcp" => Action::SetVlanPcp(self.uint(fname, val, aat, 7)? as u8),
            "tun_id" | "tunnel_id" => Action::SetTunnel(self.tunnel_id(fname, val, aat)?),
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

// ---------------------------------------------------------------------------------------
// Printing

/// The match part as ovs-ofctl prints it (`ip,in_port=1,nw_src=10.0.0.0/24`); empty when
/// the match is empty.
pub fn format_match(m: &Match) -> String {
    match_items(m, None).join(",")
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

fn fmt_masked_hex(name: &str, v: u64, mask: u64, full: u64) -> String {
    if mask == full {
        format!("{name}={v:#x}")
    } else {
        format!("{name}={v:#x}/{mask:#x}")
    }
}

/// ovs-ofctl's order: shorthand, tunnel, in_port, VLAN, Ethernet, L3, L4.
fn match_items(m: &Match, in_port: Option<&PortRef>) -> Vec<String> {
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

fn format_action(a: &Action) -> String {
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
        Action::SetField { field, value } => {
            let (name, text) = match field {
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
            };
            format!("set_field:{text}->{name}")
        }
        Action::SetTunnel(vni) => format!("set_tunnel:{vni:#x}"),
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

fn mac_u64(mac: &[u8; 6]) -> u64 {
    mac.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

impl fmt::Display for FlowSpec {
    /// `dump-flows` style: `cookie=0x5, table=1, idle_timeout=10, priority=100,ip,...
    /// actions=...`, defaults omitted; a MatchOnly spec prints no actions.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = Vec::new();
        if let Some(mask) = self.cookie_mask {
            if mask == u64::MAX {
                head.push(format!("cookie={:#x}/-1", self.cookie));
            } else {
                head.push(format!("cookie={:#x}/{mask:#x}", self.cookie));
            }
        } else if self.cookie != 0 {
            head.push(format!("cookie={:#x}", self.cookie));
        }
        if let Some(c) = self.new_cookie {
            head.push(format!("cookie={c:#x}"));
        }
        match self.table {
            Some(0) if self.syntax == FlowSyntax::Add => {}
            Some(t) => head.push(format!("table={t}")),
            None => {}
        }
        if self.idle_timeout != 0 {
            head.push(format!("idle_timeout={}", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            head.push(format!("hard_timeout={}", self.hard_timeout));
        }
        if let Some(p) = &self.out_port {
            head.push(format!("out_port={}", fmt_port(p)));
        }
        let mut items = Vec::new();
        if self.priority != DEFAULT_PRIORITY {
            items.push(format!("priority={}", self.priority));
        }
        items.extend(match_items(&self.m, self.in_port.as_ref()));
        let m = items.join(",");
        if self.syntax == FlowSyntax::MatchOnly {
            head.push(m);
            head.retain(|s| !s.is_empty());
            return f.write_str(&head.join(", "));
        }
        for h in &head {
            write!(f, "{h}, ")?;
        }
        if !m.is_empty() {
            write!(f, "{m} ")?;
        }
        write!(f, "actions={}", format_actions(&self.actions))
    }
}

#[cfg(test)]
mod tests {
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
            (
                "eth_type=0x86dd,actions=drop",
                "dl_type=0x86dd actions=drop",
            ),
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
          5 | nw_tos requires dl_type=0x0800 (ip) | arp,nw_tos=4,actions=drop
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
        // load is not supported at all, so not into the tunnel ID either.
        assert!(add_err("actions=load:0x1000005->NXM_NX_TUN_ID[]")
            .message
            .starts_with("unsupported action 'load'"));
    }

    #[test]
    fn flow_errors_name_the_thing_and_column() {
        const CASES: &str = r#"
          1 | unsupported field 'ct_state' | ct_state=+trk,actions=drop
          4 | unsupported field 'reg0' | ip,reg0=1,actions=drop
          1 | unsupported field 'ipv6' | ipv6,actions=drop
          1 | unsupported flag 'send_flow_rem' | send_flow_rem,actions=drop
          9 | unsupported action 'learn(...)' | actions=learn(table=10,NXM_OF_VLAN_TCI[0..11])
          9 | unsupported action 'ct(...)' | actions=ct(commit),output:1
          9 | unsupported action 'ct_clear' | actions=ct_clear,resubmit(,71)
          9 | unsupported action 'load' | actions=load:0x1->NXM_NX_REG5[]
          9 | unsupported action 'CONTROLLER' | actions=CONTROLLER:96
          9 | unsupported port 'LOCAL' | actions=LOCAL
         16 | unsupported port 'CONTROLLER' | actions=output:controller
         22 | unsupported field 'reg0' for set_field | actions=set_field:1->reg0
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
        let ok =
            parse_flows_file("table=1,actions=drop\n\n# x\nin_port=\"a#b\",actions=drop # c\n")
                .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].in_port, Some(PortRef::Name("a#b".into())));
    }
}
