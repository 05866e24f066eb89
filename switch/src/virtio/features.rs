//! The virtio feature bits the switch offers, each one fully honoured.

use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_USO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// vhost-user's own bit: the frontend may send GET/SET_PROTOCOL_FEATURES.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// vhost's bit: the frontend may ask for every write to be logged (set while it migrates
/// the guest; `dirty_log.rs`). QEMU refuses to migrate a guest whose backend lacks it.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// virtio-net: the device may ask the driver to announce itself (gratuitous ARP and
/// neighbour advertisements) after a migration. QEMU runs it (it owns the control queue);
/// it hides it from the guest unless the backend offers it.
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u32 = 21;

pub const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Offered to every frontend. No MTU bit: a guest keeps its own default (1500) until its
/// user raises it; the switch carries frames up to its configured MTU (9000 by default).
/// NOTIFY_ON_EMPTY is listed because legacy drivers expect it and we notify whenever we
/// return used buffers anyway. No CTRL_VQ (so no CTRL_GUEST_OFFLOADS): what a guest
/// negotiates at start stays.
pub const BASE_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_F_NOTIFY_ON_EMPTY)
    | bit(VIRTIO_NET_F_GUEST_ANNOUNCE)
    | VHOST_F_LOG_ALL
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// The checksum and segmentation offloads, by the names QEMU's virtio-net properties give
/// them (a port's `offloads` setting uses them), each with the features it needs (virtio
/// 1.2 section 5.1.3.1). The switch honours every one: it passes partial checksums and
/// super-frames to receivers that negotiated the matching GUEST_ feature and completes or
/// segments them in software for the others (see `crate::offload`).
pub const OFFLOADS: &[(&str, u32, &[u32])] = &[
    ("csum", VIRTIO_NET_F_CSUM, &[]),
    ("guest_csum", VIRTIO_NET_F_GUEST_CSUM, &[]),
    ("host_tso4", VIRTIO_NET_F_HOST_TSO4, &[VIRTIO_NET_F_CSUM]),
    ("host_tso6", VIRTIO_NET_F_HOST_TSO6, &[VIRTIO_NET_F_CSUM]),
    (
        "host_ecn",
        VIRTIO_NET_F_HOST_ECN,
        &[VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6],
    ),
    ("host_uso", VIRTIO_NET_F_HOST_USO, &[VIRTIO_NET_F_CSUM]),
    (
        "guest_tso4",
        VIRTIO_NET_F_GUEST_TSO4,
        &[VIRTIO_NET_F_GUEST_CSUM],
    ),
    (
        "guest_tso6",
        VIRTIO_NET_F_GUEST_TSO6,
        &[VIRTIO_NET_F_GUEST_CSUM],
    ),
    (
        "guest_ecn",
        VIRTIO_NET_F_GUEST_ECN,
        &[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6],
    ),
    (
        "guest_uso4",
        VIRTIO_NET_F_GUEST_USO4,
        &[VIRTIO_NET_F_GUEST_CSUM],
    ),
    (
        "guest_uso6",
        VIRTIO_NET_F_GUEST_USO6,
        &[VIRTIO_NET_F_GUEST_CSUM],
    ),
];

/// Every offload bit: what a port offers by default.
pub const ALL_OFFLOADS: u64 = {
    let mut all = 0;
    let mut i = 0;
    while i < OFFLOADS.len() {
        all |= bit(OFFLOADS[i].1);
        i += 1;
    }
    all
};

/// The most any port offers (a port offers [`BASE_FEATURES`], its configured offloads, and
/// MQ when it has more than one queue pair).
pub const OFFERED_FEATURES: u64 = BASE_FEATURES | ALL_OFFLOADS | bit(VIRTIO_NET_F_MQ);

/// A port's `offloads` setting: "all", "none", or a comma-separated list of [`OFFLOADS`]
/// names. Each listed offload must come with one of the features it needs.
pub fn parse_offloads(spec: &str) -> Result<u64, String> {
    let spec = spec.trim();
    let mask = match spec {
        "all" | "" => return Ok(ALL_OFFLOADS),
        "none" => return Ok(0),
        list => {
            let mut mask = 0;
            for name in list.split(',').map(str::trim) {
                let Some((_, b, _)) = OFFLOADS.iter().find(|(n, _, _)| *n == name) else {
                    let known: Vec<_> = OFFLOADS.iter().map(|(n, _, _)| *n).collect();
                    return Err(format!(
                        "unknown offload '{name}' (known: all, none, {})",
                        known.join(", ")
                    ));
                };
                mask |= bit(*b);
            }
            mask
        }
    };
    for (name, b, needs) in OFFLOADS {
        if mask & bit(*b) != 0 && !needs.is_empty() && !needs.iter().any(|n| mask & bit(*n) != 0) {
            let names: Vec<_> = needs
                .iter()
                .filter_map(|n| OFFLOADS.iter().find(|(_, b, _)| b == n).map(|o| o.0))
                .collect();
            return Err(format!("'{name}' needs {}", names.join(" or ")));
        }
    }
    Ok(mask)
}

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

