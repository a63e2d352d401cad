#!/usr/bin/env bash
# Real QEMU live migrations through `tls-migrate tunnel` (tests/qemu_test.cc):
# builds the test, the CLI, the fault relay and the guest initramfs, then
# runs the migrations. GoogleTest XML goes to $KTM_QEMU_XML_DIR (make test
# counts it). Fails loudly when QEMU or the kernel is missing: never passes
# by skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
KERNEL=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)
if [ -z "$KERNEL" ] || ! command -v qemu-system-x86_64 >/dev/null; then
  echo "run-qemu-tests: needs qemu-system-x86 and linux-image-amd64 (scripts/install-deps.sh installs them)" >&2
  exit 1
fi
# KTM_BAZEL_FLAGS: e.g. "-c opt" for make bench-qemu (timings of an optimised tunnel).
bazel build ${KTM_BAZEL_FLAGS:-} //tests:qemu_test //cli:tls-migrate //tools:fault_relay >&2
WORK=$(mktemp -d /tmp/ktm-qemu-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
bash scripts/make-qemu-guest.sh "$WORK/guest.cpio.gz"
XML=${KTM_QEMU_XML_DIR:-$WORK}/qemu_test.xml
mkdir -p "$(dirname "$XML")"
KTM_QEMU_KERNEL=$KERNEL KTM_QEMU_INITRD=$WORK/guest.cpio.gz \
KTM_CLI=$(realpath bazel-bin/cli/tls-migrate) KTM_RELAY=$(realpath bazel-bin/tools/fault_relay) \
  bazel-bin/tests/qemu_test --gtest_output="xml:$XML" "$@"
