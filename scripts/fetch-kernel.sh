#!/usr/bin/env bash
# Fetches Debian trixie-backports' Linux 7.3 (kernel image + modules) for the
# kTLS VM (scripts/run-vm-tests.sh with KTM_VM_KERNEL=7.3), with a PRIVATE apt
# configuration: its own sources list naming only trixie-backports, its own
# lists and cache directories. The machine's apt sources, lists and dpkg
# database are never written (adding trixie to them would turn this Debian 12
# system into a mix). The packages are unpacked with `dpkg -x`, not installed.
#
# Idempotent: once the unpacked tree is complete it prints it and exits
# without touching the network.
#
# Output (stdout, one per line, for run-vm-tests.sh):
#   KVER=<kernel release>  VMLINUZ=<path>  MODBASE=<dir holding lib/modules/KVER>
#
# Env: KTM_KERNEL_CACHE   where to keep it (default ~/.cache/ktls-migrate/kernel-<KVER>)
#      KTM_KERNEL73_KVER  release to fetch (default 7.3.4+deb13-amd64)
#      KTM_DEBIAN_MIRROR  mirror URL (default: the one this machine's own sources name)
set -euo pipefail

KVER=${KTM_KERNEL73_KVER:-7.3.4+deb13-amd64}
PKGS=("linux-binary-$KVER" "linux-modules-$KVER")
CACHE=${KTM_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ktls-migrate/kernel-$KVER}
ROOT=$CACHE/root
DONE=$CACHE/complete

# trixie's packages put the image beside the modules (lib/modules/KVER/vmlinuz).
VMLINUZ=$ROOT/lib/modules/$KVER/vmlinuz

emit() {
  echo "KVER=$KVER"
  echo "VMLINUZ=$VMLINUZ"
  echo "MODBASE=$ROOT"
}

if [ -f "$DONE" ] && [ -f "$VMLINUZ" ] && [ -f "$ROOT/lib/modules/$KVER/modules.dep" ]; then
  emit
  exit 0
fi

for tool in dpkg depmod; do
  command -v "$tool" >/dev/null || { echo "fetch-kernel: $tool is missing" >&2; exit 1; }
done

# shellcheck source=lib/private-apt.sh
. "$(dirname "$0")/lib/private-apt.sh"
APT=$CACHE/apt
private_apt_download "$APT" trixie-backports "$APT/debs" "${PKGS[@]}"

rm -rf "$ROOT.new"
mkdir -p "$ROOT.new"
for p in "${PKGS[@]}"; do
  deb=$(ls "$APT/debs/${p}"_*.deb 2>/dev/null | head -n 1)
  [ -n "$deb" ] || { echo "fetch-kernel: $p was not downloaded" >&2; exit 1; }
  dpkg -x "$deb" "$ROOT.new"
done
# trixie is merged-/usr: modules may sit under usr/lib/modules; depmod -b and
# modprobe -d look under <base>/lib/modules.
if [ ! -e "$ROOT.new/lib" ] && [ -d "$ROOT.new/usr/lib/modules" ]; then ln -s usr/lib "$ROOT.new/lib"; fi
[ -f "$ROOT.new/lib/modules/$KVER/vmlinuz" ] || { echo "fetch-kernel: no lib/modules/$KVER/vmlinuz in the packages" >&2; exit 1; }
[ -d "$ROOT.new/lib/modules/$KVER" ] || { echo "fetch-kernel: no lib/modules/$KVER in the packages" >&2; exit 1; }
depmod -b "$ROOT.new" "$KVER"
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
date -u +%FT%TZ >"$DONE"
emit