/// The negotiated offloads in short, for `flowctl show ports`: what the guest may send
/// offloaded (tx) and what it takes (rx), e.g. `tx:csum,tso4 rx:csum,tso4`; `-` for none.
pub fn offload_summary(features: u64) -> String {
    const TX: &[(u32, &str)] = &[
        (VIRTIO_NET_F_CSUM, "csum"),
        (VIRTIO_NET_F_HOST_TSO4, "tso4"),
        (VIRTIO_NET_F_HOST_TSO6, "tso6"),
        (VIRTIO_NET_F_HOST_ECN, "ecn"),
        (VIRTIO_NET_F_HOST_USO, "uso"),
    ];
    const RX: &[(u32, &str)] = &[
        (VIRTIO_NET_F_GUEST_CSUM, "csum"),
        (VIRTIO_NET_F_GUEST_TSO4, "tso4"),
        (VIRTIO_NET_F_GUEST_TSO6, "tso6"),
        (VIRTIO_NET_F_GUEST_ECN, "ecn"),
        (VIRTIO_NET_F_GUEST_USO4, "uso4"),
        (VIRTIO_NET_F_GUEST_USO6, "uso6"),
    ];
    let list = |bits: &[(u32, &'static str)]| -> Vec<&'static str> {
        bits.iter()
            .filter(|(b, _)| features & bit(*b) != 0)
            .map(|(_, n)| *n)
            .collect()
    };
    let parts: Vec<String> = [("tx", list(TX)), ("rx", list(RX))]
        .into_iter()
        .filter(|(_, l)| !l.is_empty())
        .map(|(dir, l)| format!("{dir}:{}", l.join(",")))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// Names of the negotiated bits, for `flowctl show ports`.
pub fn feature_names(features: u64) -> Vec<&'static str> {
    const NAMES: &[(u32, &str)] = &[
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_GUEST_ECN, "GUEST_ECN"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_HOST_ECN, "HOST_ECN"),
        (VIRTIO_NET_F_GUEST_USO4, "GUEST_USO4"),
        (VIRTIO_NET_F_GUEST_USO6, "GUEST_USO6"),
        (VIRTIO_NET_F_HOST_USO, "HOST_USO"),
        (VIRTIO_NET_F_MQ, "MQ"),
        (VIRTIO_NET_F_MTU, "MTU"),
        (VIRTIO_NET_F_MAC, "MAC"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_NET_F_STATUS, "STATUS"),
        (VIRTIO_F_NOTIFY_ON_EMPTY, "NOTIFY_ON_EMPTY"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (30, "PROTOCOL_FEATURES"),
        (26, "LOG_ALL"),
        (VIRTIO_NET_F_GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
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
        assert!(feature_names(OFFERED_FEATURES).contains(&"GUEST_USO6"));
    }

    #[test]
    fn offload_summaries_name_each_direction() {
        assert_eq!(offload_summary(BASE_FEATURES), "-");
        assert_eq!(
            offload_summary(OFFERED_FEATURES),
            "tx:csum,tso4,tso6,ecn,uso rx:csum,tso4,tso6,ecn,uso4,uso6"
        );
        assert_eq!(offload_summary(bit(VIRTIO_NET_F_GUEST_CSUM)), "rx:csum");
    }

    #[test]
    fn offload_settings_parse_and_keep_their_dependencies() {
        assert_eq!(parse_offloads("all"), Ok(ALL_OFFLOADS));
        assert_eq!(parse_offloads("none"), Ok(0));
        assert_eq!(
            parse_offloads("csum, guest_csum"),
            Ok(bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM))
        );
        assert_eq!(
            parse_offloads("host_tso4"),
            Err("'host_tso4' needs csum".to_string())
        );
        assert_eq!(
            parse_offloads("guest_csum,guest_ecn"),
            Err("'guest_ecn' needs guest_tso4 or guest_tso6".to_string())
        );
        assert!(parse_offloads("csum,tso")
            .unwrap_err()
            .contains("unknown offload 'tso'"));
        assert!(parse_offloads("csum,host_tso6,host_ecn").is_ok());
    }
}
