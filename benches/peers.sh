#!/usr/bin/env bash
# Patchbay beside its peers, one run, same traffic source.
#
# DPDK testpmd is the traffic source and sink: ONE process with one virtio_user port per switch
# port (a vhost-user frontend in a plain process), all ports served by one forwarding lcore on
# SOURCE_CPU. The switch under test gets SWITCH_CPU (all its threads). Cases:
#   testpmd-io      a second testpmd as the vhost-user backend, io forwarding between its
#                   net_vhost ports (paired: 0<->1, 2<->3, ...). No lookup at all: the floor of
#                   any vhost-user switch.
#   ovs-dpdk        Open vSwitch with DPDK (Debian openvswitch-switch-dpdk), datapath_type=netdev,
#                   dpdkvhostuser ports, actions=NORMAL, one PMD thread on SWITCH_CPU.
#   patchbay-poll   patchbay-switch --poll-cpus SWITCH_CPU
#   patchbay-event  patchbay-switch in its default mode (served on guest kicks)
#   patchbay-xdp-poll, patchbay-xdp-event  the same with an AF_XDP uplink (uplink variant only)
#   ovs-ct, patchbay-ct-poll, patchbay-ct-event  the same with a stateful firewall's flows
#                   (swap variant only)
#   patchbay-evpn-poll, patchbay-evpn-event  patchbay-poll/-event with BGP EVPN on (the VLAN
#                   mapped to a VNI, [evpn]: shadow devices, the agent; in a network namespace
#                   of its own), plain and swap variants: EVPN must not cost the frame path
#   baseline-poll, baseline-event   the same with the binaries of PATCHBAY_PEERS_BASELINE_BIN:
#                   an earlier build measured in the same run (an A/B of a change), in every
#                   variant but vxlan and tso; baseline-ct-poll: patchbay-ct-poll's (swap only)
# Modes:
#   mac       closed loop: testpmd mac-forwards every frame it receives back out of the paired
#             port, from that port's MAC to its pair's MAC (ordinary unicast a learning switch
#             learns); traffic is seeded with `start tx_first TXFIRST` bursts per port.
#   flowgen   open loop: every port sends as fast as it can and discards what it receives.
#             testpmd 22.11's flowgen uses fixed MACs (00:01:02:03:04:00 -> :01) on every port,
#             so a learning switch sees the source MAC move between ports and floods (to 1 port
#             with 2 ports, to 7 with 8).
# Variants:
#   plain      2 access ports in VLAN 10
#   vlan       port 0 access VLAN 10, port 1 a trunk whose native VLAN 10 is tagged on egress
#              (native-tagged, trunks=10). In mac mode testpmd bounces every frame back out of
#              the port it came in on (--port-topology=loop), tag included: each frame goes
#              0 -> switch (push) -> 1 -> back into the switch tagged (pop) -> 0 -> ..., so
#              every frame is pushed and popped once per round trip. (testpmd 22.11 cannot
#              insert tags itself through virtio_user: the virtio PMD does it only in
#              tx_prepare, which mac, txonly and flowgen never call.) In flowgen mode frames
#              from port 1 are untagged (native VLAN): push only.
#   flows-10k  plain, plus 10 000 flow rules in table 0 that the traffic misses (ACL-like drops
#              over a few masks) and a final priority=0 normal (OVS: the same file through
#              ovs-ofctl add-flows; testpmd-io has no tables and runs as in plain)
#   8-port     8 access ports in VLAN 10, traffic on all (pairs 0-1, 2-3, 4-5, 6-7)
#   swap       plain with traffic that has replies: in mac mode testpmd forwards with 5tswap
#              (MACs, addresses and ports swapped) and --port-topology=loop, so a frame from
#              port 0 (A->B) comes back into the switch on port 1 as its reply (B->A): one
#              UDP connection, both directions. In flowgen mode, --flowgen-flows=10000 (or
#              $PATCHBAY_PEERS_CONNECTIONS): 10 000
#              connections, one direction. Cases ovs-ct, patchbay-ct-poll and patchbay-ct-event
#              (this variant only) add a stateful firewall's flows: ct(table=1), commit on
#              +new, pass +est (OVS: the same file through ovs-ofctl); against ovs-dpdk and
#              patchbay-* in the same rounds, they give the cost of connection tracking.
#   vxlan      two "hosts" (network namespaces joined by a veth pair, MTU 9000), a
#              patchbay-switch on each with one access port of VLAN 10 mapped to VNI 42:
#              testpmd's port 0 is on host A and port 1 on host B, so every frame crosses the
#              overlay (encapsulated, sent, received, decapsulated). Patchbay in event mode
#              only (two pollers would share SWITCH_CPU, which both switches get: one core for
#              both sides); compare with plain in the same run. After each measurement the
#              tunnels' system calls per datagram are printed (flowctl show tunnel).
#              PATCHBAY_PEERS_VXLAN_UDP_OFFLOADS=false turns the kernel's UDP GSO/GRO off.
#              Case kernel-vxlan (add it to PATCHBAY_PEERS_CASES): the same two hosts with
#              the kernel's own vxlan device and a bridge on each instead of the switches;
#              testpmd reaches them through AF_PACKET on a veth pair per host (its
#              net_af_packet PMD, so the source pays a system call per burst). Receive
#              processing of every veth of the path is steered to SWITCH_CPU (RPS), whose
#              busy time is reported as switch%.
#   uplink     a vhost-user port and an uplink to a "NIC": testpmd's port 0 is virtio_user on
#              the switch's access port p0 (VLAN 10), its port 1 is its net_af_packet PMD on
#              pbupp, one end of a veth pair whose other end, pbupl, is the switch's uplink
#              (access VLAN 10; Patchbay: type=afpacket, or type=afxdp in cases
#              patchbay-xdp-poll and patchbay-xdp-event; OVS: its afxdp netdev, native mode,
#              copy: veth has no zero-copy). Case kernel-bridge (add it to
#              PATCHBAY_PEERS_CASES): the Linux bridge instead, between pbupl and a tap that
#              testpmd's net_tap PMD opens as port 0. pbupp drops what it received once
#              testpmd's socket has it (tc ingress), so no IP stack works on testpmd's
#              frames. Receive processing of pbupl and the tap
#              is steered to SWITCH_CPU (RPS), and switch% is SWITCH_CPU's whole busy time in
#              every case of this variant (the kernel's share of an uplink is the switch's).
#   internal   a vhost-user port and an internal port (the host's own stack on a VLAN): testpmd's
#              port 0 is virtio_user on the switch's access port p0 (VLAN 10), its port 1 is its
#              net_af_packet PMD on pbint, the tap the switch creates for its internal port
#              (access VLAN 10; OVS: its internal port, a tap too). Case kernel-bridge: the
#              path a VM with a tap backend has to its host, a Linux bridge pbbr with testpmd's
#              net_tap port 0 (pbtap) as member and its af_packet port 1 on the bridge's own
#              device. pbint and pbbr drop what they received once testpmd's socket has it
#              (tc ingress). switch% is SWITCH_CPU's whole busy time, as for uplink.
#   tso        checksum and segmentation offloads: the source is not testpmd but
#              benches/src/bin/tso-traffic.rs (Patchbay's own frontend, one thread on
#              SOURCE_CPU) sending TCP from port 0 to port 1, in the modes of
#              PATCHBAY_PEERS_TSO_MODES (default all four; sizes and PATCHBAY_PEERS_MODES do
#              not apply):
#                whole    64 KiB super-frames from a source with CSUM+HOST_TSO4 to a sink with
#                         GUEST_CSUM+GUEST_TSO4 (the switch passes them whole)
#                segment  the same super-frames to a sink without offloads (the switch cuts
#                         and checksums them in software)
#                seg-csum the same to a sink with GUEST_CSUM only (the switch cuts them; each
#                         segment keeps a partial checksum, as NEEDS_CSUM allows)
#                mtu      1514-byte frames with full checksums, no offloads on either side
#              OVS runs with other_config:userspace-tso-enable=true for this variant; testpmd-io
#              does not take part. Reported as TCP goodput (payload bytes the sink received).
#
# For every (variant, size, mode) the cases run interleaved, A B C D A B C D, for ROUNDS rounds,
# because this kind of machine is shared and noisy: compare ratios within one run.
#
# Throughput is what the source received (sum over its ports, both directions together),
# measured by testpmd between two `show port stats all` (its own clock). CPU shares are read
# from /proc/PID/stat over the same window: what each process actually got, in % of one core;
# "other" is CPU used by everything else on the machine in that window (all CPUs).
#
# Settings (environment):
#   PATCHBAY_PEERS_SECS=5        measurement per case (seconds)
#   PATCHBAY_PEERS_WARMUP=2      traffic before the measurement (seconds)
#   PATCHBAY_PEERS_IDLE_SECS=2   after it, the source stops and the switch's CPU is read this
#                                long (the idle% column; 0: skip)
#   PATCHBAY_PEERS_ROUNDS=2
#   PATCHBAY_PEERS_CASES=testpmd-io,ovs-dpdk,patchbay-poll,patchbay-event
#   PATCHBAY_PEERS_VARIANTS=plain,vlan,flows-10k,8-port  (also: vxlan, uplink, internal, tso,
#                                swap)
#   PATCHBAY_PEERS_SIZES=64,1500 frame bytes without FCS
#   PATCHBAY_PEERS_MODES=mac,flowgen
#   PATCHBAY_PEERS_TSO_MODES=whole,segment,seg-csum,mtu  modes of the tso variant
#   PATCHBAY_PEERS_BURST=64      testpmd burst (RX and TX)
#   PATCHBAY_PEERS_TXFIRST=32    bursts per port that seed the closed loop (enough that the
#                                loop runs at its slowest stage, not at a few frames latency)
#   PATCHBAY_PEERS_SOURCE_CPU=0  PATCHBAY_PEERS_SWITCH_CPU=1
#   PATCHBAY_PEERS_TESTPMD_MEM="--no-huge -m 512"   EAL memory options of both testpmds
#                                (e.g. "--in-memory --single-file-segments -m 256" on hugepages)
#   PATCHBAY_PEERS_OVS_SOCKET_MEM=1024   MiB of 2 MiB hugepages for OVS (reserved through
#                                /proc/sys/vm/nr_hugepages for the run and given back at exit)
#   PATCHBAY_PEERS_SWITCH_BIN, PATCHBAY_PEERS_FLOWCTL_BIN   prebuilt binaries (default: build
#                                with ${CARGO:-cargo} build --release)
#   PATCHBAY_PEERS_BASELINE_BIN  a patchbay-switch (with flowctl beside it) for the baseline-*
#                                cases, e.g. a release build of the commit before a change
#   PATCHBAY_PEERS_NO_INSTALL=1  do not apt-get install missing packages
#   PATCHBAY_PEERS_PORT_EXTRA=   appended to every Patchbay --port spec (e.g.
#                                ",offloads=none,queue-pairs=1" to compare settings)
#   PATCHBAY_PEERS_OUT=FILE      also write the per-round results (TSV) there
#   PATCHBAY_PEERS_REPORT_DIR=DIR   where each run leaves peers-DATE.csv (the table), .svg (a
#                                bar chart of it) and -rounds.tsv (default: target/peers)
#   PATCHBAY_PEERS_KEEP=1        keep the run directory (logs) after exit
#   PATCHBAY_PEERS_PERF=DIR      profile the switch during each patchbay measurement
#   PATCHBAY_PEERS_PERF_ARGS="--call-graph dwarf,16384"   more `perf record` options for it
#                                (perf record -e cpu-clock; DIR/CASE-VARIANT-SIZE-MODE-ROUND.data;
#                                it costs the switch a few percent: not for the table)
#
# Run on demand (root: it installs packages, reserves hugepages for OVS, pins CPUs):
#   benches/peers.sh
# Never run in CI.

