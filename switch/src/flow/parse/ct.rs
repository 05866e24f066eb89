//! Connection tracking in flows: the `ct(...)` and `ct_clear` actions, the `ct_state` flags,
//! and printing the ct match fields.
//!
//! `ct(commit, zone=N|zone=SUBFIELD, table=T, exec(set_field:V[/M]->ct_mark,
//! set_field:V[/M]->ct_label, load:V->NXM_NX_CT_MARK[..], load:V->NXM_NX_CT_LABEL[..]))` as
//! ovs-ofctl writes it, and `force`. `nat` and `alg=` are refused by name.

use super::fields::{exact, get128};
use super::token::{Token, Tokenizer};
use super::value::number;
use super::{ParseError, Parser};
use crate::flow::action::{Action, CtAction, CtZone};
use crate::flow::key::consts::ct_state;
use crate::flow::key::{Field, Match};

/// `ct_state` flag names, in bit order (as ovs-ofctl prints them).
const CT_FLAGS: [(&str, u64); 8] = [
    ("new", ct_state::NEW),
    ("est", ct_state::ESTABLISHED),
    ("rel", ct_state::RELATED),
    ("rpl", ct_state::REPLY),
    ("inv", ct_state::INVALID),
    ("trk", ct_state::TRACKED),
    ("snat", ct_state::SNAT),
    ("dnat", ct_state::DNAT),
];

/// `+trk+est-new` (flags and their values).
fn fmt_ct_state(v: u64, mask: u64) -> String {
    super::fields::fmt_flags(v, mask, &CT_FLAGS)
}

/// The ct match fields as ovs-ofctl prints them.
pub(super) fn ct_match_items(m: &Match, items: &mut Vec<String>) {
    let (v, mask) = m.get(Field::CtState);
    if mask != 0 {
        items.push(format!("ct_state={}", fmt_ct_state(v, mask)));
    }
    if let Some(zone) = exact(m, Field::CtZone) {
        items.push(format!("ct_zone={zone}"));
    }
    let (v, mask) = m.get(Field::CtMark);
    if mask != 0 {
        items.push(super::fields::fmt_masked_hex(
            "ct_mark",
            v,
            mask,
            0xffff_ffff,
        ));
    }
    let (v, mask) = get128(m, Field::CtLabelLo);
    if mask == u128::MAX {
        items.push(format!("ct_label={v:#x}"));
    } else if mask != 0 {
        items.push(format!("ct_label={v:#x}/{mask:#x}"));
    }
    for (f, name) in [(Field::CtNwSrc, "ct_nw_src"), (Field::CtNwDst, "ct_nw_dst")] {
        let (v, mask) = m.get(f);
        if mask != 0 {
            items.push(format!("{name}={}", super::value::fmt_ip_masked(v, mask)));
        }
    }
    if let Some(p) = exact(m, Field::CtNwProto) {
        items.push(format!("ct_nw_proto={p}"));
    }
    for (f, name) in [(Field::CtTpSrc, "ct_tp_src"), (Field::CtTpDst, "ct_tp_dst")] {
        let (v, mask) = m.get(f);
        if mask == 0xffff {
            items.push(format!("{name}={v}"));
        } else if mask != 0 {
            items.push(super::fields::fmt_masked_hex(name, v, mask, 0xffff));
        }
    }
}

/// `ct(...)` as ovs-ofctl prints it.
pub(super) fn format_ct(ct: &CtAction) -> String {
    let mut parts = Vec::new();
    if ct.commit {
        parts.push("commit".to_string());
    }
    if ct.force {
        parts.push("force".to_string());
    }
    match ct.zone {
        CtZone::Value(0) => {}
        CtZone::Value(z) => parts.push(format!("zone={z}")),
        CtZone::Field(sf) => parts.push(format!("zone={}", super::actions::fmt_subfield(&sf))),
    }
    if let Some(t) = ct.table {
        parts.push(format!("table={t}"));
    }
    let mut exec = Vec::new();
    if let Some((v, m)) = ct.set_mark {
        if m == u32::MAX {
            exec.push(format!("set_field:{v:#x}->ct_mark"));
        } else {
            exec.push(format!("set_field:{v:#x}/{m:#x}->ct_mark"));
        }
    }
    if let Some((v, m)) = ct.set_label {
        if m == u128::MAX {
            exec.push(format!("set_field:{v:#x}->ct_label"));
        } else {
            exec.push(format!("set_field:{v:#x}/{m:#x}->ct_label"));
        }
    }
    if !exec.is_empty() {
        parts.push(format!("exec({})", exec.join(",")));
    }
    format!("ct({})", parts.join(","))
}

impl<'a> Parser<'a> {
    /// A `ct_state` value: flags (`+trk+est-new`) or a number with an optional mask (of
    /// the eight defined bits, so `ct_state=0x21` prints as flags).
    pub(super) fn ct_state(
        &self,
        key: &str,
        val: &str,
        vat: usize,
        mask: Option<(&str, usize)>,
    ) -> Result<(u64, u64), ParseError> {
        self.flags(key, val, vat, mask, &CT_FLAGS, 0xff)
    }

