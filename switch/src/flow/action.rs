//! What a flow does with a packet (ovs-ofctl action names in the docs of each variant).

use std::net::Ipv4Addr;

use super::key::Field;

/// A port as a flow names it: a number, or a name resolved against the switch's ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `output:PORT`
    Output(PortRef),
    /// `in_port`: back out of the port it came from.
    InPort,
    /// `flood`: every port of the packet's VLAN except the ingress port.
    Flood,
    /// `all`: every port except the ingress port (VLAN egress rules still apply).
    All,
    /// `normal`: the learning switch.
    Normal,
    /// `mod_vlan_vid:VID` (pushes a tag if there is none).
    SetVlanVid(u16),
    /// `mod_vlan_pcp:PCP` (pushes a tag if there is none).
    SetVlanPcp(u8),
    /// `strip_vlan` / `pop_vlan`.
    StripVlan,
    /// `push_vlan:0x8100`.
    PushVlan(u16),
    /// `mod_dl_src:MAC`
    SetDlSrc([u8; 6]),
    /// `mod_dl_dst:MAC`
    SetDlDst([u8; 6]),
    /// `mod_nw_src:IP` (IPv4 and L4 checksums updated)
    SetNwSrc(Ipv4Addr),
    /// `mod_nw_dst:IP`
    SetNwDst(Ipv4Addr),
    /// `mod_nw_tos:TOS`
    SetNwTos(u8),
    /// `mod_tp_src:PORT` (TCP/UDP; checksum updated)
    SetTpSrc(u16),
    /// `mod_tp_dst:PORT`
    SetTpDst(u16),
    /// `dec_ttl`: drop the packet when the TTL (IPv6: hop limit) reaches 0.
    DecTtl,
    /// `mod_nw_ttl:TTL` / `set_field:TTL->nw_ttl` (IPv4 TTL or IPv6 hop limit).
    SetNwTtl(u8),
    /// `set_field:ADDR->ipv6_src` (TCP/UDP/ICMPv6 checksums updated)
    SetIpv6Src(std::net::Ipv6Addr),
    /// `set_field:ADDR->ipv6_dst`
    SetIpv6Dst(std::net::Ipv6Addr),
    /// `set_field:V->arp_op|arp_spa|arp_tpa|arp_sha|arp_tha`: `field` is the key field that
    /// holds it (nw_proto, nw_src, nw_dst, arp_sha, arp_tha).
    SetArp { field: Field, value: u64 },
    /// `set_field:VALUE->FIELD` for fields that have no mod_* spelling (or do).
    SetField { field: Field, value: u64 },
    /// `set_tunnel:VNI` (also `set_field:VNI->tun_id`).
    SetTunnel(u64),
    /// `resubmit(,TABLE)`, `resubmit(PORT,TABLE)`, `resubmit:PORT`.
    Resubmit {
        port: Option<PortRef>,
        table: Option<u8>,
    },
    /// `goto_table:TABLE` (must be the last action and go to a later table).
    GotoTable(u8),
    /// `note:HEX...`: no effect; kept for dump-flows.
    Note(Vec<u8>),
    /// `load:VALUE->DST[A..B]` (also `set_field:V->regN` on a whole register).
    Load { dst: SubField, value: u64 },
    /// `move:SRC[A..B]->DST[C..D]`
    Move { src: SubField, dst: SubField },
    /// `ct(...)`: connection tracking.
    Ct(CtAction),
    /// `ct_clear`: the packet becomes untracked again (every ct field 0).
    CtClear,
    /// `conjunction(id, k/n)`: this flow is dimension `k` of `n` of conjunctive match `id`
    /// (a flow with these has no other actions and never matches by itself).
    Conjunction { id: u32, k: u8, n: u8 },
    /// `group:N`: the packet goes to group N's buckets.
    Group(u32),
    /// `learn(...)`: adds (or refreshes) a flow built from this packet's fields.
    Learn(Box<LearnSpec>),
    /// `meter:N`: the packet is dropped if meter N's rate is exceeded.
    Meter(u32),
}

/// Bits `ofs .. ofs + n_bits` of a field (`reg0[0..15]`, `NXM_OF_IN_PORT[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubField {
    pub field: Field,
    pub ofs: u8,
    pub n_bits: u8,
}

impl SubField {
    /// The whole field.
    pub fn whole(field: Field) -> SubField {
        SubField {
            field,
            ofs: 0,
            n_bits: field.width() as u8,
        }
    }

    /// The bits this subfield covers, in place in its field.
    pub fn mask(&self) -> u64 {
        let ones = if self.n_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.n_bits) - 1
        };
        ones << self.ofs
    }
}

/// Where `ct` puts a connection: a zone number, or one read from a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtZone {
    Value(u16),
    Field(SubField),
}

/// `ct(commit, zone=Z, table=T, exec(set_field:V->ct_mark, set_field:V->ct_label))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CtAction {
    /// Store a new connection (and apply `exec`); without it a new connection is only
    /// looked at.
    pub commit: bool,
    /// With `commit`: a packet in the reply direction of a connection ends it and commits a
    /// new one in its own direction.
    pub force: bool,
    pub zone: CtZone,
    /// Where the tracked copy of the packet continues (with the ct fields set); `None`:
    /// nowhere (only `commit` has an effect).
    pub table: Option<u8>,
    /// `exec(set_field:V/M->ct_mark)`: (value, mask).
    pub set_mark: Option<(u32, u32)>,
    /// `exec(set_field:V/M->ct_label)`: (value, mask).
    pub set_label: Option<(u128, u128)>,
}

/// What `learn(...)` adds: a flow in `table` whose match and actions take values from the
/// packet that runs the action (the subset OVS's MAC-learning examples use).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LearnSpec {
    pub table: u8,
    pub priority: u16,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub cookie: u64,
    pub matches: Vec<LearnMatch>,
    pub actions: Vec<LearnAction>,
}

/// A match of the learned flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LearnMatch {
    /// `DST[..]=SRC[..]` (or `FIELD[..]` alone: the same field): `dst` must equal the
    /// packet's `src` bits.
    Field { dst: SubField, src: SubField },
    /// `DST[..]=VALUE`
    Value { dst: SubField, value: u64 },
}

/// An action of the learned flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LearnAction {
    /// `load:SRC[..]->DST[..]`: loads what `src` holds in this packet.
    LoadField { dst: SubField, src: SubField },
    /// `load:VALUE->DST[..]`
    LoadValue { dst: SubField, value: u64 },
    /// `output:SRC[..]`: to the port `src` holds in this packet.
    Output { src: SubField },
}