set -u -o pipefail

SECS=${PATCHBAY_PEERS_SECS:-5}
IDLE_SECS=${PATCHBAY_PEERS_IDLE_SECS:-2}
WARMUP=${PATCHBAY_PEERS_WARMUP:-2}
ROUNDS=${PATCHBAY_PEERS_ROUNDS:-2}
CASES=${PATCHBAY_PEERS_CASES:-testpmd-io,ovs-dpdk,patchbay-poll,patchbay-event}
VARIANTS=${PATCHBAY_PEERS_VARIANTS:-plain,vlan,flows-10k,8-port}
SIZES=${PATCHBAY_PEERS_SIZES:-64,1500}
MODES=${PATCHBAY_PEERS_MODES:-mac,flowgen}
TSO_MODES=${PATCHBAY_PEERS_TSO_MODES:-whole,segment,seg-csum,mtu}
BURST=${PATCHBAY_PEERS_BURST:-64}
TXFIRST=${PATCHBAY_PEERS_TXFIRST:-32}
SOURCE_CPU=${PATCHBAY_PEERS_SOURCE_CPU:-0}
SWITCH_CPU=${PATCHBAY_PEERS_SWITCH_CPU:-1}
TESTPMD_MEM=${PATCHBAY_PEERS_TESTPMD_MEM:---no-huge -m 512}
OVS_SOCKET_MEM=${PATCHBAY_PEERS_OVS_SOCKET_MEM:-1024}
VLAN=10
MBUFS=32768
PACKAGES=(dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
    librte-net-af-packet23 openvswitch-switch-dpdk)
OVS_VSWITCHD=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUN=$(mktemp -d /tmp/pbpeers.XXXXXX)
RESULTS=$RUN/results.tsv
REPORT_DIR=${PATCHBAY_PEERS_REPORT_DIR:-$REPO/target/peers}
CLK_TCK=$(getconf CLK_TCK)

say() { printf '%s\n' "$*"; }
die() {
    printf 'peers.sh: %s\n' "$*" >&2
    exit 1
}
has() { [[ ",$1," == *",$2,"* ]]; }
now() { date +%s.%N; }

# ------------------------------------------------------------------------------------------
# Processes and clean-up: everything started is registered and stopped on exit, even on Ctrl-C.
# ------------------------------------------------------------------------------------------

PIDS=()
HUGEPAGES_ORIG=""
SRC_FD_OPEN=0

register() { PIDS+=("$1"); }
unregister() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Stops one process we started: SIGNAL (default TERM), then KILL after 5 s.
stop_pid() {
    local pid=$1 sig=${2:-TERM} i
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null
        unregister "$pid"
        return 0
    }
    kill "-$sig" "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    unregister "$pid"
}

cleanup() {
    local p
    trap - EXIT INT TERM
    if ((SRC_FD_OPEN)); then exec 7>&-; fi
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    local ns
    for ns in "${VX_NS[@]}" ${EVPN_NS:-}; do ip netns del "$ns" 2>/dev/null; done
    if ((${UPLINK_MADE:-0} || ${INTERNAL_BRIDGE_MADE:-0})); then
        ip link del "$UPLINK_BRIDGE" 2>/dev/null
    fi
    if ((${INTERNAL_OURS:-0})); then
        ip link del "$INTERNAL_DEV" 2>/dev/null
    fi
    if ((${UPLINK_MADE:-0})); then
        ip link del "$UPLINK" 2>/dev/null
    fi
    if [[ -n $HUGEPAGES_ORIG ]]; then
        echo "$HUGEPAGES_ORIG" >/proc/sys/vm/nr_hugepages 2>/dev/null &&
            say "hugepages: nr_hugepages back to $HUGEPAGES_ORIG"
    fi
    if [[ ${PATCHBAY_PEERS_KEEP:-0} == 1 ]]; then
        say "logs kept in $RUN"
    else
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# Waits (bounded) for every path in "$@" to be a socket.
wait_sockets() {
    local i s ok
    for ((i = 0; i < 200; i++)); do
        ok=1
        for s in "$@"; do [[ -S $s ]] || ok=0; done
        ((ok)) && return 0
        sleep 0.05
    done
    return 1
}

# user+system CPU ticks of a process (all its threads); 0 if gone.
ticks() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

# Busy ticks of the whole machine (all CPUs) from /proc/stat.
machine_busy() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# ------------------------------------------------------------------------------------------
# Set-up: packages, binaries, hugepages for OVS
# ------------------------------------------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ ${PATCHBAY_PEERS_NO_INSTALL:-0} == 1 ]] && die "missing packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "missing packages (run as root to install): ${missing[*]}"
    say "installing ${missing[*]}"
    apt-get update -q >"$RUN/apt.log" 2>&1 || die "apt-get update failed (see $RUN/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        >>"$RUN/apt.log" 2>&1 || die "apt-get install failed (see $RUN/apt.log)"
}

build_binaries() {
    mkdir -p "$RUN/bin"
    local chart
    chart=$(cd "$REPO" && ${CARGO:-cargo} build --release -p patchbay-benches --bin peers-chart \
        --message-format=json-render-diagnostics) || die "build failed"
    chart=$(grep -o '"executable":"[^"]*/peers-chart"' <<<"$chart" | tail -1 | cut -d'"' -f4)
    [[ -x $chart ]] || die "cannot find the built peers-chart"
    cp "$chart" "$RUN/bin/peers-chart"
    if has "$CASES" baseline-poll || has "$CASES" baseline-event || has "$CASES" baseline-ct-poll; then
        [[ -n ${PATCHBAY_PEERS_BASELINE_BIN:-} ]] || die "baseline-* cases need PATCHBAY_PEERS_BASELINE_BIN"
        mkdir -p "$RUN/bin/baseline"
        cp "$PATCHBAY_PEERS_BASELINE_BIN" "$RUN/bin/baseline/patchbay-switch" &&
            cp "$(dirname "$PATCHBAY_PEERS_BASELINE_BIN")/flowctl" "$RUN/bin/baseline/flowctl" ||
            die "no baseline binaries beside $PATCHBAY_PEERS_BASELINE_BIN"
    fi
    if [[ -n ${PATCHBAY_PEERS_SWITCH_BIN:-} ]]; then
        cp "$PATCHBAY_PEERS_SWITCH_BIN" "$RUN/bin/patchbay-switch" || die "no switch binary"
        cp "${PATCHBAY_PEERS_FLOWCTL_BIN:-$(dirname "$PATCHBAY_PEERS_SWITCH_BIN")/flowctl}" \
            "$RUN/bin/flowctl" || die "no flowctl binary"
        return
    fi
    say "building patchbay-switch and flowctl (release)"
    local out
    out=$(cd "$REPO" && ${CARGO:-cargo} build --release -p patchbay-switch -p flowctl \
        --message-format=json-render-diagnostics) || die "build failed"
    # Copies: other builds may replace the target directory's binaries while this runs.
    if has "$VARIANTS" tso; then
        out+=$(cd "$REPO" && ${CARGO:-cargo} build --release -p patchbay-benches \
            --bin tso-traffic --message-format=json-render-diagnostics) || die "build failed"
    fi
    local exe
    for exe in patchbay-switch flowctl tso-traffic; do
        [[ $exe == tso-traffic ]] && ! has "$VARIANTS" tso && continue
        local path
        path=$(grep -o "\"executable\":\"[^\"]*/$exe\"" <<<"$out" | tail -1 | cut -d'"' -f4)
        [[ -x $path ]] || die "cannot find the built $exe"
        cp "$path" "$RUN/bin/$exe"
    done
}

# Reserves 2 MiB hugepages for OVS's socket-mem; sets OVS_SKIP to a reason if it cannot.
OVS_SKIP=""
reserve_hugepages() {
    local need=$((OVS_SOCKET_MEM / 2 + 32)) free size
    size=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo)
    if [[ $size != 2048 ]]; then
        OVS_SKIP="default hugepage size is ${size} kB, not 2048"
        return
    fi
    free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    if ((free >= need)); then
        say "hugepages: $free free 2 MiB pages already reserved by someone else; OVS uses them"
        return
    fi
    local orig
    orig=$(cat /proc/sys/vm/nr_hugepages)
    if ! echo $((orig + need - free)) >/proc/sys/vm/nr_hugepages 2>/dev/null; then
        OVS_SKIP="cannot write /proc/sys/vm/nr_hugepages (need $need free 2 MiB pages)"
        return
    fi
    HUGEPAGES_ORIG=$orig
    free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    if ((free < need)); then
        OVS_SKIP="only $free of $need 2 MiB hugepages could be reserved"
        return
    fi
    say "hugepages: nr_hugepages $orig -> $(cat /proc/sys/vm/nr_hugepages) (2 MiB pages) for OVS's \
dpdk-socket-mem=$OVS_SOCKET_MEM; given back at exit"
}

