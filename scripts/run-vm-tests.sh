#!/usr/bin/env bash
# Boots Debian's own kernel (CONFIG_TLS=m) under QEMU TCG, loads tls.ko, and
# runs the kTLS test binaries from this build inside it, against the host's
# root filesystem shared read-only over 9p (so the host's binaries and
# libraries run unchanged). GoogleTest XML comes back over the serial
# console, base64-encoded between markers.
#
# Fails loudly if the VM cannot boot or produces no results: it never passes
# by skipping.
#
# Two kernels (KTM_VM_KERNEL):
#   6.1  Debian 12's own linux-image-amd64 from /boot + /lib/modules (default)
#   7.3  trixie-backports' Linux 7.3, fetched once by scripts/fetch-kernel.sh
#        into a private cache (.ko.xz modules, decompressed into the initramfs)
# Every run ends with the guest's `uname -r` and all of /proc/net/tls_stat.
#
# Env: KTM_VM_KERNEL   6.1 (default) or 7.3
#      KTM_VM_XML_DIR  where to put <binary>.xml (default: a temp dir)
#      KTM_VM_TIMEOUT  seconds before the VM is killed (default 3600: the
#                      whole suite takes about 6 minutes per backend under
#                      TCG on a quiet machine, two to three times that on a
#                      loaded one, and runs once per backend)
#      KTM_VM_ONLY     space-separated run names to run alone (default: all);
#                      a base name (ktls_vm_test) picks it with every backend,
#                      a suffixed one (ktls_vm_test_openssl) that backend only
#      KTM_VM_BACKENDS TLS backends to run every suite with (default
#                      "gnutls openssl"): each suite runs once per backend in
#                      the same guest, the OpenSSL runs with
#                      KTM_TEST_TLS_BACKEND=openssl and named <run>_openssl
#                      (their own XML file, counted on their own line)
#      KTM_VM_OPENSSL_RUNS  if set, the OpenSSL pass runs only these base
#                      names (make test: on 6.1 only ktls_vm_test and
#                      interop_ktls_test; the relay suites' OpenSSL pass runs
#                      on 7.3, where the same code paths plus re-keying run)
#      KTM_VM_QEMU     1: also run QEMU postcopy recovery through kTLS tunnel
#                      ends (a real QEMU guest inside the VM; minutes)
#      KTM_VM_GTEST_ARGS  extra GoogleTest flags for each run (e.g. --gtest_repeat=5)
set -euo pipefail
cd "$(dirname "$0")/.."

