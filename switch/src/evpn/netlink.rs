//! The few rtnetlink requests EVPN needs, over a blocking `NETLINK_ROUTE` socket: create
//! and delete the shadow devices, add and remove FDB entries, dump the FDB and follow its
//! changes. Messages are built and parsed by `netlink-packet-route` (the rust-netlink
//! project's, which rtnetlink and most Rust network tools use); the socket is
//! `netlink-sys`'s, used synchronously: the switch has no async runtime and this thread
//! does nothing else while it waits for an answer.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVxlan, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// rtnetlink's multicast group for neighbour (and bridge FDB) changes.
const RTNLGRP_NEIGH: u32 = 3;

/// Receive buffer of a request socket: a batch's acknowledgements (36 bytes each, more for
/// a refusal, which quotes the request) with room to spare.
const REQUEST_SOCKET_BUFFER: usize = 1 << 20;

/// Receive buffer of the event socket: a burst of routes (thousands of MACs at once) must
/// not overflow it (forced past net.core.rmem_max where we may); if it still does, the
/// kernel says ENOBUFS and we dump again.
const EVENT_SOCKET_BUFFER: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{what}: {source}")]
    Request { what: String, source: io::Error },
    #[error("{what}: malformed netlink answer: {detail}")]
    Malformed { what: String, detail: String },
}

impl NetlinkError {
    /// The errno of a refused request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A bridge FDB entry as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The device it is on (for zebra's remote entries, the shadow vxlan device).
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// The remote VTEP (NDA_DST), for entries of a vxlan device itself.
    pub remote: Option<IpAddr>,
    /// On the device itself (NTF_SELF), not in its bridge's table.
    pub own: bool,
}

/// An FDB change from the event socket, or a dumped entry (`added`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbChange {
    pub added: bool,
    pub entry: FdbEntry,
}

/// A `NETLINK_ROUTE` socket.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

fn message(inner: RouteNetlinkMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    out
}

