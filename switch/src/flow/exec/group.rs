//! `group:N`: the buckets a group chooses for the packet, each run on its own copy of it.
//! Which buckets is the group's (`flow/group.rs`); running them is here, as the pipeline
//! runs a flow's actions, since a bucket may output, resubmit or `ct` like a flow.

use super::ExecState;
use crate::flow::group::{Bucket, GroupKind};
use crate::flow::pipeline::{
    FlowThread, Halt, Output, Pipeline, Tables, TraceStep, MAX_RESUBMIT_DEPTH,
};

impl Pipeline {
    /// `group:N` in `table`: counts the packet in group `id` and runs its chosen buckets'
    /// actions.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_group(
        &self,
        tables: &Tables,
        id: u32,
        table: u8,
        st: &mut ExecState,
        depth: usize,
        outputs: &mut Vec<Output>,
        trace: &mut Option<&mut Vec<TraceStep>>,
        cache: &mut Option<&mut FlowThread>,
    ) -> Result<(), Halt> {
        st.replayable = false;
        let Some(g) = tables.groups.get(&id) else {
            return Ok(());
        };
        if !st.tracing {
            g.count(st.frame_len);
        }
        let group = &g.group;
        // The buckets chosen, without a list made per packet.
        let (mut every, mut one);
        let chosen: &mut dyn Iterator<Item = &Bucket> = match group.kind {
            GroupKind::All => {
                every = group.buckets.iter();
                &mut every
            }
            GroupKind::Select => {
                one = group.select(&st.key).into_iter();
                &mut one
            }
            GroupKind::Indirect => {
                one = group.buckets.first().into_iter();
                &mut one
            }
            // Without the dataplane's view of the ports (a trace), every port counts as up.
            GroupKind::FastFailover => {
                let live = cache.as_deref().map(|t| &t.live_ports);
                one = group
                    .first_live(|p| {
                        live.is_none_or(|l| l.get(usize::from(p)).copied().unwrap_or(false))
                    })
                    .into_iter();
                &mut one
            }
        };
        if depth > MAX_RESUBMIT_DEPTH {
            return Err(Halt::DepthLimit);
        }
        // A bucket's copy may commit or mark in conntrack.
        st.last_tracked = None;
        // Each bucket works on its own copy of the packet (as OVS's clone).
        for bucket in chosen {
            st.count_resubmit()?;
            let mut copy = *st;
            self.run_actions(
                tables,
                &bucket.actions,
                table,
                &mut copy,
                depth + 1,
                outputs,
                trace,
                cache,
                false,
            )?;
            st.resubmits = copy.resubmits;
        }
        Ok(())
    }
}