# virtio + 9p for the shared root, tls itself, and the crypto the kernel's
# TLS needs for gcm(aes) and rfc7539(chacha20,poly1305): without those the
# TLS_TX setsockopt fails with ENOENT (the guest has no modprobe to load them
# on demand). modprobe --show-depends gives the order. The list differs by
# kernel because the crypto modules were reorganised between them.
VM_KERNEL=${KTM_VM_KERNEL:-6.1}
case "$VM_KERNEL" in
  6.1)
    KVER=""
    for d in /lib/modules/*; do
      if [ -f "$d/kernel/net/tls/tls.ko" ] && [ -f "/boot/vmlinuz-$(basename "$d")" ]; then KVER=$(basename "$d"); fi
    done
    if [ -z "$KVER" ]; then
      echo "run-vm-tests: no kernel with tls.ko in /lib/modules + /boot (apt-get install linux-image-amd64)" >&2
      exit 1
    fi
    KERNEL=/boot/vmlinuz-$KVER
    MODBASE=/
    WANT="virtio_pci 9pnet_virtio 9p tls gcm ctr ghash-generic ghash-clmulni-intel aesni-intel chacha20poly1305
          chacha_generic poly1305_generic seqiv veth"
    ;;
  7.3)
    # virtio-pci and ghash are built in; chacha20 is crypto/chacha.ko over
    # lib/crypto's libchacha, and poly1305 is a library only.
    KVER="" KERNEL="" MODBASE=""
    while IFS='=' read -r k v; do
      case "$k" in KVER) KVER=$v;; VMLINUZ) KERNEL=$v;; MODBASE) MODBASE=$v;; esac
    done < <(bash scripts/fetch-kernel.sh)
    if [ -z "$KVER" ] || [ ! -f "$KERNEL" ] || [ -z "$MODBASE" ]; then
      echo "run-vm-tests: scripts/fetch-kernel.sh did not provide the 7.3 kernel" >&2
      exit 1
    fi
    WANT="9pnet_virtio 9p tls gcm ctr aesni-intel chacha20poly1305 chacha seqiv veth"
    ;;
  *)
    echo "run-vm-tests: KTM_VM_KERNEL=$VM_KERNEL: expected 6.1 or 7.3" >&2
    exit 1;;
esac

QEMU_TARGET=""
[ "${KTM_VM_QEMU:-0}" = 1 ] && QEMU_TARGET=//tests:qemu_test
bazel build //tests:ktls_vm_test //tests:interop_test //tests:transport_test //tests:fault_test //tests:tunnel_test //tests:dead_path_test \
  //cli:tls-migrate \
  //tools:fault_relay $QEMU_TARGET >&2
BIN=$(realpath bazel-bin/tests)
CLI=$(realpath bazel-bin/cli/tls-migrate)
RELAY=$(realpath bazel-bin/tools/fault_relay)
# The guest mounts its own tmpfs on /tmp, hiding the host's: binaries there
# would be invisible inside. (The checkout itself may live anywhere.)
case "$BIN" in /tmp/*)
  echo "run-vm-tests: Bazel's output base is under /tmp ($BIN), which the VM cannot see; set --output_user_root elsewhere" >&2
  exit 1;;
esac
# Each run: "<name>|<env>|<binary>"
BASE_RUNS=(
  "ktls_vm_test||$BIN/ktls_vm_test"
  "interop_ktls_test|KTM_TEST_KTLS=require|$BIN/interop_test"
  "transport_ktls_test|KTM_TEST_KTLS=require|$BIN/transport_test --gtest_filter=PlainAndTls/*:Transport.*"
  # The relay fault cases with both ends in kernel TLS (EBADMSG, cuts
  # mid-record, writes to a dead peer, stalls hitting the io timeout).
  "fault_ktls_test|KTM_TEST_KTLS=require KTM_CLI=$CLI KTM_RELAY=$RELAY|$BIN/fault_test --gtest_filter=*RelayFaults.*/Tls:Hostile.DestinationKilledOverTls*:Hostile.IdleAndHalf*"
  # The tunnel with both ends in kernel TLS: the splice path, byte-exact.
  "tunnel_ktls_test|KTM_TEST_KTLS=require KTM_CLI=$CLI KTM_RELAY=$RELAY|$BIN/tunnel_test"
  # A silently dead path (veth + tc blackhole between two network
  # namespaces) under the splice path: --dead-peer-timeout on kTLS sockets.
  "dead_path_ktls_test|KTM_TEST_KTLS=require KTM_CLI=$CLI|$BIN/dead_path_test"
)
# KTM_VM_QEMU=1: QEMU's postcopy recovery through two kTLS tunnel ends, with
# real QEMU (Debian 12's 7.2) under TCG inside this TCG VM: a 256 MiB guest
# (16 MiB rewritten, 16 MiB self-checked), the source tunnel end SIGKILLed
# in postcopy, recovered through a new one. Its guest boots in minutes
# here, so it is opt-in (make test-ktls-qemu), alone or beside the rest.
if [ "${KTM_VM_QEMU:-0}" = 1 ]; then
  QEMU_KERNEL=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -n 1)
  # Not under /tmp: the guest mounts its own tmpfs there.
  QEMU_GUEST=${XDG_CACHE_HOME:-$HOME/.cache}/ktls-migrate/vm-qemu-guest.cpio.gz
  mkdir -p "$(dirname "$QEMU_GUEST")"
  bash scripts/make-qemu-guest.sh "$QEMU_GUEST"
  BASE_RUNS+=("qemu_postcopy_ktls_test|KTM_TEST_KTLS=require KTM_CLI=$CLI KTM_RELAY=$RELAY KTM_QEMU_KERNEL=$QEMU_KERNEL KTM_QEMU_INITRD=$QEMU_GUEST KTM_QEMU_RAM_KIB=262152 KTM_QEMU_PC_FILL_MIB=16 KTM_QEMU_PC_CHECK_MIB=16 KTM_QEMU_PC_PRECOPY_MIB=8 KTM_QEMU_PC_INTERRUPTED_MIBS=2 KTM_QEMU_TIME_SCALE=5|$BIN/qemu_test --gtest_filter=QemuPostcopy.RecoversAfterSourceTunnelEndKilled")
