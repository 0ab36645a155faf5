#!/usr/bin/env bash
# Fetch MathJax 3 (the version the built book loads from its CDN) from the npm registry into
# .cache/mathjax/package, checked against a pinned SHA-256. The browser test serves it in place
# of the CDN, so that it can check that equations render on a machine without internet.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.2.2
SHA256=1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
DEST=.cache/mathjax
if [ -f "$DEST/package/es5/tex-mml-chtml.js" ]; then exit 0; fi
mkdir -p "$DEST"
curl -fsSL -o "$DEST/mathjax.tgz" "https://registry.npmjs.org/mathjax/-/mathjax-$VERSION.tgz"
echo "$SHA256  $DEST/mathjax.tgz" | sha256sum -c --quiet
tar xzf "$DEST/mathjax.tgz" -C "$DEST"
rm "$DEST/mathjax.tgz"
