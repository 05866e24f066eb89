#!/bin/bash
# Records the TCP traces that conntrack's tests replay (switch/src/conntrack/tests.rs reads
# the .pcap files next to this script with include_bytes!; CI does not run this script).
#
# How they were made: run as root on Linux (Debian 12, kernel 6.x; needs iproute2, ethtool,
# tcpdump, iptables with the `string` and `statistic` matches, and python3):
#
#     sudo switch/src/conntrack/testdata/record.sh
#
# It creates two network namespaces of its own, pbct-client and pbct-server, joined by a
# veth pair (pbct-c <-> pbct-s; 10.77.0.1/24 and fd77::1/64 on the client's end, 10.77.0.2/24
# and fd77::2/64 on the server's), with TSO/GSO/GRO and checksum offloads off so the capture
# holds the segments as they go on the wire (at most one MSS each, checksums filled in). For
# each trace it runs `tcpdump -i pbct-c -s 200` in the client's namespace (snaplen 200:
# Ethernet + IPv6 + TCP with options is at most 114 bytes, and the tracker reads headers
# only; the payload length comes from the IP header), a python3 server in the server's
# namespace and a python3 client in the client's, then deletes both namespaces. Nothing
# outside them is touched. Sequence numbers and timestamps differ on every run (the traces'
# shape does not: fixed ports, sizes and chunking, TCP_NODELAY, deterministic drops).
#
# The traces (the pcaps are LINKTYPE_ETHERNET, microsecond timestamps, host byte order):
# - tcp4_fin.pcap: IPv4, 10.77.0.1:40001 -> 10.77.0.2:5001. Handshake, 4200 bytes client to
#   server (3 x 1400), 5600 bytes back (4 x 1400), then the client closes (FIN), the server
#   sees EOF and closes (FIN), the client acks: FIN both ways.
# - tcp4_rst.pcap: IPv4, 10.77.0.1:40002 -> 10.77.0.2:5001. Handshake, 1400 bytes each way,
#   then the client closes with SO_LINGER {on, 0}: a RST instead of a FIN.
# - tcp6_fin.pcap: IPv6, [fd77::1]:40003 -> [fd77::2]:5001. As tcp4_fin.pcap.
# - tcp4_retransmit.pcap: IPv4, 10.77.0.1:40004 -> 10.77.0.2:5001. As tcp4_fin.pcap, with
#   three packets dropped once each by iptables in the receiving namespace (after the capture
#   point saw them, so each appears in the trace twice or more): the first SYN-ACK (the
#   client retransmits its SYN, the server its SYN-ACK), the client's second data segment
#   (marked "LOSE-C") and the server's second data segment (marked "LOSE-S"); the senders
#   retransmit them.
# The tests check each trace's shape (packet counts, which packets are retransmits): a
# re-recording whose timing differs (say, one SYN-ACK retransmit instead of two) needs them
# updated.
set -euo pipefail

OUT=$(cd "$(dirname "$0")" && pwd)
NC=pbct-client
NS=pbct-server
WORK=$(mktemp -d)
TCPDUMP_PID=
SERVER_PID=

