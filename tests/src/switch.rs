//! Running a switch inside a test: a private directory for its sockets and an in-process
//! daemon (the same code the `patchbay-switch` binary runs, minus argument parsing).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use patchbay_switch::config::Config;
use patchbay_switch::daemon::Daemon;
use patchbay_switch::port::{ConnectMode, PortConfig};

/// A directory of the test's own, removed when dropped.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pb-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test directory");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port listening on `dir/NAME.sock` with the given VLAN words.
pub fn port(
    dir: &Path,
    name: &str,
    vlan_mode: &str,
    vlan: Option<u16>,
    trunks: Option<&str>,
) -> PortConfig {
    PortConfig {
        name: name.to_string(),
        socket: dir.join(format!("{name}.sock")),
        mode: ConnectMode::Server,
        mac: None,
        vlan_mode: Some(vlan_mode.to_string()),
        vlan,
        trunks: trunks.map(str::to_string),
    }
}

/// An access port of `vlan`.
pub fn access(dir: &Path, name: &str, vlan: u16) -> PortConfig {
    port(dir, name, "access", Some(vlan), None)
}

/// Starts a switch with `ports`, its control socket in `dir`, metrics off unless asked.
pub fn start_switch(
    dir: &Path,
    ports: Vec<PortConfig>,
    configure: impl FnOnce(&mut Config),
) -> Daemon {
    let mut config = Config {
        control_socket: dir.join("control.sock"),
        metrics_listen: None,
        ports,
        ..Config::default()
    };
    configure(&mut config);
    Daemon::start(config).expect("switch starts")
}
