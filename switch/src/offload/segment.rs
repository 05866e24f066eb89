//! The software side of the offloads, over a frame in a host buffer: completing a partial
//! checksum (for receivers without GUEST_CSUM) and cutting a super-frame into segments with
//! their own lengths, IDs, sequence numbers and full checksums (for receivers without the
//! matching GUEST_ feature, and the tunnel). As Linux's `skb_checksum_help` and
//! `tcp_gso_segment` / `__udp_gso_segment` do; each result is checked against etherparse in
//! the tests.

use crate::wire::checksum;
use std::ops::Range;

use super::layout::{Layout, IP_TCP, MAX_HEADERS};
use super::{Gso, PartialCsum};

/// Most segments one super-frame is cut into (64 KiB at TCP's smallest MSS, 48, is 1366):
/// a bound on the work one frame can ask of the switch.
pub const MAX_SEGMENTS: u32 = 2048;

/// Why a frame could not be finished in software (it is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("checksum at {at} lies outside the {len}-byte frame")]
    CsumOutsideFrame { at: usize, len: usize },
    #[error("super-frame's headers are not Ethernet/IP/{0}")]
    Headers(&'static str),
    #[error("super-frame would be cut into more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("super-frame's headers are longer than the frame path rewrites in place")]
    HeadersTooLong,
}

/// Writes the checksum a partial-checksum frame asks for into it.
pub fn complete_checksum(frame: &mut [u8], csum: PartialCsum) -> Result<(), SegmentError> {
    let start = usize::from(csum.start);
    let at = start + usize::from(csum.offset);
    if at + 2 > frame.len() {
        return Err(SegmentError::CsumOutsideFrame {
            at,
            len: frame.len(),
        });
    }
    // The field holds the pseudo-header's sum, so the sum over the range is the whole sum.
    let total = checksum::sum(&frame[start..], 0);
    frame[at..at + 2].copy_from_slice(&checksum::finish(total).to_be_bytes());
    Ok(())
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Cuts `frame` (a super-frame as it leaves: headers rewritten, in a host buffer) into
/// segments of `gso.size` payload bytes, appended to `out` one after the other; `lens` gets
/// each segment's length. Every segment gets full, correct checksums.
pub fn segment(
    frame: &[u8],
    gso: Gso,
    out: &mut Vec<u8>,
    lens: &mut Vec<u32>,
) -> Result<(), SegmentError> {
    segment_parts(
        frame,
        frame.len(),
        gso,
        L4Checksum::Full,
        |payload| checksum::sum(&frame[payload], 0),
        |header, payload, _| {
            out.extend_from_slice(header);
            out.extend_from_slice(&frame[payload.clone()]);
            lens.push((header.len() + payload.len()) as u32);
        },
    )
}

/// What each segment's L4 checksum field gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// The full checksum (the payload's sum comes from `payload_sum`).
    Full,
    /// The pseudo-header's sum, as a partial checksum (NEEDS_CSUM) holds it: whoever
    /// delivers the segment completes it, or its receiver does.
    Partial,
}

/// [`segment`] without copying payloads, for a super-frame that need not be in one buffer:
/// `headers` holds its first bytes (at least its headers), `frame_len` is its length, and
/// `payload_sum` gives the checksum sum ([`checksum::sum`]) of a range of its bytes,
/// wherever they are (asked only for [`L4Checksum::Full`]). For each segment, in order,
/// `emit` gets its headers (lengths, IP ID, sequence number, flags and checksums already
/// fixed), the range of the frame that is its payload, and where its L4 checksum field is
/// (as csum_start, csum_offset), so the frame path can write the headers and copy the
/// payload once, straight into the receiver's buffers.
pub fn segment_parts(
    headers: &[u8],
    frame_len: usize,
    gso: Gso,
    l4_checksum: L4Checksum,
    mut payload_sum: impl FnMut(Range<usize>) -> u16,
    mut emit: impl FnMut(&[u8], Range<usize>, PartialCsum),
) -> Result<(), SegmentError> {
    let what = if gso.kind.is_tcp() { "TCP" } else { "UDP" };
    let frame = headers;
    let layout = Layout::parse(frame).ok_or(SegmentError::Headers(what))?;
    if (layout.proto == IP_TCP) != gso.kind.is_tcp() || layout.ipv6 != gso.kind.is_ipv6() {
        return Err(SegmentError::Headers(what));
    }
    let (l3, l4, hdr) = (
        usize::from(layout.l3),
        usize::from(layout.l4),
        usize::from(layout.hdr_len),
    );
    let size = usize::from(gso.size.max(1));
    let payload_len = frame_len
        .checked_sub(hdr)
        .ok_or(SegmentError::Headers(what))?;
    let count = payload_len.div_ceil(size).max(1);
    if count > MAX_SEGMENTS as usize {
        return Err(SegmentError::TooManySegments);
    }
    let ip_id = get16(frame, l3 + 4);
    let seq = if gso.kind.is_tcp() {
        u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]])
    } else {
        0
    };
    // `Layout::parse` bounds the headers by MAX_HEADERS.
    let mut buf = [0u8; MAX_HEADERS];
    let seg = &mut buf[..hdr];
    for i in 0..count {
        let payload = hdr + (i * size).min(payload_len)..hdr + ((i + 1) * size).min(payload_len);
        seg.copy_from_slice(&frame[..hdr]);
        let l4_len = hdr - l4 + payload.len();
        if layout.ipv6 {
            put16(seg, l3 + 4, l4_len as u16);
        } else {
            put16(seg, l3 + 2, (l4 - l3 + l4_len) as u16);
            put16(seg, l3 + 4, ip_id.wrapping_add(i as u16));
            put16(seg, l3 + 10, 0);
            let ip_sum = !checksum::sum(&seg[l3..l4], 0);
            put16(seg, l3 + 10, ip_sum);
        }
        let csum_at = if gso.kind.is_tcp() {
            let s = seq.wrapping_add((i * size) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            let mut flags = seg[l4 + 13];
            if i + 1 < count {
                flags &= !0x09; // FIN and PSH only on the last segment
            }
            if i > 0 {
                flags &= !0x80; // CWR only on the first
            }
            seg[l4 + 13] = flags;
            l4 + 16
        } else {
            put16(seg, l4 + 4, l4_len as u16);
            l4 + 6
        };
        put16(seg, csum_at, 0);
        let (src, dst) = if layout.ipv6 {
            (l3 + 8..l3 + 24, l3 + 24..l3 + 40)
        } else {
            (l3 + 12..l3 + 16, l3 + 16..l3 + 20)
        };
        let pseudo = checksum::pseudo_header(&seg[src], &seg[dst], layout.proto, l4_len as u32);
        let field = match l4_checksum {
            L4Checksum::Partial => pseudo,
            // The L4 header is a whole number of 16-bit words (TCP: of 32-bit words; UDP: 8
            // bytes), so its sum and the payload's add up to the segment's.
            L4Checksum::Full => checksum::finish(checksum::add(
                payload_sum(payload.clone()),
                checksum::sum(&seg[l4..], pseudo),
            )),
        };
        put16(seg, csum_at, field);
        let csum = PartialCsum {
            start: l4 as u16,
            offset: (csum_at - l4) as u16,
        };
        emit(seg, payload, csum);
    }
    Ok(())
}
