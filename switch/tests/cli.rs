//! The daemon binary as a user meets it: help, config errors, refusing to start half-way.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchbay-switch"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_explains_every_option() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--config",
        "--port",
        "--control-socket",
        "--metrics-listen",
        "--poll-cpus",
        "--mtu",
        "--mac-aging",
        "--mac-table-size",
        "--check",
        "--log-level",
    ] {
        assert!(help.contains(option), "--help mentions {option}");
    }
    assert!(help.contains("vlan-mode=access|trunk|native-untagged|native-tagged"));
}

#[test]
fn a_bad_config_names_file_line_and_field_and_nothing_starts() {
    let dir = temp_dir("bad-config");
    let config = dir.join("switch.toml");
    std::fs::write(
        &config,
        format!(
            "[control]\nsocket = \"{d}/ctl.sock\"\n\n[[port]]\nname = \"vm1\"\nsocket = \"{d}/vm1.sock\"\nvlan = 4095\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let out = bin().arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("switch.toml:4:"), "{err}");
    assert!(
        err.contains("'vm1'") && err.contains("`vlan`") && err.contains("4095"),
        "{err}"
    );
    assert!(!dir.join("ctl.sock").exists() && !dir.join("vm1.sock").exists());

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[switch]\nmtu = 1500\nmac_agin_secs = 5\n").unwrap();
    let out = bin()
        .arg("--config")
        .arg(&typo)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("mac_agin_secs"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_port_that_cannot_be_created_stops_the_whole_start() {
    let dir = temp_dir("half-start");
    // The second port's socket directory is a file: it cannot be created.
    std::fs::write(dir.join("blocker"), b"").unwrap();
    let out = bin()
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .args(["--metrics-listen", "off"])
        .arg("--port")
        .arg(format!("name=ok,socket={}/ok.sock", dir.display()))
        .arg("--port")
        .arg(format!(
            "name=bad,socket={}/blocker/bad.sock",
            dir.display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad"), "{err}");
    assert!(
        !dir.join("ok.sock").exists(),
        "the first port was torn down again"
    );
    assert!(
        !dir.join("ctl.sock").exists(),
        "no control socket left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_accepts_a_good_config() {
    let dir = temp_dir("check");
    let out = bin()
        .arg("--check")
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .arg("--port")
        .arg(format!(
            "name=t,socket={}/t.sock,vlan-mode=trunk,trunks=10,20-29",
            dir.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 port(s)"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `poll_cpus` are CPU ids checked against the CPUs the process may run on (taskset, a
/// container's cpuset), not against a count of CPUs.
#[test]
fn poll_cpus_are_checked_against_the_cpus_the_process_may_use() {
    let Some(last) = patchbay_switch::switch::allowed_cpus().last().copied() else {
        return;
    };
    if last == 0 {
        eprintln!("SKIPPED poll_cpus_are_checked...: only CPU 0 here, nothing to restrict");
        return;
    }
    let under_taskset = |poll: &str| {
        Command::new("taskset")
            .args(["-c", &last.to_string()])
            .arg(env!("CARGO_BIN_EXE_patchbay-switch"))
            .args(["--check", "--metrics-listen", "off", "--poll-cpus", poll])
            .output()
            .expect("taskset runs")
    };
    let ok = under_taskset(&last.to_string());
    assert!(
        ok.status.success(),
        "polling the only CPU the process has is allowed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = under_taskset("0");
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("CPU 0 is not one this process may run on") && err.contains(&last.to_string()),
        "{err}"
    );
}

/// The CPUs a task of process `pid` may run on (its `Cpus_allowed_list`), by thread name.
fn thread_cpus(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        else {
            continue;
        };
        let mut cpus = Vec::new();
        for part in list.trim().split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                cpus.extend(a..=b);
            }
        }
        out.push((comm.trim().to_string(), cpus));
    }
    out
}

/// A poller owns its CPU: it is pinned there, and every other thread of the switch (main,
/// control, metrics, port supervisors) is kept off it, where it would starve behind the
/// busy-polling loop.
#[test]
fn control_metrics_and_port_threads_stay_off_the_pollers_cpu() {
    let allowed = patchbay_switch::switch::allowed_cpus();
    let Some(&poll) = allowed.last().filter(|_| allowed.len() > 1) else {
        eprintln!("SKIPPED control_metrics_..._pollers_cpu: one CPU here, nothing to keep off");
        return;
    };
    let dir = temp_dir("poll-affinity");
    let mut child = bin()
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--poll-cpus", &poll.to_string()])
        .arg("--port")
        .arg(format!("name=a,socket={}/a.sock", dir.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("patchbay-switch starts");
    let poller = format!("poll-{poll}");
    // Up once the poller and the control socket are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let threads = loop {
        let threads = thread_cpus(child.id());
        if dir.join("ctl.sock").exists() && threads.iter().any(|(name, _)| *name == poller) {
            break threads;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the switch did not start its poller: {threads:?}"
        );
        assert!(
            child.try_wait().expect("child status").is_none(),
            "the switch exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    for (name, cpus) in &threads {
        if *name == poller {
            assert_eq!(cpus, &vec![poll], "the poller is pinned to its CPU");
        } else {
            assert!(
                !cpus.contains(&poll) && !cpus.is_empty(),
                "thread {name} may run on the poller's CPU {poll}: {cpus:?}"
            );
        }
    }
    assert!(
        threads.len() > 2,
        "more threads than the poller: {threads:?}"
    );
}
