//! Port security: what a guest may claim to be (Neutron's port security, a cloud's
//! anti-spoofing), checked on every frame a port sends, before the switch learns its source
//! or runs the flow tables, so a spoofed address never enters the MAC table.
//!
//! A port with `allowed_macs` sends only from those addresses, and its ARP and neighbour
//! discovery may announce only them. With `allowed_ips` it sends IPv4 and IPv6 only from those
//! prefixes (plus what address configuration needs: 0.0.0.0 for DHCP and ARP probes, :: for
//! neighbour discovery's duplicate address detection and MLD, and the EUI-64 link-local
//! address of each allowed MAC), and its ARP and neighbour advertisements may claim only
//! those addresses. A port with either list may not send DHCP or DHCPv6 server or relay
//! replies unless `dhcp_server` is set, nor router advertisements or redirects, nor frames
//! with a second VLAN tag, nor ARP other than Ethernet/IPv4. Other EtherTypes are held to the
//! source MAC only.
//!
//! The checks read the frame's first [`PREFIX`] bytes, one copy per frame on ports with the
//! setting, and that copy is what leaves the switch (the frame path sends it in place of the
//! guest's bytes), so a guest cannot change what was checked after the check. A checksum
//! offload may only fill the TCP or UDP checksum the checks found (otherwise it could write
//! two bytes anywhere). An IPv6 packet whose upper layer, or a neighbour discovery message
//! that does not end, within the prefix is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{ethertype, EthernetAddress, L2Header};

/// Bytes of a frame the checks look at: the most the frame path can send from its own copy
/// (an Ethernet header with a tag, IPv4 with 40 bytes of options or IPv6 with a neighbour
/// discovery message and two options, and a transport header; the flow tables' prefix).
pub const PREFIX: usize = 18 + 60 + 20 + 16;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// An address prefix: `10.0.0.0/24`, `fd00::1` (a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    pub fn parse(s: &str) -> Result<IpPrefix, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0-{max}"))?,
            None => max,
        };
        Ok(IpPrefix { addr, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a frame was refused, for the port's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    SourceMac,
    ArpSender,
    SourceIp,
    NeighbourAdvertisement,
    NeighbourLinkAddress,
    DhcpServer,
    UnparsedIpv6,
    RouterAdvertisement,
    StackedTag,
    ChecksumOffload,
}

impl Violation {
    pub fn describe(self) -> &'static str {
        match self {
            Violation::SourceMac => "a source MAC address not allowed on the port",
            Violation::ArpSender => "an ARP sender address not allowed on the port",
            Violation::SourceIp => "a source IP address not allowed on the port",
            Violation::NeighbourAdvertisement => {
                "a neighbour advertisement for an address not allowed on the port"
            }
            Violation::NeighbourLinkAddress => {
                "a neighbour discovery link-layer address not allowed on the port"
            }
            Violation::DhcpServer => "a DHCP server reply from a port that is not a DHCP server",
            Violation::UnparsedIpv6 => {
                "an IPv6 packet or neighbour discovery message that could not be followed"
            }
            Violation::RouterAdvertisement => "a router advertisement or redirect",
            Violation::StackedTag => "a second VLAN tag",
            Violation::ChecksumOffload => {
                "a checksum offload outside the frame's TCP or UDP checksum"
            }
        }
    }
}

/// One port's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSecurity {
    /// Empty: any source MAC.
    macs: Vec<EthernetAddress>,
    /// Empty: any IP source.
    ips: Vec<IpPrefix>,
    /// The EUI-64 link-local address of each allowed MAC.
    link_locals: Vec<Ipv6Addr>,
    dhcp_server: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn ipv6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// The EUI-64 link-local address a host derives from `mac` (RFC 4291, appendix A).
fn link_local(mac: EthernetAddress) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// A port's security settings as given (config or `flowctl set-port-security`) and the
/// checks made of them. Replaced whole when changed, so a batch sees one or the other.
#[derive(Debug, Default)]
pub struct PortSecuritySettings {
    pub allowed_macs: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub dhcp_server: bool,
    /// None: neither list given, no checks.
    pub checks: Option<PortSecurity>,
}

