//! Connection tracking for the flow tables' `ct` action: which connection a packet belongs
//! to, in which direction, and whether it fits that connection's state.
//!
//! - `packet.rs`: the connection key and TCP fields read from a packet's first bytes.
//! - `tcp.rs`: TCP state with sequence and window checks.
//! - `table.rs`: a shard of the table (one open-addressed array, found from either direction).
//! - here: the table of connections (zones, limits, timeouts, eviction), shared by every
//!   dataplane thread.
//!
//! The table is split into shards, each behind its own spin lock; both directions of a
//! connection live in the same shard (the shard is chosen by a hash that is the same both
//! ways), so tracking a packet takes one uncontended lock. Time comes from the caller (the
//! batch's clock), so tracking reads no clock. Semantics follow OVS's: a packet is `+new`
//! until its connection has seen a reply and `+est` after; a connection exists only once a
//! `ct(commit)` stored it; an ICMP error quoting a packet of a connection is `+rel`; what
//! cannot be tracked (fragments, malformed headers, TCP segments outside the windows or
//! without a connection to belong to) is `+inv`. NAT and ALGs are not implemented.

pub mod packet;
mod table;
pub mod tcp;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;

use packet::{ConnKey, Transport};
use table::{Seeds, Shard};
use tcp::{TcpConn, Verdict};

/// `ct_state` bits, as OVS numbers them.
pub mod ct_state {
    pub const NEW: u64 = 0x01;
    pub const ESTABLISHED: u64 = 0x02;
    pub const RELATED: u64 = 0x04;
    pub const REPLY: u64 = 0x08;
    pub const INVALID: u64 = 0x10;
    pub const TRACKED: u64 = 0x20;
    pub const SNAT: u64 = 0x40;
    pub const DNAT: u64 = 0x80;
}

/// Connections stored at most, unless configured (256 to 512 bytes each: see
/// [`BYTES_PER_CONNECTION`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// The most `max_connections` may be: 16 Mi connections, 4 GiB at [`BYTES_PER_CONNECTION`]
/// (the tables grow with the connections guests open, up to the limit).
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 24;
/// What a stored connection costs: its 128-byte entry in a shard's table, which is kept at
/// most half full (checked with `size_of` in a test); up to twice that right after a
/// table doubles, when it is a quarter full (tables do not shrink when connections end).
pub const BYTES_PER_CONNECTION: usize = 256;
const SHARDS: usize = 16;
/// Idle timeouts of connections other than TCP (the Linux nf_conntrack defaults).
const UDP_TIMEOUT_MS: u64 = 30_000;
const UDP_STREAM_TIMEOUT_MS: u64 = 120_000;
const ICMP_TIMEOUT_MS: u64 = 30_000;
const OTHER_TIMEOUT_MS: u64 = 600_000;
/// How many entries of the closed list a zone-limited commit looks at for one of its zone.
const EVICTION_SCAN: usize = 64;

/// Limits on stored connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Across all zones.
    pub max_connections: usize,
    /// Per zone, for the zones that have one.
    pub zones: HashMap<u16, usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            zones: HashMap::new(),
        }
    }
}

/// What `ct(commit, exec(...))` sets on the connection: (value, mask).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitOptions {
    pub set_mark: Option<(u32, u32)>,
    pub set_label: Option<(u128, u128)>,
    /// A packet in the reply direction of a connection ends it, and a new one is committed
    /// in the packet's direction (`ct(commit,force)`).
    pub force: bool,
}

/// What tracking a packet found: the ct fields a later table matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// `ct_state` bits.
    pub state: u64,
    pub zone: u16,
    pub mark: u32,
    pub label: u128,
    /// The connection's original direction (`ct_nw_src`, ...), unless invalid.
    pub orig: Option<ConnKey>,
    /// The packet belongs to a stored connection (so committing it again would only apply
    /// a mark or label).
    pub stored: bool,
}

impl Tracked {
    fn invalid(zone: u16) -> Tracked {
        Tracked {
            state: ct_state::TRACKED | ct_state::INVALID,
            zone,
            mark: 0,
            label: 0,
            orig: None,
            stored: false,
        }
    }
}

