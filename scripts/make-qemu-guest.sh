#!/usr/bin/env bash
# Builds the initramfs of the small live guest used by the QEMU migration
# tests (tests/qemu_test.cc): busybox-static and an /init that fills
# /dev/shm with random data (ktm_fill=MiB on the kernel command line,
# default 800) and then keeps rewriting 4 MiB of it every second, printing
# "KTM-GUEST: TICK n" on the serial console each time. So the guest is
# still dirtying memory while it migrates, and its console shows whether it
# runs after the switch-over.
#
# Self-check (ktm_check=MiB, default 0 = off): at fill time the guest also
# writes a second region of random data, /dev/shm/check.0 .. check.N-1 of
# 1 MiB each, that is never rewritten, and records each chunk's MD5. Every
# ktm_check_every ticks (default 5) it re-reads ALL chunks and prints
# "KTM-GUEST: CHECK START pass p" then "KTM-GUEST: CHECK OK n chunks (pass p)"
# or "KTM-GUEST: CHECK FAILED chunk i ... (pass p)". On a postcopy
# destination that re-read faults every page not yet received over the
# return path: a START and its OK on the destination's console are the
# integrity check of a running destination.
#
# Usage: make-qemu-guest.sh OUT.cpio.gz
set -euo pipefail
OUT=$1
WORK=$(mktemp -d /tmp/ktm-guest-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"/{bin,proc,sys,dev,tmp}
cp /bin/busybox "$WORK/bin/busybox"
for t in sh mount mkdir dd sleep cat echo md5sum grep sed; do ln -s busybox "$WORK/bin/$t"; done
cat >"$WORK/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
mount -t tmpfs -o size=95% tmpfs /dev/shm
FILL=800 CHECK=0 EVERY=5
for a in $(cat /proc/cmdline); do
  case "$a" in
    ktm_fill=*) FILL=${a#ktm_fill=};;
    ktm_check=*) CHECK=${a#ktm_check=};;
    ktm_check_every=*) EVERY=${a#ktm_check_every=};;
  esac
done
echo "KTM-GUEST: filling $FILL MiB of /dev/shm with random data"
dd if=/dev/urandom of=/dev/shm/fill bs=1M count="$FILL" 2>/dev/null
# The self-check region: written once, never again; its sums live in the
# initramfs (guest RAM too, so they migrate with it).
c=0
while [ "$c" -lt "$CHECK" ]; do
  dd if=/dev/urandom of=/dev/shm/check.$c bs=1M count=1 2>/dev/null
  c=$((c + 1))
done
if [ "$CHECK" -gt 0 ]; then
  (cd /dev/shm && md5sum check.* >/check.md5)
  echo "KTM-GUEST: CHECK REGION $CHECK MiB recorded"
fi
pass=0
# Re-reads every chunk; busybox md5sum -c says "check.N: OK" per good chunk
# and names each failing one. OK only when every chunk said OK (a check that
# read nothing must not pass).
verify() {
  pass=$((pass + 1))
  echo "KTM-GUEST: CHECK START pass $pass"
  out=$(cd /dev/shm && md5sum -c /check.md5 2>&1)
  ok=$(echo "$out" | grep -c ': OK$')
  if [ "$ok" -eq "$CHECK" ]; then
    echo "KTM-GUEST: CHECK OK $ok chunks (pass $pass)"
  else
    echo "$out" | grep -v ': OK$' | sed "s/^check\.\([0-9]*\)\(.*\)/KTM-GUEST: CHECK FAILED chunk \1\2 (pass $pass)/"
    echo "KTM-GUEST: CHECK FAILED only $ok of $CHECK chunks verified (pass $pass)"
  fi
}
echo "KTM-GUEST: FILLED"
i=0
while true; do
  dd if=/dev/urandom of=/dev/shm/fill bs=1M count=4 seek=$(( (i * 4) % FILL )) conv=notrunc 2>/dev/null
  echo "KTM-GUEST: TICK $i"
  if [ "$CHECK" -gt 0 ] && [ $((i % EVERY)) -eq 0 ]; then verify; fi
  i=$((i + 1))
  sleep 1
done
INIT
chmod +x "$WORK/init"
(cd "$WORK" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT"
