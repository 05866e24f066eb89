#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian packages, as root), builds the guest
# image for the QEMU tests, then the whole workspace's test suite. With
# PATCHBAY_REQUIRE_KVM=1 (CI), a test that would skip for want of QEMU, KVM or root fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.ci/install-deps.sh
scripts/build-guest-image.sh build/guest >/dev/null
cargo test --workspace "$@"
