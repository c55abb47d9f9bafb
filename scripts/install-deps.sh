#!/usr/bin/env bash
# Installs what rbuild's builds and tests need on Debian/Ubuntu (run as root): the OCI runtime, the static busybox
# the test images are made of, a registry to push to, and the independent tools the tests check output with.
set -euo pipefail
pkgs=(runc crun passt slirp4netns busybox-static docker-registry skopeo umoci ca-certificates curl git openssh-client tmux
  openssl apache2-utils zstd buildah podman gcc libc6-dev util-linux iproute2 mmdebstrap qemu-user-static uidmap
  fuse-overlayfs libcap2-bin tar binutils)
# (binutils: objcopy, which the SBOM tests use to add a cargo-auditable `.dep-v0` section to a program. The podman
# test of the multi-platform image registers its aarch64 handler in a binfmt_misc instance of its own, a sandboxed
# mount that needs Linux 6.7 or later; nothing is registered on the machine.)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages must not start services while installing (docker-registry's would take port 5000; the tests start
  # their own registries on free ports). A policy-rc.d that says "not now" does that, so nothing has to be stopped
  # afterwards: this script never stops or kills a service it did not start. An existing policy is left alone.
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=true
  fi
  status=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  if $own_policy; then rm -f "$policy"; fi
  [ "$status" -eq 0 ] || exit "$status"
fi
# Multi-platform tests build arm64 images from Debian's arm64 busybox-static. It cannot be installed beside the
# amd64 package (same /bin/busybox), so it is downloaded and its binary unpacked where the tests look for it.
bb_arm64=/usr/local/lib/rbuild-test/arm64/busybox
if [ "$(dpkg --print-architecture)" = amd64 ] && [ ! -x "$bb_arm64" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  dl=$(mktemp -d)
  (cd "$dl" && apt-get download -qq busybox-static:arm64 && dpkg-deb -x busybox-static_*_arm64.deb root)
  install -D -m 0755 "$dl/root/bin/busybox" "$bb_arm64"
  rm -rf "$dl"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install Rust first: https://rustup.rs (rbuild needs Rust 1.89 or newer)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Rootless builds (and the tests that make an unprivileged user) open these as an ordinary user; Debian's udev makes
# them 0666, but some VMs and containers leave them 0600.
for dev in /dev/net/tun /dev/fuse; do
  if [ -c "$dev" ] && [ "$(stat -c %a "$dev")" != 666 ]; then chmod 0666 "$dev"; fi
done
