//! OpenFlow-like flow tables: a pipeline of tables (0-254) whose entries match packet fields
//! with masks and apply actions, programmed with ovs-ofctl syntax. With no flows installed
//! the switch behaves as before (a table miss in table 0 goes to the learning switch).
//!
//! - `key.rs`: the packet fields a flow can match (`FlowKey`), and `Match` (values + masks).
//! - `action.rs`: what a flow does.
//! - `parse/`: ovs-ofctl text <-> flows, with errors that point at a column; one file per
//!   syntax family (tokens, values, match fields, actions, ct, learn, groups, meters).
//! - `classifier.rs`: tuple-space search over masks, highest priority wins.
//! - `pipeline.rs`: the tables, and a packet's walk through them; `exec/`: each family of
//!   actions executed, one module per family (outputs, header rewrites, load/move, ct,
//!   groups, meters, learn).
//! - `extract.rs`: a packet's key; `rewrite.rs`: its header as actions change it.

pub mod action;
pub mod classifier;
pub mod key;
pub mod parse;

pub use action::{Action, CtAction, CtZone, LearnAction, LearnMatch, LearnSpec, PortRef, SubField};
pub use key::{Field, FlowKey, Match};
pub mod exec;
pub mod extract;
pub mod group;
pub mod meter;
pub mod pipeline;
pub mod rewrite;
