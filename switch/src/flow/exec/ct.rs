//! `ct` and `ct_clear`, all of their execution in one place: the lookup in connection
//! tracking (or the reuse of the packet's last one), what a replayed run keeps of it, the
//! fork of `ct(table=T)`, and the ct fields of the key, written from what tracking found
//! (for the table the fork continues in) or cleared.

use super::fields::read;
use super::ExecState;
use crate::conntrack::{CommitOptions, Tracked};
use crate::flow::action::{CtAction, CtZone};
use crate::flow::key::{Field, FlowKey, WordSet};
use crate::flow::pipeline::{CtPoint, FlowThread, Halt, Output, Pipeline, Tables, TraceStep};

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

impl Pipeline {
    /// `ct(...)`: tracks the packet; with `table=T`, a copy carrying the ct fields continues
    /// in table T (a fork, as OVS's recirculation: what that copy changes does not affect the
    /// packet here, which goes on with the next action untracked). In `tail` position
    /// nothing goes on, so the packet itself continues (no copy).
    // Out of line, as the compiler left it in `pipeline.rs`: inlined (as it is once moved
    // here), it adds 1.5 KB to `run_actions`, the dispatcher every action goes through.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conntrack_fork(
        &self,
        tables: &Tables,
        ct: &CtAction,
        st: &mut ExecState,
        depth: usize,
        outputs: &mut Vec<Output>,
        trace: &mut Option<&mut Vec<TraceStep>>,
        cache: &mut Option<&mut FlowThread>,
        tail: bool,
    ) -> Result<(), Halt> {
        let zone = zone(st, ct);
        // A zone read from the key: a replay needs all of the key the same.
        if let (CtZone::Field(_), Some(thread)) = (ct.zone, cache.as_deref_mut()) {
            thread.replay.words = WordSet::ALL;
        }
        let options = CommitOptions {
            set_mark: ct.set_mark,
            set_label: ct.set_label,
            force: ct.force,
        };
        let commit = (ct.commit && !st.tracing).then_some(&options);
        // The packet was tracked in this zone already, its header unchanged: the same answer,
        // unless this commits a new connection or sets a mark or label.
        let reuse = st.last_tracked.filter(|(z, t)| {
            *z == zone
                && match commit {
                    None => true,
                    Some(c) => {
                        t.stored && c.set_mark.is_none() && c.set_label.is_none() && !c.force
                    }
                }
        });
        let now_ms = st.now_ms;
        let (tracked, stamp) = match reuse {
            Some((_, t)) => (t, None),
            None => self
                .conntrack
                .track_stamped(st.header_bytes(), zone, commit, now_ms),
        };
        st.last_tracked = Some((zone, tracked));
        // A run's first lookup that stores nothing, on the header as it came, may be
        // replayed (asked again per frame, see [`Replay`]); any other makes the run unique.
        if st.replayable {
            match cache.as_deref_mut() {
                Some(thread) if thread.replay.ct.is_none() && commit.is_none() && !st.modified => {
                    thread.replay.ct = Some(CtPoint {
                        zone,
                        tracked,
                        stamp,
                    });
                }
                // The `ct(commit)` of a connection that run's lookup found stored, with
                // nothing to set: it stores nothing, and a replay's lookup, asked again,
                // must find it stored too.
                Some(thread) if reuse.is_some() && thread.replay.ct.is_some() => {}
                _ => st.replayable = false,
            }
        }
        let Some(table) = ct.table else {
            return Ok(());
        };
        st.count_resubmit()?;
        if tail {
            write(&mut st.key, &tracked);
            return self.run_table(
                tables,
                table,
                st,
                depth + 1,
                outputs,
                trace,
                cache,
                false,
                true,
            );
        }
        let mut copy = *st;
        write(&mut copy.key, &tracked);
        // What the copy commits or marks, this packet's remembered answer would not know.
        st.last_tracked = None;
        let result = self.run_table(
            tables,
            table,
            &mut copy,
            depth + 1,
            outputs,
            trace,
            cache,
            false,
            false,
        );
        st.resubmits = copy.resubmits;
        st.replayable = copy.replayable;
        result
    }
}
