//! A stream of raw vhost-user messages against a port of an in-process switch. Each message
//! is a header (request code, flags, size; the size may lie) and a body from the input, with
//! up to three fds attached through SCM_RIGHTS: memfds of fuzzer-chosen sizes and contents
//! (so a memory table can map them and rings can live in them) or eventfds (kick/call). The
//! messages go over one connection, which is then closed; the port must then accept a new
//! connection and answer GET_FEATURES, so a panic, a hang or a dead port fails the input.

#![no_main]

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use patchbay_fuzz::{switch, Reader};

/// Most messages per input.
const MAX_MESSAGES: usize = 32;
/// VHOST_USER_GET_FEATURES and the version bit of the header flags.
const GET_FEATURES: u32 = 1;
const VERSION_1: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
/// How long the port may take to come back: far beyond any honest teardown.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn make_fd(r: &mut Reader<'_>) -> Option<OwnedFd> {
    let kind = r.u8();
    if kind & 1 == 0 {
        return EventFd::from_flags(EfdFlags::EFD_NONBLOCK)
            .ok()
            .map(OwnedFd::from);
    }
    let fd = memfd_create(c"pb-fuzz", MFdFlags::MFD_CLOEXEC).ok()?;
    let mut file = File::from(fd);
    let pages = 1 + u64::from(kind >> 1) % 16;
    file.set_len(pages * 4096).ok()?;
    let len = usize::from(r.u16()) % 4096;
    file.write_all(r.bytes(len)).ok()?;
    Some(OwnedFd::from(file))
}

fn send_message(stream: &UnixStream, r: &mut Reader<'_>) -> bool {
    let request = u32::from(r.u8() % 48);
    let f = r.u8();
    let flags = if f & 0x80 != 0 {
        r.u32()
    } else {
        VERSION_1 | if f & 1 != 0 { NEED_REPLY } else { 0 }
    };
    let body_len = usize::from(r.u16()) % 1024;
    let fd_spec = r.u8();
    let lie = fd_spec & 0x80 != 0;
    let fds: Vec<OwnedFd> = (0..fd_spec % 4).filter_map(|_| make_fd(r)).collect();
    let body = r.bytes(body_len);
    let size = if lie { r.u32() } else { body.len() as u32 };
    let mut header = [0u8; 12];
    header[0..4].copy_from_slice(&request.to_le_bytes());
    header[4..8].copy_from_slice(&flags.to_le_bytes());
    header[8..12].copy_from_slice(&size.to_le_bytes());
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(&header), IoSlice::new(body)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}

/// Connects to the port and asks for its features: the port is alive.
fn port_answers(path: &std::path::Path) -> Result<(), String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut msg = [0u8; 12];
    msg[0..4].copy_from_slice(&GET_FEATURES.to_le_bytes());
    msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
    s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply)
        .map_err(|e| format!("no GET_FEATURES reply: {e}"))?;
    if u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]) != GET_FEATURES {
        return Err(format!("bad reply {reply:02x?}"));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let s = switch();
    let path = s.port_socket("p0");
    let mut r = Reader::new(data);
    {
        let stream = UnixStream::connect(&path).expect("connect to the port");
        for _ in 0..MAX_MESSAGES {
            if r.is_empty() || !send_message(&stream, &mut r) {
                break;
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    if let Err(e) = port_answers(&path) {
        panic!("port p0 no longer answers after the input: {e}");
    }
});
