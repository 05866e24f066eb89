//! The ovs-ofctl flow syntax on arbitrary text. The first byte picks the syntax (add-flow,
//! del/dump-flows filter, mod-flows); the rest is the flow. A flow that parses prints to text
//! that parses to the same flow and prints the same again; a rules file of the same text
//! never panics either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_switch::flow::parse::{parse_flow, parse_flows_file, FlowSyntax};

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let syntax = match which % 3 {
        0 => FlowSyntax::Add,
        1 => FlowSyntax::MatchOnly,
        _ => FlowSyntax::Modify,
    };
    if let Ok(spec) = parse_flow(text, syntax) {
        let printed = spec.to_string();
        match parse_flow(&printed, syntax) {
            Ok(again) => {
                assert_eq!(
                    again, spec,
                    "{text:?} printed as {printed:?} parses differently"
                );
                assert_eq!(
                    again.to_string(),
                    printed,
                    "printing {text:?} is not stable"
                );
            }
            Err(e) => panic!("{text:?} printed as {printed:?} does not parse: {e}"),
        }
        // Resolving names never panics, whatever they are.
        let _ = spec.resolve(|name| u16::try_from(name.len()).ok());
    }
    let _ = parse_flows_file(text);
});
