#!/usr/bin/env bash
# Build a tiny Linux guest for Patchbay's real-guest tests:
#   OUTDIR/vmlinuz           Debian's cloud kernel (linux-image-cloud-amd64)
#   OUTDIR/initramfs.cpio.gz busybox-static + ethtool + virtio-net/8021q modules + /init
#
# Usage: scripts/build-guest-image.sh [OUTDIR]    (default: build/guest under the repo root)
# Rebuilds only when an output is missing or older than this script (FORCE=1 to force).
# Needs: apt-get (Debian 12 repositories), dpkg-deb, modinfo (kmod), cpio, gzip.
#
# The guest's /init parameter interface (kernel command line) is documented in
# docs/qemu-guests.md and in the /init script below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/build-guest-image.sh"
OUTDIR="${1:-$ROOT/build/guest}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

if [[ "${FORCE:-0}" != 1 && "$OUTDIR/vmlinuz" -nt "$SELF" && "$OUTDIR/initramfs.cpio.gz" -nt "$SELF" ]]; then
    echo "guest image up to date: $OUTDIR"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb modinfo cpio gzip; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool (see .ci/install-deps.sh)" >&2; exit 1; }
done

# Modules to load, by name; their dependencies are added (from modinfo) and ordered first.
WANT_MODULES=(virtio_pci virtio_mmio virtio_net 8021q)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# apt-get download drops privileges to _apt when it can; let it write here.
chmod 0777 "$TMP"
CACHE="$OUTDIR/.debs"
mkdir -p "$CACHE"

# Resolve the versioned kernel package behind the linux-image-cloud-amd64 metapackage.
resolve_kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }'
}
KPKG="$(resolve_kernel_pkg || true)"
if [[ -z "$KPKG" ]]; then
    apt-get update -qq
    KPKG="$(resolve_kernel_pkg)"
fi
[[ -n "$KPKG" ]] || { echo "cannot resolve linux-image-cloud-amd64" >&2; exit 1; }

# Download a package's .deb into the cache (once per version) and print its path.
fetch_deb() {
    local pkg="$1" ver file
    ver="$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" { print $2 }')"
    [[ -n "$ver" && "$ver" != "(none)" ]] || { echo "no candidate for $pkg" >&2; return 1; }
    file="$(ls "$CACHE"/"${pkg}"_*.deb 2>/dev/null | while read -r f; do
        if [[ "$(dpkg-deb -f "$f" Version)" == "$ver" ]]; then echo "$f"; fi; done | head -n1 || true)"
    if [[ -z "$file" ]]; then
        (cd "$TMP" && apt-get download -qq "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
        file="$(ls "$TMP"/"${pkg}"_*.deb | head -n1)"
        rm -f "$CACHE"/"${pkg}"_*.deb
        mv "$file" "$CACHE/"
        file="$CACHE/$(basename "$file")"
    fi
    echo "$file"
}

echo "kernel package: $KPKG"
KDEB="$(fetch_deb "$KPKG")"
BDEB="$(fetch_deb busybox-static)"

# ethtool (for `ethtool -k`: which offloads the guest's driver negotiated) with the two
# libraries it links: glibc's loader and libc, and libmnl.
EDEBS=("$(fetch_deb ethtool)" "$(fetch_deb libmnl0)" "$(fetch_deb libc6)")

dpkg-deb -x "$KDEB" "$TMP/kernel"
dpkg-deb -x "$BDEB" "$TMP/busybox"
for d in "${EDEBS[@]}"; do dpkg-deb -x "$d" "$TMP/ethtool"; done
KVER="$(ls "$TMP/kernel/lib/modules" | head -n1)"
MODDIR="$TMP/kernel/lib/modules/$KVER"

# name -> .ko path for every module in the package (names use '_', files may use '-').
declare -A KO
while IFS= read -r f; do
    n="$(basename "$f")"; n="${n%%.ko*}"; KO["${n//-/_}"]="$f"
done < <(find "$MODDIR" -name '*.ko*')

# Depth-first: dependencies before dependents, each module once.
declare -A SEEN
ORDER=()
add_module() {
    local m="${1//-/_}" dep
    [[ -n "${SEEN[$m]:-}" ]] && return 0
    SEEN[$m]=1
    [[ -n "${KO[$m]:-}" ]] || { echo "module $m not in $KPKG" >&2; exit 1; }
    for dep in $(modinfo -F depends "${KO[$m]}" | tr ',' ' '); do
        add_module "$dep"
    done
    ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do add_module "$m"; done
echo "modules (load order): ${ORDER[*]}"

# Assemble the initramfs tree.
R="$TMP/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules}
install -m 0755 "$TMP/busybox/bin/busybox" "$R/bin/busybox"
# One symlink per applet, at the path busybox expects it.
"$R/bin/busybox" --list-full | while IFS= read -r path; do
    [[ "$path" == bin/busybox ]] && continue
    mkdir -p "$R/$(dirname "$path")"
    ln -sf /bin/busybox "$R/$path"
done
ETHTOOL="$(find "$TMP/ethtool" -path "*sbin/ethtool" -type f | head -n1)"
[[ -n "$ETHTOOL" ]] || { echo "no ethtool binary in the ethtool package" >&2; exit 1; }
install -m 0755 "$ETHTOOL" "$R/usr/sbin/ethtool.bin"
mkdir -p "$R/lib/x86_64-linux-gnu" "$R/lib64"
for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmnl.so.0; do
    f="$(find "$TMP/ethtool" -name "$lib" | head -n1)"
    [[ -n "$f" ]] || { echo "no $lib in the ethtool packages" >&2; exit 1; }
    cp -L "$f" "$R/lib/x86_64-linux-gnu/$lib"
done
ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
# busybox has no ethtool applet; the real one takes its place.
rm -f "$R/usr/sbin/ethtool" "$R/sbin/ethtool"
ln -sf /usr/sbin/ethtool.bin "$R/usr/sbin/ethtool"
for m in "${ORDER[@]}"; do
    f="${KO[$m]}"
    case "$f" in
        *.ko) cp "$f" "$R/lib/modules/$m.ko" ;;
        *.ko.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$R/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$R/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$R/lib/modules/load-order"
