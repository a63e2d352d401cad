#!/usr/bin/env bash
# Runs every test target in each configuration, then prints one line
#   N passed, N failed
# counting GoogleTest cases (from each target's test.xml) over all runs.
# A target that fails without producing cases (crash, build failure, timeout)
# counts as one failed case, so nothing can fail silently.
set -uo pipefail
cd "$(dirname "$0")/.."

# name|bazel flags|targets
RUNS=(
  "plain||//tests/..."
  "asan+ubsan|--config=asan|//tests/..."
  "tsan|--config=tsan|//tests/..."
)
if [ -n "${KTM_TEST_CONFIGS:-}" ]; then
  filtered=()
  for r in "${RUNS[@]}"; do
    case ",$KTM_TEST_CONFIGS," in *",${r%%|*},"*) filtered+=("$r");; esac
  done
  RUNS=("${filtered[@]}")
fi

total_pass=0
total_fail=0
summary=()

count_xml() {
  # Prints "pass fail" for the GoogleTest XML files under $1.
  python3 - "$1" <<'PY'
import sys, os, xml.etree.ElementTree as ET
root = sys.argv[1]
p = f = 0
import re
# run_N_of_M/ directories are left by manual --runs_per_test runs: stale here.
xmls = [os.path.join(d, fn) for d, _, files in os.walk(root, followlinks=True)
        for fn in files if fn.endswith(".xml") and not re.search(r"/run_[0-9]+_of_[0-9]+", d)]
for path in xmls:
    try:
        t = ET.parse(path).getroot()
    except ET.ParseError:
        f += 1
        continue
    cases = t.findall(".//testcase")
    if not cases:
        f += 1
        continue
    for c in cases:
        if c.find("failure") is not None or c.find("error") is not None:
            f += 1
        elif c.get("status", "run") == "run" and c.get("result", "completed") in ("completed", ""):
            p += 1
        # skipped / not run cases count as neither
    # a target whose binary died after some cases: bazel marks the suite failed
    if t.get("errors", "0") not in ("0", "") and not any(
            c.find("error") is not None for c in cases):
        f += 1
print(p, f)
PY
}

for run in "${RUNS[@]}"; do
  IFS='|' read -r name flags targets <<<"$run"
  echo "=== tests: $name ==="
  # shellcheck disable=SC2086
  bazel test $flags $targets
  rc=$?
  logs=$(bazel info $flags bazel-testlogs 2>/dev/null)
  read -r p f < <(count_xml "$logs")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1  # bazel failed (e.g. build error) without a failing case to show for it
  fi
  summary+=("$name: $p passed, $f failed")
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
done

# Runs a script that leaves GoogleTest-style XML in $2's directory and adds
# its counts. $1: label, $2: env var naming the XML dir, rest: the command.
run_external() {
  local label=$1 var=$2
  shift 2
  echo "=== tests: $label ==="
  local dir rc p f
  dir=$(mktemp -d /tmp/ktm-xml-XXXXXX)
  env "$var=$dir" "$@"
  rc=$?
  read -r p f < <(count_xml "$dir")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  summary+=("$label: $p passed, $f failed")
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  rm -rf "$dir"
}

# libFuzzer on the destination's packet parser, for a bounded time.
if [ "${KTM_SKIP_FUZZ:-0}" != 1 ]; then
  run_external "fuzz" KTM_FUZZ_XML_DIR bash scripts/run-fuzz.sh
fi

# kTLS needs a kernel with CONFIG_TLS; the build machines have none, so a
# VM runs those tests (scripts/run-vm-tests.sh), once per kernel in
# KTM_VM_KERNELS (default both: Debian 12's 6.1, which cannot re-key, and
# trixie-backports' 7.3, which can). The 7.3 kernel is fetched first; a
# fetch that fails (no network) is a failed run with its own line, never a
# skipped one. The test binaries are built once: the second VM run's
# `bazel build` finds everything up to date.
run_vm_suites() {
  local k
  for k in ${KTM_VM_KERNELS:-6.1 7.3}; do
    if [ "$k" = 7.3 ] && ! bash scripts/fetch-kernel.sh >/dev/null; then
      echo "run-tests: FAILED: cannot fetch the Linux 7.3 kernel (scripts/fetch-kernel.sh, see above);" \
        "the kTLS suite did not run on 7.3" >&2
      summary+=("kTLS VM (Linux 7.3): 0 passed, 1 failed (kernel fetch failed)")
      total_fail=$((total_fail + 1))
      continue
    fi
    local t0=$SECONDS
    # CI time: on 6.1 the OpenSSL pass covers what differs by library
    # (ktls_vm_test: who installs which direction; interop); the relay
    # suites (transport, fault, tunnel) run with OpenSSL on 7.3 only.
    local only=()
    if [ "$k" = 6.1 ] && [ -z "${KTM_VM_OPENSSL_RUNS+set}" ]; then
      only=(KTM_VM_OPENSSL_RUNS="ktls_vm_test interop_ktls_test")
    fi
    run_external "kTLS VM (Linux $k)" KTM_VM_XML_DIR env "${only[@]}" KTM_VM_KERNEL="$k" bash scripts/run-vm-tests.sh
    summary[-1]+=" in $((SECONDS - t0)) s"
  done
}
if [ "${KTM_SKIP_VM:-0}" != 1 ]; then
  run_vm_suites
fi

# The library as a package: staged make install, the C example built with
# pkg-config alone (TLS, plaintext, ASan), exported symbols, the .deb.
if [ "${KTM_SKIP_PKG:-0}" != 1 ]; then
  run_external "package" KTM_PKG_XML_DIR bash scripts/run-package-tests.sh
fi

# Real QEMU live migrations through `tls-migrate tunnel`, once per QEMU
# version (Debian 12's 7.2 and bookworm-backports' 10.0), each its own line.
if [ "${KTM_SKIP_QEMU:-0}" != 1 ]; then
  for v in ${KTM_QEMU_VERSIONS:-7.2 10.0}; do
    t0=$SECONDS
    run_external "QEMU $v" KTM_QEMU_XML_DIR env KTM_QEMU_VERSIONS="$v" bash scripts/run-qemu-tests.sh
    summary[-1]+=" in $((SECONDS - t0)) s"
  done
fi

echo
for s in "${summary[@]}"; do echo "  $s"; done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
