#!/usr/bin/env bash
# Real QEMU live migrations through `tls-migrate tunnel` (tests/qemu_test.cc):
# builds the test, the CLI, the fault relay and the guest initramfs, then
# runs the migrations once per QEMU version in KTM_QEMU_VERSIONS (default
# "7.2 10.0": Debian 12's installed QEMU, and bookworm-backports' 10.0
# fetched by scripts/fetch-qemu.sh beside it). GoogleTest XML goes to
# $KTM_QEMU_XML_DIR/qemu_test_<version>.xml (make test counts it). Fails
# loudly when QEMU, the kernel or the 10.0 fetch is missing: never passes by
# skipping. Arguments are passed to every run (e.g. --gtest_filter=...).
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
XMLDIR=${KTM_QEMU_XML_DIR:-$WORK}
mkdir -p "$XMLDIR"

rc=0
for ver in ${KTM_QEMU_VERSIONS:-7.2 10.0}; do
  QEMU_BIN=qemu-system-x86_64 QEMU_DATADIR= QEMU_MODDIR= QEMU_VERSION=
  case "$ver" in
    7.2) QEMU_VERSION=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9.]*\).*/\1/p;q') ;;
    10.0)
      if ! fetched=$(bash scripts/fetch-qemu.sh); then
        echo "run-qemu-tests: FAILED: cannot fetch QEMU 10.0 (scripts/fetch-qemu.sh, see above); its suite did not run" >&2
        rc=1
        continue
      fi
      eval "$fetched" ;;
    *) echo "run-qemu-tests: unknown QEMU version '$ver' (7.2 or 10.0)" >&2; rc=1; continue ;;
  esac
  echo "=== QEMU $QEMU_VERSION ($QEMU_BIN) ===" >&2
  KTM_QEMU_BIN=$QEMU_BIN KTM_QEMU_DATADIR=$QEMU_DATADIR KTM_QEMU_MODDIR=$QEMU_MODDIR KTM_QEMU_VERSION=$QEMU_VERSION \
  KTM_QEMU_KERNEL=$KERNEL KTM_QEMU_INITRD=$WORK/guest.cpio.gz \
  KTM_CLI=$(realpath bazel-bin/cli/tls-migrate) KTM_RELAY=$(realpath bazel-bin/tools/fault_relay) \
    bazel-bin/tests/qemu_test --gtest_output="xml:$XMLDIR/qemu_test_$ver.xml" "$@" || rc=1
done
exit $rc
