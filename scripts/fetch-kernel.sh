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

# The same mirror host the machine already uses (deb822 "URIs:" or one-line
# "deb URL suite"), so a proxy or local mirror keeps working.
MIRROR=${KTM_DEBIAN_MIRROR:-}
if [ -z "$MIRROR" ]; then
  MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
MIRROR=${MIRROR%/}

for tool in apt-get dpkg depmod; do
  command -v "$tool" >/dev/null || { echo "fetch-kernel: $tool is missing" >&2; exit 1; }
done

APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs" "$APT/empty"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie-backports main" \
  >"$APT/sources.list"
# Every path apt would read or write that could involve the machine's own
# configuration points into $APT or nowhere (no other sources, no pinning).
APTOPTS=(
  -o "Dir::Etc::SourceList=$APT/sources.list"
  -o "Dir::Etc::SourceParts=$APT/empty"
  -o "Dir::Etc::Preferences=$APT/empty/preferences"
  -o "Dir::Etc::PreferencesParts=$APT/empty"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache"
  -o "APT::Get::List-Cleanup=0"
  # The cache usually sits in root's 0700 home, where apt's unprivileged
  # _apt downloader cannot write; say so rather than have apt warn.
  -o "APT::Sandbox::User=$(id -un)"
)
echo "fetch-kernel: fetching ${PKGS[*]} from $MIRROR trixie-backports into $CACHE" >&2
apt-get -q "${APTOPTS[@]}" update >&2
(cd "$APT/debs" && apt-get -q "${APTOPTS[@]}" download "${PKGS[@]}" >&2)

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