fn link_message(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn fdb_message(port: u32, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = port;
    m.header.flags = NeighbourFlags::Controller;
    m.header.state = NeighbourState::Noarp;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

impl Rtnl {
    /// A socket for requests, with room for a whole batch's acknowledgements (the kernel
    /// answers every request of a datagram before we read the first answer).
    pub fn open() -> Result<Rtnl, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        let rtnl = Rtnl {
            socket,
            sequence: 0,
            buf: vec![0; 1 << 16],
        };
        rtnl.receive_buffer(REQUEST_SOCKET_BUFFER)?;
        Ok(rtnl)
    }

    /// Asks for a receive buffer of `size` bytes: forced past net.core.rmem_max where we may
    /// (CAP_NET_ADMIN), else as much as it allows.
    fn receive_buffer(&self, size: usize) -> Result<(), NetlinkError> {
        let bytes = size as libc::c_int;
        // SAFETY: setsockopt reads an int, alive for the call, on our own socket.
        let forced = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            self.socket
                .set_rx_buf_sz(size)
                .map_err(NetlinkError::Socket)?;
        }
        Ok(())
    }

    /// A socket that receives every FDB change in this network namespace.
    pub fn fdb_events() -> Result<Rtnl, NetlinkError> {
        let rtnl = Rtnl::open()?;
        rtnl.receive_buffer(EVENT_SOCKET_BUFFER)?;
        rtnl.socket
            .add_membership(RTNLGRP_NEIGH)
            .map_err(NetlinkError::Socket)?;
        Ok(rtnl)
    }

    pub fn set_non_blocking(&self, on: bool) -> io::Result<()> {
        self.socket.set_non_blocking(on)
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }

    /// Sends `requests` in one datagram, each asking for an acknowledgement, and returns
    /// each one's outcome in order.
    fn batch(
        &mut self,
        what: &str,
        requests: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Result<Vec<Result<(), io::Error>>, NetlinkError> {
        let first = self.sequence.wrapping_add(1);
        let mut out = Vec::new();
        for (inner, flags) in requests.iter().cloned() {
            self.sequence = self.sequence.wrapping_add(1);
            out.extend(message(
                inner,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                self.sequence,
            ));
        }
        let count = requests.len();
        self.send(what, &out)?;
        let mut results: Vec<Option<Result<(), io::Error>>> = (0..count).map(|_| None).collect();
        let mut answered = 0;
        while answered < count {
            let n = self.receive(what)?;
            for msg in self.messages(what, n)? {
                if let NetlinkPayload::Error(e) = msg.payload {
                    let i = msg.header.sequence_number.wrapping_sub(first) as usize;
                    if let Some(slot) = results.get_mut(i).filter(|s| s.is_none()) {
                        *slot = Some(match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        });
                        answered += 1;
                    }
                }
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
    }

    /// One request; its refusal is the error.
    fn request(
        &mut self,
        what: &str,
        inner: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        let mut results = self.batch(what, vec![(inner, flags)])?;
        match results.pop() {
            Some(Err(source)) => Err(NetlinkError::Request {
                what: what.into(),
                source,
            }),
            _ => Ok(()),
        }
    }

    fn send(&self, what: &str, bytes: &[u8]) -> Result<(), NetlinkError> {
        self.socket
            .send(bytes, 0)
            .map(|_| ())
            .map_err(|source| NetlinkError::Request {
                what: what.into(),
                source,
            })
    }

    fn receive(&mut self, what: &str) -> Result<usize, NetlinkError> {
        self.socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|source| NetlinkError::Request {
                what: what.into(),
                source,
            })
    }

    /// The messages of the datagram in the receive buffer (`end` bytes). One that does not
    /// parse is logged and skipped; a bad length ends the datagram (an error).
    fn messages(
        &self,
        what: &str,
        end: usize,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetlinkError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < end {
            let bytes = &self.buf[at..end];
            let len = bytes
                .get(..4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|l| *l >= 16 && *l <= bytes.len())
                .ok_or_else(|| NetlinkError::Malformed {
                    what: what.into(),
                    detail: format!("bad length at byte {at}"),
                })?;
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
                Ok(m) => out.push(m),
                Err(e) => {
                    log::warn!("evpn: {what}: skipped a netlink message that does not parse: {e}")
                }
            }
            // Messages are 4-byte aligned in a datagram.
            at += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Creates bridge `name` (no STP, no VLAN filtering: the defaults).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut m = link_message(0);
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates vxlan device `name` for `vni`, sourced from `local`, on UDP `port`, without
    /// learning (its FDB is zebra's to fill).
    pub fn create_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        local: IpAddr,
        port: u16,
    ) -> Result<(), NetlinkError> {
        let mut m = link_message(0);
        m.attributes.push(LinkAttribute::IfName(name.into()));
        let local = match local {
            IpAddr::V4(a) => InfoVxlan::Local(a),
            IpAddr::V6(a) => InfoVxlan::Local6(a),
        };
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                local,
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.request(
            &format!("create vxlan {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Makes `index` a port of bridge `master`, with MAC learning off on the port, and up.
    pub fn enslave(&mut self, index: u32, master: u32, name: &str) -> Result<(), NetlinkError> {
        let mut m = link_message(index);
        m.attributes.push(LinkAttribute::Controller(master));
        self.request(
            &format!("add {name} to its bridge"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )?;
        let mut m = link_message(index);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Learning(
                false,
            )])),
        ]));
        self.request(
            &format!("turn learning off on {name}"),
            RouteNetlinkMessage::NewLink(m),
            0,
        )
    }

    /// Brings `index` up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut m = link_message(index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("bring {name} up"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.request(
            &format!("delete {name}"),
            RouteNetlinkMessage::DelLink(link_message(index)),
            0,
        )
    }

    /// Adds (or, `add` false, removes) each MAC as a static entry of bridge port `port`
    /// (`bridge fdb add MAC dev PORT master static`), in one round trip; each one's outcome
    /// in order. Static, not permanent: zebra advertises static and learned entries only.
    pub fn fdb_update(
        &mut self,
        port: u32,
        add: bool,
        macs: &[[u8; 6]],
    ) -> Result<Vec<Result<(), io::Error>>, NetlinkError> {
        let requests = macs
            .iter()
            .map(|mac| {
                let m = fdb_message(port, *mac);
                if add {
                    (
                        RouteNetlinkMessage::NewNeighbour(m),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    )
                } else {
                    (RouteNetlinkMessage::DelNeighbour(m), 0)
                }
            })
            .collect();
        self.batch(if add { "fdb add" } else { "fdb del" }, requests)
    }

    /// Every bridge FDB entry in the namespace (`bridge fdb show`).
    pub fn dump_fdb(&mut self) -> Result<Vec<FdbEntry>, NetlinkError> {
        let what = "fdb dump";
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        self.sequence = self.sequence.wrapping_add(1);
        let out = message(
            RouteNetlinkMessage::GetNeighbour(m),
            NLM_F_REQUEST | NLM_F_DUMP,
            self.sequence,
        );
        self.send(what, &out)?;
        let sequence = self.sequence;
        let mut entries = Vec::new();
        loop {
            let n = self.receive(what)?;
            // Answers to something else (the rest of an earlier, interrupted exchange) are
            // skipped.
            for msg in self.messages(what, n)? {
                if msg.header.sequence_number != sequence {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(entries),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(NetlinkError::Request {
                            what: what.into(),
                            source: e.to_io(),
                        })
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                        entries.extend(fdb_entry(&n));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The FDB changes waiting on an event socket (none if it would block). ENOBUFS (the
    /// kernel dropped events) is returned as an error: the caller must dump again.
    pub fn fdb_changes(&mut self, out: &mut Vec<FdbChange>) -> Result<(), NetlinkError> {
        let what = "fdb events";
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(source) => {
                    return Err(NetlinkError::Request {
                        what: what.into(),
                        source,
                    })
                }
            };
            for msg in self.messages(what, n)? {
                let (added, n) = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => (true, n),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                        (false, n)
                    }
                    _ => continue,
                };
                if let Some(entry) = fdb_entry(&n) {
                    out.push(FdbChange { added, entry });
                }
            }
        }
    }
}