# ------------------------------------------------------------------------------------------
# Variants
# ------------------------------------------------------------------------------------------

ports_of() { [[ $1 == 8-port ]] && echo 8 || echo 2; }
src_mac() { printf '02:00:00:00:00:%02x' "$1"; }

# 9 999 ACL-like drop rules over a few masks that the benchmark's traffic (UDP between 198.18.x.x
# addresses, MACs 02:00:00:00:00:0x or 00:01:02:03:04:0x) never matches, then priority=0 normal.
write_flows() {
    awk -v n=10000 'BEGIN {
        for (i = 1; i < n; i++) {
            a = int(i / 65536) % 256; b = int(i / 256) % 256; c = i % 256; p = 100 + i % 50
            if (i % 4 == 0) printf "priority=%d,tcp,nw_src=10.%d.%d.%d,tp_dst=%d actions=drop\n", p, a, b, c, 1 + i % 1000
            else if (i % 4 == 1) printf "priority=%d,udp,nw_dst=10.%d.%d.0/24 actions=drop\n", p, a, b
            else if (i % 4 == 2) printf "priority=%d,ip,nw_src=172.%d.%d.0/24,nw_dst=10.%d.%d.0/24 actions=drop\n", p, a, b, b, c
            else printf "priority=%d,in_port=p0,dl_src=02:00:%02x:%02x:%02x:01 actions=drop\n", p, a, b, c
        }
        print "priority=0 actions=NORMAL"
    }' >"$RUN/flows-10k.txt"
    split -l 500 -d -a 3 "$RUN/flows-10k.txt" "$RUN/flows-10k.part"
    # The ct cases: track in zone 1, commit new connections, pass established ones.
    cat >"$RUN/ct.txt" <<'FLOWS'
table=0,priority=100,ip,ct_state=-trk,actions=ct(table=1,zone=1)
table=0,priority=0,actions=NORMAL
table=1,priority=100,ip,ct_state=+new+trk,actions=ct(commit,zone=1),NORMAL
table=1,priority=100,ip,ct_state=+est+trk,actions=NORMAL
table=1,priority=0,actions=drop
FLOWS
}

# ------------------------------------------------------------------------------------------
# Switches under test. Each sets SUT_PID (the process whose CPU is reported) and SOCKS (the
# vhost-user sockets, in port order), or returns non-zero with FAIL set.
# ------------------------------------------------------------------------------------------

SUT_PID=""
# The vxlan variant's second switch (host B), and the two namespaces.
SUT_PID2=""
VX_NS=()
# kernel-vxlan: the interfaces testpmd uses (AF_PACKET) instead of SOCKS, and the CPU whose
# busy time stands for the switch's.
SRC_IFACES=()
SUT_CPU_TICKS=""
SOCKS=()
FAIL=""

start_testpmd_io() {
    local dir=$1 n=$2 i vdevs=()
    SOCKS=()
    for ((i = 0; i < n; i++)); do
        SOCKS+=("$dir/p$i.sock")
        vdevs+=(--vdev "net_vhost$i,iface=$dir/p$i.sock,queues=1")
    done
    # stats-period keeps it running without stdin; it prints nothing in practice.
    # shellcheck disable=SC2086
    taskset -c "$SWITCH_CPU" dpdk-testpmd --lcores "0@$SWITCH_CPU,1@$SWITCH_CPU" $TESTPMD_MEM \
        --no-pci --file-prefix="pbpeers-fwd-$$" "${vdevs[@]}" -- --forward-mode=io \
        --nb-cores=1 --total-num-mbufs="$MBUFS" --burst="$BURST" --stats-period 3600 \
        </dev/null >"$dir/sut.log" 2>&1 &
    SUT_PID=$!
    register "$SUT_PID"
    wait_sockets "${SOCKS[@]}" || {
        FAIL="testpmd backend did not create its sockets (see sut.log)"
        return 1
    }
}

# Busy ticks of CPU $1 (user, nice, system, irq, softirq, steal).
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# CPU ticks of the switch(es) under test (for kernel-vxlan: of SWITCH_CPU).
sut_ticks() {
    if [[ -n $SUT_CPU_TICKS ]]; then
        cpu_ticks "$SWITCH_CPU"
        return
    fi
    local t
    t=$(ticks "$SUT_PID")
    [[ -n $SUT_PID2 ]] && t=$((t + $(ticks "$SUT_PID2")))
    echo "$t"
}

# The vxlan variant's two hosts: namespaces VX_NS joined by the veth pair pvx0/pvx1
# (198.51.100.1 and .2, MTU 9000).
vxlan_underlay() {
    local ns side
    VX_NS=("pbpeersA-$$" "pbpeersB-$$")
    for ns in "${VX_NS[@]}"; do
        ip netns add "$ns" || {
            FAIL="cannot create network namespace $ns"
            return 1
        }
        ip -n "$ns" link set lo up
    done
    ip link add pvx0 netns "${VX_NS[0]}" type veth peer name pvx1 netns "${VX_NS[1]}" || {
        FAIL="cannot create the underlay veth pair"
        return 1
    }
    for side in 0 1; do
        ns=${VX_NS[$side]}
        ip -n "$ns" addr add "198.51.100.$((side + 1))/24" dev "pvx$side"
        ip -n "$ns" link set "pvx$side" mtu 9000 up
    done
}

# start_patchbay_vxlan DIR: the vxlan variant's two hosts (see the header). Sets SUT_PID (A),
# SUT_PID2 (B), SOCKS and VX_NS.
start_patchbay_vxlan() {
    local dir=$1 side ns pid
    vxlan_underlay || return 1
    SOCKS=("$dir/p0.sock" "$dir/p1.sock")
    for side in 0 1; do
        ns=${VX_NS[$side]}
        printf '%s\n' \
            "[control]" "socket = \"$dir/ctl$side.sock\"" "" \
            "[metrics]" "listen = \"off\"" "" \
            "[vxlan]" "local_ip = \"198.51.100.$((side + 1))\"" "underlay_mtu = 9000" \
            "udp_offloads = ${PATCHBAY_PEERS_VXLAN_UDP_OFFLOADS:-true}" "" \
            "[[vxlan.vnis]]" "vni = 42" "vlan = $VLAN" "remotes = [\"198.51.100.$((2 - side))\"]" "" \
            "[[port]]" "name = \"p$side\"" "socket = \"$dir/p$side.sock\"" "vlan = $VLAN" \
            >"$dir/sw$side.toml"
        ip netns exec "$ns" "$RUN/bin/patchbay-switch" --config "$dir/sw$side.toml" \
            --log-level info >"$dir/sut$side.log" 2>&1 &
        pid=$!
        register "$pid"
        if ((side == 0)); then SUT_PID=$pid; else SUT_PID2=$pid; fi
    done
    wait_sockets "${SOCKS[@]}" "$dir/ctl0.sock" "$dir/ctl1.sock" || {
        FAIL="a patchbay-switch did not create its sockets (see sut0.log, sut1.log)"
        return 1
    }
    for pid in "$SUT_PID" "$SUT_PID2"; do
        taskset -a -p -c "$SWITCH_CPU" "$pid" >/dev/null || {
            FAIL="cannot pin patchbay-switch"
            return 1
        }
    done
}

# start_kernel_vxlan DIR: the vxlan variant's two hosts with the kernel's vxlan device and a
# bridge on each (see the header); testpmd's ports are the root ends of two veth pairs.
start_kernel_vxlan() {
    local dir=$1 side ns mask
    mask=$(printf '%x' $((1 << SWITCH_CPU)))
    vxlan_underlay || return 1
    SRC_IFACES=()
    for side in 0 1; do
        ns=${VX_NS[$side]}
        ip -n "$ns" link add br0 type bridge
        ip -n "$ns" link add vx42 type vxlan id 42 local "198.51.100.$((side + 1))" \
            remote "198.51.100.$((2 - side))" dstport 4789 dev "pvx$side"
        ip -n "$ns" link set vx42 mtu 1550 master br0 up
        ip link add "pbkvx$side" address "$(src_mac "$side")" type veth peer name "host$side" \
            netns "$ns" || {
            FAIL="cannot create the veth pair to host $side"
            return 1
        }
        sysctl -qw "net.ipv6.conf.pbkvx$side.disable_ipv6=1"
        ip link set "pbkvx$side" mtu 1550 up
        ip -n "$ns" link set "host$side" mtu 1550 master br0 up
        ip -n "$ns" link set br0 up
        # Receive processing of the path's veths on SWITCH_CPU, not the sender's CPU.
        for dev in "host$side" "pvx$side"; do
            ip netns exec "$ns" sh -c "echo $mask > /sys/class/net/$dev/queues/rx-0/rps_cpus"
        done
        echo "$mask" >"/sys/class/net/pbkvx$side/queues/rx-0/rps_cpus"
        SRC_IFACES+=("pbkvx$side")
    done
    SUT_CPU_TICKS=1
}

# Stops the vxlan variant's second switch and removes its namespaces.
stop_vxlan_hosts() {
    [[ -n $SUT_PID2 ]] && stop_pid "$SUT_PID2" INT
    SUT_PID2=""
    local ns
    for ns in "${VX_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    VX_NS=()
    local i
    for i in "${SRC_IFACES[@]}"; do ip link del "$i" 2>/dev/null; done
    SRC_IFACES=()
    SUT_CPU_TICKS=""
}

