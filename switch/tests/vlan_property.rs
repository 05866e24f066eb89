//! Property: for any frame and any VLAN configuration of the ingress and egress ports, a frame
//! leaves on the VLAN it was classified into, and carries no VLAN tag the egress port's
//! policy did not put there.
//!
//! The frame path is modelled with the pure functions it uses: `L2Header::parse` reads the
//! frame, `VlanMode::classify` classifies it, `VlanMode::egress` and `egress_allowed` decide
//! whether (and how) it leaves a port, `Rewrite::for_egress` changes its first bytes. The frame that leaves is then
//! read the way a receiver on the egress port would: a tag is 0x8100 or 0x88a8 (802.1ad); a
//! priority tag (VID 0) carries no VLAN, so a receiver looks behind it.
//!
//! Frames: untagged, priority-tagged, single- and double-tagged with both TPIDs, VIDs including
//! 0 and 4095. Ports: all four modes with various VLAN sets. First every combination of a
//! small universe, then seeded random ones.

use patchbay_switch::dataplane::Rewrite;
use patchbay_switch::vlan::{egress_allowed, Egress, Vid, VlanMode, VlanSet};
use patchbay_switch::wire::L2Header;

const TPIDS: [u16; 2] = [0x8100, 0x88a8];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    tpid: u16,
    pcp: u8,
    vid: Vid,
}

fn build_frame(tags: &[Tag]) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1];
    for t in tags {
        f.extend_from_slice(&t.tpid.to_be_bytes());
        f.extend_from_slice(&((u16::from(t.pcp) << 13) | t.vid).to_be_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45; 46]);
    f
}

/// The leading tags of a frame as a receiver reads them.
fn tag_stack(frame: &[u8]) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut at = 12;
    while frame.len() >= at + 4 {
        let tpid = u16::from_be_bytes([frame[at], frame[at + 1]]);
        if !TPIDS.contains(&tpid) {
            break;
        }
        let tci = u16::from_be_bytes([frame[at + 2], frame[at + 3]]);
        tags.push(Tag {
            tpid,
            pcp: (tci >> 13) as u8,
            vid: tci & 0x0fff,
        });
        at += 4;
    }
    tags
}

/// The VLAN a receiver on a port of `mode` puts the frame in: the first tag with a VLAN ID
/// (looking behind priority tags), else the port's untagged VLAN.
fn vlan_on_the_wire(frame: &[u8], mode: &VlanMode) -> Result<Vid, String> {
    if let Some(t) = tag_stack(frame).iter().find(|t| t.vid != 0) {
        return Ok(t.vid);
    }
    match mode {
        VlanMode::Access { vlan } => Ok(*vlan),
        VlanMode::NativeUntagged { native, .. } => Ok(*native),
        _ => Err("leaves untagged through a port that sends only tagged frames".into()),
    }
}

/// What goes wrong with one frame between two ports, if anything.
fn check(frame: &[u8], ingress: &VlanMode, egress_mode: &VlanMode) -> Result<(), String> {
    let Ok(header) = L2Header::parse(frame) else {
        return Ok(()); // dropped as a runt
    };
    let Ok(class) = ingress.classify(&header) else {
        return Ok(()); // dropped by the ingress policy
    };
    let Some(egress) = egress_mode.egress(class.vid) else {
        return Ok(()); // not sent to this port
    };
    if !egress_allowed(&header, egress) {
        return Ok(()); // dropped: it would expose an inner tag
    }
    let rewrite = Rewrite::for_egress(&header, class, egress);
    let mut out = rewrite.prefix().to_vec();
    out.extend_from_slice(&frame[usize::from(rewrite.skip)..]);
    let tags = tag_stack(&out);
    let on_wire = vlan_on_the_wire(&out, egress_mode)?;
    if on_wire != class.vid {
        return Err(format!(
            "classified into VLAN {} but leaves on VLAN {on_wire}",
            class.vid
        ));
    }
    match egress {
        Egress::Tagged => {
            let outer = tags.first().copied();
            if outer.map(|t| (t.tpid, t.vid)) != Some((0x8100, class.vid)) {
                return Err(format!("tagged egress with outer tag {outer:?}"));
            }
        }
        Egress::Untagged => {
            if let Some(t) = tags.iter().find(|t| t.vid != 0) {
                return Err(format!("untagged egress still carries {t:?}"));
            }
        }
    }
    Ok(())
}

