//! Tuple-space-search classifier for one flow table, and a per-thread exact-match cache.
//!
//! [`Classifier`] keeps one *subtable* per distinct mask. A subtable is a hash map from
//! `key & mask` to the rules with that masked value (all of which match exactly the same
//! packets), ordered best first. A lookup masks the packet key once per subtable and does one
//! hash probe; subtables are visited in decreasing order of the highest priority they hold,
//! and the search stops as soon as no remaining subtable can beat the best rule found
//! (priority pruning). Lookups do not allocate. Real tables have few distinct masks, so a
//! lookup costs a handful of probes whatever the number of rules.
//!
//! Ties: among matching rules of equal priority the one inserted earliest wins (the lowest
//! [`RuleId`]; ids are handed out in increasing order and a replacing insert keeps its id).
//!
//! The classifier is meant to be immutable while the dataplane reads it: a change builds a
//! new version (`clone` + `insert`/`remove`) that is swapped in.
//!
//! [`ExactMatchCache`] is a small 2-way set-associative cache from a whole [`FlowKey`] (plus
//! a version number of the pipeline) to the result of a full pipeline lookup, meant to be put
//! in front of it, one per thread.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use ahash::{AHashMap, RandomState};

use super::key::{FlowKey, Match, WordSet, KEY_WORDS};
use crate::prehash::{folded_multiply, PreHashed};

/// Identifies a rule in its [`Classifier`]. Increasing in insertion order.
pub type RuleId = u64;

/// Secret per-table keys of [`hash_words`] (random, from ahash's `RandomState`, so that packets
/// cannot be crafted to collide).
#[derive(Clone, Copy)]
struct Seeds([u64; KEY_WORDS + 3]);

impl Seeds {
    fn random() -> Seeds {
        let s = RandomState::new();
        Seeds(std::array::from_fn(|i| s.hash_one(i as u64) | 1))
    }
}

/// A 64-bit hash of the words of `k` in `words`: independent multiplies of word pairs
/// (a short dependency chain: this runs once per subtable per packet), then one to mix.
#[inline(always)]
fn hash_words(k: &FlowKey, words: WordSet, seeds: &Seeds) -> u64 {
    let (w, s) = (&k.0, &seeds.0);
    let mut bits = words.0;
    let mut acc = 0u64;
    let mut j = 0;
    while bits != 0 {
        let a = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let b = if bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            w[b]
        } else {
            0
        };
        acc ^= folded_multiply(w[a] ^ s[j], b ^ s[j + 1]);
        j += 2;
    }
    folded_multiply(acc ^ s[KEY_WORDS + 1], s[KEY_WORDS + 2])
}

/// A key with its hash computed once, for the hash maps (which then hash only that word).
#[derive(Clone, Copy)]
struct HKey {
    hash: u64,
    key: FlowKey,
}

impl PartialEq for HKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl Eq for HKey {}

impl Hash for HKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

type PreHashedMap<V> = HashMap<HKey, V, BuildHasherDefault<PreHashed>>;

#[derive(Clone)]
struct Entry<T> {
    id: RuleId,
    /// Where the rule is in [`Classifier`]'s `rules`.
    slot: u32,
    priority: u16,
    payload: T,
}

impl<T> Entry<T> {
    /// Whether `self` wins over a rule of priority `priority` and id `id`.
    #[inline]
    fn beats(&self, priority: u16, id: RuleId) -> bool {
        self.priority > priority || (self.priority == priority && self.id < id)
    }
}

/// The rules of one subtable with the same masked value. They all match exactly the same
/// packets, so a bucket holds at most one rule per priority (an identical match and priority
/// replaces). The best (highest priority) is kept inline so that a lookup touches one hash
/// slot; the others are in a map by priority, so that a bucket of many priorities changes in
/// O(log n), not O(n).
#[derive(Clone)]
struct Bucket<T> {
    best: Entry<T>,
    rest: BTreeMap<u16, Entry<T>>,
}

impl<T> Bucket<T> {
    fn new(best: Entry<T>) -> Self {
        Bucket {
            best,
            rest: BTreeMap::new(),
        }
    }

