# Quick start: `make demo`, `make test`. Both install what they need first.
.PHONY: deps build demo demo-ktls demo-qemu bench bench-ktls bench-qemu test test-asan test-tsan test-ktls test-qemu clean

deps:
	@bash scripts/install-deps.sh

build: deps
	bazel build //...

demo: deps
	bazel build //cli:tls-migrate
	./bazel-bin/cli/tls-migrate demo

# The same demo inside the kTLS VM (Debian's kernel with tls.ko), for hosts
# whose kernel has no TLS module.
demo-ktls: deps
	bazel build //cli:tls-migrate
	KTM_VM_DEMO=1 bash scripts/run-vm-tests.sh

test: deps
	bash scripts/run-tests.sh

test-asan: deps
	KTM_TEST_CONFIGS=asan+ubsan KTM_SKIP_VM=1 KTM_SKIP_FUZZ=1 KTM_SKIP_QEMU=1 bash scripts/run-tests.sh

test-tsan: deps
	KTM_TEST_CONFIGS=tsan KTM_SKIP_VM=1 KTM_SKIP_FUZZ=1 KTM_SKIP_QEMU=1 bash scripts/run-tests.sh

# Real QEMU live migrations through `tls-migrate tunnel` (also part of make test).
test-qemu: deps
	KTM_TEST_CONFIGS=none KTM_SKIP_FUZZ=1 KTM_SKIP_VM=1 bash scripts/run-tests.sh

# One real QEMU live migration through the tunnel, with a short summary.
demo-qemu: deps
	bash scripts/run-qemu-tests.sh --gtest_filter=QemuTunnel.LiveMigrationMultifdOff

# QEMU migrations side by side: plain UNIX, QEMU's own TLS, our tunnel, a
# socat OpenSSL tunnel; with and without multifd; medians of 3.
bench-qemu: deps
	KTM_QEMU_BENCH=1 KTM_BAZEL_FLAGS="-c opt" bash scripts/run-qemu-tests.sh --gtest_filter=QemuBench.*

# Every mode side by side (see README: Benchmark).
bench: deps
	bazel build -c opt //cli:tls-migrate
	./bazel-bin/cli/tls-migrate bench --size 1G --channels 1,4 --rss-size 4G --json bench.json --png bench.png

# The TLS modes, kTLS included, side by side inside the kTLS VM (emulated:
# only the ratios within that run mean anything).
bench-ktls: deps
	KTM_VM_BENCH=1 bash scripts/run-vm-tests.sh

# kTLS tests only, in a VM running Debian's kernel (CONFIG_TLS=m).
test-ktls: deps
	KTM_TEST_CONFIGS=none KTM_SKIP_FUZZ=1 KTM_SKIP_QEMU=1 bash scripts/run-tests.sh

clean:
	bazel clean
