#!/usr/bin/env bash
# rbuild vs BuildKit (dockerd 26.1 / BuildKit 0.13, ../shared/tools/buildkit-up.sh) vs buildah (Debian, --layers):
# the same cases, in one run, one table. Usage: bench/run.sh   (as root; takes about 5-8 minutes)
#
# Cases (issue #4):
#   noop             the 10-step Dockerfile (ENV, WORKDIR, 3 COPY, 4 RUN, CMD) rebuilt unchanged
#   bigcontext-warm  COPY data/ /data/ of 20,000 files (200 MB), rebuilt unchanged
#   edit-one         the 10-step build after editing the file its last COPY copies
#   parallel         three stages of `RUN sleep 2 && echo N > /out` copied into a final stage, cold (--no-cache)
#   cold             the 10-step build with the cache ignored (--no-cache; the base image is already local)
#   run-overhead     20 `RUN true` steps, cold (--no-cache): the fixed cost of one container (issue #5)
# Every tool builds FROM the same busybox base (testdata/busybox-base, built by rbuild and pushed to a throwaway
# local registry), pulled into each tool before anything is timed. Each number is the median of REPS runs.
# Env: BENCH_DIR (work dir, default /var/tmp/rbuild-bench), REPS (default 5), SKIP_BUILDAH=1, KEEP=1 (keep BENCH_DIR),
#      CASES="run-overhead cold" (only these cases), RBUILD_BEFORE=path/to/an/older/rbuild (timed as one more tool,
#      "before", to show what a change did in the same run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$(cd "$repo/.." && pwd)/shared}
work=${BENCH_DIR:-/var/tmp/rbuild-bench}
reps=${REPS:-5}
[ "$(id -u)" = 0 ] || { echo "bench/run.sh must run as root (overlayfs, runc)" >&2; exit 1; }

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
store=$work/store

log "== starting a local registry and BuildKit"
eval "$(RBUILD_TEST_REGISTRY_DIR=$work/registry bash "$repo/scripts/test-registry.sh" start)"
reg=$RBUILD_TEST_REGISTRY
eval "$(INSECURE=$reg bash "$shared/tools/buildkit-up.sh" | tail -1)"
have_buildah=1
[ -z "${SKIP_BUILDAH:-}" ] && command -v buildah >/dev/null || have_buildah=0

log "== base image: busybox built by rbuild, pushed to $reg, pulled by every tool"
base=$reg/bench/busybox:latest
mkdir -p "$work/base"; cp -r "$repo/testdata/busybox-base/." "$work/base/"; cp /bin/busybox "$work/base/busybox"
"$RBUILD" --root "$work/base-store" build -t "$base" --push "$work/base" >"$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
"$RBUILD" --root "$store" pull "$base" >/dev/null
docker pull -q "$base" >/dev/null
[ $have_buildah = 0 ] || buildah pull -q --tls-verify=false "$base" >/dev/null

log "== contexts"
ten=$work/ctx-ten
mkdir -p "$ten/src"
echo "a file" >"$ten/a.txt"
for i in $(seq 1 20); do echo "source $i" >"$ten/src/f$i.txt"; done
echo "last 0" >"$ten/last.txt"
cat >"$ten/Dockerfile" <<EOF
FROM $base
ENV APP=bench
WORKDIR /app
COPY a.txt /app/a.txt
COPY src/ /app/src/
RUN echo one > /one
RUN echo two > /two
RUN cat /app/a.txt > /three
RUN ls /app/src > /four
COPY last.txt /app/last.txt
CMD ["sh"]
EOF
par=$work/ctx-parallel
mkdir -p "$par"
cat >"$par/Dockerfile" <<EOF
FROM $base AS s1
RUN sleep 2 && echo 1 > /out
FROM $base AS s2
RUN sleep 2 && echo 2 > /out
FROM $base AS s3
RUN sleep 2 && echo 3 > /out
FROM $base
COPY --from=s1 /out /out1
COPY --from=s2 /out /out2
COPY --from=s3 /out /out3
EOF
big=$work/ctx-big
mkdir -p "$big"
python3 - "$big/data" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(200):
    p = os.path.join(root, f"d{d:03}")
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03}.bin"), "wb") as fh:
            fh.write(os.urandom(10000))