    fn by_priority(&self, priority: u16) -> Option<&Entry<T>> {
        if self.best.priority == priority {
            return Some(&self.best);
        }
        self.rest.get(&priority)
    }

    fn by_priority_mut(&mut self, priority: u16) -> Option<&mut Entry<T>> {
        if self.best.priority == priority {
            return Some(&mut self.best);
        }
        self.rest.get_mut(&priority)
    }

    /// Adds a rule of a priority the bucket does not hold yet.
    fn add(&mut self, entry: Entry<T>) {
        if entry.priority > self.best.priority {
            let old = std::mem::replace(&mut self.best, entry);
            self.rest.insert(old.priority, old);
        } else {
            self.rest.insert(entry.priority, entry);
        }
    }

    /// Removes the rule of `priority` from a bucket of at least two rules (a bucket of one
    /// is removed whole by its owner).
    fn take(&mut self, priority: u16) -> Option<Entry<T>> {
        if self.best.priority != priority {
            return self.rest.remove(&priority);
        }
        let (_, next) = self.rest.pop_last()?;
        Some(std::mem::replace(&mut self.best, next))
    }
}

/// All rules with one mask.
#[derive(Clone)]
struct Subtable<T> {
    mask: FlowKey,
    /// The words `mask` uses: the only ones a lookup here masks and hashes.
    words: WordSet,
    /// The highest priority of the rules here (the pruning bound).
    max_priority: u16,
    buckets: PreHashedMap<Bucket<T>>,
    /// How many rules have each priority, to keep `max_priority` up to date on removal.
    priorities: BTreeMap<u16, u32>,
}

impl<T> Subtable<T> {
    fn new(mask: FlowKey) -> Self {
        Subtable {
            mask,
            words: WordSet::of(&mask),
            max_priority: 0,
            buckets: Default::default(),
            priorities: BTreeMap::new(),
        }
    }
}

/// The rules of one flow table: (match, priority) -> payload. The highest-priority matching
/// rule wins; among matching rules of equal priority, the one inserted earliest (lowest
/// [`RuleId`]) wins. See the module documentation for the algorithm.
#[derive(Clone)]
pub struct Classifier<T> {
    /// Sorted by `max_priority` descending (the lookup order), unless `order_stale`.
    subtables: Vec<Subtable<T>>,
    /// Mask -> index into `subtables` (always up to date).
    by_mask: AHashMap<HKey, usize>,
    /// Every rule's id, match, priority and payload, by slot: the frame path's exact-match
    /// cache stores a rule's slot, and a hit is one index (a map from id to rule cost a
    /// hash probe per table per packet, measured at a quarter of a cached lookup).
    rules: Vec<Option<(RuleId, Match, u16, T)>>,
    /// Free slots of `rules`.
    free: Vec<u32>,
    /// Rule id -> slot, for changes.
    slot_of: AHashMap<RuleId, u32>,
    next_id: RuleId,
    seeds: Seeds,
    /// The union of the subtables' words (up to date once the order is).
    words: WordSet,
    /// Set by the `*_unordered` changes: `subtables` is not in lookup order until
    /// [`Classifier::restore_order`].
    order_stale: bool,
}

impl<T: Clone> Default for Classifier<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Classifier<T> {
    pub fn new() -> Self {
        Classifier {
            subtables: Vec::new(),
            by_mask: AHashMap::default(),
            rules: Vec::new(),
            free: Vec::new(),
            slot_of: AHashMap::default(),
            next_id: 1,
            seeds: Seeds::random(),
            words: WordSet::default(),
            order_stale: false,
        }
    }

    /// `key` hashed over `words` (which must hold every non-zero word of it).
    #[inline(always)]
    fn hkey(&self, key: FlowKey, words: WordSet) -> HKey {
        HKey {
            hash: hash_words(&key, words, &self.seeds),
            key,
        }
    }

    /// The words any rule's mask uses: two keys equal in these get the same lookup result.
    pub fn words(&self) -> WordSet {
        self.words
    }

    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// How many distinct masks the rules use (the number of hash probes of a lookup that
    /// cannot stop early).
    pub fn n_subtables(&self) -> usize {
        self.subtables.len()
    }

