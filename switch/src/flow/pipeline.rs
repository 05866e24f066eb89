//! The pipeline of flow tables: versioned snapshots that the frame path reads while changes
//! build the next version (RCU-style: readers clone an `Arc`, writers swap it), per-flow and
//! per-table counters that survive versions, timeouts, and the execution of a packet through
//! the tables.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use serde::{Deserialize, Serialize};

use super::action::{Action, PortRef};
use std::collections::HashMap;

use super::classifier::{CacheKey, Classifier};
use super::exec::{self, ExecState};
use super::group::{Group, GroupEntry, GroupKind};
use super::key::{Field, FlowKey, Match, WordSet};
use super::meter::{Meter, MeterEntry};
use super::rewrite::{HeaderBuf, Matched};
use crate::conntrack::{Conntrack, Stamp, Tracked};

/// Table numbers are 0..=254 (255 is OpenFlow's "all tables").
pub const N_TABLES: usize = 255;
/// How deep resubmits may nest before the packet is dropped (as OVS bounds recursion).
pub const MAX_RESUBMIT_DEPTH: usize = 64;
/// Most resubmits and goto_tables one packet may take in all (OVS's limit). Depth alone does
/// not bound the work: a flow that resubmits twice into a table that does the same takes
/// 2^depth paths. Beyond it the packet is dropped whole, with nothing output.
pub const MAX_RESUBMITS: usize = 4096;
/// Most outputs one packet may produce.
pub const MAX_OUTPUTS: usize = 64;

/// A flow with its ports resolved to numbers: what the pipeline stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    pub m: Match,
    pub actions: Vec<Action>,
    pub cookie: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    /// Canonical text of the match part (ports as the user named them), for dump-flows.
    pub match_text: String,
    /// Canonical text of the actions.
    pub actions_text: String,
}

impl Flow {
    /// Whether this flow is a dimension of conjunctive matches (its actions are all
    /// `conjunction(...)`).
    pub fn is_conjunctive(&self) -> bool {
        !self.actions.is_empty()
            && self
                .actions
                .iter()
                .all(|a| matches!(a, Action::Conjunction { .. }))
    }

    /// The match the classifier holds: a conjunctive flow's carries the `Conjunctive` mark,
    /// which no packet has, so it never matches by itself.
    fn classifier_match(&self) -> Match {
        let mut m = self.m;
        if self.is_conjunctive() {
            m.set_exact(Field::Conjunctive, 1);
        }
        m
    }
}

/// A table's conjunctive matches (`conjunction(id, k/n)` flows): a packet matches one when it
/// matches a flow of each of its dimensions; the table is then searched again with
/// `conj_id` set (OVS's semantics).
#[derive(Clone, Default)]
struct Conjunctions {
    /// Highest priority first.
    sets: Vec<ConjSet>,
    /// The words the dimensions' masks use (the flow cache keys on them too).
    words: WordSet,
}

#[derive(Clone)]
struct ConjSet {
    id: u32,
    priority: u16,
    /// Dimension k - 1: the matches of the flows with `conjunction(id, k/n)`.
    dims: Vec<Classifier<()>>,
}

impl Conjunctions {
    fn build(table: &Classifier<Entry>) -> Conjunctions {
        let mut sets: Vec<ConjSet> = Vec::new();
        for (_, _, _, entry) in table.iter() {
            let flow = &entry.flow;
            for a in &flow.actions {
                let Action::Conjunction { id, k, n } = *a else {
                    continue;
                };
                let at = sets.iter().position(|s| {
                    s.id == id && s.priority == flow.priority && s.dims.len() == usize::from(n)
                });
                let set = match at {
                    Some(i) => &mut sets[i],
                    None => {
                        sets.push(ConjSet {
                            id,
                            priority: flow.priority,
                            dims: (0..n).map(|_| Classifier::new()).collect(),
                        });
                        sets.last_mut().expect("just pushed")
                    }
                };
                if let Some(dim) = set.dims.get_mut(usize::from(k) - 1) {
                    dim.insert_unordered(flow.m, flow.priority, ());
                }
            }
        }
        let mut words = WordSet::default();
        for set in &mut sets {
            for dim in &mut set.dims {
                dim.restore_order();
                words = words.union(dim.words());
            }
        }
        sets.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        Conjunctions { sets, words }
    }
}

/// Counters of one flow; shared by every table version the flow is in.
#[derive(Debug)]
pub struct FlowStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Pipeline clock (ms) when the flow was added.
    pub created_ms: u64,
    /// Pipeline clock (ms) when a packet last matched (or when added).
    pub used_ms: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub flow: Arc<Flow>,
    pub stats: Arc<FlowStats>,
}

impl Entry {
    /// A new flow with zeroed counters, added at `now_ms`.
    fn new(flow: Flow, now_ms: u64) -> Entry {
        Entry {
            flow: Arc::new(flow),
            stats: Arc::new(FlowStats {
                packets: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                created_ms: now_ms,
                used_ms: AtomicU64::new(now_ms),
            }),
        }
    }
}

/// Which flows a mod-flows/del-flows/dump-flows applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// None: every table.
    pub table: Option<u8>,
    pub m: Match,
    /// Strict: same match and this priority. Otherwise: flows whose match is at least as
    /// specific as `m`.
    pub strict_priority: Option<u16>,
    /// (cookie, mask): flows with `cookie & mask == value & mask`.
    pub cookie: Option<(u64, u64)>,
    /// Only flows that output to this port.
    pub out_port: Option<u16>,
}

impl FlowFilter {
    fn selects(&self, flow: &Flow) -> bool {
        if self.table.is_some_and(|t| t != flow.table) {
            return false;
        }
        match self.strict_priority {
            Some(p) => {
                if flow.priority != p || flow.m != self.m {
                    return false;
                }
            }
            None => {
                if !flow.m.is_subset_of(&self.m) {
                    return false;
                }
            }
        }
        if let Some((value, mask)) = self.cookie {
            if flow.cookie & mask != value & mask {
                return false;
            }
        }
        if let Some(port) = self.out_port {
            let outputs_to = flow
                .actions
                .iter()
                .any(|a| matches!(a, Action::Output(PortRef::Number(p)) if *p == port));
            if !outputs_to {
                return false;
            }
        }
        true
    }
}

/// One change to the tables.
#[derive(Debug, Clone)]
pub enum FlowMod {
    /// Adds a flow; an identical (table, match, priority) is replaced and its counters reset
    /// (OpenFlow add semantics).
    Add(Flow),
    /// Replaces the actions of the selected flows (counters kept).
    Modify {
        filter: FlowFilter,
        actions: Vec<Action>,
        actions_text: String,
        /// mod-flows' `cookie=V` (without a mask) sets the selected flows' cookie.
        new_cookie: Option<u64>,
    },
    Delete(FlowFilter),
    /// add-group (an existing id is an error) / mod-group (replaces; counters kept).
    AddGroup(Group),
    ModGroup(Group),
    /// del-groups: one group or every group; flows that use a deleted group go too.
    DelGroups(Option<u32>),
    /// add-meter / mod-meter / del-meters, the same way.
    AddMeter(Meter),
    ModMeter(Meter),
    DelMeters(Option<u32>),
}

/// A flow as dump-flows shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDump {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub duration_ms: u64,
    pub idle_age_ms: u64,
    pub packets: u64,
    pub bytes: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub match_text: String,
    pub actions_text: String,
}

/// Per-table counters.
#[derive(Debug, Default)]
pub struct TableStats {
    pub lookups: AtomicU64,
    pub matches: AtomicU64,
}

/// One immutable version of every table.
#[derive(Clone)]
pub struct Tables {
    tables: Vec<Classifier<Entry>>,
    /// Per table; rebuilt for the tables a change touched.
    conjunctions: Vec<Conjunctions>,
    /// Tables changed since the last `finish_changes`.
    changed: Vec<bool>,
    pub groups: HashMap<u32, GroupEntry>,
    /// Whether any group is `fast_failover` (the frame path then tells the pipeline which
    /// ports are up).
    pub watches_ports: bool,
    pub meters: HashMap<u32, MeterEntry>,
    pub version: u64,
    n_flows: usize,
}

