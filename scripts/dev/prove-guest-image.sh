#!/usr/bin/env bash
# Dev tool (not a test, nothing depends on it): prove the guest image works end to end.
# Starts DPDK testpmd as a reference vhost-user backend (two net_vhost ports, io forwarding,
# so port 0 <-> port 1 is a wire), boots two guests against its sockets, and pings between
# them: first untagged on eth0, then over the VLAN sub-interface eth0.100.
# Needs: dpdk-testpmd (dpdk-dev + librte-net-vhost23), qemu-system-x86_64, python3.
# Usage: scripts/dev/prove-guest-image.sh    (root; loopback-only: traffic stays in testpmd)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GUEST="${GUEST_DIR:-$ROOT/build/guest}"
"$ROOT/scripts/build-guest-image.sh" "$GUEST"

WORK="$(mktemp -d /tmp/pb-prove.XXXXXX)"
TESTPMD_PID=
cleanup() {
    if [[ -n "$TESTPMD_PID" ]] && kill -0 "$TESTPMD_PID" 2>/dev/null; then
        kill -INT "$TESTPMD_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$TESTPMD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TESTPMD_PID" 2>/dev/null || true
        wait "$TESTPMD_PID" 2>/dev/null || true
        echo "--- testpmd port statistics ---"
        grep -E 'Forward statistics for port|RX-packets|TX-packets' "$WORK/testpmd.log" | tail -n 6 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/rt"
RUNTIME_DIRECTORY="$WORK/rt" dpdk-testpmd -l 0,1 --no-huge -m 512 --no-pci \
    --file-prefix="pbprove$$" \
    --vdev "net_vhost0,iface=$WORK/a.sock,queues=1" \
    --vdev "net_vhost1,iface=$WORK/b.sock,queues=1" \
    -- --auto-start --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --stats-period 3600 \
    </dev/null >"$WORK/testpmd.log" 2>&1 &
TESTPMD_PID=$!
for _ in $(seq 100); do [[ -S "$WORK/a.sock" && -S "$WORK/b.sock" ]] && break; sleep 0.1; done
[[ -S "$WORK/a.sock" && -S "$WORK/b.sock" ]] || { cat "$WORK/testpmd.log"; exit 1; }
echo "testpmd listening: $WORK/a.sock $WORK/b.sock"

TSC_KHZ="$("$ROOT/scripts/host-tsc-khz.sh")"
export GUEST WORK TSC_KHZ
python3 - <<'PY'
import os, queue, re, subprocess, sys, threading, time

GUEST, WORK, TSC = os.environ["GUEST"], os.environ["WORK"], os.environ["TSC_KHZ"]

class Guest:
    def __init__(self, name, sock, mac, append):
        self.name = name
        self.cmd = [
            "qemu-system-x86_64", "-accel", "tcg,thread=multi",
            "-M", "pc,memory-backend=mem", "-m", "256M",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
            "-chardev", f"socket,id=chr0,path={sock}",
            "-netdev", "type=vhost-user,id=net0,chardev=chr0",
            "-device", f"virtio-net-pci,vectors=0,netdev=net0,mac={mac}",
            "-nodefaults", "-serial", "stdio", "-no-reboot", "-display", "none",
            "-kernel", f"{GUEST}/vmlinuz", "-initrd", f"{GUEST}/initramfs.cpio.gz",
            "-append", f"console=ttyS0 tsc_early_khz={TSC} tsc=reliable quiet pb.name={name} {append}",
        ]
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(f"{WORK}/{name}.qemu.log", "wb"))
        self.lines = queue.Queue()
        self.log = open(f"{WORK}/{name}.console.log", "w")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.log.write(line + "\n"); self.log.flush()
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None if left <= 0 else ""
                if line == "": continue
            if line is None:
                sys.exit(f"{self.name}: no '{pattern}' (exit/timeout); last lines: {seen[-20:]}")
            seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m, seen

    def run(self, command, timeout=60):
        self.p.stdin.write((command + "\n").encode()); self.p.stdin.flush()
        m, seen = self.expect(r"^PB-DONE (\d+)$", timeout)
        return int(m.group(1)), seen[:-1]

    def poweroff(self):
        self.p.stdin.write(b"poweroff -f\n"); self.p.stdin.flush()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill(); self.p.wait()
        return self.p.returncode

def scenario(title, extra1, extra2, dev, peer_ip):
    print(f"=== {title}")
    g1 = Guest("g1", f"{WORK}/a.sock", "52:54:00:00:00:01", extra1)
    g2 = Guest("g2", f"{WORK}/b.sock", "52:54:00:00:00:02", extra2)
    if title.startswith("untagged"):
        print("qemu:", " ".join(g1.cmd))
    try:
        for g in (g1, g2):
            m, _ = g.expect(r"PATCHBAY-GUEST-READY name=(\S+) mac=(\S+)", 180)
            print(f"{g.name}: READY after {time.monotonic() - g.t0:.1f} s ({m.group(0)})")
        rc, out = g1.run(f"ip addr show {dev} | grep -E 'inet |mtu'; cat /proc/net/vlan/config 2>/dev/null | tail -n +3")
        print("\n".join("  g1| " + l for l in out))
        rc, out = g1.run(f"ping -c 5 -W 3 {peer_ip}", timeout=120)
        print("\n".join("  g1| " + l for l in out))
        ok = rc == 0 and any(re.search(r" 0% packet loss", l) for l in out)
        print(f"{title}: ping g1 -> g2 {'OK' if ok else 'FAILED'} (status {rc})")
        return ok
    finally:
        for g in (g1, g2):
            print(f"{g.name}: poweroff -> qemu exit {g.poweroff()}")

ok = scenario("untagged eth0", "pb.ip=10.99.0.1/24", "pb.ip=10.99.0.2/24", "eth0", "10.99.0.2")
ok &= scenario("VLAN 100 (eth0.100)", "pb.ip=10.99.0.1/24 pb.vlan=100 pb.mtu=1400",
               "pb.ip=10.99.0.2/24 pb.vlan=100 pb.mtu=1400", "eth0.100", "10.99.0.2")
print("ALL OK" if ok else "SOME FAILED")
sys.exit(0 if ok else 1)
PY
