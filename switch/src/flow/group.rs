//! Groups (`add-group`): a set of buckets of actions a flow's `group:N` action hands a packet
//! to. `all` runs every bucket on its own copy of the packet (flooding to a set of ports,
//! mirroring), `select` one bucket chosen by a hash of the packet's flow fields, weighted
//! (load balancing: a flow always takes the same bucket), `indirect` its one bucket (a
//! shared next hop), `fast_failover` the first bucket whose watched port is up (a backup
//! path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::action::Action;
use super::key::{Field, FlowKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupKind {
    All,
    Select,
    Indirect,
    FastFailover,
}

impl GroupKind {
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::All => "all",
            GroupKind::Select => "select",
            GroupKind::Indirect => "indirect",
            GroupKind::FastFailover => "fast_failover",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// For `select`: this bucket's share (default 1; 0 never chosen).
    pub weight: u16,
    /// For `fast_failover`: the port whose link decides whether the bucket is live (none:
    /// always live). Names are resolved when the group is added.
    pub watch_port: Option<super::action::PortRef>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Group {
    pub id: u32,
    pub kind: GroupKind,
    pub buckets: Vec<Bucket>,
}

/// A group's counters, shared by every table version it is in.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

/// A group in the tables: its definition and counters.
#[derive(Debug, Clone)]
pub struct GroupEntry {
    pub group: Arc<Group>,
    pub stats: Arc<GroupStats>,
}

impl GroupEntry {
    pub fn count(&self, bytes: u32) {
        self.stats.packets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(u64::from(bytes), Ordering::Relaxed);
    }
}

impl Group {
    /// The bucket a `fast_failover` group gives a packet: the first whose watched port is up
    /// (`live` says which are).
    pub fn first_live(&self, live: impl Fn(u16) -> bool) -> Option<&Bucket> {
        self.buckets.iter().find(|b| match &b.watch_port {
            None => true,
            Some(super::action::PortRef::Number(p)) => live(*p),
            Some(super::action::PortRef::Name(_)) => false,
        })
    }

    /// The bucket a `select` group gives this packet: a hash of its addresses, protocol and
    /// ports (the same for every packet of a flow), spread by weight.
    pub fn select(&self, key: &FlowKey) -> Option<&Bucket> {
        let total: u64 = self.buckets.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for f in [
            Field::DlSrc,
            Field::DlDst,
            Field::DlType,
            Field::NwSrc,
            Field::NwDst,
            Field::NwProto,
            Field::TpSrc,
            Field::TpDst,
            Field::Ipv6SrcLo,
            Field::Ipv6DstLo,
        ] {
            h = (h ^ key.get(f))
                .wrapping_mul(0x100_0000_01b3)
                .rotate_left(29);
        }
        let mut pick = h % total;
        for b in &self.buckets {
            let w = u64::from(b.weight);
            if pick < w {
                return Some(b);
            }
            pick -= w;
        }
        None
    }
}
