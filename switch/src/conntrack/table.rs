//! One shard of the connection table: the connections themselves, in one open-addressed
//! array probed linearly from the slot their hash names. Keys (six words, as parsed) are
//! hashed with a keyed, direction-independent hash computed once per packet: the same hash
//! picks the shard and the slot, for both directions of a connection, so a lookup is one
//! cheap hash and (nearly always) one entry, whose first cache line holds the key and all
//! the state a packet of a connection without TCP state, mark or label reads.
//!
//! Why not a map crate: with 10 000 connections the table outgrows the caches, and a map
//! of keys to a slab of connections took two dependent cache misses per packet (the map's
//! bucket, then the slot), a quarter of the switch's time. Here a packet reads one entry,
//! whose address is known from its hash alone. (Asking for it a frame ahead, from a
//! quick read of the next frame's key, did not pay here with 10 000 connections, measured
//! twice.) Before that, a general-purpose hasher over the `IpAddr`s, a map per direction
//! and a separate hash for the shard cost a fifth of the tracked path, measured.

use std::collections::VecDeque;

use super::packet::ConnKey;
use super::{Conn, Removed};
use crate::prehash::folded_multiply;

/// Secret keys of [`hash`] (random per table, so that packets cannot be crafted to collide).
#[derive(Clone, Copy)]
pub(super) struct Seeds([u64; 6]);

impl Seeds {
    pub(super) fn random() -> Seeds {
        let s = ahash::RandomState::new();
        Seeds(std::array::from_fn(|i| s.hash_one(i as u64) | 1))
    }
}

/// The same for a key and its reverse: each endpoint (address and port) is hashed on its own
/// and the two added; the ICMP type, which differs between directions, is left out.
#[inline]
pub(super) fn hash(key: &ConnKey, s: &Seeds) -> u64 {
    let [sh, sl, dh, dl, meta, v6] = *key.words();
    let (sport, dport) = ((meta >> 16) & 0xffff, meta & 0xffff);
    // The port gets a multiply of its own: xored into an address word, a chosen address
    // could cancel it (and pile connections onto one hash).
    let endpoint = |hi: u64, lo: u64, port: u64| {
        folded_multiply(
            folded_multiply(hi ^ s.0[0], lo ^ s.0[1]) ^ port ^ s.0[4],
            s.0[5],
        )
    };
    let zone_proto = (meta >> 40) | (v6 << 24);
    let h = endpoint(sh, sl, sport).wrapping_add(endpoint(dh, dl, dport));
    folded_multiply(h ^ s.0[2], zone_proto ^ s.0[3])
}

/// Slots of a shard's first table (it doubles when more than half full).
const MIN_SLOTS: usize = 16;

/// Where `key` (of hash `hash`) is in `slots`, and whether it is its connection's reply
/// direction. The table is never more than half full, so a probe ends at an empty slot.
#[inline]
fn position(slots: &[Conn], key: &ConnKey, hash: u64) -> Option<(usize, bool)> {
    if slots.is_empty() {
        return None;
    }
    let mask = slots.len() - 1;
    let reverse = key.reverse();
    let mut i = hash as usize & mask;
    loop {
        let conn = &slots[i];
        if !conn.used {
            return None;
        }
        if conn.hash == hash as u32 {
            // A connection whose two directions are one key (an address talking to itself
            // from and to one port) is found in its original direction.
            if conn.key == *key {
                return Some((i, false));
            }
            if conn.key == reverse {
                return Some((i, true));
            }
        }
        i = (i + 1) & mask;
    }
}

/// The connections of one shard: open addressing with linear probing, a power of two
/// slots (or none), at most half of them full.
#[derive(Default)]
pub(super) struct Shard {
    slots: Vec<Conn>,
    len: usize,
    /// Original keys (and hashes) of connections as they closed, oldest first (some may be
    /// gone).
    pub(super) closed: VecDeque<(ConnKey, u64)>,
}