    /// Adds a rule. A rule with an identical match and priority has its payload replaced
    /// (OpenFlow "add" semantics) and keeps its id (so also its rank among equal-priority
    /// rules), which is returned.
    pub fn insert(&mut self, m: Match, priority: u16, payload: T) -> RuleId {
        let id = self.insert_unordered(m, priority, payload);
        self.restore_order();
        id
    }

    /// Removes a rule, returning its match, priority and payload.
    pub fn remove(&mut self, id: RuleId) -> Option<(Match, u16, T)> {
        let removed = self.remove_unordered(id);
        self.restore_order();
        removed
    }

    /// [`Classifier::insert`] without restoring the lookup order, for a batch of changes:
    /// restoring it costs O(subtables log subtables), so doing it once per batch instead of
    /// once per rule keeps a batch of n rules over many masks from costing O(n²). Everything
    /// but [`Classifier::lookup`] works before [`Classifier::restore_order`] is called.
    pub fn insert_unordered(&mut self, m: Match, priority: u16, payload: T) -> RuleId {
        // Normalize: the value is documented as pre-masked; make sure of it so that lookups
        // (which compare masked keys) and `find_exact` agree.
        let m = Match {
            value: m.value.masked(&m.mask),
            mask: m.mask,
        };
        let words = WordSet::of(&m.mask);
        let mask = self.hkey(m.mask, WordSet::ALL);
        let value = self.hkey(m.value, words);
        self.words = self.words.union(words);
        let idx = match self.by_mask.get(&mask) {
            Some(&i) => i,
            None => {
                self.subtables.push(Subtable::new(m.mask));
                let i = self.subtables.len() - 1;
                self.by_mask.insert(mask, i);
                i
            }
        };
        let st = &mut self.subtables[idx];
        if let Some(bucket) = st.buckets.get_mut(&value) {
            if let Some(e) = bucket.by_priority_mut(priority) {
                if let Some(Some(rule)) = self.rules.get_mut(e.slot as usize) {
                    rule.3 = payload.clone();
                }
                e.payload = payload;
                return e.id;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let rule = Some((id, m, priority, payload.clone()));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.rules[slot as usize] = rule;
                slot
            }
            None => {
                self.rules.push(rule);
                (self.rules.len() - 1) as u32
            }
        };
        self.slot_of.insert(id, slot);
        let entry = Entry {
            id,
            slot,
            priority,
            payload,
        };
        match st.buckets.get_mut(&value) {
            None => {
                st.buckets.insert(value, Bucket::new(entry));
            }
            Some(bucket) => bucket.add(entry),
        }
        *st.priorities.entry(priority).or_insert(0) += 1;
        self.order_stale = true;
        id
    }

    /// [`Classifier::remove`] without restoring the lookup order (see
    /// [`Classifier::insert_unordered`]).
    pub fn remove_unordered(&mut self, id: RuleId) -> Option<(Match, u16, T)> {
        let slot = self.slot_of.remove(&id)?;
        let (_, m, priority, _) = self.rules.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        let mask = self.hkey(m.mask, WordSet::ALL);
        let idx = self.by_mask[&mask];
        let value = self.hkey(m.value, WordSet::of(&m.mask));
        let st = &mut self.subtables[idx];
        let bucket = st.buckets.get_mut(&value).expect("rule index out of sync");
        let entry = if bucket.rest.is_empty() {
            st.buckets
                .remove(&value)
                .expect("rule index out of sync")
                .best
        } else {
            bucket.take(priority).expect("rule index out of sync")
        };
        debug_assert_eq!(entry.id, id, "rule index out of sync");
        let count = st.priorities.get_mut(&priority).expect("priority count");
        *count -= 1;
        if *count == 0 {
            st.priorities.remove(&priority);
        }
        if st.buckets.is_empty() {
            self.by_mask.remove(&mask);
            self.subtables.swap_remove(idx);
            if let Some(moved) = self.subtables.get(idx) {
                let moved = self.hkey(moved.mask, WordSet::ALL);
                self.by_mask.insert(moved, idx);
            }
        }
        self.order_stale = true;
        Some((m, priority, entry.payload))
    }

