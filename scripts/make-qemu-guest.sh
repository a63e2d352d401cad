#!/usr/bin/env bash
# Builds the initramfs of the small live guest used by the QEMU migration
# tests (tests/qemu_test.cc): busybox-static and an /init that fills
# /dev/shm with random data (ktm_fill=MiB on the kernel command line,
# default 800) and then keeps rewriting 4 MiB of it every second, printing
# "KTM-GUEST: TICK n" on the serial console each time. So the guest is
# still dirtying memory while it migrates, and its console shows whether it
# runs after the switch-over.
#
# Usage: make-qemu-guest.sh OUT.cpio.gz
set -euo pipefail
OUT=$1
WORK=$(mktemp -d /tmp/ktm-guest-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"/{bin,proc,sys,dev,tmp}
cp /bin/busybox "$WORK/bin/busybox"
for t in sh mount mkdir dd sleep cat echo; do ln -s busybox "$WORK/bin/$t"; done
cat >"$WORK/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
mount -t tmpfs -o size=95% tmpfs /dev/shm
FILL=800
for a in $(cat /proc/cmdline); do
  case "$a" in ktm_fill=*) FILL=${a#ktm_fill=};; esac
done
echo "KTM-GUEST: filling $FILL MiB of /dev/shm with random data"
dd if=/dev/urandom of=/dev/shm/fill bs=1M count="$FILL" 2>/dev/null
echo "KTM-GUEST: FILLED"
i=0
while true; do
  dd if=/dev/urandom of=/dev/shm/fill bs=1M count=4 seek=$(( (i * 4) % FILL )) conv=notrunc 2>/dev/null
  echo "KTM-GUEST: TICK $i"
  i=$((i + 1))
  sleep 1
done
INIT
chmod +x "$WORK/init"
(cd "$WORK" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT"
