//! Connection tracking on arbitrary packets: a sequence of records, each a flags byte (bit 0:
//! commit with a mark, bits 1-2: the zone, bit 3: advance the clock 40 s and expire, bit 4:
//! force the commit), a length
//! byte, then that many bytes of an Ethernet frame's start. Checks that nothing panics, that
//! every packet comes back tracked, that the limits (8 connections, 3 in zone 1) hold, that
//! the per-zone counts add up to the total, and that a flush empties the table.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use patchbay_switch::conntrack::{ct_state, CommitOptions, Conntrack, Limits};

fuzz_target!(|data: &[u8]| {
    let ct = Conntrack::new(Limits {
        max_connections: 8,
        zones: HashMap::from([(1, 3)]),
    });
    let commit = CommitOptions {
        set_mark: Some((7, u32::MAX)),
        set_label: None,
        force: false,
    };
    let forced = CommitOptions {
        force: true,
        ..commit
    };
    let mut now = 0u64;
    let mut rest = data;
    while let [flags, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        if flags & 8 != 0 {
            now += 40_000;
            ct.expire(now);
        }
        let zone = u16::from((flags >> 1) & 3);
        let options = if flags & 0x10 != 0 { &forced } else { &commit };
        let t = ct.track(frame, zone, (flags & 1 != 0).then_some(options), now);
        assert_ne!(t.state & ct_state::TRACKED, 0);
        if t.state & ct_state::INVALID != 0 {
            assert_eq!(t.state, ct_state::TRACKED | ct_state::INVALID);
        } else {
            assert!(t.orig.is_some());
        }
        let zones = ct.zone_counts();
        assert!(ct.len() <= 8, "{} connections", ct.len());
        assert!(zones.get(&1).copied().unwrap_or(0) <= 3);
        assert_eq!(ct.len(), zones.values().sum::<usize>());
        assert!(ct.dump(None, now).len() <= ct.len());
    }
    ct.flush(None);
    assert!(ct.is_empty() && ct.zone_counts().is_empty());
});
