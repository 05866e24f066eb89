//! `learn(table=T, idle_timeout=N, hard_timeout=N, priority=N, cookie=N, SPECS...)`, the
//! subset OVS's MAC-learning examples use. A spec is `FIELD[a..b]` (match the field on the
//! packet's own value), `DST[a..b]=SRC[c..d]` or `DST[a..b]=VALUE` (a match),
//! `load:SRC[..]->DST[..]` or `load:VALUE->DST[..]` (an action), `output:SRC[..]` (an action:
//! to the port in SRC). `fin_idle_timeout`, `fin_hard_timeout`, `delete_learned`, `limit`
//! and `send_flow_rem` are refused by name.

use super::actions::fmt_subfield;
use super::token::Tokenizer;
use super::value::number;
use super::{ParseError, Parser, DEFAULT_PRIORITY, MAX_TABLE};
use crate::flow::action::{Action, LearnAction, LearnMatch, LearnSpec};

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
        // The prerequisites of the fields named here are the learned flow's, not this one's.
        let outer = std::mem::take(&mut self.prereqs);
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
                    let dst_sf = self.writable_subfield("learn load", dst, vat + src.len() + 2)?;
                    spec.actions.push(match number(src) {
                        Some(Some(value)) => LearnAction::LoadValue { dst: dst_sf, value },
                        Some(None) => return Err(self.err(vat, "learn: load value out of range")),
                        None => {
                            let src_sf = self.subfield("learn load", src, vat)?;
                            if src_sf.n_bits != dst_sf.n_bits {
                                return Err(self.err(
                                    vat,
                                    "learn: load's source and destination differ in width",
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
                    let dst = self.subfield("learn", field, t.at)?;
                    spec.matches.push(match number(v) {
                        Some(Some(value)) => LearnMatch::Value { dst, value },
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
                    let f = self.subfield("learn", field, t.at)?;
                    spec.matches.push(LearnMatch::Field { dst: f, src: f });
                }
                (k, _, _) => return Err(self.err(t.at, format!("learn: unsupported item '{k}'"))),
            }
        }
        // The learned flow checks nothing about the packets it will see: keep only this
        // flow's own prerequisites.
        self.prereqs = outer;
        Ok(Action::Learn(Box::new(spec)))
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
