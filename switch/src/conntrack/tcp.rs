//! TCP connection state with sequence and window checks, after the stateful tracking of
//! OpenBSD pf that OVS's userspace conntrack also uses (Guido van Rooij, "Real Stateful TCP
//! Packet Filtering in IP Filter"): each side's highest sequence sent (`seqlo`), the highest
//! sequence the other side's window allows it (`seqhi`) and its largest window; a segment
//! outside what the windows allow, or acking data never sent, is invalid. Written here
//! because no maintained crate tracks TCP this way outside a kernel.

use super::packet::{tcp_flags::*, TcpSegment};

/// One side's state, ordered as a connection progresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerState {
    /// Nothing seen from this side yet.
    Closed,
    SynSent,
    Established,
    /// This side sent a FIN.
    Closing,
    /// This side's FIN was acknowledged.
    FinWait2,
    /// After a RST.
    TimeWait,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    /// The highest sequence number this side has sent (plus its length).
    seqlo: u32,
    /// The highest sequence number this side may send (what the other side's window allows).
    seqhi: u32,
    /// This side's largest window seen (unscaled).
    max_win: u32,
    /// The window scale this side announced in its SYN.
    wscale: Option<u8>,
    state: PeerState,
    /// Whether `seqlo` is set (a sequence number of 0 is valid, so it cannot say).
    seen: bool,
}

/// Acks may lag a window plus one full-size segment behind what was sent.
const MAX_ACK_WINDOW: i64 = 0xffff + 1500;

/// How long a connection lives without traffic, by how far it got (the Linux nf_conntrack
/// defaults: syn_sent, established, fin_wait, time_wait, close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpTimeout {
    Opening,
    Established,
    Closing,
    Closed,
    Reset,
}

impl TcpTimeout {
    pub fn millis(self) -> u64 {
        1000 * match self {
            TcpTimeout::Opening => 120,
            TcpTimeout::Established => 432_000,
            TcpTimeout::Closing => 120,
            TcpTimeout::Closed => 120,
            TcpTimeout::Reset => 10,
        }
    }
}

/// What a segment did to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In window: the connection moved on.
    Valid,
    /// Outside the windows or contradicting the state: not part of this connection.
    Invalid,
}

/// A TCP connection: `peers[0]` opened it (sent the SYN), `peers[1]` answers.
#[derive(Clone, Debug)]
pub struct TcpConn {
    peers: [Peer; 2],
    /// A window scale we could not read (options cut short): windows are not checked, as
    /// checking them without the scale would refuse good segments.
    loose: bool,
    /// Whether a RST ended it.
    reset: bool,
}