/// Which setting was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingError {
    pub field: &'static str,
    pub message: String,
}

impl PortSecuritySettings {
    pub fn new(
        allowed_macs: Vec<String>,
        allowed_ips: Vec<String>,
        dhcp_server: bool,
    ) -> Result<PortSecuritySettings, SettingError> {
        let checks = PortSecurity::new(&allowed_macs, &allowed_ips, dhcp_server)?;
        Ok(PortSecuritySettings {
            allowed_macs,
            allowed_ips,
            dhcp_server,
            checks,
        })
    }
}

impl PortSecurity {
    /// The rules of a port's settings; None when it has neither list (no checks at all).
    /// A bad entry is refused with the setting it is in.
    pub fn new(
        macs: &[String],
        ips: &[String],
        dhcp_server: bool,
    ) -> Result<Option<PortSecurity>, SettingError> {
        if macs.is_empty() && ips.is_empty() {
            return Ok(None);
        }
        let refused = |field| move |message| SettingError { field, message };
        let macs = macs
            .iter()
            .map(|m| {
                let mac: EthernetAddress = m
                    .parse()
                    .map_err(|_| format!("'{m}' is not a MAC address"))?;
                if mac.0[0] & 1 != 0 {
                    return Err(format!("'{m}' is a multicast address"));
                }
                Ok(mac)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(refused("allowed_macs"))?;
        let ips = ips
            .iter()
            .map(|p| IpPrefix::parse(p))
            .collect::<Result<Vec<_>, String>>()
            .map_err(refused("allowed_ips"))?;
        Ok(Some(PortSecurity {
            link_locals: macs.iter().map(|&m| link_local(m)).collect(),
            macs,
            ips,
            dhcp_server,
        }))
    }

    /// For `flowctl show port`: `macs 52:54:00:00:0a:01; ips 10.0.0.1/32; no DHCP server`.
    pub fn describe(&self) -> String {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "any".to_string()
            } else {
                v.join(" ")
            }
        };
        format!(
            "macs {}; ips {}; {}",
            list(self.macs.iter().map(|m| m.to_string()).collect()),
            list(self.ips.iter().map(|p| p.to_string()).collect()),
            if self.dhcp_server {
                "may serve DHCP"
            } else {
                "no DHCP server"
            }
        )
    }

    fn mac_allowed(&self, mac: &[u8]) -> bool {
        self.macs.is_empty() || self.macs.iter().any(|m| m.0[..] == *mac)
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.ips.is_empty()
            || self.ips.iter().any(|p| p.contains(ip))
            || matches!(ip, IpAddr::V6(a) if self.link_locals.contains(&a))
    }

    /// Checks the start of a frame (up to [`PREFIX`] bytes of it) and, if it asks for one,
    /// its checksum offload (where the sum starts, and the field's offset from there).
    pub fn check(&self, frame: &[u8], csum: Option<(u16, u16)>) -> Result<(), Violation> {
        // Shorter than an Ethernet header: a runt, refused as one further on.
        let Some(src) = frame.get(6..12).filter(|_| frame.len() >= 14) else {
            return Ok(());
        };
        if !self.mac_allowed(src) {
            return Err(Violation::SourceMac);
        }
        // A tag cut short: nothing behind it to check (the frame path takes the frame's L2
        // header as it can).
        let Ok(l2) = L2Header::parse(frame) else {
            return Ok(());
        };
        let at = l2.len().min(frame.len());
        let l3 = &frame[at..];
        // Where the transport header is, and its protocol, if the frame has one to check.
        let l4 = match l2.ethertype {
            ETHERTYPE_ARP => self.check_arp(l3).map(|()| None)?,
            ETHERTYPE_IPV4 => self.check_ipv4(l3)?,
            ETHERTYPE_IPV6 => self.check_ipv6(l3)?,
            t if ethertype::is_vlan_tag(t) => return Err(Violation::StackedTag),
            _ => None,
        };
        if let Some((start, offset)) = csum {
            let field = match l4 {
                Some((l4_at, IPPROTO_TCP)) => Some((at + l4_at, 16)),
                Some((l4_at, IPPROTO_UDP)) => Some((at + l4_at, 6)),
                _ => None,
            };
            if field != Some((usize::from(start), usize::from(offset))) {
                return Err(Violation::ChecksumOffload);
            }
        }
        Ok(())
    }