PY
printf 'FROM %s\nCOPY data/ /data/\n' "$base" >"$big/Dockerfile"
runs=$work/ctx-run-overhead
mkdir -p "$runs"
{ echo "FROM $base"; for i in $(seq 1 20); do echo "RUN true"; done; } >"$runs/Dockerfile"

# build TOOL CONTEXT [EXTRA...]: one build, output to a log, fails the bench if the build fails.
build() {
  local tool=$1 ctx=$2; shift 2
  local out=$work/last-$tool.log
  case $tool in
    rbuild) "$RBUILD" --root "$store" build -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
    before) "$RBUILD_BEFORE" --root "$work/store-before" build -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
    buildkit) docker build --network host -q -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
    buildah) buildah bud --layers --network host --tls-verify=false -q -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
  esac >"$out" 2>&1 || { log "$tool build of $ctx failed:"; tail -30 "$out" >&2; exit 1; }
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

tools=(rbuild buildkit)
[ $have_buildah = 0 ] || tools+=(buildah)
if [ -n "${RBUILD_BEFORE:-}" ]; then
  tools+=(before)
  "$RBUILD_BEFORE" --root "$work/store-before" pull "$base" >/dev/null
fi
cases=${CASES:-noop bigcontext-warm edit-one parallel cold run-overhead}
want() { [[ " $cases " == *" $1 "* ]]; }
declare -A result

# timed CASE TOOL REPS BEFORE CONTEXT [EXTRA...]: runs BEFORE (a shell snippet) untimed, then the build, REPS times.
timed() {
  local case=$1 tool=$2 n=$3 before=$4 ctx=$5; shift 5
  local times=()
  for i in $(seq 1 "$n"); do
    I=$i TOOL=$tool eval "$before"
    sync
    local t0; t0=$(now_ms)
    build "$tool" "$ctx" "$@"
    times+=($(( $(now_ms) - t0 )))
  done
  result[$case,$tool]=$(printf '%s\n' "${times[@]}" | median)
  log "   $case $tool: ${times[*]} ms"
}

for tool in "${tools[@]}"; do
  log "== $tool"
  build "$tool" "$ten"  # warm-up: fills the cache
  ! want noop || timed noop "$tool" "$reps" ":" "$ten"
  ! want edit-one || timed edit-one "$tool" "$reps" 'echo "last $TOOL $I" >"$ten/last.txt"' "$ten"
  ! want cold || timed cold "$tool" 3 ":" "$ten" --no-cache
  ! want parallel || timed parallel "$tool" 2 ":" "$par" --no-cache
  ! want run-overhead || timed run-overhead "$tool" 3 ":" "$runs" --no-cache
  if want bigcontext-warm; then
    build "$tool" "$big"  # warm-up
    timed bigcontext-warm "$tool" "$reps" ":" "$big"
  fi
done

printf '\n%-16s %10s %10s %10s %10s %8s %8s\n' case rbuild buildkit buildah before ratio target
status=0
for c in $cases; do
  case $c in
    noop | bigcontext-warm) target=0.5 ;; edit-one | run-overhead) target=0.8 ;; parallel) target=1.1 ;; cold) target=1.0 ;;
  esac
  r=${result[$c,rbuild]} b=${result[$c,buildkit]} h=${result[$c,buildah]:-} o=${result[$c,before]:-}
  ratio=$(awk -v r="$r" -v b="$b" 'BEGIN {printf "%.2f", r / b}')
  ok=$(awk -v x="$ratio" -v t="$target" 'BEGIN {print (x <= t) ? "ok" : "MISSED"}')
  [ "$ok" = ok ] || status=1
  printf '%-16s %8sms %8sms %10s %10s %8s %6s %s\n' "$c" "$r" "$b" "${h:+${h}ms}" "${o:+${o}ms}" "$ratio" "≤$target" "$ok"
done
printf 'bench took %ss\n' "$SECONDS"
exit $status
