//! Per-port counters, written on the frame path with relaxed atomics and read by the metrics
//! endpoint and the control socket. Directions are the switch's: `rx` is what the switch
//! received from the port (the guest transmitted), `tx` is what it delivered to the port.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why a frame was dropped. Each reason is a separate counter and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The destination guest had no receive buffer posted (counted on the egress port).
    NoBuffer,
    /// A malformed descriptor chain: loop, bad index, out-of-range buffer, wrong direction,
    /// zero length (counted on the port whose guest wrote it).
    BadDescriptor,
    /// The port's VLAN policy refused the frame at ingress.
    VlanFilter,
    /// Larger than the switch's frame limit, or than the receiving guest's buffer when
    /// buffers cannot be merged. Never truncated.
    TooBig,
    /// Shorter than its own L2 header.
    Runt,
    /// Learned destination is the port it came from.
    Hairpin,
    /// A stacked VLAN tag that would escape its VLAN: a priority-tagged or untagged frame
    /// carrying another 802.1Q/802.1ad tag, or a frame whose inner tag would be exposed by
    /// popping its outer one on the way out (counted on the port that sent it).
    DoubleTagged,
    /// An offload request the frame cannot honour: a virtio-net header with a checksum
    /// outside the frame, a gso_type the sender did not negotiate, gso_size 0, a super-frame
    /// whose headers are not TCP/UDP over IP (counted on the port that sent it).
    BadOffload,
    /// A frame port security refused: a source MAC or IP, an ARP or neighbour discovery
    /// claim, or a DHCP server reply the port is not allowed (counted on the port that
    /// sent it).
    Spoofed,
    /// Over the port's ingress policing rate (counted on the port that sent it).
    Policed,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::NoBuffer,
        DropReason::BadDescriptor,
        DropReason::VlanFilter,
        DropReason::TooBig,
        DropReason::Runt,
        DropReason::Hairpin,
        DropReason::DoubleTagged,
        DropReason::BadOffload,
        DropReason::Spoofed,
        DropReason::Policed,
    ];

    /// The label used in metrics and flowctl.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::NoBuffer => "no-buffer",
            DropReason::BadDescriptor => "bad-descriptor",
            DropReason::VlanFilter => "vlan-filter",
            DropReason::TooBig => "too-big",
            DropReason::Runt => "runt",
            DropReason::Hairpin => "hairpin",
            DropReason::DoubleTagged => "double-tagged",
            DropReason::BadOffload => "bad-offload",
            DropReason::Spoofed => "spoofed",
            DropReason::Policed => "policed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one port. They survive reconnects: they describe the port, not a connection.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received from the guest and accepted for switching.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Batches taken from the guest's transmit ring: `rx_packets / rx_batches` is the mean
    /// batch, and the per-batch costs (ring indexes, notifications) weigh more per frame the
    /// smaller it is.
    pub rx_batches: AtomicU64,
    /// Frames written into the guest's receive ring.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames dropped, indexed by [`DropReason`].
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Times a frontend connected to this port.
    pub connects: AtomicU64,
    /// Interrupts (call eventfd writes) sent to the guest.
    pub notifications: AtomicU64,
    /// vhost-user requests refused (protocol mistakes that did not end the connection).
    pub protocol_errors: AtomicU64,
    /// RARP broadcasts sent for the port's guest at the end of a migration (SEND_RARP).
    pub announcements: AtomicU64,
    /// Connections failed because the frontend's memory shrank under a mapping.
    pub memory_faults: AtomicU64,
    /// Source addresses not learned because the port reached its MAC limit.
    pub mac_learn_refused: AtomicU64,
    /// Dataplane panics while serving this port (each failed its connection).
    pub dataplane_panics: AtomicU64,
    /// Chains waiting in the guest's transmit ring when the switch last looked (before it
    /// took its batch): a backlog that stays high means the switch falls behind the guest.
    pub rx_ring_pending: AtomicU64,
    /// Receive buffers the guest had posted when the switch last delivered to it (before
    /// it filled them): near zero means the guest falls behind, and `no-buffer` drops follow.
    pub tx_ring_free: AtomicU64,
}

impl PortCounters {
    /// Counts `packets` frames of `bytes` bytes in all. The frame path calls this once per
    /// batch, not per frame: a locked add waits for every store before it (the frame just
    /// written into a guest's buffers, on cache lines the guest's core owns), so one per
    /// frame costs that frame the full latency of its writes.
    pub fn count_rx(&self, packets: u64, bytes: u64) {
        if packets > 0 {
            self.rx_packets.fetch_add(packets, Ordering::Relaxed);
            self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts `packets` frames of `bytes` bytes in all (once per batch, see `count_rx`).
    pub fn count_tx(&self, packets: u64, bytes: u64) {
        if packets > 0 {
            self.tx_packets.fetch_add(packets, Ordering::Relaxed);
            self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Records a ring's fill at a look (once per batch; written only when it changed, so an
    /// idle ring's polls leave the counters' line alone).
    pub fn sample_ring(gauge: &AtomicU64, entries: u16) {
        let entries = u64::from(entries);
        if gauge.load(Ordering::Relaxed) != entries {
            gauge.store(entries, Ordering::Relaxed);
        }
    }

    pub fn drop(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.drops[reason.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            rx_packets: load(&self.rx_packets),
            rx_bytes: load(&self.rx_bytes),
            rx_batches: load(&self.rx_batches),
            tx_packets: load(&self.tx_packets),
            tx_bytes: load(&self.tx_bytes),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.label().to_string(), self.drops(*r)))
                .collect(),
            connects: load(&self.connects),
            notifications: load(&self.notifications),
            protocol_errors: load(&self.protocol_errors),
            announcements: load(&self.announcements),
            memory_faults: load(&self.memory_faults),
            mac_learn_refused: load(&self.mac_learn_refused),
            dataplane_panics: load(&self.dataplane_panics),
        }
    }
}

/// Counter values at one instant, as sent over the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Batches taken from the guest's transmit ring.
    #[serde(default)]
    pub rx_batches: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// (reason label, count), in [`DropReason::ALL`] order.
    pub drops: Vec<(String, u64)>,
    pub connects: u64,
    pub notifications: u64,
    pub protocol_errors: u64,
    #[serde(default)]
    pub announcements: u64,
    #[serde(default)]
    pub memory_faults: u64,
    #[serde(default)]
    pub mac_learn_refused: u64,
    #[serde(default)]
    pub dataplane_panics: u64,
}

impl CounterSnapshot {
    pub fn drop_count(&self, label: &str) -> u64 {
        self.drops
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0, |(_, n)| *n)
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }
}
