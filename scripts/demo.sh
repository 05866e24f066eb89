#!/usr/bin/env bash
# The Patchbay demo: installs what is missing (Debian packages, as root), builds the switch,
# flowctl, the bundled VMM and its guest, then starts the switch with three VMs on two VLANs
# and shows pings, a TCP transfer, the switch's tables and its metrics.
#   scripts/demo.sh          the bundled VMM (needs /dev/kvm)
#   scripts/demo.sh qemu     the same with Debian guests under QEMU (software emulation)
#   scripts/demo.sh vxlan    two hosts (network namespaces) joined by a VXLAN segment
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.ci/install-deps.sh
cargo build --release --workspace --bins
scripts/build-guest-image.sh build/guest >/dev/null
exec target/release/patchbay-demo "$@"