fn seq_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl TcpConn {
    /// Whether `seg` may open a connection: a SYN without ACK, RST or FIN.
    pub fn can_open(seg: &TcpSegment) -> bool {
        seg.flags & (SYN | ACK | RST | FIN) == SYN
    }

    /// The connection its opening SYN creates.
    pub fn new(seg: &TcpSegment) -> TcpConn {
        let mut seqhi = seg.seq.wrapping_add(seg.payload).wrapping_add(1);
        if seg.flags & FIN != 0 {
            seqhi = seqhi.wrapping_add(1);
        }
        let mut max_win = u32::from(seg.window).max(1);
        if let Some(shift) = seg.wscale {
            // The SYN's own window is never scaled; keep it in scaled units.
            max_win = (max_win + (1 << shift) - 1) >> shift;
        }
        let opener = Peer {
            seqlo: seg.seq,
            seqhi,
            max_win,
            wscale: seg.wscale,
            state: PeerState::SynSent,
            seen: true,
        };
        let answerer = Peer {
            seqlo: 0,
            seqhi: 1,
            max_win: 1,
            wscale: None,
            state: PeerState::Closed,
            seen: false,
        };
        TcpConn {
            peers: [opener, answerer],
            loose: seg.options_unknown,
            reset: false,
        }
    }

    /// Whether the answering side has sent anything (the connection saw a reply).
    pub fn replied(&self) -> bool {
        self.peers[1].seen
    }

    pub fn state(&self, side: usize) -> PeerState {
        self.peers[side & 1].state
    }

    /// Whether both sides are done (closed by FINs both ways or a RST): such connections are
    /// evicted first when the table is full.
    pub fn is_closed(&self) -> bool {
        self.peers.iter().all(|p| p.state >= PeerState::FinWait2)
    }

    /// How long the connection may now stay idle.
    pub fn timeout(&self) -> TcpTimeout {
        let [a, b] = [self.peers[0].state, self.peers[1].state];
        if self.reset {
            TcpTimeout::Reset
        } else if a >= PeerState::FinWait2 && b >= PeerState::FinWait2 {
            TcpTimeout::Closed
        } else if a >= PeerState::Closing || b >= PeerState::Closing {
            TcpTimeout::Closing
        } else if a < PeerState::Established || b < PeerState::Established {
            TcpTimeout::Opening
        } else {
            TcpTimeout::Established
        }
    }

    /// Tracks a segment sent by side `from` (0: the opener, 1: the answerer).
    pub fn update(&mut self, from: usize, seg: &TcpSegment) -> Verdict {
        // An invalid segment changes nothing: work on a copy, keep it only if valid.
        let mut next = self.clone();
        let verdict = next.track(from, seg);
        if verdict == Verdict::Valid {
            *self = next;
        }
        verdict
    }

    fn track(&mut self, from: usize, seg: &TcpSegment) -> Verdict {
        let from = from & 1;
        let (src_i, dst_i) = (from, 1 - from);
        if seg.options_unknown && seg.flags & SYN != 0 {
            self.loose = true;
        }
        let mut win = u32::from(seg.window);
        let mut end = seg.seq.wrapping_add(seg.payload);
        let mut ack = seg.ack;
        let flags = seg.flags;

        if !self.peers[src_i].seen {
            // The first segment from this side (normally the SYN-ACK).
            if flags & SYN != 0 {
                end = end.wrapping_add(1);
                if self.peers[dst_i].wscale.is_some() {
                    self.peers[src_i].wscale = seg.wscale;
                    match seg.wscale {
                        Some(shift) => win = (win + (1 << shift) - 1) >> shift,
                        None => {
                            // The other side's window was kept scaled down: undo that.
                            let d = &mut self.peers[dst_i];
                            d.max_win <<= d.wscale.unwrap_or(0);
                            d.wscale = None;
                        }
                    }
                }
            }
            if flags & FIN != 0 {
                end = end.wrapping_add(1);
            }
            let dws = self.dst_scale(dst_i);
            let dst_max_win = self.peers[dst_i].max_win;
            let src = &mut self.peers[src_i];
            src.seqlo = seg.seq;
            src.seen = true;
            if src.state < PeerState::SynSent {
                src.state = PeerState::SynSent;
            }
            let edge = end.wrapping_add((dst_max_win << dws).max(1));
            if src.seqhi == 1 || seq_geq(edge, src.seqhi) {
                src.seqhi = edge;
            }
            if win > src.max_win {
                src.max_win = win;
            }
        } else {
            if flags & SYN != 0 {
                end = end.wrapping_add(1);
            }
            if flags & FIN != 0 {
                end = end.wrapping_add(1);
            }
        }
        // Window scaling applies only when both SYNs announced it.
        let both_scale = self.peers[0].wscale.is_some() && self.peers[1].wscale.is_some();
        let sws = if both_scale {
            self.peers[src_i].wscale.unwrap_or(0)
        } else {
            0
        };
        let dws = if both_scale {
            self.peers[dst_i].wscale.unwrap_or(0)
        } else {
            0
        };

        let dst_seqlo = self.peers[dst_i].seqlo;
        if flags & ACK == 0
            || (ack == 0 && flags & (ACK | RST) == (ACK | RST))
            || self.peers[dst_i].state < PeerState::SynSent
        {
            // Nothing to check the ack against.
            ack = dst_seqlo;
        }
        let mut seq = seg.seq;
        if seq == end {
            // No data: no sequence constraints beyond the ack.
            seq = self.peers[src_i].seqlo;
            end = seq;
        }
        let ackskew = i64::from(dst_seqlo.wrapping_sub(ack) as i32);
        let src = self.peers[src_i];
        let dst = self.peers[dst_i];
        let in_window = self.loose
            || (seq_geq(src.seqhi, end)
                && seq_geq(seq, src.seqlo.wrapping_sub(dst.max_win << dws))
                && ackskew >= -MAX_ACK_WINDOW
                && ackskew <= (MAX_ACK_WINDOW << sws));
        // A RST must carry (nearly) the expected sequence number.
        let rst_ok = flags & RST == 0
            || self.loose
            || seg.seq == src.seqlo
            || seg.seq == src.seqlo.wrapping_add(1)
            || seg.seq.wrapping_add(1) == src.seqlo;
        if !in_window || !rst_ok {
            return Verdict::Invalid;
        }

        let src = &mut self.peers[src_i];
        if src.max_win < win {
            src.max_win = win;
        }
        if seq_gt(end, src.seqlo) {
            src.seqlo = end;
        }
        let edge = ack.wrapping_add(win << sws);
        let dst = &mut self.peers[dst_i];
        if seq_geq(edge, dst.seqhi) {
            dst.seqhi = ack.wrapping_add((win << sws).max(1));
        }
        let src = &mut self.peers[src_i];
        if flags & SYN != 0 && src.state < PeerState::SynSent {
            src.state = PeerState::SynSent;
        }
        if flags & FIN != 0 && src.state < PeerState::Closing {
            src.state = PeerState::Closing;
        }
        if flags & ACK != 0 {
            let dst = &mut self.peers[dst_i];
            match dst.state {
                PeerState::SynSent => dst.state = PeerState::Established,
                PeerState::Closing => dst.state = PeerState::FinWait2,
                _ => {}
            }
        }
        if flags & RST != 0 {
            self.peers[0].state = PeerState::TimeWait;
            self.peers[1].state = PeerState::TimeWait;
            self.reset = true;
        }
        Verdict::Valid
    }

    fn dst_scale(&self, dst_i: usize) -> u32 {
        let both = self.peers[0].wscale.is_some() && self.peers[1].wscale.is_some();
        if both {
            u32::from(self.peers[dst_i].wscale.unwrap_or(0))
        } else {
            0
        }
    }
}