impl Tables {
    fn new() -> Tables {
        Tables {
            tables: (0..N_TABLES).map(|_| Classifier::new()).collect(),
            conjunctions: vec![Conjunctions::default(); N_TABLES],
            changed: vec![false; N_TABLES],
            groups: HashMap::new(),
            watches_ports: false,
            meters: HashMap::new(),
            version: 0,
            n_flows: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.n_flows == 0
    }

    pub fn len(&self) -> usize {
        self.n_flows
    }

    fn recount(&mut self) {
        self.n_flows = self.tables.iter().map(|t| t.len()).sum();
    }

    /// Ends a batch of `apply` calls: puts every changed table back in lookup order (once per
    /// bundle, not once per flow) and recounts.
    fn finish_changes(&mut self) {
        self.watches_ports = self
            .groups
            .values()
            .any(|g| g.group.kind == GroupKind::FastFailover);
        for (t, table) in self.tables.iter_mut().enumerate() {
            table.restore_order();
            if std::mem::take(&mut self.changed[t]) {
                self.conjunctions[t] = Conjunctions::build(table);
            }
        }
        self.recount();
    }

    fn selected(&self, filter: &FlowFilter) -> Vec<(u8, u64)> {
        let mut ids = Vec::new();
        for (t, table) in self.tables.iter().enumerate() {
            if filter.table.is_some_and(|ft| usize::from(ft) != t) {
                continue;
            }
            if let Some(priority) = filter.strict_priority {
                // Strict: at most one flow per table has this match and priority, found with
                // a hash probe instead of a scan (a bundle of n strict changes stays O(n)).
                let mut marked = filter.m;
                marked.set_exact(Field::Conjunctive, 1);
                let exact = table
                    .find_exact(&filter.m, priority)
                    .or_else(|| table.find_exact(&marked, priority));
                let found = exact.and_then(|id| {
                    let (_, _, entry) = table.get(id)?;
                    filter.selects(&entry.flow).then_some(id)
                });
                ids.extend(found.map(|id| (t as u8, id)));
                continue;
            }
            for (id, _, _, entry) in table.iter() {
                if filter.selects(&entry.flow) {
                    ids.push((t as u8, id));
                }
            }
        }
        ids
    }

    /// Whether group `from`'s buckets lead (through other groups) to group `to`.
    fn group_reaches(&self, from: u32, to: u32) -> bool {
        let mut seen = Vec::new();
        let mut stack = vec![from];
        while let Some(g) = stack.pop() {
            if g == to {
                return true;
            }
            if seen.contains(&g) {
                continue;
            }
            seen.push(g);
            if let Some(e) = self.groups.get(&g) {
                for a in e.group.buckets.iter().flat_map(|b| b.actions.iter()) {
                    if let Action::Group(next) = a {
                        stack.push(*next);
                    }
                }
            }
        }
        false
    }

    /// Every group and meter `actions` use exists.
    fn check_references(&self, actions: &[Action]) -> Result<(), PipelineError> {
        let mut bucket_actions = Vec::new();
        for a in actions {
            match a {
                Action::Group(g) => match self.groups.get(g) {
                    None => return Err(PipelineError::NoSuchGroup(*g)),
                    Some(e) => {
                        bucket_actions.extend(e.group.buckets.iter().flat_map(|b| b.actions.iter()))
                    }
                },
                Action::Meter(m) if !self.meters.contains_key(m) => {
                    return Err(PipelineError::NoSuchMeter(*m))
                }
                _ => {}
            }
        }
        for a in bucket_actions {
            if let Action::Meter(m) = a {
                if !self.meters.contains_key(m) {
                    return Err(PipelineError::NoSuchMeter(*m));
                }
            }
        }
        Ok(())
    }

    /// Removes the flows `uses` says use something deleted; how many.
    fn remove_flows_using(&mut self, uses: impl Fn(&Action) -> bool) -> usize {
        let mut n = 0;
        for (t, table) in self.tables.iter_mut().enumerate() {
            let gone: Vec<u64> = table
                .iter()
                .filter(|(_, _, _, e)| e.flow.actions.iter().any(&uses))
                .map(|(id, _, _, _)| id)
                .collect();
            for id in &gone {
                table.remove_unordered(*id);
            }
            if !gone.is_empty() {
                self.changed[t] = true;
                n += gone.len();
            }
        }
        n
    }

    fn apply(&mut self, change: &FlowMod, now_ms: u64) -> Result<usize, PipelineError> {
        match change {
            FlowMod::AddGroup(g) | FlowMod::ModGroup(g) => {
                let old = self.groups.get(&g.id).cloned();
                if matches!(change, FlowMod::AddGroup(_)) && old.is_some() {
                    return Err(PipelineError::GroupExists(g.id));
                }
                if matches!(change, FlowMod::ModGroup(_)) && old.is_none() {
                    return Err(PipelineError::NoSuchGroup(g.id));
                }
                for b in &g.buckets {
                    for a in &b.actions {
                        if let Action::Group(inner) = a {
                            if *inner == g.id || !self.groups.contains_key(inner) {
                                return Err(PipelineError::NoSuchGroup(*inner));
                            }
                            // Groups may chain, but not in a loop back to this one.
                            if self.group_reaches(*inner, g.id) {
                                return Err(PipelineError::GroupLoop(g.id));
                            }
                        }
                    }
                    self.check_references(&b.actions)?;
                }
                self.groups.insert(
                    g.id,
                    GroupEntry {
                        group: Arc::new(g.clone()),
                        stats: old.map(|o| o.stats).unwrap_or_default(),
                    },
                );
                Ok(1)
            }
            FlowMod::DelGroups(which) => {
                let ids = selected_ids(&self.groups, *which);
                for id in &ids {
                    self.groups.remove(id);
                }
                self.remove_flows_using(|a| matches!(a, Action::Group(g) if ids.contains(g)));
                Ok(ids.len())
            }
            FlowMod::AddMeter(m) | FlowMod::ModMeter(m) => {
                let exists = self.meters.contains_key(&m.id);
                if matches!(change, FlowMod::AddMeter(_)) && exists {
                    return Err(PipelineError::MeterExists(m.id));
                }
                if matches!(change, FlowMod::ModMeter(_)) && !exists {
                    return Err(PipelineError::NoSuchMeter(m.id));
                }
                self.meters.insert(m.id, MeterEntry::new(m.clone(), now_ms));
                Ok(1)
            }
            FlowMod::DelMeters(which) => {
                let ids = selected_ids(&self.meters, *which);
                for id in &ids {
                    self.meters.remove(id);
                }
                self.remove_flows_using(|a| matches!(a, Action::Meter(m) if ids.contains(m)));
                Ok(ids.len())
            }
            FlowMod::Add(flow) => {
                self.check_references(&flow.actions)?;
                let entry = Entry::new(flow.clone(), now_ms);
                let t = usize::from(flow.table);
                self.changed[t] = true;
                // A flow with the same match and priority but the other kind (conjunctive
                // or not) is replaced too.
                let mut other = flow.classifier_match();
                if flow.is_conjunctive() {
                    other.mask.set(Field::Conjunctive, 0);
                    other.value.set(Field::Conjunctive, 0);
                } else {
                    other.set_exact(Field::Conjunctive, 1);
                }
                if let Some(id) = self.tables[t].find_exact(&other, flow.priority) {
                    self.tables[t].remove_unordered(id);
                }
                self.tables[t].insert_unordered(flow.classifier_match(), flow.priority, entry);
                Ok(1)
            }
            FlowMod::Modify {
                filter,
                actions,
                actions_text,
                new_cookie,
            } => {
                self.check_references(actions)?;
                let ids = self.selected(filter);
                // goto_table must go forward from every flow it lands in.
                for (t, _) in &ids {
                    for a in actions {
                        if let Action::GotoTable(to) = a {
                            if *to <= *t {
                                return Err(PipelineError::BackwardGoto { from: *t, to: *to });
                            }
                        }
                    }
                }
                for (t, id) in &ids {
                    self.changed[usize::from(*t)] = true;
                    let table = &mut self.tables[usize::from(*t)];
                    let Some((m, priority, entry)) =
                        table.get(*id).map(|(m, p, e)| (*m, p, e.clone()))
                    else {
                        continue;
                    };
                    let mut flow = (*entry.flow).clone();
                    flow.actions = actions.clone();
                    flow.actions_text = actions_text.clone();
                    if let Some(c) = new_cookie {
                        flow.cookie = *c;
                    }
                    let m_now = flow.classifier_match();
                    if m_now != m {
                        // It became conjunctive or stopped being: a match of its own.
                        table.remove_unordered(*id);
                    }
                    // Same match and priority: replaces the payload in place, keeping the
                    // flow's rank among equal-priority flows.
                    table.insert_unordered(
                        m_now,
                        priority,
                        Entry {
                            flow: Arc::new(flow),
                            stats: entry.stats,
                        },
                    );
                }
                Ok(ids.len())
            }
            FlowMod::Delete(filter) => {
                let ids = self.selected(filter);
                for (t, id) in &ids {
                    self.changed[usize::from(*t)] = true;
                    self.tables[usize::from(*t)].remove_unordered(*id);
                }
                Ok(ids.len())
            }
        }
    }

    pub fn lookup(&self, table: u8, key: &FlowKey) -> Option<&Entry> {
        self.lookup_slot(table, key).map(|(_, e)| e)
    }

    /// The flow with exactly this match and priority in `table`.
    pub fn find(&self, table: u8, m: &Match, priority: u16) -> Option<&Entry> {
        let classifier = self.tables.get(usize::from(table))?;
        let id = classifier.find_exact(m, priority)?;
        classifier.get(id).map(|(_, _, e)| e)
    }

    /// The flow `key` matches in `table` (its slot and entry), conjunctive matches included.
    fn lookup_slot(&self, table: u8, key: &FlowKey) -> Option<(u32, &Entry)> {
        let t = usize::from(table);
        let classifier = self.tables.get(t)?;
        let normal = classifier.lookup_slot(key).map(|(_, slot, e)| (slot, e));
        let conjunctions = &self.conjunctions[t];
        if conjunctions.sets.is_empty() {
            return normal;
        }
        let best = normal.map(|(_, e)| e.flow.priority);
        for set in &conjunctions.sets {
            if best.is_some_and(|p| p >= set.priority) {
                break;
            }
            if set.dims.iter().all(|d| d.lookup(key).is_some()) {
                let mut with_id = *key;
                with_id.set(Field::ConjId, u64::from(set.id));
                if let Some((_, slot, e)) = classifier.lookup_slot(&with_id) {
                    return Some((slot, e));
                }
            }
        }
        normal
    }

    /// A lookup through a per-thread exact-match cache: a hit costs one probe instead of a
    /// search over every mask. Entries are tagged with this version, so any change to the
    /// tables (a new version) invalidates them all.
    pub fn lookup_cached(&self, table: u8, key: &FlowKey, cache: &mut FlowCache) -> Option<&Entry> {
        let t = usize::from(table);
        let classifier = self.tables.get(t)?;
        let words = self.lookup_words(table);
        let Some(cache_key) = CacheKey::gather(u32::from(table), key, words) else {
            return self.lookup(table, key);
        };
        if let Some(hit) = cache.get(self.version, &cache_key) {
            return hit.and_then(|slot| classifier.get_slot(slot));
        }
        let found = self.lookup_slot(table, key);
        cache.insert(self.version, &cache_key, found.map(|(slot, _)| slot));
        found.map(|(_, e)| e)
    }

    /// The words of a key a lookup in `table` reads: those its rules' masks and
    /// conjunctions use.
    #[inline]
    pub fn lookup_words(&self, table: u8) -> WordSet {
        let t = usize::from(table);
        match (self.tables.get(t), self.conjunctions.get(t)) {
            (Some(c), Some(conj)) => c.words().union(conj.words),
            _ => WordSet::default(),
        }
    }

    /// Every flow, in dump order: table, then descending priority.
    pub fn entries(&self) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self
            .tables
            .iter()
            .flat_map(|t| t.iter().map(|(_, _, _, e)| e))
            .collect();
        all.sort_by(|a, b| {
            (
                a.flow.table,
                std::cmp::Reverse(a.flow.priority),
                &a.flow.match_text,
            )
                .cmp(&(
                    b.flow.table,
                    std::cmp::Reverse(b.flow.priority),
                    &b.flow.match_text,
                ))
        });
        all
    }
}

/// Per-thread cache of a table's matching rule (its slot) by packet key; see
/// [`Tables::lookup_cached`].
pub type FlowCache = super::classifier::ExactMatchCache<Option<u32>>;

/// Entries in each thread's flow cache.
pub const FLOW_CACHE_ENTRIES: usize = 4096;

/// A dataplane thread's flow state: its lookup cache, and the counters of the batch it is
/// switching, added to the shared atomics once per batch by [`Pipeline::flush`] (a locked
/// add per packet, per table and per flow, plus a clock read per packet, cost more than the
/// cached lookup itself).
#[derive(Debug)]
pub struct FlowThread {
    pub cache: FlowCache,
    /// (table, lookups, matches) of this batch.
    tables: Vec<(u8, u64, u64)>,
    /// (flow counters, packets, bytes) of this batch.
    flows: Vec<(Arc<FlowStats>, u64, u64)>,
    /// The pipeline clock for this batch.
    now_ms: u64,
    /// Flows `learn` made in this batch that the tables do not have yet: added at its end.
    learned: Vec<Flow>,
    /// Which ports are up (by port number), for `fast_failover` groups: set by the frame
    /// path per batch when the tables have such groups.
    pub live_ports: Vec<bool>,
    /// The last run of this batch, for the next frame with the same key.
    pub(super) replay: Replay,
}

/// Most tables a replayable run may visit (longer runs are simply run again).
const MAX_REPLAY_TABLES: usize = 16;

/// Learned flows a dataplane thread keeps while a control change holds the tables' writer
/// (they go in with a later batch); beyond this many, new ones are counted as refused.
const MAX_PENDING_LEARNED: usize = 256;

/// The previous frame's run through the tables, kept for the next frame of the batch with
/// the same key (OVS's dpif-netdev likewise executes a batch's packets per flow): frames of
/// one flow come in runs (a guest's TX burst, a TCP window), and a run that depended on
/// nothing but the key and the tables (see [`ExecState::replayable`]) and changed no header
/// has the same outputs for them. Replaying it skips the cached lookups, the actions and
/// the copies of key and header a run makes, and counts the frame in every table and flow
/// the run passed through, as running it would.
///
/// "The same key" is the same in the words the run's lookups read (the union of its tables'
/// masks, as the lookup cache keys them): a table whose rules never look at the addresses
/// finds the same rule for every address, so a firewall's run serves a batch of many
/// connections. A run whose actions read the key themselves needs what they read the same
/// too: the whole key after a `move` or a `ct` zone from a field, the word a `load` of part
/// of a field keeps; a run that rewrote the header (which reads it) is never replayed.
///
/// A run may also depend on one connection-tracking lookup that stores nothing (the
/// `ct(table=...)` of a stateful firewall, the established path), and on a `ct(commit)`
/// after it that reuses its answer (the connection is stored, nothing to set): that lookup
/// is made again for each replayed frame, on the frame's own header (it moves the
/// connection on), and the replay holds only if it answers as it did for the run, in what
/// the tables after it read (see [`exec::ct::same_answer`]).
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Whether the fields below describe a run of this batch that may be replayed.
    valid: bool,
    /// The tables' version it ran in.
    version: u64,
    key: FlowKey,
    /// The words of `key` a frame must share to replay the run.
    pub(super) words: WordSet,
    /// Its outputs' targets and tunnel ids (none changed the header).
    outputs: Vec<(Target, Option<u64>)>,
    /// Frames replayed so far (what the tests observe).
    hits: u64,
    /// Per table looked up, in order: its index in [`FlowThread::tables`] and that of the
    /// flow it matched in [`FlowThread::flows`] (the batch's counters).
    trail: Vec<(u32, Option<u32>)>,
    /// The run's one `ct` lookup, if it made one.
    pub(super) ct: Option<CtPoint>,
}

/// A replayable run's `ct` lookup: its zone, what it found, and (for a protocol with no
/// state per packet) the stamp that lets the same answer be given again without one.
#[derive(Debug, Clone, Copy)]
pub(super) struct CtPoint {
    pub(super) zone: u16,
    pub(super) tracked: Tracked,
    pub(super) stamp: Option<Stamp>,
}

impl Default for FlowThread {
    fn default() -> Self {
        FlowThread {
            cache: FlowCache::new(FLOW_CACHE_ENTRIES),
            tables: Vec::new(),
            flows: Vec::new(),
            now_ms: 0,
            learned: Vec::new(),
            live_ports: Vec::new(),
            replay: Replay::default(),
        }
    }
}

impl FlowThread {
    /// Counts a lookup in `table`; returns the table's index in this batch's counters.
    fn count_lookup(&mut self, table: u8, matched: bool) -> usize {
        let m = u64::from(matched);
        match self.tables.iter().position(|t| t.0 == table) {
            Some(i) => {
                let t = &mut self.tables[i];
                t.1 += 1;
                t.2 += m;
                i
            }
            None => {
                self.tables.push((table, 1, m));
                self.tables.len() - 1
            }
        }
    }

    /// Counts a packet of `bytes` for a flow; returns the flow's index in this batch's
    /// counters.
    fn count_flow(&mut self, stats: &Arc<FlowStats>, bytes: u64) -> usize {
        match self.flows.iter().position(|f| Arc::ptr_eq(&f.0, stats)) {
            Some(i) => {
                let f = &mut self.flows[i];
                f.1 += 1;
                f.2 += bytes;
                i
            }
            None => {
                self.flows.push((stats.clone(), 1, bytes));
                self.flows.len() - 1
            }
        }
    }

    /// Whether the last run may be replayed for a frame with `key` in tables of `version`
    /// (its `ct` lookup, if any, aside).
    fn may_replay(&self, version: u64, key: &FlowKey) -> bool {
        let replay = &self.replay;
        replay.valid && replay.version == version && replay.key.same_in(key, replay.words)
    }