    fn check_arp(&self, arp: &[u8]) -> Result<(), Violation> {
        // Only Ethernet/IPv4 ARP (Linux also takes hardware type 6, IEEE 802, on Ethernet):
        // sender MAC at 8, sender IP at 14.
        if be16(arp, 0) != Some(1)
            || be16(arp, 2) != Some(ETHERTYPE_IPV4)
            || arp.get(4..6) != Some(&[6, 4])
        {
            return Err(Violation::ArpSender);
        }
        let (Some(sha), Some(spa)) = (arp.get(8..14), ipv4(arp, 14)) else {
            return Err(Violation::ArpSender);
        };
        // 0.0.0.0: a probe before an address is taken (RFC 5227).
        if !self.mac_allowed(sha) || !(spa.is_unspecified() || self.ip_allowed(IpAddr::V4(spa))) {
            return Err(Violation::ArpSender);
        }
        Ok(())
    }

    /// The transport header's offset and protocol, if this is the first (or only)
    /// fragment.
    fn check_ipv4(&self, ip: &[u8]) -> Result<Option<(usize, u8)>, Violation> {
        let (Some(&vihl), Some(&proto), Some(frag), Some(src)) =
            (ip.first(), ip.get(9), be16(ip, 6), ipv4(ip, 12))
        else {
            return Ok(None); // cut short: nothing behind it
        };
        let ihl = usize::from(vihl & 0x0f) * 4;
        let first_fragment = frag & 0x1fff == 0;
        let ports = (first_fragment && proto == IPPROTO_UDP)
            .then(|| Some((be16(ip, ihl)?, be16(ip, ihl + 2)?)))
            .flatten();
        // Server and relay replies (a relay answers from 67 to 67).
        if matches!(ports, Some((67, 68 | 67))) && !self.dhcp_server {
            return Err(Violation::DhcpServer);
        }
        // 0.0.0.0 to a DHCP server: a client without an address yet.
        if !(self.ip_allowed(IpAddr::V4(src)) || src.is_unspecified() && ports == Some((68, 67))) {
            return Err(Violation::SourceIp);
        }
        Ok((first_fragment && ihl >= 20).then_some((ihl, proto)))
    }

    /// The transport header's offset and protocol, if the packet has one here.
    fn check_ipv6(&self, ip: &[u8]) -> Result<Option<(usize, u8)>, Violation> {
        let (Some(src), Some(payload_len), Some(&first_next)) =
            (ipv6(ip, 8), be16(ip, 4), ip.get(6))
        else {
            return Ok(None); // cut short: nothing behind it
        };
        if !(src.is_unspecified() || self.ip_allowed(IpAddr::V6(src))) {
            return Err(Violation::SourceIp);
        }
        // The packet's end, as far as this copy holds it.
        let end = (40 + usize::from(payload_len)).min(ip.len());
        // Follow the extension headers to the upper layer (a neighbour advertisement behind
        // a destination options header must not get through unchecked).
        let mut next = first_next;
        let mut at = 40;
        let mut fragment = false;
        for _ in 0..8 {
            match next {
                // Hop-by-hop, routing, destination options: (next, length in 8 bytes - 1).
                0 | 43 | 60 => {
                    let len = usize::from(*ip.get(at + 1).ok_or(Violation::UnparsedIpv6)?);
                    next = *ip.get(at).ok_or(Violation::UnparsedIpv6)?;
                    at += (len + 1) * 8;
                }
                // Fragment: only the first fragment has the upper-layer header.
                44 => {
                    let offset = be16(ip, at + 2).ok_or(Violation::UnparsedIpv6)? >> 3;
                    if offset != 0 {
                        // The rest of a packet whose first fragment was checked (or not
                        // sent): nothing to check. Unspecified sources only for ICMPv6.
                        return if src.is_unspecified() {
                            Err(Violation::SourceIp)
                        } else {
                            Ok(None)
                        };
                    }
                    fragment = true;
                    next = *ip.get(at).ok_or(Violation::UnparsedIpv6)?;
                    at += 8;
                }
                _ => break,
            }
        }
        let upper = ip.get(at..end).unwrap_or(&[]);
        // ::: neighbour discovery and MLD before an address is taken (RFC 4862, 3810).
        if src.is_unspecified() && next != IPPROTO_ICMPV6 {
            return Err(Violation::SourceIp);
        }
        match next {
            IPPROTO_ICMPV6 => {
                // Neighbour discovery and router messages are never fragmented (RFC 6980).
                if fragment && upper.first().is_some_and(|t| (133..=137).contains(t)) {
                    return Err(Violation::UnparsedIpv6);
                }
                let whole = 40 + usize::from(payload_len) <= ip.len();
                self.check_icmpv6(upper, whole)?;
                Ok(Some((at, IPPROTO_ICMPV6)))
            }
            IPPROTO_UDP => match (be16(upper, 0), be16(upper, 2)) {
                (Some(547), Some(546 | 547)) if !self.dhcp_server => Err(Violation::DhcpServer),
                (Some(_), Some(_)) => Ok(Some((at, IPPROTO_UDP))),
                _ => Err(Violation::UnparsedIpv6),
            },
            0 | 43 | 60 | 44 => Err(Violation::UnparsedIpv6),
            _ => Ok(Some((at, next))),
        }
    }

