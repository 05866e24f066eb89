//! Command-line values that the library understands: `--net` specs and MAC addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| {
                format!("MAC {s:?}: expected six hex bytes like 52:54:00:12:34:56")
            })?;
            if part.is_empty() || part.len() > 2 {
                return Err(format!("MAC {s:?}: bad byte {part:?}"));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("MAC {s:?}: bad byte {part:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC {s:?}: more than six bytes"));
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One `--net socket=PATH[,mac=MAC][,client][,no-reconnect][,ip=A.B.C.D/N][,gw=A.B.C.D]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The vhost-user socket of the switch port.
    pub socket: PathBuf,
    /// None: the MAC the switch port offers (GET_CONFIG), else one derived from the socket.
    pub mac: Option<Mac>,
    /// Without `client` the VMM connects to `socket`, where the switch port listens (the
    /// switch's default `mode = "server"`). With `client` the switch port is in client mode:
    /// the VMM listens on `socket` and the switch dials in.
    pub client: bool,
    /// `no-reconnect`: a lost backend ends the VM (exit status 4) instead of being redialled.
    pub no_reconnect: bool,
    /// IPv4 address and prefix length for the guest (CPL-3 guests get it through BootInfo).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
}

impl NetSpec {
    /// Parses a `--net` value (`_index`: its position on the command line, for messages).
    pub fn parse(text: &str, _index: usize) -> Result<NetSpec, String> {
        let mut socket = None;
        let mut mac = None;
        let mut client = false;
        let mut no_reconnect = false;
        let mut ip = None;
        let mut gateway = None;
        for item in text.split(',') {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            match (key, value) {
                ("socket", Some(v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
                ("mac", Some(v)) => mac = Some(v.parse::<Mac>()?),
                ("client", None) => client = true,
                ("no-reconnect", None) => no_reconnect = true,
                ("ip", Some(v)) => {
                    let (addr, len) = v
                        .split_once('/')
                        .ok_or_else(|| format!("ip={v}: give a prefix length, e.g. ip=10.0.0.1/24"))?;
                    let addr: Ipv4Addr = addr.parse().map_err(|e| format!("ip={v}: {e}"))?;
                    let len: u8 = len
                        .parse()
                        .ok()
                        .filter(|l| *l <= 32)
                        .ok_or_else(|| format!("ip={v}: prefix length must be 0..=32"))?;
                    ip = Some((addr, len));
                }
                ("gw", Some(v)) => gateway = Some(v.parse().map_err(|e| format!("gw={v}: {e}"))?),
                _ => {
                    return Err(format!(
                        "unknown or malformed item {item:?} (expected socket=PATH[,mac=MAC][,client][,no-reconnect][,ip=A.B.C.D/N][,gw=A.B.C.D])"
                    ))
                }
            }
        }
        let socket = socket.ok_or_else(|| "socket=PATH is required".to_string())?;
        Ok(NetSpec {
            socket,
            mac,
            client,
            no_reconnect,
            ip,
            gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_specs() {
        let n = NetSpec::parse(
            "socket=/tmp/p0.sock,mac=52:54:00:ab:CD:01,client,ip=10.0.0.2/24,gw=10.0.0.1",
            0,
        )
        .unwrap();
        assert_eq!(n.socket, PathBuf::from("/tmp/p0.sock"));
        assert_eq!(n.mac, Some(Mac([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(n.mac.unwrap().to_string(), "52:54:00:ab:cd:01");
        assert!(n.client);
        assert_eq!(n.ip, Some((Ipv4Addr::new(10, 0, 0, 2), 24)));
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));

        let d = NetSpec::parse("socket=/s", 3).unwrap();
        assert!(!d.client && !d.no_reconnect && d.ip.is_none() && d.gateway.is_none());
        assert_eq!(d.mac, None, "the switch port's MAC is used");
        assert!(
            NetSpec::parse("socket=/s,no-reconnect", 0)
                .unwrap()
                .no_reconnect
        );

        for bad in [
            "mac=52:54:00:00:00:01",
            "socket=",
            "socket=/s,mac=1:2:3",
            "socket=/s,mac=1:2:3:4:5:6:7",
            "socket=/s,ip=10.0.0.1",
            "socket=/s,ip=10.0.0.1/33",
            "socket=/s,gw=10.0.0",
            "socket=/s,bogus",
            "socket=/s,client=yes",
        ] {
            assert!(NetSpec::parse(bad, 0).is_err(), "{bad} should not parse");
        }
    }
}
