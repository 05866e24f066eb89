#!/usr/bin/env bash
# TCP over VXLAN between two hosts' own stacks, Patchbay against the kernel's vxlan device
# (the VXLAN issue's "TCP super-frames >= the kernel's vxlan device" and "TCP between two
# hosts with TSO"). Two network namespaces are the hosts, joined by a veth pair (the
# underlay, MTU 1500, 198.51.100.0/24); on each, the TCP endpoint is the host's own stack
# on 10.42.0.0/24 (MTU 1450, as guests on a 1500-byte underlay), reached through:
#   patchbay  an internal port (a tap with TSO and checksum offload, as a guest's
#             virtio-net: the stack hands the switch 64 KiB super-frames) on VLAN 10, which
#             the switch maps to VNI 42; the switches cut super-frames to fit the underlay
#             and send them with UDP GSO. Both switches on CPU 1.
#   kernel    a bridge with the kernel's vxlan device (VNI 42) and the address on the bridge;
#             receive processing of the underlay veths steered to CPU 1 (RPS), so the
#             kernel's tunnel work has CPU 1 as the switches do.
# The sender and the receiver (python3, 1 MiB writes and reads) run on CPU 0. Prints Gbit/s
# of TCP goodput per round, the median, and the busy share of each CPU (100 = one core).
#
#   benches/vxlan_tcp.sh            (as root; run on demand, not in CI)
#
# Settings (environment): PATCHBAY_VXTCP_CASES (default patchbay-event,kernel; also
# patchbay-poll, where the two switches' pollers share CPU 1), PATCHBAY_VXTCP_ROUNDS (3),
# PATCHBAY_VXTCP_SECS (5), PATCHBAY_VXTCP_SWITCH_BIN (default: a release build of this tree).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cases=${PATCHBAY_VXTCP_CASES:-patchbay-event,kernel}
rounds=${PATCHBAY_VXTCP_ROUNDS:-3}
secs=${PATCHBAY_VXTCP_SECS:-5}
bin=${PATCHBAY_VXTCP_SWITCH_BIN:-}
work=$(mktemp -d -t patchbay-vxtcp.XXXXXX)
ns=(pbvxtcpA pbvxtcpB)
pids=()

[[ $(id -u) == 0 ]] || { echo "vxlan_tcp.sh: needs root (namespaces)" >&2; exit 2; }
(($(nproc) >= 2)) || { echo "vxlan_tcp.sh: needs 2 CPUs" >&2; exit 2; }
if [[ -z $bin ]]; then
    (cd "$root" && cargo build --release -q -p patchbay-switch)
    bin=$root/target/release/patchbay-switch
fi

cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    ip netns del "${ns[0]}" 2>/dev/null || true
    ip netns del "${ns[1]}" 2>/dev/null || true
}
trap 'cleanup; rm -rf "$work"' EXIT

busy() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

underlay() {
    local s
    for s in 0 1; do
        ip netns add "${ns[$s]}"
        ip -n "${ns[$s]}" link set lo up
        ip netns exec "${ns[$s]}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    done
    ip link add pvx0 netns "${ns[0]}" type veth peer name pvx1 netns "${ns[1]}"
    for s in 0 1; do
        ip -n "${ns[$s]}" addr add "198.51.100.$((s + 1))/24" dev "pvx$s"
        ip -n "${ns[$s]}" link set "pvx$s" up
    done
}

# wait_for CMD...: up to 10 s for CMD to succeed.
wait_for() {
    local i
    for ((i = 0; i < 100; i++)); do
        "$@" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "vxlan_tcp.sh: timed out waiting for: $*" >&2
    return 1
}