    /// Router advertisements and redirects are refused; neighbour solicitations and
    /// advertisements are held to the port's addresses in their link-layer address options
    /// and (an advertisement) target. `whole`: the message ends within the bytes read.
    fn check_icmpv6(&self, icmp: &[u8], whole: bool) -> Result<(), Violation> {
        let Some(&kind) = icmp.first() else {
            return Err(Violation::UnparsedIpv6);
        };
        match kind {
            134 | 137 => return Err(Violation::RouterAdvertisement),
            135 | 136 => {}
            _ => return Ok(()),
        }
        // Options the copy does not hold could name any address.
        if !whole {
            return Err(Violation::UnparsedIpv6);
        }
        if kind == 136 {
            let target = ipv6(icmp, 8).ok_or(Violation::NeighbourAdvertisement)?;
            if !self.ip_allowed(IpAddr::V6(target)) {
                return Err(Violation::NeighbourAdvertisement);
            }
        }
        // Options after the 24-byte message: (type, length in 8 bytes, data).
        let mut at = 24;
        while at < icmp.len() {
            let (Some(&t), Some(&len)) = (icmp.get(at), icmp.get(at + 1)) else {
                return Err(Violation::NeighbourLinkAddress);
            };
            if len == 0 {
                return Err(Violation::NeighbourLinkAddress);
            }
            if t == 1 || t == 2 {
                let mac = icmp
                    .get(at + 2..at + 8)
                    .ok_or(Violation::NeighbourLinkAddress)?;
                if !self.mac_allowed(mac) {
                    return Err(Violation::NeighbourLinkAddress);
                }
            }
            at += usize::from(len) * 8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    impl PortSecurity {
        /// `check` of a frame without a checksum offload.
        fn plain(&self, frame: &[u8]) -> Result<(), Violation> {
            self.check(frame, None)
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x0a, 0x01];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0x0a, 0x02];

    fn rules(dhcp_server: bool) -> PortSecurity {
        PortSecurity::new(
            &["52:54:00:00:0a:01".into()],
            &["10.0.0.1".into(), "fd00::/64".into()],
            dhcp_server,
        )
        .unwrap()
        .unwrap()
    }

    fn udp4(src_mac: [u8; 6], src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(src_mac, [0xff; 6])
            .ipv4(src, [10, 0, 0, 9], 64)
            .udp(sport, dport)
            .write(&mut f, &[1, 2, 3])
            .unwrap();
        f
    }

    fn arp(sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 10]);
        f
    }

