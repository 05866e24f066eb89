//! Executing actions, one module per family, so a reader finds each family's execution in
//! one place; the pipeline (`pipeline.rs`) walks the tables (`resubmit`, `goto_table`) and
//! its `run_actions` dispatches each action to these.
//!
//! - `output.rs`: the copies that leave (`output:PORT`, `in_port`, `flood`, `all`, `normal`).
//! - `header.rs`: header rewrites (VLAN, Ethernet, IPv4, L4 ports, TTL, tunnel ID).
//! - `fields.rs`: `load` and `move` on registers, metadata and header fields.
//! - `ct.rs`: `ct` and `ct_clear`: the lookup, the fork of `ct(table=...)`, the ct fields.
//! - `group.rs`: running a group's chosen buckets, each on a copy of the packet.
//! - `meter.rs`: a meter admitting the packet or stopping its run.
//! - `learn.rs`: the flow `learn` makes from a packet.
//!
//! Groups' buckets are chosen in `flow/group.rs` and meters' token buckets kept in
//! `flow/meter.rs`.

pub mod ct;
pub mod fields;
pub mod group;
pub mod header;
pub mod learn;
pub mod meter;
pub mod output;

use super::key::FlowKey;
use super::pipeline::{Halt, MAX_RESUBMITS};
use super::rewrite::{HeaderBuf, Matched};

/// A packet on its way through the tables.
#[derive(Clone, Copy)]
pub struct ExecState<'a> {
    /// The fields later tables match (rewritten as the actions go).
    pub key: FlowKey,
    /// The frame's first bytes as the tables read them (the caller's copy).
    pub matched: Matched<'a>,
    /// The header buffer, made from `matched` when an action first rewrites it.
    pub header: Option<HeaderBuf>,
    /// Whether the header differs from the frame's.
    pub modified: bool,
    /// A tunnel ID set by the actions.
    pub tun_id: Option<u64>,
    pub frame_len: u32,
    pub now_ms: u64,
    /// Resubmits and goto_tables taken so far.
    pub resubmits: usize,
    /// A trace: `ct(commit)` only looks, and stores nothing.
    pub tracing: bool,
    /// What the last `ct` found, and in which zone, while the header is as it saw it: a
    /// second `ct` of the packet in that zone (the `ct(commit)` after `ct(table=...)`) needs
    /// no second lookup unless it has a connection to store or a mark to set.
    pub last_tracked: Option<(u16, crate::conntrack::Tracked)>,
    /// Whether the run so far depends on nothing but the key and the tables' version (no
    /// `ct`, `meter`, `learn` or `group`, which read or change state outside the packet or
    /// count per packet): such a run may be replayed for the next frame with the same key.
    pub replayable: bool,
}

impl ExecState<'_> {
    /// The header buffer to rewrite (made on first use).
    pub fn header_mut(&mut self) -> &mut HeaderBuf {
        let matched = self.matched;
        self.header.get_or_insert_with(|| matched.to_buf())
    }

    /// The packet's first bytes as the actions have left them so far (read, not copied).
    pub fn header_bytes(&self) -> &[u8] {
        match &self.header {
            Some(h) => h.bytes(),
            None => self.matched.bytes,
        }
    }

    pub fn count_resubmit(&mut self) -> Result<(), Halt> {
        self.resubmits += 1;
        if self.resubmits > MAX_RESUBMITS {
            return Err(Halt::ResubmitLimit);
        }
        Ok(())
    }
}
