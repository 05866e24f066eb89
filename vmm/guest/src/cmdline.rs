//! The program named in BootInfo.cmdline and its arguments.
use core::fmt;
use core::net::Ipv4Addr;

pub const DEFAULT_PING_COUNT: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Ping { dst: Ipv4Addr, count: u32 },
    UdpEcho { port: u16 },
    TcpSink { port: u16 },
    TcpSource { dst: Ipv4Addr, port: u16, bytes: u64 },
    /// Source and sink on two interfaces inside this guest, joined by an in-memory wire.
    TcpLoopback { bytes: u64 },
}

impl Program {
    /// Whether the program talks through the virtio-net device (tcp-loopback does not).
    pub fn uses_nic(&self) -> bool {
        !matches!(self, Program::TcpLoopback { .. })
    }
}

/// A parse error: a message and (a copy of) the offending word.
#[derive(Clone, Copy)]
pub struct CmdError {
    pub what: &'static str,
    word: [u8; 48],
    word_len: usize,
}

impl CmdError {
    fn new(what: &'static str, word: &[u8]) -> Self {
        let mut w = [0u8; 48];
        let n = word.len().min(w.len());
        w[..n].copy_from_slice(&word[..n]);
        CmdError { what, word: w, word_len: n }
    }

    pub fn word(&self) -> &[u8] {
        &self.word[..self.word_len]
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)?;
        if self.word_len > 0 {
            f.write_str(" '")?;
            for &b in self.word() {
                let c = if b.is_ascii_graphic() { b as char } else { '?' };
                write!(f, "{c}")?;
            }
            f.write_str("'")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

pub fn parse(cmdline: &[u8]) -> Result<Program, CmdError> {
    let mut words = cmdline.split(|b| b.is_ascii_whitespace() || *b == 0).filter(|w| !w.is_empty());
    let prog = words.next().ok_or(CmdError::new("empty command line", b""))?;
    let mut arg = |name: &'static str| words.next().ok_or(CmdError::new(name, prog));
    let p = match prog {
        b"ping" => {
            let dst = parse_ipv4(arg("usage: ping IP [COUNT]")?)?;
            let count = match arg("") {
                Ok(w) => {
                    let c = parse_u64(w)?;
                    if c == 0 || c > u32::MAX as u64 {
                        return Err(CmdError::new("bad ping count", w));
                    }
                    c as u32
                }
                Err(_) => DEFAULT_PING_COUNT,
            };
            Program::Ping { dst, count }
        }
        b"udp-echo" => Program::UdpEcho { port: parse_port(arg("usage: udp-echo PORT")?)? },
        b"tcp-sink" => Program::TcpSink { port: parse_port(arg("usage: tcp-sink PORT")?)? },
        b"tcp-source" => {
            let dst = parse_ipv4(arg("usage: tcp-source IP PORT BYTES")?)?;
            let port = parse_port(arg("usage: tcp-source IP PORT BYTES")?)?;
            let bytes = parse_size(arg("usage: tcp-source IP PORT BYTES")?)?;
            Program::TcpSource { dst, port, bytes }
        }
        b"tcp-loopback" => Program::TcpLoopback { bytes: parse_size(arg("usage: tcp-loopback BYTES")?)? },
        _ => return Err(CmdError::new("unknown program", prog)),
    };
    if let Some(extra) = words.next() {
        return Err(CmdError::new("unexpected argument", extra));
    }
    Ok(p)
}

pub fn parse_ipv4(w: &[u8]) -> Result<Ipv4Addr, CmdError> {
    let err = || CmdError::new("bad IPv4 address", w);
    let mut out = [0u8; 4];
    let mut n = 0;
    for part in w.split(|&b| b == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return Err(err());
        }
        let v = part.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32);
        if v > 255 {
            return Err(err());
        }
        out[n] = v as u8;
        n += 1;
    }
    if n != 4 {
        return Err(err());
    }
    Ok(Ipv4Addr::new(out[0], out[1], out[2], out[3]))
}

pub fn parse_u64(w: &[u8]) -> Result<u64, CmdError> {
    if w.is_empty() || !w.iter().all(u8::is_ascii_digit) {
        return Err(CmdError::new("bad number", w));
    }
    let mut v: u64 = 0;
    for &d in w {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as u64))
            .ok_or(CmdError::new("number too large", w))?;
    }
    Ok(v)
}

fn parse_port(w: &[u8]) -> Result<u16, CmdError> {
    match parse_u64(w) {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(CmdError::new("bad port", w)),
    }
}

