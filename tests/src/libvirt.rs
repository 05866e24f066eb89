//! libvirt for the tests: a `libvirtd` (with `virtlogd`) started without systemd when none
//! answers, transient domains of the guest image with a vhost-user interface, as
//! docs/libvirt.md describes them, and their serial console over a Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::guest::{Console, GuestImage};

/// The connection URI of the system daemon (QEMU guests run as `libvirt-qemu`).
pub const URI: &str = "qemu:///system";

/// How long libvirtd gets to answer after it is started.
const START: Duration = Duration::from_secs(30);

/// A libvirtd to talk to: one already running, or one this process started (stopped on drop).
pub struct Libvirt {
    started: Vec<Child>,
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for child in &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn virsh_ok(args: &[&str]) -> bool {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `virsh ARGS`; its stdout, or what it said on failure.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .map_err(|e| format!("virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Libvirt {
    /// The system libvirtd, started here (with virtlogd, which its QEMU driver logs through)
    /// if none answers. Err: why libvirt cannot be used on this machine.
    pub fn start() -> Result<Libvirt, String> {
        for tool in ["virsh", "libvirtd", "virtlogd"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
            {
                return Err(format!(
                    "{tool} not installed (libvirt-daemon-system, libvirt-clients; .ci/install-deps.sh)"
                ));
            }
        }
        let mut libvirt = Libvirt {
            started: Vec::new(),
        };
        if virsh_ok(&["version"]) {
            return Ok(libvirt);
        }
        for daemon in ["virtlogd", "libvirtd"] {
            let child = Command::new(daemon)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {daemon}: {e}"))?;
            libvirt.started.push(child);
        }
        let start = Instant::now();
        while !virsh_ok(&["version"]) {
            if start.elapsed() > START {
                return Err(format!(
                    "libvirtd started but did not answer on {URI} within {} s",
                    START.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(libvirt)
    }
}

/// The uid and gid QEMU runs as under libvirt (`user` and `group` in /etc/libvirt/qemu.conf;
/// Debian's defaults are user and group libvirt-qemu).
pub fn qemu_user() -> Result<(nix::unistd::Uid, nix::unistd::Gid), String> {
    let user = nix::unistd::User::from_name("libvirt-qemu")
        .map_err(|e| e.to_string())?
        .ok_or("no user libvirt-qemu (libvirt-daemon-system creates it)")?;
    let group = nix::unistd::Group::from_name("libvirt-qemu")
        .map_err(|e| e.to_string())?
        .ok_or("no group libvirt-qemu (libvirt-daemon-system creates it)")?;
    Ok((user.uid, group.gid))
}

/// A directory QEMU (as libvirt-qemu) can create sockets in: owned by it, 0755.
pub fn qemu_dir(path: &Path) -> Result<(), String> {
    let (uid, gid) = qemu_user()?;
    std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
    nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())
}

/// Who listens on a guest's vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// `mode='client'`: the switch's port listens, QEMU connects.
    Client,
    /// `mode='server'`: QEMU listens, the switch's port (mode client) connects.
    Server,
}

/// A guest as libvirt defines it.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub image: &'a GuestImage,
    pub socket: &'a Path,
    pub mode: SocketMode,
    pub mac: &'a str,
    /// The serial console's socket (QEMU listens on it).
    pub console: &'a Path,
    /// /init parameters, e.g. `pb.ip=10.0.0.1/24`.
    pub params: &'a str,
}

/// The domain XML of docs/libvirt.md: TCG, 256 MiB of shared memfd memory, the guest
/// image's kernel and initramfs, one vhost-user interface, a serial console on a socket, and
/// the `<qemu:override>` that gives the NIC no MSI-X vectors (QEMU 7.2 TCG crashes with
/// vhost-user and MSI-X).
pub fn domain_xml(d: &DomainSpec<'_>) -> String {
    let mode = match d.mode {
        SocketMode::Client => "client",
        SocketMode::Server => "server",
    };
    format!(
        r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 tsc_early_khz={tsc} tsc=reliable quiet pb.name={name} {params}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='vhostuser'>
      <mac address='{mac}'/>
      <source type='unix' path='{socket}' mode='{mode}'/>
      <model type='virtio'/>
      <alias name='ua-net0'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path='{console}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-net0'>
      <qemu:frontend>
        <qemu:property name='vectors' type='unsigned' value='0'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"#,
        name = d.name,
        kernel = d.image.kernel.display(),
        initrd = d.image.initrd.display(),
        tsc = d.image.tsc_khz,
        params = d.params,
        mac = d.mac,
        socket = d.socket.display(),
        console = d.console.display(),
    )
}

/// A running transient domain (`virsh create`), destroyed on drop.
pub struct Domain {
    pub name: String,
    pub console: Console,
    /// Where this run's part of QEMU's log starts (libvirt appends to it across runs).
    log_start: u64,
}

fn qemu_log_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/log/libvirt/qemu/{name}.log"))
}

impl Domain {
    /// Creates and starts the domain from `xml` (written to `dir`), then connects to its
    /// console socket.
    pub fn create(dir: &Path, spec: &DomainSpec<'_>) -> Result<Domain, String> {
        let file: PathBuf = dir.join(format!("{}.xml", spec.name));
        std::fs::write(&file, domain_xml(spec)).map_err(|e| e.to_string())?;
        let _ = virsh(&["destroy", spec.name]); // a leftover of an earlier run
        let log_start = std::fs::metadata(qemu_log_path(spec.name)).map_or(0, |m| m.len());
        virsh(&["create", &file.to_string_lossy()])?;
        let connected = UnixStream::connect(spec.console).and_then(|s| Ok((s.try_clone()?, s)));
        match connected {
            Ok((reader, writer)) => Ok(Domain {
                name: spec.name.to_string(),
                console: Console::on_stream(spec.name, reader, writer),
                log_start,
            }),
            Err(e) => {
                let _ = virsh(&["destroy", spec.name]);
                Err(format!("console {}: {e}", spec.console.display()))
            }
        }
    }

    /// QEMU's log for this run of the domain (libvirt's /var/log/libvirt/qemu/NAME.log from
    /// where it was when the domain was created).
    pub fn qemu_log(&self) -> String {
        let text = std::fs::read(qemu_log_path(&self.name)).unwrap_or_default();
        let start = usize::try_from(self.log_start).unwrap_or(0).min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}
