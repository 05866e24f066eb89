//! Per-port 802.1Q policy: which VLAN an arriving frame belongs to, and whether (and how) a
//! frame of a VLAN may leave through a port. Semantics follow Open vSwitch's `vlan_mode`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire::{L2Header, VlanRepr};

/// A VLAN identifier, 1..=4094.
pub type Vid = u16;

/// The lowest and highest usable VLAN IDs (0 and 4095 are reserved by 802.1Q).
pub const VID_MIN: Vid = 1;
pub const VID_MAX: Vid = 4094;

/// A set of VLAN IDs as a 4096-bit bitmap: membership tests on the frame path are one load.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl VlanSet {
    pub fn empty() -> Self {
        VlanSet([0; 64])
    }
    pub fn all() -> Self {
        let mut s = Self::empty();
        for vid in VID_MIN..=VID_MAX {
            s.insert(vid);
        }
        s
    }
    pub fn insert(&mut self, vid: Vid) {
        let vid = usize::from(vid & 0x0fff);
        self.0[vid / 64] |= 1 << (vid % 64);
    }
    pub fn contains(&self, vid: Vid) -> bool {
        let vid = usize::from(vid & 0x0fff);
        self.0[vid / 64] & (1 << (vid % 64)) != 0
    }
    pub fn iter(&self) -> impl Iterator<Item = Vid> + '_ {
        (VID_MIN..=VID_MAX).filter(|v| self.contains(*v))
    }
    pub fn is_all(&self) -> bool {
        (VID_MIN..=VID_MAX).all(|v| self.contains(v))
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Prints compact ranges, e.g. `10,20-29,100`, or `all`.
impl fmt::Display for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        let mut first = true;
        let mut it = self.iter().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end = it.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A VLAN list the user wrote that is not a list of IDs and ranges within 1..=4094.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlanParseError {
    #[error("'{0}' is not a VLAN ID (expected a number 1-4094)")]
    BadId(String),
    #[error("VLAN ID {0} is out of range (1-4094)")]
    OutOfRange(u32),
    #[error("unknown VLAN mode '{0}' (expected access, trunk, native-untagged or native-tagged)")]
    UnknownMode(String),
    #[error("VLAN mode {mode} needs {what}")]
    Missing {
        mode: &'static str,
        what: &'static str,
    },
}

pub fn parse_vid(s: &str) -> Result<Vid, VlanParseError> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| VlanParseError::BadId(s.trim().to_string()))?;
    if !(u32::from(VID_MIN)..=u32::from(VID_MAX)).contains(&n) {
        return Err(VlanParseError::OutOfRange(n));
    }
    Ok(n as Vid)
}

/// Parses `all`, or a comma list of IDs and `a-b` ranges.
impl FromStr for VlanSet {
    type Err = VlanParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "all" {
            return Ok(VlanSet::all());
        }
        let mut set = VlanSet::empty();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_vid(a)?, parse_vid(b)?);
                    for vid in a.min(b)..=a.max(b) {
                        set.insert(vid);
                    }
                }
                None => set.insert(parse_vid(item)?),
            }
        }
        Ok(set)
    }
}

/// How a port treats 802.1Q tags (Open vSwitch's `vlan_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VlanMode {
    /// Member of one VLAN; frames leave untagged; tagged arrivals with a non-zero VID are dropped.
    Access { vlan: Vid },
    /// Carries the allowed VLANs tagged; untagged arrivals are dropped.
    Trunk { allowed: VlanSet },
    /// A trunk whose native VLAN travels untagged.
    NativeUntagged { native: Vid, allowed: VlanSet },
    /// A trunk that accepts untagged arrivals into the native VLAN but sends everything tagged.
    NativeTagged { native: Vid, allowed: VlanSet },
}

impl Default for VlanMode {
    /// A port with no VLAN configuration is an access port of VLAN 1, as on most switches.
    fn default() -> Self {
        VlanMode::Access { vlan: 1 }
    }
}