/// A slot of a shard's table: a stored connection (`used`) or none. Two cache lines,
/// aligned: the first holds all that a lookup reads of a UDP, ICMP or other connection
/// without a mark or label (key, hash, expiry, flags), so that such a packet misses one
/// line, not two; the second the TCP state, mark and label. (With the flags in the second
/// line, as `Option<Conn>` put them, each lookup waited for both lines in turn: measured as
/// a third of the lookup's time with 10 000 connections.)
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Conn {
    /// The original direction's key.
    key: ConnKey,
    expires_ms: u64,
    /// The low half of both directions' hash (the table's hash is direction-independent):
    /// the slot's home, and a compare before the key's.
    hash: u32,
    /// A connection is stored here.
    used: bool,
    /// A reply was seen (for TCP, as its state says: kept here so that a lookup need not
    /// read the second line to answer `+est`).
    replied: bool,
    /// On its shard's closed list already.
    listed_closed: bool,
    /// `mark` or `label` is not 0 (else the second line need not be read for them).
    marked: bool,
    // The second cache line.
    mark: u32,
    /// For TCP connections (`key.proto()` is TCP).
    tcp: Option<TcpConn>,
    label: u128,
}

impl Conn {
    /// An empty slot.
    const EMPTY: Conn = Conn {
        key: ConnKey::ZERO,
        expires_ms: 0,
        hash: 0,
        used: false,
        replied: false,
        listed_closed: false,
        marked: false,
        mark: 0,
        tcp: None,
        label: 0,
    };

    fn new(key: ConnKey, hash: u64, tcp: Option<TcpConn>) -> Conn {
        Conn {
            key,
            hash: hash as u32,
            used: true,
            tcp,
            ..Conn::EMPTY
        }
    }

    fn is_tcp(&self) -> bool {
        self.key.proto() == packet::IP_TCP
    }

    fn is_closed(&self) -> bool {
        self.is_tcp() && self.tcp.as_ref().is_some_and(TcpConn::is_closed)
    }

    fn timeout_ms(&self) -> u64 {
        if let (true, Some(t)) = (self.is_tcp(), &self.tcp) {
            return t.timeout().millis();
        }
        match self.key.proto() {
            packet::IP_UDP if self.replied => UDP_STREAM_TIMEOUT_MS,
            packet::IP_UDP => UDP_TIMEOUT_MS,
            packet::IP_ICMP | packet::IP_ICMPV6 => ICMP_TIMEOUT_MS,
            _ => OTHER_TIMEOUT_MS,
        }
    }

    fn apply(&mut self, commit: &CommitOptions) {
        if let Some((v, m)) = commit.set_mark {
            self.mark = (self.mark & !m) | (v & m);
        }
        if let Some((v, m)) = commit.set_label {
            self.label = (self.label & !m) | (v & m);
        }
        self.marked = self.mark != 0 || self.label != 0;
    }

    /// What a lookup answers: `orig` is the original direction's key (the packet's own or
    /// its reverse: cheaper than unpacking the stored one).
    fn tracked(&self, state: u64, orig: ConnKey) -> Tracked {
        let (mark, label) = if self.marked {
            (self.mark, self.label)
        } else {
            (0, 0)
        };
        Tracked {
            state,
            zone: self.key.zone(),
            mark,
            label,
            orig: Some(orig),
            stored: true,
        }
    }
}

/// Zones of connections removed under a shard lock, to uncount after it.
#[derive(Default)]
struct Removed(Vec<u16>);

impl Removed {
    fn push(&mut self, zone: u16) {
        self.0.push(zone);
    }
}

/// Counters, for the metrics and `flowctl dump-conntrack`.
#[derive(Debug, Default)]
pub struct CtCounters {
    /// Connections stored by `ct(commit)`.
    pub committed: AtomicU64,
    /// Commits refused because a limit was reached and nothing closed could be evicted.
    pub refused: AtomicU64,
    /// Closed connections removed early to make room.
    pub evicted: AtomicU64,
    /// Connections removed after their idle timeout.
    pub expired: AtomicU64,
    /// Packets found invalid.
    pub invalid: AtomicU64,
}

