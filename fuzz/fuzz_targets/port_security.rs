//! Port security on arbitrary frames: the input is a checksum offload request (optional) and
//! the start of a frame a guest sent. Checks
//! that nothing panics, and that a frame whose source MAC is not the port's is never let
//! through (whatever follows the addresses).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use patchbay_switch::port_security::{PortSecurity, Violation, PREFIX};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

fn rules() -> &'static PortSecurity {
    static RULES: OnceLock<PortSecurity> = OnceLock::new();
    RULES.get_or_init(|| {
        PortSecurity::new(
            &["52:54:00:00:00:01".into()],
            &["10.0.0.1".into(), "fd00::/64".into()],
            false,
        )
        .expect("valid rules")
        .expect("rules")
    })
}

fuzz_target!(|data: &[u8]| {
    // A first byte with its low bit set: the next four are a checksum offload (start,
    // offset), the rest the frame.
    let (csum, data) = match data {
        [flags, a, b, c, d, rest @ ..] if flags & 1 == 1 => (
            Some((u16::from_le_bytes([*a, *b]), u16::from_le_bytes([*c, *d]))),
            rest,
        ),
        [_, rest @ ..] => (None, rest),
        [] => (None, data),
    };
    let frame = &data[..data.len().min(PREFIX)];
    let verdict = rules().check(frame, csum);
    if frame.len() >= 14 && frame[6..12] != MAC {
        assert_eq!(verdict, Err(Violation::SourceMac));
    }
});
