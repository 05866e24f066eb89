//! The learning table: which port a MAC address sits behind, per VLAN, with aging, a size
//! limit and a limit per port.
//!
//! Read-mostly: each dataplane thread keeps the entries it used in its own [`MacCache`]
//! (OVS's per-thread caches), so the frame path reads and refreshes a known address with
//! plain atomic loads and stores on the entry, no lock; a miss takes the read lock, and
//! only a new or moved address takes the write lock. Guests
//! choose their source addresses, so learning is O(1) whatever they send: a port at its
//! limit is refused on an atomic count without the write lock, and a full table refuses
//! without scanning (the aging sweep, once a second, makes room).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::vlan::Vid;
use crate::wire::EthernetAddress;

/// Index of a port in the switch's port table.
pub type PortId = u16;

/// Most ports a switch holds (port numbers 1..=MAX_PORTS).
pub const MAX_PORTS: usize = 4096;

/// An address's entry. Shared (`Arc`) so a thread's [`MacCache`] can read it without the
/// table's lock; one allocation when an address is stored, none when it is refreshed.
struct Entry {
    port: AtomicU16,
    /// Seconds since the table's epoch when the address was last seen.
    last_seen: AtomicU64,
    /// Taken out of the table (aged out, flushed, forgotten): caches holding it must ask
    /// the table again.
    removed: AtomicBool,
}

impl Entry {
    fn new(port: PortId, now: u64) -> Arc<Entry> {
        Arc::new(Entry {
            port: AtomicU16::new(port),
            last_seen: AtomicU64::new(now),
            removed: AtomicBool::new(false),
        })
    }
}

/// Slots of a [`MacCache`] (a power of two): more than the addresses one thread's batches
/// usually meet, 4 KiB in all.
const CACHE_SLOTS: usize = 256;

/// One dataplane thread's cache of the table's entries, direct-mapped by (VLAN, address).
/// A hit reads the shared entry's atomics (its port may have moved, it may have been
/// removed: both are seen there), so the cache never answers what the table would not.
/// Addresses come from guests, who could make theirs collide here: that only sends their
/// frames to the table's locked path, as without a cache.
pub struct MacCache {
    /// The table the entries belong to ([`MacTable`]'s `id`), so a cache is never read
    /// against another table, even one at the address of a table gone.
    table: u64,
    slots: Box<[CacheSlot]>,
}

/// A cached entry and its key ([`cache_key`]).
type CacheSlot = Option<(u64, Arc<Entry>)>;

impl Default for MacCache {
    fn default() -> Self {
        MacCache {
            table: 0,
            slots: (0..CACHE_SLOTS).map(|_| None).collect(),
        }
    }
}

impl std::fmt::Debug for MacCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.slots.iter().filter(|s| s.is_some()).count();
        write!(f, "MacCache({used} of {CACHE_SLOTS})")
    }
}

/// (VLAN, address) as one word.
fn cache_key(vlan: Vid, mac: EthernetAddress) -> u64 {
    let m = mac.0;
    u64::from_le_bytes([
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        vlan as u8,
        (vlan >> 8) as u8,
    ])
}

impl MacCache {
    fn slot(key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
    }

    /// The cached entry of `key` for `table`, if this cache holds one (removed or not).
    fn get(&mut self, table: u64, key: u64) -> Option<&Entry> {
        if self.table != table {
            self.slots.iter_mut().for_each(|s| *s = None);
            self.table = table;
            return None;
        }
        match &self.slots[Self::slot(key)] {
            Some((k, e)) if *k == key => Some(e),
            _ => None,
        }
    }

    fn put(&mut self, key: u64, entry: Arc<Entry>) {
        self.slots[Self::slot(key)] = Some((key, entry));
    }
}

/// What learning a source address did, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    Refreshed,
    New,
    Moved,
    /// The table is at its limit; the address was not learned (its frames keep flooding).
    TableFull,
    /// The port has as many addresses as it may; the address was not learned.
    PortLimit,
}