done
echo "$KVER" >"$R/etc/kernel-release"
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
# The kernel's built-in initramfs already provides /dev/console; add it anyway when we can.
if [[ $EUID -eq 0 ]]; then mknod -m 600 "$R/dev/console" c 5 1; fi

cat >"$R/init" <<'INIT'
#!/bin/sh
# Patchbay test guest /init. Kernel command line parameters:
#   pb.name=NAME      guest name (hostname; echoed in the READY line)    default: guest
#   pb.ip=A.B.C.D/NN  IPv4 address for eth0, or for eth0.VID if pb.vlan is given
#   pb.vlan=VID       create VLAN sub-interface eth0.VID (802.1Q)
#   pb.mtu=N          MTU for eth0 (and eth0.VID)
#   pb.ipv6=1         keep IPv6 enabled (default: disabled, so the guest sends nothing unasked)
#   MOD.PARAM=VALUE   passed to insmod for the modules we load (e.g. virtio_mmio.device=...)
# Prints "PATCHBAY-GUEST-READY name=NAME mac=MAC" once eth0 is up, then runs a command loop on
# the console: each input line runs with sh (stdin /dev/null), followed by "PB-DONE <status>".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
# Keep kernel messages off the console so they don't interleave with command output.
dmesg -n 1

CMDLINE="$(cat /proc/cmdline)"
arg() { # arg KEY -> value of the last KEY=value on the kernel command line
    local v= w
    for w in $CMDLINE; do case "$w" in "$1="*) v="${w#*=}" ;; esac; done
    echo "$v"
}

while read -r m; do
    params=
    for w in $CMDLINE; do case "$w" in "$m".*=*) params="$params ${w#$m.}" ;; esac; done
    insmod "/lib/modules/$m.ko" $params || echo "PATCHBAY-GUEST-WARN insmod $m failed"
done </lib/modules/load-order

NAME="$(arg pb.name)"; NAME="${NAME:-guest}"
IP="$(arg pb.ip)"; VLAN="$(arg pb.vlan)"; MTU="$(arg pb.mtu)"
hostname "$NAME"
ip link set lo up
# IPv6 off unless pb.ipv6=1: no spontaneous ND/MLD frames to disturb tests that count frames.
if [ "$(arg pb.ipv6)" != 1 ]; then
    sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
fi

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    [ -n "$MTU" ] && ip link set eth0 mtu "$MTU"
    ip link set eth0 up
    DEV=eth0
    if [ -n "$VLAN" ]; then
        DEV="eth0.$VLAN"
        ip link add link eth0 name "$DEV" type vlan id "$VLAN" 2>/dev/null ||
            vconfig add eth0 "$VLAN" >/dev/null ||
            echo "PATCHBAY-GUEST-WARN cannot create $DEV"
        [ -n "$MTU" ] && ip link set "$DEV" mtu "$MTU"
        ip link set "$DEV" up
    fi
    [ -n "$IP" ] && ip addr add "$IP" dev "$DEV"
    # READY means frames can flow: wait (up to 5 s) until the kernel reports the link up.
    i=0
    while [ "$(cat /sys/class/net/$DEV/operstate)" != up ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    MAC="$(cat /sys/class/net/eth0/address)"
else
    echo "PATCHBAY-GUEST-WARN no eth0"
    MAC=none
fi

stty -echo 2>/dev/null
echo "PATCHBAY-GUEST-READY name=$NAME mac=$MAC"
while IFS= read -r line; do
    sh -c "$line" </dev/null
    echo "PB-DONE $?"
done
poweroff -f
INIT
chmod 0755 "$R/init"

# Write outputs atomically (newer than the script, so the next run is a no-op).
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$OUTDIR/initramfs.cpio.gz.tmp"
cp "$TMP/kernel/boot/vmlinuz-$KVER" "$OUTDIR/vmlinuz.tmp"
mv "$OUTDIR/vmlinuz.tmp" "$OUTDIR/vmlinuz"
mv "$OUTDIR/initramfs.cpio.gz.tmp" "$OUTDIR/initramfs.cpio.gz"
echo "$KVER" >"$OUTDIR/kernel-release"
echo "built $OUTDIR/vmlinuz ($KVER) and $OUTDIR/initramfs.cpio.gz ($(du -k "$OUTDIR/initramfs.cpio.gz" | cut -f1) KiB)"
