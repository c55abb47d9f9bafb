#!/usr/bin/env bash
# Push of a 500 MB image (one layer of random data) to a local registry: rbuild's wall time and peak RSS, beside
# `buildah push` of the same image in the same run. Issue #6 asks for rbuild's peak RSS to stay under 150 MB: layers
# are compressed and uploaded as streams, never held whole in memory.
# Usage: bench/push-rss.sh   (as root; a few minutes). Env: BENCH_DIR (default /var/tmp/rbuild-push-bench),
# SIZE_MB (default 500), SKIP_BUILDAH=1, KEEP=1.
# Each push starts from a store where the layer is not compressed yet, so rbuild's time includes its (lazy) gzip,
# as buildah's includes compressing from its own uncompressed storage.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${BENCH_DIR:-/var/tmp/rbuild-push-bench}
size=${SIZE_MB:-500}
[ "$(id -u)" = 0 ] || { echo "bench/push-rss.sh must run as root" >&2; exit 1; }
log() { printf '%s\n' "$*" >&2; }
rm -rf "$work"; mkdir -p "$work"
cleanup() {
  RBUILD_TEST_REGISTRY_DIR=$work/registry bash "$repo/scripts/test-registry.sh" stop >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

log "== building rbuild (release)"
(cd "$repo" && cargo build --release -q -p rbuild)
RBUILD=$repo/target/release/rbuild
eval "$(RBUILD_TEST_REGISTRY_DIR=$work/registry bash "$repo/scripts/test-registry.sh" start)"
reg=$RBUILD_TEST_REGISTRY

log "== making a ${size} MB context of random data"
ctx=$work/ctx; mkdir -p "$ctx/data"
for i in $(seq 1 $((size / 50))); do head -c $((50 * 1024 * 1024)) /dev/urandom > "$ctx/data/part$i"; done
printf 'FROM scratch\nCOPY data/ /data/\n' > "$ctx/Dockerfile"
"$RBUILD" --root "$work/store" build -t "$reg/bench/rbuild:1" "$ctx" >/dev/null 2>&1

# Runs a command, prints "<seconds> <peak RSS in MB>" of it (GNU time's maximum resident set size).
measure() {
  /usr/bin/time -f '%e %M' -o "$work/time.out" "$@" >/dev/null 2>"$work/cmd.err" || { cat "$work/cmd.err" >&2; exit 1; }
  awk '{ printf "%s %.1f\n", $1, $2 / 1024 }' "$work/time.out"
}

log "== rbuild push"
read -r r_time r_rss < <(measure "$RBUILD" --root "$work/store" push "$reg/bench/rbuild:1")

b_time=-; b_rss=-
if [ -z "${SKIP_BUILDAH:-}" ] && command -v buildah >/dev/null; then
  log "== buildah push (the same image, loaded from rbuild's docker archive)"
  "$RBUILD" --root "$work/store" save --compression uncompressed -o "$work/image.tar" "$reg/bench/rbuild:1"
  export CONTAINERS_STORAGE_CONF=$work/storage.conf
  printf '[storage]\ndriver = "overlay"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/cs-run" "$work/cs-root" > "$CONTAINERS_STORAGE_CONF"
  buildah pull -q "docker-archive:$work/image.tar" >/dev/null
  img=$(buildah images -q | head -1)
  read -r b_time b_rss < <(measure buildah push --tls-verify=false "$img" "docker://$reg/bench/buildah:1")
fi

printf '%-16s %10s %14s\n' "push ${size}MB" "time (s)" "peak RSS (MB)"
printf '%-16s %10s %14s\n' rbuild "$r_time" "$r_rss"
printf '%-16s %10s %14s\n' buildah "$b_time" "$b_rss"
awk -v r="$r_rss" 'BEGIN { exit !(r < 150) }' || { echo "rbuild's peak RSS ${r_rss} MB is over 150 MB" >&2; exit 1; }
