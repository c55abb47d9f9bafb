#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine (as root) and builds an example image: a busybox base image from nothing,
# then an application image on top of it, both into the local store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --bin rbuild
install -m 0755 target/release/rbuild /usr/local/bin/rbuild
rbuild=/usr/local/bin/rbuild
work=$(mktemp -d /var/tmp/rbuild-example.XXXXXX)
cp -r testdata/busybox-base "$work/base" && cp /bin/busybox "$work/base/busybox"
"$rbuild" build -t example/busybox "$work/base"
cp -r testdata/e2e-app "$work/app"
"$rbuild" build -t example/app:1.0 --build-arg BASE=example/busybox "$work/app"
"$rbuild" images
rm -rf "$work"