/// How a frame leaves a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    Untagged,
    Tagged,
}

/// Whether a frame may leave through a port as `egress`: sending it untagged (popping its
/// outer tag, if any) must not expose another tag, which the receiver would take for a tag
/// this port's policy put there.
pub fn egress_allowed(header: &L2Header, egress: Egress) -> bool {
    !(egress == Egress::Untagged && header.has_inner_tag())
}

/// Why the VLAN policy refused a frame at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressDrop {
    /// Tagged with a VLAN this port does not carry (or any tag on an access port).
    NotAllowed,
    /// Untagged (or priority-tagged) on a trunk without a native VLAN.
    UntaggedOnTrunk,
    /// Classified as untagged (no tag, or a priority tag) but carrying another VLAN tag
    /// (802.1Q or 802.1ad) behind it: accepting it would let the inner tag hop VLANs.
    StackedTag,
}

/// The VLAN a frame was classified into and the priority it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub vid: Vid,
    pub pcp: u8,
}

impl VlanMode {
    /// Classifies an arriving frame by its outer tag (`None` when untagged).
    pub fn ingress(&self, tag: Option<&VlanRepr>) -> Result<Classified, IngressDrop> {
        let pcp = tag.map_or(0, |t| t.pcp);
        // VID 0 is a priority tag: the frame is untagged as far as VLAN membership goes.
        let tagged_vid = tag.map(|t| t.vid).filter(|vid| *vid != 0);
        match (self, tagged_vid) {
            (VlanMode::Access { vlan }, None) => Ok(Classified { vid: *vlan, pcp }),
            (VlanMode::Access { .. }, Some(_)) => Err(IngressDrop::NotAllowed),
            (VlanMode::Trunk { .. }, None) => Err(IngressDrop::UntaggedOnTrunk),
            (
                VlanMode::NativeUntagged { native, .. } | VlanMode::NativeTagged { native, .. },
                None,
            ) => Ok(Classified { vid: *native, pcp }),
            (
                VlanMode::Trunk { allowed }
                | VlanMode::NativeUntagged { allowed, .. }
                | VlanMode::NativeTagged { allowed, .. },
                Some(vid),
            ) => {
                if allowed.contains(vid) || self.native() == Some(vid) {
                    Ok(Classified { vid, pcp })
                } else {
                    Err(IngressDrop::NotAllowed)
                }
            }
        }
    }

    /// Classifies an arriving frame by its whole L2 header: like [`VlanMode::ingress`], and a
    /// frame that counts as untagged here (no tag, or a priority tag) must not carry another
    /// tag, or that tag would travel as if this port's policy had put it there.
    pub fn classify(&self, header: &L2Header) -> Result<Classified, IngressDrop> {
        let class = self.ingress(header.vlan.as_ref())?;
        let untagged = header.vlan.is_none_or(|t| t.vid == 0);
        if untagged && header.has_inner_tag() {
            return Err(IngressDrop::StackedTag);
        }
        Ok(class)
    }

    /// Whether a frame of VLAN `vid` may leave through this port, and tagged or not.
    pub fn egress(&self, vid: Vid) -> Option<Egress> {
        match self {
            VlanMode::Access { vlan } => (*vlan == vid).then_some(Egress::Untagged),
            VlanMode::Trunk { allowed } => allowed.contains(vid).then_some(Egress::Tagged),
            VlanMode::NativeUntagged { native, allowed } => {
                if *native == vid {
                    Some(Egress::Untagged)
                } else {
                    allowed.contains(vid).then_some(Egress::Tagged)
                }
            }
            VlanMode::NativeTagged { native, allowed } => {
                (*native == vid || allowed.contains(vid)).then_some(Egress::Tagged)
            }
        }
    }

    fn native(&self) -> Option<Vid> {
        match self {
            VlanMode::NativeUntagged { native, .. } | VlanMode::NativeTagged { native, .. } => {
                Some(*native)
            }
            _ => None,
        }
    }