/// One connection as `flowctl dump-conntrack` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    pub zone: u16,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// `SYN_SENT`, `ESTABLISHED`, ... for TCP; `UNREPLIED` or `REPLIED` otherwise.
    pub state: String,
    pub mark: u32,
    pub label: u128,
    /// Seconds until it expires if idle.
    pub expires_in_s: u64,
}

/// What answering a packet again needs without a lookup (see
/// [`Conntrack::track_unless_stamped`]):
/// the key it was tracked under, its shard, that shard's generation as the lookup left it,
/// and the clock it ran at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    key: ConnKey,
    shard: usize,
    generation: u64,
    now_ms: u64,
}

/// A shard's lock. Held for one lookup at a time (or a control command's pass over the
/// shard), so a spin lock: its release is a plain store where `std`'s mutex pays an atomic
/// exchange, measured at a tenth of a lookup. A waiter yields its time slice, so a holder
/// preempted on the same core gets to finish.
type ShardLock = SpinMutex<Shard, Yield>;

/// The connection table.
pub struct Conntrack {
    shards: Box<[ShardLock]>,
    /// Per shard: bumped each time its lock is taken to change it (before the change), so
    /// that an unchanged generation means an unchanged shard (see [`Stamp`]).
    generations: Box<[AtomicU64]>,
    seeds: Seeds,
    limits: RwLock<Limits>,
    count: AtomicUsize,
    zone_counts: Mutex<HashMap<u16, usize>>,
    pub counters: CtCounters,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack::new(Limits::default())
    }
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conntrack({} connections)", self.len())
    }
}

impl Conntrack {
    pub fn new(limits: Limits) -> Conntrack {
        Conntrack {
            shards: (0..SHARDS).map(|_| ShardLock::default()).collect(),
            generations: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            seeds: Seeds::random(),
            limits: RwLock::new(limits),
            count: AtomicUsize::new(0),
            zone_counts: Mutex::new(HashMap::new()),
            counters: CtCounters::default(),
        }
    }

    /// Connections stored.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections stored per zone (zones with none are left out).
    pub fn zone_counts(&self) -> HashMap<u16, usize> {
        lock(&self.zone_counts).clone()
    }

