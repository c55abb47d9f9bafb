#!/usr/bin/env bash
# Remote cache (issue 13): rbuild vs BuildKit 0.25 (dockerd 28.5 + buildx 0.29 with the containerd image store,
# ../shared/tools/buildkit-newest-up.sh), side by side in one run, over one local registry.
#   export-max   runner A, everything built: the warm build with --cache-to type=registry,mode=max to a new ref
#                (minus nothing: the build itself is a no-op, so this is the export)
#   runner-b     runner B: an empty store, --cache-from type=registry, then --push to a new repository
# for the 10-step case and the 20,000-file context case (bench/run.sh's contexts). Reports median ms, and per tool
# the bytes the registry served (blob GETs, from its access log: "down") and the bytes it newly stored (growth of
# its data directory, so mounted and already present blobs count nothing: "up") during the last timed run.
# Usage: bench/remote-cache.sh  (as root). Env: BENCH_DIR (default /var/tmp/rbuild-bench-rc), REPS (default 3),
#        CASES="ten big", KEEP=1.
set -euo pipefail
# shellcheck source=bench/contexts.sh
source "$(dirname "$0")/contexts.sh"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$(cd "$repo/.." && pwd)/shared}
work=${BENCH_DIR:-/var/tmp/rbuild-bench-rc}
reps=${REPS:-3}
[ "$(id -u)" = 0 ] || { echo "bench/remote-cache.sh must run as root" >&2; exit 1; }
log() { printf '%s\n' "$*" >&2; }
rm -rf "$work"; mkdir -p "$work"
regpid=""
# A dockerd of this bench's own (its store is emptied between runs, which must not touch anyone else's).
export BUILDKIT_NEWEST_ROOT=${BUILDKIT_NEWEST_ROOT:-$work-bk}
cleanup() {
  [ -z "$regpid" ] || kill "$regpid" 2>/dev/null || true
  [ ! -f "$BUILDKIT_NEWEST_ROOT/dockerd.pid" ] || kill "$(cat "$BUILDKIT_NEWEST_ROOT/dockerd.pid")" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

log "== building rbuild (release)"
(cd "$repo" && cargo build --release -q -p rbuild)
RBUILD=${CARGO_TARGET_DIR:-$repo/target}/release/rbuild

log "== a registry that logs every request"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry-data
  delete:
    enabled: true
http:
  addr: $reg
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
eval "$(INSECURE=$reg bash "$shared/tools/buildkit-newest-up.sh" | tail -1)"

log "== base image and contexts"
base=$reg/bench/busybox:latest
mkdir -p "$work/base"; cp -r "$repo/testdata/busybox-base/." "$work/base/"; cp /bin/busybox "$work/base/busybox"
"$RBUILD" --root "$work/base-store" build -t "$base" --push "$work/base" >"$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
ten=$work/ctx-ten
ten_context "$ten" "$base"
big=$work/ctx-big
mkdir -p "$big"
big_data "$big/data"
printf 'FROM %s\nCOPY data/ /data/\nRUN ls /data | wc -l > /count\n' "$base" >"$big/Dockerfile"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Bytes the registry received (PUT/PATCH bodies) and served (GET blob responses) since log offset $1.
traffic() {
  tail -c +"$(( $1 + 1 ))" "$work/registry.log" | python3 -c '
import re, sys
up = down = 0
for line in sys.stdin:
    m = re.search(r"\"(GET|PUT|PATCH|POST|HEAD) (\S+) HTTP/[0-9.]+\" (\d+) (\d+)", line)
    if not m:
        continue
    method, uri, status, size = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    if method == "GET" and "/blobs/" in uri:
        down += size
print(down)'
}
logsize() { stat -c %s "$work/registry.log"; }
stored() { du -sb "$work/registry-data" 2>/dev/null | cut -f1; }

rb() { "$RBUILD" --root "$1" build "${@:2}"; }
bk() { docker buildx build --network host --progress quiet "$@"; }
bk_empty() {
  docker buildx prune -af >/dev/null 2>&1 || true
  docker image ls -q | xargs -r docker image rm -f >/dev/null 2>&1 || true
}

declare -A result bytes
cases=${CASES:-ten big}
for c in $cases; do
  ctx=$work/ctx-$c
  log "== $c: runner A (warm) then export mode=max"
  rb "$work/store-a" -t "bench/$c" "$ctx" >"$work/a.log" 2>&1 || { cat "$work/a.log"; exit 1; }
  bk -t "bench/$c" "$ctx" >"$work/a-bk.log" 2>&1 || { cat "$work/a-bk.log"; exit 1; }
  for tool in rbuild buildkit; do
    times=()
    for i in $(seq 1 "$reps"); do
      ref=$reg/cache/$c-$tool-$i:cache
      off=$(logsize) before=$(stored)
      t0=$(now_ms)
      if [ $tool = rbuild ]; then
        rb "$work/store-a" --cache-to "type=registry,ref=$ref,mode=max" "$ctx" >"$work/x.log" 2>&1
      else
        bk --cache-to "type=registry,ref=$ref,mode=max,image-manifest=true,oci-mediatypes=true" "$ctx" >"$work/x.log" 2>&1
      fi || { cat "$work/x.log"; exit 1; }
      times+=($(( $(now_ms) - t0 )))
      bytes[export-$c,$tool]="$(traffic "$off")/$(( $(stored) - before ))"
    done
    result[export-$c,$tool]=$(printf '%s\n' "${times[@]}" | median)
    log "   export-$c $tool: ${times[*]} ms, last run: ${bytes[export-$c,$tool]} bytes down/up"
  done
  log "== $c: runner B (empty store, --cache-from, push)"
  for tool in rbuild buildkit; do
    times=()
    for i in $(seq 1 "$reps"); do
      ref=$reg/cache/$c-$tool-1:cache
      img=$reg/app/$c-$tool-b$i:1
      [ $tool = rbuild ] && rm -rf "$work/store-b" || bk_empty
      off=$(logsize) before=$(stored)
      t0=$(now_ms)
      if [ $tool = rbuild ]; then
        rb "$work/store-b" --cache-from "type=registry,ref=$ref" -t "$img" --push "$ctx" >"$work/b.log" 2>&1
      else
        bk --cache-from "type=registry,ref=$ref" -t "$img" --push "$ctx" >"$work/b.log" 2>&1
      fi || { cat "$work/b.log"; exit 1; }
      times+=($(( $(now_ms) - t0 )))
      bytes[runner-b-$c,$tool]="$(traffic "$off")/$(( $(stored) - before ))"
    done
    result[runner-b-$c,$tool]=$(printf '%s\n' "${times[@]}" | median)
    log "   runner-b-$c $tool: ${times[*]} ms, last run: ${bytes[runner-b-$c,$tool]} bytes down/up"
    [ $tool = rbuild ] && grep -E "remote cache:|pushed" "$work/b.log" >&2 || true
  done
done

printf '\n%-16s %10s %10s %8s %8s %20s %20s\n' case rbuild buildkit ratio target "rbuild-down/up" "buildkit-down/up"
status=0
for c in $cases; do
  for k in export runner-b; do
    target=0.3; [ $k = export ] && target=0.5
    r=${result[$k-$c,rbuild]} b=${result[$k-$c,buildkit]}
    ratio=$(awk -v r="$r" -v b="$b" 'BEGIN {printf "%.2f", r / b}')
    ok=$(awk -v x="$ratio" -v t="$target" 'BEGIN {print (x <= t) ? "ok" : "MISSED"}')
    [ "$ok" = ok ] || status=1
    printf '%-16s %8sms %8sms %8s %6s %-6s %20s %20s\n' "$k-$c" "$r" "$b" "$ratio" "≤$target" "$ok" \
      "${bytes[$k-$c,rbuild]:-}" "${bytes[$k-$c,buildkit]:-}"
  done
done
printf 'bench took %ss\n' "$SECONDS"
exit $status
