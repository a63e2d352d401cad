#!/usr/bin/env bash
# make install: the shared library (libktlsmigrate.so.0, only the C API
# exported), the static archive (C and C++), the C header and the neutral C++
# headers, ktls-migrate.pc, the tls-migrate CLI and its man page.
#
# Env: PREFIX (default /usr/local), LIBDIR (default $PREFIX/lib), DESTDIR
# (staging root, default none), KTM_BAZEL_FLAGS (default "-c opt").
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-$PREFIX/lib}
DESTDIR=${DESTDIR:-}
VERSION=$(sed -n 's/^#define KTM_VERSION_STRING "\(.*\)"$/\1/p' base/version.h)
FLAGS=${KTM_BAZEL_FLAGS--c opt}

bazel build $FLAGS //capi:libktlsmigrate.so.0 //cli:tls-migrate >&2
BIN=$(bazel info $FLAGS bazel-bin 2>/dev/null)
OUT=$(dirname "$(dirname "$BIN")")  # .../bazel-out

install -d "$DESTDIR$LIBDIR/pkgconfig" "$DESTDIR$PREFIX/include/ktls-migrate" "$DESTDIR$PREFIX/bin" \
  "$DESTDIR$PREFIX/share/man/man1"

# Shared library + the development symlink.
install -m 0644 "$BIN/capi/libktlsmigrate.so.0" "$DESTDIR$LIBDIR/libktlsmigrate.so.0"
ln -sf libktlsmigrate.so.0 "$DESTDIR$LIBDIR/libktlsmigrate.so"

# Static archive: exactly the objects the shared library was linked from
# (the link's own parameter file lists them; archives are merged whole).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
{
  echo "CREATE $WORK/libktlsmigrate.a"
  grep -E '\.(o|a|lo)$' "$BIN/capi/libktlsmigrate.so.0-2.params" | grep -v '^-' | while read -r f; do
    f="$OUT/${f#bazel-out/}"
    case "$f" in *.o) echo "ADDMOD $f";; *) echo "ADDLIB $f";; esac
  done
  echo "SAVE"
  echo "END"
} > "$WORK/ar.mri"
ar -M < "$WORK/ar.mri"
install -m 0644 "$WORK/libktlsmigrate.a" "$DESTDIR$LIBDIR/libktlsmigrate.a"

# Headers: the C API, and the C++ library's neutral headers (no GnuTLS or
# liburing type: the backend headers stay private).
install -m 0644 include/ktls_migrate.h "$DESTDIR$PREFIX/include/ktls_migrate.h"
for d in base channel certs tls ktls transport util; do
  for h in "$d"/*.h; do
    case "$h" in
      channel/uring_sender.h|certs/credentials_native.h|certs/x509_issue.h|certs/gnutls_util.h|transport/report_json.h) continue;;
    esac
    install -D -m 0644 "$h" "$DESTDIR$PREFIX/include/ktls-migrate/$h"
  done
done

sed -e "s|@PREFIX@|$PREFIX|" -e "s|@LIBDIR@|$LIBDIR|" -e "s|@VERSION@|$VERSION|" packaging/ktls-migrate.pc.in \
  > "$DESTDIR$LIBDIR/pkgconfig/ktls-migrate.pc"
chmod 0644 "$DESTDIR$LIBDIR/pkgconfig/ktls-migrate.pc"

install -m 0755 "$BIN/cli/tls-migrate" "$DESTDIR$PREFIX/bin/tls-migrate"

# Man page from the real --help texts: the overview by help2man, every
# command's own --help as a section.
CLI="$BIN/cli/tls-migrate"
{
  echo "[COMMANDS]"
  for c in send recv tunnel certs probe demo bench; do
    echo ".SS $c"
    echo ".nf"
    if [ "$c" = certs ]; then "$CLI" certs generate --help; else "$CLI" "$c" --help; fi | sed -e 's/\\/\\\\/g' -e 's/^\./\\\&./'
    echo ".fi"
  done
  echo "[SEE ALSO]"
  echo "gnutls-cli(1), openssl(1), qemu(1). The README of ktls-migrate has the design and the benchmarks."
} > "$WORK/man.include"
help2man -N -n "kTLS-aware encrypted migration transport" --version-string="$VERSION" \
  --include "$WORK/man.include" "$CLI" | gzip -9n > "$DESTDIR$PREFIX/share/man/man1/tls-migrate.1.gz"
chmod 0644 "$DESTDIR$PREFIX/share/man/man1/tls-migrate.1.gz"

echo "installed ktls-migrate $VERSION into ${DESTDIR:-/}: $LIBDIR/libktlsmigrate.so.0, $LIBDIR/libktlsmigrate.a, $PREFIX/include/ktls_migrate.h, $LIBDIR/pkgconfig/ktls-migrate.pc, $PREFIX/bin/tls-migrate, $PREFIX/share/man/man1/tls-migrate.1.gz"