/// One row of the table, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacEntry {
    pub vlan: Vid,
    pub mac: String,
    pub port: PortId,
    /// Seconds since the address was last seen.
    pub age: u64,
}

/// MAC learning table keyed by (VLAN, address).
/// Keyed with a per-process random seed: guests choose the addresses, so the hash must not be
/// predictable, and it is on the per-frame path, so it must be fast.
type Entries = HashMap<(Vid, EthernetAddress), Arc<Entry>, ahash::RandomState>;

pub struct MacTable {
    /// Unique in the process (never 0, which an empty cache holds).
    id: u64,
    entries: RwLock<Entries>,
    max_entries: usize,
    aging: Duration,
    epoch: Instant,
    /// Entries per port, indexed by port number; changed under the write lock, read
    /// without it to refuse a port at its limit cheaply.
    per_port: Vec<AtomicUsize>,
    /// The addresses added, moved or removed since the watcher (EVPN's advertiser) last
    /// looked, so it need not read the whole table per change.
    log: ChangeLog,
}

/// Most changes the log holds between two looks; past it the watcher reads the table.
pub const CHANGE_LOG_CAPACITY: usize = 4096;

/// Changed keys for one watcher: off (one atomic load per change) until [`MacTable::watch`],
/// then bounded and allocated once, so learning never allocates; past the bound it only
/// records that it overflowed.
#[derive(Default)]
struct ChangeLog {
    watched: AtomicBool,
    inner: Mutex<LogInner>,
    /// Signalled when the log stops being empty: one write per round of the watcher, not
    /// per change, so the watcher sleeps until there is something to do.
    wake: std::sync::OnceLock<vmm_sys_util::eventfd::EventFd>,
}

#[derive(Default)]
struct LogInner {
    keys: Vec<(Vid, EthernetAddress)>,
    overflowed: bool,
}

impl MacTable {
    pub fn new(max_entries: usize, aging: Duration) -> Self {
        static TABLES: AtomicU64 = AtomicU64::new(0);
        MacTable {
            id: TABLES.fetch_add(1, Ordering::Relaxed) + 1,
            entries: RwLock::new(Entries::default()),
            max_entries,
            aging,
            epoch: Instant::now(),
            per_port: (0..=MAX_PORTS + 1).map(|_| AtomicUsize::new(0)).collect(),
            log: ChangeLog::default(),
        }
    }

    fn port_count(&self, port: PortId) -> Option<&AtomicUsize> {
        self.per_port.get(usize::from(port))
    }