# System calls per datagram of both tunnels (sent and received), from flowctl's counters.
vxlan_syscalls() {
    local dir=$1 side
    for side in 0 1; do
        "$RUN/bin/flowctl" --socket "$dir/ctl$side.sock" --json show tunnel \
            >"$dir/tunnel$side.json" 2>/dev/null
    done
    python3 - "$dir/tunnel0.json" "$dir/tunnel1.json" <<'PY'
import json, sys
tx = rx = txd = rxd = 0
for path in sys.argv[1:]:
    try:
        io = json.load(open(path)).get("io", {})
    except (OSError, ValueError):
        continue
    tx += io.get("tx_syscalls", 0); txd += io.get("tx_datagrams", 0)
    rx += io.get("rx_syscalls", 0); rxd += io.get("rx_datagrams", 0)
print("syscalls/datagram send %.3f receive %.3f (%d datagrams each way)"
      % (tx / max(txd, 1), rx / max(rxd, 1), txd / 2))
PY
}

# drop_after_capture DEV: DEV is testpmd's (its af_packet port): once testpmd's packet
# socket has a frame, the frame is dropped (a tc ingress filter: "return TC_ACT_SHOT"), not
# handed to the host's IP stack, which would route and reject every frame on the switch's
# core, in every case.
drop_after_capture() {
    tc qdisc del dev "$1" clsact 2>/dev/null
    tc qdisc add dev "$1" clsact &&
        tc filter add dev "$1" ingress bpf da bytecode '1,6 0 0 2,' || {
        FAIL="cannot add the drop filter on $1"
        return 1
    }
}

# The uplink variant's "NIC": the veth pair UPLINK (the switch's side) / UPLINK_PEER
# (testpmd's af_packet port, with the source's port-1 MAC), made once per run; receive
# processing of UPLINK on SWITCH_CPU.
UPLINK=pbupl
UPLINK_PEER=pbupp
UPLINK_TAP=pbtap
UPLINK_BRIDGE=pbbr
INTERNAL_DEV=pbint
SRC_VDEVS=()
UPLINK_MADE=0
uplink_wire() {
    if ((!UPLINK_MADE)); then
        if ip link show "$UPLINK" >/dev/null 2>&1 || ip link show "$UPLINK_BRIDGE" >/dev/null 2>&1; then
            FAIL="$UPLINK or $UPLINK_BRIDGE exists already (not this run's): remove it first"
            return 1
        fi
        UPLINK_MADE=1
        ip link add "$UPLINK" type veth peer name "$UPLINK_PEER" address "$(src_mac 1)" || {
            FAIL="cannot create the uplink's veth pair"
            return 1
        }
        local dev
        for dev in "$UPLINK" "$UPLINK_PEER"; do
            sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1"
            ip link set "$dev" up
        done
        drop_after_capture "$UPLINK_PEER" || return 1
    fi
    printf '%x' $((1 << SWITCH_CPU)) >"/sys/class/net/$UPLINK/queues/rx-0/rps_cpus"
}

# kernel-bridge: the Linux bridge between the uplink and the tap testpmd opened.
start_kernel_bridge() {
    local mask
    mask=$(printf '%x' $((1 << SWITCH_CPU)))
    ip link add "$UPLINK_BRIDGE" type bridge 2>/dev/null
    sysctl -qw "net.ipv6.conf.$UPLINK_BRIDGE.disable_ipv6=1" "net.ipv6.conf.$UPLINK_TAP.disable_ipv6=1"
    ip link set "$UPLINK" master "$UPLINK_BRIDGE" &&
        ip link set "$UPLINK_TAP" master "$UPLINK_BRIDGE" up &&
        ip link set "$UPLINK_BRIDGE" up || {
        FAIL="cannot bridge $UPLINK and $UPLINK_TAP"
        return 1
    }
    echo "$mask" >"/sys/class/net/$UPLINK_TAP/queues/rx-0/rps_cpus"
}

# The internal variant's bridge, made before the source (whose af_packet port opens its
# device) with the source's port-1 MAC; the tap joins it once the source has made it.
make_internal_bridge() {
    if ip link show "$UPLINK_BRIDGE" >/dev/null 2>&1; then
        FAIL="$UPLINK_BRIDGE exists already (not this run's): remove it first"
        return 1
    fi
    INTERNAL_BRIDGE_MADE=1
    ip link add "$UPLINK_BRIDGE" address "$(src_mac 1)" type bridge &&
        sysctl -qw "net.ipv6.conf.$UPLINK_BRIDGE.disable_ipv6=1" &&
        ip link set "$UPLINK_BRIDGE" up || {
        FAIL="cannot create $UPLINK_BRIDGE"
        return 1
    }
    drop_after_capture "$UPLINK_BRIDGE"
}

join_internal_bridge() {
    sysctl -qw "net.ipv6.conf.$UPLINK_TAP.disable_ipv6=1"
    ip link set "$UPLINK_TAP" master "$UPLINK_BRIDGE" up || {
        FAIL="cannot add $UPLINK_TAP to $UPLINK_BRIDGE"
        return 1
    }
    printf '%x' $((1 << SWITCH_CPU)) >"/sys/class/net/$UPLINK_TAP/queues/rx-0/rps_cpus"
}

# Waits (up to 5 s) for network device $1 to exist, and brings it up.
wait_dev() {
    local i
    for ((i = 0; i < 50; i++)); do
        if [[ -e /sys/class/net/$1 ]]; then
            ip link set "$1" up && sysctl -qw "net.ipv6.conf.$1.disable_ipv6=1" &&
                drop_after_capture "$1"
            return
        fi
        sleep 0.1
    done
    FAIL="device $1 did not appear"
    return 1
}

# After each uplink measurement: the bridge goes (the tap went with testpmd), OVS's XDP
# program too if it stayed.
stop_uplink_case() {
    ip link del "$UPLINK_BRIDGE" 2>/dev/null
    ip link set "$UPLINK" xdp off 2>/dev/null
    SRC_VDEVS=()
    SUT_CPU_TICKS=""
}

# start_patchbay DIR PORTS VARIANT POLL [BINDIR]
start_patchbay() {
    local dir=$1 n=$2 variant=$3 poll=$4 bin=${5:-$RUN/bin} i spec args=() wrap=()
    SOCKS=()
    if ((${EVPN:-0})); then
        # The VLAN carried by a VNI with EVPN on, in a namespace of its own (the shadow
        # devices go there); no FRR is needed for the agent to run.
        local ns="pbpeersE-$$"
        if [[ -z ${EVPN_NS:-} ]]; then
            ip netns add "$ns" || {
                FAIL="cannot create network namespace $ns"
                return 1
            }
            EVPN_NS=$ns
            ip -n "$ns" link set lo up
        fi
        printf '%s\n' "[vxlan]" "local_ip = \"127.0.0.1\"" \
            "vnis = [{ vni = 100, vlan = $VLAN }]" "" "[evpn]" >"$dir/evpn.toml"
        args+=(--config "$dir/evpn.toml")
        wrap=(ip netns exec "$ns")
    fi
    if [[ $variant == uplink ]]; then
        n=1
        args+=(--port "name=up,type=${UPLINK_TYPE:-afpacket},interface=$UPLINK,vlan=$VLAN")
    elif [[ $variant == internal ]]; then
        n=1
        args+=(--port "name=host,type=internal,interface=$INTERNAL_DEV,vlan=$VLAN,mac=$(src_mac 1)")
    fi
    for ((i = 0; i < n; i++)); do
        SOCKS+=("$dir/p$i.sock")
        spec="name=p$i,socket=$dir/p$i.sock,vlan=$VLAN"
        [[ $variant == vlan && $i == 1 ]] &&
            spec="name=p$i,socket=$dir/p$i.sock,vlan-mode=native-tagged,vlan=$VLAN,trunks=$VLAN"
        args+=(--port "$spec${PATCHBAY_PEERS_PORT_EXTRA:-}")
    done
    ((poll)) && args+=(--poll-cpus "$SWITCH_CPU")
    "${wrap[@]}" "$bin/patchbay-switch" "${args[@]}" --metrics-listen off \
        --control-socket "$dir/ctl.sock" --log-level info >"$dir/sut.log" 2>&1 &
    SUT_PID=$!
    register "$SUT_PID"
    wait_sockets "${SOCKS[@]}" "$dir/ctl.sock" || {
        FAIL="patchbay-switch did not create its sockets (see sut.log)"
        return 1
    }
    # Not started under taskset: --poll-cpus checks CPUs against its own affinity.
    taskset -a -p -c "$SWITCH_CPU" "$SUT_PID" >/dev/null || {
        FAIL="cannot pin patchbay-switch"
        return 1
    }
    if [[ $variant == flows-10k ]]; then
        # In chunks: a control request is limited to 64 KiB.
        local chunk
        for chunk in "$RUN"/flows-10k.part*; do
            "$bin/flowctl" --socket "$dir/ctl.sock" --timeout 60 add-flows "$chunk" \
                >>"$dir/flowctl.log" 2>&1 || {
                FAIL="flowctl add-flows failed: $(tail -1 "$dir/flowctl.log")"
                return 1
            }
        done
    elif ((${CT_FLOWS:-0})); then
        "$bin/flowctl" --socket "$dir/ctl.sock" add-flows "$RUN/ct.txt" \
            >>"$dir/flowctl.log" 2>&1 || {
            FAIL="flowctl add-flows failed: $(tail -1 "$dir/flowctl.log")"
            return 1
        }
    fi
}

OVS_DIR=""
OVSDB_PID=""
ovs_vsctl() { ovs-vsctl --db="unix:$OVS_DIR/db.sock" --timeout=20 "$@"; }