    /// `ct(...)`; `arg` is the text between the parentheses, at byte `aat` of the line.
    pub(super) fn ct(
        &mut self,
        t: &Token<'a>,
        arg: &str,
        aat: usize,
    ) -> Result<Action, ParseError> {
        let mut ct = CtAction {
            commit: false,
            force: false,
            zone: CtZone::Value(0),
            table: None,
            set_mark: None,
            set_label: None,
        };
        let mut items = Tokenizer {
            line: self.line,
            pos: aat,
            end: aat + arg.len(),
        };
        let mut exec_at = None;
        while let Some(item) = items.next(false)? {
            let value = item.value;
            match (item.key, value) {
                ("commit", None) => ct.commit = true,
                ("zone", Some((v, vat))) => ct.zone = self.ct_zone(v, vat)?,
                ("table", Some((v, vat))) => {
                    ct.table =
                        Some(self.uint("ct table", v, vat, u64::from(super::MAX_TABLE))? as u8)
                }
                ("exec", Some((v, vat))) if item.sep == b'(' => {
                    exec_at = Some(item.at);
                    self.ct_exec(&mut ct, v, vat)?;
                }
                ("nat", _) => {
                    return Err(
                        self.err(item.at, "ct: nat is not supported (no NAT in this version)")
                    )
                }
                ("alg", _) => {
                    return Err(self.err(
                        item.at,
                        "ct: alg= is not supported (no application layer gateways in this version)",
                    ))
                }
                ("force", None) => ct.force = true,
                (k, _) => return Err(self.err(item.at, format!("ct: unsupported option '{k}'"))),
            }
        }
        if ct.force && !ct.commit {
            return Err(self.err(t.at, "ct: force needs commit"));
        }
        if let (Some(at), false) = (exec_at, ct.commit) {
            return Err(self.err(
                at,
                "ct: exec(...) needs commit (it sets the committed connection's mark and label)",
            ));
        }
        self.prereqs
            .push((super::fields::Prereq::IpAny, "ct".to_string(), t.at));
        Ok(Action::Ct(ct))
    }

    fn ct_zone(&mut self, v: &str, vat: usize) -> Result<CtZone, ParseError> {
        if number(v).is_some() {
            return Ok(CtZone::Value(self.uint("ct zone", v, vat, 0xffff)? as u16));
        }
        let sf = self.subfield("ct zone", v, vat)?;
        if sf.n_bits != 16 {
            return Err(self.err(
                vat,
                format!(
                    "ct zone: {v} is {} bits; a zone is 16 bits (e.g. NXM_NX_REG6[0..15])",
                    sf.n_bits
                ),
            ));
        }
        Ok(CtZone::Field(sf))
    }

    fn ct_exec(&mut self, ct: &mut CtAction, arg: &str, aat: usize) -> Result<(), ParseError> {
        let mut items = Tokenizer {
            line: self.line,
            pos: aat,
            end: aat + arg.len(),
        };
        while let Some(item) = items.next(false)? {
            let Some((v, vat)) = item.value else {
                return Err(self.err(
                    item.at,
                    format!("ct exec: unsupported action '{}'", item.key),
                ));
            };
            match item.key {
                "set_field" => {
                    let Some((val, fname)) = v.split_once("->") else {
                        return Err(self.err(vat, "set_field needs VALUE->FIELD"));
                    };
                    let (val, mask) = match val.split_once('/') {
                        Some((val, m)) => (val, Some(m)),
                        None => (val, None),
                    };
                    let value = self.uint128(fname, val, vat)?;
                    let mask = match mask {
                        Some(m) => {
                            self.uint128(&format!("{fname} mask"), m, vat + val.len() + 1)?
                        }
                        None => u128::MAX,
                    };
                    match fname {
                        "ct_mark" => {
                            // A mask wider than the mark would be cut, not refused.
                            if value > u128::from(u32::MAX)
                                || (mask != u128::MAX && mask > u128::from(u32::MAX))
                            {
                                return Err(self.err(vat, "ct_mark is 32 bits"));
                            }
                            merge_mark(ct, value as u32, mask as u32);
                        }
                        "ct_label" => merge_label(ct, value, mask),
                        _ => {
                            return Err(self.err(
                                vat + val.len() + 2,
                                format!(
                                    "ct exec: only ct_mark and ct_label can be set, not '{fname}'"
                                ),
                            ))
                        }
                    }
                }
                "load" => {
                    let Some((val, dst)) = v.split_once("->") else {
                        return Err(self.err(vat, "load needs VALUE->DST"));
                    };
                    let dat = vat + val.len() + 2;
                    let (name, ofs, n_bits) = self.bits_of("load", dst, dat)?;
                    let value = self.uint128("load", val, vat)?;
                    if n_bits < 128 && value >> n_bits != 0 {
                        return Err(
                            self.err(vat, format!("load: {val} does not fit in {n_bits} bits"))
                        );
                    }
                    let mask = if n_bits >= 128 {
                        u128::MAX
                    } else {
                        (1u128 << n_bits) - 1
                    };
                    match name {
                        "NXM_NX_CT_MARK" | "ct_mark" if ofs + n_bits <= 32 => {
                            merge_mark(ct, (value << ofs) as u32, (mask << ofs) as u32)
                        }
                        "NXM_NX_CT_LABEL" | "ct_label" if ofs + n_bits <= 128 => {
                            merge_label(ct, value << ofs, mask << ofs)
                        }
                        _ => {
                            return Err(self.err(
                                dat,
                                format!(
                                    "ct exec: only ct_mark and ct_label can be loaded, not '{dst}'"
                                ),
                            ))
                        }
                    }
                }
                k => return Err(self.err(item.at, format!("ct exec: unsupported action '{k}'"))),
            }
        }
        Ok(())
    }
}

fn merge_mark(ct: &mut CtAction, value: u32, mask: u32) {
    let (v0, m0) = ct.set_mark.unwrap_or((0, 0));
    ct.set_mark = Some(((v0 & !mask) | (value & mask), m0 | mask));
}

fn merge_label(ct: &mut CtAction, value: u128, mask: u128) {
    let (v0, m0) = ct.set_label.unwrap_or((0, 0));
    ct.set_label = Some(((v0 & !mask) | (value & mask), m0 | mask));
}