fi

# Every suite once per TLS backend: GnuTLS under the plain name (as before),
# OpenSSL as <name>_openssl with KTM_TEST_TLS_BACKEND=openssl (tests/tls_util.h
# TestBackend(); the *_openssl Bazel targets set the same variable, so one
# binary per suite serves both and only one is built).
RUNS=()
for backend in ${KTM_VM_BACKENDS:-gnutls openssl}; do
  case "$backend" in gnutls|openssl) ;; *)
    echo "run-vm-tests: KTM_VM_BACKENDS: unknown backend $backend (gnutls, openssl)" >&2; exit 1;;
  esac
  for r in "${BASE_RUNS[@]}"; do
    IFS='|' read -r name env bin <<<"$r"
    if [ "$backend" = gnutls ]; then RUNS+=("$name|$env|$bin")
    elif [[ "$name" == qemu_* ]]; then continue  # QEMU's run: one backend is enough
    elif [ -z "${KTM_VM_OPENSSL_RUNS+set}" ] || [[ " $KTM_VM_OPENSSL_RUNS " == *" $name "* ]]; then
      RUNS+=("${name}_openssl|KTM_TEST_TLS_BACKEND=openssl $env|$bin")
    fi
  done
done
# KTM_VM_ONLY: a run is picked by its own name or its suite's base name.
wanted() {
  [ -z "${KTM_VM_ONLY:-}" ] && return 0
  [[ " $KTM_VM_ONLY " == *" $1 "* ]] || [[ " $KTM_VM_ONLY " == *" ${1%_openssl} "* ]]
}

WORK=$(mktemp -d /tmp/ktm-vm-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
XML_DIR=${KTM_VM_XML_DIR:-$WORK/xml}
mkdir -p "$XML_DIR"
ROOT=$WORK/initramfs
mkdir -p "$ROOT"/{bin,mod,proc,sys,dev,host}
cp /bin/busybox "$ROOT/bin/busybox"
for t in sh mount insmod ip chroot poweroff cat echo mkdir base64 sleep uname; do ln -s busybox "$ROOT/bin/$t"; done
# A module the list names but the kernel lacks would surface much later as
# ENOENT from setsockopt(TLS_TX): refuse here instead.
DEPS=$WORK/deps
for m in $WANT; do
  if ! modprobe -d "$MODBASE" -S "$KVER" --show-depends "$m" >>"$DEPS"; then
    echo "run-vm-tests: module $m not found for $KVER" >&2
    exit 1
  fi
done
ORDER=""
# busybox insmod takes plain .ko files only: compressed ones are unpacked.
for ko in $(awk '$1 == "insmod" && !seen[$2]++ {print $2}' "$DEPS"); do
  case "$ko" in
    *.ko) base=$(basename "$ko" .ko); cp "$ko" "$ROOT/mod/$base.ko";;
    *.ko.xz) base=$(basename "$ko" .ko.xz); xz -dc "$ko" >"$ROOT/mod/$base.ko";;
    *.ko.zst) base=$(basename "$ko" .ko.zst); zstd -qdc "$ko" >"$ROOT/mod/$base.ko";;
    *) echo "run-vm-tests: module $ko: unknown compression" >&2; exit 1;;
  esac
  ORDER="$ORDER $base"
