//! The peers benchmark's chart: a grouped bar chart (SVG) of the summary CSV that
//! `benches/peers.sh` writes, one group per variant, frame size and traffic mode, one bar per
//! case (testpmd, OVS-DPDK, Patchbay...), so a reader sees the comparison at a glance.
//!
//! Hand-written SVG rather than plotters: a bar chart is a few rectangles and labels, and
//! plotters' text layout needs a font backend (fontconfig or a bundled font) that a fresh
//! machine would have to install for the benchmark to draw anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One row of the summary CSV: a case's median over rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub variant: String,
    pub size: String,
    pub mode: String,
    pub case: String,
    pub mpps: f64,
    /// CPU share the switch process got, percent of one core.
    pub switch_cpu: f64,
}

/// The columns the summary CSV starts with (peers.sh writes more after them).
pub const CSV_HEADER: &str = "variant,size,mode,case,mpps,gbps,x_testpmd,x_ovs,sent_mpps,\
switch_cpu,source_cpu,other_cpu,idle_cpu,rss_mib,rounds,failed";

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("line {line}: {message}")]
    Csv { line: usize, message: String },
    #[error("no measurement in the CSV (every case failed?)")]
    Empty,
}

/// Parses the summary CSV; rows of failed cases (no Mpps) are left out.
pub fn parse_summary(text: &str) -> Result<Vec<SummaryRow>, ChartError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.split(',').collect(),
        None => return Err(ChartError::Empty),
    };
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| ChartError::Csv {
                line: 1,
                message: format!("no column `{name}`"),
            })
    };
    let idx = [
        column("variant")?,
        column("size")?,
        column("mode")?,
        column("case")?,
        column("mpps")?,
        column("switch_cpu")?,
    ];
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let get = |k: usize| {
            f.get(idx[k]).copied().ok_or_else(|| ChartError::Csv {
                line: i + 1,
                message: format!("{} fields, expected {}", f.len(), header.len()),
            })
        };
        let Ok(mpps) = get(4)?.parse::<f64>() else {
            continue; // a failed case: "-"
        };
        rows.push(SummaryRow {
            variant: get(0)?.to_string(),
            size: get(1)?.to_string(),
            mode: get(2)?.to_string(),
            case: get(3)?.to_string(),
            mpps,
            switch_cpu: get(5)?.parse().unwrap_or(f64::NAN),
        });
    }
    if rows.is_empty() {
        return Err(ChartError::Empty);
    }
    Ok(rows)
}

/// Distinct colours for up to eight cases, then repeated.
const PALETTE: [&str; 8] = [
    "#7f7f7f", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round step for `max` over about five grid lines.
fn grid_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Draws the rows as an SVG grouped bar chart titled `title`.
pub fn render_svg(rows: &[SummaryRow], title: &str) -> String {
    // Groups and cases in their order of first appearance (peers.sh's order).
    let mut groups: Vec<(String, String, String)> = Vec::new();
    let mut cases: Vec<String> = Vec::new();
    let mut value: BTreeMap<(usize, usize), &SummaryRow> = BTreeMap::new();
    for r in rows {
        let g = (r.variant.clone(), r.size.clone(), r.mode.clone());
        let gi = groups.iter().position(|x| *x == g).unwrap_or_else(|| {
            groups.push(g);
            groups.len() - 1
        });
        let ci = cases.iter().position(|c| *c == r.case).unwrap_or_else(|| {
            cases.push(r.case.clone());
            cases.len() - 1
        });
        value.insert((gi, ci), r);
    }
    let bar = 26.0;
    let gap = 30.0;
    let left = 60.0;
    let top = 70.0;
    let plot_h = 300.0;
    let group_w = bar * cases.len() as f64 + gap;
    let width = (left + group_w * groups.len() as f64 + 20.0).max(480.0);
    let height = top + plot_h + 70.0;
    let max = rows.iter().map(|r| r.mpps).fold(0.0, f64::max).max(0.001);
    let step = grid_step(max);
    let y_max = (max / step).ceil() * step;
    let y = |v: f64| top + plot_h - plot_h * v / y_max;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Grid and axis labels.
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            width - 10.0,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0,
            format_value(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">Mpps</text>"#,
        top + plot_h / 2.0
    );
    // Legend.
    let mut lx = left;
    for (ci, case) in cases.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="36" width="12" height="12" fill="{}"/><text x="{:.1}" y="46">{}</text>"#,
            PALETTE[ci % PALETTE.len()],
            lx + 16.0,
            escape(case)
        );
        lx += 24.0 + 7.0 * case.len() as f64;
    }
    // Bars, with the value and the switch's CPU share above each.
    for (gi, (variant, size, mode)) in groups.iter().enumerate() {
        let gx = left + gap / 2.0 + group_w * gi as f64;
        for (ci, _) in cases.iter().enumerate() {
            let Some(r) = value.get(&(gi, ci)) else {
                continue;
            };
            let x = gx + bar * ci as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {:.3} Mpps, switch CPU {:.0}%</title></rect>"#,
                y(r.mpps),
                bar - 2.0,
                (top + plot_h - y(r.mpps)).max(0.0),
                PALETTE[ci % PALETTE.len()],
                escape(&r.case),
                r.mpps,
                r.switch_cpu
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                x + (bar - 2.0) / 2.0,
                y(r.mpps) - 3.0,
                format_value(r.mpps)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} {} B {}</text>"#,
            gx + (group_w - gap) / 2.0,
            top + plot_h + 16.0,
            escape(variant),
            escape(size),
            escape(mode)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{:.1}" fill="#555">Median over rounds, both directions together; hover a bar for the switch's CPU share.</text>"##,
        height - 16.0
    );
    s.push_str("</svg>\n");
    s
}

