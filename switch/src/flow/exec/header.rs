//! Actions that rewrite the packet's header (and the key fields it matches on).

use super::ExecState;
use crate::flow::action::Action;
use crate::flow::key::Field;
use crate::flow::pipeline::Halt;

/// Applies a header action.
pub fn apply(st: &mut ExecState, action: &Action) -> Result<(), Halt> {
    match action {
        Action::SetVlanVid(v) => {
            if !st.header_mut().set_vlan_vid(*v) {
                return Err(Halt::VlanTagLimit);
            }
            let tci = st.key.get(Field::VlanTci);
            st.key.set(
                Field::VlanTci,
                (tci & 0xe000) | 0x1000 | u64::from(*v & 0x0fff),
            );
            st.modified = true;
        }
        Action::SetVlanPcp(p) => {
            if !st.header_mut().set_vlan_pcp(*p) {
                return Err(Halt::VlanTagLimit);
            }
            let tci = st.key.get(Field::VlanTci);
            st.key.set(
                Field::VlanTci,
                (tci & 0x0fff) | 0x1000 | (u64::from(*p & 7) << 13),
            );
            st.modified = true;
        }
        Action::StripVlan => {
            st.header_mut().strip_vlan();
            st.key.set(Field::VlanTci, 0);
            st.modified = true;
        }
        Action::PushVlan(tpid) => {
            if !st.header_mut().push_vlan(*tpid) {
                return Err(Halt::VlanTagLimit);
            }
            st.key.set(Field::VlanTci, 0x1000);
            st.modified = true;
        }
        Action::SetDlSrc(m) => {
            st.header_mut().set_dl_src(*m);
            st.key.set(Field::DlSrc, mac_u64(m));
            st.modified = true;
        }
        Action::SetDlDst(m) => {
            st.header_mut().set_dl_dst(*m);
            st.key.set(Field::DlDst, mac_u64(m));
            st.modified = true;
        }
        Action::SetNwSrc(ip) => {
            st.header_mut().set_nw_src(*ip);
            st.key.set(Field::NwSrc, u64::from(u32::from(*ip)));
            st.modified = true;
        }
        Action::SetNwDst(ip) => {
            st.header_mut().set_nw_dst(*ip);
            st.key.set(Field::NwDst, u64::from(u32::from(*ip)));
            st.modified = true;
        }
        Action::SetNwTos(tos) => {
            st.header_mut().set_nw_tos(*tos);
            st.key.set(Field::NwTos, u64::from(*tos & 0xfc));
            st.modified = true;
        }
        // The key follows only a port that was there to change (see `HeaderBuf::set_tp_src`).
        Action::SetTpSrc(p) => {
            if st.header_mut().set_tp_src(*p) {
                st.key.set(Field::TpSrc, u64::from(*p));
            }
            st.modified = true;
        }
        Action::SetTpDst(p) => {
            if st.header_mut().set_tp_dst(*p) {
                st.key.set(Field::TpDst, u64::from(*p));
            }
            st.modified = true;
        }
        Action::SetNwTtl(t) => {
            st.header_mut().set_nw_ttl(*t);
            st.key.set(Field::NwTtl, u64::from(*t));
            st.modified = true;
        }
        Action::SetIpv6Src(a) | Action::SetIpv6Dst(a) => {
            let (hi, lo) = if matches!(action, Action::SetIpv6Src(_)) {
                st.header_mut().set_ipv6_src(*a);
                (Field::Ipv6SrcHi, Field::Ipv6SrcLo)
            } else {
                st.header_mut().set_ipv6_dst(*a);
                (Field::Ipv6DstHi, Field::Ipv6DstLo)
            };
            let v = u128::from(*a);
            st.key.set(hi, (v >> 64) as u64);
            st.key.set(lo, v as u64);
            st.modified = true;
        }
        Action::SetArp { field, value } => {
            st.header_mut().set_arp(*field, *value);
            st.key.set(*field, *value);
            st.modified = true;
        }
        Action::DecTtl => {
            if !st.header_mut().dec_ttl() {
                return Err(Halt::TtlExpired);
            }
            let ttl = st.key.get(Field::NwTtl);
            st.key.set(Field::NwTtl, ttl.saturating_sub(1));
            st.modified = true;
        }
        Action::SetField { field, value } => set_field(st, *field, *value)?,
        Action::SetTunnel(vni) => {
            st.tun_id = Some(*vni);
            st.key.set(Field::TunId, *vni);
        }
        _ => {}
    }
    Ok(())
}

fn mac_u64(m: &[u8; 6]) -> u64 {
    m.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

pub fn set_field(st: &mut ExecState, field: Field, value: u64) -> Result<(), Halt> {
    let b = value.to_be_bytes();
    match field {
        Field::DlSrc => st
            .header_mut()
            .set_dl_src([b[2], b[3], b[4], b[5], b[6], b[7]]),
        Field::DlDst => st
            .header_mut()
            .set_dl_dst([b[2], b[3], b[4], b[5], b[6], b[7]]),
        Field::NwSrc => st
            .header_mut()
            .set_nw_src(std::net::Ipv4Addr::from(value as u32)),
        Field::NwDst => st
            .header_mut()
            .set_nw_dst(std::net::Ipv4Addr::from(value as u32)),
        Field::NwTos => st.header_mut().set_nw_tos(value as u8),
        Field::TpSrc | Field::TpDst => {
            let h = st.header_mut();
            let changed = match field {
                Field::TpSrc => h.set_tp_src(value as u16),
                _ => h.set_tp_dst(value as u16),
            };
            st.modified = true;
            if !changed {
                return Ok(());
            }
        }
        // A TCI without the CFI bit means no tag (as OVS's vlan_tci).
        Field::VlanTci if value & 0x1000 == 0 => {
            st.header_mut().strip_vlan();
            st.key.set(Field::VlanTci, 0);
            st.modified = true;
            return Ok(());
        }
        Field::VlanTci => {
            if !st.header_mut().set_vlan_vid((value & 0x0fff) as u16)
                || !st.header_mut().set_vlan_pcp(((value >> 13) & 7) as u8)
            {
                return Err(Halt::VlanTagLimit);
            }
        }
        Field::TunId => st.tun_id = Some(value),
        Field::Ipv6Label => st.header_mut().set_ipv6_label(value as u32),
        Field::NwEcn => st.header_mut().set_nw_ecn(value as u8),
        // Pipeline metadata: only the key changes.
        Field::Metadata | Field::Reg(_) | Field::XReg(_) | Field::InPort => {
            st.key.set(field, value);
            return Ok(());
        }
        // Fields the parser does not offer for set_field.
        _ => return Ok(()),
    }
    st.key.set(field, value);
    if field != Field::TunId {
        st.modified = true;
    }
    Ok(())
}
