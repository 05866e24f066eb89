//! `learn`: the flow a packet makes (`pipeline.rs` adds it at the end of the batch, or
//! refreshes it if the table has it).

use super::fields::read;
use crate::flow::action::{Action, LearnSpec, PortRef};
use crate::flow::key::{FlowKey, Match};
use crate::flow::pipeline::Flow;

/// The flow `learn(spec)` makes from a packet with key `key`.
pub fn learned_flow(spec: &LearnSpec, key: &FlowKey) -> Flow {
    use crate::flow::action::{LearnAction, LearnMatch};
    let mut m = Match::any();
    for lm in &spec.matches {
        let (dst, value) = match *lm {
            LearnMatch::Field { dst, src } => (dst, read(key, src)),
            LearnMatch::Value { dst, value } => (dst, value),
        };
        m.set(dst.field, value << dst.ofs, dst.mask());
    }
    let actions: Vec<Action> = spec
        .actions
        .iter()
        .filter_map(|a| match *a {
            LearnAction::LoadField { dst, src } => Some(Action::Load {
                dst,
                value: read(key, src),
            }),
            LearnAction::LoadValue { dst, value } => Some(Action::Load { dst, value }),
            // A value that is no port number (wider than 16 bits) outputs nowhere, rather
            // than to the port its low bits name.
            LearnAction::Output { src } => u16::try_from(read(key, src))
                .ok()
                .map(|p| Action::Output(PortRef::Number(p))),
        })
        .collect();
    let mut text = crate::flow::parse::FlowSpec::new(crate::flow::parse::FlowSyntax::Add);
    text.table = Some(0);
    text.priority = spec.priority;
    text.m = m;
    text.actions = actions.clone();
    let text = text.to_string();
    let (match_text, actions_text) = match text.split_once(" actions=") {
        Some((mt, at)) => (mt.trim().to_string(), at.trim().to_string()),
        None => (
            String::new(),
            text.trim_start_matches("actions=").to_string(),
        ),
    };
    Flow {
        table: spec.table,
        priority: spec.priority,
        m,
        actions,
        cookie: spec.cookie,
        idle_timeout: spec.idle_timeout,
        hard_timeout: spec.hard_timeout,
        match_text,
        actions_text,
    }
}