/// Decimal bytes with an optional binary suffix: `1000`, `64K`, `256M`, `1G` (K = 1024).
pub fn parse_size(w: &[u8]) -> Result<u64, CmdError> {
    let (digits, shift) = match w.last() {
        Some(b'k' | b'K') => (&w[..w.len() - 1], 10),
        Some(b'm' | b'M') => (&w[..w.len() - 1], 20),
        Some(b'g' | b'G') => (&w[..w.len() - 1], 30),
        _ => (w, 0),
    };
    let v = parse_u64(digits).map_err(|_| CmdError::new("bad byte count", w))?;
    v.checked_mul(1u64 << shift).ok_or(CmdError::new("byte count too large", w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs() {
        assert_eq!(
            parse(b"ping 10.0.0.2 5").unwrap(),
            Program::Ping { dst: Ipv4Addr::new(10, 0, 0, 2), count: 5 }
        );
        assert_eq!(
            parse(b"  ping\t192.168.1.254 ").unwrap(),
            Program::Ping { dst: Ipv4Addr::new(192, 168, 1, 254), count: DEFAULT_PING_COUNT }
        );
        assert_eq!(parse(b"udp-echo 7").unwrap(), Program::UdpEcho { port: 7 });
        assert_eq!(parse(b"tcp-sink 5001\0\0\0").unwrap(), Program::TcpSink { port: 5001 });
        assert_eq!(
            parse(b"tcp-source 10.1.2.3 5001 1000000").unwrap(),
            Program::TcpSource { dst: Ipv4Addr::new(10, 1, 2, 3), port: 5001, bytes: 1_000_000 }
        );
        assert_eq!(
            parse(b"tcp-source 10.1.2.3 5001 64M").unwrap(),
            Program::TcpSource { dst: Ipv4Addr::new(10, 1, 2, 3), port: 5001, bytes: 64 << 20 }
        );
        assert!(parse(b"tcp-sink 1").unwrap().uses_nic());
    }

    #[test]
    fn tcp_loopback() {
        assert_eq!(parse(b"tcp-loopback 1G").unwrap(), Program::TcpLoopback { bytes: 1 << 30 });
        assert_eq!(parse(b" tcp-loopback\t12345 ").unwrap(), Program::TcpLoopback { bytes: 12345 });
        assert!(!parse(b"tcp-loopback 64K").unwrap().uses_nic());
        let e = |s: &[u8]| format!("{}", parse(s).unwrap_err());
        assert_eq!(e(b"tcp-loopback"), "usage: tcp-loopback BYTES 'tcp-loopback'");
        assert_eq!(e(b"tcp-loopback 1T"), "bad byte count '1T'");
        assert_eq!(e(b"tcp-loopback 1M 2M"), "unexpected argument '2M'");
    }

    #[test]
    fn errors() {
        let e = |s: &[u8]| format!("{}", parse(s).unwrap_err());
        assert_eq!(e(b""), "empty command line");
        assert_eq!(e(b"   "), "empty command line");
        assert_eq!(e(b"reboot now"), "unknown program 'reboot'");
        assert_eq!(e(b"ping"), "usage: ping IP [COUNT] 'ping'");
        assert_eq!(e(b"ping 10.0.0"), "bad IPv4 address '10.0.0'");
        assert_eq!(e(b"ping 10.0.0.256"), "bad IPv4 address '10.0.0.256'");
        assert_eq!(e(b"ping 10.0.0.1.2"), "bad IPv4 address '10.0.0.1.2'");
        assert_eq!(e(b"ping 10..0.1"), "bad IPv4 address '10..0.1'");
        assert_eq!(e(b"ping 10.0.0.1 0"), "bad ping count '0'");
        assert_eq!(e(b"ping 10.0.0.1 x"), "bad number 'x'");
        assert_eq!(e(b"udp-echo 0"), "bad port '0'");
        assert_eq!(e(b"udp-echo 65536"), "bad port '65536'");
        assert_eq!(e(b"tcp-sink 80 81"), "unexpected argument '81'");
        assert_eq!(e(b"tcp-source 1.2.3.4 80 12X"), "bad byte count '12X'");
        assert_eq!(e(b"tcp-source 1.2.3.4 80 99999999999999999999"), "bad byte count '99999999999999999999'");
        assert_eq!(e(b"tcp-source 1.2.3.4 80 17179869184G"), "byte count too large '17179869184G'");
    }
}
