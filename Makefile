# Quick start: `make demo`, `make test`. Both install what they need first.
.PHONY: deps build demo demo-ktls bench bench-ktls test test-asan test-tsan test-ktls clean

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
	KTM_TEST_CONFIGS=asan+ubsan KTM_SKIP_VM=1 KTM_SKIP_FUZZ=1 bash scripts/run-tests.sh

test-tsan: deps
	KTM_TEST_CONFIGS=tsan KTM_SKIP_VM=1 KTM_SKIP_FUZZ=1 bash scripts/run-tests.sh

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
	KTM_TEST_CONFIGS=none KTM_SKIP_FUZZ=1 bash scripts/run-tests.sh

clean:
	bazel clean
