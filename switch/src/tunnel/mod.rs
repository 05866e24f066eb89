//! The VXLAN tunnel port: the switch's VTEP. Frames of a VLAN mapped to a VNI leave through
//! it encapsulated (RFC 7348) towards the remote VTEP that learned or configured their
//! destination, or to every VTEP of the VNI's flood list (head-end replication); VXLAN
//! packets arriving on the UDP port are decapsulated, checked and switched like frames from
//! any other port. Encapsulation and the tables are in the `patchbay-overlay` crate; this
//! module does the I/O:
//!
//! - `tx.rs`: sending, batched per socket, segmented by the kernel where it can (GSO);
//! - `rx.rs`: receiving, batched, coalesced by the kernel where it can (GRO);
//! - `proxy.rs`: the ARP/ND proxy (learning on receive, answering on send);
//! - `udp.rs`: the sockets and the kernel's UDP offloads.

mod proxy;
mod rx;
mod tx;
mod udp;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread;
use std::time::Duration;

use patchbay_overlay::encap::max_inner_frame;
use patchbay_overlay::vtep::{LocalMacMove, TunnelDrop, UdpIoSnapshot, Vtep, VtepConfig};

use crate::dataplane::{Delivery, Fabric, Frame, HostEgress, Source};
use crate::mac_table::PortId;
use crate::port::{DropReason, Port};
use crate::vlan::VlanSet;
use crate::wire::EthernetAddress;

use tx::Senders;
use tx::TxScratch;

/// Name of the tunnel port in the port table.
pub const TUNNEL_PORT_NAME: &str = "vxlan";

/// Receive socket buffer size asked for (the kernel doubles it for bookkeeping).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Send buffer of each sending socket: a batch's datagrams, coalesced or not.
const SENDER_BUFFER: libc::c_int = 2 << 20;

/// Log lines about dropped tunnel packets, at most one per reason per second: the packets
/// come from the network, which must not be able to flood the log. Lines skipped in between
/// are counted into the next one (the drop counters have every packet).
#[derive(Default)]
struct DropLog {
    /// Per reason ([`TunnelDrop::ALL`] order): the second of the last line, lines skipped.
    last: [Option<u64>; TunnelDrop::ALL.len()],
    skipped: [u64; TunnelDrop::ALL.len()],
}

impl DropLog {
    fn warn(&mut self, now_secs: u64, reason: TunnelDrop, what: impl FnOnce() -> String) {
        if let Some(line) = self.line(now_secs, reason, what) {
            log::warn!("{line}");
        }
    }

