#!/usr/bin/env bash
# Builds the packet-parser fuzz target with clang's libFuzzer (+ASan/UBSan)
# and runs it for a bounded time. Writes a one-case GoogleTest-style XML to
# $KTM_FUZZ_XML_DIR so make test counts it. Fails on any crash.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${KTM_FUZZ_SECONDS:-30}
OUT=out/fuzz
mkdir -p "$OUT/corpus"
CXX=$(command -v clang++ || command -v clang++-14)
if [ -z "$CXX" ]; then echo "run-fuzz: clang++ not installed (apt-get install clang)" >&2; exit 1; fi
"$CXX" -std=c++20 -O1 -g -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  tests/fuzz/packet_parser_fuzz.cc transport/protocol.cc base/error.cc -o "$OUT/packet_parser_fuzz" || exit 1
# Valid hello, acks, tunnel header and packet as seeds: past the CRCs.
"$CXX" -std=c++20 -O1 -D_GNU_SOURCE -I. tests/fuzz/make_seeds.cc transport/protocol.cc base/error.cc \
  -o "$OUT/make_seeds" && "$OUT/make_seeds" "$OUT/corpus" || exit 1
log=$OUT/fuzz.log
"$OUT/packet_parser_fuzz" -max_total_time="$SECS" -use_value_profile=1 -print_final_stats=1 \
  -artifact_prefix="$OUT/" "$OUT/corpus" >"$log" 2>&1
rc=$?
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
echo "run-fuzz: $SECS s, ${execs:-?} executions, ${cov:-cov ?}, exit $rc"
if [ -n "${KTM_FUZZ_XML_DIR:-}" ]; then
  mkdir -p "$KTM_FUZZ_XML_DIR"
  if [ "$rc" -eq 0 ]; then body=""; else body="<failure message=\"fuzzer found a crash, see $log\"/>"; fi
  cat >"$KTM_FUZZ_XML_DIR/fuzz.xml" <<XML
<testsuites tests="1" failures="$([ $rc -eq 0 ] && echo 0 || echo 1)"><testsuite name="Fuzz" tests="1">
<testcase name="PacketParser${SECS}s" status="run" result="completed">$body</testcase>
</testsuite></testsuites>
XML
fi
[ "$rc" -eq 0 ] || tail -30 "$log" >&2
exit $rc