/// The bridge FDB entry in a neighbour message, if it is one (family AF_BRIDGE, with a
/// 6-byte link-layer address).
pub fn fdb_entry(n: &NeighbourMessage) -> Option<FdbEntry> {
    if n.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut remote = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]]);
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                remote = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                remote = Some(IpAddr::V6(*a))
            }
            // In an AF_BRIDGE message the parser cannot know the address's family: its
            // length says it.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                remote = match b.len() {
                    4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
                    _ => None,
                };
            }
            _ => {}
        }
    }
    Some(FdbEntry {
        ifindex: n.header.ifindex,
        mac: mac?,
        remote,
        own: n.header.flags.contains(NeighbourFlags::Own),
    })
}

/// The index of interface `name` in this namespace, if it exists.
pub fn link_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string, alive for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::neighbour::NeighbourMessageBuffer;

    /// What zebra installs for a remote MAC, as `bridge monitor fdb` shows it: `MAC dev
    /// vxlan100 dst VTEP self extern_learn`; emitted and parsed back.
    #[test]
    fn remote_entries_parse_with_their_vtep() {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = 7;
        m.header.flags = NeighbourFlags::Own | NeighbourFlags::ExtLearned;
        m.header.state = NeighbourState::Reachable;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![198, 51, 100, 3],
            )));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let parsed = NeighbourMessage::parse(&NeighbourMessageBuffer::new(&buf)).unwrap();
        assert_eq!(
            fdb_entry(&parsed),
            Some(FdbEntry {
                ifindex: 7,
                mac: [2, 0, 0, 0, 0, 1],
                remote: Some("198.51.100.3".parse().unwrap()),
                own: true,
            })
        );
    }

    #[test]
    fn non_bridge_neighbours_are_not_fdb_entries() {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        assert_eq!(fdb_entry(&m), None);
        let mut m = fdb_message(3, [2, 0, 0, 0, 0, 1]);
        m.attributes.clear();
        assert_eq!(fdb_entry(&m), None, "no address");
    }
}
