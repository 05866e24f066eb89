//! Patchbay's vhost-user switch: ports that guests' virtio-net devices connect to, MAC
//! learning per VLAN, 802.1Q access and trunk ports, a control socket and Prometheus metrics.
//!
//! Where each concept lives:
//! - `wire`: Ethernet and 802.1Q header views.
//! - `virtio`: features, the virtio-net header and validated descriptor chains.
//! - `offload`: checksum and segmentation offloads (metadata, software fallbacks).
//! - `port`: a port, its vhost-user backend, its connection loop and counters.
//! - `frame`: a frame in flight (where its bytes are, how its header changes, tunnel metadata).
//! - `dataplane`: the frame path between ports.
//! - `vlan`, `mac_table`: forwarding policy and state.
//! - `flow`: OpenFlow-like flow tables; `conntrack`: the connections their `ct` action tracks.
//! - `switch`: ports + table + background threads.
//! - `worker`: the dataplane threads (poll or event mode, one loop).
//! - `tunnel`: the VXLAN tunnel port's I/O (encapsulation and tables in `patchbay-overlay`).
//! - `evpn`: BGP EVPN through FRR (shadow kernel devices zebra reads and writes).
//! - `config`, `control`, `metrics`: how users configure, drive and observe it.

pub mod config;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod evpn;
pub mod flow;
pub mod frame;
pub mod host_port;
pub mod mac_table;
pub mod metrics;
pub mod offload;
pub mod port;
pub mod port_security;
pub mod prefetch;
pub mod prehash;
pub mod rate_limit;
pub mod state;
pub mod switch;
pub mod takeover;
pub mod tunnel;
pub mod virtio;
pub mod vlan;
pub mod wire;
pub mod worker;
