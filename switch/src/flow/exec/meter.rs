//! `meter:N`: whether the packet is within the meter's rate (the meter's token bucket is
//! kept in `flow/meter.rs`; here, what admitting or refusing does to the packet's run).

use super::ExecState;
use crate::flow::pipeline::{Halt, Tables};

/// Takes the packet's tokens from meter `id`, or stops the run ([`Halt::Metered`]) if it is
/// over the rate. A meter counts per packet, so the run is not replayed.
#[inline]
pub fn admit(tables: &Tables, id: u32, st: &mut ExecState) -> Result<(), Halt> {
    st.replayable = false;
    // Checked when the flow went in; a meter deleted since took the flow.
    if let Some(m) = tables.meters.get(&id) {
        // A trace asks whether the packet would pass, and takes nothing.
        let admitted = if st.tracing {
            m.would_admit(st.frame_len, st.now_ms)
        } else {
            m.admit(st.frame_len, st.now_ms)
        };
        if !admitted {
            return Err(Halt::Metered);
        }
    }
    Ok(())
}
