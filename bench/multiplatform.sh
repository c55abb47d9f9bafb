#!/usr/bin/env bash
# The two-platform build of issue 15's acceptance Dockerfile, cold: rbuild vs BuildKit 0.25 (dockerd 28.5, containerd
# image store, ../shared/tools/buildkit-newest-up.sh) vs buildah (Debian's, `--platform ... --manifest`), in one run.
# Usage: bench/multiplatform.sh   (as root, on amd64; a few minutes)
#
# The Dockerfile: a `FROM --platform=$BUILDPLATFORM` stage (run once, shared by both targets) and a final stage per
# target whose `RUN uname -m > /arch` runs under QEMU for arm64, FROM a busybox base of amd64 and arm64 (Debian's two
# busybox-static binaries) built by rbuild and pushed as an index to the registry on 127.0.0.1:5000 (which BuildKit
# 0.25 treats as insecure). Every tool has the base before anything is timed (as in bench/run.sh's `cold`); each rep
# is a build with --no-cache (rbuild's store is also new each rep), `--platform linux/amd64,linux/arm64`, into the
# tool's own store (rbuild's store, the docker image store, a buildah manifest list), with no attestations (rbuild
# makes none for a local image; BuildKit's default provenance is turned off so that both do the same work).
# QEMU: the same binfmt_misc handler for all, the static qemu-aarch64 of qemu-user-static with the F flag (so rbuild
# uses the kernel's handler and injects nothing). It is registered if absent and removed at exit if this script
# registered it; a handler that was there is left as it is (and used). binfmt_misc is mounted at
# /proc/sys/fs/binfmt_misc for the run if it is not (handlers live only while it is mounted) and unmounted after.
# Tools are interleaved rep by rep; the table shows every time, the median, and rbuild's median / BuildKit's.
# Target: <= 0.7x BuildKit.
# Env: BENCH_DIR (default /var/tmp/rbuild-bench-multiplatform), REPS (default 3), SKIP_BUILDAH=1, KEEP=1,
#      RBUILD=path/to/rbuild (skip the cargo build), CARGO_TARGET_DIR, REGISTRY (default 127.0.0.1:5000).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$(cd "$repo/.." && pwd)/shared}
work=${BENCH_DIR:-/var/tmp/rbuild-bench-multiplatform}
reps=${REPS:-3}
reg=${REGISTRY:-127.0.0.1:5000}
bb_arm64=/usr/local/lib/rbuild-test/arm64/busybox
qemu=/usr/bin/qemu-aarch64-static
[ "$(id -u)" = 0 ] || { echo "bench/multiplatform.sh must run as root" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "bench/multiplatform.sh builds arm64 on an amd64 machine" >&2; exit 1; }
for f in "$bb_arm64" "$qemu"; do
  [ -x "$f" ] || { echo "needs $f (scripts/install-deps.sh)" >&2; exit 1; }
done