    /// Restores the lookup order after `*_unordered` changes: recomputes each subtable's
    /// bound, sorts, and rebuilds the mask index. O(subtables log subtables); nothing to do
    /// if nothing changed.
    pub fn restore_order(&mut self) {
        if !self.order_stale {
            return;
        }
        self.words = WordSet::default();
        for st in &mut self.subtables {
            st.max_priority = st.priorities.keys().next_back().copied().unwrap_or(0);
            self.words = self.words.union(st.words);
        }
        // Stable and keyed on the mask too, so the order does not depend on history.
        self.subtables.sort_by(|a, b| {
            b.max_priority
                .cmp(&a.max_priority)
                .then(a.mask.cmp(&b.mask))
        });
        self.by_mask.clear();
        for i in 0..self.subtables.len() {
            let mask = self.hkey(self.subtables[i].mask, WordSet::ALL);
            self.by_mask.insert(mask, i);
        }
        self.order_stale = false;
    }

    pub fn get(&self, id: RuleId) -> Option<(&Match, u16, &T)> {
        let slot = *self.slot_of.get(&id)?;
        let (_, m, priority, payload) = self.rules.get(slot as usize)?.as_ref()?;
        Some((m, *priority, payload))
    }

    /// The payload of the rule in `slot` (from [`Classifier::lookup_slot`]; slots are reused
    /// after removals, so only with the classifier version that gave it).
    #[inline]
    pub fn get_slot(&self, slot: u32) -> Option<&T> {
        self.rules.get(slot as usize)?.as_ref().map(|r| &r.3)
    }

    /// The rule with exactly this match and priority (strict mod-flows/del-flows).
    pub fn find_exact(&self, m: &Match, priority: u16) -> Option<RuleId> {
        let st = &self.subtables[*self.by_mask.get(&self.hkey(m.mask, WordSet::ALL))?];
        let bucket = st
            .buckets
            .get(&self.hkey(m.value.masked_in(&m.mask, st.words), st.words))?;
        bucket.by_priority(priority).map(|e| e.id)
    }

    /// The best rule matching `key`: highest priority, then earliest inserted.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<(RuleId, &T)> {
        self.lookup_slot(key).map(|(id, _, payload)| (id, payload))
    }

    /// [`Classifier::lookup`], with the rule's slot.
    #[inline]
    pub fn lookup_slot(&self, key: &FlowKey) -> Option<(RuleId, u32, &T)> {
        debug_assert!(!self.order_stale, "lookup before restore_order");
        let mut best: Option<&Entry<T>> = None;
        for st in &self.subtables {
            if let Some(b) = best {
                // Subtables are sorted by their bound: nothing further can win.
                if st.max_priority < b.priority {
                    break;
                }
            }
            let masked = key.masked_in(&st.mask, st.words);
            if let Some(bucket) = st.buckets.get(&self.hkey(masked, st.words)) {
                let e = &bucket.best;
                if best.is_none_or(|b| e.beats(b.priority, b.id)) {
                    best = Some(e);
                }
            }
        }
        best.map(|e| (e.id, e.slot, &e.payload))
    }

    /// Every rule, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (RuleId, &Match, u16, &T)> {
        self.rules
            .iter()
            .flatten()
            .map(|(id, m, prio, payload)| (*id, m, *prio, payload))
    }
}

/// Words of a key an [`ExactMatchCache`] entry holds: a table whose masks use more words
/// than this is looked up without the cache.
pub const CACHE_WORDS: usize = 12;

/// What an [`ExactMatchCache`] is keyed on: the words of a packet key that a table's
/// masks use (gathered, in order; the rest 0), their number and a tag (the table), so
/// entries stay small whatever the size of [`FlowKey`], and hashing costs what the table
/// matches on.
#[derive(Clone, Copy, Debug)]
pub struct CacheKey {
    tag: u32,
    n: u32,
    words: [u64; CACHE_WORDS],
}

impl PartialEq for CacheKey {
    /// Word by word without a branch or a call (the unused words are 0 in both).
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .words
            .iter()
            .zip(&other.words)
            .fold(0u64, |acc, (a, b)| acc | (a ^ b));
        diff == 0 && self.tag == other.tag && self.n == other.n
    }
}