# ovsdb-server runs for the whole run (idle); ovs-vswitchd-dpdk only while its case runs, as
# its PMD thread busy-polls a core even without traffic.
start_ovsdb() {
    OVS_DIR=$RUN/ovs
    mkdir -p "$OVS_DIR"
    export OVS_RUNDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR OVS_SYSCONFDIR=$OVS_DIR
    ovsdb-tool create "$OVS_DIR/conf.db" "$OVS_SCHEMA" >/dev/null || {
        OVS_SKIP="ovsdb-tool create failed"
        return
    }
    ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
        --pidfile="$OVS_DIR/ovsdb.pid" --unixctl="$OVS_DIR/ovsdb.ctl" \
        --log-file="$OVS_DIR/ovsdb.log" -vconsole:off >/dev/null 2>&1 &
    OVSDB_PID=$!
    register "$OVSDB_PID"
    wait_sockets "$OVS_DIR/db.sock" || {
        OVS_SKIP="ovsdb-server did not start"
        return
    }
    ovs_vsctl --no-wait init &&
        ovs_vsctl --no-wait set Open_vSwitch . other_config:dpdk-init=true \
            other_config:pmd-cpu-mask="$(printf '0x%x' $((1 << SWITCH_CPU)))" \
            other_config:dpdk-socket-mem="$OVS_SOCKET_MEM" \
            other_config:dpdk-extra="--no-pci --in-memory --file-prefix=pbpeers-ovs-$$" || {
        OVS_SKIP="ovs-vsctl configuration failed"
        return
    }
}

start_ovs() {
    local dir=$1 n=$2 variant=$3 i cmd=()
    SOCKS=()
    cmd=(-- --if-exists del-br br0 -- add-br br0 -- set bridge br0 datapath_type=netdev)
    if [[ $variant == uplink ]]; then
        n=1
        cmd+=(-- add-port br0 "$UPLINK" -- set Interface "$UPLINK" type=afxdp
            options:xdp-mode=native ofport_request=2 -- set Port "$UPLINK" "tag=$VLAN")
    elif [[ $variant == internal ]]; then
        n=1
        cmd+=(-- add-port br0 "$INTERNAL_DEV" -- set Interface "$INTERNAL_DEV" type=internal
            ofport_request=2 "mac=\"$(src_mac 1)\"" -- set Port "$INTERNAL_DEV" "tag=$VLAN")
    fi
    for ((i = 0; i < n; i++)); do
        SOCKS+=("$OVS_DIR/p$i")
        rm -f "$OVS_DIR/p$i"
        if [[ $variant == tso ]]; then
            # OVS 3.1 takes super-frames (external mbufs) only on its client-mode ports; the
            # source listens on these paths.
            cmd+=(-- add-port br0 "p$i" -- set Interface "p$i" type=dpdkvhostuserclient
                "options:vhost-server-path=$OVS_DIR/p$i" "ofport_request=$((i + 1))")
        else
            cmd+=(-- add-port br0 "p$i" -- set Interface "p$i" type=dpdkvhostuser
                "ofport_request=$((i + 1))")
        fi
        if [[ $variant == vlan && $i == 1 ]]; then
            cmd+=(-- set Port "p$i" vlan_mode=native-tagged "tag=$VLAN" "trunks=$VLAN")
        else
            cmd+=(-- set Port "p$i" "tag=$VLAN")
        fi
    done
    if [[ $variant == tso ]]; then
        cmd+=(-- set Open_vSwitch . other_config:userspace-tso-enable=true)
    else
        cmd+=(-- remove Open_vSwitch . other_config userspace-tso-enable)
    fi
    ovs_vsctl --no-wait "${cmd[@]}" >"$dir/vsctl.log" 2>&1 || {
        FAIL="ovs-vsctl bridge set-up failed: $(tail -1 "$dir/vsctl.log")"
        return 1
    }
    : >"$OVS_DIR/vswitchd.log"
    taskset -c "$SWITCH_CPU" "$OVS_VSWITCHD" "unix:$OVS_DIR/db.sock" \
        --pidfile="$OVS_DIR/vswitchd.pid" --unixctl="$OVS_DIR/vswitchd.ctl" \
        --log-file="$OVS_DIR/vswitchd.log" -vconsole:off >"$dir/sut.log" 2>&1 &
    SUT_PID=$!
    register "$SUT_PID"
    local i2 wait_for=("${SOCKS[@]}")
    if [[ $variant == tso ]]; then
        wait_for=()
        for ((i = 0; i < n; i++)); do SOCKS[i]="listen:$OVS_DIR/p$i"; done
    fi
    for ((i2 = 0; i2 < 600; i2++)); do
        wait_sockets "${wait_for[@]}" "$OVS_DIR/br0.mgmt" 2>/dev/null && break
        kill -0 "$SUT_PID" 2>/dev/null || break
        sleep 0.05
    done
    if ! wait_sockets "${wait_for[@]}" "$OVS_DIR/br0.mgmt"; then
        FAIL="ovs-vswitchd-dpdk did not create its vhost-user sockets: \
$(grep -E 'ERR|EMER' "$OVS_DIR/vswitchd.log" | tail -1)"
        cp "$OVS_DIR/vswitchd.log" "$dir/" 2>/dev/null
        return 1
    fi
    if [[ $variant == flows-10k ]] || ((${CT_FLOWS:-0})); then
        local file=$RUN/flows-10k.txt tries
        ((${CT_FLOWS:-0})) && file=$RUN/ct.txt
        # The management socket exists a moment before it accepts connections.
        for ((tries = 0; tries < 50; tries++)); do
            { ovs-ofctl del-flows br0 && ovs-ofctl add-flows br0 "$file"; } \
                >"$dir/ofctl.log" 2>&1 && break
            sleep 0.1
        done
        ((tries < 50)) || {
            FAIL="ovs-ofctl add-flows failed: $(tail -1 "$dir/ofctl.log")"
            return 1
        }
    fi
}

# ------------------------------------------------------------------------------------------
# The traffic source: testpmd driven through a FIFO on its interactive prompt.
# ------------------------------------------------------------------------------------------

SRC_PID=""
SRC_LOG=""
NPORTS=2