fn format_value(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "variant,size,mode,case,mpps,gbps,x_testpmd,x_ovs,sent_mpps,switch_cpu,source_cpu,other_cpu,idle_cpu,rss_mib,rounds,failed
plain,64,mac,testpmd-io,16.5,8.45,1.00,3.00,16.6,100,100,3,100,40,2,0
plain,64,mac,ovs-dpdk,5.5,2.82,0.33,1.00,5.6,100,100,3,100,300,2,0
plain,64,mac,patchbay-poll,6.2,3.17,0.38,1.13,6.3,99,100,2,100,12,2,0
plain,64,mac,patchbay-event,-,-,-,-,-,-,-,-,-,-,2,2
vlan,1500,mac,ovs-dpdk,4.1,49.2,-,1.00,4.2,100,100,3,100,300,2,0
";

    #[test]
    fn parses_rows_and_leaves_failed_cases_out() {
        let rows = parse_summary(CSV).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[2].case, "patchbay-poll");
        assert_eq!(rows[2].mpps, 6.2);
        assert_eq!(rows[2].switch_cpu, 99.0);
    }

    #[test]
    fn a_csv_without_measurements_or_columns_is_an_error() {
        assert!(matches!(
            parse_summary(CSV.lines().next().unwrap()),
            Err(ChartError::Empty)
        ));
        assert!(matches!(
            parse_summary("variant,size\nplain,64\n"),
            Err(ChartError::Csv { line: 1, .. })
        ));
    }

    #[test]
    fn draws_a_bar_per_case_in_each_group_scaled_to_the_largest() {
        let rows = parse_summary(CSV).unwrap();
        let svg = render_svg(&rows, "peers <test>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("peers &lt;test&gt;"));
        // Four bars (the failed case has none), two group labels, three legend entries.
        assert_eq!(svg.matches("<title>").count(), 4);
        assert!(svg.contains(">plain 64 B mac<") && svg.contains(">vlan 1500 B mac<"));
        assert!(svg.contains(">patchbay-poll<") && !svg.contains(">patchbay-event<"));
        // The tallest bar (16.5 Mpps) reaches the top of a 20 Mpps axis at 5/4 of its height.
        assert!(svg.contains(">20.0<"), "{svg}");
        assert!(svg.contains(r#"height="247.5""#), "{svg}");
    }

    #[test]
    fn grid_steps_are_round() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(grid_step(16.5), 5.0));
        assert!(close(grid_step(4.0), 1.0));
        assert!(close(grid_step(0.9), 0.2));
    }
}