    /// The line to log for this drop, or None if one was logged for `reason` this second.
    fn line(
        &mut self,
        now_secs: u64,
        reason: TunnelDrop,
        what: impl FnOnce() -> String,
    ) -> Option<String> {
        let i = TunnelDrop::ALL.iter().position(|r| *r == reason)?;
        if self.last[i] == Some(now_secs) {
            self.skipped[i] += 1;
            return None;
        }
        self.last[i] = Some(now_secs);
        let skipped = std::mem::take(&mut self.skipped[i]);
        let more = if skipped > 0 {
            format!(" ({skipped} more {} drops not logged)", reason.label())
        } else {
            String::new()
        };
        Some(format!(
            "vxlan: dropped {} ({}){more}",
            what(),
            reason.label()
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("[vxlan]: {0}")]
    Config(String),
    #[error("cannot bind the VXLAN UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the VXLAN sending sockets on {local}: {source}")]
    Senders {
        local: IpAddr,
        source: std::io::Error,
    },
    #[error("cannot start the VXLAN receive thread: {0}")]
    Thread(std::io::Error),
}

pub struct Tunnel {
    pub port_id: PortId,
    pub vtep: Vtep,
    local: IpAddr,
    dst_port: u16,
    max_inner: u32,
    senders: Senders,
    /// The receiving socket, on the VXLAN port.
    udp: UdpSocket,
    /// Whether the kernel coalesces what `udp` receives (UDP_GRO).
    gro: bool,
    pub io: TunnelIo,
    /// The switch's shared state (set when receiving starts), for the ARP/ND proxy's
    /// answers, which are switched from the sending side. Weak: the fabric holds the tunnel.
    fabric: OnceLock<Weak<Fabric>>,
}

/// Frames counted for the VTEP's per-VNI and per-remote counters, a run of one (VNI, remote)
/// at a time: a batch's frames mostly share both, and each count takes the VTEP's locks.
#[derive(Debug, Default)]
struct RunCount {
    key: Option<(patchbay_overlay::Vni, IpAddr)>,
    packets: u64,
    bytes: u64,
}

impl RunCount {
    /// Adds a frame; `flush` is called with the previous run when the key changes.
    fn add(
        &mut self,
        vni: patchbay_overlay::Vni,
        remote: IpAddr,
        bytes: u64,
        flush: impl FnOnce(patchbay_overlay::Vni, IpAddr, u64, u64),
    ) {
        if self.key != Some((vni, remote)) {
            self.take(flush);
            self.key = Some((vni, remote));
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Hands the run counted so far to `flush` and starts afresh.
    fn take(&mut self, flush: impl FnOnce(patchbay_overlay::Vni, IpAddr, u64, u64)) {
        if let Some((vni, remote)) = self.key.take() {
            if self.packets > 0 {
                flush(vni, remote, self.packets, self.bytes);
            }
        }
        (self.packets, self.bytes) = (0, 0);
    }
}

/// The tunnel's socket I/O, for the metrics: system calls and datagrams each way, and how
/// many datagrams travelled in the kernel's segmented sends (GSO) and coalesced receives
/// (GRO). Added once per system call.
#[derive(Debug, Default)]
pub struct TunnelIo {
    pub tx_syscalls: AtomicU64,
    pub tx_datagrams: AtomicU64,
    pub tx_gso_datagrams: AtomicU64,
    pub rx_syscalls: AtomicU64,
    pub rx_datagrams: AtomicU64,
    pub rx_gro_datagrams: AtomicU64,
}

impl TunnelIo {
    pub fn snapshot(&self) -> UdpIoSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpIoSnapshot {
            tx_syscalls: get(&self.tx_syscalls),
            tx_datagrams: get(&self.tx_datagrams),
            tx_gso_datagrams: get(&self.tx_gso_datagrams),
            rx_syscalls: get(&self.rx_syscalls),
            rx_datagrams: get(&self.rx_datagrams),
            rx_gro_datagrams: get(&self.rx_gro_datagrams),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// Each dataplane thread's work space for sending (per-thread state: no lock, no
    /// allocation once warm).
    static TX_SCRATCH: std::cell::RefCell<TxScratch> = std::cell::RefCell::new(TxScratch::default());
}

impl HostEgress for Tunnel {
    fn transmit(
        &self,
        port: &Port,
        source: &Source<'_>,
        frames: &[Frame],
        group: &[Delivery],
        headers: crate::dataplane::Headers<'_>,
    ) {
        let answers = TX_SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                self.transmit_with(port, source, frames, group, headers, &mut scratch);
                (!scratch.answers.is_empty()).then(|| std::mem::take(&mut scratch.answers))
            }
            // Re-entered on one thread (cannot happen: answers are switched below, once the
            // scratch is free).
            Err(_) => {
                port.counters.drop(DropReason::NoBuffer, group.len() as u64);
                None
            }
        });
        // The ARP/ND proxy's answers, switched once the group has left and the scratch is
        // free (switching them may bring frames back here); then their buffers go back.
        if let Some(mut answers) = answers {
            self.deliver_answers(port, &answers);
            answers.clear();
            TX_SCRATCH.with(|scratch| {
                if let Ok(mut scratch) = scratch.try_borrow_mut() {
                    scratch.answers = answers;
                }
            });
        }
    }

    fn max_frame(&self) -> u32 {
        self.max_inner
    }
}

impl Tunnel {
    /// Binds the VTEP's sockets (the receiving one on the VXLAN port, the sending ones on
    /// ports of the kernel's choosing) and turns on the kernel's UDP offloads where it has
    /// them and the config allows (logged either way). Fails (before the switch starts) if
    /// the address is not local or the port is taken.
    pub fn bind(port_id: PortId, cfg: VtepConfig) -> Result<Tunnel, TunnelError> {
        let local = cfg.local_ip;
        let dst_port = cfg.port;
        let max_inner = max_inner_frame(cfg.underlay_mtu, local.is_ipv6());
        let addr = SocketAddr::new(local, dst_port);
        let udp = UdpSocket::bind(addr).map_err(|source| TunnelError::Bind { addr, source })?;
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|source| TunnelError::Bind { addr, source })?;
        // A guest's whole ring can arrive in one burst; the default buffer (~200 small
        // packets) would drop most of it before the receive thread runs.
        udp::set_buffer(
            udp.as_raw_fd(),
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            SOCKET_BUFFER,
        );
        let gro = if cfg.udp_offloads {
            udp::enable_gro(&udp).map_err(|e| format!("the kernel has no UDP GRO ({e})"))
        } else {
            Err("off in the config (udp_offloads = false)".to_string())
        };
        let (senders, gso) = Senders::open(local, cfg.udp_offloads, SENDER_BUFFER)
            .map_err(|source| TunnelError::Senders { local, source })?;
        match (&gso, &gro) {
            (Ok(()), Ok(())) => log::info!("vxlan: UDP segmentation (GSO) and coalescing (GRO) on"),
            _ => log::info!(
                "vxlan: UDP segmentation {}, coalescing {}",
                gso.as_ref()
                    .map_or_else(|e| format!("off: {e}"), |()| "on".into()),
                gro.as_ref()
                    .map_or_else(|e| format!("off: {e}"), |()| "on".into()),
            ),
        }
        let vtep = Vtep::new(cfg).map_err(|e| TunnelError::Config(e.to_string()))?;
        Ok(Tunnel {
            port_id,
            vtep,
            local,
            dst_port,
            max_inner,
            senders,
            udp,
            gro: gro.is_ok(),
            io: TunnelIo::default(),
            fabric: OnceLock::new(),
        })
    }

    /// Whether the kernel's UDP segmentation and coalescing are in use (GSO, GRO).
    pub fn udp_offloads(&self) -> (bool, bool) {
        (self.senders.gso(), self.gro)
    }

    /// The VLANs the tunnel carries, for its port's VLAN policy.
    pub fn vlan_set(&self) -> VlanSet {
        let mut set = VlanSet::empty();
        for vlan in self.vtep.mapped_vlans() {
            set.insert(vlan);
        }
        set
    }

    pub fn describe(&self) -> String {
        format!("vxlan udp {}:{}", self.local, self.dst_port)
    }

    /// Starts the receive thread: decapsulate, check, learn, switch.
    pub fn spawn_rx(
        self: &Arc<Self>,
        fabric: Arc<Fabric>,
    ) -> Result<thread::JoinHandle<()>, TunnelError> {
        let _ = self.fabric.set(Arc::downgrade(&fabric));
        let tunnel = self.clone();
        thread::Builder::new()
            .name("vxlan-rx".into())
            .spawn(move || tunnel.rx_loop(&fabric))
            .map_err(TunnelError::Thread)
    }

    /// The local port `src` is learned on in `vlan`, if a tunnel packet from that address
    /// must be refused: under `local_mac_move = "deny"`, a remote may not take over the
    /// address of a guest on this switch. Group addresses are never learned, so never owned.
    fn local_owner(&self, fabric: &Fabric, vlan: u16, src: EthernetAddress) -> Option<PortId> {
        if self.vtep.local_mac_move() == LocalMacMove::Allow || !src.is_unicast() {
            return None;
        }
        let table = &fabric.mac_table;
        table
            .lookup(vlan, src, table.now())
            .filter(|owner| *owner != self.port_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_log_lines_are_rate_limited_per_reason() {
        let mut log = DropLog::default();
        let what = || "a packet from 192.0.2.9 for VNI 42".to_string();
        assert_eq!(
            log.line(5, TunnelDrop::UnknownVtep, what).as_deref(),
            Some("vxlan: dropped a packet from 192.0.2.9 for VNI 42 (unknown-vtep)")
        );
        for _ in 0..3 {
            assert_eq!(log.line(5, TunnelDrop::UnknownVtep, what), None);
        }
        // Another reason has its own budget.
        assert!(log.line(5, TunnelDrop::LocalMacClaim, what).is_some());
        assert_eq!(
            log.line(6, TunnelDrop::UnknownVtep, what).as_deref(),
            Some(
                "vxlan: dropped a packet from 192.0.2.9 for VNI 42 (unknown-vtep) \
                 (3 more unknown-vtep drops not logged)"
            )
        );
        assert_eq!(
            log.line(7, TunnelDrop::UnknownVtep, what).as_deref(),
            Some("vxlan: dropped a packet from 192.0.2.9 for VNI 42 (unknown-vtep)")
        );
    }
}
