//! ovs-ofctl flow syntax, both ways.
//!
//! [`parse_flow`] reads one flow the way `ovs-ofctl add-flow`, `mod-flows`, `del-flows` and
//! `dump-flows` take it: `key=value` items separated by commas and/or spaces, then
//! `actions=` and the rest of the line. `Display` for [`FlowSpec`] prints it back the way
//! `dump-flows` does (without counters), so that `parse(format(parse(x))) == parse(x)`.
//! Errors name the field or action at fault and carry the 1-based character column.
//!
//! Layout: `token.rs` splits a line into items, `value.rs` reads and prints numbers,
//! addresses and ports, `fields.rs` holds the match fields (names, prerequisites, printing),
//! `actions.rs` the actions, `ct.rs` connection tracking's action and fields, `group.rs` and
//! `meter.rs` the `add-group` and `add-meter` syntax; this file has the flow itself and the
//! parser's driver.
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

mod actions;
mod ct;
mod fields;
mod group;
mod learn;
mod meter;
mod token;
mod value;

use std::fmt;

use super::action::{Action, PortRef};
use super::key::{Field, Match};
pub use actions::format_actions;
pub use fields::format_match;
use fields::match_items;
use fields::Prereq;
pub use group::{format_group, parse_group};
pub use meter::{format_meter, parse_meter};
use token::{err, Tokenizer};
use value::*;

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

/// `actions=...` alone (a group bucket's): the actions without prerequisite checks.
pub fn parse_actions(text: &str) -> Result<Vec<Action>, ParseError> {
    let mut p = Parser::new(text, FlowSyntax::Add);
    p.check_action_prereqs = false;
    p.run().map(|spec| spec.actions)
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
// The parser

struct Parser<'a> {
    line: &'a str,
    syntax: FlowSyntax,
    spec: FlowSpec,
    /// Prerequisites to check once the whole match is known: (what, who, byte offset).
    prereqs: Vec<(Prereq, String, usize)>,
    /// Keywords that may appear once.
    seen: Vec<&'static str>,
    /// Actions are checked against the match's prerequisites (not for a group's buckets,
    /// whose packets are known only when they come: a rewrite leaves a packet without the
    /// header alone).
    check_action_prereqs: bool,
}

impl<'a> Parser<'a> {
    fn new(line: &'a str, syntax: FlowSyntax) -> Parser<'a> {
        Parser {
            line,
            syntax,
            spec: FlowSpec::new(syntax),
            prereqs: Vec::new(),
            seen: Vec::new(),
            check_action_prereqs: true,
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
                if !self.check_action_prereqs {
                    self.prereqs.clear();
                }
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

    fn ipv6(&self, what: &str, s: &str, at: usize) -> Result<u128, ParseError> {
        s.parse::<std::net::Ipv6Addr>()
            .map(u128::from)
            .map_err(|_| self.err(at, format!("{what}: invalid IPv6 address '{s}'")))
    }

    /// A number of up to 128 bits (decimal or 0x hex).
    fn uint128(&self, what: &str, s: &str, at: usize) -> Result<u128, ParseError> {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) if !h.is_empty() => u128::from_str_radix(h, 16),
            _ => s.parse::<u128>(),
        };
        parsed.map_err(|_| {
            self.err(
                at,
                format!("{what}: invalid number '{s}' (at most 128 bits)"),
            )
        })
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
mod tests;
