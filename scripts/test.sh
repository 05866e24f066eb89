#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian packages, as root), builds the guest
# image for the QEMU tests, then the whole workspace's test suite. With
# PATCHBAY_REQUIRE_KVM=1 (CI), a test that would skip for want of QEMU, KVM, DPDK testpmd or
# root fails. PATCHBAY_FUZZ_SECS=N also runs every fuzz target for N seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.ci/install-deps.sh
scripts/build-guest-image.sh build/guest >/dev/null
# The integration tests start the workspace's binaries (the switch, flowctl, the bundled VMM).
cargo build --workspace --bins
cargo test --workspace "$@"
# A bounded run of every fuzz target (scripts/fuzz.sh: seeds committed under fuzz/corpus,
# crash reproducers among them). CI sets PATCHBAY_FUZZ_SECS=60; 0 (the default) skips it.
fuzz_secs=${PATCHBAY_FUZZ_SECS:-0}
if [[ "$fuzz_secs" -gt 0 ]]; then
    scripts/fuzz.sh "$fuzz_secs"
fi