    pub fn limits(&self) -> Limits {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New limits; connections beyond them stay until they end (new ones are refused).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// A key's hash (the same both ways) and its shard's index.
    #[inline]
    fn locate(&self, key: &ConnKey) -> (u64, usize) {
        let hash = table::hash(key, &self.seeds);
        (hash, ((hash >> 32) as usize) % SHARDS)
    }

    /// Evicts the oldest closed connection (of `zone`, if given): from `own` shard first,
    /// then from any other shard that is not busy (`try_lock`: taking a second shard's lock
    /// while holding one could deadlock with a thread doing the reverse).
    fn evict(
        &self,
        own: &mut Shard,
        own_index: usize,
        zone: Option<u16>,
        removed: &mut Removed,
    ) -> bool {
        let scan = if zone.is_some() {
            EVICTION_SCAN
        } else {
            usize::MAX
        };
        if own.evict_closed(zone, scan, removed) {
            return true;
        }
        for (i, shard) in self.shards.iter().enumerate() {
            if i == own_index {
                continue;
            }
            let Some(mut other) = shard.try_lock() else {
                continue;
            };
            self.bump(i);
            if other.evict_closed(zone, scan, removed) {
                return true;
            }
        }
        false
    }

    fn uncount(&self, removed: Removed) {
        if removed.0.is_empty() {
            return;
        }
        self.count.fetch_sub(removed.0.len(), Ordering::Relaxed);
        let mut zones = lock(&self.zone_counts);
        for z in removed.0 {
            if let Some(n) = zones.get_mut(&z) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    zones.remove(&z);
                }
            }
        }
    }

    /// Tracks a packet (an Ethernet frame's first bytes) in `zone`. With `commit`, a new
    /// connection is stored and the options applied (also to an existing one). `now_ms` is
    /// the caller's clock (any monotonic milliseconds).
    pub fn track(
        &self,
        frame: &[u8],
        zone: u16,
        commit: Option<&CommitOptions>,
        now_ms: u64,
    ) -> Tracked {
        self.track_stamped(frame, zone, commit, now_ms).0
    }

    /// [`Conntrack::track`], with a [`Stamp`] when the same answer may be given again to
    /// a packet of the same key without a lookup (a lookup that stored nothing, of a
    /// protocol with no state per packet, answered valid).
    pub fn track_stamped(
        &self,
        frame: &[u8],
        zone: u16,
        commit: Option<&CommitOptions>,
        now_ms: u64,
    ) -> (Tracked, Option<Stamp>) {
        self.track_parsed(&packet::parse(frame, zone), zone, commit, now_ms)
    }

    /// Tracks `frame` in `zone` without committing, unless `stamp` (of an earlier lookup)
    /// says the answer would be that lookup's (the packet has the stamp's key and a protocol
    /// that keeps no state per packet, at the stamp's clock, its shard unchanged since): then
    /// `None`. The packet is parsed once either way.
    pub fn track_unless_stamped(
        &self,
        frame: &[u8],
        zone: u16,
        now_ms: u64,
        stamp: Option<&Stamp>,
    ) -> Option<(Tracked, Option<Stamp>)> {
        let pkt = packet::parse(frame, zone);
        match (&pkt, stamp) {
            (Ok(p), Some(s)) if self.stamp_holds(p, now_ms, s) => None,
            _ => Some(self.track_parsed(&pkt, zone, None, now_ms)),
        }
    }

    fn track_parsed(
        &self,
        pkt: &Result<packet::Packet, packet::Untrackable>,
        zone: u16,
        commit: Option<&CommitOptions>,
        now_ms: u64,
    ) -> (Tracked, Option<Stamp>) {
        let mut removed = Removed::default();
        let mut stamp = None;
        let tracked = self.track_locked(pkt, zone, commit, now_ms, &mut removed, &mut stamp);
        self.uncount(removed);
        if tracked.state & ct_state::INVALID != 0 {
            self.counters.invalid.fetch_add(1, Ordering::Relaxed);
            stamp = None;
        }
        (tracked, stamp)
    }

    /// Whether tracking `frame` at `now_ms` would answer as the lookup that made `stamp`
    /// did, and change nothing: it has the stamp's key and a protocol that keeps no state
    /// per packet, and nothing has changed the stamp's shard since (one atomic load, no
    /// lock). What the packet's bytes say beyond the key (a fragment, a malformed header)
    /// is read again.
    /// (The frame path asks through [`Conntrack::track_unless_stamped`], on one parse; this
    /// side-effect-free form is what the tests use.)
    #[cfg(test)]
    pub fn answers_again(&self, frame: &[u8], now_ms: u64, stamp: &Stamp) -> bool {
        packet::parse(frame, stamp.key.zone()).is_ok_and(|p| self.stamp_holds(&p, now_ms, stamp))
    }

    fn stamp_holds(&self, pkt: &packet::Packet, now_ms: u64, stamp: &Stamp) -> bool {
        now_ms == stamp.now_ms
            && pkt.key == stamp.key
            && matches!(
                pkt.transport,
                Transport::Udp | Transport::Echo | Transport::Other
            )
            && self
                .generations
                .get(stamp.shard)
                .is_some_and(|g| g.load(Ordering::Acquire) == stamp.generation)
    }

    /// Locks shard `index` to change it (its generation moves first).
    #[inline]
    fn write(&self, index: usize) -> SpinMutexGuard<'_, Shard, Yield> {
        let shard = self.shards[index].lock();
        self.bump(index);
        shard
    }

    /// Moves shard `index`'s generation on; called with its lock held (a plain store:
    /// writers are serialised by that lock).
    fn bump(&self, index: usize) {
        let g = &self.generations[index];
        g.store(g.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
    }

    fn track_locked(
        &self,
        pkt: &Result<packet::Packet, packet::Untrackable>,
        zone: u16,
        commit: Option<&CommitOptions>,
        now_ms: u64,
        removed: &mut Removed,
        stamp: &mut Option<Stamp>,
    ) -> Tracked {
        let Ok(pkt) = pkt else {
            return Tracked::invalid(zone);
        };
        if let Transport::Error(quoted) = &pkt.transport {
            // Related: the error quotes a packet of a connection.
            let (hash, index) = self.locate(quoted);
            let mut shard = self.write(index);
            let Some((slot, quoted_is_reply)) = shard.find(quoted, hash, now_ms, removed) else {
                return Tracked::invalid(zone);
            };
            let Some(conn) = shard.get(slot) else {
                return Tracked::invalid(zone);
            };
            // The error travels against the quoted packet's direction.
            let reply = if quoted_is_reply { 0 } else { ct_state::REPLY };
            let orig = if quoted_is_reply {
                quoted.reverse()
            } else {
                *quoted
            };
            return conn.tracked(ct_state::TRACKED | ct_state::RELATED | reply, orig);
        }
        // Read where the parse left it (a copy's wide loads would wait for its narrow stores).
        let key = &pkt.key;
        let (hash, shard_index) = self.locate(key);
        let mut shard = self.write(shard_index);
        // Tracked again with the shard as this leaves it, a packet of the same key whose
        // protocol keeps no state per packet gets this answer and changes nothing.
        if commit.is_none()
            && matches!(
                pkt.transport,
                Transport::Udp | Transport::Echo | Transport::Other
            )
        {
            *stamp = Some(Stamp {
                key: *key,
                shard: shard_index,
                generation: self.generations[shard_index].load(Ordering::Relaxed),
                now_ms,
            });
        }
        if let Some((slot, reply)) = shard.find(key, hash, now_ms, removed) {
            let Some(conn) = shard.get_mut(slot) else {
                return Tracked::invalid(zone);
            };
            // A forced commit replaces the connection only if this packet can open one.
            let can_open = match &pkt.transport {
                Transport::Tcp(seg) => TcpConn::can_open(seg),
                Transport::Echo => packet::is_echo_request(key.proto(), key.icmp_type()),
                _ => true,
            };
            let forced = reply && can_open && commit.is_some_and(|c| c.force);
            let reopens = forced
                || match &pkt.transport {
                    Transport::Tcp(seg) => conn.is_closed() && TcpConn::can_open(seg),
                    _ => false,
                };
            if !reopens {
                let valid = match (&pkt.transport, conn.is_tcp()) {
                    (Transport::Tcp(seg), true) => match &mut conn.tcp {
                        Some(t) => {
                            let valid = t.update(usize::from(reply), seg) == Verdict::Valid;
                            conn.replied = t.replied();
                            valid
                        }
                        None => false,
                    },
                    (Transport::Tcp(_), false) | (_, true) => false,
                    (_, false) => {
                        conn.replied |= reply;
                        true
                    }
                };
                if !valid {
                    return Tracked::invalid(zone);
                }
                conn.expires_ms = now_ms + conn.timeout_ms();
                if let Some(c) = commit {
                    conn.apply(c);
                }
                let mut state = ct_state::TRACKED;
                state |= if conn.replied {
                    ct_state::ESTABLISHED
                } else {
                    ct_state::NEW
                };
                if reply {
                    state |= ct_state::REPLY;
                }
                let tracked = conn.tracked(state, if reply { key.reverse() } else { *key });
                if conn.is_closed() && !conn.listed_closed {
                    conn.listed_closed = true;
                    let entry = (conn.key, u64::from(conn.hash));
                    shard.closed.push_back(entry);
                }
                return tracked;
            }
            // A new SYN on a closed connection's ports, or a forced commit against the
            // connection's direction: the old one is over.
            shard.remove(slot, removed);
        }
        // No connection yet: may this packet open one?
        let tcp = match &pkt.transport {
            Transport::Tcp(seg) if TcpConn::can_open(seg) => Some(TcpConn::new(seg)),
            Transport::Tcp(_) => return Tracked::invalid(zone),
            Transport::Echo if !packet::is_echo_request(key.proto(), key.icmp_type()) => {
                return Tracked::invalid(zone)
            }
            _ => None,
        };
        let mut conn = Conn::new(*key, hash, tcp);
        conn.expires_ms = now_ms + conn.timeout_ms();
        let state = ct_state::TRACKED | ct_state::NEW;
        let Some(c) = commit else {
            return Tracked {
                stored: false,
                ..conn.tracked(state, *key)
            };
        };
        conn.apply(c);
        if !self.make_room(&mut shard, shard_index, zone, removed) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Tracked::invalid(zone);
        }
        let tracked = conn.tracked(state, *key);
        shard.insert(conn);
        self.count.fetch_add(1, Ordering::Relaxed);
        *lock(&self.zone_counts).entry(zone).or_insert(0) += 1;
        self.counters.committed.fetch_add(1, Ordering::Relaxed);
        tracked
    }

    /// Whether a connection in `zone` may be added, evicting a closed one if a limit is
    /// reached.
    fn make_room(&self, shard: &mut Shard, index: usize, zone: u16, removed: &mut Removed) -> bool {
        let limits = self.limits.read().unwrap_or_else(|e| e.into_inner());
        let pending = removed.0.len();
        let total = self.len().saturating_sub(pending);
        if total >= limits.max_connections {
            if !self.evict(shard, index, None, removed) {
                return false;
            }
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(&zone_max) = limits.zones.get(&zone) {
            let pending_here = removed.0.iter().filter(|z| **z == zone).count();
            let in_zone = lock(&self.zone_counts)
                .get(&zone)
                .copied()
                .unwrap_or(0)
                .saturating_sub(pending_here);
            if in_zone >= zone_max {
                if !self.evict(shard, index, Some(zone), removed) {
                    return false;
                }
                self.counters.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Removes connections idle past their timeout; how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        let n = self.remove_where(|c| c.expires_ms <= now_ms);
        self.counters.expired.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Removes every connection (of `zone`, if given); how many.
    pub fn flush(&self, zone: Option<u16>) -> usize {
        self.remove_where(|c| zone.is_none_or(|z| z == c.key.zone()))
    }

    fn remove_where(&self, which: impl Fn(&Conn) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.shards.len() {
            let mut removed = Removed::default();
            self.write(i).remove_where(&which, &mut removed);
            n += removed.0.len();
            self.uncount(removed);
        }
        n
    }

    /// Every connection (of `zone`, if given).
    pub fn dump(&self, zone: Option<u16>, now_ms: u64) -> Vec<ConnInfo> {
        // Copied under each shard's lock (a spin lock the dataplane waits on), made into
        // text after it.
        let mut raw = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            raw.extend(
                shard
                    .iter()
                    .filter(|c| zone.is_none_or(|z| z == c.key.zone()) && c.expires_ms > now_ms)
                    .map(|c| {
                        let state = match (&c.tcp, c.replied) {
                            (Some(t), _) => tcp_state_name(t),
                            (None, true) => "REPLIED",
                            (None, false) => "UNREPLIED",
                        };
                        (c.key, state, c.mark, c.label, c.expires_ms)
                    }),
            );
        }
        let mut out: Vec<ConnInfo> = raw
            .into_iter()
            .map(|(orig, state, mark, label, expires_ms)| ConnInfo {
                zone: orig.zone(),
                proto: orig.proto(),
                src: orig.src(),
                dst: orig.dst(),
                sport: orig.sport(),
                dport: orig.dport(),
                state: state.to_string(),
                mark,
                label,
                expires_in_s: (expires_ms - now_ms).div_ceil(1000),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.zone, a.proto, a.src, a.sport, a.dst, a.dport)
                .cmp(&(b.zone, b.proto, b.src, b.sport, b.dst, b.dport))
        });
        out
    }
}

/// The state of a TCP connection as conntrack tools name it.
fn tcp_state_name(t: &TcpConn) -> &'static str {
    use tcp::PeerState as P;
    match (t.state(0), t.state(1)) {
        (P::TimeWait, _) | (_, P::TimeWait) => "CLOSE",
        (a, b) if a >= P::FinWait2 && b >= P::FinWait2 => "TIME_WAIT",
        (a, b) if a >= P::Closing || b >= P::Closing => "FIN_WAIT",
        (P::SynSent, P::Closed) => "SYN_SENT",
        (_, P::SynSent) | (P::SynSent, _) => "SYN_RECV",
        _ => "ESTABLISHED",
    }
}

/// A lock whose holder panicked is still usable: every change under it is complete or
/// not started.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
