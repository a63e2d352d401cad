#!/usr/bin/env bash
# The library as an installed package (tests/package_test.cc): stages
# `make install` into a temporary DESTDIR, builds the .deb, then runs the
# package test binary outside Bazel (it calls cc, pkg-config, nm, lintian,
# apt-get). GoogleTest XML goes to $KTM_PKG_XML_DIR (make test counts it).
set -euo pipefail
cd "$(dirname "$0")/.."
bazel build //tests:package_test >&2
PKG_TEST=$(bazel info bazel-bin 2>/dev/null)/tests/package_test
# The staged install and the package reuse the tests' (fastbuild) build;
# `make install` and `make deb` themselves build optimised.
export KTM_BAZEL_FLAGS=""
WORK=$(mktemp -d /tmp/ktm-pkg-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PREFIX=/usr/local LIBDIR=/usr/local/lib DESTDIR=$WORK/stage bash scripts/install.sh >&2
DEB=$(KTM_DEB_OUTDIR=$WORK bash scripts/make-deb.sh)
XML=${KTM_PKG_XML_DIR:-$WORK}/package_test.xml
mkdir -p "$(dirname "$XML")"
KTM_STAGE=$WORK/stage KTM_PREFIX=/usr/local KTM_LIBDIR=/usr/local/lib KTM_DEB=$DEB KTM_SRC=$(pwd) \
  "$PKG_TEST" --gtest_output="xml:$XML" "$@"
