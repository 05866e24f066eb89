//! Header-changing flow actions on arbitrary frames: two flows (table 0, and table 1 that the
//! first may resubmit or go to) with action lists built from the input, run through the
//! pipeline on the frame that makes up the rest of the input, as the frame path does (the
//! frame's first `REWRITE_BYTES` in a `HeaderBuf`). Checks: nothing panics, every output's
//! header fits its buffer and replaces exactly the bytes read, and an IPv4 header whose
//! checksum was valid is still valid after the actions (they patch it incrementally), and
//! the frame path's run of the same frame twice in one batch (the second replayed where the
//! first allows it) leaves exactly as the plain run does.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use patchbay_fuzz::Reader;
use patchbay_switch::flow::extract::{flow_key, l3_offset};
use patchbay_switch::flow::pipeline::{
    Flow, FlowThread, MissPolicy, Output, Pipeline, MAX_OUTPUTS,
};
use patchbay_switch::flow::rewrite::{HeaderBuf, Matched, MAX_PUSHED_TAGS, REWRITE_BYTES};
use patchbay_switch::flow::{Action, Field, Match, PortRef};

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::new(MissPolicy::Normal))
}

fn mac(r: &mut Reader<'_>) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.iter_mut().for_each(|b| *b = r.u8());
    m
}

/// One action from the input. `resubmits` bounds resubmits per list to one: two in one flow
/// that resubmits to its own table recurse 2^64 times (see the report in fuzz/README.md).
fn action(r: &mut Reader<'_>, table: u8, resubmits: &mut u32) -> Action {
    match r.u8() % 24 {
        0 => Action::Output(PortRef::Number(r.u16() % 4)),
        1 => Action::InPort,
        2 => Action::Flood,
        3 => Action::Normal,
        4 => Action::SetVlanVid(r.u16() & 0x0fff),
        5 => Action::SetVlanPcp(r.u8() & 7),
        6 => Action::StripVlan,
        7 => Action::PushVlan(if r.u8() & 1 == 0 { 0x8100 } else { 0x88a8 }),
        8 => Action::SetDlSrc(mac(r)),
        9 => Action::SetDlDst(mac(r)),
        10 => Action::SetNwSrc(Ipv4Addr::from(r.u32())),
        11 => Action::SetNwDst(Ipv4Addr::from(r.u32())),
        12 => Action::SetNwTos(r.u8()),
        13 => Action::SetTpSrc(r.u16()),
        14 => Action::SetTpDst(r.u16()),
        15 => Action::DecTtl,
        16 => {
            let field = Field::ALL[usize::from(r.u8()) % Field::ALL.len()];
            Action::SetField {
                field,
                value: r.u64() & field.full_mask(),
            }
        }
        17 => Action::SetTunnel(u64::from(r.u32())),
        18 if *resubmits == 0 => {
            *resubmits += 1;
            Action::Resubmit {
                port: None,
                table: Some(1),
            }
        }
        19 if table == 0 => Action::GotoTable(1),
        20 => Action::SetNwTtl(r.u8()),
        21 => {
            let mut a = [0u8; 16];
            a.iter_mut().for_each(|b| *b = r.u8());
            if r.u8() & 1 == 0 {
                Action::SetIpv6Src(a.into())
            } else {
                Action::SetIpv6Dst(a.into())
            }
        }
        22 => Action::SetArp {
            field: [
                Field::NwProto,
                Field::NwSrc,
                Field::NwDst,
                Field::ArpSha,
                Field::ArpTha,
            ][usize::from(r.u8()) % 5],
            value: r.u64(),
        },
        23 => Action::Load {
            dst: patchbay_switch::flow::SubField {
                field: Field::Reg(r.u8() % 16),
                ofs: r.u8() % 32,
                n_bits: 1,
            },
            value: u64::from(r.u8() & 1),
        },
        _ => Action::Output(PortRef::Number(1)),
    }
}

fn flow(r: &mut Reader<'_>, table: u8) -> Flow {
    let n = r.u8() % 8;
    let mut resubmits = 0;
    let mut actions: Vec<Action> = (0..n).map(|_| action(r, table, &mut resubmits)).collect();
    // goto_table must be the last action.
    if let Some(i) = actions
        .iter()
        .position(|a| matches!(a, Action::GotoTable(_)))
    {
        actions.truncate(i + 1);
    }
    Flow {
        table,
        priority: 100,
        m: Match::any(),
        actions,
        cookie: 0,
        idle_timeout: 0,
        hard_timeout: 0,
        match_text: String::new(),
        actions_text: String::new(),
    }
}

/// Whether the IPv4 header (if the buffer holds one whole) has a valid checksum.
fn ipv4_checksum_ok(b: &[u8]) -> Option<bool> {
    let (l3, ethertype) = l3_offset(b)?;
    if ethertype != 0x0800 || b.len() < l3 + 20 || b[l3] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[l3] & 0x0f) * 4;
    if ihl < 20 || b.len() < l3 + ihl {
        return None;
    }
    let mut sum: u32 = b[l3..l3 + ihl]
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Some(sum == 0xffff)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flows = vec![flow(&mut r, 0), flow(&mut r, 1)];
    let frame = r.rest();
    if frame.len() < 14 {
        return; // the frame path drops runts before the flow tables
    }
    let p = pipeline();
    p.replace_all(flows).expect("generated flows are valid");
    let tables = p.snapshot();
    let prefix = &frame[..frame.len().min(REWRITE_BYTES)];
    let key = flow_key(prefix, 1, None);
    let mut outputs = Vec::new();
    p.run(
        &tables,
        &key,
        HeaderBuf::new(prefix),
        frame.len() as u32,
        &mut outputs,
        None,
    );
    assert!(outputs.len() <= MAX_OUTPUTS);
    // Where a copy goes and what it leaves with.
    let leaving = |outs: &[Output]| -> Vec<_> {
        outs.iter()
            .map(|o| (o.target, o.tun_id, o.header_bytes(prefix).to_vec()))
            .collect()
    };
    let mut thread = FlowThread::default();
    p.begin_batch(&mut thread);
    for _ in 0..2 {
        let mut again = Vec::new();
        p.run_frame(
            &tables,
            &key,
            Matched {
                bytes: prefix,
                partial_csum_at: None,
            },
            frame.len() as u32,
            &mut again,
            &mut thread,
        );
        assert_eq!(
            leaving(&again),
            leaving(&outputs),
            "the frame path's run differs"
        );
    }
    p.flush(&mut thread);
    let checksum_before = ipv4_checksum_ok(prefix);
    for out in &outputs {
        // Unmodified: the frame leaves with the bytes the tables read (`prefix`).
        let Some(h) = &out.header else {
            continue;
        };
        assert_eq!(h.skip(), prefix.len(), "an output replaces the bytes read");
        assert!(h.bytes().len() <= REWRITE_BYTES + 4 * MAX_PUSHED_TAGS);
        assert_eq!(
            h.out_len(frame.len() as u32) as usize,
            frame.len() + h.bytes().len() - h.skip()
        );
        if checksum_before == Some(true) {
            assert_ne!(
                ipv4_checksum_ok(h.bytes()),
                Some(false),
                "IPv4 checksum broken by actions; header {:02x?}",
                h.bytes()
            );
        }
    }
});