    /// Builds a mode from the words a user writes in the config file or on flowctl's line.
    pub fn from_parts(
        mode: &str,
        vlan: Option<Vid>,
        trunks: Option<VlanSet>,
    ) -> Result<Self, VlanParseError> {
        let trunks_or_all = || trunks.clone().unwrap_or_else(VlanSet::all);
        match mode {
            "access" => Ok(VlanMode::Access {
                vlan: vlan.unwrap_or(1),
            }),
            "trunk" => Ok(VlanMode::Trunk {
                allowed: trunks_or_all(),
            }),
            "native-untagged" => Ok(VlanMode::NativeUntagged {
                native: vlan.ok_or(VlanParseError::Missing {
                    mode: "native-untagged",
                    what: "a native VLAN (vlan = N)",
                })?,
                allowed: trunks_or_all(),
            }),
            "native-tagged" => Ok(VlanMode::NativeTagged {
                native: vlan.ok_or(VlanParseError::Missing {
                    mode: "native-tagged",
                    what: "a native VLAN (vlan = N)",
                })?,
                allowed: trunks_or_all(),
            }),
            other => Err(VlanParseError::UnknownMode(other.to_string())),
        }
    }

    /// The mode's words, the inverse of [`VlanMode::from_parts`].
    pub fn describe(&self) -> VlanConfig {
        match self {
            VlanMode::Access { vlan } => VlanConfig {
                mode: "access".into(),
                vlan: Some(*vlan),
                trunks: None,
            },
            VlanMode::Trunk { allowed } => VlanConfig {
                mode: "trunk".into(),
                vlan: None,
                trunks: Some(allowed.to_string()),
            },
            VlanMode::NativeUntagged { native, allowed } => VlanConfig {
                mode: "native-untagged".into(),
                vlan: Some(*native),
                trunks: Some(allowed.to_string()),
            },
            VlanMode::NativeTagged { native, allowed } => VlanConfig {
                mode: "native-tagged".into(),
                vlan: Some(*native),
                trunks: Some(allowed.to_string()),
            },
        }
    }
}

/// A VLAN mode as words: the shape used in the config file and on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VlanConfig {
    /// access | trunk | native-untagged | native-tagged
    pub mode: String,
    /// The access VLAN, or the native VLAN of a native-* trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vid>,
    /// Allowed VLANs on a trunk: `all`, or a list like "10,20-29" (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunks: Option<String>,
}

impl VlanConfig {
    pub fn to_mode(&self) -> Result<VlanMode, VlanParseError> {
        if let Some(v) = self.vlan {
            if !(VID_MIN..=VID_MAX).contains(&v) {
                return Err(VlanParseError::OutOfRange(u32::from(v)));
            }
        }
        let trunks = self.trunks.as_deref().map(str::parse).transpose()?;
        VlanMode::from_parts(&self.mode, self.vlan, trunks)
    }
}