    /// A neighbour advertisement for `target` with a target link-layer option `tll`,
    /// behind `ext` extension header bytes (a destination options header, or none).
    fn na(src: Ipv6Addr, target: Ipv6Addr, tll: [u8; 6], dest_opts: bool) -> Vec<u8> {
        let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(&[2, 1]);
        icmp.extend_from_slice(&tll);
        let mut payload = Vec::new();
        let next = if dest_opts {
            payload.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
            60
        } else {
            58
        };
        payload.extend_from_slice(&icmp);
        v6(src, next, &payload)
    }

    #[test]
    fn prefixes_parse_and_contain() {
        let p = IpPrefix::parse("10.0.0.0/24").unwrap();
        assert!(p.contains("10.0.0.200".parse().unwrap()));
        assert!(!p.contains("10.0.1.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        assert!(IpPrefix::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(IpPrefix::parse("10.0.0.0/33").is_err());
        assert!(IpPrefix::parse("ten").is_err());
        assert_eq!(
            IpPrefix::parse("fd00::1").unwrap().to_string(),
            "fd00::1/128"
        );
    }

    #[test]
    fn no_lists_means_no_checks_and_bad_entries_are_named() {
        assert_eq!(PortSecurity::new(&[], &[], false), Ok(None));
        let e = PortSecurity::new(&["01:00:5e:00:00:01".into()], &[], false).unwrap_err();
        assert!(e.message.contains("multicast"), "{e}");
        let e = PortSecurity::new(&[], &["10.0.0.300".into()], false).unwrap_err();
        assert!(e.message.contains("10.0.0.300"), "{e}");
    }

    #[test]
    fn the_source_mac_and_ip_must_be_allowed() {
        let r = rules(false);
        assert_eq!(r.plain(&udp4(MAC, [10, 0, 0, 1], 1000, 53)), Ok(()));
        assert_eq!(
            r.plain(&udp4(OTHER, [10, 0, 0, 1], 1000, 53)),
            Err(Violation::SourceMac)
        );
        assert_eq!(
            r.plain(&udp4(MAC, [10, 0, 0, 2], 1000, 53)),
            Err(Violation::SourceIp)
        );
        // A DHCP client without an address yet.
        assert_eq!(r.plain(&udp4(MAC, [0, 0, 0, 0], 68, 67)), Ok(()));
        assert_eq!(
            r.plain(&udp4(MAC, [0, 0, 0, 0], 1000, 53)),
            Err(Violation::SourceIp)
        );
    }

    #[test]
    fn arp_may_announce_only_the_ports_addresses() {
        let r = rules(false);
        assert_eq!(r.plain(&arp(MAC, [10, 0, 0, 1])), Ok(()));
        assert_eq!(r.plain(&arp(MAC, [0, 0, 0, 0])), Ok(()), "a probe");
        assert_eq!(r.plain(&arp(MAC, [10, 0, 0, 7])), Err(Violation::ArpSender));
        assert_eq!(
            r.plain(&arp(OTHER, [10, 0, 0, 1])),
            Err(Violation::ArpSender)
        );
        assert_eq!(
            r.plain(&arp(MAC, [10, 0, 0, 1])[..30]),
            Err(Violation::ArpSender),
            "cut short"
        );
    }

    #[test]
    fn dhcp_server_replies_only_from_a_dhcp_server_port() {
        assert_eq!(
            rules(false).plain(&udp4(MAC, [10, 0, 0, 1], 67, 68)),
            Err(Violation::DhcpServer)
        );
        assert_eq!(rules(true).plain(&udp4(MAC, [10, 0, 0, 1], 67, 68)), Ok(()));
    }

    #[test]
    fn neighbour_advertisements_are_held_to_the_ports_addresses() {
        let r = rules(false);
        let mine: Ipv6Addr = "fd00::1".parse().unwrap();
        let theirs: Ipv6Addr = "fd01::1".parse().unwrap();
        let ll = link_local(EthernetAddress(MAC));
        assert_eq!(ll, "fe80::5054:ff:fe00:a01".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.plain(&na(mine, mine, MAC, false)), Ok(()));
        assert_eq!(r.plain(&na(ll, ll, MAC, false)), Ok(()), "its link-local");
        assert_eq!(
            r.plain(&na(mine, theirs, MAC, false)),
            Err(Violation::NeighbourAdvertisement)
        );
        assert_eq!(
            r.plain(&na(mine, theirs, MAC, true)),
            Err(Violation::NeighbourAdvertisement),
            "behind a destination options header"
        );
        assert_eq!(
            r.plain(&na(mine, mine, OTHER, false)),
            Err(Violation::NeighbourLinkAddress)
        );
        assert_eq!(
            r.plain(&na(theirs, mine, MAC, false)),
            Err(Violation::SourceIp)
        );
    }

    /// An IPv6 frame from the port's MAC: `src`, next header `next`, `payload`.
    fn v6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn router_advertisements_arp_of_other_kinds_and_stacked_tags_are_refused() {
        let r = rules(false);
        let ll = link_local(EthernetAddress(MAC));
        for kind in [134, 137] {
            let mut f = na(ll, ll, MAC, false);
            f[54] = kind;
            assert_eq!(
                r.plain(&f),
                Err(Violation::RouterAdvertisement),
                "type {kind}"
            );
        }
        let mut f = arp(MAC, [10, 0, 0, 1]);
        f[15] = 6; // hardware type IEEE 802, which Linux takes on Ethernet too
        assert_eq!(r.plain(&f), Err(Violation::ArpSender));
        let own = udp4(MAC, [10, 0, 0, 1], 67, 68);
        let mut stacked = own[..12].to_vec();
        stacked.extend_from_slice(&[0x81, 0, 0, 10, 0x81, 0, 0, 0]);
        stacked.extend_from_slice(&own[12..]);
        assert_eq!(r.plain(&stacked), Err(Violation::StackedTag));
        let mut s_tag = own[..12].to_vec();
        s_tag.extend_from_slice(&[0x88, 0xa8, 0, 20]);
        s_tag.extend_from_slice(&own[12..]);
        assert_eq!(r.plain(&s_tag), Err(Violation::StackedTag));
    }

    #[test]
    fn a_checksum_offload_may_only_fill_the_transport_checksum() {
        let r = rules(false);
        let f = udp4(MAC, [10, 0, 0, 1], 1000, 53);
        assert_eq!(r.check(&f, Some((34, 6))), Ok(()), "UDP's checksum");
        assert_eq!(
            r.check(&f, Some((34, 0))),
            Err(Violation::ChecksumOffload),
            "over the source port"
        );
        assert_eq!(r.check(&f, Some((14, 10))), Err(Violation::ChecksumOffload));
        assert_eq!(
            r.check(&arp(MAC, [10, 0, 0, 1]), Some((28, 2))),
            Err(Violation::ChecksumOffload)
        );
    }

    #[test]
    fn neighbour_discovery_must_be_whole_and_unfragmented() {
        let r = rules(false);
        let mine: Ipv6Addr = "fd00::1".parse().unwrap();
        let f = na(mine, mine, MAC, false);
        assert_eq!(r.plain(&f), Ok(()));
        // The copy ends before the message does: options past it could name anyone.
        assert_eq!(r.plain(&f[..f.len() - 4]), Err(Violation::UnparsedIpv6));
        // A first fragment carrying a neighbour advertisement.
        let icmp = &f[54..];
        let mut frag = vec![58, 0, 0, 1, 0, 0, 0, 7];
        frag.extend_from_slice(icmp);
        assert_eq!(r.plain(&v6(mine, 44, &frag)), Err(Violation::UnparsedIpv6));
        // The unspecified source: a solicitation for duplicate address detection, not UDP.
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&mine.octets());
        assert_eq!(r.plain(&v6(Ipv6Addr::UNSPECIFIED, 58, &ns)), Ok(()));
        let udp = [0x12, 0x34, 0, 53, 0, 8, 0, 0];
        assert_eq!(
            r.plain(&v6(Ipv6Addr::UNSPECIFIED, 17, &udp)),
            Err(Violation::SourceIp)
        );
        let relay = [2, 0x23, 2, 0x23, 0, 8, 0, 0];
        assert_eq!(r.plain(&v6(mine, 17, &relay)), Err(Violation::DhcpServer));
    }
}