start_source() {
    local dir=$1 n=$2 mode=$3 size=$4 variant=$5 i vdevs=() peers=() len=$size
    NPORTS=$n
    SRC_LOG=$dir/source.log
    for ((i = 0; i < n; i++)); do
        if [[ -n ${SRC_VDEVS[$i]:-} ]]; then
            vdevs+=(--vdev "${SRC_VDEVS[$i]}")
        elif ((${#SRC_IFACES[@]})); then
            vdevs+=(--vdev "net_af_packet$i,iface=${SRC_IFACES[$i]},qpairs=1")
        else
            vdevs+=(--vdev "virtio_user$i,path=${SOCKS[$i]},queues=1,mac=$(src_mac "$i")")
        fi
        peers+=("--eth-peer=$i,$(src_mac $((i ^ 1)))")
    done
    # flowgen subtracts 4 bytes (FCS) from --txpkts; txonly (tx_first) does not.
    [[ $mode == flowgen ]] && len=$((size + 4))
    local extra=()
    [[ $variant == vlan && $mode == mac ]] && extra+=(--port-topology=loop)
    local fwd=$mode
    if [[ $variant == swap ]]; then
        if [[ $mode == mac ]]; then
            fwd=5tswap
            extra+=(--port-topology=loop)
        else
            extra+=(--flowgen-flows="${PATCHBAY_PEERS_CONNECTIONS:-10000}")
        fi
    fi
    mkfifo "$dir/cmd"
    # shellcheck disable=SC2086
    # stdbuf: line-buffered output, so each `show` can be read as soon as its prompt returns.
    taskset -c "$SOURCE_CPU" stdbuf -oL dpdk-testpmd --lcores "0@$SOURCE_CPU,1@$SOURCE_CPU" $TESTPMD_MEM \
        --no-pci --file-prefix="pbpeers-src-$$" "${vdevs[@]}" -- -i --disable-device-start \
        --forward-mode="$fwd" --nb-cores=1 --burst="$BURST" --txpkts="$len" \
        --total-num-mbufs="$MBUFS" "${peers[@]}" "${extra[@]}" \
        <"$dir/cmd" >"$SRC_LOG" 2>&1 &
    SRC_PID=$!
    register "$SRC_PID"
    exec 7>"$dir/cmd"
    SRC_FD_OPEN=1
    src_run "" || {
        FAIL="source testpmd did not start: $(grep -E 'Cause|Error|error' "$SRC_LOG" | tail -1)"
        return 1
    }
    src_run "port start all" || {
        FAIL="source testpmd: port start failed"
        return 1
    }
}

src_cmd() { echo "$1" >&7; }

prompts() { grep -o 'testpmd> ' "$SRC_LOG" | wc -l; }

# Sends a command (none: just waits for the first prompt) and waits (bounded, 30 s) for the
# prompt that follows it.
src_run() {
    local want i
    want=1
    if [[ -n $1 ]]; then
        want=$(($(prompts) + 1))
        src_cmd "$1"
    fi
    for ((i = 0; i < 300; i++)); do
        (($(prompts) >= want)) && return 0
        kill -0 "$SRC_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# `show port stats all`; prints the sums over all ports of Rx-pps and Tx-pps of that show
# (testpmd's rates since the previous show, on its own clock).
src_stats() {
    local before i
    before=$(grep -c 'Rx-pps:' "$SRC_LOG")
    src_cmd "show port stats all"
    for ((i = 0; i < 100; i++)); do
        (($(grep -c 'Rx-pps:' "$SRC_LOG") >= before + NPORTS)) && break
        sleep 0.05
    done
    awk -v skip="$before" -v n="$NPORTS" '
        /Rx-pps:/ { c++; if (c > skip && c <= skip + n) rx += $2; next }
        /Tx-pps:/ { if (c > skip && c <= skip + n) tx += $2 }
        END { printf "%d %d\n", rx, tx }' "$SRC_LOG"
}

stop_source() {
    if ((SRC_FD_OPEN)); then
        src_cmd "stop"
        src_cmd "quit"
        exec 7>&-
        SRC_FD_OPEN=0
    fi
    [[ -n $SRC_PID ]] && stop_pid "$SRC_PID" INT
    SRC_PID=""
}

# ------------------------------------------------------------------------------------------
# One measurement
# ------------------------------------------------------------------------------------------

# measure CASE VARIANT SIZE MODE ROUND: appends one line to $RESULTS.
measure() {
    local case=$1 variant=$2 size=$3 mode=$4 round=$5
    local n dir
    n=$(ports_of "$variant")
    dir=$RUN/$variant-$size-$mode-$case-$round
    mkdir -p "$dir"
    FAIL=""
    SUT_PID=""
    local ok=1
    if [[ $variant == vxlan ]]; then
        # Patchbay in event mode and the kernel cross the overlay (see the header).
        case $case in
        patchbay-event) start_patchbay_vxlan "$dir" || ok=0 ;;
        kernel-vxlan) start_kernel_vxlan "$dir" || ok=0 ;;
        *) return 0 ;;
        esac
    elif [[ $variant == uplink ]]; then
        case $case in
        patchbay-* | baseline-* | ovs-dpdk | kernel-bridge) ;;
        *) return 0 ;;
        esac
        uplink_wire || ok=0
        SRC_VDEVS=("" "net_af_packet1,iface=$UPLINK_PEER,qpairs=1")
        SUT_CPU_TICKS=1
        ((ok)) && case $case in
        patchbay-poll) start_patchbay "$dir" "$n" "$variant" 1 || ok=0 ;;
        patchbay-event) start_patchbay "$dir" "$n" "$variant" 0 || ok=0 ;;
        patchbay-xdp-poll) UPLINK_TYPE=afxdp start_patchbay "$dir" "$n" "$variant" 1 || ok=0 ;;
        patchbay-xdp-event) UPLINK_TYPE=afxdp start_patchbay "$dir" "$n" "$variant" 0 || ok=0 ;;
        baseline-poll) start_patchbay "$dir" "$n" "$variant" 1 "$RUN/bin/baseline" || ok=0 ;;
        baseline-event) start_patchbay "$dir" "$n" "$variant" 0 "$RUN/bin/baseline" || ok=0 ;;
        ovs-dpdk) start_ovs "$dir" "$n" "$variant" || ok=0 ;;
        kernel-bridge) SRC_VDEVS[0]="net_tap0,iface=$UPLINK_TAP,mac=$(src_mac 0)" ;;
        *) SRC_VDEVS=() SUT_CPU_TICKS="" && return 0 ;;
        esac
    elif [[ $variant == internal ]]; then
        case $case in
        patchbay-poll | patchbay-event | baseline-* | ovs-dpdk | kernel-bridge) ;;
        *) return 0 ;;
        esac
        SRC_VDEVS=("" "net_af_packet1,iface=$INTERNAL_DEV,qpairs=1")
        SUT_CPU_TICKS=1
        # The device is the switch's to create (OVS's may outlive its daemon): one left by
        # an earlier case of this run goes; one from elsewhere stops the run.
        if [[ -e /sys/class/net/$INTERNAL_DEV ]]; then
            if ((${INTERNAL_OURS:-0})); then
                ip link del "$INTERNAL_DEV"
            else
                FAIL="$INTERNAL_DEV exists already (not this run's): remove it first"
                ok=0
            fi
        fi
        ((ok)) && INTERNAL_OURS=1
        ((ok)) && case $case in
        patchbay-poll) start_patchbay "$dir" "$n" "$variant" 1 && wait_dev "$INTERNAL_DEV" || ok=0 ;;
        patchbay-event) start_patchbay "$dir" "$n" "$variant" 0 && wait_dev "$INTERNAL_DEV" || ok=0 ;;
        baseline-poll) start_patchbay "$dir" "$n" "$variant" 1 "$RUN/bin/baseline" &&
            wait_dev "$INTERNAL_DEV" || ok=0 ;;
        baseline-event) start_patchbay "$dir" "$n" "$variant" 0 "$RUN/bin/baseline" &&
            wait_dev "$INTERNAL_DEV" || ok=0 ;;
        ovs-dpdk) start_ovs "$dir" "$n" "$variant" && wait_dev "$INTERNAL_DEV" || ok=0 ;;
        kernel-bridge)
            SRC_VDEVS=("net_tap0,iface=$UPLINK_TAP,mac=$(src_mac 0)"
                "net_af_packet1,iface=$UPLINK_BRIDGE,qpairs=1")
            make_internal_bridge || ok=0
            ;;
        esac
    elif [[ $case == kernel-vxlan || $case == kernel-bridge || $case == patchbay-xdp-* ]]; then
        return 0
    elif [[ $variant == tso && $case == baseline-* ]]; then
        return 0
    else
        case $case in
        testpmd-io) start_testpmd_io "$dir" "$n" || ok=0 ;;
        ovs-dpdk) start_ovs "$dir" "$n" "$variant" || ok=0 ;;
        patchbay-poll) start_patchbay "$dir" "$n" "$variant" 1 || ok=0 ;;
        patchbay-event) start_patchbay "$dir" "$n" "$variant" 0 || ok=0 ;;
        baseline-poll) start_patchbay "$dir" "$n" "$variant" 1 "$RUN/bin/baseline" || ok=0 ;;
        baseline-event) start_patchbay "$dir" "$n" "$variant" 0 "$RUN/bin/baseline" || ok=0 ;;
        ovs-ct | patchbay-ct-* | baseline-ct-*)
            [[ $variant == swap ]] || return 0
            case $case in
            ovs-ct) CT_FLOWS=1 start_ovs "$dir" "$n" "$variant" || ok=0 ;;
            patchbay-ct-poll) CT_FLOWS=1 start_patchbay "$dir" "$n" "$variant" 1 || ok=0 ;;
            patchbay-ct-event) CT_FLOWS=1 start_patchbay "$dir" "$n" "$variant" 0 || ok=0 ;;
            baseline-ct-poll)
                CT_FLOWS=1 start_patchbay "$dir" "$n" "$variant" 1 "$RUN/bin/baseline" || ok=0
                ;;
            esac
            ;;
        patchbay-evpn-*)
            [[ $variant == plain || $variant == swap ]] || return 0
            case $case in
            patchbay-evpn-poll) EVPN=1 start_patchbay "$dir" "$n" "$variant" 1 || ok=0 ;;
            patchbay-evpn-event) EVPN=1 start_patchbay "$dir" "$n" "$variant" 0 || ok=0 ;;
            esac
            ;;
        esac
    fi
    ((ok)) && { start_source "$dir" "$n" "$mode" "$size" "$variant" || ok=0; }
    if ((ok)) && [[ $case == kernel-bridge ]]; then
        if [[ $variant == internal ]]; then
            join_internal_bridge || ok=0
        else
            start_kernel_bridge || ok=0
        fi
    fi
    local pps=0 tx_pps=0 secs=0 sut_cpu=0 src_cpu=0 other=0 tries per_side=""
    if ((ok)); then
        # Links come up asynchronously: frames sent before both sides are ready are lost,
        # which in the closed loop would leave nothing circulating. Start, and restart if
        # nothing arrives.
        sleep 0.5
        for ((tries = 0; tries < 3; tries++)); do
            if [[ $mode == mac ]]; then src_run "start tx_first $TXFIRST"; else src_run "start"; fi
            src_stats >/dev/null # the first show has no earlier one to rate against
            sleep 1
            read -r pps _ < <(src_stats)
            ((pps > 0)) && break
            src_run "stop"
            sleep 0.5
        done
        if ((pps == 0)); then
            FAIL="no traffic arrived"
            ok=0
        fi
    fi
    if ((ok)); then
        sleep "$WARMUP"
        local t0 t1 s0 s1 c0 c1 m0 m1 a0=0 a1=0
        src_stats >/dev/null
        # Two switches (the vxlan variant's hosts): host A's share is kept apart too.
        t0=$(now) s0=$(sut_ticks) c0=$(ticks "$SRC_PID") m0=$(machine_busy)
        [[ -n ${SUT_PID2:-} ]] && a0=$(ticks "$SUT_PID")
        measure_window "$case" "$case-$variant-$size-$mode-$round"
        read -r pps tx_pps < <(src_stats)
        [[ -n ${SUT_PID2:-} ]] && a1=$(ticks "$SUT_PID")
        t1=$(now) s1=$(sut_ticks) c1=$(ticks "$SRC_PID") m1=$(machine_busy)
        if [[ -n ${SUT_PID2:-} ]]; then
            per_side=$(awk -v t0="$t0" -v t1="$t1" -v a="$((a1 - a0))" -v s="$((s1 - s0))" \
                -v hz="$CLK_TCK" 'BEGIN { d = t1 - t0
                    printf "CPU per side: host A %.1f%%, host B %.1f%%", 100 * a / hz / d,
                        100 * (s - a) / hz / d }')
        fi
        read -r secs sut_cpu src_cpu other < <(awk -v t0="$t0" -v t1="$t1" -v s="$((s1 - s0))" \
            -v c="$((c1 - c0))" -v m="$((m1 - m0))" -v hz="$CLK_TCK" 'BEGIN {
                d = t1 - t0; o = (m - s - c) / hz / d; if (o < 0) o = 0
                printf "%.3f %.1f %.1f %.1f\n", d, 100 * s / hz / d, 100 * c / hz / d, 100 * o }')
    fi
    # Idle: the source stops sending (its ports stay connected) and the switch's CPU is read
    # over IDLE_SECS: a poller keeps its core busy, an event-mode switch should sleep.
    local idle="" rss=""
    # Private resident memory of the switch process after the traffic (MiB): RssAnon, not
    # VmRSS, which also counts the pages of the frontends' shared memory it touched.
    if ((ok)) && [[ -n $SUT_PID ]]; then
        rss=$(awk '/^RssAnon:/ { printf "%.0f", $2 / 1024 }' "/proc/$SUT_PID/status" 2>/dev/null)
    fi
    if ((ok)) && ((IDLE_SECS > 0)); then
        src_run "stop"
        sleep 0.5
        local i0 i1 it0 it1
        it0=$(now) i0=$(sut_ticks)
        sleep "$IDLE_SECS"
        it1=$(now) i1=$(sut_ticks)
        idle=$(awk -v t0="$it0" -v t1="$it1" -v s="$((i1 - i0))" -v hz="$CLK_TCK" \
            'BEGIN { printf "%.1f", 100 * s / hz / (t1 - t0) }')
    fi
    # The switch's own view (counters, drops, learned MACs), for reading logs afterwards.
    local syscalls="" side
    if [[ $variant == vxlan && $case == patchbay-* ]]; then
        syscalls="$(vxlan_syscalls "$dir")${per_side:+; $per_side}"
        for side in 0 1; do
            "$RUN/bin/flowctl" --socket "$dir/ctl$side.sock" show tunnel
            "$RUN/bin/flowctl" --socket "$dir/ctl$side.sock" show ports
        done >"$dir/switch-state.txt" 2>&1
    fi
    case $variant:$case in
    vxlan:*) ;;
    *:patchbay-* | *:baseline-*)
        {
            "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show ports
            local i
            for ((i = 0; i < n; i++)); do "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show port "p$i"; done
            [[ $variant == uplink ]] && "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show port up
            [[ $variant == internal ]] && "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show port host
            "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show switch
            "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show macs
            "$RUN/bin/flowctl" --socket "$dir/ctl.sock" dump-flows
            "$RUN/bin/flowctl" --socket "$dir/ctl.sock" dump-conntrack | tail -3
        } >"$dir/switch-state.txt" 2>&1
        ;;
    *:ovs-dpdk | *:ovs-ct)
        {
            ovs-ofctl dump-ports br0
            ovs-appctl -t "$OVS_DIR/vswitchd.ctl" fdb/show br0
            ovs-appctl -t "$OVS_DIR/vswitchd.ctl" dpif-netdev/pmd-stats-show
        } >"$dir/switch-state.txt" 2>&1
        ;;
    esac
    stop_source
    [[ -n $SUT_PID ]] && stop_pid "$SUT_PID" INT
    [[ $variant == vxlan ]] && stop_vxlan_hosts
    [[ $variant == uplink || $variant == internal ]] && stop_uplink_case
    [[ -n $syscalls ]] && say "    $variant $size B $mode round $round: $syscalls"
    if ((ok)); then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$size" "$mode" "$case" \
            "$round" "$pps" "$sut_cpu" "$src_cpu" "$other" "$secs" "$tx_pps" "$idle" "$rss" >>"$RESULTS"
        printf '  %-9s %4s B %-7s round %s  %-15s %7.3f Mpps (sent %7.3f)  switch %5s%%  source %5s%%  other %5s%%  idle %5s%%\n' \
            "$variant" "$size" "$mode" "$round" "$case" "$(awk -v p="$pps" 'BEGIN { print p / 1e6 }')" \
            "$(awk -v p="$tx_pps" 'BEGIN { print p / 1e6 }')" "$sut_cpu" "$src_cpu" "$other" "${idle:--}"
    else
        printf '%s\t%s\t%s\t%s\t%s\tfail\t\t\t\t\t\n' "$variant" "$size" "$mode" "$case" "$round" \
            >>"$RESULTS"
        printf '  %-9s %4s B %-7s round %s  %-15s FAILED: %s (logs: %s)\n' "$variant" "$size" \
            "$mode" "$round" "$case" "$FAIL" "$dir"
        PATCHBAY_PEERS_KEEP=1
    fi
}

