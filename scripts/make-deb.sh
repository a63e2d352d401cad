#!/usr/bin/env bash
# make deb: a Debian 12 package built from the tree with dpkg-deb:
# ktls-migrate_VERSION-1_amd64.deb with the CLI, its man page, the shared
# library, the static archive, the headers and the pkg-config file.
# Install with: apt-get install ./ktls-migrate_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^#define KTM_VERSION_STRING "\(.*\)"$/\1/p' base/version.h)
ARCH=$(dpkg --print-architecture)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
OUTDIR=${KTM_DEB_OUTDIR:-.}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

PREFIX=/usr LIBDIR=/usr/lib/$MULTIARCH DESTDIR=$STAGE bash scripts/install.sh >&2
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$STAGE/usr/lib/$MULTIARCH/libktlsmigrate.so.0"
strip --remove-section=.comment --remove-section=.note "$STAGE/usr/bin/tls-migrate"
strip --strip-debug "$STAGE/usr/lib/$MULTIARCH/libktlsmigrate.a"

DOC=$STAGE/usr/share/doc/ktls-migrate
install -d "$DOC" "$STAGE/DEBIAN"
cat > "$DOC/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ktls-migrate
Source: https://example.invalid/ktls-migrate

Files: *
Copyright: 2026 the ktls-migrate authors
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.
COPY
DATE=$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
{
  echo "ktls-migrate ($VERSION-1) unstable; urgency=medium"
  echo
  echo "  * Package built from the source tree (make deb)."
  echo
  echo " -- ktls-migrate developers <ktls-migrate@example.invalid>  $DATE"
} | gzip -9n > "$DOC/changelog.Debian.gz"
chmod 0644 "$DOC/copyright" "$DOC/changelog.Debian.gz"

SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CTRL
Package: ktls-migrate
Version: $VERSION-1
Architecture: $ARCH
Maintainer: ktls-migrate developers <ktls-migrate@example.invalid>
Installed-Size: $SIZE
Depends: libc6 (>= 2.36), libgcc-s1 (>= 3.0), libstdc++6 (>= 12), libgnutls30 (>= 3.7.9), libssl3 (>= 3.0.0), liburing2 (>= 2.3), libxxhash0 (>= 0.8.1)
Section: net
Priority: optional
Homepage: https://example.invalid/ktls-migrate
Description: kTLS-aware encrypted migration transport
 Moves memory images between hosts over several TLS channels whose sessions
 move into the kernel (kTLS) where the kernel can take them, with zero-copy
 writes and an end-to-end digest; userspace TLS otherwise, with the reason
 reported. Contains the tls-migrate command (send, recv, tunnel for
 unmodified tools such as QEMU, probe, demo, bench), the libktlsmigrate
 shared library with its C API, the static archive and the headers.
CTRL
echo "libktlsmigrate 0 ktls-migrate (>= $VERSION)" > "$STAGE/DEBIAN/shlibs"
echo "activate-noawait ldconfig" > "$STAGE/DEBIAN/triggers"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/shlibs" "$STAGE/DEBIAN/triggers"
( cd "$STAGE" && find usr -type f -exec md5sum {} + | sort -k2 ) > "$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums"
find "$STAGE" -type d -exec chmod 0755 {} +
DEB="$OUTDIR/ktls-migrate_${VERSION}-1_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >&2
echo "$DEB"