done

{
  echo '#!/bin/sh'
  echo 'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev'
  echo "for m in $ORDER; do insmod /mod/\$m.ko || echo \"KTM-VM: insmod \$m failed\"; done"
  echo 'mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || echo "KTM-VM: 9p mount failed"'
  echo 'mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev'
  echo 'mount -t tmpfs tmp /host/tmp'
  # `ip netns add` (dead_path_test) keeps its namespaces under /run/netns.
  echo 'mount -t tmpfs run /host/run'
  echo 'ip link set lo up'
  echo 'echo "KTM-VM: kernel $(cat /proc/sys/kernel/osrelease), tls_stat:"; cat /proc/net/tls_stat'
  if [ "${KTM_VM_DEMO:-0}" = 1 ]; then
    # make demo-ktls: the CLI demo, then the kernel's counters.
    echo "chroot /host /bin/sh -c 'cd /tmp && HOME=/tmp $CLI demo --quiet --size ${KTM_VM_DEMO_SIZE:-128M} --ktls require'"
    echo 'echo "KTM-VM-RC $?"'
  elif [ "${KTM_VM_BENCH:-0}" = 1 ]; then
    # make bench-ktls: TLS modes side by side in one (emulated) VM run.
    echo "chroot /host /bin/sh -c 'cd /tmp && HOME=/tmp $CLI bench --size ${KTM_VM_BENCH_SIZE:-64M} --channels 1,4 --modes plain-copy,tls-userspace,tls-qemu-style,ktls,tls-userspace-openssl,ktls-openssl'"
    echo 'echo "KTM-VM-RC $?"'
  fi
  for r in "${RUNS[@]}"; do
    [ "${KTM_VM_DEMO:-0}" = 1 ] || [ "${KTM_VM_BENCH:-0}" = 1 ] && break
    IFS='|' read -r name env bin <<<"$r"
    # KTM_VM_ONLY="tunnel_ktls_test ...": only those runs (iterating on one).
    wanted "$name" || continue
    echo "echo KTM-VM: running $name"
    echo "chroot /host /bin/sh -c 'cd /tmp && HOME=/tmp $env $bin ${KTM_VM_GTEST_ARGS:-} --gtest_output=xml:/tmp/$name.xml'"
    echo "echo KTM-VM-XML-BEGIN $name"
    echo "base64 /host/tmp/$name.xml"
    echo "echo KTM-VM-XML-END"
  done
  # Between markers, for the host's summary below.
  echo 'echo "KTM-VM-END kernel $(uname -r)"; cat /proc/net/tls_stat; echo KTM-VM-END-STAT'
  echo 'poweroff -f'
} > "$ROOT/init"
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.gz"

LOG=$WORK/console.log
echo "run-vm-tests: booting $KERNEL ($VM_KERNEL) under QEMU TCG (this takes a minute or two)" >&2
VM_TIMEOUT=${KTM_VM_TIMEOUT:-3600}
vm_t0=$SECONDS
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 \
  -nographic -no-reboot -monitor none -serial stdio \
  -kernel "$KERNEL" -initrd "$WORK/initramfs.gz" \
  -append "console=ttyS0 quiet loglevel=1 panic=-1" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -nic none </dev/null >"$LOG" 2>&1
qrc=$?
set -e
vm_seconds=$((SECONDS - vm_t0))
tr -d '\r' <"$LOG" >"$LOG.clean"

