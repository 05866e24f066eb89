//! Ports behind the host's kernel other than the tunnel: the internal port, a tap device the
//! switch creates and owns (like Open vSwitch's bridge-internal port), so the host's own
//! stack joins the port's VLANs: give the device an address and the host pings its VMs, or
//! serves them DHCP.
//!
//! Frames from the host are read from the tap by one thread per port and switched like a
//! guest's (`switch_frames`); frames for the host are written to the tap by the dataplane
//! thread that switched them, one `writev` each (the kernel takes one frame per call from a
//! tap). The device carries no virtio-net header (no IFF_VNET_HDR): the frame path completes
//! checksums and cuts TCP super-frames to the device's MTU before writing (`soft.rs`), and
//! the host's stack does the same for what it sends. The device goes away when the port is
//! removed or the switch stops (it is not persistent).

mod tap;

use std::sync::Arc;
use std::thread;

use crate::dataplane::SwitchScratch;
use crate::dataplane::{switch_frames, Delivery, Fabric, Frame, FrameBytes, HostEgress, Source};
use crate::flow::rewrite::HeaderBuf;
use crate::offload::Offload;
use crate::port::{DropReason, Port};

pub use tap::Tap;

/// Frames read from the device per batch.
const RX_BATCH: usize = 32;
/// How long the receive thread waits for a frame before it looks for removal or shutdown.
const RX_WAIT_MS: i32 = 200;
/// Room for a VLAN tag over the device's MTU and Ethernet header.
const L2_OVERHEAD: u32 = 14 + 4;

#[derive(Debug, thiserror::Error)]
pub enum HostPortError {
    #[error("cannot create tap device '{dev}': {source}")]
    Create { dev: String, source: std::io::Error },
    #[error("cannot start the receive thread of '{dev}': {source}")]
    Thread { dev: String, source: std::io::Error },
}

/// An internal port: its tap device, open while the port exists.
pub struct InternalPort {
    tap: Tap,
    /// The largest frame written to the device: its MTU at creation plus an Ethernet header
    /// and a tag (TCP super-frames are cut to fit).
    max_frame: u32,
}

impl InternalPort {
    /// Creates the port's tap device and brings it up.
    pub fn open(port: &Port) -> Result<InternalPort, HostPortError> {
        let dev = port.config.interface_name().to_string();
        let tap = Tap::create(&dev, port.mac).map_err(|source| HostPortError::Create {
            dev: dev.clone(),
            source,
        })?;
        let mtu = tap.mtu().unwrap_or(1500);
        log::info!(
            "port {}: tap device {dev} created and up (MTU {mtu})",
            port.name
        );
        Ok(InternalPort {
            tap,
            max_frame: mtu + L2_OVERHEAD,
        })
    }

    /// Registers the port's egress with the fabric and starts its receive thread, which ends
    /// (and closes the device) once the port is removed or the switch stops.
    pub fn start(
        self,
        fabric: Arc<Fabric>,
        port: Arc<Port>,
    ) -> Result<thread::JoinHandle<()>, HostPortError> {
        let me = Arc::new(self);
        let dev = me.tap.name().to_string();
        fabric.set_host_egress(port.id, Some(me.clone()));
        let spawned = thread::Builder::new()
            .name(format!("internal-{}", port.id))
            .spawn({
                let fabric = fabric.clone();
                let port = port.clone();
                move || {
                    me.rx_loop(&fabric, &port);
                    fabric.set_host_egress(port.id, None);
                    log::info!("port {}: tap device {} closed", port.name, me.tap.name());
                }
            });
        spawned.map_err(|source| {
            fabric.set_host_egress(port.id, None);
            HostPortError::Thread { dev, source }
        })
    }

    fn rx_loop(&self, fabric: &Fabric, port: &Port) {
        // One byte over the largest frame the switch takes, to tell a longer one.
        let slot = fabric.max_frame_len as usize + 1;
        let mut buf = vec![0u8; RX_BATCH * slot];
        let mut frames: Vec<Frame> = Vec::with_capacity(RX_BATCH);
        let mut scratch = SwitchScratch::default();
        while !fabric.is_stopping() && !port.is_removed() {
            if !self.tap.wait_readable(RX_WAIT_MS) {
                continue;
            }
            frames.clear();
            for i in 0..RX_BATCH {
                let at = i * slot;
                let len = match self.tap.read(&mut buf[at..at + slot]) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        port.log_bad_input(format_args!("reading {}: {e}", self.tap.name()));
                        break;
                    }
                };
                if len >= slot {
                    port.counters.drop(DropReason::TooBig, 1);
                    port.log_bad_input(format_args!(
                        "a frame from {} longer than the switch's limit of {} bytes",
                        self.tap.name(),
                        fabric.max_frame_len
                    ));
                    continue;
                }
                if len < 14 {
                    port.counters.drop(DropReason::Runt, 1);
                    continue;
                }
                frames.push(Frame {
                    head: 0,
                    len: len as u32,
                    bytes: FrameBytes::Host { start: at, len },
                    tunnel: None,
                    // The host's stack completed its checksums (the device offers it no
                    // offloads), but the switch does not vouch for them.
                    offload: Offload::NONE,
                });
            }
            if frames.is_empty() {
                continue;
            }
            let source = Source::host(&buf);
            if port
                .guard_dataplane(|| switch_frames(fabric, port, &source, &frames, &mut scratch))
                .is_none()
            {
                scratch = SwitchScratch::default();
            }
        }
    }
}

impl HostEgress for InternalPort {
    fn transmit(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: &[HeaderBuf],
    ) {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        let (mut sent, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        for d in group {
            let frame = &frames[usize::from(d.frame)];
            let (prefix, skip) = d.prefix(headers);
            iov.clear();
            if !prefix.is_empty() {
                iov.push(libc::iovec {
                    iov_base: prefix.as_ptr() as *mut libc::c_void,
                    iov_len: prefix.len(),
                });
            }
            source.for_each_piece(frame, skip, |at, len| {
                iov.push(libc::iovec {
                    iov_base: at as *mut libc::c_void,
                    iov_len: len,
                })
            });
            // SAFETY: the pieces are the frame's bytes in the batch's source (guest memory
            // held by the batch's map, or its host buffer) and the header in `headers`, all
            // alive for this call.
            match unsafe { self.tap.write(&iov) } {
                Ok(()) => {
                    sent += 1;
                    bytes += u64::from(d.out_len(frame.len, headers));
                }
                Err(e) => {
                    failed += 1;
                    port.log_bad_input(format_args!("writing to {}: {e}", self.tap.name()));
                }
            }
        }
        port.counters.count_tx(sent, bytes);
        // The device refused them (down, or its queue full): as a guest without buffers.
        port.counters.drop(DropReason::NoBuffer, failed);
    }

    fn max_frame(&self) -> u32 {
        self.max_frame
    }
}
