//! `add-meter` / `mod-meter` syntax: `meter=N,kbps|pktps[,burst][,stats],bands=type=drop,
//! rate=R[,burst_size=B]`; printed back the way `dump-meters` does.

use super::token::{err, Tokenizer};
use super::ParseError;
use crate::flow::meter::{Meter, MeterUnit};

fn number(line: &str, what: &str, s: &str, at: usize) -> Result<u32, ParseError> {
    s.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
        err(
            line,
            at,
            format!("{what}: '{s}' is not a number in 1-4294967295"),
        )
    })
}

/// Parses one meter.
pub fn parse_meter(line: &str) -> Result<Meter, ParseError> {
    let bands_at = line
        .find("bands=")
        .ok_or_else(|| err(line, line.len(), "a meter needs bands=type=drop,rate=R"))?;
    let mut id = None;
    let mut unit = MeterUnit::Kbps;
    let mut burst_flag = false;
    let mut items = Tokenizer {
        line,
        pos: 0,
        end: bands_at,
    };
    // A key given twice (or both units) is refused, not read as its last value.
    let mut seen: Vec<&str> = Vec::new();
    let mut once = |key: &'static str, at: usize| {
        if seen.contains(&key) {
            return Err(err(line, at, format!("{key} is given twice")));
        }
        seen.push(key);
        Ok(())
    };
    while let Some(t) = items.next(false)? {
        match t.key {
            "meter" => once("meter", t.at)?,
            "kbps" | "pktps" => once("kbps or pktps", t.at)?,
            "burst" => once("burst", t.at)?,
            _ => {}
        }
        match (t.key, t.value) {
            ("meter", Some((v, vat))) => id = Some(number(line, "meter", v, vat)?),
            ("kbps", None) => unit = MeterUnit::Kbps,
            ("pktps", None) => unit = MeterUnit::Pktps,
            ("burst", None) => burst_flag = true,
            ("stats", None) => {}
            (k, _) => return Err(err(line, t.at, format!("unsupported meter field '{k}'"))),
        }
    }
    let id = id.ok_or_else(|| err(line, 0, "a meter needs meter=N"))?;
    let mut items = Tokenizer {
        line,
        pos: bands_at + "bands=".len(),
        end: line.len(),
    };
    let (mut kind, mut rate, mut burst) = (None, None, None);
    while let Some(t) = items.next(false)? {
        match (t.key, rate, burst) {
            ("rate", Some(_), _) | ("burst_size", _, Some(_)) => {
                return Err(err(line, t.at, format!("{} is given twice", t.key)))
            }
            _ => {}
        }
        match (t.key, t.value) {
            ("type", Some((v, vat))) => {
                if kind.is_some() {
                    return Err(err(line, t.at, "only one band is supported"));
                }
                if v != "drop" {
                    return Err(err(
                        line,
                        vat,
                        format!("band type={v} is not supported (only drop)"),
                    ));
                }
                kind = Some(v);
            }
            ("rate", Some((v, vat))) => rate = Some(number(line, "rate", v, vat)?),
            ("burst_size", Some((v, vat))) => burst = Some(number(line, "burst_size", v, vat)?),
            (k, _) => return Err(err(line, t.at, format!("unsupported band field '{k}'"))),
        }
    }
    if kind.is_none() {
        return Err(err(line, bands_at, "a band needs type=drop"));
    }
    let rate = rate.ok_or_else(|| err(line, bands_at, "a band needs rate=R"))?;
    if burst.is_some() && !burst_flag {
        return Err(err(
            line,
            bands_at,
            "burst_size needs the meter's burst flag",
        ));
    }
    Ok(Meter {
        id,
        unit,
        rate,
        burst,
    })
}

/// A meter as `dump-meters` prints it.
pub fn format_meter(m: &Meter) -> String {
    let unit = match m.unit {
        MeterUnit::Kbps => "kbps",
        MeterUnit::Pktps => "pktps",
    };
    let mut s = format!("meter={},{unit}", m.id);
    if m.burst.is_some() {
        s.push_str(",burst");
    }
    s.push_str(&format!(",bands=type=drop,rate={}", m.rate));
    if let Some(b) = m.burst {
        s.push_str(&format!(",burst_size={b}"));
    }
    s
}
