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
    /// OpenFlow metadata: 64 bits carried between tables, 0 when a packet enters.
    Metadata,
    /// Registers reg0-reg15: 32 bits each, 0 when a packet enters.
    Reg(u8),
    /// xreg0-xreg7: a 64-bit view of two registers (xregN = reg(2N) << 32 | reg(2N+1)).
    /// Not a field of its own: it overlaps the registers.
    XReg(u8),
    /// Connection tracking state bits ([`consts::ct_state`] holds their values); 0 (untracked)
    /// until a `ct` action recirculates the packet.
    CtState,
    CtZone,
    CtMark,
    /// `ct_label` is 128 bits: two halves.
    CtLabelHi,
    CtLabelLo,
    /// The original direction's tuple of the connection (IPv4).
    CtNwSrc,
    CtNwDst,
    CtTpSrc,
    CtTpDst,
    CtNwProto,
    /// IPv4 TTL / IPv6 hop limit.
    NwTtl,
    /// The two ECN bits of the IPv4 TOS / IPv6 traffic class.
    NwEcn,
    /// `ip_frag` bits: 1 = a fragment, 2 = a later fragment.
    NwFrag,
    Ipv6SrcHi,
    Ipv6SrcLo,
    Ipv6DstHi,
    Ipv6DstLo,
    /// IPv6 neighbour discovery target address.
    NdTargetHi,
    NdTargetLo,
    /// ARP sender hardware address, or the ND source link-layer option (as OVS shares them).
    ArpSha,
    /// ARP target hardware address, or the ND target link-layer option.
    ArpTha,
    /// TCP flags (12 bits).
    TcpFlags,
    /// IPv6 flow label (20 bits).
    Ipv6Label,
    /// `conj_id`: set by a matched conjunction.
    ConjId,
    /// 1 in the classifier match of a conjunctive flow (one whose actions are
    /// `conjunction(...)`), and never in a packet: such flows take part in a lookup only
    /// through their table's conjunction index. Not a field users write.
    Conjunctive,
}

/// Words in a [`FlowKey`].
pub const KEY_WORDS: usize = 29;
/// The first word of fields that only actions set (metadata, registers, ct): words before
/// it come from the packet.
pub const FIRST_METADATA_WORD: usize = 6;

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
        Field::Metadata => (6, 0, 64),
        Field::Reg(n) => (
            7 + (n as usize & 15) / 2,
            if n % 2 == 0 { 32 } else { 0 },
            32,
        ),
        Field::XReg(n) => (7 + (n as usize & 7), 0, 64),
        Field::CtState => (15, 48, 16),
        Field::CtZone => (15, 32, 16),
        Field::CtMark => (15, 0, 32),
        Field::CtLabelHi => (16, 0, 64),
        Field::CtLabelLo => (17, 0, 64),
        Field::CtNwSrc => (18, 32, 32),
        Field::CtNwDst => (18, 0, 32),
        Field::CtTpSrc => (19, 48, 16),
        Field::CtTpDst => (19, 32, 16),
        Field::CtNwProto => (19, 24, 8),
        Field::NwTtl => (19, 16, 8),
        Field::NwEcn => (19, 8, 8),
        Field::NwFrag => (19, 0, 8),
        Field::Ipv6SrcHi => (20, 0, 64),
        Field::Ipv6SrcLo => (21, 0, 64),
        Field::Ipv6DstHi => (22, 0, 64),
        Field::Ipv6DstLo => (23, 0, 64),
        Field::NdTargetHi => (24, 0, 64),
        Field::NdTargetLo => (25, 0, 64),
        Field::ArpSha => (26, 16, 48),
        Field::TcpFlags => (26, 0, 16),
        Field::ArpTha => (27, 16, 48),
        Field::Ipv6Label => (28, 32, 32),
        Field::ConjId => (28, 0, 32),
        Field::Conjunctive => (27, 0, 16),
    }
}