cleanup() {
    [ -n "$TCPDUMP_PID" ] && kill "$TCPDUMP_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    ip netns del "$NC" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NC"
ip netns add "$NS"
ip -n "$NC" link add pbct-c type veth peer name pbct-s netns "$NS"
for pair in "$NC pbct-c 10.77.0.1 fd77::1" "$NS pbct-s 10.77.0.2 fd77::2"; do
    set -- $pair
    ip -n "$1" link set lo up
    ip netns exec "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null
    ip -n "$1" addr add "$3/24" dev "$2"
    ip -n "$1" addr add "$4/64" dev "$2" nodad
    ip -n "$1" link set "$2" up
done
# Neighbour resolution before any capture (ARP and ND are filtered out anyway).
ip netns exec "$NC" ping -c1 -W2 10.77.0.2 >/dev/null
ip netns exec "$NC" ping -c1 -W2 fd77::2 >/dev/null

cat >"$WORK/peer.py" <<'EOF'
import socket, struct, sys, time

role, family, addr, port, mode = sys.argv[1:6]
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
CHUNK = 1400

def chunks(n, marker):
    # n chunks of CHUNK bytes; the second one carries `marker` (for the drop rules).
    out = []
    for i in range(n):
        c = bytearray((b"%s%d " % (role.encode(), i)) * CHUNK)[:CHUNK]
        if i == 1 and marker:
            c[100:100 + len(marker)] = marker
        out.append(bytes(c))
    return out

def send_chunks(s, cs):
    for c in cs:
        s.sendall(c)
        time.sleep(0.02)

def recv_exact(s, n):
    got = 0
    while got < n:
        b = s.recv(n - got)
        if not b:
            raise SystemExit("%s: early EOF after %d of %d" % (role, got, n))
        got += len(b)

up = 1 if mode == "rst" else 3
down = 1 if mode == "rst" else 4
marked = mode == "retransmit"
if role == "server":
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(1)
    open(sys.argv[6], "w").close()  # ready
    s, _ = ls.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv_exact(s, up * CHUNK)
    send_chunks(s, chunks(down, b"LOSE-S" if marked else None))
    if mode == "rst":
        try:
            s.recv(1)
        except ConnectionResetError:
            pass
    else:
        if s.recv(1) != b"":
            raise SystemExit("server: expected EOF")
        time.sleep(0.05)
    s.close()
else:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((sys.argv[6], int(sys.argv[7])))
    s.connect((addr, int(port)))
    send_chunks(s, chunks(up, b"LOSE-C" if marked else None))
    recv_exact(s, down * CHUNK)
    time.sleep(0.05)
    if mode == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.3)
EOF

# record NAME FAMILY SERVER_ADDR CLIENT_ADDR CLIENT_PORT MODE
record() {
    local name=$1 family=$2 server=$3 client=$4 cport=$5 mode=$6
    rm -f "$WORK/ready" "$WORK/tcpdump.err"
    ip netns exec "$NC" tcpdump -i pbct-c -s 200 -U -w "$OUT/$name.pcap" \
        "tcp port 5001 and tcp port $cport" 2>"$WORK/tcpdump.err" &
    TCPDUMP_PID=$!
    until grep -qs "listening on" "$WORK/tcpdump.err"; do sleep 0.05; done
    ip netns exec "$NS" python3 "$WORK/peer.py" server "$family" "$server" 5001 "$mode" \
        "$WORK/ready" &
    SERVER_PID=$!
    until [ -e "$WORK/ready" ]; do sleep 0.05; done
    ip netns exec "$NC" python3 "$WORK/peer.py" client "$family" "$server" 5001 "$mode" \
        "$client" "$cport"
    wait "$SERVER_PID"
    SERVER_PID=
    sleep 0.5
    kill -INT "$TCPDUMP_PID"
    wait "$TCPDUMP_PID" || true
    TCPDUMP_PID=
    echo "$name.pcap: $(grep -o '[0-9]* packets captured' "$WORK/tcpdump.err")"
}

record tcp4_fin 4 10.77.0.2 10.77.0.1 40001 fin
record tcp4_rst 4 10.77.0.2 10.77.0.1 40002 rst
record tcp6_fin 6 fd77::2 fd77::1 40003 fin

# Drop rules, each matching once (statistic counts only the packets that reach it).
once="-m statistic --mode nth --every 1000000 --packet 0 -j DROP"
ip netns exec "$NC" iptables -A INPUT -p tcp --sport 5001 --tcp-flags SYN,ACK SYN,ACK $once
ip netns exec "$NS" iptables -A INPUT -p tcp --dport 5001 -m string --algo bm \
    --string LOSE-C $once
ip netns exec "$NC" iptables -A INPUT -p tcp --sport 5001 -m string --algo bm \
    --string LOSE-S $once
record tcp4_retransmit 4 10.77.0.2 10.77.0.1 40004 retransmit
for ns in "$NC" "$NS"; do
    # Every drop rule dropped exactly one packet.
    if ip netns exec "$ns" iptables -L INPUT -v -n -x | awk '/DROP/ && $1 != 1 { bad = 1 }
        END { exit !bad }'; then
        echo "a drop rule in $ns did not drop exactly one packet" >&2
        exit 1
    fi
done
