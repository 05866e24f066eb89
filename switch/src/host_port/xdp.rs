//! The XDP program of an AF_XDP uplink: it sends every frame the interface receives to the
//! AF_XDP socket of its receive queue (an XSKMAP indexed by queue), and frames of a queue
//! without a socket on to the kernel's stack.
//!
//! The program is six instructions, so it is assembled here and loaded with bpf(2) rather
//! than built from C: loaders such as libxdp (through xsk-rs) or aya expect an ELF object
//! made by a BPF toolchain (clang, or nightly Rust with bpf-linker) that CI would have to
//! build, and libxdp's multi-program dispatcher is refused on this kernel anyway
//! (../shared/notes/host-ports.md). It is attached through a BPF link (BPF_LINK_CREATE),
//! which the kernel detaches when the link's descriptor is closed: the program goes with the
//! port, and with the switch however it ends, and never outlives them on the interface.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// The attach type of an XDP program on an interface.
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Offset of `rx_queue_index` in `struct xdp_md`, the program's context.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
/// Offset of the interface index in `struct bpf_link_info` of an XDP link (0 once detached).
const LINK_INFO_XDP_IFINDEX: usize = 16;

/// `union bpf_attr` as bytes (the kernel's is 144 bytes; fields past the ones a command
/// uses stay zero, as the kernel requires).
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }

    fn u32(mut self, at: usize, v: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(mut self, at: usize, v: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn name(mut self, at: usize, name: &str) -> Attr {
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
}

/// bpf(2): the command's result (a descriptor for the commands that make one).
fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i32> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size passed; pointers in it
    // point at buffers the caller keeps alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One BPF instruction (`struct bpf_insn`).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | src << 4) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`
fn program(map_fd: i32) -> [u64; 6] {
    [
        // r2 = ctx->rx_queue_index
        insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = &xsks (a 64-bit load the kernel resolves from the map's descriptor)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when the queue has no socket
        insn(0xb7, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        // return r0
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// Where the program runs: in the driver (native) or on the kernel's socket buffers
/// (generic, for drivers without XDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

/// The program attached to an interface, with its map of sockets.
pub struct XdpRedirect {
    map: OwnedFd,
    /// Closing it detaches the program.
    link: OwnedFd,
    pub mode: XdpMode,
}

impl XdpRedirect {
    /// Loads the program with a map for `queues` sockets and attaches it to interface
    /// `ifindex`, in the driver if it can run there, otherwise generic.
    pub fn attach(ifindex: u32, queues: u32) -> io::Result<XdpRedirect> {
        let mut attr = Attr::new()
            .u32(0, BPF_MAP_TYPE_XSKMAP)
            .u32(4, 4)
            .u32(8, 4)
            .u32(12, queues.max(1))
            .name(28, "patchbay_xsks");
        let map = owned(bpf(BPF_MAP_CREATE, &mut attr).map_err(|e| context(e, "XSKMAP"))?);
        let insns = program(map.as_raw_fd());
        let license = c"Apache-2.0";
        let mut log = vec![0u8; 4096];
        let mut attr = Attr::new()
            .u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .name(48, "patchbay_xsk")
            .u32(68, BPF_XDP);
        let prog = owned(bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            context(e, &format!("loading the XDP program ({})", verifier.trim()))
        })?);
        let mut failed = None;
        for (mode, flags) in [
            (XdpMode::Native, XDP_FLAGS_DRV_MODE),
            (XdpMode::Generic, XDP_FLAGS_SKB_MODE),
        ] {
            let mut attr = Attr::new()
                .u32(0, prog.as_raw_fd() as u32)
                .u32(4, ifindex)
                .u32(8, BPF_XDP)
                .u32(12, flags);
            match bpf(BPF_LINK_CREATE, &mut attr) {
                Ok(fd) => {
                    return Ok(XdpRedirect {
                        map,
                        link: owned(fd),
                        mode,
                    })
                }
                // Another program is there: the interface takes one here.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(context(
                        e,
                        "another XDP program is attached to the interface",
                    ))
                }
                Err(e) => failed = Some(e),
            }
        }
        Err(context(
            failed.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)),
            "attaching the XDP program",
        ))
    }

    /// Sends the frames of receive queue `queue` to socket `xsk`.
    pub fn insert(&self, queue: u32, xsk: i32) -> io::Result<()> {
        let key = queue;
        let value = xsk as u32;
        let mut attr = Attr::new()
            .u32(0, self.map.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &value as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
            .map(|_| ())
            .map_err(|e| context(e, "adding the socket to the XSKMAP"))
    }

    /// The interface the program is attached to now: None once it was deleted (the kernel
    /// then detaches the link).
    pub fn attached_ifindex(&self) -> Option<u32> {
        let mut info = [0u8; 48];
        let mut attr = Attr::new()
            .u32(0, self.link.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
        let at = LINK_INFO_XDP_IFINDEX;
        let ifindex = u32::from_ne_bytes(info[at..at + 4].try_into().ok()?);
        (ifindex != 0).then_some(ifindex)
    }
}

fn context(e: io::Error, what: &str) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => " (needs CAP_BPF and CAP_NET_ADMIN)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("{what}: {e}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // ldxw r2, [r1+16]: opcode 0x61, dst 2 in the low nibble, src 1 in the high one.
        assert_eq!(insn(0x61, 2, 1, 16, 0), 0x0000_0000_0010_1261);
        // lddw r1, map fd 7: the pseudo source marks a map descriptor.
        assert_eq!(program(7)[1], 0x0000_0007_0000_1118);
        assert_eq!(insn(0xb7, 3, 0, 0, -1), 0xffff_ffff_0000_03b7);
    }
}
