#!/usr/bin/env bash
# Idempotent dependency installer: Debian 12 packages only.
# Called first by `make demo`, `make test` and `.ci/run`; safe to run again.
set -euo pipefail

PKGS=(
  build-essential
  bazel-bootstrap bazel-platforms bazel-rules-java
  libgnutls28-dev gnutls-bin
  libssl-dev openssl
  liburing-dev
  libgtest-dev libgmock-dev
  nlohmann-json3-dev libxxhash-dev
  clang libclang-rt-14-dev
  qemu-system-x86 linux-image-amd64 busybox-static cpio kmod
  # scripts/fetch-kernel.sh (the 7.3 kernel for the kTLS VM): trixie's
  # archive key, and xz for its .ko.xz modules.
  debian-archive-keyring xz-utils
  iproute2 procps libcap2-bin iperf3 gnuplot-nox socat
  help2man lintian pkg-config
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
