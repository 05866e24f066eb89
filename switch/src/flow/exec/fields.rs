//! `load` and `move`: bits into and between fields.

use super::header::set_field;
use super::ExecState;
use crate::flow::action::SubField;
use crate::flow::key::{Field, FlowKey};
use crate::flow::pipeline::Halt;

/// The bits of `sf`, shifted down to bit 0.
pub fn read(key: &FlowKey, sf: SubField) -> u64 {
    (key.get(sf.field) & sf.mask()) >> sf.ofs
}

/// Writes `bits` (from bit 0) into `dst`; a header field is rewritten in the header too.
pub fn load(st: &mut ExecState, dst: SubField, bits: u64) -> Result<(), Halt> {
    let mask = dst.mask();
    let old = st.key.get(dst.field);
    let new = (old & !mask) | ((bits << dst.ofs) & mask);
    set_field(st, dst.field, new)
}

/// `move:SRC->DST` (the parser checked both have the same width).
pub fn move_bits(st: &mut ExecState, src: SubField, dst: SubField) -> Result<(), Halt> {
    let bits = read(&st.key, src);
    load(st, dst, bits)
}

/// Whether writing `field` changes the packet's header (not only the pipeline's metadata).
pub fn in_header(field: Field) -> bool {
    !matches!(
        field,
        Field::Metadata | Field::Reg(_) | Field::XReg(_) | Field::InPort | Field::TunId
    )
}
