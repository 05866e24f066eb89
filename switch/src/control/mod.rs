//! The control socket: a unix socket speaking newline-delimited JSON, one request and one
//! response per line. The protocol is versioned; `docs/control-protocol.md` describes it.
//!
//! - `protocol.rs`: the request and response types (shared with flowctl).
//! - `server.rs`: the daemon's side.

pub mod protocol;
pub mod server;

use std::path::PathBuf;

pub use protocol::{Request, RequestEnvelope, Response, PROTOCOL_VERSION};

/// Where the control socket lives unless configured: `/run/patchbay/control.sock` for root,
/// else under `$XDG_RUNTIME_DIR`, else `/tmp/patchbay-<uid>/`. flowctl uses the same rule,
/// and both honour `PATCHBAY_CONTROL`. The daemon creates the directory 0700 or refuses one
/// that is not its own (`server::prepare_socket_dir`).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_CONTROL") {
        return PathBuf::from(p);
    }
    let uid = nix::unistd::Uid::current();
    if uid.is_root() {
        return PathBuf::from("/run/patchbay/control.sock");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("patchbay/control.sock");
    }
    PathBuf::from(format!("/tmp/patchbay-{uid}/control.sock"))
}
pub mod flows;
