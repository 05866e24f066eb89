//! The shadow devices of one VNI: what FRR's zebra needs to see to run EVPN for it, carrying
//! no traffic. A bridge with two ports:
//!
//! - a vxlan device with the VNI, our VTEP's address and a UDP port other than the one the
//!   switch listens on (zebra reads the VNI and the VTEP address from it, and installs the
//!   remote MACs and the flood list into its FDB, where we read them);
//! - a tap device, the switch's local MACs as static FDB entries (zebra advertises them as
//!   type-2 routes). A tap rather than a dummy device (this kernel has no dummy driver)
//!   and for a reason of its own: it lives only as long as the switch holds its file
//!   descriptor, so if the switch dies its entries vanish with it and zebra withdraws them.
//!
//! IPv6 is turned off on all three, so the host's stack sends nothing into the fabric
//! through them.

use std::net::IpAddr;

use patchbay_overlay::Vni;

use super::netlink::{link_index, NetlinkError, Rtnl};
use crate::host_port::tap::Tap;

/// Longest device-name prefix: prefix + "tap" + 8 digits of VNI fits IFNAMSIZ - 1 = 15.
pub const MAX_PREFIX_LEN: usize = 4;

/// The names of a VNI's shadow devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowNames {
    pub bridge: String,
    pub vxlan: String,
    pub tap: String,
}

impl ShadowNames {
    pub fn new(prefix: &str, vni: Vni) -> ShadowNames {
        ShadowNames {
            bridge: format!("{prefix}br{vni}"),
            vxlan: format!("{prefix}vx{vni}"),
            tap: format!("{prefix}tap{vni}"),
        }
    }
}

/// A VNI's shadow devices: the tap goes when this is dropped, the bridge and the vxlan
/// device with [`Shadow::remove`] (which the agent's kernel side calls for every VNI when
/// it is dropped).
pub struct Shadow {
    pub names: ShadowNames,
    pub bridge: u32,
    pub vxlan: u32,
    pub tap_index: u32,
    /// Held open: the tap exists while we do.
    _tap: Tap,
}

fn ipv6_off(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        log::debug!("evpn: cannot turn IPv6 off on {name} ({path}: {e})");
    }
}

fn index(name: &str) -> Result<u32, NetlinkError> {
    link_index(name).ok_or_else(|| NetlinkError::Request {
        what: format!("find {name}"),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

impl Shadow {
    /// Creates the devices of `vni` (deleting stale ones of the same names first: a switch
    /// that died leaves its bridge and vxlan device behind).
    pub fn create(
        rtnl: &mut Rtnl,
        prefix: &str,
        vni: Vni,
        local: IpAddr,
        udp_port: u16,
    ) -> Result<Shadow, NetlinkError> {
        let names = ShadowNames::new(prefix, vni);
        for name in [&names.vxlan, &names.bridge, &names.tap] {
            if let Some(i) = link_index(name) {
                log::warn!("evpn: deleting stale device {name} (left by an earlier run?)");
                rtnl.delete_link(i, name)?;
            }
        }
        rtnl.create_bridge(&names.bridge)?;
        let bridge = index(&names.bridge)?;
        // From here on, a failure deletes what was made (the drop of `partial`).
        let mut partial = Cleanup {
            rtnl,
            links: vec![(bridge, names.bridge.clone())],
        };
        ipv6_off(&names.bridge);
        partial
            .rtnl
            .create_vxlan(&names.vxlan, vni, local, udp_port)?;
        let vxlan = index(&names.vxlan)?;
        partial.links.push((vxlan, names.vxlan.clone()));
        ipv6_off(&names.vxlan);
        let tap = Tap::create(&names.tap, None, 1).map_err(|source| NetlinkError::Request {
            what: format!("create tap {}", names.tap),
            source,
        })?;
        let tap_index = index(&names.tap)?;
        ipv6_off(&names.tap);
        partial.rtnl.enslave(vxlan, bridge, &names.vxlan)?;
        partial.rtnl.enslave(tap_index, bridge, &names.tap)?;
        partial.rtnl.set_up(vxlan, &names.vxlan)?;
        partial.rtnl.set_up(bridge, &names.bridge)?;
        partial.links.clear();
        Ok(Shadow {
            names,
            bridge,
            vxlan,
            tap_index,
            _tap: tap,
        })
    }

    /// Deletes the bridge and the vxlan device (zebra withdraws the VNI's routes); the tap
    /// goes when `self` is dropped.
    pub fn remove(self, rtnl: &mut Rtnl) {
        for (i, name) in [
            (self.vxlan, &self.names.vxlan),
            (self.bridge, &self.names.bridge),
        ] {
            if let Err(e) = rtnl.delete_link(i, name) {
                log::warn!("evpn: {e}");
            }
        }
    }
}

/// Deletes links on drop unless emptied: the undo of a half-made [`Shadow`].
struct Cleanup<'a> {
    rtnl: &'a mut Rtnl,
    links: Vec<(u32, String)>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for (i, name) in self.links.iter().rev() {
            let _ = self.rtnl.delete_link(*i, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_name() {
        let n = ShadowNames::new("pbxx", 16_777_215);
        for name in [&n.bridge, &n.vxlan, &n.tap] {
            assert!(name.len() < libc::IFNAMSIZ, "{name}");
        }
        assert_eq!(n.tap, "pbxxtap16777215");
    }
}
