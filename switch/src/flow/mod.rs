//! OpenFlow-like flow tables: a pipeline of tables (0-254) whose entries match packet fields
//! with masks and apply actions, programmed with ovs-ofctl syntax. With no flows installed
//! the switch behaves as before (a table miss in table 0 goes to the learning switch).
//!
//! - `key.rs`: the packet fields a flow can match (`FlowKey`), and `Match` (values + masks).
//! - `action.rs`: what a flow does.
//! - `parse.rs`: ovs-ofctl text <-> flows, with errors that point at a column.
//! - `classifier.rs`: tuple-space search over masks, highest priority wins.

pub mod action;
pub mod classifier;
pub mod key;
pub mod parse;

pub use action::{Action, PortRef};
pub use key::{Field, FlowKey, Match};
pub mod extract;
pub mod pipeline;
pub mod rewrite;
