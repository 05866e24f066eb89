//! `peers-chart SUMMARY.csv OUT.svg [TITLE]`: draws the summary that `benches/peers.sh` writes
//! as a grouped bar chart (see `patchbay_benches::chart`).

use std::process::ExitCode;

use patchbay_benches::chart::{parse_summary, render_svg};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(csv), Some(svg)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: peers-chart SUMMARY.csv OUT.svg [TITLE]");
        return ExitCode::from(2);
    };
    let title = args
        .get(3)
        .map_or("Patchbay beside its peers (Mpps)", String::as_str);
    let text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("peers-chart: cannot read {csv}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = match parse_summary(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peers-chart: {csv}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(svg, render_svg(&rows, title)) {
        eprintln!("peers-chart: cannot write {svg}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