fn set(vids: &[Vid]) -> VlanSet {
    let mut s = VlanSet::empty();
    vids.iter().for_each(|v| s.insert(*v));
    s
}

/// Ports for the exhaustive pass: every mode, with and without the VLANs the frames use.
fn port_modes() -> Vec<VlanMode> {
    vec![
        VlanMode::Access { vlan: 10 },
        VlanMode::Access { vlan: 20 },
        VlanMode::Trunk {
            allowed: set(&[10, 20]),
        },
        VlanMode::Trunk {
            allowed: VlanSet::all(),
        },
        VlanMode::Trunk {
            allowed: set(&[20]),
        },
        VlanMode::NativeUntagged {
            native: 10,
            allowed: set(&[20]),
        },
        VlanMode::NativeUntagged {
            native: 20,
            allowed: set(&[10, 4094]),
        },
        VlanMode::NativeTagged {
            native: 10,
            allowed: set(&[20]),
        },
        VlanMode::NativeTagged {
            native: 1,
            allowed: VlanSet::all(),
        },
    ]
}

/// Every tag stack of up to two tags over both TPIDs and VIDs 0, 10, 20 and 4095.
fn tag_stacks() -> Vec<Vec<Tag>> {
    let one: Vec<Tag> = TPIDS
        .iter()
        .flat_map(|&tpid| {
            [0, 20, 4095, 10]
                .into_iter()
                .map(move |vid| Tag { tpid, pcp: 5, vid })
        })
        .collect();
    let mut stacks = vec![Vec::new()];
    stacks.extend(one.iter().map(|t| vec![*t]));
    for a in &one {
        for b in &one {
            stacks.push(vec![*a, *b]);
        }
    }
    stacks
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn vid(&mut self) -> Vid {
        match self.below(6) {
            0 => 0,
            1 => 4095,
            2 => 1,
            3 => 4094,
            _ => self.below(4096) as Vid,
        }
    }
    fn usable_vid(&mut self) -> Vid {
        (self.vid() % 4094).max(1)
    }
    fn vlan_set(&mut self) -> VlanSet {
        if self.below(4) == 0 {
            return VlanSet::all();
        }
        let mut s = VlanSet::empty();
        for _ in 0..self.below(5) {
            s.insert(self.usable_vid());
        }
        s
    }
    fn mode(&mut self) -> VlanMode {
        match self.below(4) {
            0 => VlanMode::Access {
                vlan: self.usable_vid(),
            },
            1 => VlanMode::Trunk {
                allowed: self.vlan_set(),
            },
            2 => VlanMode::NativeUntagged {
                native: self.usable_vid(),
                allowed: self.vlan_set(),
            },
            _ => VlanMode::NativeTagged {
                native: self.usable_vid(),
                allowed: self.vlan_set(),
            },
        }
    }
    fn tags(&mut self) -> Vec<Tag> {
        (0..self.below(3))
            .map(|_| Tag {
                tpid: TPIDS[self.below(2) as usize],
                pcp: self.below(8) as u8,
                vid: self.vid(),
            })
            .collect()
    }
}

/// Failures grouped by kind (modes without their sets, tag TPIDs and whether each VID is 0),
/// keeping the first example of each, so the report shows every distinct hole once.
#[derive(Default)]
struct Failures(Vec<(String, String, usize)>);

impl Failures {
    fn record(&mut self, tags: &[Tag], ingress: &VlanMode, egress: &VlanMode, why: String) {
        let kind_of = |m: &VlanMode| {
            format!("{m:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or("")
                .to_string()
        };
        let shape: Vec<String> = tags
            .iter()
            .map(|t| {
                format!(
                    "{:#06x}/{}",
                    t.tpid,
                    if t.vid == 0 { "prio" } else { "vid" }
                )
            })
            .collect();
        let kind = format!(
            "{} [{}] -> {}",
            kind_of(ingress),
            shape.join(", "),
            kind_of(egress)
        );
        let example = format!("tags {tags:?}, ingress {ingress:?}, egress {egress:?}: {why}");
        // A frame that lands in another VLAN is the clearer example of a kind.
        let crosses = why.contains("leaves on VLAN");
        match self.0.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, first, n)) => {
                *n += 1;
                if crosses && !first.contains("leaves on VLAN") {
                    *first = example;
                }
            }
            None => self.0.push((kind, example, 1)),
        }
    }

    fn assert_none(&self, cases: usize) {
        if self.0.is_empty() {
            return;
        }
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|(kind, example, n)| format!("{kind} ({n} cases), e.g. {example}"))
            .collect();
        panic!(
            "{} kinds of frames leave on the wrong VLAN or with a tag the port did not put \
             there (of {cases} cases):\n{}",
            self.0.len(),
            lines.join("\n")
        );
    }
}

