//! Outputs (`output:PORT`, `in_port`, `flood`, `all`, `normal`, and a table-0 miss to the
//! learning switch): the copies of the packet that leave, each with the header and tunnel
//! ID as the actions have left them so far. (`drop` is no action: a run that outputs
//! nothing drops the packet.) The pipeline's dispatcher names each action's [`Target`].

use super::ExecState;
use crate::flow::pipeline::{Output, Target, MAX_OUTPUTS};

/// A copy of the packet to `target` (none past [`MAX_OUTPUTS`]); it carries a header only
/// if the actions changed it.
#[inline]
pub fn push(outputs: &mut Vec<Output>, st: &ExecState, target: Target) {
    if outputs.len() < MAX_OUTPUTS {
        outputs.push(Output {
            target,
            header: if st.modified { st.header } else { None },
            tun_id: st.tun_id,
        });
    }
}
