# Quick start: `make demo`, `make test`. Both install what they need first.
.PHONY: deps build demo test test-asan test-tsan test-ktls clean

deps:
	@bash scripts/install-deps.sh

build: deps
	bazel build //...

demo: deps
	bazel build //tools:zc_stream_demo
	./bazel-bin/tools/zc_stream_demo 256

test: deps
	bash scripts/run-tests.sh

test-asan: deps
	KTM_TEST_CONFIGS=asan+ubsan KTM_SKIP_VM=1 bash scripts/run-tests.sh

test-tsan: deps
	KTM_TEST_CONFIGS=tsan KTM_SKIP_VM=1 bash scripts/run-tests.sh

# kTLS tests only, in a VM running Debian's kernel (CONFIG_TLS=m).
test-ktls: deps
	KTM_TEST_CONFIGS=none bash scripts/run-tests.sh

clean:
	bazel clean