# measure_window CASE NAME: waits out one measurement window ($SECS), recording the switch
# under perf into $PATCHBAY_PEERS_PERF/NAME.data when that is set and CASE is Patchbay's.
measure_window() {
    local case=$1 name=$2
    if [[ -n ${PATCHBAY_PEERS_PERF:-} && ($case == patchbay-* || $case == baseline-*) ]]; then
        mkdir -p "$PATCHBAY_PEERS_PERF"
        # shellcheck disable=SC2086
        perf record -q -e cpu-clock ${PATCHBAY_PEERS_PERF_ARGS:-} -p "$SUT_PID" \
            -o "$PATCHBAY_PEERS_PERF/$name.data" \
            -- sleep "$SECS" >/dev/null 2>&1 || sleep "$SECS"
    else
        sleep "$SECS"
    fi
}

# measure_tso CASE MODE ROUND: one measurement of the tso variant (source: tso-traffic);
# appends one line to $RESULTS: variant "tso", size "64k" (mtu: 1514), the frames per second
# the sink received in the pps field and the goodput (Gbit/s) in field 14.
measure_tso() {
    local case=$1 mode=$2 round=$3 dir size=64k
    [[ $mode == mtu ]] && size=1514
    dir=$RUN/tso-$mode-$case-$round
    mkdir -p "$dir"
    FAIL=""
    SUT_PID=""
    local ok=1
    case $case in
    ovs-dpdk) start_ovs "$dir" 2 tso || ok=0 ;;
    patchbay-poll) start_patchbay "$dir" 2 tso 1 || ok=0 ;;
    patchbay-event) start_patchbay "$dir" 2 tso 0 || ok=0 ;;
    *) return 0 ;;
    esac
    local line="" secs=0 sut_cpu=0 src_cpu=0 other=0 fps=0 gbps=0
    if ((ok)); then
        taskset -c "$SOURCE_CPU" "$RUN/bin/tso-traffic" "$mode" "${SOCKS[0]}" "${SOCKS[1]}" \
            "$((WARMUP + 1))" "$SECS" >"$dir/source.log" 2>&1 &
        SRC_PID=$!
        register "$SRC_PID"
        # The same window as the source's own (it measures after WARMUP + 1 s of traffic).
        sleep "$((WARMUP + 1))"
        local t0 t1 s0 s1 m0 m1
        t0=$(now) s0=$(ticks "$SUT_PID") m0=$(machine_busy)
        measure_window "$case" "$case-tso-$mode-$round"
        t1=$(now) s1=$(ticks "$SUT_PID") m1=$(machine_busy)
        wait "$SRC_PID"
        unregister "$SRC_PID"
        SRC_PID=""
        line=$(grep '^goodput_gbps=' "$dir/source.log" | tail -1)
        if [[ -z $line ]]; then
            FAIL="tso-traffic: $(tail -1 "$dir/source.log")"
            ok=0
        fi
        read -r secs sut_cpu other < <(awk -v t0="$t0" -v t1="$t1" -v s="$((s1 - s0))" \
            -v m="$((m1 - m0))" -v hz="$CLK_TCK" 'BEGIN {
                d = t1 - t0; printf "%.3f %.1f %.1f\n", d, 100 * s / hz / d, 100 * m / hz / d }')
    fi
    if ((ok)); then
        gbps=$(sed -E 's/.*goodput_gbps=([0-9.]+).*/\1/' <<<"$line")
        src_cpu=$(sed -E 's/.*cpu=([0-9.]+).*/\1/' <<<"$line")
        fps=$(awk -v l="$line" 'BEGIN { split(l, a, /[ =]/); for (i in a) if (a[i] == "frames") f = a[i + 1]; else if (a[i] == "secs") s = a[i + 1]; printf "%d", f / s }')
        other=$(awk -v o="$other" -v s="$sut_cpu" -v c="$src_cpu" 'BEGIN { x = o - s - c; printf "%.1f", x < 0 ? 0 : x }')
    fi
    case $case in
    patchbay-*) "$RUN/bin/flowctl" --socket "$dir/ctl.sock" show ports >"$dir/switch-state.txt" 2>&1 ;;
    ovs-dpdk)
        {
            ovs-ofctl dump-ports br0
            ovs-appctl -t "$OVS_DIR/vswitchd.ctl" coverage/show
        } >"$dir/switch-state.txt" 2>&1
        cp "$OVS_DIR/vswitchd.log" "$dir/" 2>/dev/null
        ;;
    esac
    [[ -n $SUT_PID ]] && stop_pid "$SUT_PID" INT
    if ((ok)); then
        printf 'tso\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\t\t%s\n' "$size" "$mode" "$case" "$round" \
            "$fps" "$sut_cpu" "$src_cpu" "$other" "$secs" "$gbps" >>"$RESULTS"
        printf '  tso       %-7s round %s  %-15s %7.2f Gbit/s goodput  %8s frames/s  switch %5s%%  source %5s%%  other %5s%%\n' \
            "$mode" "$round" "$case" "$gbps" "$fps" "$sut_cpu" "$src_cpu" "$other"
    else
        printf 'tso\t%s\t%s\t%s\t%s\tfail\t\t\t\t\t\t\t\t\n' "$size" "$mode" "$case" "$round" >>"$RESULTS"
        printf '  tso       %-7s round %s  %-15s FAILED: %s (logs: %s)\n' "$mode" "$round" "$case" "$FAIL" "$dir"
        PATCHBAY_PEERS_KEEP=1
    fi
}

# The tso variant's table: goodput per case and mode, ratios to OVS and to the mtu mode.
print_tso_table() {
    awk -F'\t' "$AWK_STATS"'
        $1 != "tso" { next }
        {
            key = $3 SUBSEP $4
            if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
            if ($6 == "fail") { fails[key]++; next }
            g[key] = g[key] " " $14; per[key] = per[key] sprintf(" %.1f", $14); fps[key] = fps[key] " " $6
            sut[key] += $7; src[key] += $8; oth[key] += $9; cnt[key]++
        }
        END {
            if (nk == 0) exit
            printf "%-8s %-15s %8s %7s %7s %10s %8s %8s %7s  %s\n", "mode", "case", "Gbit/s", "x ovs", "x mtu", \
                "frames/s", "switch%", "source%", "other%", "Gbit/s per round"
            for (k = 1; k <= nk; k++) med[order[k]] = cnt[order[k]] ? median(g[order[k]]) : -1
            for (k = 1; k <= nk; k++) {
                key = order[k]; split(key, f, SUBSEP)
                if (med[key] < 0) { printf "%-8s %-15s %8s  (failed %d rounds)\n", f[1], f[2], "-", fails[key]; continue }
                printf "%-8s %-15s %8.2f %7s %7s %10.0f %8.0f %8.0f %7.0f %s%s\n", f[1], f[2], med[key], \
                    ratio(med[key], med[f[1] SUBSEP "ovs-dpdk"]), ratio(med[key], med["mtu" SUBSEP f[2]]), \
                    median(fps[key]), sut[key] / cnt[key], src[key] / cnt[key], oth[key] / cnt[key], per[key], \
                    fails[key] ? sprintf(" (%d failed)", fails[key]) : ""
            }
        }' "$RESULTS"
}

# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

# awk functions of both tables: the median of a space-separated list, a ratio or "-".
AWK_STATS='
        function median(list,   a, n, i, j, t) {
            n = split(list, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            if (n == 0) return -1
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function ratio(x, b) { return (b > 0 && x >= 0) ? sprintf("%.2f", x / b) : "-" }
'

# print_table [CSV]: the summary table; also written to CSV (one row per case, for the chart).
print_table() {
    awk -F'\t' -v rounds="$ROUNDS" -v csv="${1:-/dev/null}" "$AWK_STATS"'
        $1 == "tso" { next }
        $6 == "fail" { key = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4; if (!(key in seen)) { seen[key] = 1; order[++nk] = key }; fails[key]++; next }
        {
            key = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4
            if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
            pps[key] = pps[key] " " $6; per[key] = per[key] sprintf(" %.2f", $6 / 1e6)
            sut[key] += $7; src[key] += $8; oth[key] += $9; sent[key] = sent[key] " " $11; cnt[key]++
            if ($12 != "") { idl[key] += $12; icnt[key]++ }
            if ($13 != "" && (!(key in rss) || $13 + 0 > rss[key] + 0)) rss[key] = $13
        }
        END {
            printf "%-9s %5s %-7s %-15s %7s %7s %7s %7s %7s %8s %8s %7s %6s %6s  %s\n", "variant", "size", "mode", "case", \
                "Mpps", "Gbit/s", "x tpmd", "x ovs", "sent", "switch%", "source%", "other%", "idle%", "RSS", "Mpps per round"
            print "variant,size,mode,case,mpps,gbps,x_testpmd,x_ovs,sent_mpps,switch_cpu,source_cpu,other_cpu,idle_cpu,rss_mib,rounds,failed" > csv
            for (k = 1; k <= nk; k++) {
                split(order[k], f, SUBSEP)
                med[order[k]] = cnt[order[k]] ? median(pps[order[k]]) : -1
            }
            for (k = 1; k <= nk; k++) {
                key = order[k]; split(key, f, SUBSEP)
                base = med[f[1] SUBSEP f[2] SUBSEP f[3] SUBSEP "testpmd-io"]
                ovs = med[f[1] SUBSEP f[2] SUBSEP f[3] SUBSEP (f[4] ~ /(^|-)ct(-|$)/ ? "ovs-ct" : "ovs-dpdk")]
                m = med[key]
                if (m < 0) {
                    printf "%-9s %5s %-7s %-15s %7s  (failed %d of %d rounds)\n", f[1], f[2], f[3], f[4], "-", fails[key], rounds
                    printf "%s,%s,%s,%s,-,-,-,-,-,-,-,-,-,-,%d,%d\n", f[1], f[2], f[3], f[4], rounds, fails[key] > csv
                    continue
                }
                printf "%s,%s,%s,%s,%.3f,%.2f,%s,%s,%.3f,%.0f,%.0f,%.0f,%s,%s,%d,%d\n", f[1], f[2], f[3], f[4], \
                    m / 1e6, m * f[2] * 8 / 1e9, ratio(m, base), ratio(m, ovs), median(sent[key]) / 1e6, \
                    sut[key] / cnt[key], src[key] / cnt[key], oth[key] / cnt[key], \
                    icnt[key] ? sprintf("%.1f", idl[key] / icnt[key]) : "-", \
                    (key in rss) ? rss[key] : "-", cnt[key], fails[key] > csv
                printf "%-9s %5s %-7s %-15s %7.3f %7.2f %7s %7s %7.3f %8.0f %8.0f %7.0f %6s %6s %s%s\n", f[1], f[2], f[3], f[4], \
                    m / 1e6, m * f[2] * 8 / 1e9, ratio(m, base), ratio(m, ovs), median(sent[key]) / 1e6, \
                    sut[key] / cnt[key], src[key] / cnt[key], oth[key] / cnt[key], \
                    icnt[key] ? sprintf("%.1f", idl[key] / icnt[key]) : "-", \
                    (key in rss) ? rss[key] : "-", per[key], \
                    fails[key] ? sprintf(" (%d failed)", fails[key]) : ""
            }
        }' "$RESULTS"
}

# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------

main() {
    [[ $(id -u) == 0 ]] || say "warning: not root; pinning other users' processes, hugepages and apt will fail"
    install_packages
    command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found"
    build_binaries
    write_flows
    : >"$RESULTS"

    local cases=() c
    for c in testpmd-io ovs-dpdk ovs-ct patchbay-poll patchbay-event patchbay-ct-poll \
        patchbay-ct-event patchbay-evpn-poll patchbay-evpn-event patchbay-xdp-poll patchbay-xdp-event baseline-poll baseline-event \
        baseline-ct-poll kernel-vxlan kernel-bridge; do
        has "$CASES" "$c" && cases+=("$c")
    done
    if has "$CASES" ovs-dpdk || has "$CASES" ovs-ct; then
        [[ -x $OVS_VSWITCHD ]] || OVS_SKIP="$OVS_VSWITCHD not installed"
        [[ -z $OVS_SKIP ]] && reserve_hugepages
        [[ -z $OVS_SKIP ]] && start_ovsdb
        if [[ -n $OVS_SKIP ]]; then
            say "ovs-dpdk skipped: $OVS_SKIP"
            local keep=()
            for c in "${cases[@]}"; do [[ $c == ovs-* ]] || keep+=("$c"); done
            cases=("${keep[@]}")
        fi
    fi

    say "peers: ${SECS} s per measurement after ${WARMUP} s warm-up, $ROUNDS rounds, cases ${cases[*]}"
    say "  source: one dpdk-testpmd ($TESTPMD_MEM), all ports on one lcore on CPU $SOURCE_CPU," \
        "burst $BURST, closed loop seeded with $TXFIRST bursts per port"
    say "  switch under test: CPU $SWITCH_CPU (all threads); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    say "  $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    say "  DPDK $(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null)," \
        "Open vSwitch $(dpkg-query -W -f='${Version}' openvswitch-switch-dpdk 2>/dev/null)," \
        "kernel $(uname -r)"
    local t_start variant size mode round
    t_start=$(now)
    IFS=, read -r -a variants <<<"$VARIANTS"
    IFS=, read -r -a sizes <<<"$SIZES"
    IFS=, read -r -a modes <<<"$MODES"
    IFS=, read -r -a tso_modes <<<"$TSO_MODES"
    for variant in "${variants[@]}"; do
        if [[ $variant == tso ]]; then
            for mode in "${tso_modes[@]}"; do
                for ((round = 1; round <= ROUNDS; round++)); do
                    for c in "${cases[@]}"; do
                        measure_tso "$c" "$mode" "$round"
                    done
                done
            done
            continue
        fi
        for size in "${sizes[@]}"; do
            for mode in "${modes[@]}"; do
                for ((round = 1; round <= ROUNDS; round++)); do
                    for c in "${cases[@]}"; do
                        measure "$c" "$variant" "$size" "$mode" "$round"
                    done
                done
            done
        done
    done
    say ""
    print_table "$RUN/summary.csv"
    if has "$VARIANTS" tso; then
        say ""
        print_tso_table
        say ""
        say "tso: Gbit/s is TCP goodput (payload bytes the sink received per second; frames/s:"
        say "  frames it received); x mtu: ratio to the same case's mtu mode (1514-byte frames, no"
        say "  offloads); source%: tso-traffic (source and sink, one thread) on CPU $SOURCE_CPU."
    fi
    say ""
    say "Mpps: frames received by the source per second, all ports (both directions) together," \
        "median over rounds; Gbit/s: Mpps x frame size (no FCS, no wire overhead)."
    say "x tpmd, x ovs: ratio to testpmd-io and to ovs-dpdk (the ct cases: to ovs-ct), same variant, size and mode;" \
        "sent: Mpps the source sent (flowgen: offered load; a flood can deliver more than was sent)."
    say "switch%: CPU the switch process (testpmd backend, ovs-vswitchd, patchbay-switch) got on" \
        "CPU $SWITCH_CPU; source%: the source testpmd on CPU $SOURCE_CPU; other%: everything else" \
        "on the machine in the same window (100 = one core). Mean over rounds."
    say "RSS: private resident memory (RssAnon) of the switch process after the traffic, MiB," \
        "largest over rounds (not the frontends' shared memory it maps; testpmd-io's includes its mempool)."
    say "idle%: CPU the switch process used while the source's ports stayed connected but sent" \
        "nothing (${IDLE_SECS} s after each measurement; 100 = one core). Mean over rounds."
    say "load after: $(cut -d' ' -f1-3 /proc/loadavg); total $(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
    if [[ -n ${PATCHBAY_PEERS_OUT:-} ]]; then cp "$RESULTS" "$PATCHBAY_PEERS_OUT"; fi
    write_report
}

# The run's summary as CSV and an SVG chart (and the per-round TSV) in $REPORT_DIR.
write_report() {
    local stamp base
    stamp=$(date +%Y%m%d-%H%M%S)
    base=$REPORT_DIR/peers-$stamp
    mkdir -p "$REPORT_DIR" || { say "cannot create $REPORT_DIR: no report files"; return; }
    cp "$RUN/summary.csv" "$base.csv" && cp "$RESULTS" "$base-rounds.tsv"
    if [[ -s $base.csv ]] && "$RUN/bin/peers-chart" "$base.csv" "$base.svg" \
        "Patchbay beside its peers, $(date +%Y-%m-%d) (Mpps, both directions, median of $ROUNDS rounds)"; then
        say "report: $base.csv (summary), $base.svg (chart), $base-rounds.tsv (every round)"
    else
        say "report: $base.csv, $base-rounds.tsv (no chart: see the message above)"
    fi
}

main "$@"