impl fmt::Display for VlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VlanMode::Access { vlan } => write!(f, "access vlan={vlan}"),
            VlanMode::Trunk { allowed } => write!(f, "trunk trunks={allowed}"),
            VlanMode::NativeUntagged { native, allowed } => {
                write!(f, "native-untagged vlan={native} trunks={allowed}")
            }
            VlanMode::NativeTagged { native, allowed } => {
                write!(f, "native-tagged vlan={native} trunks={allowed}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(vid: u16, pcp: u8) -> VlanRepr {
        VlanRepr {
            pcp,
            dei: false,
            vid,
            ethertype: 0x0800,
        }
    }

    #[test]
    fn access_port_accepts_untagged_and_priority_tagged_only() {
        let m = VlanMode::Access { vlan: 10 };
        assert_eq!(m.ingress(None), Ok(Classified { vid: 10, pcp: 0 }));
        assert_eq!(
            m.ingress(Some(&tag(0, 5))),
            Ok(Classified { vid: 10, pcp: 5 })
        );
        assert_eq!(m.ingress(Some(&tag(10, 0))), Err(IngressDrop::NotAllowed));
        assert_eq!(m.egress(10), Some(Egress::Untagged));
        assert_eq!(m.egress(11), None);
    }

    #[test]
    fn trunk_filters_by_allowed_list_and_drops_untagged() {
        let m = VlanMode::Trunk {
            allowed: "10,20-22".parse().unwrap(),
        };
        assert_eq!(m.ingress(None), Err(IngressDrop::UntaggedOnTrunk));
        assert_eq!(
            m.ingress(Some(&tag(21, 3))),
            Ok(Classified { vid: 21, pcp: 3 })
        );
        assert_eq!(m.ingress(Some(&tag(23, 3))), Err(IngressDrop::NotAllowed));
        assert_eq!(m.egress(22), Some(Egress::Tagged));
        assert_eq!(m.egress(23), None);
    }

    #[test]
    fn native_vlans_travel_as_configured() {
        let allowed: VlanSet = "20".parse().unwrap();
        let untagged = VlanMode::NativeUntagged {
            native: 5,
            allowed: allowed.clone(),
        };
        let tagged = VlanMode::NativeTagged { native: 5, allowed };
        for m in [&untagged, &tagged] {
            assert_eq!(m.ingress(None), Ok(Classified { vid: 5, pcp: 0 }));
            assert_eq!(
                m.ingress(Some(&tag(5, 1))),
                Ok(Classified { vid: 5, pcp: 1 })
            );
            assert_eq!(m.ingress(Some(&tag(20, 0))).map(|c| c.vid), Ok(20));
            assert_eq!(m.ingress(Some(&tag(30, 0))), Err(IngressDrop::NotAllowed));
            assert_eq!(m.egress(20), Some(Egress::Tagged));
            assert_eq!(m.egress(30), None);
        }
        assert_eq!(untagged.egress(5), Some(Egress::Untagged));
        assert_eq!(tagged.egress(5), Some(Egress::Tagged));
    }

    #[test]
    fn vlan_sets_parse_and_print() {
        let s: VlanSet = "1, 5-7,100".parse().unwrap();
        assert_eq!(s.to_string(), "1,5-7,100");
        assert_eq!("all".parse::<VlanSet>().unwrap().to_string(), "all");
        assert!(matches!(
            "0".parse::<VlanSet>(),
            Err(VlanParseError::OutOfRange(0))
        ));
        assert!(matches!(
            "4095".parse::<VlanSet>(),
            Err(VlanParseError::OutOfRange(4095))
        ));
        assert!(matches!(
            "x".parse::<VlanSet>(),
            Err(VlanParseError::BadId(_))
        ));
    }

    #[test]
    fn config_words_round_trip() {
        for words in [
            VlanConfig {
                mode: "access".into(),
                vlan: Some(7),
                trunks: None,
            },
            VlanConfig {
                mode: "trunk".into(),
                vlan: None,
                trunks: Some("10-12".into()),
            },
            VlanConfig {
                mode: "native-untagged".into(),
                vlan: Some(3),
                trunks: Some("all".into()),
            },
            VlanConfig {
                mode: "native-tagged".into(),
                vlan: Some(3),
                trunks: Some("4".into()),
            },
        ] {
            assert_eq!(words.to_mode().unwrap().describe(), words);
        }
        let missing = VlanConfig {
            mode: "native-tagged".into(),
            vlan: None,
            trunks: None,
        };
        assert!(matches!(
            missing.to_mode(),
            Err(VlanParseError::Missing { .. })
        ));
        let bad = VlanConfig {
            mode: "hybrid".into(),
            vlan: None,
            trunks: None,
        };
        assert!(matches!(bad.to_mode(), Err(VlanParseError::UnknownMode(_))));
    }
}
