//! `add-group` / `mod-group` syntax: `group_id=N,type=all|select|indirect,bucket=...`, where
//! each bucket is `[weight:W,][bucket_id:I,]actions=ACTIONS` or just `ACTIONS`; printed back
//! the way `dump-groups` does.

use super::token::{err, Tokenizer};
use super::{format_actions, parse_actions, ParseError};
use crate::flow::group::{Bucket, Group, GroupKind};

/// Where each `bucket=` starts (its value's byte offset), at item boundaries.
fn bucket_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut out = Vec::new();
    for i in 0..b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let boundary = i == 0 || b[i - 1] == b',' || b[i - 1].is_ascii_whitespace();
        if depth == 0 && boundary && text[i..].starts_with("bucket=") {
            out.push(i + "bucket=".len());
        }
    }
    out
}

fn number(line: &str, what: &str, s: &str, at: usize, max: u64) -> Result<u64, ParseError> {
    let parsed = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    };
    parsed.filter(|v| *v <= max).ok_or_else(|| {
        err(
            line,
            at,
            format!("{what}: '{s}' is not a number in 0-{max}"),
        )
    })
}

/// Parses one group.
pub fn parse_group(line: &str) -> Result<Group, ParseError> {
    let starts = bucket_starts(line);
    let head_end = starts.first().map_or(line.len(), |s| s - "bucket=".len());
    let mut id = None;
    let mut kind = None;
    let mut items = Tokenizer {
        line,
        pos: 0,
        end: head_end,
    };
    while let Some(t) = items.next(false)? {
        let value = t.value.filter(|_| t.sep == b'=');
        // A key given twice is refused, not read as its last value.
        if (t.key == "group_id" && id.is_some()) || (t.key == "type" && kind.is_some()) {
            return Err(err(line, t.at, format!("{} is given twice", t.key)));
        }
        match (t.key, value) {
            ("group_id", Some((v, vat))) => {
                id = Some(number(line, "group_id", v, vat, u64::from(u32::MAX - 1))? as u32)
            }
            ("type", Some((v, vat))) => {
                kind = Some(match v {
                    "all" => GroupKind::All,
                    "select" => GroupKind::Select,
                    "indirect" => GroupKind::Indirect,
                    "ff" | "fast_failover" => GroupKind::FastFailover,
                    _ => {
                        return Err(err(
                            line,
                            vat,
                            format!("type={v}: expected all, select, indirect or fast_failover"),
                        ))
                    }
                })
            }
            ("selection_method", Some(("hash", _))) => {}
            (k, _) => return Err(err(line, t.at, format!("unsupported group field '{k}'"))),
        }
    }
    let id = id.ok_or_else(|| err(line, 0, "a group needs group_id=N"))?;
    let kind = kind.ok_or_else(|| err(line, 0, "a group needs type=all|select|indirect"))?;
    let mut buckets = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts
            .get(i + 1)
            .map_or(line.len(), |next| next - "bucket=".len());
        buckets.push(bucket(line, start, end)?);
    }
    if kind == GroupKind::Indirect && buckets.len() != 1 {
        return Err(err(line, 0, "an indirect group has exactly one bucket"));
    }
    Ok(Group { id, kind, buckets })
}

fn bucket(line: &str, start: usize, end: usize) -> Result<Bucket, ParseError> {
    let mut weight = 1u16;
    let mut watch_port = None;
    let mut items = Tokenizer {
        line,
        pos: start,
        end,
    };
    let mut actions_at = end;
    while let Some(t) = items.next(true)? {
        match (t.key, t.value) {
            ("weight", Some((v, vat))) => weight = number(line, "weight", v, vat, 0xffff)? as u16,
            ("bucket_id", Some(_)) => {}
            ("watch_port", Some((v, vat))) => {
                watch_port = Some(if v.chars().all(|c| c.is_ascii_digit()) {
                    crate::flow::PortRef::Number(number(line, "watch_port", v, vat, 0xfeff)? as u16)
                } else {
                    crate::flow::PortRef::Name(v.to_string())
                })
            }
            ("watch_group", _) => {
                return Err(err(
                    line,
                    t.at,
                    "watch_group is not supported (watch_port is)",
                ))
            }
            ("actions", Some((_, vat))) if t.sep == b'=' => {
                actions_at = vat;
                break;
            }
            _ => {
                actions_at = t.at;
                break;
            }
        }
    }
    let text = line[actions_at..end].trim_end_matches([',', ' ']);
    let actions = if text.is_empty() {
        Vec::new()
    } else {
        let wrapped = format!("actions={text}");
        parse_actions(&wrapped).map_err(|e| ParseError {
            column: if e.column > 8 {
                super::token::column(line, actions_at) + e.column - 9
            } else {
                0
            },
            message: format!("bucket: {}", e.message),
        })?
    };
    if actions.iter().any(|a| {
        matches!(
            a,
            crate::flow::Action::GotoTable(_) | crate::flow::Action::Conjunction { .. }
        )
    }) {
        return Err(err(
            line,
            actions_at,
            "bucket: goto_table and conjunction are not allowed in a group",
        ));
    }
    Ok(Bucket {
        weight,
        watch_port,
        actions,
    })
}

/// A group as `dump-groups` prints it.
pub fn format_group(g: &Group) -> String {
    let mut s = format!("group_id={},type={}", g.id, g.kind.name());
    for b in &g.buckets {
        s.push_str(",bucket=");
        if g.kind == GroupKind::Select || b.weight != 1 {
            s.push_str(&format!("weight:{},", b.weight));
        }
        match &b.watch_port {
            Some(crate::flow::PortRef::Number(p)) => s.push_str(&format!("watch_port:{p},")),
            Some(crate::flow::PortRef::Name(n)) => s.push_str(&format!("watch_port:{n},")),
            None => {}
        }
        s.push_str("actions=");
        s.push_str(&format_actions(&b.actions));
    }
    s
}
