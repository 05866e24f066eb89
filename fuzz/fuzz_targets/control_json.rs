//! Control-socket requests (`handle_line`) on arbitrary bytes against an in-process switch.
//! `add-port` socket paths are redirected into the switch's private directory (the fuzzer must
//! not create or replace files elsewhere). After each input the switch is put back as it was
//! (its two ports, their VLANs, no flows) and must still answer `hello`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_fuzz::{switch, InProcessSwitch};
use patchbay_switch::control::server::handle_line;

/// The line as sent, with any `port.socket` pointing into `dir`.
fn confine(line: &[u8], dir: &std::path::Path) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    let socket = value.get_mut("port")?.get_mut("socket")?;
    if socket.is_string() {
        *socket = serde_json::Value::String(dir.join("added.sock").display().to_string());
    }
    serde_json::to_vec(&value).ok()
}

fuzz_target!(|data: &[u8]| {
    let s = switch();
    let sw = &s.daemon.switch;
    let counters = &s.daemon.control_counters;
    for line in data.split(|b| *b == b'\n').take(8) {
        let line = confine(line, &s.dir).unwrap_or_else(|| line.to_vec());
        let response = handle_line(&line, sw, counters);
        assert!(response.ok || response.error.as_deref().is_some_and(|e| !e.is_empty()));
        serde_json::to_string(&response).expect("responses serialise");
    }
    // Back to the starting state.
    let initial = InProcessSwitch::initial_ports(&s.dir);
    for port in sw.ports() {
        if !initial.iter().any(|p| p.name == port.name) {
            sw.remove_port(&port.name)
                .expect("remove a port the input added");
        }
    }
    for p in initial {
        if sw.port_by_name(&p.name).is_none() {
            sw.add_port(p.clone())
                .expect("re-add a port the input removed");
        }
        sw.set_vlan(&p.name, &p.vlan_config())
            .expect("restore VLANs");
    }
    sw.flows()
        .replace_all(Vec::new())
        .expect("delete every flow");
    let hello = handle_line(br#"{"version":1,"command":"hello"}"#, sw, counters);
    assert!(hello.ok, "switch stopped answering: {:?}", hello.error);
});
