//! `learn(table=T, idle_timeout=N, hard_timeout=N, priority=N, cookie=N, SPECS...)`, the
//! subset OVS's MAC-learning examples use. A spec is `FIELD[a..b]` (match the field on the
//! packet's own value), `DST[a..b]=SRC[c..d]` or `DST[a..b]=VALUE` (a match),
//! `load:SRC[..]->DST[..]` or `load:VALUE->DST[..]` (an action), `output:SRC[..]` (an action:
//! to the port in SRC). `fin_idle_timeout`, `fin_hard_timeout`, `delete_learned`, `limit`
//! and `send_flow_rem` are refused by name.

use super::actions::fmt_subfield;
use super::fields::{exact, Prereq};
use super::token::Tokenizer;
use super::value::number;
use super::{ParseError, Parser, DEFAULT_PRIORITY, MAX_TABLE};
use crate::flow::action::{Action, LearnAction, LearnMatch, LearnSpec, SubField};
use crate::flow::key::{Field, Match};

impl<'a> Parser<'a> {
    /// `learn(...)`; `arg` is the text between the parentheses, at byte `aat`.
    pub(super) fn learn(&mut self, arg: &str, aat: usize) -> Result<Action, ParseError> {
        let mut spec = LearnSpec {
            table: 1,
            priority: DEFAULT_PRIORITY,
            idle_timeout: 0,
            hard_timeout: 0,
            cookie: 0,
            matches: Vec::new(),
            actions: Vec::new(),
        };
        let mut items = Tokenizer {
            line: self.line,
            pos: aat,
            end: aat + arg.len(),
        };
        // The prerequisites of the fields the learned flow matches are the learned flow's
        // (checked below against what it will match); those of the fields read from the
        // packet are this flow's, as OVS has it.
        let outer = std::mem::take(&mut self.prereqs);
        let mut learned: Vec<(Prereq, String, usize)> = Vec::new();
        while let Some(t) = items.next(false)? {
            let value = t.value;
            match (t.key, t.sep, value) {
                ("table", b'=', Some((v, vat))) => {
                    spec.table = self.uint("learn table", v, vat, u64::from(MAX_TABLE))? as u8
                }
                ("priority", b'=', Some((v, vat))) => {
                    spec.priority = self.uint("learn priority", v, vat, 0xffff)? as u16
                }
                ("idle_timeout", b'=', Some((v, vat))) => {
                    spec.idle_timeout = self.uint("learn idle_timeout", v, vat, 0xffff)? as u16
                }
                ("hard_timeout", b'=', Some((v, vat))) => {
                    spec.hard_timeout = self.uint("learn hard_timeout", v, vat, 0xffff)? as u16
                }
                ("cookie", b'=', Some((v, vat))) => {
                    spec.cookie = self.uint("learn cookie", v, vat, u64::MAX)?
                }
                (
                    "fin_idle_timeout" | "fin_hard_timeout" | "delete_learned" | "limit"
                    | "send_flow_rem" | "result_dst",
                    _,
                    _,
                ) => return Err(self.err(t.at, format!("learn: '{}' is not supported", t.key))),
                ("load", b':', Some((v, vat))) => {
                    let Some((src, dst)) = v.split_once("->") else {
                        return Err(self.err(vat, "learn: load needs SRC->DST[a..b]"));
                    };
                    let before = self.prereqs.len();
                    let dst_sf = self.writable_subfield("learn load", dst, vat + src.len() + 2)?;
                    learned.extend(self.prereqs.drain(before..));
                    spec.actions.push(match number(src) {
                        Some(Some(value)) => {
                            self.fits("learn load", src, value, dst_sf, vat)?;
                            LearnAction::LoadValue { dst: dst_sf, value }
                        }
                        Some(None) => return Err(self.err(vat, "learn: load value out of range")),
                        None => {
                            let src_sf = self.subfield("learn load", src, vat)?;
                            if src_sf.n_bits != dst_sf.n_bits {
                                return Err(self.err(
                                    vat,
                                    "learn: load's source and destination differ in width",
                                ));
                            }
                            // The packet's own tun_id (Neutron's `load:NXM_NX_TUN_ID[]->
                            // NXM_NX_TUN_ID[]`) is a VNI already; another field may be wider.
                            if dst_sf.field == Field::TunId
                                && src_sf.field != Field::TunId
                                && u32::from(dst_sf.ofs) + u32::from(dst_sf.n_bits) > 24
                            {
                                return Err(self.err(
                                    vat,
                                    format!(
                                        "learn: load to {dst} reaches beyond bit 23 of tun_id \
                                         (VXLAN VNIs are 24 bits)"
                                    ),
                                ));
                            }
                            LearnAction::LoadField {
                                dst: dst_sf,
                                src: src_sf,
                            }
                        }
                    });
                }
                ("output", b':', Some((v, vat))) => {
                    let src = self.subfield("learn output", v, vat)?;
                    spec.actions.push(LearnAction::Output { src });
                }
                (field, b'=', Some((v, vat))) => {
                    let before = self.prereqs.len();
                    let dst = self.subfield("learn", field, t.at)?;
                    learned.extend(self.prereqs.drain(before..));
                    spec.matches.push(match number(v) {
                        Some(Some(value)) => {
                            self.fits("learn", v, value, dst, vat)?;
                            LearnMatch::Value { dst, value }
                        }
                        Some(None) => return Err(self.err(vat, "learn: value out of range")),
                        None => {
                            let src = self.subfield("learn", v, vat)?;
                            if src.n_bits != dst.n_bits {
                                return Err(
                                    self.err(vat, "learn: a match's two sides differ in width")
                                );
                            }
                            LearnMatch::Field { dst, src }
                        }
                    });
                }
                (field, 0, None) if field.contains('[') => {
                    // Read from the packet and matched by the learned flow: both flows'.
                    let before = self.prereqs.len();
                    let f = self.subfield("learn", field, t.at)?;
                    learned.extend(self.prereqs[before..].iter().cloned());
                    spec.matches.push(LearnMatch::Field { dst: f, src: f });
                }
                (k, _, _) => return Err(self.err(t.at, format!("learn: unsupported item '{k}'"))),
            }
        }
        // The learned flow must hold its fields' prerequisites itself (as OVS asks: a
        // flow without them could not be added, nor read back from the state file): its
        // matches on literal values, and those it copies from a field this flow matches
        // exactly, are what it will match.
        let will_match = self.learned_match(&spec.matches);
        for (p, who, at) in &learned {
            if !p.holds(&will_match) {
                return Err(self.err(
                    *at,
                    format!(
                        "{who}: the learned flow requires {}; match it inside learn(...) \
                         (eth_type=0x800, nw_proto=17, ... as OVS asks)",
                        p.condition()
                    ),
                ));
            }
        }
        let own = std::mem::replace(&mut self.prereqs, outer);
        self.prereqs.extend(own);
        Ok(Action::Learn(Box::new(spec)))
    }