    /// Replays the last run: counts the frame as the run did and appends its outputs.
    fn replay(&mut self, frame_len: u32, outputs: &mut Vec<Output>) {
        let replay = &self.replay;
        for &(table, flow) in &replay.trail {
            let t = &mut self.tables[table as usize];
            t.1 += 1;
            if let Some(flow) = flow {
                t.2 += 1;
                let f = &mut self.flows[flow as usize];
                f.1 += 1;
                f.2 += u64::from(frame_len);
            }
        }
        outputs.extend(replay.outputs.iter().map(|&(target, tun_id)| Output {
            target,
            header: None,
            tun_id,
        }));
        self.replay.hits += 1;
    }
}

/// What a table miss in table 0 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MissPolicy {
    /// The learning switch, as if there were no flow tables.
    #[default]
    Normal,
    Drop,
}

/// Where one copy of a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Port(u16),
    InPort,
    /// Every port but the ingress port, in the packet's VLAN (normal flooding rules).
    Flood,
    /// Every port but the ingress port.
    All,
    /// The learning switch.
    Normal,
}

/// One copy of a packet leaving the pipeline: where, with which header, and tunnel id.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub target: Target,
    /// The header as the actions left it, if any action changed it; `None`: the frame
    /// leaves with the bytes the tables matched on (the caller's copy of its first bytes,
    /// not copied again per output).
    pub header: Option<HeaderBuf>,
    /// Set by set_tunnel (the tunnel port sends with this VNI).
    pub tun_id: Option<u64>,
}

impl Output {
    /// Whether any action changed the header (if not, the frame leaves as it came).
    pub fn modified(&self) -> bool {
        self.header.is_some()
    }

    /// The first bytes this copy leaves with: the rewritten header, or `original` (the
    /// bytes the run started from).
    pub fn header_bytes<'a>(&'a self, original: &'a [u8]) -> &'a [u8] {
        match &self.header {
            Some(h) => h.bytes(),
            None => original,
        }
    }
}

/// The pipeline: the current tables, the counters, the miss policy.
pub struct Pipeline {
    /// Read without a lock (an RCU-style snapshot): a batch's load is a couple of plain
    /// loads and stores, where a lock's read side was an atomic update of a line every
    /// dataplane thread shares.
    current: ArcSwap<Tables>,
    /// Serialises writers (each builds from the latest version).
    writer: Mutex<()>,
    table_stats: Vec<TableStats>,
    epoch: Instant,
    pub miss: MissPolicy,
    /// Most flows all tables together may hold; a change that would pass it is refused whole.
    max_flows: usize,
    /// Packets dropped because a push_vlan would have added more than
    /// [`crate::flow::rewrite::MAX_PUSHED_TAGS`] tags.
    pub vlan_tag_limit_drops: AtomicU64,
    /// Packets dropped because they took more than [`MAX_RESUBMITS`] resubmits.
    pub resubmit_limit_drops: AtomicU64,
    /// The connections `ct` tracks.
    pub(super) conntrack: Arc<Conntrack>,
    /// Flows `learn` could not add (a limit, or a group or meter gone).
    pub learn_refused: AtomicU64,
    /// No learned bundle is tried before this time (after one was refused).
    learn_retry_ms: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("goto_table:{to} in table {from} must go to a later table")]
    BackwardGoto { from: u8, to: u8 },
    #[error("table {0} does not exist (tables are 0-254)")]
    NoSuchTable(u16),
    #[error(
        "the change would leave {would_have} flows, more than the limit of {limit} \
         ([switch] max_flows); nothing was changed"
    )]
    TooManyFlows { limit: usize, would_have: usize },
    #[error("group {0} does not exist (add it with add-group first)")]
    NoSuchGroup(u32),
    #[error("group {0} exists already (mod-group changes it)")]
    GroupExists(u32),
    #[error("group {0} would reach itself through its buckets' groups")]
    GroupLoop(u32),
    #[error("meter {0} does not exist (add it with add-meter first)")]
    NoSuchMeter(u32),
    #[error("meter {0} exists already (mod-meter changes it)")]
    MeterExists(u32),
}

/// Why a packet's run through the tables stopped before its actions were done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// Copies output before the `dec_ttl` still leave.
    #[error("dec_ttl: the TTL expired")]
    TtlExpired,
    /// Copies output before the push still leave.
    #[error(
        "push_vlan: the actions already added {} VLAN tags, the most a frame may get",
        crate::flow::rewrite::MAX_PUSHED_TAGS
    )]
    VlanTagLimit,
    /// The packet is dropped.
    #[error("resubmits nested deeper than {MAX_RESUBMIT_DEPTH}")]
    DepthLimit,
    /// The packet is dropped whole: copies output before the limit do not leave either.
    #[error("more than {MAX_RESUBMITS} resubmits and goto_tables: packet dropped, nothing output")]
    ResubmitLimit,
    /// A meter's rate was exceeded: copies output before the meter still leave.
    #[error("meter: over its rate, dropped")]
    Metered,
}

impl Pipeline {
    pub fn new(miss: MissPolicy) -> Pipeline {
        Pipeline {
            current: ArcSwap::from_pointee(Tables::new()),
            writer: Mutex::new(()),
            table_stats: (0..N_TABLES).map(|_| TableStats::default()).collect(),
            epoch: Instant::now(),
            miss,
            max_flows: usize::MAX,
            vlan_tag_limit_drops: AtomicU64::new(0),
            resubmit_limit_drops: AtomicU64::new(0),
            conntrack: Arc::new(Conntrack::default()),
            learn_refused: AtomicU64::new(0),
            learn_retry_ms: AtomicU64::new(0),
        }
    }