impl Eq for CacheKey {}

impl CacheKey {
    /// `key`'s words in `set`, tagged; `None` when `set` has more than [`CACHE_WORDS`].
    #[inline]
    pub fn gather(tag: u32, key: &FlowKey, set: WordSet) -> Option<CacheKey> {
        let n = set.len();
        if n > CACHE_WORDS {
            return None;
        }
        let mut words = [0u64; CACHE_WORDS];
        for (slot, i) in words.iter_mut().zip(set.iter()) {
            *slot = key.0[i];
        }
        Some(CacheKey {
            tag,
            n: n as u32,
            words,
        })
    }

    /// Pairs of the used words multiplied independently (short dependency chains).
    #[inline(always)]
    fn hash(&self, seeds: &Seeds) -> u64 {
        let (w, s) = (&self.words, &seeds.0);
        let mut acc = folded_multiply(u64::from(self.tag) ^ s[0], u64::from(self.n) ^ s[1]);
        let mut i = 0;
        while i < self.n as usize {
            acc ^= folded_multiply(w[i] ^ s[i + 2], w[i + 1] ^ s[i + 3]);
            i += 2;
        }
        folded_multiply(acc ^ s[CACHE_WORDS + 2], s[CACHE_WORDS + 3])
    }
}

#[derive(Clone, Copy)]
struct CacheEntry<V> {
    version: u64,
    key: CacheKey,
    value: V,
}

/// Maps a [`CacheKey`] plus a version number to a cached result: a bounded 2-way
/// set-associative cache. Nothing is allocated after creation. An entry stored under another
/// version is a miss, so bumping the version invalidates everything at once. On a conflict,
/// the entry inserted less recently in the set is evicted.
pub struct ExactMatchCache<V: Copy> {
    /// `2 * n_sets` slots; set `s` is slots `2s` (most recently inserted) and `2s + 1`.
    slots: Box<[Option<CacheEntry<V>>]>,
    set_mask: usize,
    seeds: Seeds,
}

impl<V: Copy> std::fmt::Debug for ExactMatchCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExactMatchCache({} entries)", self.capacity())
    }
}

