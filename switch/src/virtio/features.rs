//! The virtio feature bits the switch offers, each one fully honoured.

use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// vhost-user's own bit: the frontend may send GET/SET_PROTOCOL_FEATURES.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

pub const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Offered to every frontend. No checksum or segmentation offloads: the switch does not
/// complete partial checksums, so it does not let guests leave them partial. No MTU bit: a
/// guest keeps its own default (1500) until its user raises it; the switch carries frames up
/// to its configured MTU (9000 by default). NOTIFY_ON_EMPTY is listed because legacy drivers
/// expect it and we notify whenever we return used buffers anyway.
pub const OFFERED_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_F_NOTIFY_ON_EMPTY)
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Size of `struct virtio_net_hdr` as negotiated: 12 bytes with VERSION_1 or MRG_RXBUF
/// (`num_buffers` present), else the legacy 10 bytes.
pub fn net_header_len(features: u64) -> usize {
    if features & (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)) != 0 {
        12
    } else {
        10
    }
}

/// Whether receive buffers may be merged (a frame spread over several RX chains).
pub fn mergeable_rx(features: u64) -> bool {
    features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
}

pub fn event_idx(features: u64) -> bool {
    features & bit(VIRTIO_RING_F_EVENT_IDX) != 0
}

/// Names of the negotiated bits, for `flowctl show ports`.
pub fn feature_names(features: u64) -> Vec<&'static str> {
    const NAMES: &[(u32, &str)] = &[
        (VIRTIO_NET_F_MTU, "MTU"),
        (VIRTIO_NET_F_MAC, "MAC"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_NET_F_STATUS, "STATUS"),
        (VIRTIO_F_NOTIFY_ON_EMPTY, "NOTIFY_ON_EMPTY"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (30, "PROTOCOL_FEATURES"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| features & bit(*b) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_negotiation() {
        assert_eq!(net_header_len(0), 10, "legacy without mergeable buffers");
        assert_eq!(net_header_len(bit(VIRTIO_NET_F_MRG_RXBUF)), 12);
        assert_eq!(net_header_len(bit(VIRTIO_F_VERSION_1)), 12);
        assert!(feature_names(OFFERED_FEATURES).contains(&"EVENT_IDX"));
    }
}
