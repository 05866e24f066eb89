#!/bin/sh
# Print the host TSC frequency in kHz, for the guest kernel argument tsc_early_khz=.
# (Under QEMU TCG the guest's TSC is the host's TSC, so guests must not calibrate it:
# calibration against the emulated PIT fails or goes wrong when the host is loaded.)
# Sources, first that works:
#   1. $PB_TSC_KHZ (override);
#   2. /sys/devices/system/cpu/cpu0/tsc_freq_khz (exact; only some kernels/CPUs have it);
#   3. "cpu MHz" of cpu0 in /proc/cpuinfo x 1000 (the kernel's cpu_khz; within ~0.01% of the TSC
#      on fixed-frequency/virtual CPUs; on a host with frequency scaling it is the current
#      frequency, which may be off: set PB_TSC_KHZ there).
set -eu
if [ -n "${PB_TSC_KHZ:-}" ]; then echo "$PB_TSC_KHZ"; exit 0; fi
f=/sys/devices/system/cpu/cpu0/tsc_freq_khz
if [ -r "$f" ]; then cat "$f"; exit 0; fi
awk -F: '/^cpu MHz/ { printf "%d\n", $2 * 1000 + 0.5; exit }' /proc/cpuinfo