# A VM killed at the time limit looks like a hang in whatever test was
# running: say that it was the limit, and where the guest was.
report_time_limit() {
  [ "$qrc" = 124 ] || return 0
  local run test
  run=$(sed -n 's/^KTM-VM: running //p' "$LOG.clean" | tail -n 1)
  test=$(grep -a '\[ RUN      \]' "$LOG.clean" | tail -n 1 | sed 's/.*\] *//; s/\x1b\[[0-9;]*m//g')
  echo "run-vm-tests: FAILED: the VM was stopped at its time limit (KTM_VM_TIMEOUT=$VM_TIMEOUT s) while running" \
    "${run:-?}, in ${test:-?}: a hang, or a machine too loaded for the limit" >&2
}

# The last lines of every run: which kernel ran (as the guest saw it) and all
# of its kTLS counters, rekey ones included where the kernel has them.
print_kernel_summary() {
  local k
  k=$(sed -n 's/^KTM-VM-END kernel //p' "$LOG.clean" | head -n 1)
  if [ -z "$k" ]; then
    echo "run-vm-tests: the VM did not reach its end (no kernel/tls_stat summary; qemu exit $qrc)" >&2
    return
  fi
  echo "run-vm-tests: kernel $k (KTM_VM_KERNEL=$VM_KERNEL), VM ran ${vm_seconds} s, /proc/net/tls_stat at the end:"
  sed -n '/^KTM-VM-END kernel /,/^KTM-VM-END-STAT$/p' "$LOG.clean" | sed '1d;$d' | sed 's/^/  /'
}

if [ "${KTM_VM_DEMO:-0}" = 1 ] || [ "${KTM_VM_BENCH:-0}" = 1 ]; then
  grep -v '^\s*$' "$LOG.clean" | sed -n '/tls-migrate \(demo\|bench\):/,$p' | sed '/^KTM-VM-END kernel /,$d'
  print_kernel_summary
  grep -q '^KTM-VM-RC 0$' "$LOG.clean"
  exit $?
fi
# Show the guest's own words (not the XML) so a failure can be read.
sed -n '/KTM-VM-XML-BEGIN/,/KTM-VM-XML-END/!p' "$LOG.clean" | sed '/^KTM-VM-END kernel /,$d' | grep -v '^\s*$' | tail -n 200
print_kernel_summary
report_time_limit
status=0
for r in "${RUNS[@]}"; do
  name=${r%%|*}
  wanted "$name" || continue
  sed -n "/^KTM-VM-XML-BEGIN $name\$/,/^KTM-VM-XML-END\$/p" "$LOG.clean" | sed '1d;$d' | base64 -d >"$XML_DIR/$name.xml" 2>/dev/null || true
  if ! grep -q '<testsuites' "$XML_DIR/$name.xml" 2>/dev/null; then
    echo "run-vm-tests: FAILED: the VM produced no results for $name (qemu exit $qrc); see the console above" >&2
    rm -f "$XML_DIR/$name.xml"
    status=1
  elif grep -q '<failure' "$XML_DIR/$name.xml"; then
    status=1
  fi
done
# One line per backend, so an OpenSSL regression is not hidden in a total.
backend_counts() {
  python3 - "$XML_DIR" "$1" <<'PY'
import sys, os, xml.etree.ElementTree as ET
d, backend = sys.argv[1], sys.argv[2]
p = f = 0
for fn in sorted(os.listdir(d)):
    if not fn.endswith(".xml") or fn.endswith("_openssl.xml") != (backend == "openssl"):
        continue
    try:
        cases = ET.parse(os.path.join(d, fn)).getroot().findall(".//testcase")
    except ET.ParseError:
        f += 1
        continue
    for c in cases:
        if c.find("failure") is not None or c.find("error") is not None:
            f += 1
        elif c.get("status", "run") == "run":
            p += 1
print(f"{p} passed, {f} failed")
PY
}
for backend in ${KTM_VM_BACKENDS:-gnutls openssl}; do
  echo "run-vm-tests: $backend (KTM_VM_KERNEL=$VM_KERNEL): $(backend_counts "$backend")"
done
exit $status