start_patchbay() {
    local mode=$1 s poll=()
    [[ $mode == poll ]] && poll=(--poll-cpus 1)
    for s in 0 1; do
        cat >"$work/sw$s.toml" <<EOF
[control]
socket = "$work/ctl$s.sock"
[metrics]
listen = "off"
[vxlan]
local_ip = "198.51.100.$((s + 1))"
underlay_mtu = 1500
[[vxlan.vnis]]
vni = 42
vlan = 10
remotes = ["198.51.100.$((2 - s))"]
[[port]]
name = "app"
type = "internal"
interface = "pbapp"
vlan = 10
EOF
        ip netns exec "${ns[$s]}" taskset -c 1 "$bin" --config "$work/sw$s.toml" "${poll[@]}" \
            >"$work/sw$s.log" 2>&1 &
        pids+=($!)
        wait_for ip -n "${ns[$s]}" link show pbapp >/dev/null
        ip -n "${ns[$s]}" link set pbapp mtu 1450 up
        ip -n "${ns[$s]}" addr add "10.42.0.$((s + 1))/24" dev pbapp
    done
}

start_kernel() {
    local s dev
    for s in 0 1; do
        ip -n "${ns[$s]}" link add br0 type bridge
        ip -n "${ns[$s]}" link add vx42 type vxlan id 42 local "198.51.100.$((s + 1))" \
            remote "198.51.100.$((2 - s))" dstport 4789 dev "pvx$s"
        ip -n "${ns[$s]}" link set vx42 master br0 up
        ip -n "${ns[$s]}" link set br0 mtu 1450 up
        ip -n "${ns[$s]}" addr add "10.42.0.$((s + 1))/24" dev br0
        for dev in pvx$s; do
            ip netns exec "${ns[$s]}" sh -c "echo 2 > /sys/class/net/$dev/queues/rx-0/rps_cpus"
        done
    done
}

# One round: the receiver in B, the sender in A, both on CPU 0; prints Gbit/s cpu0% cpu1%.
round() {
    local port=$1 out c0 c1 d0 d1 t0 t1
    ip netns exec "${ns[1]}" taskset -c 0 python3 - "$port" "$secs" >"$work/rx.out" <<'EOF' &
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.42.0.2", port)); s.listen(1)
c, _ = s.accept()
buf = bytearray(1 << 20); got = 0; start = None; end = None
while True:
    n = c.recv_into(buf)
    if n == 0: break
    now = time.monotonic()
    if start is None: start = now; first = n
    else: got += n
    end = now
print(got * 8 / (end - start) / 1e9 if end and end > start else 0)
EOF
    local rx=$!
    wait_for ip netns exec "${ns[1]}" sh -c "ss -ltn | grep -q ':$port '"
    t0=$(date +%s.%N) c0=$(busy 0) c1=$(busy 1)
    ip netns exec "${ns[0]}" taskset -c 0 python3 - "$port" "$secs" <<'EOF'
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
c = socket.create_connection(("10.42.0.2", port), timeout=10)
buf = b"\x5a" * (1 << 20); end = time.monotonic() + secs
while time.monotonic() < end: c.sendall(buf)
c.close()
EOF
    wait "$rx"
    t1=$(date +%s.%N) d0=$(busy 0) d1=$(busy 1)
    awk -v g="$(cat "$work/rx.out")" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        -v a="$((d0 - c0))" -v b="$((d1 - c1))" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.2f %.0f %.0f\n", g, 100 * a / hz / t, 100 * b / hz / t }'
}

printf '%-16s %8s %6s %6s  %s\n' case Gbit/s cpu0% cpu1% "Gbit/s of each round, sorted"
IFS=, read -r -a list <<<"$cases"
for c in "${list[@]}"; do
    results=()
    for ((r = 0; r < rounds; r++)); do
        underlay
        case $c in
        patchbay-event) start_patchbay event ;;
        patchbay-poll) start_patchbay poll ;;
        kernel) start_kernel ;;
        *) echo "vxlan_tcp.sh: unknown case $c" >&2; exit 2 ;;
        esac
        # The path works before it is measured.
        wait_for ip netns exec "${ns[0]}" ping -c 1 -W 1 10.42.0.2 >/dev/null
        results+=("$(round $((5201 + r)))")
        cleanup
    done
    printf '%s\n' "${results[@]}" | sort -n | awk -v c="$c" -v n="${#results[@]}" '
        { g[NR] = $1; a += $2; b += $3; all = all sprintf(" %s", $1) }
        END { printf "%-16s %8.2f %6.0f %6.0f %s\n", c, g[int((n + 1) / 2)], a / n, b / n, all }'
done
