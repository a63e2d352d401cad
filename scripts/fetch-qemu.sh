#!/usr/bin/env bash
# Fetches QEMU 10.0 from Debian's bookworm-backports (built for Debian 12,
# its dependencies are Debian 12's) and unpacks it beside the installed
# QEMU 7.2, with a private apt configuration (scripts/lib/private-apt.sh):
# the machine's apt sources and dpkg database are never touched.
#
# Idempotent: once the unpacked tree is complete it prints it and exits
# without touching the network.
#
# Output (stdout, one per line, for run-qemu-tests.sh):
#   QEMU_BIN=<qemu-system-x86_64>  QEMU_DATADIR=<firmware dir, for -L>
#   QEMU_MODDIR=<module dir, for QEMU_MODULE_DIR>  QEMU_VERSION=<x.y.z>
#
# Env: KTM_QEMU10_CACHE   where to keep it (default ~/.cache/ktls-migrate/qemu-<VER>)
#      KTM_QEMU10_VERSION Debian version to fetch (default 1:10.0.2+ds-2+deb13u1~bpo12+1)
#      KTM_DEBIAN_MIRROR  mirror URL (default: the one this machine's own sources name)
set -euo pipefail

DEBVER=${KTM_QEMU10_VERSION:-1:10.0.2+ds-2+deb13u1~bpo12+1}
UPVER=${DEBVER#*:}
UPVER=${UPVER%%+*}
# The two module packages: at start QEMU 10 looks for ui-opengl.so and
# ui-spice-core.so; without its own copies it finds 7.2's (7.2 shipped them
# in -common) and warns "Only modules from the same build can be loaded".
PKGS=("qemu-system-x86=$DEBVER" "qemu-system-common=$DEBVER" "qemu-system-data=$DEBVER"
  "qemu-system-modules-opengl=$DEBVER" "qemu-system-modules-spice=$DEBVER")
CACHE=${KTM_QEMU10_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ktls-migrate/qemu-$UPVER}
ROOT=$CACHE/root
DONE=$CACHE/complete
BIN=$ROOT/usr/bin/qemu-system-x86_64

emit() {
  echo "QEMU_BIN=$BIN"
  # QEMU 10's own option ROMs and data (pass with -L); its BIOS comes from
  # Debian 12's seabios in /usr/share/seabios, on QEMU's built-in path.
  echo "QEMU_DATADIR=$ROOT/usr/share/qemu"
  echo "QEMU_MODDIR=$(ls -d "$ROOT"/usr/lib/x86_64-linux-gnu/qemu 2>/dev/null || echo "$ROOT/usr/lib/qemu")"
  echo "QEMU_VERSION=$UPVER"
}

if [ -f "$DONE" ] && [ -x "$BIN" ]; then
  emit
  exit 0
fi

# shellcheck source=lib/private-apt.sh
. "$(dirname "$0")/lib/private-apt.sh"
APT=$CACHE/apt
rm -rf "$APT/debs"
private_apt_download "$APT" bookworm-backports "$APT/debs" "${PKGS[@]}"

rm -rf "$ROOT.new"
mkdir -p "$ROOT.new"
for deb in "$APT"/debs/*.deb; do dpkg -x "$deb" "$ROOT.new"; done
[ -x "$ROOT.new/usr/bin/qemu-system-x86_64" ] || { echo "fetch-qemu: no usr/bin/qemu-system-x86_64 in the packages" >&2; exit 1; }
# The BIOS is not in these packages: QEMU 10 takes Debian 12's seabios
# (installed with QEMU 7.2) through its built-in firmware path.
[ -e /usr/share/seabios/bios-256k.bin ] ||
  { echo "fetch-qemu: /usr/share/seabios/bios-256k.bin is missing (install Debian 12's seabios)" >&2; exit 1; }
got=$("$ROOT.new/usr/bin/qemu-system-x86_64" --version | head -n 1)
case "$got" in
  *"version $UPVER"*) ;;
  *) echo "fetch-qemu: the unpacked QEMU says '$got', expected $UPVER" >&2; exit 1 ;;
esac
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
date -u +%FT%TZ >"$DONE"
emit