log() { printf '%s\n' "$*" >&2; }
now_ms() { date +%s%3N; }
# The machine's binfmt_misc: mounted for the bench if it is not (its handlers live only while it is mounted
# somewhere: unmounting the last mount removes them), and unmounted again at exit.
bfm=/proc/sys/fs/binfmt_misc
mounted="" registered=""
rm -rf "$work"; mkdir -p "$work"
cleanup() {
  [ -z "$registered" ] || echo -1 >"$bfm/qemu-aarch64" || true
  [ -z "$mounted" ] || umount "$bfm" || true
  buildah rmi -f "bench/mp-app" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

if [ ! -e "$bfm/register" ]; then mount -t binfmt_misc binfmt_misc "$bfm"; mounted=1; fi
if [ -e "$bfm/qemu-aarch64" ]; then
  log "== binfmt_misc: an aarch64 handler is registered already; used as it is:"
  sed 's/^/   /' "$bfm/qemu-aarch64" >&2
else
  # Debian's line names its wrapper with flags OPF; the static emulator with F works inside containers.
  sed "s#:[^:]*:[A-Z]*\$#:$qemu:F#" /usr/lib/binfmt.d/qemu-aarch64.conf | tr -d '\n' >"$bfm/register"
  registered=1
  log "== binfmt_misc: registered qemu-aarch64 ($qemu, F); removed at exit"
fi
"$bb_arm64" true || { echo "the aarch64 handler does not run $bb_arm64" >&2; exit 1; }

if [ -z "${RBUILD:-}" ]; then
  log "== building rbuild (release)"
  (cd "$repo" && cargo build --release -q -p rbuild)
  RBUILD=${CARGO_TARGET_DIR:-$repo/target}/release/rbuild
fi
denv=$(bash "$shared/tools/buildkit-newest-up.sh" | tail -1)
dk() { (eval "$denv"; docker "$@"); }
tools=(rbuild bk25)
[ -n "${SKIP_BUILDAH:-}" ] || ! command -v buildah >/dev/null || tools+=(buildah)

log "== base: busybox for amd64 and arm64, built by rbuild, pushed to $reg as an index"
base=$reg/multiplat-bench/busybox:$$
mkdir -p "$work/base"; cp -r "$repo/testdata/busybox-base/." "$work/base/"; rm -f "$work/base/busybox"
cp /bin/busybox "$work/base/busybox-amd64"; cp "$bb_arm64" "$work/base/busybox-arm64"
sed -i -e 's#^FROM scratch$#FROM scratch\nARG TARGETARCH#' -e 's#^COPY busybox /bin/busybox#COPY busybox-$TARGETARCH /bin/busybox#' \
  "$work/base/Dockerfile"
"$RBUILD" --root "$work/base-store" build --platform linux/amd64,linux/arm64 -t "$base" --push "$work/base" \
  >"$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
ctx=$work/app
mkdir -p "$ctx"
cat >"$ctx/Dockerfile" <<EOF
FROM --platform=\$BUILDPLATFORM $base AS build
RUN echo "built on \$(uname -m)" > /out
FROM $base
ARG TARGETPLATFORM TARGETARCH
COPY --from=build /out /out
RUN uname -m > /arch && echo "\$TARGETPLATFORM \$TARGETARCH" > /target
EOF
platforms=linux/amd64,linux/arm64

# prepare TOOL: untimed: an empty store holding the base (both platforms).
prepare() {
  case $1 in
    rbuild)
      rm -rf "$work/store"
      "$RBUILD" --root "$work/store" build --platform "$platforms" -t bench/mp-warm "$work/base-ref" >/dev/null 2>&1 ;;
    bk25) dk pull -q --platform linux/amd64 "$base" >/dev/null && dk pull -q --platform linux/arm64 "$base" >/dev/null ;;
    buildah)
      buildah rmi -f bench/mp-app >/dev/null 2>&1 || true
      buildah manifest rm bench/mp-app >/dev/null 2>&1 || true
      for p in amd64 arm64; do buildah pull -q --tls-verify=false --platform "linux/$p" "$base" >/dev/null; done ;;
  esac
}
# run TOOL: the timed build.
run() {
  case $1 in
    rbuild) "$RBUILD" --root "$work/store" build --no-cache --platform "$platforms" -t bench/mp-app "$ctx" ;;
    bk25) dk buildx build --network host --no-cache --provenance=false --platform "$platforms" -t bench/mp-app "$ctx" ;;
    buildah) buildah build --runtime runc --network host --tls-verify=false --no-cache --platform "$platforms" \
               --manifest bench/mp-app "$ctx" ;;
  esac >"$work/last-$1.log" 2>&1 || { log "$1 build failed:"; tail -30 "$work/last-$1.log" >&2; return 1; }
}
# check TOOL: the build did what the Dockerfile says (untimed).
check() {
  case $1 in
    rbuild) grep -c 'RUN echo "built on' "$work/last-rbuild.log" | grep -qx 1 ;;
    *) true ;;
  esac
}
# rbuild's untimed base pull: a build of `FROM base` for both platforms, which keeps both under the base's tag.
mkdir -p "$work/base-ref"; printf 'FROM %s\n' "$base" >"$work/base-ref/Dockerfile"

declare -A times
for i in $(seq 1 "$reps"); do
  for t in "${tools[@]}"; do
    prepare "$t" || { log "$t: preparing rep $i failed"; exit 1; }
    sync
    t0=$(now_ms)
    # The docker daemon is shared: another user's prune can remove a snapshot under a running build ("/bin/sh: no
    # such file"). Such a build is retried once after the base is pulled again, and the retry is what is timed.
    if ! run "$t" 2>/dev/null && { [ "$t" != bk25 ] || ! { log "   bk25: retrying rep $i once"; prepare bk25 && t0=$(now_ms) && run bk25; }; }; then
      [ "$t" != rbuild ] || exit 1
      log "   $t: rep $i failed, left out"; continue
    fi
    times[$t]="${times[$t]:-} $(( $(now_ms) - t0 ))"
    check "$t" || { log "$t: rep $i: the \$BUILDPLATFORM stage did not run exactly once"; exit 1; }
  done
  log "   rep $i:$(for t in "${tools[@]}"; do printf ' %s=%sms' "$t" "${times[$t]:+${times[$t]##* }}"; done)"
done

median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '\n%-8s %-28s %8s\n' tool "times (ms)" median
for t in "${tools[@]}"; do printf '%-8s %-28s %8s\n' "$t" "${times[$t]:-}" "$(median "${times[$t]:-0}")"; done
r=$(median "${times[rbuild]}") b=$(median "${times[bk25]:-0}")
ratio=$(awk -v r="$r" -v b="$b" 'BEGIN {if (b > 0) printf "%.2f", r / b; else print "-"}')
ok=$(awk -v x="$ratio" 'BEGIN {print (x != "-" && x <= 0.7) ? "ok" : "MISSED"}')
printf 'rbuild / BuildKit 0.25 = %s (target <= 0.7): %s; %s reps, interleaved; bench took %ss\n' "$ratio" "$ok" "$reps" "$SECONDS"
[ "$ok" = ok ]
