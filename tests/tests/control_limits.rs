//! Hardening of the control plane: concurrent add-port requests cannot both win, clients and
//! flows are bounded, big bundles commit correctly, and the control socket's directory must
//! be the switch's own.

use std::path::Path;
use std::sync::{Arc, Barrier};

use patchbay_switch::port::{ConnectMode, PortConfig};
use patchbay_switch::switch::{Settings, Switch, SwitchError};
use patchbay_tests::switch::TestDir;

/// A client-mode port (the switch dials `socket`, which nobody serves: no socket is bound, so
/// only the port table decides who wins).
fn client_port(name: &str, socket: &Path) -> PortConfig {
    PortConfig {
        name: name.to_string(),
        socket: socket.to_path_buf(),
        mode: ConnectMode::Client,
        mac: None,
        vlan_mode: None,
        vlan: None,
        trunks: None,
    }
}

/// Runs `make(i)` on `threads` threads released at once; returns each add_port result.
fn add_concurrently(
    sw: &Arc<Switch>,
    threads: usize,
    make: impl Fn(usize) -> PortConfig + Send + Sync + 'static,
) -> Vec<Result<u16, SwitchError>> {
    let barrier = Arc::new(Barrier::new(threads));
    let make = Arc::new(make);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (sw, barrier, make) = (sw.clone(), barrier.clone(), make.clone());
            std::thread::spawn(move || {
                let config = make(i);
                barrier.wait();
                sw.add_port(config)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("add_port thread"))
        .collect()
}

#[test]
fn concurrent_add_port_with_one_name_or_socket_has_exactly_one_winner() {
    let dir = TestDir::new("addport-race");
    let sw = Switch::new(Settings::default());
    const THREADS: usize = 16;
    for round in 0..20 {
        let name = format!("dup{round}");
        let base = dir.path.clone();
        let results = add_concurrently(&sw, THREADS, move |i| {
            client_port(&name, &base.join(format!("n{round}-{i}.sock")))
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: same name: {results:?}");
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, SwitchError::DuplicateName(_))));
        let named = sw
            .ports()
            .iter()
            .filter(|p| p.name == format!("dup{round}"))
            .count();
        assert_eq!(named, 1, "round {round}: one port of that name in the table");

        let socket = dir.join(&format!("shared{round}.sock"));
        let results = add_concurrently(&sw, THREADS, move |i| {
            client_port(&format!("s{round}-{i}"), &socket)
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: same socket: {results:?}");
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, SwitchError::DuplicateSocket { .. })));
    }
    sw.shutdown();
}