impl<V: Copy> ExactMatchCache<V> {
    /// A cache of at least `entries` entries (rounded up to a power of two, at least 2).
    pub fn new(entries: usize) -> Self {
        let n_sets = entries.div_ceil(2).max(1).next_power_of_two();
        ExactMatchCache {
            slots: vec![None; 2 * n_sets].into_boxed_slice(),
            set_mask: n_sets - 1,
            seeds: Seeds::random(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn set_of(&self, key: &CacheKey) -> usize {
        let h = key.hash(&self.seeds) as usize;
        (h & self.set_mask) * 2
    }

    #[inline]
    pub fn get(&self, version: u64, key: &CacheKey) -> Option<V> {
        let s = self.set_of(key);
        self.slots[s..s + 2]
            .iter()
            .flatten()
            .find(|e| e.version == version && e.key == *key)
            .map(|e| e.value)
    }

    pub fn insert(&mut self, version: u64, key: &CacheKey, value: V) {
        let s = self.set_of(key);
        let new = Some(CacheEntry {
            version,
            key: *key,
            value,
        });
        let set = &mut self.slots[s..s + 2];
        // Same key (any version): update in place.
        if let Some(slot) = set.iter_mut().find(|e| e.is_some_and(|e| e.key == *key)) {
            *slot = new;
            return;
        }
        // A free or stale slot.
        if let Some(slot) = set
            .iter_mut()
            .find(|e| e.is_none_or(|e| e.version != version))
        {
            *slot = new;
            return;
        }
        // Both live: the older (way 1) goes, the newer moves to way 1.
        set[1] = set[0];
        set[0] = new;
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.slots.fill(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::{consts, Field};

    /// Deterministic xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// The specification: a linear scan in insertion order, highest priority, earliest
    /// inserted on ties; identical (match, priority) replaces in place.
    struct Naive<T> {
        rules: Vec<(RuleId, Match, u16, T)>,
    }
    impl<T: Clone + PartialEq + std::fmt::Debug> Naive<T> {
        fn insert(&mut self, id: RuleId, m: Match, prio: u16, p: T) {
            if let Some(r) = self.rules.iter_mut().find(|r| r.1 == m && r.2 == prio) {
                assert_eq!(r.0, id, "replace keeps the id");
                r.3 = p;
            } else {
                self.rules.push((id, m, prio, p));
            }
        }
        fn remove(&mut self, id: RuleId) -> Option<(Match, u16, T)> {
            let i = self.rules.iter().position(|r| r.0 == id)?;
            let r = self.rules.remove(i);
            Some((r.1, r.2, r.3))
        }
        fn lookup(&self, key: &FlowKey) -> Option<(RuleId, &T)> {
            let mut best: Option<&(RuleId, Match, u16, T)> = None;
            for r in &self.rules {
                if r.1.matches(key) && best.is_none_or(|b| r.2 > b.2) {
                    best = Some(r);
                }
            }
            best.map(|r| (r.0, &r.3))
        }
    }

    fn prefix_mask(len: u64) -> u64 {
        if len == 0 {
            0
        } else {
            (u32::MAX << (32 - len)) as u64
        }
    }

    /// Small value pools so that rules overlap and duplicate a lot.
    fn random_ip(rng: &mut Rng) -> u64 {
        0x0a00_0000 | (rng.below(4) << 16) | (rng.below(4) << 8) | rng.below(4)
    }

    fn random_match(rng: &mut Rng) -> Match {
        let mut m = Match::any();
        if rng.chance(50) {
            m.set_exact(Field::InPort, 1 + rng.below(4));
        }
        if rng.chance(70) {
            m.set_exact(Field::DlType, consts::ETH_IPV4);
            if rng.chance(70) {
                let len = [8, 16, 24, 32, rng.below(33)][rng.below(5) as usize];
                m.set(Field::NwSrc, random_ip(rng), prefix_mask(len));
            }
            if rng.chance(70) {
                let len = [8, 16, 24, 32, rng.below(33)][rng.below(5) as usize];
                m.set(Field::NwDst, random_ip(rng), prefix_mask(len));
            }
            if rng.chance(50) {
                m.set_exact(
                    Field::NwProto,
                    [consts::IP_TCP, consts::IP_UDP][rng.below(2) as usize],
                );
                if rng.chance(60) {
                    m.set_exact(Field::TpDst, [22, 53, 80, 443][rng.below(4) as usize]);
                }
            }
        } else if rng.chance(30) {
            m.set_exact(Field::DlType, consts::ETH_ARP);
        }
        if rng.chance(10) {
            m.set_exact(Field::DlDst, 0x0200_0000_0000 | rng.below(3));
        }
        if rng.chance(5) {
            // An odd mask, not prefix-shaped.
            m.set(Field::VlanTci, rng.next(), rng.next() & 0x1fff);
        }
        m
    }

    fn random_key(rng: &mut Rng, rules: &[(RuleId, Match, u16, u32)]) -> FlowKey {
        if !rules.is_empty() && rng.chance(60) {
            // Near a rule: its value with random bits where it does not look.
            let m = &rules[rng.below(rules.len() as u64) as usize].1;
            let mut k = FlowKey::default();
            for w in 0..6 {
                let noise = if rng.chance(50) {
                    rng.next()
                } else {
                    rng.next() & 0x0000_00ff_0000_00ff
                };
                k.0[w] = m.value.0[w] | (noise & !m.mask.0[w]);
            }
            return k;
        }
        let mut k = FlowKey::default();
        k.set(Field::InPort, 1 + rng.below(5));
        k.set(
            Field::DlType,
            [consts::ETH_IPV4, consts::ETH_ARP, 0x86dd][rng.below(3) as usize],
        );
        k.set(Field::NwSrc, random_ip(rng));
        k.set(Field::NwDst, random_ip(rng));
        k.set(
            Field::NwProto,
            [consts::IP_TCP, consts::IP_UDP][rng.below(2) as usize],
        );
        k.set(Field::TpDst, [22, 53, 80, 443, 8080][rng.below(5) as usize]);
        k.set(Field::DlDst, 0x0200_0000_0000 | rng.below(4));
        k
    }

    fn check_same(cls: &Classifier<u32>, naive: &Naive<u32>, rng: &mut Rng, n_keys: usize) {
        assert_eq!(cls.len(), naive.rules.len());
        assert_eq!(cls.is_empty(), naive.rules.is_empty());
        let mut hits = 0;
        for _ in 0..n_keys {
            let k = random_key(rng, &naive.rules);
            let expected = naive.lookup(&k);
            hits += expected.is_some() as usize;
            assert_eq!(cls.lookup(&k), expected, "key {k:?}");
        }
        // The keys exercise the classifier (not only misses).
        assert!(
            naive.rules.len() < 10 || hits > n_keys / 3,
            "{hits}/{n_keys}"
        );
        for (id, m, prio, p) in &naive.rules {
            assert_eq!(cls.get(*id), Some((m, *prio, p)));
            assert_eq!(cls.find_exact(m, *prio), Some(*id));
        }
        let mut all: Vec<_> = cls.iter().map(|(id, m, pr, p)| (id, *m, pr, *p)).collect();
        all.sort_by_key(|r| r.0);
        let mut expected = naive.rules.clone();
        expected.sort_by_key(|r| r.0);
        assert_eq!(all, expected);
    }

    #[test]
    fn classifier_matches_naive_on_random_rules() {
        for seed in 1..=6u64 {
            let mut rng = Rng(seed);
            let mut cls = Classifier::new();
            let mut naive = Naive { rules: Vec::new() };
            // Few priorities: many ties between overlapping rules of different masks.
            let n_prios = [3, 50, 65536][seed as usize % 3];
            for i in 0..2500u32 {
                let mut m = random_match(&mut rng);
                if seed > 3 && m.mask.0[1] == 0 {
                    // No catch-alls (which match every key and settle most ties early).
                    m.set_exact(Field::DlType, consts::ETH_IPV4);
                }
                let prio = rng.below(n_prios) as u16;
                let id = cls.insert(m, prio, i);
                naive.insert(id, m, prio, i);
            }
            check_same(&cls, &naive, &mut rng, 2000);
        }
    }

    #[test]
    fn classifier_interleaved_insert_remove() {
        let mut rng = Rng(42);
        let mut cls = Classifier::new();
        let mut naive = Naive { rules: Vec::new() };
        let mut payload = 0u32;
        for round in 0..40 {
            for _ in 0..150 {
                if !naive.rules.is_empty() && rng.chance(40) {
                    let id = naive.rules[rng.below(naive.rules.len() as u64) as usize].0;
                    assert_eq!(cls.remove(id), naive.remove(id));
                    assert_eq!(cls.remove(id), None);
                    assert_eq!(cls.get(id), None);
                } else {
                    let m = random_match(&mut rng);
                    let prio = rng.below(8) as u16;
                    payload += 1;
                    let id = cls.insert(m, prio, payload);
                    naive.insert(id, m, prio, payload);
                }
            }
            check_same(&cls, &naive, &mut rng, 300);
            if round == 20 {
                // Drain almost everything: subtables must go away with their last rule.
                while naive.rules.len() > 3 {
                    let id = naive.rules[0].0;
                    assert_eq!(cls.remove(id), naive.remove(id));
                }
                check_same(&cls, &naive, &mut rng, 300);
                assert!(cls.n_subtables() <= 3);
            }
        }
        // A clone is an independent version.
        let snapshot = cls.clone();
        let ids: Vec<_> = naive.rules.iter().map(|r| r.0).collect();
        for id in ids {
            cls.remove(id);
        }
        assert!(cls.is_empty());
        assert_eq!(cls.n_subtables(), 0);
        assert_eq!(cls.lookup(&FlowKey::default()), None);
        check_same(&snapshot, &naive, &mut rng, 300);
    }

    #[test]
    fn classifier_replace_find_exact_and_ties() {
        let mut cls = Classifier::new();
        let mut web = Match::any();
        web.set_exact(Field::DlType, consts::ETH_IPV4);
        web.set_exact(Field::NwProto, consts::IP_TCP);
        web.set_exact(Field::TpDst, 80);
        let mut net = Match::any();
        net.set_exact(Field::DlType, consts::ETH_IPV4);
        net.set(Field::NwSrc, 0x0a00_0000, 0xff00_0000);

        let a = cls.insert(net, 100, "net");
        let b = cls.insert(web, 100, "web");
        let mut k = FlowKey::default();
        k.set(Field::DlType, consts::ETH_IPV4);
        k.set(Field::NwProto, consts::IP_TCP);
        k.set(Field::TpDst, 80);
        k.set(Field::NwSrc, 0x0a01_0101);
        // Equal priority, overlapping: the earlier insert wins.
        assert_eq!(cls.lookup(&k), Some((a, &"net")));
        // Replace keeps the id (and the rank).
        assert_eq!(cls.insert(net, 100, "net2"), a);
        assert_eq!(cls.len(), 2);
        assert_eq!(cls.lookup(&k), Some((a, &"net2")));
        // Same match, other priority: a new rule.
        let c = cls.insert(web, 101, "web101");
        assert_ne!(c, b);
        assert_eq!(cls.lookup(&k), Some((c, &"web101")));
        assert_eq!(cls.find_exact(&web, 100), Some(b));
        assert_eq!(cls.find_exact(&web, 101), Some(c));
        assert_eq!(cls.find_exact(&web, 102), None);
        assert_eq!(cls.find_exact(&Match::any(), 100), None);
        // A value that is not pre-masked is normalized.
        let mut sloppy = net;
        sloppy.value.set(Field::NwSrc, 0x0a12_3456);
        assert_eq!(cls.find_exact(&sloppy, 100), Some(a));
        assert_eq!(cls.insert(sloppy, 100, "net3"), a);
        assert_eq!(cls.remove(c), Some((web, 101, "web101")));
        assert_eq!(cls.lookup(&k), Some((a, &"net3")));
        let d = cls.insert(Match::any(), 0, "miss");
        k.set(Field::NwSrc, 0x0b00_0001);
        k.set(Field::TpDst, 81);
        assert_eq!(cls.lookup(&k), Some((d, &"miss")));
        assert_eq!(cls.get(d), Some((&Match::any(), 0, &"miss")));
    }

    #[test]
    fn classifier_emc_hits_misses_and_version_invalidation() {
        let mut emc = ExactMatchCache::<u32>::new(1000);
        assert_eq!(emc.capacity(), 1024);
        let words = 0b1100; // the words of nw_src and tp_dst
        let key = |i: u64| {
            let mut k = FlowKey::default();
            k.set(Field::NwSrc, i);
            k.set(Field::TpDst, i & 0xffff);
            CacheKey::gather(0, &k, WordSet(words)).unwrap()
        };
        assert_eq!(emc.get(1, &key(1)), None);
        emc.insert(1, &key(1), 11);
        assert_eq!(emc.get(1, &key(1)), Some(11));
        assert_eq!(emc.get(1, &key(2)), None);
        // Another version: a miss, then replaced in place.
        assert_eq!(emc.get(2, &key(1)), None);
        emc.insert(2, &key(1), 12);
        assert_eq!(emc.get(2, &key(1)), Some(12));
        assert_eq!(emc.get(1, &key(1)), None);

        // Fill far beyond capacity: bounded, the most recent entries are mostly present, and
        // every hit is correct.
        for i in 0..10_000u64 {
            emc.insert(3, &key(i), i as u32);
        }
        let mut hits = 0;
        for i in 0..10_000u64 {
            if let Some(v) = emc.get(3, &key(i)) {
                assert_eq!(v, i as u32);
                hits += 1;
            }
            assert_eq!(emc.get(2, &key(i)), None);
        }
        assert!(hits <= 1024 && hits > 300, "{hits}");
        // A working set well under capacity stays cached.
        emc.clear();
        for i in 0..200u64 {
            emc.insert(4, &key(i), i as u32);
        }
        let present = (0..200u64)
            .filter(|&i| emc.get(4, &key(i)).is_some())
            .count();
        assert!(present >= 180, "{present}");
        // Version bump: all stale.
        assert!((0..200u64).all(|i| emc.get(5, &key(i)).is_none()));
    }
}
