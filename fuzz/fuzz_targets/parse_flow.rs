//! The ovs-ofctl flow syntax on arbitrary text. The first byte picks the syntax (add-flow,
//! del/dump-flows filter, mod-flows; 3 and 4: add-group and add-meter); the rest is the
//! text. A flow (group, meter) that parses prints to text that parses to the same thing and
//! prints the same again; a rules file of the same text never panics either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_switch::flow::parse::{
    format_group, format_meter, parse_flow, parse_flows_file, parse_group, parse_meter,
    FlowSyntax,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match which % 5 {
        3 => {
            if let Ok(g) = parse_group(text) {
                let printed = format_group(&g);
                assert_eq!(parse_group(&printed).as_ref(), Ok(&g), "{text:?} -> {printed:?}");
            }
            return;
        }
        4 => {
            if let Ok(m) = parse_meter(text) {
                let printed = format_meter(&m);
                assert_eq!(parse_meter(&printed).as_ref(), Ok(&m), "{text:?} -> {printed:?}");
            }
            return;
        }
        _ => {}
    }
    let syntax = match which % 5 {
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