    /// Addresses learned behind `port`.
    pub fn port_entries(&self, port: PortId) -> usize {
        self.port_count(port)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn count_removed(&self, port: PortId) {
        if let Some(c) = self.port_count(port) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn count_added(&self, port: PortId) {
        if let Some(c) = self.port_count(port) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every entry `drop` says so, keeping the per-port counts right.
    fn remove_where(&self, entries: &mut Entries, drop: impl Fn(&Entry) -> bool) -> usize {
        let before = entries.len();
        entries.retain(|key, e| {
            let gone = drop(e);
            if gone {
                e.removed.store(true, Ordering::Relaxed);
                self.count_removed(e.port.load(Ordering::Relaxed));
                self.changed(*key);
            }
            !gone
        });
        before - entries.len()
    }

    /// Records that `key`'s entry was added, moved or removed, for the watcher if any.
    fn changed(&self, key: (Vid, EthernetAddress)) {
        if !self.log.watched.load(Ordering::Relaxed) {
            return;
        }
        let mut log = self.log.inner.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = log.keys.is_empty() && !log.overflowed;
        if log.keys.len() < CHANGE_LOG_CAPACITY {
            log.keys.push(key);
        } else {
            log.overflowed = true;
        }
        if was_empty {
            if let Some(wake) = self.log.wake.get() {
                // Full (the watcher is far behind) or failed: it still polls on a timer.
                let _ = wake.write(1);
            }
        }
    }

    /// Starts logging changes for one watcher. Its first [`MacTable::drain_changes`] says
    /// to read the whole table.
    pub fn watch(&self) {
        let mut log = self.log.inner.lock().unwrap_or_else(|p| p.into_inner());
        log.keys.reserve(CHANGE_LOG_CAPACITY);
        log.overflowed = true;
        if let Ok(fd) = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK) {
            let _ = self.log.wake.set(fd);
        }
        self.log.watched.store(true, Ordering::Relaxed);
    }

    /// A descriptor that becomes readable when changes wait in the log (after
    /// [`MacTable::watch`]; [`MacTable::drain_changes`] resets it).
    pub fn changes_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.log.wake.get().map(|w| w.as_raw_fd())
    }

    /// Moves the (VLAN, address) keys changed since the last call into `out` (a key may
    /// appear more than once; look each up for its state now). False if changes were lost
    /// (the log overflowed, or this is the first call): read the whole table instead.
    pub fn drain_changes(&self, out: &mut Vec<(Vid, EthernetAddress)>) -> bool {
        let mut log = self.log.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wake) = self.log.wake.get() {
            let _ = wake.read();
        }
        if std::mem::take(&mut log.overflowed) {
            log.keys.clear();
            return false;
        }
        out.append(&mut log.keys);
        true
    }