    /// The connection table of the `ct` action.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.conntrack
    }

    /// Bounds the number of flows (`[switch] max_flows`).
    pub fn with_max_flows(mut self, max_flows: usize) -> Pipeline {
        self.max_flows = max_flows;
        self
    }

    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Refuses a new version that holds more flows than allowed.
    fn check_size(&self, next: &Tables) -> Result<(), PipelineError> {
        if next.len() > self.max_flows {
            log::warn!(
                "flow change refused: it would leave {} flows, over max_flows {}",
                next.len(),
                self.max_flows
            );
            return Err(PipelineError::TooManyFlows {
                limit: self.max_flows,
                would_have: next.len(),
            });
        }
        Ok(())
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Starts a batch on `thread`: one clock read for all its packets.
    pub fn begin_batch(&self, thread: &mut FlowThread) {
        thread.now_ms = self.now_ms();
        // Its trail indexes the counters `flush` drained.
        thread.replay.valid = false;
    }

    /// Adds `thread`'s batch counters to the shared ones and clears them.
    pub fn flush(&self, thread: &mut FlowThread) {
        for (table, lookups, matches) in thread.tables.drain(..) {
            let stats = &self.table_stats[usize::from(table)];
            stats.lookups.fetch_add(lookups, Ordering::Relaxed);
            stats.matches.fetch_add(matches, Ordering::Relaxed);
        }
        thread.replay.valid = false;
        for (flow, packets, bytes) in thread.flows.drain(..) {
            flow.packets.fetch_add(packets, Ordering::Relaxed);
            flow.bytes.fetch_add(bytes, Ordering::Relaxed);
            flow.used_ms.store(thread.now_ms, Ordering::Relaxed);
        }
        // What `learn` made: one bundle per batch (and none for a batch that only met
        // flows it had learned before).
        if !thread.learned.is_empty() {
            let adds: Vec<FlowMod> = thread.learned.drain(..).map(FlowMod::Add).collect();
            let n = adds.len() as u64;
            // After a refused bundle (the flow limit, most likely) no new try for a second:
            // each try copies the tables.
            let refused = if thread.now_ms < self.learn_retry_ms.load(Ordering::Relaxed) {
                true
            } else {
                match self.try_commit(&adds) {
                    Some(Ok(_)) => false,
                    Some(Err(_)) => {
                        self.learn_retry_ms
                            .store(thread.now_ms + 1000, Ordering::Relaxed);
                        true
                    }
                    // A control change is being made: kept for the next batch rather than
                    // waited for (it copies the tables, up to `max_flows` of them).
                    None => {
                        thread
                            .learned
                            .extend(adds.into_iter().filter_map(|m| match m {
                                FlowMod::Add(f) => Some(f),
                                _ => None,
                            }));
                        false
                    }
                }
            };
            if refused {
                self.learn_refused.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The current version, to keep (control requests, tests).
    pub fn snapshot(&self) -> Arc<Tables> {
        self.current.load_full()
    }

    /// The version the frame path uses for a batch: held for the batch, no reference count
    /// taken (the writer that replaces it waits for no reader; the old version is freed
    /// when the last batch holding it ends).
    #[inline]
    pub fn batch_snapshot(&self) -> Guard<Arc<Tables>> {
        self.current.load()
    }

    pub fn table_stats(&self, table: u8) -> &TableStats {
        &self.table_stats[usize::from(table)]
    }

    fn check(change: &FlowMod) -> Result<(), PipelineError> {
        if let FlowMod::Add(flow) = change {
            for a in &flow.actions {
                if let Action::GotoTable(t) = a {
                    if *t <= flow.table {
                        return Err(PipelineError::BackwardGoto {
                            from: flow.table,
                            to: *t,
                        });
                    }
                    if usize::from(*t) >= N_TABLES {
                        return Err(PipelineError::NoSuchTable(u16::from(*t)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies changes as one bundle: all of them, in order, or (on an error) none. Returns
    /// how many flows each change touched.
    pub fn commit(&self, changes: &[FlowMod]) -> Result<Vec<usize>, PipelineError> {
        for c in changes {
            Self::check(c)?;
        }
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.commit_as_writer(&writer, changes)
    }

    /// [`Pipeline::commit`] unless another change is being made (a control request copying
    /// the tables): then `None`, at once. For the dataplane, which must not wait on that.
    pub fn try_commit(&self, changes: &[FlowMod]) -> Option<Result<Vec<usize>, PipelineError>> {
        if let Err(e) = changes.iter().try_for_each(Self::check) {
            return Some(Err(e));
        }
        let writer = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.commit_as_writer(&writer, changes))
    }

    /// Makes the next version with `changes`; the caller holds the writer's lock.
    fn commit_as_writer(
        &self,
        _writer: &std::sync::MutexGuard<'_, ()>,
        changes: &[FlowMod],
    ) -> Result<Vec<usize>, PipelineError> {
        let mut next = (*self.snapshot()).clone();
        let now = self.now_ms();
        let counts = changes
            .iter()
            .map(|c| next.apply(c, now))
            .collect::<Result<Vec<_>, _>>()?;
        next.finish_changes();
        self.check_size(&next)?;
        next.version += 1;
        self.current.store(Arc::new(next));
        Ok(counts)
    }

    /// Replaces the whole flow set with `flows`; flows present before and after keep their
    /// counters (replace-flows). Returns (added, removed).
    pub fn replace_all(&self, flows: Vec<Flow>) -> Result<(usize, usize), PipelineError> {
        for f in &flows {
            Self::check(&FlowMod::Add(f.clone()))?;
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let mut next = Tables::new();
        // Groups and meters stay: replace-flows replaces flows.
        next.groups = current.groups.clone();
        next.meters = current.meters.clone();
        let now = self.now_ms();
        let mut added = 0;
        for flow in flows {
            next.check_references(&flow.actions)?;
            // An identical flow has the same table, match and priority: one hash probe.
            let old = &current.tables[usize::from(flow.table)];
            let kept = old
                .find_exact(&flow.classifier_match(), flow.priority)
                .and_then(|id| old.get(id))
                .map(|(_, _, e)| e)
                .filter(|e| *e.flow == flow);
            let entry = match kept {
                Some(e) => e.clone(),
                None => {
                    added += 1;
                    Entry::new(flow.clone(), now)
                }
            };
            let t = usize::from(flow.table);
            next.changed[t] = true;
            next.tables[t].insert_unordered(flow.classifier_match(), flow.priority, entry);
        }
        next.finish_changes();
        self.check_size(&next)?;
        let removed = current.len() + added - next.len();
        next.version = current.version + 1;
        self.current.store(Arc::new(next));
        Ok((added, removed))
    }

    /// Removes flows whose idle or hard timeout has passed; returns how many.
    pub fn expire(&self) -> usize {
        let tables = self.snapshot();
        let now = self.now_ms();
        if !self.conntrack.is_empty() {
            self.conntrack.expire(now);
        }
        let expired: Vec<FlowMod> = tables
            .entries()
            .into_iter()
            .filter(|e| {
                let f = &e.flow;
                let idle = f.idle_timeout > 0
                    && now.saturating_sub(e.stats.used_ms.load(Ordering::Relaxed))
                        >= u64::from(f.idle_timeout) * 1000;
                let hard = f.hard_timeout > 0
                    && now.saturating_sub(e.stats.created_ms) >= u64::from(f.hard_timeout) * 1000;
                idle || hard
            })
            .map(|e| {
                FlowMod::Delete(FlowFilter {
                    table: Some(e.flow.table),
                    m: e.flow.m,
                    strict_priority: Some(e.flow.priority),
                    ..FlowFilter::default()
                })
            })
            .collect();
        if expired.is_empty() {
            return 0;
        }
        self.commit(&expired).map(|c| c.iter().sum()).unwrap_or(0)
    }

    /// Flows selected by `filter`, with counters.
    pub fn dump(&self, filter: &FlowFilter) -> Vec<FlowDump> {
        let tables = self.snapshot();
        let now = self.now_ms();
        tables
            .entries()
            .into_iter()
            .filter(|e| filter.selects(&e.flow))
            .map(|e| FlowDump {
                table: e.flow.table,
                priority: e.flow.priority,
                cookie: e.flow.cookie,
                duration_ms: now.saturating_sub(e.stats.created_ms),
                idle_age_ms: now.saturating_sub(e.stats.used_ms.load(Ordering::Relaxed)),
                packets: e.stats.packets.load(Ordering::Relaxed),
                bytes: e.stats.bytes.load(Ordering::Relaxed),
                idle_timeout: e.flow.idle_timeout,
                hard_timeout: e.flow.hard_timeout,
                match_text: e.flow.match_text.clone(),
                actions_text: e.flow.actions_text.clone(),
            })
            .collect()
    }

    /// Runs a packet through the tables from table 0. `outputs` receives one entry per copy
    /// that leaves; `trace`, if given, records each table visited and the flow matched.
    /// Counts the matched flows' packets and bytes. Returns why the run stopped early, if it
    /// did (counted here; see [`Halt`] for which outputs still leave). `header` is the
    /// frame's first bytes as [`HeaderBuf::new`] makes them (the run starts from its bytes;
    /// one that replaces another number of bytes is not a frame's start).
    pub fn run(
        &self,
        tables: &Tables,
        key: &FlowKey,
        header: HeaderBuf,
        frame_len: u32,
        outputs: &mut Vec<Output>,
        trace: Option<&mut Vec<TraceStep>>,
    ) -> Option<Halt> {
        debug_assert_eq!(
            header.skip(),
            header.bytes().len(),
            "not a frame's first bytes"
        );
        let matched = Matched {
            bytes: header.bytes(),
            partial_csum_at: header.partial_csum_at(),
        };
        self.run_inner(tables, key, matched, frame_len, outputs, trace, None, None)
            .0
    }

    /// [`Pipeline::run`], with the frame path's per-thread lookup cache if given, also
    /// saying whether the run may be replayed.
    #[allow(clippy::too_many_arguments)]
    fn run_inner(
        &self,
        tables: &Tables,
        key: &FlowKey,
        matched: Matched,
        frame_len: u32,
        outputs: &mut Vec<Output>,
        mut trace: Option<&mut Vec<TraceStep>>,
        mut cache: Option<&mut FlowThread>,
        tracked: Option<(u16, Tracked)>,
    ) -> (Option<Halt>, bool) {
        let now_ms = match cache.as_deref_mut() {
            Some(thread) => {
                // This run's trail replaces the last one's.
                thread.replay.valid = false;
                thread.replay.trail.clear();
                thread.replay.words = WordSet::default();
                thread.replay.ct = None;
                thread.now_ms
            }
            None => self.now_ms(),
        };
        let mut state = ExecState {
            key: *key,
            matched,
            header: None,
            modified: false,
            tun_id: None,
            frame_len,
            now_ms,
            resubmits: 0,
            tracing: trace.is_some(),
            last_tracked: tracked,
            replayable: true,
        };
        let outputs_before = outputs.len();
        let Err(halt) = self.run_table(
            tables, 0, &mut state, 0, outputs, &mut trace, &mut cache, true, true,
        ) else {
            return (None, state.replayable);
        };
        match halt {
            Halt::VlanTagLimit => {
                self.vlan_tag_limit_drops.fetch_add(1, Ordering::Relaxed);
            }
            Halt::ResubmitLimit => {
                outputs.truncate(outputs_before);
                self.resubmit_limit_drops.fetch_add(1, Ordering::Relaxed);
            }
            Halt::TtlExpired | Halt::DepthLimit | Halt::Metered => {}
        }
        (Some(halt), false)
    }

    /// The frame path's run: [`Pipeline::run`] through `thread`'s lookup cache and batch
    /// counters, or, for a frame with the same key as the run before it in this batch, that
    /// run replayed (see [`Replay`]). `matched` is the frame's first bytes that `key` was
    /// made from; outputs carry a header only if an action rewrote it (the frame leaves as
    /// it was matched otherwise).
    pub fn run_frame(
        &self,
        tables: &Tables,
        key: &FlowKey,
        matched: Matched,
        frame_len: u32,
        outputs: &mut Vec<Output>,
        thread: &mut FlowThread,
    ) -> Option<Halt> {
        // What this frame's `ct` lookup found, when a replay asked it and got another
        // answer: the run below takes it rather than tracking the frame twice.
        let mut tracked = None;
        if thread.may_replay(tables.version, key) {
            let now_ms = thread.now_ms;
            let replay = &mut thread.replay;
            // The point and the answer are read where they lie, and copied only as needed
            // (copied whole, their wide loads waited for the narrow stores that made them).
            let same = match &mut replay.ct {
                None => true,
                // Looked up again, unless nothing changed the answer (a UDP packet of one
                // flow in a batch).
                Some(point) => match &self.conntrack.track_unless_stamped(
                    matched.bytes,
                    point.zone,
                    now_ms,
                    point.stamp.as_ref(),
                ) {
                    None => true,
                    Some((now, stamp)) => {
                        let same = exec::ct::same_answer(now, &point.tracked, replay.words);
                        if same {
                            point.stamp = *stamp;
                        } else {
                            tracked = Some((point.zone, *now));
                        }
                        same
                    }
                },
            };
            if same {
                thread.replay(frame_len, outputs);
                return None;
            }
        }
        let outputs_before = outputs.len();
        let (halt, replayable) = self.run_inner(
            tables,
            key,
            matched,
            frame_len,
            outputs,
            None,
            Some(&mut *thread),
            tracked,
        );
        let ran = &outputs[outputs_before..];
        let replay = &mut thread.replay;
        if halt.is_none()
            && replayable
            && replay.trail.len() <= MAX_REPLAY_TABLES
            && ran.iter().all(|o| !o.modified())
        {
            replay.valid = true;
            replay.version = tables.version;
            replay.key = *key;
            replay.outputs.clear();
            replay
                .outputs
                .extend(ran.iter().map(|o| (o.target, o.tun_id)));
        }
        halt
    }

    /// Like [`Pipeline::run`], recording each table visited (for trace).
    pub fn run_untracked(
        &self,
        tables: &Tables,
        key: &FlowKey,
        header: HeaderBuf,
        frame_len: u32,
        outputs: &mut Vec<Output>,
        steps: &mut Vec<TraceStep>,
    ) -> Option<Halt> {
        self.run(tables, key, header, frame_len, outputs, Some(steps))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_table(
        &self,
        tables: &Tables,
        first_table: u8,
        st: &mut ExecState,
        depth: usize,
        outputs: &mut Vec<Output>,
        trace: &mut Option<&mut Vec<TraceStep>>,
        cache: &mut Option<&mut FlowThread>,
        from_start: bool,
        tail: bool,
    ) -> Result<(), Halt> {
        if depth > MAX_RESUBMIT_DEPTH {
            return Err(Halt::DepthLimit);
        }
        let mut table = first_table;
        loop {
            let found = match cache.as_deref_mut() {
                Some(thread) => {
                    let found = tables.lookup_cached(table, &st.key, &mut thread.cache);
                    let t = thread.count_lookup(table, found.is_some());
                    let f = found.map(|e| thread.count_flow(&e.stats, u64::from(st.frame_len)));
                    // One past the most a replayable run visits says "too many".
                    if thread.replay.trail.len() <= MAX_REPLAY_TABLES {
                        thread.replay.trail.push((t as u32, f.map(|f| f as u32)));
                    }
                    let words = &mut thread.replay.words;
                    *words = words.union(tables.lookup_words(table));
                    found
                }
                None => {
                    let found = tables.lookup(table, &st.key);
                    // A trace looks and changes nothing: no counts, no flow kept alive.
                    let stats = &self.table_stats[usize::from(table)];
                    if !st.tracing {
                        stats.lookups.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(entry) = found.filter(|_| !st.tracing) {
                        stats.matches.fetch_add(1, Ordering::Relaxed);
                        entry.stats.packets.fetch_add(1, Ordering::Relaxed);
                        entry
                            .stats
                            .bytes
                            .fetch_add(u64::from(st.frame_len), Ordering::Relaxed);
                        entry.stats.used_ms.store(st.now_ms, Ordering::Relaxed);
                    }
                    found
                }
            };
            let Some(entry) = found else {
                if let Some(t) = trace.as_deref_mut() {
                    t.push(TraceStep {
                        table,
                        depth,
                        flow: None,
                    });
                }
                if table == 0 && from_start && self.miss == MissPolicy::Normal {
                    exec::output::push(outputs, st, Target::Normal);
                }
                return Ok(());
            };
            if let Some(t) = trace.as_deref_mut() {
                t.push(TraceStep {
                    table,
                    depth,
                    flow: Some(entry.flow.clone()),
                });
            }
            let next_table = self.run_actions(
                tables,
                &entry.flow.actions,
                table,
                st,
                depth,
                outputs,
                trace,
                cache,
                tail,
            )?;
            match next_table {
                Some(t) if t > table => {
                    st.count_resubmit()?;
                    table = t;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Runs a list of actions (a flow's or a group bucket's) in `table`; returns the
    /// `goto_table` target, if any.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_actions(
        &self,
        tables: &Tables,
        actions: &[Action],
        table: u8,
        st: &mut ExecState,
        depth: usize,
        outputs: &mut Vec<Output>,
        trace: &mut Option<&mut Vec<TraceStep>>,
        cache: &mut Option<&mut FlowThread>,
        tail: bool,
    ) -> Result<Option<u8>, Halt> {
        let mut next_table = None;
        let n_actions = actions.len();
        for (i, action) in actions.iter().enumerate() {
            // Nothing of this packet's run follows this action: no caller continues after it
            // and it is the list's last.
            let tail = tail && i + 1 == n_actions;
            match action {
                Action::Output(PortRef::Number(p)) => {
                    exec::output::push(outputs, st, Target::Port(*p))
                }
                // Names are resolved before flows reach the tables.
                Action::Output(PortRef::Name(_)) => {}
                Action::InPort => exec::output::push(outputs, st, Target::InPort),
                Action::Flood => exec::output::push(outputs, st, Target::Flood),
                Action::All => exec::output::push(outputs, st, Target::All),
                Action::Normal => exec::output::push(outputs, st, Target::Normal),
                Action::Load { dst, value } => {
                    if exec::fields::in_header(dst.field) {
                        // It reads and rewrites the frame's header (see the rewrites below).
                        st.replayable = false;
                    } else if let Some(thread) = cache.as_deref_mut() {
                        // Loading part of a field keeps the rest of the key's value (a
                        // frame's tunnel id): a replay needs that word the same.
                        if dst.mask() != dst.field.full_mask() {
                            let words = &mut thread.replay.words;
                            *words = words.union(WordSet(1 << dst.field.word()));
                        }
                    }
                    exec::fields::load(st, *dst, *value)?;
                    if exec::fields::in_header(dst.field) {
                        st.last_tracked = None;
                    }
                }
                Action::Move { src, dst } => {
                    // What it copies is the key's: a replay needs all of the key the same.
                    if let Some(thread) = cache.as_deref_mut() {
                        thread.replay.words = WordSet::ALL;
                    }
                    exec::fields::move_bits(st, *src, *dst)?;
                    if exec::fields::in_header(dst.field) {
                        st.last_tracked = None;
                    }
                }
                Action::CtClear => exec::ct::clear(&mut st.key),
                // Never matched by itself (see `Conjunctions`).
                Action::Conjunction { .. } => {}
                Action::Ct(ct) => {
                    self.conntrack_fork(tables, ct, st, depth, outputs, trace, cache, tail)?
                }
                Action::Meter(id) => exec::meter::admit(tables, *id, st)?,
                Action::Learn(spec) => {
                    st.replayable = false;
                    if st.tracing {
                        continue;
                    }
                    let flow = exec::learn::learned_flow(spec, &st.key);
                    // A flow it learned before: refresh its idle time, nothing to add.
                    let known = tables
                        .find(flow.table, &flow.m, flow.priority)
                        .filter(|e| e.flow.actions == flow.actions);
                    match (known, cache.as_deref_mut()) {
                        (Some(e), _) => e.stats.used_ms.store(st.now_ms, Ordering::Relaxed),
                        (None, Some(thread)) => {
                            if thread.learned.iter().any(|f| {
                                f.table == flow.table
                                    && f.m == flow.m
                                    && f.priority == flow.priority
                            }) {
                                // Pending already.
                            } else if thread.learned.len() >= MAX_PENDING_LEARNED {
                                self.learn_refused.fetch_add(1, Ordering::Relaxed);
                            } else {
                                thread.learned.push(flow);
                            }
                        }
                        (None, None) => {}
                    }
                }
                Action::Group(id) => {
                    self.run_group(tables, *id, table, st, depth, outputs, trace, cache)?
                }
                Action::SetVlanVid(_)
                | Action::SetVlanPcp(_)
                | Action::StripVlan
                | Action::PushVlan(_)
                | Action::SetDlSrc(_)
                | Action::SetDlDst(_)
                | Action::SetNwSrc(_)
                | Action::SetNwDst(_)
                | Action::SetNwTos(_)
                | Action::SetTpSrc(_)
                | Action::SetTpDst(_)
                | Action::DecTtl
                | Action::SetNwTtl(_)
                | Action::SetIpv6Src(_)
                | Action::SetIpv6Dst(_)
                | Action::SetArp { .. }
                | Action::SetField { .. }
                | Action::SetTunnel(_) => {
                    // A rewrite reads the frame's header too (`dec_ttl` its TTL, a tag
                    // push the tags there are, a field its prerequisites) and may stop the
                    // run on what it finds there: its run is the frame's alone. (Its
                    // outputs carry the rewritten header, so they were never replayed.)
                    let reads_header = match action {
                        Action::SetTunnel(_) => false,
                        Action::SetField { field, .. } => exec::fields::in_header(*field),
                        _ => true,
                    };
                    if reads_header {
                        st.replayable = false;
                    }
                    exec::header::apply(st, action)?;
                    st.last_tracked = None;
                }
                Action::Resubmit { port, table: t } => {
                    st.count_resubmit()?;
                    let saved_port = st.key.get(Field::InPort);
                    if let Some(PortRef::Number(p)) = port {
                        st.key.set(Field::InPort, u64::from(*p));
                    }
                    let target = t.unwrap_or(table);
                    self.run_table(
                        tables,
                        target,
                        st,
                        depth + 1,
                        outputs,
                        trace,
                        cache,
                        false,
                        tail,
                    )?;
                    st.key.set(Field::InPort, saved_port);
                }
                Action::GotoTable(t) => next_table = Some(*t),
                Action::Note(_) => {}
            }
        }
        Ok(next_table)
    }
}

/// The ids `del-groups` / `del-meters` select: `which` if it exists, or all.
fn selected_ids<V>(map: &HashMap<u32, V>, which: Option<u32>) -> Vec<u32> {
    match which {
        Some(id) => map.contains_key(&id).then_some(id).into_iter().collect(),
        None => map.keys().copied().collect(),
    }
}

/// One table visited while tracing a packet.
#[derive(Debug, Clone)]
pub struct TraceStep {
    pub table: u8,
    /// Resubmit nesting depth.
    pub depth: usize,
    /// The flow that matched, or None for a miss.
    pub flow: Option<Arc<Flow>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::consts::*;

    fn flow(table: u8, priority: u16, m: Match, actions: Vec<Action>) -> Flow {
        Flow {
            table,
            priority,
            m,
            actions,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            match_text: format!("t{table} p{priority}"),
            actions_text: String::new(),
        }
    }

    fn ip_key(src: u32) -> FlowKey {
        let mut k = FlowKey::default();
        k.set(Field::InPort, 1);
        k.set(Field::DlType, ETH_IPV4);
        k.set(Field::NwSrc, u64::from(src));
        k
    }

    fn run(p: &Pipeline, key: &FlowKey) -> Vec<Target> {
        let mut out = Vec::new();
        p.run(
            &p.snapshot(),
            key,
            HeaderBuf::new(&[0u8; 34]),
            100,
            &mut out,
            None,
        );
        out.iter().map(|o| o.target).collect()
    }

    #[test]
    fn priorities_misses_and_counters() {
        let p = Pipeline::new(MissPolicy::Normal);
        assert_eq!(
            run(&p, &ip_key(1)),
            vec![Target::Normal],
            "empty table: normal"
        );
        let mut ip = Match::any();
        ip.set_exact(Field::DlType, ETH_IPV4);
        let mut ten = ip;
        ten.set(Field::NwSrc, 0x0a00_0000, 0xff00_0000);
        p.commit(&[
            FlowMod::Add(flow(0, 10, ip, vec![Action::Output(PortRef::Number(2))])),
            FlowMod::Add(flow(0, 20, ten, vec![])),
        ])
        .unwrap();
        assert_eq!(
            run(&p, &ip_key(0x0a01_0101)),
            vec![],
            "higher priority drop wins"
        );
        assert_eq!(run(&p, &ip_key(0x0b01_0101)), vec![Target::Port(2)]);
        let dumped = p.dump(&FlowFilter::default());
        assert_eq!(dumped.len(), 2);
        assert_eq!(dumped[0].priority, 20);
        assert_eq!((dumped[0].packets, dumped[0].bytes), (1, 100));
        assert_eq!(p.table_stats(0).lookups.load(Ordering::Relaxed), 3);

        let drop_miss = Pipeline::new(MissPolicy::Drop);
        assert_eq!(run(&drop_miss, &ip_key(1)), vec![]);
    }

    #[test]
    fn resubmit_goto_and_rewrites_feed_later_tables() {
        let p = Pipeline::new(MissPolicy::Drop);
        let mut src1 = Match::any();
        src1.set_exact(Field::NwSrc, 1);
        let mut src9 = Match::any();
        src9.set_exact(Field::NwSrc, 9);
        p.commit(&[
            FlowMod::Add(flow(
                0,
                1,
                Match::any(),
                vec![
                    Action::Resubmit {
                        port: None,
                        table: Some(1),
                    },
                    Action::SetNwSrc(std::net::Ipv4Addr::from(9)),
                    Action::GotoTable(2),
                ],
            )),
            FlowMod::Add(flow(1, 1, src1, vec![Action::Output(PortRef::Number(5))])),
            FlowMod::Add(flow(2, 1, src9, vec![Action::Output(PortRef::Number(6))])),
        ])
        .unwrap();
        assert_eq!(run(&p, &ip_key(1)), vec![Target::Port(5), Target::Port(6)]);
    }

    #[test]
    fn pushing_too_many_tags_drops_and_counts() {
        let p = Pipeline::new(MissPolicy::Drop);
        let limit = crate::flow::rewrite::MAX_PUSHED_TAGS;
        let mut actions = vec![Action::Output(PortRef::Number(2))];
        actions.extend(std::iter::repeat_n(Action::PushVlan(0x8100), limit));
        actions.push(Action::Output(PortRef::Number(3)));
        actions.push(Action::PushVlan(0x8100));
        actions.push(Action::Output(PortRef::Number(4)));
        p.commit(&[FlowMod::Add(flow(0, 1, Match::any(), actions))])
            .unwrap();
        let mut out = Vec::new();
        let halt = p.run(
            &p.snapshot(),
            &ip_key(1),
            HeaderBuf::new(&[0u8; 1500][..crate::flow::rewrite::REWRITE_BYTES]),
            1500,
            &mut out,
            None,
        );
        assert_eq!(halt, Some(Halt::VlanTagLimit));
        let targets: Vec<Target> = out.iter().map(|o| o.target).collect();
        assert_eq!(
            targets,
            vec![Target::Port(2), Target::Port(3)],
            "copies before the refused push leave, nothing after it"
        );
        let pushed = out[1].header.expect("tags were pushed");
        assert_eq!(pushed.out_len(1500), 1500 + 4 * limit as u32);
        assert_eq!(p.vlan_tag_limit_drops.load(Ordering::Relaxed), 1);
    }

    /// Tables 0..levels each resubmit twice into the next; the last outputs to port 2. A
    /// packet takes 2^levels paths and 2^(levels+1) - 2 resubmits.
    fn binary_fan_out(levels: u8) -> Pipeline {
        let p = Pipeline::new(MissPolicy::Drop);
        let mut changes: Vec<FlowMod> = (0..levels)
            .map(|t| {
                let next = Action::Resubmit {
                    port: None,
                    table: Some(t + 1),
                };
                FlowMod::Add(flow(t, 1, Match::any(), vec![next.clone(), next]))
            })
            .collect();
        changes.push(FlowMod::Add(flow(
            levels,
            1,
            Match::any(),
            vec![Action::Output(PortRef::Number(2))],
        )));
        p.commit(&changes).unwrap();
        p
    }

    #[test]
    fn a_resubmit_fan_out_beyond_the_total_limit_is_dropped_whole() {
        // 2^20 paths: without a total limit this runs two million lookups.
        let p = binary_fan_out(20);
        let mut out = Vec::new();
        let mut steps = Vec::new();
        let halt = p.run_untracked(
            &p.snapshot(),
            &ip_key(1),
            HeaderBuf::new(&[0u8; 34]),
            100,
            &mut out,
            &mut steps,
        );
        assert!(out.is_empty(), "no partial outputs: {} left", out.len());
        assert_eq!(halt, Some(Halt::ResubmitLimit));
        assert_eq!(p.resubmit_limit_drops.load(Ordering::Relaxed), 1);
        assert_eq!(
            steps.len(),
            MAX_RESUBMITS + 1,
            "the run stopped at the limit: table 0, then one lookup per resubmit"
        );

        // 2^12 - 2 = 4094 resubmits: within the limit, so the packet goes out (64 copies,
        // the most one packet makes).
        let p = binary_fan_out(11);
        let mut out = Vec::new();
        let halt = p.run(
            &p.snapshot(),
            &ip_key(1),
            HeaderBuf::new(&[0u8; 34]),
            100,
            &mut out,
            None,
        );
        assert_eq!((halt, out.len()), (None, MAX_OUTPUTS));
        assert_eq!(p.resubmit_limit_drops.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn goto_tables_count_towards_the_resubmit_limit() {
        // Table 0 resubmits 2048 times into table 1, which goes on to table 2 (4096 in all),
        // then once more into table 1: the 4097th.
        let p = Pipeline::new(MissPolicy::Drop);
        let into_1 = Action::Resubmit {
            port: None,
            table: Some(1),
        };
        p.commit(&[
            FlowMod::Add(flow(
                0,
                1,
                Match::any(),
                vec![into_1; MAX_RESUBMITS / 2 + 1],
            )),
            FlowMod::Add(flow(1, 1, Match::any(), vec![Action::GotoTable(2)])),
            FlowMod::Add(flow(
                2,
                1,
                Match::any(),
                vec![Action::Output(PortRef::Number(2))],
            )),
        ])
        .unwrap();
        let mut out = Vec::new();
        let halt = p.run(
            &p.snapshot(),
            &ip_key(1),
            HeaderBuf::new(&[0u8; 34]),
            100,
            &mut out,
            None,
        );
        assert_eq!(halt, Some(Halt::ResubmitLimit));
        assert!(out.is_empty());
    }

    #[test]
    fn modify_sets_cookies_and_refuses_backward_gotos() {
        let p = Pipeline::new(MissPolicy::Drop);
        p.commit(&[FlowMod::Add(flow(2, 1, Match::any(), vec![]))])
            .unwrap();
        let modify = |actions, new_cookie| FlowMod::Modify {
            filter: FlowFilter::default(),
            actions,
            actions_text: String::new(),
            new_cookie,
        };
        assert_eq!(
            p.commit(&[modify(vec![Action::GotoTable(1)], None)]),
            Err(PipelineError::BackwardGoto { from: 2, to: 1 })
        );
        p.commit(&[modify(vec![Action::GotoTable(3)], Some(0xabc))])
            .unwrap();
        let d = p.dump(&FlowFilter::default());
        assert_eq!(d[0].cookie, 0xabc);
    }

    #[test]
    fn bundles_are_all_or_nothing_and_replace_keeps_counters() {
        let p = Pipeline::new(MissPolicy::Drop);
        let good = flow(0, 1, Match::any(), vec![Action::Output(PortRef::Number(2))]);
        let bad = flow(3, 1, Match::any(), vec![Action::GotoTable(1)]);
        assert!(p
            .commit(&[FlowMod::Add(good.clone()), FlowMod::Add(bad)])
            .is_err());
        assert!(
            p.snapshot().is_empty(),
            "nothing of the failed bundle was applied"
        );
        p.commit(&[FlowMod::Add(good.clone())]).unwrap();
        run(&p, &ip_key(1));
        let other = flow(0, 2, Match::any(), vec![]);
        assert_eq!(p.replace_all(vec![good, other]).unwrap(), (1, 0));
        let d = p.dump(&FlowFilter::default());
        assert_eq!(d.len(), 2);
        assert_eq!(
            d.iter().find(|f| f.priority == 1).unwrap().packets,
            1,
            "unchanged flow kept its counters"
        );
    }
}

/// A stateful firewall in the style of Neutron's OVS driver, from rules text to frames.
#[cfg(test)]
mod firewall_tests {
    use super::*;
    use crate::flow::extract::flow_key;
    use crate::flow::parse::{parse_flows_file, DEFAULT_PRIORITY};
    use etherparse::PacketBuilder;

    const RULES: &str = "
        # Classify: reg5 = the port, reg6 = its conntrack zone.
        table=0,priority=100,in_port=1,ip,actions=load:0x1->NXM_NX_REG5[],load:0x9->NXM_NX_REG6[],resubmit(,1)
        table=0,priority=100,in_port=2,ip,actions=load:0x2->NXM_NX_REG5[],load:0x9->NXM_NX_REG6[],resubmit(,1)
        table=0,priority=0,actions=NORMAL
        table=1,priority=100,ip,ct_state=-trk,actions=ct(table=2,zone=NXM_NX_REG6[0..15])
        table=2,priority=100,ct_state=+trk+inv,ip,actions=drop
        table=2,priority=90,ct_state=+trk+est-inv,ip,actions=resubmit(,3)
        table=2,priority=90,ct_state=+trk+rel-inv,ip,actions=resubmit(,3)
        # Port 1 may open TCP to port 22 and any UDP; nothing else opens.
        table=2,priority=80,ct_state=+trk+new-inv,tcp,reg5=0x1,tp_dst=22,actions=ct(commit,zone=NXM_NX_REG6[0..15],exec(set_field:0x7->ct_mark)),resubmit(,3)
        table=2,priority=80,ct_state=+trk+new-inv,udp,reg5=0x1,actions=ct(commit,zone=NXM_NX_REG6[0..15]),resubmit(,3)
        table=2,priority=0,actions=drop
        table=3,priority=100,reg5=0x1,actions=output:2
        table=3,priority=100,reg5=0x2,actions=output:1
    ";

    fn pipeline() -> Pipeline {
        let p = Pipeline::new(MissPolicy::Normal);
        install(&p, RULES);
        p
    }

    /// A TCP segment between A (10.0.0.1:40000, port 1) and B (10.0.0.2, port 2).
    fn tcp(
        from_a: bool,
        a_port: u16,
        b_port: u16,
        seq: u32,
        ack: Option<u32>,
        syn: bool,
    ) -> Vec<u8> {
        tcp_data(from_a, a_port, b_port, seq, ack, syn, 0)
    }

    fn tcp_data(
        from_a: bool,
        a_port: u16,
        b_port: u16,
        seq: u32,
        ack: Option<u32>,
        syn: bool,
        len: usize,
    ) -> Vec<u8> {
        let (src, dst, sp, dp) = if from_a {
            ([10, 0, 0, 1], [10, 0, 0, 2], a_port, b_port)
        } else {
            ([10, 0, 0, 2], [10, 0, 0, 1], b_port, a_port)
        };
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .tcp(sp, dp, seq, 64240);
        if syn {
            b = b.syn();
        }
        if let Some(a) = ack {
            b = b.ack(a);
        }
        let mut out = Vec::new();
        b.write(&mut out, &vec![0x61; len]).expect("frame");
        out
    }

    /// The flows `learn` put in `table` (at the default priority).
    fn learned_in(p: &Pipeline, table: u8) -> Vec<FlowDump> {
        p.dump(&FlowFilter {
            table: Some(table),
            ..FlowFilter::default()
        })
        .into_iter()
        .filter(|f| f.priority == DEFAULT_PRIORITY)
        .collect()
    }

    fn send(p: &Pipeline, in_port: u16, frame: &[u8]) -> Vec<Target> {
        let key = flow_key(frame, in_port, None);
        let mut out = Vec::new();
        let mut thread = FlowThread::default();
        p.begin_batch(&mut thread);
        p.run_frame(
            &p.snapshot(),
            &key,
            Matched {
                bytes: &frame[..frame.len().min(crate::flow::rewrite::REWRITE_BYTES)],
                partial_csum_at: None,
            },
            frame.len() as u32,
            &mut out,
            &mut thread,
        );
        p.flush(&mut thread);
        out.iter().map(|o| o.target).collect()
    }

    #[test]
    fn replies_to_connections_a_port_opened_pass_and_nothing_else_comes_in() {
        let p = pipeline();
        let to_b = vec![Target::Port(2)];
        let to_a = vec![Target::Port(1)];
        // A opens TCP to B:22; the handshake and data flow both ways.
        assert_eq!(send(&p, 1, &tcp(true, 40000, 22, 100, None, true)), to_b);
        assert_eq!(
            send(&p, 2, &tcp(false, 40000, 22, 900, Some(101), true)),
            to_a
        );
        assert_eq!(
            send(&p, 1, &tcp(true, 40000, 22, 101, Some(901), false)),
            to_b
        );
        assert_eq!(
            send(&p, 2, &tcp(false, 40000, 22, 901, Some(101), false)),
            to_a
        );
        // B cannot open a connection to A, nor A to B's port 80.
        assert_eq!(send(&p, 2, &tcp(false, 40001, 22, 5, None, true)), vec![]);
        assert_eq!(send(&p, 1, &tcp(true, 40002, 80, 5, None, true)), vec![]);
        // Nor can B send into A's connection outside its window.
        assert_eq!(
            send(
                &p,
                2,
                &tcp_data(false, 40000, 22, 901 + 50_000_000, Some(101), false, 100)
            ),
            vec![]
        );
        let conns = p.conntrack().dump(None, p.now_ms());
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!((conns[0].zone, conns[0].dport, conns[0].mark), (9, 22, 7));
        assert_eq!(conns[0].state, "ESTABLISHED");

        // An ICMP port unreachable for A's UDP reaches A (related); one for a datagram A
        // never sent does not.
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 53)
            .write(&mut udp, b"q")
            .expect("frame");
        assert_eq!(send(&p, 1, &udp), to_b);
        let unreachable = |quoted: &[u8]| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
                .icmpv4_raw(3, 3, [0; 4])
                .write(&mut out, quoted)
                .expect("frame");
            out
        };
        assert_eq!(send(&p, 2, &unreachable(&udp[14..14 + 28])), to_a);
        let mut other = udp[14..14 + 28].to_vec();
        other[20] ^= 1; // another source port
        assert_eq!(send(&p, 2, &unreachable(&other)), vec![]);
        assert_eq!(p.conntrack().len(), 2);
    }

    /// `frames` from `in_port` in one batch: each one's targets, and how many were replayed.
    fn send_batch(p: &Pipeline, in_port: u16, frames: &[Vec<u8>]) -> (Vec<Vec<Target>>, u64) {
        let (outputs, hits) = run_batch(p, in_port, frames);
        let targets = outputs.iter().map(|o| o.iter().map(|o| o.target).collect());
        (targets.collect(), hits)
    }

    /// `frames` from `in_port` through the frame path's runs in one batch: each one's
    /// outputs, and how many were replayed.
    pub(super) fn run_batch(
        p: &Pipeline,
        in_port: u16,
        frames: &[Vec<u8>],
    ) -> (Vec<Vec<Output>>, u64) {
        let tables = p.snapshot();
        let mut thread = FlowThread::default();
        p.begin_batch(&mut thread);
        let mut all = Vec::new();
        for frame in frames {
            let prefix = &frame[..frame.len().min(crate::flow::rewrite::REWRITE_BYTES)];
            let mut out = Vec::new();
            p.run_frame(
                &tables,
                &flow_key(prefix, in_port, None),
                Matched {
                    bytes: prefix,
                    partial_csum_at: None,
                },
                frame.len() as u32,
                &mut out,
                &mut thread,
            );
            all.push(out);
        }
        p.flush(&mut thread);
        (all, thread.replay.hits)
    }

    #[test]
    fn a_segment_outside_the_window_is_dropped_inside_a_replayed_run() {
        let p = pipeline();
        let to_a = vec![Target::Port(1)];
        send(&p, 1, &tcp(true, 40000, 22, 100, None, true));
        send(&p, 2, &tcp(false, 40000, 22, 900, Some(101), true));
        send(&p, 1, &tcp(true, 40000, 22, 101, Some(901), false));
        // B's data in one batch, all with the same key: the run through `ct` is replayed,
        // but conntrack still sees each segment, and the one outside the window is invalid.
        let data = |seq| tcp_data(false, 40000, 22, seq, Some(101), false, 100);
        let (targets, replayed) = send_batch(
            &p,
            2,
            &[data(901), data(1001), data(901 + 50_000_000), data(1101)],
        );
        assert_eq!(targets, vec![to_a.clone(), to_a.clone(), vec![], to_a]);
        assert_eq!(
            replayed, 1,
            "only the second segment answers as the one before it"
        );
        assert_eq!(p.conntrack().counters.invalid.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_tracked_copy_does_not_change_the_packet_that_goes_on() {
        let p = Pipeline::new(MissPolicy::Normal);
        let rules = "
            table=0,priority=10,in_port=1,ip,actions=ct(table=1),load:0x7->NXM_NX_REG0[],output:3
            table=0,priority=10,in_port=2,ip,actions=resubmit(,5)
            table=5,ip,actions=ct(table=1)
            table=1,ct_state=+trk,actions=mod_dl_src:0e:00:00:00:00:09,load:0x5->NXM_NX_REG0[],resubmit(,2)
            table=2,reg0=0x5,actions=output:2
            table=2,reg0=0x7,actions=output:4
        ";
        install(&p, rules);
        let frame = tcp(true, 40000, 22, 100, None, true);
        let run = |in_port: u16| {
            let mut out = Vec::new();
            p.run(
                &p.snapshot(),
                &flow_key(&frame, in_port, None),
                HeaderBuf::new(&frame),
                frame.len() as u32,
                &mut out,
                None,
            );
            out
        };
        // Not in tail position: the tracked copy goes out of port 2 rewritten; the packet
        // itself, untracked and unchanged, goes on to output:3 (its reg0 is its own).
        let out = run(1);
        let targets: Vec<Target> = out.iter().map(|o| o.target).collect();
        assert_eq!(targets, vec![Target::Port(2), Target::Port(3)]);
        assert!(out[0].modified() && out[0].header_bytes(&frame)[6..12] == [0x0e, 0, 0, 0, 0, 9]);
        assert!(!out[1].modified() && out[1].header_bytes(&frame)[6..12] == frame[6..12]);
        // In tail position (ct the last action, reached by a last resubmit): the same.
        let out = run(2);
        assert_eq!(
            out.iter().map(|o| o.target).collect::<Vec<_>>(),
            vec![Target::Port(2)]
        );
        assert!(out[0].modified());
    }

    /// Installs `rules` (ovs-ofctl lines with numbered ports).
    pub(super) fn install(p: &Pipeline, rules: &str) {
        let flows: Vec<FlowMod> = parse_flows_file(rules)
            .expect("rules parse")
            .into_iter()
            .map(|spec| {
                let spec = spec.resolve(|_| None).expect("numbered ports");
                FlowMod::Add(Flow {
                    table: spec.table.unwrap_or(0),
                    priority: spec.priority,
                    m: spec.m,
                    actions: spec.actions.clone(),
                    cookie: 0,
                    idle_timeout: 0,
                    hard_timeout: 0,
                    match_text: spec.to_string(),
                    actions_text: String::new(),
                })
            })
            .collect();
        p.commit(&flows).expect("rules install");
    }

    fn tcp_from(src: [u8; 4], dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, [10, 0, 0, 9], 64)
            .tcp(40000, dport, 1, 1000)
            .syn()
            .write(&mut out, &[])
            .expect("frame");
        out
    }

    #[test]
    fn conjunctions_match_a_flow_of_every_dimension() {
        let p = Pipeline::new(MissPolicy::Normal);
        install(
            &p,
            "
            # Address set {10.0.0.1, 10.0.0.3} x port set {22, 80}.
            priority=10,ip,nw_src=10.0.0.1,actions=conjunction(7,1/2)
            priority=10,ip,nw_src=10.0.0.3,actions=conjunction(7,1/2),conjunction(8,1/2)
            priority=10,tcp,tp_dst=22,actions=conjunction(7,2/2)
            priority=10,tcp,tp_dst=80,actions=conjunction(7,2/2)
            priority=10,conj_id=7,ip,actions=output:2
            priority=20,tcp,nw_src=10.0.0.3,tp_dst=80,actions=output:9
            priority=5,ip,actions=drop
            ",
        );
        let out = |src: [u8; 4], dport: u16| {
            let first = send(&p, 1, &tcp_from(src, dport));
            // The second goes through the flow cache: the same answer.
            assert_eq!(send(&p, 1, &tcp_from(src, dport)), first, "{src:?}:{dport}");
            first
        };
        assert_eq!(out([10, 0, 0, 1], 22), vec![Target::Port(2)]);
        assert_eq!(out([10, 0, 0, 1], 80), vec![Target::Port(2)]);
        assert_eq!(out([10, 0, 0, 3], 22), vec![Target::Port(2)]);
        // A flow of higher priority wins over the conjunction.
        assert_eq!(out([10, 0, 0, 3], 80), vec![Target::Port(9)]);
        // One dimension only: the lower-priority flow.
        assert_eq!(out([10, 0, 0, 1], 443), vec![]);
        assert_eq!(out([10, 0, 0, 2], 22), vec![]);
        // Conjunction 8 has no second dimension: never matches.
        assert_eq!(p.dump(&FlowFilter::default()).len(), 7);

        // Conjunctive flows are flows like the others for del-flows and mod-flows.
        let spec = crate::flow::parse::parse_flow(
            "priority=10,tcp,tp_dst=80",
            crate::flow::parse::FlowSyntax::MatchOnly,
        )
        .unwrap();
        p.commit(&[FlowMod::Delete(FlowFilter {
            table: Some(0),
            m: spec.m,
            strict_priority: Some(10),
            ..FlowFilter::default()
        })])
        .unwrap();
        assert_eq!(p.dump(&FlowFilter::default()).len(), 6);
        assert_eq!(out([10, 0, 0, 1], 80), vec![]);
        assert_eq!(out([10, 0, 0, 1], 22), vec![Target::Port(2)]);
        // Made an ordinary flow by mod-flows: it matches by itself.
        let spec = crate::flow::parse::parse_flow(
            "priority=10,tcp,tp_dst=22",
            crate::flow::parse::FlowSyntax::MatchOnly,
        )
        .unwrap();
        p.commit(&[FlowMod::Modify {
            filter: FlowFilter {
                table: Some(0),
                m: spec.m,
                strict_priority: Some(10),
                ..FlowFilter::default()
            },
            actions: vec![Action::Output(PortRef::Number(5))],
            actions_text: "output:5".into(),
            new_cookie: None,
        }])
        .unwrap();
        assert_eq!(out([10, 0, 0, 2], 22), vec![Target::Port(5)]);
    }

    #[test]
    fn learn_adds_a_flow_per_source_once_and_it_forwards_the_replies() {
        let p = Pipeline::new(MissPolicy::Normal);
        install(
            &p,
            "
            table=0,actions=learn(table=10,idle_timeout=60,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15],output:NXM_OF_IN_PORT[]),resubmit(,10)
            table=10,priority=0,actions=FLOOD
            ",
        );
        let eth = |src: u8, dst: u8| {
            let mut f = vec![2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src, 0x88, 0xb5];
            f.resize(60, 0);
            f
        };
        // A (on port 1) to B: B unknown, flooded; A learned behind port 1.
        assert_eq!(send(&p, 1, &eth(0xa, 0xb)), vec![Target::Flood]);
        // B (on port 2) to A: the learned flow sends it to port 1 only.
        assert_eq!(send(&p, 2, &eth(0xb, 0xa)), vec![Target::Port(1)]);
        assert_eq!(send(&p, 1, &eth(0xa, 0xb)), vec![Target::Port(2)]);
        let learned = learned_in(&p, 10);
        assert_eq!(learned.len(), 2, "{learned:?}");
        assert!(learned
            .iter()
            .any(|f| f.match_text == "dl_dst=02:00:00:00:00:0a"
                && f.actions_text == "load:0x1->NXM_NX_REG0[0..15],output:1"
                && f.idle_timeout == 60));
        // More of the same traffic changes no table: the flows are known, only refreshed.
        let version = p.snapshot().version;
        for _ in 0..10 {
            send(&p, 1, &eth(0xa, 0xb));
            send(&p, 2, &eth(0xb, 0xa));
        }
        assert_eq!(p.snapshot().version, version);
        // A trace learns nothing.
        let mut out = Vec::new();
        let mut steps = Vec::new();
        let f = eth(0xc, 0xa);
        p.run_untracked(
            &p.snapshot(),
            &flow_key(&f, 3, None),
            HeaderBuf::new(&f),
            60,
            &mut out,
            &mut steps,
        );
        assert_eq!(p.snapshot().version, version);
    }

    /// A batch that learns while a control change holds the tables' writer does not wait for
    /// it: the flow is kept and goes in with the thread's next batch.
    #[test]
    fn learning_waits_for_no_control_change() {
        let p = Pipeline::new(MissPolicy::Normal);
        install(
            &p,
            "
            table=0,actions=learn(table=10,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),resubmit(,10)
            table=10,priority=0,actions=FLOOD
            ",
        );
        let frame = |src: u8| {
            let mut f = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, src, 0x88, 0xb5];
            f.resize(60, 0);
            f
        };
        let learned = |p: &Pipeline| p.snapshot().tables[10].len();
        let mut thread = FlowThread::default();
        let batch = |thread: &mut FlowThread, f: &[u8]| {
            let mut out = Vec::new();
            p.begin_batch(thread);
            p.run_frame(
                &p.snapshot(),
                &flow_key(f, 1, None),
                Matched {
                    bytes: f,
                    partial_csum_at: None,
                },
                f.len() as u32,
                &mut out,
                thread,
            );
            p.flush(thread);
        };
        let control = p.writer.lock().expect("the writer");
        batch(&mut thread, &frame(0xa));
        assert_eq!(learned(&p), 1, "nothing added while the writer is held");
        drop(control);
        batch(&mut thread, &frame(0xc));
        assert_eq!(
            learned(&p),
            3,
            "both learned flows added with the next batch"
        );
        assert_eq!(p.learn_refused.load(Ordering::Relaxed), 0);
    }

    /// A learned flow matching an IP field carries the prerequisite the learn names, so its
    /// text (as dump-flows and the state file keep it) is a flow the parser takes back; a
    /// learned output from a value wider than a port number outputs nowhere.
    #[test]
    fn learned_flows_read_back_and_never_cut_a_port() {
        let p = Pipeline::new(MissPolicy::Normal);
        install(
            &p,
            "
            table=0,ip,actions=learn(table=10,NXM_OF_ETH_TYPE[],NXM_OF_IP_SRC[],output:NXM_NX_REG0[]),load:0x10001->NXM_NX_REG0[],resubmit(,10)
            table=10,priority=0,actions=drop
            ",
        );
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 7], [10, 0, 0, 2], 64)
            .udp(4000, 53)
            .write(&mut f, b"p")
            .expect("frame");
        send(&p, 1, &f);
        let learned = learned_in(&p, 10);
        assert_eq!(learned.len(), 1, "{learned:?}");
        let l = &learned[0];
        assert!(l.match_text.contains("nw_src=10.0.0.7"), "{l:?}");
        // reg0 held 0 when the learn ran: a port; the rule loads 0x10001 after it.
        let text = format!(
            "table=10,priority={},{},actions={}",
            l.priority, l.match_text, l.actions_text
        );
        parse_flows_file(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        // Learned again from a packet whose reg0 is 0x10001: no output to port 1.
        install(
            &p,
            "
            table=0,ip,actions=load:0x10001->NXM_NX_REG0[],learn(table=11,NXM_OF_ETH_TYPE[],NXM_OF_IP_SRC[],output:NXM_NX_REG0[]),resubmit(,10)
            ",
        );
        send(&p, 1, &f);
        let wide = learned_in(&p, 11);
        assert_eq!(wide.len(), 1, "{wide:?}");
        assert!(!wide[0].actions_text.contains("output"), "{wide:?}");
    }

    #[test]
    fn a_second_ct_in_the_zone_reuses_the_lookup_only_while_the_header_is_the_same() {
        let p = Pipeline::new(MissPolicy::Normal);
        install(
            &p,
            "
            table=0,ip,actions=ct(table=1,zone=1)
            table=1,ip,ct_state=+new+trk,tcp,tp_dst=22,actions=ct(commit,zone=1),output:2
            table=1,ip,ct_state=+new+trk,tcp,tp_dst=80,actions=mod_nw_dst:10.0.0.99,ct(commit,zone=1),output:3
            ",
        );
        // Committed on the second ct (the first found no connection).
        assert_eq!(
            send(&p, 1, &tcp(true, 40000, 22, 100, None, true)),
            vec![Target::Port(2)]
        );
        assert_eq!(
            send(&p, 1, &tcp(true, 40000, 22, 100, None, true)),
            vec![Target::Port(2)]
        );
        // After a rewrite the commit tracks the packet as rewritten.
        assert_eq!(
            send(&p, 1, &tcp(true, 40001, 80, 100, None, true)),
            vec![Target::Port(3)]
        );
        let conns = p.conntrack().dump(Some(1), p.now_ms());
        let dsts: Vec<(String, u16)> = conns.iter().map(|c| (c.dst.to_string(), c.dport)).collect();
        assert_eq!(
            dsts,
            vec![("10.0.0.2".to_string(), 22), ("10.0.0.99".to_string(), 80)]
        );
    }

    #[test]
    fn trace_looks_at_connections_but_commits_nothing() {
        let p = pipeline();
        let frame = tcp(true, 40000, 22, 100, None, true);
        let mut out = Vec::new();
        let mut steps = Vec::new();
        p.run_untracked(
            &p.snapshot(),
            &flow_key(&frame, 1, None),
            HeaderBuf::new(&frame),
            frame.len() as u32,
            &mut out,
            &mut steps,
        );
        assert_eq!(
            out.iter().map(|o| o.target).collect::<Vec<_>>(),
            vec![Target::Port(2)]
        );
        assert!(p.conntrack().is_empty());
        let tables: Vec<u8> = steps.iter().map(|s| s.table).collect();
        assert_eq!(tables, [0, 1, 2, 3]);
    }
}

/// Replaying the last run for a frame with the same key (`Replay`).
#[cfg(test)]
mod replay_tests {
    use super::firewall_tests::{install, run_batch};
    use super::*;
    use crate::flow::extract::flow_key;
    use crate::flow::parse::parse_group;
    use crate::flow::rewrite::REWRITE_BYTES;
    use etherparse::PacketBuilder;

    fn pipeline(rules: &str) -> Pipeline {
        let p = Pipeline::new(MissPolicy::Normal);
        install(&p, rules);
        p
    }

    /// A UDP frame to port `dport` whose payload (inside the header window) is `payload`.
    fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(4000, dport)
            .write(&mut out, payload)
            .expect("frame");
        out
    }

    /// Each frame's outputs: target, and the header if rewritten.
    type Outputs = Vec<Vec<(Target, Option<Vec<u8>>)>>;

    /// One batch of `frames` from port 1: each frame's outputs and how many were replayed.
    fn batch(p: &Pipeline, frames: &[Vec<u8>]) -> (Outputs, u64) {
        let (outputs, hits) = run_batch(p, 1, frames);
        let leaving = |o: &Output| (o.target, o.header.map(|h| h.bytes().to_vec()));
        let outputs = outputs.iter().map(|o| o.iter().map(leaving).collect());
        (outputs.collect(), hits)
    }

    fn counters(p: &Pipeline) -> Vec<(u64, u64)> {
        let mut c: Vec<(u64, u64)> = (0..3)
            .map(|t| {
                let s = p.table_stats(t);
                (
                    s.lookups.load(Ordering::Relaxed),
                    s.matches.load(Ordering::Relaxed),
                )
            })
            .collect();
        c.extend(
            p.dump(&FlowFilter::default())
                .iter()
                .map(|f| (f.packets, f.bytes)),
        );
        c
    }

    const TWO_TABLES: &str = "
        table=0,priority=10,udp,actions=load:0x7->NXM_NX_REG0[],resubmit(,1)
        table=1,priority=10,udp,reg0=7,tp_dst=53,actions=output:2,output:3
        table=1,priority=5,udp,tp_dst=54,actions=drop
        table=1,priority=0,actions=NORMAL
    ";

    #[test]
    fn frames_with_the_last_key_get_its_outputs_and_are_counted_as_if_run() {
        let frames = [udp(53, b"first"), udp(53, b"second, longer"), udp(53, b"x")];
        let replaying = pipeline(TWO_TABLES);
        let (outputs, hits) = batch(&replaying, &frames);
        assert_eq!(hits, 2, "the second and third frame replay the first's run");
        let expected = vec![(Target::Port(2), None), (Target::Port(3), None)];
        assert!(outputs.iter().all(|o| *o == expected), "{outputs:?}");
        // The same frames each in a batch of its own (nothing to replay) count the same.
        let running = pipeline(TWO_TABLES);
        for frame in &frames {
            assert_eq!(batch(&running, std::slice::from_ref(frame)).1, 0);
        }
        assert_eq!(counters(&replaying), counters(&running));
        assert_eq!(counters(&replaying)[0], (3, 3));
    }

    #[test]
    fn another_key_a_new_batch_or_new_tables_run_the_tables_again() {
        let p = pipeline(TWO_TABLES);
        let (outputs, hits) = batch(&p, &[udp(53, b"a"), udp(54, b"a"), udp(53, b"a")]);
        assert_eq!(hits, 0, "each frame's key differs from the one before");
        assert_eq!(outputs[1], vec![]);
        assert_eq!(batch(&p, &[udp(53, b"a")]).1, 0, "a batch starts afresh");
        // A run recorded in one version is not replayed in the next.
        let tables = p.snapshot();
        let mut thread = FlowThread::default();
        p.begin_batch(&mut thread);
        let frame = udp(53, b"a");
        let key = flow_key(&frame, 1, None);
        let mut out = Vec::new();
        let header = Matched {
            bytes: &frame,
            partial_csum_at: None,
        };
        p.run_frame(&tables, &key, header, 50, &mut out, &mut thread);
        install(&p, "table=1,priority=20,udp,tp_dst=53,actions=output:4");
        out.clear();
        p.run_frame(&p.snapshot(), &key, header, 50, &mut out, &mut thread);
        assert_eq!(thread.replay.hits, 0);
        assert_eq!(out[0].target, Target::Port(4));
    }

    const FIREWALL: &str = "
        table=0,priority=10,ip,ct_state=-trk,actions=ct(table=1,zone=1)
        table=1,priority=10,ct_state=+trk+new-inv,ip,actions=ct(commit,zone=1),output:2
        table=1,priority=10,ct_state=+trk+est-inv,ip,actions=output:3
        table=1,priority=0,actions=drop
    ";

    /// The reply to `udp(53, ..)`.
    fn reply(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(53, 4000)
            .write(&mut out, payload)
            .expect("frame");
        out
    }

    #[test]
    fn a_run_through_ct_is_replayed_while_conntrack_answers_the_same() {
        let replaying = pipeline(FIREWALL);
        let (outputs, hits) = batch(&replaying, &[udp(53, b"q")]);
        assert_eq!(
            (outputs[0].clone(), hits),
            (vec![(Target::Port(2), None)], 0)
        );
        let replies = [reply(b"1"), reply(b"22"), reply(b"333")];
        let (outputs, hits) = batch(&replaying, &replies);
        assert_eq!(
            hits, 2,
            "the established replies after the first replay its run"
        );
        assert!(outputs.iter().all(|o| *o == vec![(Target::Port(3), None)]));
        // Counted as the same frames run one batch each.
        let running = pipeline(FIREWALL);
        batch(&running, &[udp(53, b"q")]);
        for frame in &replies {
            assert_eq!(batch(&running, std::slice::from_ref(frame)).1, 0);
        }
        assert_eq!(counters(&replaying), counters(&running));
    }

    #[test]
    fn a_replay_asks_conntrack_again_for_each_frame() {
        let p = pipeline(FIREWALL);
        batch(&p, &[udp(53, b"q")]);
        let tables = p.snapshot();
        let mut thread = FlowThread::default();
        p.begin_batch(&mut thread);
        let frame = reply(b"r");
        let key = flow_key(&frame, 2, None);
        let matched = Matched {
            bytes: &frame,
            partial_csum_at: None,
        };
        let mut out = Vec::new();
        p.run_frame(&tables, &key, matched, 50, &mut out, &mut thread);
        assert_eq!(out[0].target, Target::Port(3));
        // The connection goes between two frames of a batch with one key: the second is a
        // new connection (B's), committed once, not a replay of the first's run.
        p.conntrack().flush(None);
        out.clear();
        p.run_frame(&tables, &key, matched, 50, &mut out, &mut thread);
        p.flush(&mut thread);
        assert_eq!(thread.replay.hits, 0);
        assert_eq!(
            out.iter().map(|o| o.target).collect::<Vec<_>>(),
            vec![Target::Port(2)]
        );
        assert_eq!(p.conntrack().len(), 1);
        assert_eq!(p.conntrack().counters.committed.load(Ordering::Relaxed), 2);
    }

    /// A UDP frame from `src` (port 4000) to 10.0.0.2 port `dport`.
    fn udp_from(src: [u8; 4], dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, [10, 0, 0, 2], 64)
            .udp(4000, dport)
            .write(&mut out, b"p")
            .expect("frame");
        out
    }

    /// Outputs of each frame, and replays, as `batch`; and the same frames' counters when
    /// each runs in a batch of its own on the same rules (with `setup` first) match.
    fn batch_counted_as_run(
        rules: &str,
        setup: &[Vec<u8>],
        frames: &[Vec<u8>],
    ) -> (Vec<Vec<Target>>, u64) {
        let replaying = pipeline(rules);
        let running = pipeline(rules);
        for frame in setup {
            batch(&replaying, std::slice::from_ref(frame));
            batch(&running, std::slice::from_ref(frame));
        }
        let (outputs, hits) = batch(&replaying, frames);
        for frame in frames {
            batch(&running, std::slice::from_ref(frame));
        }
        assert_eq!(counters(&replaying), counters(&running), "{rules}");
        assert_eq!(
            replaying.conntrack().len(),
            running.conntrack().len(),
            "{rules}"
        );
        let targets = outputs.iter().map(|o| o.iter().map(|o| o.0).collect());
        (targets.collect(), hits)
    }

    #[test]
    fn frames_that_differ_only_where_no_table_looks_replay_the_run() {
        let rules = "
            table=0,priority=10,udp,actions=resubmit(,1)
            table=1,priority=10,udp,tp_dst=53,actions=output:2
            table=1,priority=0,actions=output:3
        ";
        let frames = [
            udp_from([10, 0, 0, 1], 53),
            udp_from([10, 0, 0, 7], 53),
            udp_from([10, 9, 9, 9], 53),
            udp_from([10, 0, 0, 1], 54),
        ];
        let (outputs, hits) = batch_counted_as_run(rules, &[], &frames);
        assert_eq!(
            hits, 2,
            "the other sources replay the first's run; port 54 runs"
        );
        let p2 = vec![Target::Port(2)];
        assert_eq!(
            outputs,
            vec![p2.clone(), p2.clone(), p2, vec![Target::Port(3)]]
        );
    }

    #[test]
    fn a_run_whose_actions_read_the_key_needs_all_of_it_the_same() {
        // `move` copies the source address where table 1 looks: both frames have reg0 0
        // when they arrive, but not when table 1 sees them.
        let rules = "
            table=0,priority=10,ip,actions=move:NXM_OF_IP_SRC[]->NXM_NX_REG0[],resubmit(,1)
            table=1,priority=10,reg0=0x0a000001,actions=output:2
            table=1,priority=0,actions=output:3
        ";
        let frames = [udp_from([10, 0, 0, 1], 53), udp_from([10, 0, 0, 2], 53)];
        let (outputs, hits) = batch_counted_as_run(rules, &[], &frames);
        assert_eq!(hits, 0);
        assert_eq!(outputs, vec![vec![Target::Port(2)], vec![Target::Port(3)]]);
    }

    #[test]
    fn a_load_of_part_of_a_field_needs_the_rest_of_it_the_same() {
        // Frames from two VNIs in one batch of the tunnel port: the load keeps each one's
        // upper bits.
        let p = pipeline("priority=10,ip,actions=load:0x5->NXM_NX_TUN_ID[0..7],output:3");
        let tables = p.snapshot();
        let mut thread = FlowThread::default();
        p.begin_batch(&mut thread);
        let frame = udp_from([10, 0, 0, 1], 53);
        let mut tun_ids = Vec::new();
        for vni in [0x100, 0x200, 0x200] {
            let tunnel = crate::frame::TunnelMeta {
                vni,
                vlan: 0,
                remote: [192, 0, 2, 1].into(),
                local: [192, 0, 2, 2].into(),
            };
            let key = flow_key(&frame, 9, Some(&tunnel));
            let matched = Matched {
                bytes: &frame,
                partial_csum_at: None,
            };
            let mut out = Vec::new();
            p.run_frame(&tables, &key, matched, 50, &mut out, &mut thread);
            tun_ids.extend(out.iter().map(|o| o.tun_id));
        }
        assert_eq!(tun_ids, vec![Some(0x105), Some(0x205), Some(0x205)]);
        assert_eq!(
            thread.replay.hits, 1,
            "only the second frame of VNI 0x200 replays"
        );
    }

    #[test]
    fn a_run_that_reads_the_header_to_rewrite_it_is_the_frames_alone() {
        // The second frame's TTL ends its run at dec_ttl: table 1 never sees it.
        let rules = "
            table=0,priority=10,ip,actions=dec_ttl,resubmit(,1)
            table=1,priority=0,actions=drop
        ";
        let mut expiring = udp_from([10, 0, 0, 1], 53);
        expiring[22] = 1;
        let frames = [udp_from([10, 0, 0, 1], 53), expiring];
        let (_, hits) = batch_counted_as_run(rules, &[], &frames);
        assert_eq!(hits, 0);
    }

    #[test]
    fn a_firewall_replays_one_run_for_many_connections_and_commits_each_new_one() {
        let conns: Vec<Vec<u8>> = (1..=3).map(|i| udp_from([10, 0, 1, i], 53)).collect();
        // New connections: each commits (stores), so none is replayed.
        let (outputs, hits) = batch_counted_as_run(FIREWALL, &[], &conns);
        assert_eq!(hits, 0);
        assert!(outputs.iter().all(|o| *o == vec![Target::Port(2)]));
        // Stored, still unreplied (+new): their commits store nothing; one run serves all.
        let (outputs, hits) = batch_counted_as_run(FIREWALL, &conns, &conns);
        assert_eq!(hits, 2);
        assert!(outputs.iter().all(|o| *o == vec![Target::Port(2)]));
        // A new connection after stored ones: its lookup answers "not stored", so it runs
        // the tables and is committed; the stored one after it runs again too.
        let fresh = udp_from([10, 0, 1, 9], 53);
        let frames = [conns[0].clone(), fresh, conns[1].clone(), conns[2].clone()];
        let (_, hits) = batch_counted_as_run(FIREWALL, &conns, &frames);
        assert_eq!(hits, 1, "only the last frame replays the one before it");
        let p = pipeline(FIREWALL);
        batch(&p, &conns);
        batch(&p, &frames);
        assert_eq!(p.conntrack().len(), 4);
        assert_eq!(p.conntrack().counters.committed.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn connections_differ_for_a_replay_where_a_table_reads_their_addresses() {
        let rules = "
            table=0,priority=10,ip,ct_state=-trk,actions=ct(table=1,zone=1)
            table=1,priority=20,ct_state=+trk,ct_nw_src=10.0.0.1,ip,actions=output:2
            table=1,priority=10,ct_state=+trk,ip,actions=output:3
        ";
        let frames = [udp_from([10, 0, 0, 1], 53), udp_from([10, 0, 0, 2], 53)];
        let (outputs, hits) = batch_counted_as_run(rules, &[], &frames);
        assert_eq!(hits, 0);
        assert_eq!(outputs, vec![vec![Target::Port(2)], vec![Target::Port(3)]]);
        // Matching on ct_state alone, the second connection replays the first's run.
        let rules = "
            table=0,priority=10,ip,ct_state=-trk,actions=ct(table=1,zone=1)
            table=1,priority=10,ct_state=+trk,ip,actions=output:3
        ";
        let (outputs, hits) = batch_counted_as_run(rules, &[], &frames);
        assert_eq!(hits, 1);
        assert_eq!(outputs, vec![vec![Target::Port(3)], vec![Target::Port(3)]]);
    }

    #[test]
    fn runs_that_rewrite_or_keep_state_are_not_replayed() {
        // A rewrite: each frame leaves with its own bytes, rewritten.
        let p = pipeline("priority=10,udp,actions=mod_dl_dst:0e:00:00:00:00:09,output:2");
        let frames = [udp(53, b"first payload"), udp(53, b"other payload")];
        let (outputs, hits) = batch(&p, &frames);
        assert_eq!(hits, 0);
        for (frame, out) in frames.iter().zip(&outputs) {
            let header = out[0].1.as_ref().expect("rewritten");
            assert_eq!(header[0..6], [0x0e, 0, 0, 0, 0, 9]);
            assert_eq!(header[6..], frame[6..frame.len().min(REWRITE_BYTES)]);
        }
        // Actions that read or change state outside the packet, or count per packet.
        for rules in [
            "priority=10,udp,actions=ct(commit,zone=1),output:2",
            "priority=10,udp,actions=learn(table=1,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:2",
            "priority=10,udp,actions=group:1",
        ] {
            let p = Pipeline::new(MissPolicy::Normal);
            let group = parse_group("group_id=1,type=all,bucket=output:2").expect("group");
            p.commit(&[FlowMod::AddGroup(group)]).expect("group installs");
            install(&p, rules);
            let (outputs, hits) = batch(&p, &[udp(53, b"a"), udp(53, b"a")]);
            assert_eq!(hits, 0, "{rules}");
            assert_eq!(outputs[0], outputs[1], "{rules}");
            if rules.contains("group") {
                let g = &p.snapshot().groups[&1];
                assert_eq!(g.stats.packets.load(Ordering::Relaxed), 2);
            }
        }
    }

    /// `flowctl trace` changes nothing it passes: no meter tokens taken (a one-packet meter
    /// still admits the next real packet), no table, flow, group or meter counts.
    #[test]
    fn a_trace_takes_no_tokens_and_counts_nothing() {
        let p = Pipeline::new(MissPolicy::Normal);
        let meter = crate::flow::parse::parse_meter(
            "meter=1,pktps,burst,bands=type=drop,rate=1,burst_size=1",
        )
        .expect("meter");
        let group = parse_group("group_id=1,type=all,bucket=output:2").expect("group");
        p.commit(&[FlowMod::AddMeter(meter), FlowMod::AddGroup(group)])
            .expect("meter and group install");
        install(&p, "priority=10,udp,actions=meter:1,group:1");
        let f = udp(53, b"a");
        let snapshot = || {
            let t = p.snapshot();
            let flow = t.lookup(0, &flow_key(&f, 1, None)).expect("the flow");
            let m = &t.meters[&1].stats;
            (
                counters(&p),
                flow.stats.packets.load(Ordering::Relaxed),
                flow.stats.used_ms.load(Ordering::Relaxed),
                t.groups[&1].stats.packets.load(Ordering::Relaxed),
                m.packets.load(Ordering::Relaxed),
            )
        };
        let before = snapshot();
        for _ in 0..3 {
            let (mut out, mut steps) = (Vec::new(), Vec::new());
            let halt = p.run_untracked(
                &p.snapshot(),
                &flow_key(&f, 1, None),
                HeaderBuf::new(&f),
                f.len() as u32,
                &mut out,
                &mut steps,
            );
            assert_eq!(halt, None, "the trace passes the meter: {steps:?}");
            assert_eq!(out.len(), 1, "{out:?}");
        }
        assert_eq!(snapshot(), before, "traces counted or took tokens");
        let (outputs, _) = batch(&p, std::slice::from_ref(&f));
        assert_eq!(outputs[0].len(), 1, "the real packet still finds its token");
    }
}
