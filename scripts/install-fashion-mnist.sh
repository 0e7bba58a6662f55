#!/usr/bin/env bash
# Fashion-MNIST ships only as the Debian package dataset-fashion-mnist. Install it, hash-checked, where we
# can (root + apt); otherwise say so in one line: benchmarks that need it report it, tests skip.
set -u
DIR=/usr/share/datasets/fashion-mnist
VERSION=0.0~git20200523.55506a9-1
SHA256=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
[ -f "$DIR/train-images-idx3-ubyte.gz" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: Fashion-MNIST not installed (needs root: apt-get install dataset-fashion-mnist); split-fashion and domain-stream will not run"
  exit 0
fi
tmp=$(mktemp -d) && cd "$tmp" || exit 0
if ! apt-get download "dataset-fashion-mnist=$VERSION" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1
  apt-get download "dataset-fashion-mnist=$VERSION" >/dev/null 2>&1 || {
    echo "note: could not download dataset-fashion-mnist $VERSION; split-fashion and domain-stream will not run"; exit 0; }
fi
deb=$(ls dataset-fashion-mnist_*.deb)
echo "$SHA256  $deb" | sha256sum -c --quiet - || { echo "error: $deb does not match its pinned sha256"; exit 1; }
dpkg -i "$deb" >/dev/null && echo "installed Fashion-MNIST into $DIR"
rm -rf "$tmp"