    /// The table's clock: whole seconds since it was created.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    fn expired(&self, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) >= self.aging.as_secs().max(1)
    }

    /// Records that `mac` was seen on `port` in `vlan`; `port_limit` is the most addresses
    /// `port` may have.
    pub fn learn(
        &self,
        vlan: Vid,
        mac: EthernetAddress,
        port: PortId,
        now: u64,
        port_limit: usize,
    ) -> Learned {
        {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.get(&(vlan, mac)) {
                if e.port.load(Ordering::Relaxed) == port {
                    let last = e.last_seen.load(Ordering::Relaxed);
                    if last != now {
                        e.last_seen.store(now, Ordering::Relaxed);
                        // Expired but not yet swept: to a watcher it had gone, and is back.
                        if self.expired(last, now) {
                            self.changed((vlan, mac));
                        }
                    }
                    return Learned::Refreshed;
                }
            }
        }
        if self.port_entries(port) >= port_limit {
            return Learned::PortLimit;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(&(vlan, mac)) {
            let old = e.port.swap(port, Ordering::Relaxed);
            e.last_seen.store(now, Ordering::Relaxed);
            if old == port {
                return Learned::Refreshed;
            }
            self.count_removed(old);
            self.count_added(port);
            self.changed((vlan, mac));
            return Learned::Moved;
        }
        if entries.len() >= self.max_entries {
            return Learned::TableFull;
        }
        entries.insert((vlan, mac), Entry::new(port, now));
        self.count_added(port);
        self.changed((vlan, mac));
        Learned::New
    }

    /// [`MacTable::learn`] through this thread's `cache`: an address already learned on
    /// `port` and not aged out is refreshed on its entry, without the table's lock.
    pub fn learn_cached(
        &self,
        cache: &mut MacCache,
        vlan: Vid,
        mac: EthernetAddress,
        port: PortId,
        now: u64,
        port_limit: usize,
    ) -> Learned {
        let key = cache_key(vlan, mac);
        if let Some(e) = cache.get(self.id(), key) {
            let last = e.last_seen.load(Ordering::Relaxed);
            if !e.removed.load(Ordering::Relaxed)
                && e.port.load(Ordering::Relaxed) == port
                && !self.expired(last, now)
            {
                if last != now {
                    e.last_seen.store(now, Ordering::Relaxed);
                }
                return Learned::Refreshed;
            }
        }
        let learned = self.learn(vlan, mac, port, now, port_limit);
        if let Some(e) = self.entry(vlan, mac) {
            cache.put(key, e);
        }
        learned
    }

    /// [`MacTable::lookup`] through this thread's `cache`.
    pub fn lookup_cached(
        &self,
        cache: &mut MacCache,
        vlan: Vid,
        mac: EthernetAddress,
        now: u64,
    ) -> Option<PortId> {
        let key = cache_key(vlan, mac);
        let e = match cache.get(self.id(), key) {
            Some(e) if !e.removed.load(Ordering::Relaxed) => e,
            _ => {
                let e = self.entry(vlan, mac)?;
                cache.put(key, e);
                cache.get(self.id(), key)?
            }
        };
        if self.expired(e.last_seen.load(Ordering::Relaxed), now) {
            return None;
        }
        Some(e.port.load(Ordering::Relaxed))
    }

    /// What identifies this table to a cache.
    fn id(&self) -> u64 {
        self.id
    }

    /// The entry of `mac` in `vlan`, to cache.
    fn entry(&self, vlan: Vid, mac: EthernetAddress) -> Option<Arc<Entry>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(&(vlan, mac)).cloned()
    }

    /// The port `mac` was learned on in `vlan`, unless unknown or aged out.
    pub fn lookup(&self, vlan: Vid, mac: EthernetAddress, now: u64) -> Option<PortId> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(&(vlan, mac))?;
        if self.expired(e.last_seen.load(Ordering::Relaxed), now) {
            return None;
        }
        Some(e.port.load(Ordering::Relaxed))
    }

    /// Drops aged-out entries; returns how many.
    pub fn expire(&self, now: u64) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.remove_where(&mut entries, |e| {
            self.expired(e.last_seen.load(Ordering::Relaxed), now)
        })
    }

    /// Forgets everything learned on `port` (it went down, was removed or changed VLANs).
    pub fn flush_port(&self, port: PortId) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.port_entries(port) == 0 {
            return 0;
        }
        self.remove_where(&mut entries, |e| e.port.load(Ordering::Relaxed) == port)
    }

    /// Forgets `mac` in `vlan` wherever it was learned (the address now lives elsewhere, as
    /// a BGP EVPN route says); whether it was there.
    pub fn forget(&self, vlan: Vid, mac: EthernetAddress) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entries.remove(&(vlan, mac)) {
            Some(e) => {
                e.removed.store(true, Ordering::Relaxed);
                self.count_removed(e.port.load(Ordering::Relaxed));
                self.changed((vlan, mac));
                true
            }
            None => false,
        }
    }

    /// Calls `f` with each live entry's VLAN, address and port, under the read lock (so `f`
    /// must not call back into the table), in no particular order.
    pub fn for_each_live(&self, now: u64, mut f: impl FnMut(Vid, EthernetAddress, PortId)) {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        for ((vlan, mac), e) in entries.iter() {
            if !self.expired(e.last_seen.load(Ordering::Relaxed), now) {
                f(*vlan, *mac, e.port.load(Ordering::Relaxed));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn aging(&self) -> Duration {
        self.aging
    }

    /// A snapshot of live entries, sorted by VLAN then address.
    pub fn snapshot(&self, now: u64) -> Vec<MacEntry> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<MacEntry> = entries
            .iter()
            .filter(|(_, e)| !self.expired(e.last_seen.load(Ordering::Relaxed), now))
            .map(|((vlan, mac), e)| MacEntry {
                vlan: *vlan,
                mac: mac.to_string(),
                port: e.port.load(Ordering::Relaxed),
                age: now.saturating_sub(e.last_seen.load(Ordering::Relaxed)),
            })
            .collect();
        rows.sort_by(|a, b| (a.vlan, &a.mac).cmp(&(b.vlan, &b.mac)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);

    #[test]
    fn learns_per_vlan_and_moves() {
        let t = MacTable::new(16, Duration::from_secs(300));
        assert_eq!(t.learn(10, A, 1, 0, 16), Learned::New);
        assert_eq!(t.learn(10, A, 1, 1, 16), Learned::Refreshed);
        assert_eq!(t.lookup(10, A, 1), Some(1));
        assert_eq!(t.lookup(20, A, 1), None, "learning is per VLAN");
        assert_eq!(t.learn(10, A, 2, 2, 16), Learned::Moved);
        assert_eq!(t.lookup(10, A, 2), Some(2));
    }

    #[test]
    fn the_change_log_has_what_a_watcher_must_see() {
        let t = MacTable::new(16, Duration::from_secs(300));
        let mut keys = Vec::new();
        t.learn(10, A, 1, 0, 16);
        t.watch();
        let readable = || {
            let fd = t.changes_fd().expect("an eventfd");
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call; no wait.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(
            !t.drain_changes(&mut keys),
            "the first look reads the table"
        );
        t.learn(10, A, 1, 1, 16);
        assert!(!readable(), "a refresh wakes nobody");
        assert!(
            t.drain_changes(&mut keys) && keys.is_empty(),
            "a refresh is no change"
        );
        t.learn(10, A, 2, 1, 16);
        t.learn(20, B, 2, 1, 16);
        assert!(readable(), "changes wake the watcher");
        assert!(t.drain_changes(&mut keys));
        assert!(!readable(), "until it has looked");
        assert_eq!(keys, vec![(10, A), (20, B)], "a move and a new address");
        keys.clear();
        let mut live = Vec::new();
        t.for_each_live(1, |v, m, p| live.push((v, m, p)));
        live.sort();
        assert_eq!(live, vec![(10, A, 2), (20, B, 2)]);
        assert!(t.forget(10, A));
        assert!(!t.forget(10, A));
        assert_eq!(t.port_entries(2), 1);
        t.expire(301);
        assert!(t.drain_changes(&mut keys));
        assert_eq!(keys, vec![(10, A), (20, B)], "forgotten, aged out");
        keys.clear();
        for i in 0..=CHANGE_LOG_CAPACITY {
            let m = EthernetAddress([2, 0, 0, 0, (i >> 8) as u8, i as u8]);
            t.learn(30, m, 3, 0, usize::MAX);
            t.forget(30, m);
        }
        assert!(!t.drain_changes(&mut keys), "overflowed: read the table");
        assert!(t.drain_changes(&mut keys) && keys.is_empty());
    }

    #[test]
    fn a_threads_cache_answers_what_the_table_would() {
        let t = MacTable::new(16, Duration::from_secs(300));
        let (mut one, mut two) = (MacCache::default(), MacCache::default());
        assert_eq!(t.learn_cached(&mut one, 10, A, 1, 0, 16), Learned::New);
        assert_eq!(
            t.learn_cached(&mut one, 10, A, 1, 1, 16),
            Learned::Refreshed
        );
        assert_eq!(t.lookup_cached(&mut two, 10, A, 1), Some(1));
        assert_eq!(t.lookup_cached(&mut two, 20, A, 1), None, "per VLAN");
        // Another thread sees the address move; this one's cached entry says so too.
        assert_eq!(t.learn_cached(&mut one, 10, A, 2, 2, 16), Learned::Moved);
        assert_eq!(t.lookup_cached(&mut two, 10, A, 2), Some(2));
        // A refresh through a cache keeps the entry alive past its first aging.
        assert_eq!(
            t.learn_cached(&mut one, 10, A, 2, 200, 16),
            Learned::Refreshed
        );
        assert_eq!(t.expire(301), 0, "refreshed at 200");
        assert_eq!(t.lookup_cached(&mut two, 10, A, 301), Some(2));
        // Aged out, not yet swept: gone for the cache as for the table.
        assert_eq!(t.lookup_cached(&mut two, 10, A, 500), None);
        assert_eq!(t.lookup(10, A, 500), None);
        // Flushed: the cached entry is not answered any more, and learning stores it anew.
        assert_eq!(t.flush_port(2), 1);
        assert_eq!(t.lookup_cached(&mut two, 10, A, 201), None);
        assert_eq!(t.learn_cached(&mut one, 10, A, 2, 201, 16), Learned::New);
        assert_eq!(t.lookup_cached(&mut two, 10, A, 201), Some(2));
        assert!(t.forget(10, A));
        assert_eq!(t.lookup_cached(&mut two, 10, A, 201), None, "forgotten");
        // A cache is never read against another table.
        let other = MacTable::new(16, Duration::from_secs(300));
        assert_eq!(other.lookup_cached(&mut one, 10, A, 201), None);
        other.learn(10, B, 7, 0, 16);
        assert_eq!(t.lookup_cached(&mut one, 10, B, 0), None);
        assert_eq!(other.lookup_cached(&mut one, 10, B, 0), Some(7));
        // At the port's limit the cache refuses as the table does.
        assert_eq!(t.learn_cached(&mut one, 10, B, 3, 0, 0), Learned::PortLimit);
        assert_eq!(t.lookup_cached(&mut one, 10, B, 0), None);
    }

    #[test]
    fn entries_age_out() {
        let t = MacTable::new(16, Duration::from_secs(300));
        t.learn(1, A, 1, 0, 16);
        t.learn(1, B, 2, 200, 16);
        assert_eq!(t.lookup(1, A, 299), Some(1));
        assert_eq!(t.lookup(1, A, 300), None);
        assert_eq!(t.expire(300), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.snapshot(300)[0].age, 100);
    }

    #[test]
    fn limit_refuses_new_addresses_until_room_is_made() {
        let t = MacTable::new(2, Duration::from_secs(10));
        assert_eq!(t.learn(1, A, 1, 0, 16), Learned::New);
        assert_eq!(t.learn(1, B, 1, 5, 16), Learned::New);
        let c = EthernetAddress([2, 0, 0, 0, 0, 0xc]);
        assert_eq!(t.learn(1, c, 1, 6, 16), Learned::TableFull);
        assert_eq!(t.lookup(1, c, 6), None);
        // A ages out at t=10; the sweep makes room.
        assert_eq!(t.expire(10), 1);
        assert_eq!(t.learn(1, c, 1, 10, 16), Learned::New);
        assert_eq!(t.flush_port(1), 2);
        assert!(t.is_empty());
        assert_eq!(t.port_entries(1), 0);
    }

    #[test]
    fn each_port_learns_at_most_its_limit_and_counts_follow_moves_and_removals() {
        let t = MacTable::new(100, Duration::from_secs(10));
        let m = |n: u8| EthernetAddress([2, 0, 0, 0, 1, n]);
        for n in 0..5 {
            assert_eq!(
                t.learn(1, m(n), 1, 0, 3),
                if n < 3 {
                    Learned::New
                } else {
                    Learned::PortLimit
                }
            );
        }
        assert_eq!(t.port_entries(1), 3);
        // Known addresses are refreshed at the limit; a move needs room on the new port.
        assert_eq!(t.learn(1, m(0), 1, 1, 3), Learned::Refreshed);
        assert_eq!(t.learn(1, m(0), 2, 1, 1), Learned::Moved);
        assert_eq!((t.port_entries(1), t.port_entries(2)), (2, 1));
        assert_eq!(t.learn(1, m(1), 2, 1, 1), Learned::PortLimit);
        assert_eq!(t.learn(1, m(7), 1, 1, 3), Learned::New);
        // m1 and m2 were last seen at 0, m0 and m7 at 1.
        assert_eq!(t.expire(10), 2);
        assert_eq!((t.port_entries(1), t.port_entries(2)), (1, 1));
    }
}
