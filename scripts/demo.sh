#!/usr/bin/env bash
# The Patchbay demo: installs what is missing (Debian packages, as root), builds the switch,
# flowctl and the guest image, then starts the switch with three QEMU guests on two VLANs and
# shows traffic, the switch's tables and its metrics.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.ci/install-deps.sh
cargo build --release --workspace --bins
scripts/build-guest-image.sh build/guest >/dev/null
exec target/release/patchbay-demo "$@"
