//! Helpers shared by the fuzz targets: reading structured values from fuzzer bytes, a guest
//! memory whose contents the fuzzer writes, a split ring over it, and an in-process switch.

use std::path::PathBuf;
use std::sync::OnceLock;

use patchbay_switch::config::Config;
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::{ConnectMode, PortConfig};
use patchbay_switch::virtio::{GuestMap, GuestMemory, Vring};
use vm_memory::{Bytes, GuestAddress};

/// Reads values off the front of the fuzzer's bytes; past the end every value is zero, so
/// any input decodes to something.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Size of each of the two guest memory regions.
pub const REGION_SIZE: usize = 0x1_0000;

/// Two guest memories of two 64 KiB regions each: back to back (a buffer may span the
/// boundary) or with a 64 KiB hole between them (a buffer may fall into it).
fn memories() -> &'static [GuestMap; 2] {
    static MEMS: OnceLock<[GuestMap; 2]> = OnceLock::new();
    MEMS.get_or_init(|| {
        let build = |second: u64| {
            GuestMap::new(
                GuestMemory::from_ranges(&[
                    (GuestAddress(0), REGION_SIZE),
                    (GuestAddress(second), REGION_SIZE),
                ])
                .expect("guest memory for fuzzing"),
            )
        };
        [build(REGION_SIZE as u64), build(3 * REGION_SIZE as u64)]
    })
}

/// A guest memory holding `contents` from address 0 (the rest zeroed); `gap` picks the layout
/// with a hole between the regions. Reused between inputs (one fuzz thread).
pub fn guest_memory(gap: bool, contents: &[u8]) -> &'static GuestMap {
    let map = &memories()[usize::from(gap)];
    let mem = map.memory();
    static ZERO: [u8; REGION_SIZE] = [0; REGION_SIZE];
    let zero = &ZERO[..];
    let second = if gap { 3 } else { 1 } * REGION_SIZE as u64;
    for base in [0, second] {
        mem.write_slice(zero, GuestAddress(base))
            .expect("zero a region");
    }
    let first = contents.len().min(REGION_SIZE);
    mem.write_slice(&contents[..first], GuestAddress(0))
        .expect("fill the first region");
    let rest = &contents[first..];
    let rest = &rest[..rest.len().min(REGION_SIZE)];
    mem.write_slice(rest, GuestAddress(second))
        .expect("fill the second region");
    map
}

/// Where a split ring lies, as a driver would configure it.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub event_idx: bool,
}

impl RingLayout {
    /// Eight bytes: size exponent + flags, then three addresses in units of their alignment.
    pub fn read(r: &mut Reader<'_>) -> RingLayout {
        let b = r.u8();
        RingLayout {
            size: 1 << (b % 9),
            event_idx: b & 0x80 != 0,
            desc: u64::from(r.u16()) * 16,
            avail: u64::from(r.u16()) * 2,
            used: u64::from(r.u16()) * 4,
        }
    }

    /// The device's view of the ring (what the switch builds from SET_VRING_* messages).
    pub fn vring(&self) -> Vring {
        let mut v = Vring::default();
        v.set_size(u32::from(self.size))
            .expect("sizes are powers of two up to 256");
        v.set_addresses(self.desc, self.avail, self.used)
            .expect("addresses are aligned by construction");
        v.event_idx = self.event_idx;
        v
    }
}

/// A switch running in this process, started on first use, with one access port (VLAN 10)
/// and one trunk, both listening in a private directory.
pub struct InProcessSwitch {
    pub daemon: Daemon,
    pub dir: PathBuf,
}

impl InProcessSwitch {
    pub fn port_socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// The ports the switch starts with.
    pub fn initial_ports(dir: &std::path::Path) -> Vec<PortConfig> {
        let port = |name: &str, mode: &str, vlan: Option<u16>, trunks: Option<&str>| PortConfig {
            name: name.to_string(),
            kind: Default::default(),
            interface: None,
            socket: dir.join(format!("{name}.sock")),
            mode: ConnectMode::Server,
            mac: None,
            vlan_mode: Some(mode.to_string()),
            vlan,
            trunks: trunks.map(str::to_string),
            mac_limit: None,
            offloads: None,
            queue_pairs: None,
            allowed_macs: Vec::new(),
            allowed_ips: Vec::new(),
            dhcp_server: false,
            ingress_policing_rate: None,
            ingress_policing_burst: None,
            socket_mode: None,
            socket_group: None,
        };
        vec![
            port("p0", "access", Some(10), None),
            port("p1", "trunk", None, Some("10,20")),
        ]
    }
}

pub fn switch() -> &'static InProcessSwitch {
    static SWITCH: OnceLock<InProcessSwitch> = OnceLock::new();
    SWITCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("patchbay-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz switch's directory");
        let config = Config {
            control_socket: dir.join("control.sock"),
            metrics_listen: None,
            ports: InProcessSwitch::initial_ports(&dir),
            ..Config::default()
        };
        let daemon = Daemon::start(config).expect("in-process switch starts");
        InProcessSwitch { daemon, dir }
    })
}