impl Field {
    /// Every field once (xregs, which overlap the registers, are left out).
    pub const ALL: [Field; 56] = {
        use Field::*;
        [
            InPort,
            DlSrc,
            DlDst,
            DlType,
            VlanTci,
            NwSrc,
            NwDst,
            NwProto,
            NwTos,
            TpSrc,
            TpDst,
            TunId,
            TunSrc,
            TunDst,
            Metadata,
            Reg(0),
            Reg(1),
            Reg(2),
            Reg(3),
            Reg(4),
            Reg(5),
            Reg(6),
            Reg(7),
            Reg(8),
            Reg(9),
            Reg(10),
            Reg(11),
            Reg(12),
            Reg(13),
            Reg(14),
            Reg(15),
            CtState,
            CtZone,
            CtMark,
            CtLabelHi,
            CtLabelLo,
            CtNwSrc,
            CtNwDst,
            CtTpSrc,
            CtTpDst,
            CtNwProto,
            NwTtl,
            NwEcn,
            NwFrag,
            Ipv6SrcHi,
            Ipv6SrcLo,
            Ipv6DstHi,
            Ipv6DstLo,
            NdTargetHi,
            NdTargetLo,
            ArpSha,
            TcpFlags,
            ArpTha,
            Ipv6Label,
            ConjId,
            Conjunctive,
        ]
    };

    /// The word of [`FlowKey`] that holds this field.
    pub const fn word(self) -> usize {
        layout(self).0
    }

    /// Where in its word the field starts (bits from the low end).
    pub const fn shift(self) -> u32 {
        layout(self).1
    }

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
pub struct FlowKey(pub [u64; KEY_WORDS]);

/// A set of words of a [`FlowKey`] (bit i = word i): the words a mask uses, so that hashing
/// and comparing masked keys touches only those (most flows use 2-4 of the 29).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct WordSet(pub u32);

impl WordSet {
    pub const ALL: WordSet = WordSet((1 << KEY_WORDS) - 1);

    /// The non-zero words of `key` (of a mask: the words it matches on).
    pub fn of(key: &FlowKey) -> WordSet {
        let mut bits = 0;
        for (i, w) in key.0.iter().enumerate() {
            if *w != 0 {
                bits |= 1 << i;
            }
        }
        WordSet(bits)
    }

    pub fn union(self, other: WordSet) -> WordSet {
        WordSet(self.0 | other.0)
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether word `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        i < 32 && self.0 & (1 << i) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The word indices, in increasing order.
    #[inline]
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                i
            })
        })
    }
}

impl FlowKey {
    /// `self == other`, a word at a time: a key just built was stored a word at a time,
    /// and loads of the same width are forwarded from those stores, where `memcmp`'s or a
    /// vector compare's wider loads wait for the stores to retire (the frame path compares
    /// a key it has just extracted).
    #[inline]
    pub fn same_as(&self, other: &FlowKey) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a == b)
    }

    /// Whether the two keys are equal in the words of `words`.
    #[inline]
    pub fn same_in(&self, other: &FlowKey, words: WordSet) -> bool {
        words.iter().all(|i| self.0[i] == other.0[i])
    }

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

    /// `self & mask` where `words` holds every non-zero word of `mask` (cheaper: only those
    /// words are read).
    #[inline]
    pub fn masked_in(&self, mask: &FlowKey, words: WordSet) -> FlowKey {
        let mut out = FlowKey::default();
        for i in words.iter() {
            out.0[i] = self.0[i] & mask.0[i];
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
    pub const IP_ICMPV6: u64 = 58;
    /// The CFI bit OVS sets in `vlan_tci` for tagged packets.
    pub const VLAN_CFI: u64 = 0x1000;

    /// `ct_state` bits, as OVS numbers them.
    pub use crate::conntrack::ct_state;
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
        let mut used = [0u64; KEY_WORDS];
        for f in Field::ALL {
            let (w, shift, _) = layout(f);
            let bits = f.full_mask() << shift;
            assert_eq!(used[w] & bits, 0, "{f:?} overlaps another field");
            used[w] |= bits;
        }
        assert!(used.iter().all(|w| *w != 0), "every word holds a field");
        for n in 0..8u8 {
            let mut k = FlowKey::default();
            k.set(Field::Reg(2 * n), 0x1111_2222);
            k.set(Field::Reg(2 * n + 1), 0x3333_4444);
            assert_eq!(k.get(Field::XReg(n)), 0x1111_2222_3333_4444);
        }
    }

    #[test]
    fn same_as_is_equality_in_every_bit_of_every_word() {
        let k = FlowKey([0x0123_4567_89ab_cdef; KEY_WORDS]);
        assert!(k.same_as(&k));
        for word in 0..KEY_WORDS {
            for bit in [0, 31, 63] {
                let mut other = k;
                other.0[word] ^= 1 << bit;
                assert!(
                    !k.same_as(&other) && !other.same_as(&k),
                    "word {word} bit {bit}"
                );
            }
        }
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
