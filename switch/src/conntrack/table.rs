//! One shard of the connection table: a slab of connections and one hash map from both
//! directions' keys to their slot. Keys are packed into five words and hashed with a keyed,
//! direction-independent hash computed once per packet: the same hash picks the shard and
//! probes the map (both directions of a connection share it), so a lookup is one cheap hash
//! and one probe. (A general-purpose hasher over the `IpAddr`s, a map per direction and a
//! separate hash for the shard cost a fifth of the tracked path, measured.)

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;

use super::packet::ConnKey;
use super::{Conn, Removed};
use crate::prehash::{folded_multiply, PreHashed};

/// A [`ConnKey`] as six words: addresses as IPv6 (IPv4 mapped), then zone, protocol, ICMP
/// type and ports, then the address family (so an IPv6 packet with IPv4-mapped addresses is
/// not an IPv4 connection's).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Packed([u64; 6]);

fn words(ip: IpAddr) -> (u64, u64) {
    let v = match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    ((v >> 64) as u64, v as u64)
}

impl Packed {
    pub(super) fn of(k: &ConnKey) -> Packed {
        let (sh, sl) = words(k.src);
        let (dh, dl) = words(k.dst);
        let meta = (u64::from(k.zone) << 48)
            | (u64::from(k.proto) << 40)
            | (u64::from(k.icmp_type) << 32)
            | (u64::from(k.sport) << 16)
            | u64::from(k.dport);
        let v6 = u64::from(matches!(k.src, IpAddr::V6(_)));
        Packed([sh, sl, dh, dl, meta, v6])
    }
}

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
pub(super) fn hash(p: &Packed, s: &Seeds) -> u64 {
    let [sh, sl, dh, dl, meta, v6] = p.0;
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

/// A key with its hash, for the map (which then hashes only that word).
#[derive(Clone, Copy, PartialEq, Eq)]
struct HKey {
    hash: u64,
    key: Packed,
}

impl Hash for HKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The slot's index, and this bit when the key is the reply direction's.
const REPLY: u32 = 1 << 31;

#[derive(Default)]
pub(super) struct Shard {
    index: HashMap<HKey, u32, BuildHasherDefault<PreHashed>>,
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// Original keys (and hashes) of connections as they closed, oldest first (some may be
    /// gone).
    pub(super) closed: VecDeque<(ConnKey, u64)>,
}

impl Shard {
    /// The slot of the connection `key` (of hash `hash`) belongs to, and whether `key` is
    /// its reply direction. An expired connection is removed and not found.
    #[inline]
    pub(super) fn find(
        &mut self,
        key: &Packed,
        hash: u64,
        now_ms: u64,
        removed: &mut Removed,
    ) -> Option<(u32, bool)> {
        let v = *self.index.get(&HKey { hash, key: *key })?;
        let slot = v & !REPLY;
        if self.get(slot)?.expires_ms <= now_ms {
            self.remove(slot, removed);
            return None;
        }
        Some((slot, v & REPLY != 0))
    }

    pub(super) fn get(&self, slot: u32) -> Option<&Conn> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The slot of the connection whose original direction is `orig`.
    fn slot_of(&self, orig: &ConnKey, hash: u64) -> Option<u32> {
        let v = *self.index.get(&HKey {
            hash,
            key: Packed::of(orig),
        })?;
        (v & REPLY == 0).then_some(v)
    }

    pub(super) fn remove(&mut self, slot: u32, removed: &mut Removed) -> bool {
        let Some(conn) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return false;
        };
        for key in [conn.orig, conn.orig.reverse()] {
            self.index.remove(&HKey {
                hash: conn.hash,
                key: Packed::of(&key),
            });
        }
        self.free.push(slot);
        removed.push(conn.orig.zone);
        true
    }

    pub(super) fn insert(&mut self, conn: Conn) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let (hash, orig) = (conn.hash, conn.orig);
        self.index.insert(
            HKey {
                hash,
                key: Packed::of(&orig),
            },
            slot,
        );
        // A connection whose two directions are the same key (an address talking to itself
        // from and to one port) has only its original direction.
        if orig.reverse() != orig {
            self.index.insert(
                HKey {
                    hash,
                    key: Packed::of(&orig.reverse()),
                },
                slot | REPLY,
            );
        }
        self.slots[slot as usize] = Some(conn);
    }

    /// Every connection.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.slots.iter().flatten()
    }

    /// Removes the connections `which` selects; how many.
    pub(super) fn remove_where(&mut self, which: impl Fn(&Conn) -> bool, removed: &mut Removed) {
        let gone: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(&which))
            .map(|(i, _)| i as u32)
            .collect();
        for slot in gone {
            self.remove(slot, removed);
        }
        let Shard { index, closed, .. } = self;
        closed.retain(|(k, hash)| {
            index
                .get(&HKey {
                    hash: *hash,
                    key: Packed::of(k),
                })
                .is_some_and(|v| v & REPLY == 0)
        });
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
            let slot = self.slot_of(&key, hash);
            let live_closed = slot
                .and_then(|s| self.get(s))
                .is_some_and(|c| c.is_closed());
            if !live_closed {
                self.closed.remove(i);
                continue;
            }
            if zone.is_some_and(|z| z != key.zone) {
                i += 1;
                continue;
            }
            self.closed.remove(i);
            return slot.is_some_and(|s| self.remove(s, removed));
        }
        false
    }
}