    /// What a learned flow's match is known to hold before any packet: literal values, and
    /// whole fields copied from a field this flow matches exactly.
    fn learned_match(&self, matches: &[LearnMatch]) -> Match {
        let mut m = Match::any();
        for lm in matches {
            match *lm {
                LearnMatch::Value { dst, value } => m.set(dst.field, value << dst.ofs, dst.mask()),
                LearnMatch::Field { dst, src } if dst == SubField::whole(dst.field) => {
                    if let Some(v) = (src == SubField::whole(src.field))
                        .then(|| exact(&self.spec.m, src.field))
                        .flatten()
                    {
                        m.set(dst.field, v, dst.mask());
                    }
                }
                LearnMatch::Field { .. } => {}
            }
        }
        m
    }
}

/// `learn(...)` as ovs-ofctl prints it.
pub(super) fn format_learn(l: &LearnSpec) -> String {
    let mut parts = vec![format!("table={}", l.table)];
    if l.idle_timeout != 0 {
        parts.push(format!("idle_timeout={}", l.idle_timeout));
    }
    if l.hard_timeout != 0 {
        parts.push(format!("hard_timeout={}", l.hard_timeout));
    }
    if l.priority != DEFAULT_PRIORITY {
        parts.push(format!("priority={}", l.priority));
    }
    if l.cookie != 0 {
        parts.push(format!("cookie={:#x}", l.cookie));
    }
    for m in &l.matches {
        parts.push(match m {
            LearnMatch::Field { dst, src } if dst == src => fmt_subfield(dst),
            LearnMatch::Field { dst, src } => {
                format!("{}={}", fmt_subfield(dst), fmt_subfield(src))
            }
            LearnMatch::Value { dst, value } => format!("{}={value:#x}", fmt_subfield(dst)),
        });
    }
    for a in &l.actions {
        parts.push(match a {
            LearnAction::LoadField { dst, src } => {
                format!("load:{}->{}", fmt_subfield(src), fmt_subfield(dst))
            }
            LearnAction::LoadValue { dst, value } => {
                format!("load:{value:#x}->{}", fmt_subfield(dst))
            }
            LearnAction::Output { src } => format!("output:{}", fmt_subfield(src)),
        });
    }
    format!("learn({})", parts.join(","))
}
