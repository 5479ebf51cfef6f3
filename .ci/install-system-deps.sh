#!/usr/bin/env bash
# System packages the test suite uses: headless Chromium (report.html screenshot test), Mosquitto (MQTT e2e),
# PostgreSQL (a study shared by search-workers: tests/compressor/search start a server on a free loopback port).
# Installed only when missing and when we are root; tests that need them skip with a reason otherwise.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# devicefit.kernels: the aarch64 cross toolchain and qemu-user (tests/kernels/test_aarch64_qemu.py runs the
# NEON dot-product kernels under qemu-aarch64; Debian's qemu-user ships /usr/bin/qemu-aarch64)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user)
# devicefit fleet e2e: a real MQTT broker (tests/fleet start it on a free loopback port)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# PostgreSQL server binaries (initdb, postgres): on PATH or in Debian's /usr/lib/postgresql/N/bin
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/tmp/devicefit-apt.log 2>&1 \
      || echo "warning: apt-get install ${need[*]} failed (see /tmp/devicefit-apt.log)"
  else
    echo "warning: not root; cannot install ${need[*]}"
  fi
fi
exit 0
