//! The ct fields of a packet's key: written from what connection tracking found (for the
//! table `ct(table=T)` continues in), or cleared by `ct_clear`.

use super::fields::read;
use super::ExecState;
use crate::conntrack::Tracked;
use crate::flow::action::{CtAction, CtZone};
use crate::flow::key::{Field, FlowKey, WordSet};

const CT_FIELDS: [Field; 10] = [
    Field::CtState,
    Field::CtZone,
    Field::CtMark,
    Field::CtLabelHi,
    Field::CtLabelLo,
    Field::CtNwSrc,
    Field::CtNwDst,
    Field::CtTpSrc,
    Field::CtTpDst,
    Field::CtNwProto,
];

/// The zone `ct` tracks in.
pub fn zone(st: &ExecState, ct: &CtAction) -> u16 {
    match ct.zone {
        CtZone::Value(z) => z,
        CtZone::Field(sf) => read(&st.key, sf) as u16,
    }
}

/// `ct_clear`: every ct field 0 (untracked).
pub fn clear(key: &mut FlowKey) {
    for f in CT_FIELDS {
        key.set(f, 0);
    }
}

/// Whether two answers of `ct` leave the same ct fields in the key words `read` (those the
/// tables after it look at) and make a `ct(commit)` after them do the same (store nothing,
/// or store). The original direction's addresses and ports count only where they are read:
/// a firewall that matches on `ct_state` alone sees every connection's packets alike.
pub fn same_answer(a: &Tracked, b: &Tracked, read: WordSet) -> bool {
    let tuple_read = [
        Field::CtNwSrc,
        Field::CtNwDst,
        Field::CtTpSrc,
        Field::CtTpDst,
        Field::CtNwProto,
    ]
    .iter()
    .any(|f| read.contains(f.word()));
    a.state == b.state
        && a.zone == b.zone
        && a.mark == b.mark
        && a.label == b.label
        && a.stored == b.stored
        && (!tuple_read || a.orig == b.orig)
}

/// The ct fields as tracking found them.
pub fn write(key: &mut FlowKey, t: &Tracked) {
    clear(key);
    key.set(Field::CtState, t.state);
    key.set(Field::CtZone, u64::from(t.zone));
    key.set(Field::CtMark, u64::from(t.mark));
    key.set(Field::CtLabelHi, (t.label >> 64) as u64);
    key.set(Field::CtLabelLo, t.label as u64);
    if let Some(orig) = t.orig {
        if let Some((src, dst)) = orig.ipv4() {
            key.set(Field::CtNwSrc, u64::from(src));
            key.set(Field::CtNwDst, u64::from(dst));
        }
        key.set(Field::CtNwProto, u64::from(orig.proto()));
        key.set(Field::CtTpSrc, u64::from(orig.sport()));
        key.set(Field::CtTpDst, u64::from(orig.dport()));
    }
}
