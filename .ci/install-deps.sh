#!/usr/bin/env bash
# Install (Debian 12) what Patchbay's tests need. Idempotent: installs only what is missing,
# runs `apt-get update` at most once. Run as root (or via sudo).
#   qemu-system-x86  real Linux guests (docs/qemu-guests.md)
#   busybox-static   guest userland (scripts/build-guest-image.sh also fetches its .deb)
#   prometheus       promtool, to check the metrics exposition
#   iproute2         ip netns / veth / vxlan / bridge fdb for host-side tests (docs/vxlan-testing.md)
#   iputils-ping     ping inside test network namespaces
#   cpio, kmod       building the guest initramfs (cpio, modinfo)
#   openvswitch-common  ovs-ofctl, to check that rules files are OVS syntax unchanged
#   frr              zebra and bgpd for the BGP EVPN fabric test (docs/evpn.md)
#   debootstrap      a clean Debian root to install the package into (tests/tests/package.rs)
#   libvirt-daemon-system, libvirt-clients
#                    libvirtd, virtlogd and virsh for the libvirt guests test (docs/libvirt.md)
#   dpdk-dev, librte-net-vhost23, librte-net-virtio23, librte-mempool-ring23
#                    DPDK testpmd: a foreign vhost-user frontend (virtio-user) and backend
#                    (net_vhost) for the conformance tests; runs without hugepages
set -euo pipefail
PKGS=(qemu-system-x86 busybox-static prometheus iproute2 iputils-ping cpio kmod openvswitch-common frr
      libvirt-daemon-system libvirt-clients debootstrap
      dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)

SUDO=
if [[ $EUID -ne 0 ]]; then SUDO=sudo; fi

missing=()
for p in "${PKGS[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "all test dependencies installed"
    exit 0
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
