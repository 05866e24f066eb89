//! The metrics endpoint under abuse from local processes: idle connections cost no threads
//! and cannot keep a scrape out, a slow sender is cut after the timeout, and both are
//! counted. One test in this binary, so that the process's thread count is this test's.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use patchbay_tests::switch::{start_switch, TestDir};

/// Threads of this process (the switch runs in it).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// One scrape of /metrics; None if the connection was refused or closed without a response.
fn try_scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

/// Scrapes until it works (bounded wait).
fn scrape(addr: SocketAddr, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(body) = try_scrape(addr) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape succeeded within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether the server has closed `s` (EOF or reset), without waiting.
fn closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let r = s.read(&mut b);
    s.set_nonblocking(false).unwrap();
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn idle_and_slow_clients_cannot_exhaust_the_metrics_server() {
    let dir = TestDir::new("metrics-limits");
    let d = start_switch(&dir.path, vec![], |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let addr = d.metrics_addr.expect("metrics enabled");
    // The server is up and every thread it needs is running.
    scrape(addr, Duration::from_secs(10));
    let baseline = threads();

    // 200 connections that never send a request.
    let mut idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
        .collect();
    assert!(idle.len() > 100, "the kernel took the connections");
    // Accepted in order: once this scrape is served, the server has seen all of them.
    let body = scrape(addr, Duration::from_secs(15));
    let now = threads();
    assert!(
        now <= baseline + 2,
        "threads grew from {baseline} to {now} with {} idle connections",
        idle.len()
    );
    let refused = value(&body, "patchbay_metrics_refused_connections_total")
        .expect("refused connections are exported");
    assert!(
        refused > 0,
        "connections beyond the bound were refused: {refused}"
    );

    // None is held forever: each is closed, at once (refused) or after the timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !idle.is_empty() {
        idle.retain_mut(|s| !closed(s));
        assert!(
            Instant::now() < deadline,
            "{} idle connections still open after 20 s",
            idle.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Slowloris: one byte of a request per second, cut after the timeout.
    let mut slow = TcpStream::connect(addr).unwrap();
    let request =
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for byte in request.iter() {
        if slow.write_all(&[*byte]).is_err() || closed(&mut slow) {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        cut,
        "a request sent at one byte per second was served or kept"
    );
    eprintln!("slow client cut after {:?}", started.elapsed());
    let body = scrape(addr, Duration::from_secs(10));
    let timeouts = value(&body, "patchbay_metrics_timeouts_total").expect("timeouts are exported");
    assert!(timeouts >= 1, "the slow client was counted: {timeouts}");
    d.shutdown();
}