/// Runs the property over every combination of the small universe, then seeded random
/// frames and ports, for the frames `shape` selects.
fn property_holds_for(shape: impl Fn(&[Tag]) -> bool) {
    let mut failures = Failures::default();
    let mut cases = 0;
    let modes = port_modes();
    for tags in tag_stacks().into_iter().filter(|t| shape(t)) {
        let frame = build_frame(&tags);
        for ingress in &modes {
            for egress in &modes {
                cases += 1;
                if let Err(why) = check(&frame, ingress, egress) {
                    failures.record(&tags, ingress, egress, why);
                }
            }
        }
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..200_000 {
        let tags = rng.tags();
        if !shape(&tags) {
            continue;
        }
        let (ingress, egress) = (rng.mode(), rng.mode());
        cases += 1;
        if let Err(why) = check(&build_frame(&tags), &ingress, &egress) {
            failures.record(&tags, &ingress, &egress, why);
        }
    }
    assert!(cases > 1000, "only {cases} cases");
    failures.assert_none(cases);
}

fn all_8021q(tags: &[Tag]) -> bool {
    tags.iter().all(|t| t.tpid == 0x8100)
}

#[test]
fn untagged_and_single_tagged_frames_leave_on_their_vlan() {
    property_holds_for(|tags| tags.len() <= 1 && all_8021q(tags));
}

/// A priority tag (VID 0) followed by a VLAN tag: classified as untagged, so popping the
/// priority tag must not expose the inner tag.
#[test]
fn priority_tagged_frames_with_an_inner_tag_leave_on_their_vlan() {
    property_holds_for(|tags| tags.len() == 2 && all_8021q(tags) && tags[0].vid == 0);
}

/// Two 802.1Q tags with a VLAN in the outer one: popping the outer tag on the way out of an
/// untagged port must not expose the inner one (the double-tagging attack on a native VLAN).
#[test]
fn double_tagged_frames_leave_on_their_vlan() {
    property_holds_for(|tags| tags.len() == 2 && all_8021q(tags) && tags[0].vid != 0);
}

/// 802.1ad (0x88a8) tags, outer or inner: an S-tag is a VLAN tag to a receiver.
#[test]
fn s_tagged_frames_leave_on_their_vlan() {
    property_holds_for(|tags| !all_8021q(tags));
}

/// The checker itself: a frame that keeps a foreign tag through an access port is caught, and
/// ordinary traffic passes.
#[test]
fn the_checker_catches_a_leaked_tag_and_passes_ordinary_frames() {
    let access10 = VlanMode::Access { vlan: 10 };
    let trunk = VlanMode::Trunk {
        allowed: set(&[10, 20]),
    };
    let tag = |tpid, vid| Tag { tpid, pcp: 0, vid };
    // Ordinary: untagged access -> trunk pushes 10; tagged trunk 20 -> trunk keeps it.
    assert_eq!(check(&build_frame(&[]), &access10, &trunk), Ok(()));
    assert_eq!(
        check(&build_frame(&[tag(0x8100, 20)]), &trunk, &trunk),
        Ok(())
    );
    assert_eq!(
        check(&build_frame(&[tag(0x8100, 10)]), &trunk, &access10),
        Ok(())
    );
    // A receiver's view: a foreign tag left on an access port's frame is VLAN hopping.
    let leaked = build_frame(&[tag(0x8100, 20)]);
    assert_eq!(vlan_on_the_wire(&leaked, &access10), Ok(20));
    let behind_priority = build_frame(&[tag(0x8100, 0), tag(0x8100, 20)]);
    assert_eq!(vlan_on_the_wire(&behind_priority, &access10), Ok(20));
    assert_eq!(vlan_on_the_wire(&build_frame(&[]), &access10), Ok(10));
    assert!(vlan_on_the_wire(&build_frame(&[]), &trunk).is_err());
}