impl Shard {
    /// The slot of the connection `key` (of hash `hash`) belongs to, and whether `key` is
    /// its reply direction. An expired connection is removed and not found. A slot's
    /// number holds until the shard next changes.
    #[inline]
    pub(super) fn find(
        &mut self,
        key: &ConnKey,
        hash: u64,
        now_ms: u64,
        removed: &mut Removed,
    ) -> Option<(u32, bool)> {
        let (i, reply) = position(&self.slots, key, hash)?;
        if self.slots[i].expires_ms <= now_ms {
            self.remove(i as u32, removed);
            return None;
        }
        Some((i as u32, reply))
    }

    pub(super) fn get(&self, slot: u32) -> Option<&Conn> {
        self.slots.get(slot as usize).filter(|c| c.used)
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize).filter(|c| c.used)
    }

    /// Removes the connection in `slot`; whether there was one. Entries after it move back
    /// into the gap where their probe allows (so no probe meets a hole before its key).
    pub(super) fn remove(&mut self, slot: u32, removed: &mut Removed) -> bool {
        let mut hole = slot as usize;
        let Some(conn) = self.get_mut(slot) else {
            return false;
        };
        removed.push(conn.key.zone());
        *conn = Conn::EMPTY;
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let moved = &self.slots[next];
            if !moved.used {
                break;
            }
            let home = moved.hash as usize & mask;
            // It may fill the hole if the hole lies on its probe, from its home to it.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = std::mem::replace(&mut self.slots[next], Conn::EMPTY);
                hole = next;
            }
        }
        true
    }

    /// Stores a connection (the caller found none of its key); the table doubles first
    /// when it would be more than half full.
    pub(super) fn insert(&mut self, conn: Conn) {
        if (self.len + 1) * 2 > self.slots.len() {
            let slots = (self.slots.len() * 2).max(MIN_SLOTS);
            let old = std::mem::replace(&mut self.slots, vec![Conn::EMPTY; slots]);
            for conn in old.into_iter().filter(|c| c.used) {
                self.place(conn);
            }
        }
        self.place(conn);
        self.len += 1;
    }

    fn place(&mut self, conn: Conn) {
        let mask = self.slots.len() - 1;
        let mut i = conn.hash as usize & mask;
        while self.slots[i].used {
            i = (i + 1) & mask;
        }
        self.slots[i] = conn;
    }

    /// Every connection.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.slots.iter().filter(|c| c.used)
    }

    /// Removes the connections `which` selects.
    pub(super) fn remove_where(&mut self, which: impl Fn(&Conn) -> bool, removed: &mut Removed) {
        let gone: Vec<(ConnKey, u64)> = self
            .iter()
            .filter(|c| which(c))
            .map(|c| (c.key, u64::from(c.hash)))
            .collect();
        for (key, hash) in gone {
            if let Some((slot, _)) = position(&self.slots, &key, hash) {
                self.remove(slot as u32, removed);
            }
        }
        let Shard { slots, closed, .. } = self;
        closed.retain(|(key, hash)| position(slots, key, *hash).is_some_and(|(_, r)| !r));
    }

    /// Removes the oldest closed connection (of `zone`, if given, looking at no more than
    /// `scan` entries); whether one was found.
    pub(super) fn evict_closed(
        &mut self,
        zone: Option<u16>,
        scan: usize,
        removed: &mut Removed,
    ) -> bool {
        let mut scanned = 0;
        let mut i = 0;
        while i < self.closed.len() && scanned < scan {
            scanned += 1;
            let (key, hash) = self.closed[i];
            let slot = position(&self.slots, &key, hash)
                .filter(|(_, reply)| !reply)
                .map(|(s, _)| s as u32);
            let live_closed = slot
                .and_then(|s| self.get(s))
                .is_some_and(|c| c.is_closed());
            if !live_closed {
                self.closed.remove(i);
                continue;
            }
            if zone.is_some_and(|z| z != key.zone()) {
                i += 1;
                continue;
            }
            self.closed.remove(i);
            return slot.is_some_and(|s| self.remove(s, removed));
        }
        false
    }
}
