//! The packet fields a flow can match, packed into six 64-bit words so that masking,
//! hashing and comparing a key is a handful of word operations (the classifier's inner loop).

use std::fmt;

/// A field of [`FlowKey`], with the ovs-ofctl name users write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    InPort,
    DlSrc,
    DlDst,
    DlType,
    /// The 802.1Q TCI as OVS models it: 0 when untagged; otherwise PCP(3) | CFI=1 | VID(12).
    /// `dl_vlan` and `dl_vlan_pcp` are masked views of it.
    VlanTci,
    NwSrc,
    NwDst,
    NwProto,
    /// DSCP bits of the IPv4 TOS byte (low two bits always 0), as ovs-ofctl's nw_tos.
    NwTos,
    /// TCP/UDP ports; for ICMP, type and code (as OVS does).
    TpSrc,
    TpDst,
    TunId,
    TunSrc,
    TunDst,
}

/// (word, shift, width in bits) of each field in [`FlowKey`].
const fn layout(f: Field) -> (usize, u32, u32) {
    match f {
        Field::DlDst => (0, 16, 48),
        Field::InPort => (0, 0, 16),
        Field::DlSrc => (1, 16, 48),
        Field::DlType => (1, 0, 16),
        Field::VlanTci => (2, 48, 16),
        Field::NwProto => (2, 40, 8),
        Field::NwTos => (2, 32, 8),
        Field::TpSrc => (2, 16, 16),
        Field::TpDst => (2, 0, 16),
        Field::NwSrc => (3, 32, 32),
        Field::NwDst => (3, 0, 32),
        Field::TunId => (4, 0, 64),
        Field::TunSrc => (5, 32, 32),
        Field::TunDst => (5, 0, 32),
    }
}

impl Field {
    pub const ALL: [Field; 14] = [
        Field::InPort,
        Field::DlSrc,
        Field::DlDst,
        Field::DlType,
        Field::VlanTci,
        Field::NwSrc,
        Field::NwDst,
        Field::NwProto,
        Field::NwTos,
        Field::TpSrc,
        Field::TpDst,
        Field::TunId,
        Field::TunSrc,
        Field::TunDst,
    ];

    pub fn width(self) -> u32 {
        layout(self).2
    }

    /// All ones over the field's width.
    pub fn full_mask(self) -> u64 {
        let w = self.width();
        if w == 64 {
            u64::MAX
        } else {
            (1u64 << w) - 1
        }
    }
}

/// Packet fields, extracted once per packet. Fields a packet does not have are 0 (e.g. the
/// L4 ports of an ARP packet); prerequisites in [`Match`] keep flows from matching them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKey(pub [u64; 6]);

impl FlowKey {
    pub fn get(&self, f: Field) -> u64 {
        let (w, shift, _) = layout(f);
        (self.0[w] >> shift) & f.full_mask()
    }

    pub fn set(&mut self, f: Field, value: u64) {
        let (w, shift, _) = layout(f);
        let m = f.full_mask() << shift;
        self.0[w] = (self.0[w] & !m) | ((value << shift) & m);
    }

    /// `self & mask`, word by word.
    pub fn masked(&self, mask: &FlowKey) -> FlowKey {
        let mut out = *self;
        for (o, m) in out.0.iter_mut().zip(mask.0) {
            *o &= m;
        }
        out
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FlowKey");
        for field in Field::ALL {
            let v = self.get(field);
            if v != 0 {
                d.field(&format!("{field:?}"), &format_args!("{v:#x}"));
            }
        }
        d.finish()
    }
}

/// What a flow matches: `key & mask == value` (value is kept pre-masked).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Match {
    pub value: FlowKey,
    pub mask: FlowKey,
}

impl Match {
    /// Matches everything.
    pub fn any() -> Match {
        Match::default()
    }

    /// Adds `field & mask == value & mask` (a full mask for an exact match).
    pub fn set(&mut self, field: Field, value: u64, mask: u64) {
        let mask = mask & field.full_mask();
        let old_mask = self.mask.get(field);
        self.mask.set(field, old_mask | mask);
        let old_value = self.value.get(field) & !mask;
        self.value.set(field, old_value | (value & mask));
    }

    pub fn set_exact(&mut self, field: Field, value: u64) {
        self.set(field, value, field.full_mask());
    }

    /// The (value, mask) of one field; mask 0 means the field is not matched.
    pub fn get(&self, field: Field) -> (u64, u64) {
        (self.value.get(field), self.mask.get(field))
    }

    pub fn matches(&self, key: &FlowKey) -> bool {
        key.masked(&self.mask) == self.value
    }

    /// Whether every packet this match accepts is also accepted by `other` (used by
    /// non-strict mod-flows/del-flows: "flows that match at least as specifically").
    pub fn is_subset_of(&self, other: &Match) -> bool {
        self.value
            .0
            .iter()
            .zip(self.mask.0)
            .zip(other.value.0.iter().zip(other.mask.0))
            .all(|((v, m), (ov, om))| om & !m == 0 && (v & om) == *ov)
    }
}

/// EtherTypes and IP protocols the prerequisites talk about.
pub mod consts {
    pub const ETH_IPV4: u64 = 0x0800;
    pub const ETH_ARP: u64 = 0x0806;
    pub const ETH_IPV6: u64 = 0x86dd;
    pub const IP_ICMP: u64 = 1;
    pub const IP_TCP: u64 = 6;
    pub const IP_UDP: u64 = 17;
    /// The CFI bit OVS sets in `vlan_tci` for tagged packets.
    pub const VLAN_CFI: u64 = 0x1000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap_and_round_trip() {
        let mut k = FlowKey::default();
        for (i, f) in Field::ALL.iter().enumerate() {
            k.set(*f, (i as u64 + 1) * 0x0101_0101_0101_0101);
        }
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(
                k.get(*f),
                ((i as u64 + 1) * 0x0101_0101_0101_0101) & f.full_mask(),
                "{f:?}"
            );
        }
        let bits: u32 = Field::ALL.iter().map(|f| f.width()).sum();
        assert_eq!(bits, 6 * 64, "the layout uses every bit exactly once");
    }

    #[test]
    fn masked_matches_and_subsets() {
        let mut m = Match::any();
        m.set(Field::NwSrc, 0x0a00_0000, 0xff00_0000);
        m.set_exact(Field::DlType, consts::ETH_IPV4);
        let mut k = FlowKey::default();
        k.set(Field::DlType, consts::ETH_IPV4);
        k.set(Field::NwSrc, 0x0a01_0203);
        assert!(m.matches(&k));
        k.set(Field::NwSrc, 0x0b01_0203);
        assert!(!m.matches(&k));
        let mut narrower = m;
        narrower.set(Field::NwSrc, 0x0a01_0000, 0xffff_0000);
        assert!(narrower.is_subset_of(&m));
        assert!(!m.is_subset_of(&narrower));
        assert!(m.is_subset_of(&Match::any()));
    }
}
