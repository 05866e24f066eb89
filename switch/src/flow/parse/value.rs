//! Values in flows: numbers, Ethernet and IPv4 addresses, ports; parsed and printed.

use std::net::Ipv4Addr;

use crate::flow::action::PortRef;

/// Decimal or `0x` hex; `None` if it is not a number at all, `Some(None)` if it overflows.
pub(super) fn number(s: &str) -> Option<Option<u64>> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(u64::from_str_radix(digits, radix).ok())
}

pub(super) fn parse_mac(s: &str) -> Option<u64> {
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

pub(super) fn mac_bytes(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

pub(super) fn fmt_mac(v: u64) -> String {
    let b = mac_bytes(v);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

pub(super) fn parse_ip(s: &str) -> Option<u32> {
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
pub(super) fn fmt_ip_masked(v: u64, mask: u64) -> String {
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
pub(super) enum PortTok {
    Port(PortRef),
    Reserved(&'static str),
}

pub(super) const RESERVED_PORTS: [&str; 9] = [
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
pub(super) fn plain_port_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().all(|c| c.is_ascii_digit())
        && !RESERVED_PORTS.iter().any(|r| r.eq_ignore_ascii_case(name))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@+%".contains(c) || !c.is_ascii())
}

pub(super) fn fmt_port(p: &PortRef) -> String {
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

pub(super) fn mac_u64(mac: &[u8; 6]) -> u64 {
    mac.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}
