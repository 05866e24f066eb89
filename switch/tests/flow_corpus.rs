//! The flow parser against real-world ovs-ofctl rules (tests/data/ovs-flows.txt, whose header
//! explains the format): supported rules must parse and round-trip through the canonical
//! text; the others must be rejected by an error that names what is not supported.

use patchbay_switch::flow::parse::{parse_flow, parse_flows_file, FlowSyntax};

const CORPUS: &str = include_str!("data/ovs-flows.txt");

struct Case<'a> {
    line: usize,
    /// The word the error must name, for rules expected to be rejected.
    expect_error: Option<&'a str>,
    syntax: FlowSyntax,
    rule: &'a str,
}

fn cases() -> Vec<Case<'static>> {
    let mut out = Vec::new();
    for (i, raw) in CORPUS.lines().enumerate() {
        let t = raw.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (expect_error, rest) = match t.strip_prefix('!') {
            Some(r) => {
                let (word, rest) = r.split_once(' ').expect("'!WORD RULE'");
                (Some(word), rest)
            }
            None => (None, raw),
        };
        let (syntax, rule) = match rest.trim_start().strip_prefix("~ ") {
            Some(r) => (FlowSyntax::MatchOnly, r),
            None => (FlowSyntax::Add, rest),
        };
        out.push(Case {
            line: i + 1,
            expect_error,
            syntax,
            rule,
        });
    }
    out
}

#[test]
fn flow_corpus_parses_round_trips_or_names_the_unsupported() {
    let mut accepted = 0;
    let mut rejected = 0;
    let mut failures = Vec::new();
    for c in cases() {
        let at = format!("line {}: {}", c.line, c.rule.trim());
        match (c.expect_error, parse_flow(c.rule, c.syntax)) {
            (None, Ok(spec)) => {
                let printed = spec.to_string();
                match parse_flow(&printed, c.syntax) {
                    Ok(again) if again == spec => {
                        if again.to_string() != printed {
                            failures.push(format!("{at}\n  printing is not stable: {printed}"));
                        }
                        accepted += 1;
                    }
                    Ok(again) => failures.push(format!(
                        "{at}\n  printed as {printed}\n  which parses differently: {again:?}"
                    )),
                    Err(e) => failures.push(format!("{at}\n  printed as {printed}: {e}")),
                }
            }
            (None, Err(e)) => failures.push(format!("{at}\n  {e}")),
            (Some(word), Ok(spec)) => failures.push(format!(
                "{at}\n  expected an error naming '{word}', parsed as {spec}"
            )),
            (Some(word), Err(e)) => {
                if e.message.to_lowercase().contains(&word.to_lowercase()) && e.column > 0 {
                    rejected += 1;
                } else {
                    failures.push(format!("{at}\n  expected an error naming '{word}': {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(accepted + rejected >= 140, "{accepted} + {rejected} rules");
    assert!(
        accepted >= 120 && rejected >= 10,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn flow_corpus_supported_rules_load_as_a_rules_file_and_resolve() {
    let rules: Vec<&str> = cases()
        .into_iter()
        .filter(|c| c.expect_error.is_none() && c.syntax == FlowSyntax::Add)
        .map(|c| c.rule)
        .collect();
    let text = rules.join("\n# a comment\n\n");
    let flows = parse_flows_file(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(flows.len(), rules.len());
    for f in &flows {
        // Every name resolves to a number (here: its length).
        let r = f.resolve(|name| Some(name.len() as u16)).unwrap();
        assert_eq!(
            r.in_port.is_some(),
            r.m.get(patchbay_switch::flow::Field::InPort).1 != 0
        );
    }
}
