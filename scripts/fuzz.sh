#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), starting from the
# committed seed corpus (copied to a scratch directory, so the repository is never modified).
# Prints the executions of each target and fails on the first crash, leak or timeout, leaving
# the crash artifact's path in the output.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs rustup with a nightly toolchain (cargo-fuzz's sanitizer flags are nightly-only) and
# crates.io; installs cargo-fuzz if missing. FUZZ_TARGET_DIR (default target/fuzz) is the
# build directory; FUZZ_WORK (default: a fresh temporary directory) keeps corpora and
# artifacts; FUZZ_LOCK, if set, is a file to flock around the build (shared build machines).
set -euo pipefail

seconds=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir="$root/fuzz"
target_dir=${FUZZ_TARGET_DIR:-$root/target/fuzz}
work=${FUZZ_WORK:-$(mktemp -d -t patchbay-fuzz.XXXXXX)}
mkdir -p "$work"

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

# A nightly toolchain: cargo-fuzz passes -Zsanitizer=address.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$fuzz_dir"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "fuzz.sh: building ${#targets[@]} targets"
lock=()
if [ -n "${FUZZ_LOCK:-}" ]; then
    lock=(flock "$FUZZ_LOCK")
fi
"${lock[@]}" env CARGO_TARGET_DIR="$target_dir" cargo +nightly fuzz build
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t/"
    log="$work/$t.log"
    rm -rf "$corpus" "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "$fuzz_dir/corpus/$t" ]; then
        cp -r "$fuzz_dir/corpus/$t/." "$corpus/"
    fi
    echo "fuzz.sh: $t for ${seconds}s (log $log)"
    status=0
    # -timeout: one input taking 20 s is a hang. -rss_limit_mb: the VMM targets map guest RAM.
    # Targets that run an in-process switch leave its threads running; LeakSanitizer then
    # reports their thread-local destructor lists (glibc's, 32 bytes each) as leaks.
    leaks=1
    case "$t" in
        vhost_messages | control_json | vmm_mmio) leaks=0 ;;
    esac
    # What `cargo fuzz run` does, without a second cargo invocation per target.
    ASAN_OPTIONS="detect_odr_violation=0:detect_leaks=$leaks${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
        "$bin_dir/$t" "$corpus" \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -detect_leaks="$leaks" \
        -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(grep -o '^stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    rate=$(grep -o '^stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    if [ -z "$execs" ]; then
        # No final stats (a crash ends the run first): the last status line says how far it got.
        execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
    fi
    line="$t: ${execs:-?} executions (${rate:-?}/s)"
    if [ "$status" -ne 0 ]; then
        crash=$(grep -o 'Test unit written to .*' "$log" | tail -1 | sed 's/Test unit written to //' || true)
        line="$line FAILED (exit $status) artifact: ${crash:-none, see $log}"
        failed+=("$t")
        tail -n 40 "$log"
    fi
    echo "fuzz.sh: $line"
    summary+=("$line")
done

echo
echo "fuzz.sh summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (artifacts under $work/artifacts)"
    exit 1
fi
echo "fuzz.sh: no crashes"
