# Quick start: `make demo`, `make test`. Both install what they need first.
.PHONY: deps build demo demo-ktls demo-qemu bench bench-ktls bench-qemu stress-qemu test test-asan test-tsan test-ktls test-qemu test-ktls-qemu test-package install deb example clean

deps:
	@bash scripts/install-deps.sh

build: deps
	bazel build //...

demo: deps
	bazel build //cli:tls-migrate
	./bazel-bin/cli/tls-migrate demo

# The kTLS VM's kernel for demo-ktls, bench-ktls and test-ktls: 6.1 (Debian
# 12's own) or 7.3 (trixie-backports, fetched into ~/.cache by
# scripts/fetch-kernel.sh): make test-ktls KERNEL=7.3 (the command line only,
# never the environment). make test runs the kTLS suite on both
# (KTM_VM_KERNELS="6.1 7.3" in scripts/run-tests.sh).
KERNEL = 6.1

# The same demo inside the kTLS VM (Debian's kernel with tls.ko), for hosts
# whose kernel has no TLS module.
demo-ktls: deps
	bazel build //cli:tls-migrate
	KTM_VM_KERNEL=$(KERNEL) KTM_VM_DEMO=1 bash scripts/run-vm-tests.sh

test: deps
	bash scripts/run-tests.sh

test-asan: deps
	KTM_TEST_CONFIGS=asan+ubsan KTM_SKIP_VM=1 KTM_SKIP_FUZZ=1 KTM_SKIP_QEMU=1 KTM_SKIP_PKG=1 bash scripts/run-tests.sh

test-tsan: deps
	KTM_TEST_CONFIGS=tsan KTM_SKIP_VM=1 KTM_SKIP_FUZZ=1 KTM_SKIP_QEMU=1 KTM_SKIP_PKG=1 bash scripts/run-tests.sh

# The installed library, the C example with pkg-config, the .deb (part of make test).
test-package: deps
	KTM_TEST_CONFIGS=none KTM_SKIP_FUZZ=1 KTM_SKIP_VM=1 KTM_SKIP_QEMU=1 bash scripts/run-tests.sh

# Library (libktlsmigrate.so.0 + .a), headers, ktls-migrate.pc, the CLI and
# its man page: make install PREFIX=/usr/local DESTDIR=/tmp/stage
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
install: deps
	PREFIX=$(PREFIX) LIBDIR=$(LIBDIR) DESTDIR=$(DESTDIR) bash scripts/install.sh

# A Debian 12 package: apt-get install ./ktls-migrate_*.deb
deb: deps
	bash scripts/make-deb.sh

# The C example against an installed library (make install or the .deb):
# plain cc and pkg-config, nothing from this build system.
example:
	cc -std=c99 -O2 -Wall examples/migrate_self.c $$(pkg-config --cflags --libs ktls-migrate) -lpthread -o examples/migrate_self
	./examples/migrate_self

# QEMU postcopy recovery through two kTLS tunnel ends, inside the kTLS VM
# (a real QEMU guest under TCG in the TCG VM: slow, so not in make test).
test-ktls-qemu: deps
	KTM_VM_QEMU=1 KTM_VM_ONLY=qemu_postcopy_ktls_test KTM_VM_KERNEL=$(KERNEL) bash scripts/run-vm-tests.sh

# Real QEMU live migrations through `tls-migrate tunnel` (also part of make test).
test-qemu: deps
	KTM_TEST_CONFIGS=none KTM_SKIP_FUZZ=1 KTM_SKIP_VM=1 KTM_SKIP_PKG=1 bash scripts/run-tests.sh

# One real QEMU live migration through the tunnel, with a short summary.
demo-qemu: deps
	bash scripts/run-qemu-tests.sh --gtest_filter=QemuTunnel.LiveMigrationMultifdOff

# QEMU migrations side by side: plain UNIX, QEMU's own TLS, our tunnel, a
# socat OpenSSL tunnel; with and without multifd; medians of 3.
bench-qemu: deps
	KTM_QEMU_BENCH=1 KTM_BAZEL_FLAGS="-c opt" bash scripts/run-qemu-tests.sh --gtest_filter=QemuBench.*

# Many multifd QEMU migrations, through the tunnel and direct, every one's
# RAM compared page by page (RUNS=N each, default 10). Run it beside a CPU
# hog to look for load-dependent differences (README: Using it with QEMU).
stress-qemu: deps
	KTM_QEMU_STRESS=$${RUNS:-10} KTM_BAZEL_FLAGS="-c opt" bash scripts/run-qemu-tests.sh --gtest_filter=QemuStress.*

# Every mode side by side (see README: Benchmark).
bench: deps
	bazel build -c opt //cli:tls-migrate
	./bazel-bin/cli/tls-migrate bench --size 1G --channels 1,4 --rss-size 4G --json bench.json --png bench.png

# The TLS modes, kTLS included, side by side inside the kTLS VM (emulated:
# only the ratios within that run mean anything).
bench-ktls: deps
	KTM_VM_KERNEL=$(KERNEL) KTM_VM_BENCH=1 bash scripts/run-vm-tests.sh

# kTLS tests only, in a VM running the one kernel KERNEL names.
test-ktls: deps
	KTM_VM_KERNELS="$(KERNEL)" KTM_TEST_CONFIGS=none KTM_SKIP_FUZZ=1 KTM_SKIP_QEMU=1 KTM_SKIP_PKG=1 bash scripts/run-tests.sh

clean:
	bazel clean
