#!/usr/bin/env bash
# rbuild vs BuildKit 0.25 (dockerd 28.5, containerd image store, ../shared/tools/buildkit-newest-up.sh) vs BuildKit
# 0.13 (dockerd 26.1, overlay2, ../shared/tools/buildkit-up.sh) vs buildah (Debian, --layers): the same cases, in
# one run, one table. Usage: bench/run.sh   (as root; about 15-25 minutes on 2 shared cores)
#
# Cases (issues #4, #16):
#   noop             the 10-step Dockerfile (ENV, WORKDIR, 3 COPY, 4 RUN, CMD) rebuilt unchanged
#   edit-one         the 10-step build after editing the file its last COPY copies
#   cold             the 10-step build with the cache ignored (--no-cache; the base image is already local)
#   parallel         three stages of `RUN sleep 2 && echo N > /out` copied into a final stage, cold (--no-cache)
#   run-overhead     20 `RUN true` steps, cold (--no-cache): the fixed cost of one container (issue #5)
#   bigcontext-warm  COPY data/ /data/ of 20,000 files (200 MB), rebuilt unchanged
#   bigcontext-cold  the same build FROM scratch with an empty store/cache (what a fresh CI runner does)
#   pull             pull and unpack a 300 MB image (3 layers of random data) from the local registry into an empty
#                    store (rbuild: a build FROM it that adds one file, so its layers are unpacked as docker's are)
#   push             push a 200 MB image (2 layers of random data) to an emptied registry
#   app-cold         a small Flask app (bench/contexts.sh app_context) on a Debian 12 + python3 base built by the
#                    bench from an mmdebstrap root: `pip install` of 4 pinned packages from PyPI through a cache mount
#                    (warm, as on a CI runner that keeps it) with the CA bundle as a secret, then the source layer;
#                    every step rerun (--no-cache)
#   app-edit         the same app rebuilt after a one-line edit of its source (the dependency layer is cached)
# Tools are interleaved rep by rep (every tool's rep 1, then every tool's rep 2, ...), so a noisy minute on the shared
# machine hits all of them. Every case runs REPS times (default 5); the table shows min and median per tool, the
# ratio of rbuild's median to the best BuildKit's median, and rbuild's peak RSS in the case (/usr/bin/time -v).
# Three cases are bounded by work no builder does faster, and also time that work alone as "floor" (rep by rep with the
# tools): push, the registry taking the same layer blobs uploaded by curl (one monolithic PUT each, side by side);
# app-cold, both RUN steps' commands (pip install with the same warm cache, compileall, the imports) run by chroot
# in an overlay of the base image's root; app-edit, the last RUN step's commands in a chroot of the app image. The table then
# adds "over floor": (rbuild - floor) / (best BuildKit - floor), the part of the time the builders control.
# Every tool builds FROM the same busybox base (testdata/busybox-base, built by rbuild and pushed to a throwaway local
# registry), pulled into each tool before anything is timed.
# Env: BENCH_DIR (work dir, default /var/tmp/rbuild-bench), BENCH_CACHE (kept between runs: the Debian root of the
#      app cases, default /var/tmp/rbuild-bench-cache), CA_BUNDLE (the app cases' secret, default
#      /etc/ssl/certs/ca-certificates.crt), REPS (default 5), SKIP_BUILDAH=1, SKIP_BK13=1,
#      SKIP_BK25=1, KEEP=1 (keep BENCH_DIR), CASES="run-overhead cold" (only these cases),
#      RBUILD_BEFORE=path/to/an/older/rbuild (timed as one more tool, "before", to show what a change did, in the
#      cases of BEFORE_CASES, default all),
#      RBUILD=path/to/rbuild (skip the cargo build), CARGO_TARGET_DIR (where cargo puts it).
set -euo pipefail
# shellcheck source=bench/contexts.sh
source "$(dirname "$0")/contexts.sh"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared=${SHARED_DIR:-$(cd "$repo/.." && pwd)/shared}
work=${BENCH_DIR:-/var/tmp/rbuild-bench}
reps=${REPS:-5}
[ "$(id -u)" = 0 ] || { echo "bench/run.sh must run as root (overlayfs, runc)" >&2; exit 1; }

log() { printf '%s\n' "$*" >&2; }
rm -rf "$work"; mkdir -p "$work"
cleanup() {
  ! declare -F pip_root_down >/dev/null || pip_root_down
  for r in registry pushreg; do
    RBUILD_TEST_REGISTRY_DIR=$work/$r bash "$repo/scripts/test-registry.sh" stop >/dev/null 2>&1 || true
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${RBUILD:-}" ]; then
  log "== building rbuild (release)"
  (cd "$repo" && cargo build --release -q -p rbuild)
  RBUILD=${CARGO_TARGET_DIR:-$repo/target}/release/rbuild
fi
store=$work/store

log "== starting local registries and BuildKit 0.13 / 0.25"
eval "$(RBUILD_TEST_REGISTRY_DIR=$work/registry bash "$repo/scripts/test-registry.sh" start)"
reg=$RBUILD_TEST_REGISTRY
eval "$(RBUILD_TEST_REGISTRY_DIR=$work/pushreg bash "$repo/scripts/test-registry.sh" start)"
pushreg=$RBUILD_TEST_REGISTRY
declare -A denv
tools=(rbuild)
if [ -z "${SKIP_BK25:-}" ]; then
  denv[bk25]=$(bash "$shared/tools/buildkit-newest-up.sh" | tail -1)
  tools+=(bk25)
fi
if [ -z "${SKIP_BK13:-}" ]; then
  denv[bk13]=$(flock -o /tmp/rbuild-buildkit-up.lock bash "$shared/tools/buildkit-up.sh" | tail -1)
  tools+=(bk13)
fi
[ -n "${SKIP_BUILDAH:-}" ] || ! command -v buildah >/dev/null || tools+=(buildah)
# dk TOOL ARGS...: the docker CLI of that daemon (loopback registries are insecure by default for both).
dk() { local t=$1; shift; (eval "${denv[$t]}"; docker "$@"); }
is_docker() { [ "$1" = bk13 ] || [ "$1" = bk25 ]; }

log "== base image: busybox built by rbuild, pushed to $reg, pulled by every tool"
base=$reg/bench/busybox:latest
mkdir -p "$work/base"; cp -r "$repo/testdata/busybox-base/." "$work/base/"; cp /bin/busybox "$work/base/busybox"
"$RBUILD" --root "$work/base-store" build -t "$base" --push "$work/base" >"$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }

log "== contexts"
ten=$work/ctx-ten
ten_context "$ten" "$base"
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
big_data "$big/data"
printf 'FROM %s\nCOPY data/ /data/\n' "$base" >"$big/Dockerfile"
bigcold=$work/ctx-bigcold
mkdir -p "$bigcold"; cp -r "$big/data" "$bigcold/data"
printf 'FROM scratch\nCOPY data/ /data/\n' >"$bigcold/Dockerfile"
runs=$work/ctx-run-overhead
mkdir -p "$runs"
{ echo "FROM $base"; for i in $(seq 1 20); do echo "RUN true"; done; } >"$runs/Dockerfile"
# layered CONTEXT N: N layers of 100 MB of random data (incompressible, so gzip cannot shrink the work away).
layered() {
  local ctx=$1 n=$2
  mkdir -p "$ctx"; echo "FROM scratch" >"$ctx/Dockerfile"
  for i in $(seq 1 "$n"); do
    head -c 100000000 /dev/urandom >"$ctx/layer$i.bin"; echo "COPY layer$i.bin /layer$i.bin" >>"$ctx/Dockerfile"
  done
}
pullimg=$reg/bench/pull300:latest
pushctx=$work/ctx-push
if [[ " ${CASES:-pull} " == *" pull "* ]]; then
  layered "$work/ctx-pull" 3
  "$RBUILD" --root "$work/base-store" build -t "$pullimg" --push "$work/ctx-pull" >"$work/pull.log" 2>&1 || { cat "$work/pull.log"; exit 1; }
  pullctx=$work/ctx-pull-use; mkdir -p "$pullctx"; echo x >"$pullctx/marker"
  printf 'FROM %s\nCOPY marker /marker\n' "$pullimg" >"$pullctx/Dockerfile"
fi
[[ " ${CASES:-push} " != *" push "* ]] || layered "$pushctx" 2
pybase=$reg/bench/debian-python:latest
app=$work/ctx-app
ca_secret=id=ca,src=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [[ " ${CASES:-app-cold} " == *" app-"* ]]; then
  log "== app base: Debian 12 + python3 from mmdebstrap (cached in ${BENCH_CACHE:-/var/tmp/rbuild-bench-cache})"
  debian_python_tar "${BENCH_CACHE:-/var/tmp/rbuild-bench-cache}/debian-python.tar"
  mkdir -p "$work/ctx-pybase"
  cp "${BENCH_CACHE:-/var/tmp/rbuild-bench-cache}/debian-python.tar" "$work/ctx-pybase/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n' >"$work/ctx-pybase/Dockerfile"
  "$RBUILD" --root "$work/base-store" build -t "$pybase" --push "$work/ctx-pybase" >"$work/pybase.log" 2>&1 || { cat "$work/pybase.log"; exit 1; }
  rm -f "$work/ctx-pybase/rootfs.tar"
  app_context "$app" "$pybase"
fi

# build TOOL CONTEXT [EXTRA...]: one build, output to a log, fails the bench if the build fails.
build() {
  local tool=$1 ctx=$2; shift 2
  local out=$work/last-$tool.log
  case $tool in
    rbuild) /usr/bin/time -f %M -o "$work/rss" "$RBUILD" --root "$store" build -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
    before) "$RBUILD_BEFORE" --root "$work/store-before" build -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
    bk13 | bk25) dk "$tool" build --network host -q -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
    buildah) buildah bud --runtime runc --layers --network host --tls-verify=false -q -t "bench/$(basename "$ctx")" "$@" "$ctx" ;;
  esac >"$out" 2>&1 || { log "$tool build of $ctx failed:"; tail -30 "$out" >&2; return 1; }
}
# The docker daemons are shared: another user's prune can remove a snapshot under a running build ("/bin/sh: no
# such file"). Such a docker build is retried once (and the retry is what is timed; it says so on stderr).
build_retry() {
  local tool=$1
  if is_docker "$tool"; then
    build "$@" 2>/dev/null || { log "   $tool: retrying a failed build once"; dk "$tool" pull -q "$base" >/dev/null; build "$@"; }
  else
    build "$@"
  fi
}
# forget TOOL: an empty store for the next build (untimed). rbuild's store is its own and is deleted; the docker
# daemons are shared with other users, so they are never pruned: their builds run with --no-cache from a context
# directory of a new name, which BuildKit has no snapshot of (its local-source cache is keyed by the directory).
forget() {
  local tool=$1 i=$2 moved=$work/ctx-bigcold-$1-$2
  case $tool in
    rbuild) rm -rf "$store" ;;
    before) rm -rf "$work/store-before" ;;
  esac
  mv "$bigcold" "$moved"; bigcold=$moved
}
# with_base TOOL: the busybox base is in the tool's store (after a forget).
with_base() {
  case $1 in
    rbuild) "$RBUILD" --root "$store" pull "$base" >/dev/null ;;
    before) "$RBUILD_BEFORE" --root "$work/store-before" pull "$base" >/dev/null ;;
    bk13 | bk25) dk "$1" pull -q "$base" >/dev/null ;;
    buildah) buildah pull -q --tls-verify=false "$base" >/dev/null ;;
  esac
}
pull_image() {
  local tool=$1
  case $tool in
    rbuild) /usr/bin/time -f %M -o "$work/rss" "$RBUILD" --root "$work/pull-store" build -t bench/pulled "$pullctx" ;;
    before) "$RBUILD_BEFORE" --root "$work/pull-store-before" build -t bench/pulled "$pullctx" ;;
    bk13 | bk25) dk "$tool" pull -q "$pullimg" ;;
    buildah) buildah pull -q --tls-verify=false "$pullimg" ;;
  esac >"$work/last-$tool.log" 2>&1 || { log "$tool pull failed:"; tail -30 "$work/last-$tool.log" >&2; return 1; }
}
unpull_image() {
  case $1 in
    rbuild) rm -rf "$work/pull-store" ;;
    before) rm -rf "$work/pull-store-before" ;;
    bk13 | bk25) dk "$1" image rm -f "$pullimg" >/dev/null 2>&1 || true ;;
    buildah) buildah rmi -f "$pullimg" >/dev/null 2>&1 || true ;;
  esac
}
push_image() {
  local tool=$1 ref=$pushreg/bench/push-$1:latest
  case $tool in
    rbuild) /usr/bin/time -f %M -o "$work/rss" "$RBUILD" --root "$store" push "$ref" ;;
    before) "$RBUILD_BEFORE" --root "$work/store-before" push "$ref" ;;
    bk13 | bk25) dk "$tool" push -q "$ref" ;;
    buildah) buildah push -q --tls-verify=false "$ref" ;;
  esac >"$work/last-$tool.log" 2>&1 || { log "$tool push failed:"; tail -30 "$work/last-$tool.log" >&2; return 1; }
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

if [ -n "${RBUILD_BEFORE:-}" ]; then tools+=(before); fi
cases=${CASES:-noop edit-one cold parallel run-overhead bigcontext-warm bigcontext-cold pull push app-cold app-edit}
want() { [[ " $cases " == *" $1 "* ]]; }
declare -A times rss

# prepare CASE TOOL REP: untimed, before each timed rep. run CASE TOOL: the timed part.
prepare() {
  local c=$1 t=$2 i=$3
  case $c in
    edit-one) echo "last $t $i" >"$ten/last.txt" ;;
    bigcontext-cold) forget "$t" "$i" ;;
    pull) unpull_image "$t" ;;
    push) rm -rf "$work/pushreg/data" ;;
    app-cold) [ "$t" != floor ] || pip_root_up ;;
    app-edit)
      if [ "$t" = floor ]; then
        sed -i "s/^GREETING = .*/GREETING = \"hello $t $i\"/" "$work/app-root/app/main.py"
        rm -rf "$work/app-root/app/__pycache__"
      else
        sed -i "s/^GREETING = .*/GREETING = \"hello $t $i\"/" "$app/app/main.py"
      fi ;;
  esac
}
# The floor of a case (see the header): the same work without a builder.
floor() {
  case $1 in
    push)
      for blob in "${floor_blobs[@]}"; do upload_blob "$pushreg" bench/push-floor "$blob" & done
      wait ;;
    # shellcheck disable=SC2086 # $app_env is the Dockerfile's NAME=VALUE list
    app-edit) chroot "$work/app-root" /usr/bin/env -i "${floor_env[@]}" $app_env /bin/sh -c "$app_run" ;;
    # shellcheck disable=SC2086
    app-cold)
      chroot "$work/pip-merged" /usr/bin/env -i "${floor_env[@]}" $app_env /bin/sh -c \
        "cd /app && pip install --cert /run/secrets/ca -r requirements.txt && $app_run" ;;
  esac
}
# pip_root_down / pip_root_up: app-cold's floor runs in an overlay of the base image's root (with the requirements,
# the warm pip cache and the CA bundle bound in), fresh for each rep.
pip_root_down() {
  for m in run/secrets/ca root/.cache/pip ""; do
    ! mountpoint -q "$work/pip-merged/$m" 2>/dev/null || umount "$work/pip-merged/$m"
  done
  rm -rf "$work/pip-upper" "$work/pip-work"
}
pip_root_up() {
  pip_root_down
  mkdir -p "$work/pip-upper" "$work/pip-work" "$work/pip-merged"
  mount -t overlay overlay -o "lowerdir=$work/py-root,upperdir=$work/pip-upper,workdir=$work/pip-work" "$work/pip-merged"
  mkdir -p "$work/pip-merged/root/.cache/pip" "$work/pip-merged/run/secrets"
  touch "$work/pip-merged/run/secrets/ca"
  mount --bind "$work/pip-cache" "$work/pip-merged/root/.cache/pip"
  mount --bind "${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$work/pip-merged/run/secrets/ca"
}
# upload_blob REGISTRY REPO FILE: one monolithic upload (POST, then PUT of the whole file) of a blob named by its file.
upload_blob() {
  local location
  location=$(curl -sf -D - -o /dev/null -X POST "http://$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  case $location in /*) location=http://$1$location ;; esac
  curl -sf -o /dev/null -T "$3" -H 'Content-Type: application/octet-stream' "$location&digest=sha256:$(basename "$3")"
}
run() {
  local c=$1 t=$2
  [ "$t" != floor ] || { floor "$c"; return; }
  case $c in
    noop | edit-one) build_retry "$t" "$ten" ;;
    cold) build_retry "$t" "$ten" --no-cache ;;
    parallel) build_retry "$t" "$par" --no-cache ;;
    run-overhead) build_retry "$t" "$runs" --no-cache ;;
    bigcontext-warm) build_retry "$t" "$big" ;;
    bigcontext-cold) build_retry "$t" "$bigcold" --no-cache ;;
    pull) pull_image "$t" ;;
    push) push_image "$t" ;;
    app-cold) build_retry "$t" "$app" --no-cache --secret "$ca_secret" ;;
    app-edit) build_retry "$t" "$app" --secret "$ca_secret" ;;
  esac
}
# setup CASE TOOL: untimed, once per case and tool, before the first rep.
setup() {
  local c=$1 t=$2
  [ "$t" != floor ] || { setup_floor "$c"; return; }
  case $c in
    noop | edit-one | cold) build_retry "$t" "$ten" ;;
    bigcontext-warm) build_retry "$t" "$big" ;;
    app-cold | app-edit)
      case $t in
        rbuild) "$RBUILD" --root "$store" pull "$pybase" >/dev/null ;;
        before) "$RBUILD_BEFORE" --root "$work/store-before" pull "$pybase" >/dev/null ;;
        bk13 | bk25) dk "$t" pull -q "$pybase" >/dev/null ;;
        buildah) buildah pull -q --tls-verify=false "$pybase" >/dev/null ;;
      esac
      build_retry "$t" "$app" --secret "$ca_secret" ;;
    push)
      build_retry "$t" "$pushctx"
      case $t in
        rbuild) "$RBUILD" --root "$store" tag "bench/ctx-push" "$pushreg/bench/push-$t:latest" >/dev/null ;;
        before) "$RBUILD_BEFORE" --root "$work/store-before" tag "bench/ctx-push" "$pushreg/bench/push-$t:latest" >/dev/null ;;
        bk13 | bk25) dk "$t" tag "bench/ctx-push" "$pushreg/bench/push-$t:latest" ;;
        buildah) buildah tag "bench/ctx-push" "$pushreg/bench/push-$t:latest" ;;
      esac ;;
  esac
}

# setup_floor CASE: after rbuild's setup of the case.
setup_floor() {
  case $1 in
    push)
      # The layer blobs rbuild pushes, named by the manifest it pushed once.
      "$RBUILD" --root "$store" tag bench/ctx-push "$pushreg/bench/push-probe:latest" >/dev/null
      "$RBUILD" --root "$store" push "$pushreg/bench/push-probe:latest" >/dev/null 2>&1
      mapfile -t floor_blobs < <(skopeo inspect --tls-verify=false --raw "docker://$pushreg/bench/push-probe:latest" |
        python3 -c 'import json, sys; [print(l["digest"].split(":")[1]) for l in json.load(sys.stdin)["layers"]]' |
        sed "s|^|$store/blobs/sha256/|") ;;
    app-cold)
      # The base image's root with the requirements at /app, and a copy of rbuild's warm pip cache mount.
      rm -rf "$work/py-root" "$work/pip-cache" "$work/ctx-py-root"
      mkdir -p "$work/ctx-py-root"; printf 'FROM %s\n' "$pybase" >"$work/ctx-py-root/Dockerfile"
      "$RBUILD" --root "$store" build -q --output "type=local,dest=$work/py-root" "$work/ctx-py-root" >/dev/null
      mkdir -p "$work/py-root/app"; cp "$app/requirements.txt" "$work/py-root/app/"
      cp /etc/resolv.conf "$work/py-root/etc/resolv.conf"
      local entry
      for entry in "$store"/cachemounts/*/; do
        if grep -qx /root/.cache/pip "$entry/id" 2>/dev/null; then cp -a "$entry/data" "$work/pip-cache"; fi
      done
      [ -d "$work/pip-cache" ] || { log "no pip cache mount in rbuild's store"; return 1; } ;;
    app-edit)
      rm -rf "$work/app-root"
      "$RBUILD" --root "$store" build -q --secret "$ca_secret" --output "type=local,dest=$work/app-root" "$app" >/dev/null ;;
  esac
}
floor_blobs=()
app_run=$(sed -n 's/^RUN python3 /python3 /p' "$app/Dockerfile" 2>/dev/null || true)
app_env=$(sed -n 's/^ENV //p' "$app/Dockerfile" 2>/dev/null || true)
# What a container of the image starts with (none of this shell's own variables).
floor_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)

for c in $cases; do
  log "== $c"
  case_tools=("${tools[@]}")
  case $c in push | app-cold | app-edit) case_tools+=(floor) ;; esac
  for t in "${case_tools[@]}"; do { with_base "$t" && setup "$c" "$t"; } || [ "$t" != rbuild ] || exit 1; done
  for i in $(seq 1 "$reps"); do
    for t in "${case_tools[@]}"; do
      [ "$t" != before ] || [[ " ${BEFORE_CASES:-$c} " == *" $c "* ]] || continue
      prepare "$c" "$t" "$i"
      sync
      t0=$(now_ms)
      # A failed rep of another tool is left out of its numbers (and said on stderr); rbuild must not fail.
      if ! run "$c" "$t"; then
        [ "$t" != rbuild ] || exit 1
        log "   $c $t: rep $i failed, left out"; continue
      fi
      times[$c,$t]="${times[$c,$t]:-} $(( $(now_ms) - t0 ))"
      if [ "$t" = rbuild ] && [ -s "$work/rss" ]; then
        r=$(tail -1 "$work/rss"); [ "${rss[$c]:-0}" -ge "$r" ] || rss[$c]=$r
      fi
    done
  done
  for t in "${case_tools[@]}"; do log "   $c $t:${times[$c,$t]:-} ms"; done
done

stat_of() { # stat_of min|med LIST
  printf '%s\n' $2 | sort -n | awk -v w="$1" '{a[NR]=$1} END {print (w == "min") ? a[1] : a[int((NR+1)/2)]}'
}
printf '\n%-16s' case
for t in "${tools[@]}" floor; do printf ' %17s' "$t min/med"; done
printf ' %6s %7s %9s %s\n' ratio target "rbuild RSS" "(over floor)"
status=0
for c in $cases; do
  case $c in
    parallel) target=0.95 ;; bigcontext-cold) target=0.6 ;; *) target=0.5 ;;
  esac
  printf '%-16s' "$c"
  best=""
  for t in "${tools[@]}" floor; do
    [ -n "${times[$c,$t]:-}" ] || { printf ' %17s' "-"; continue; }
    mn=$(stat_of min "${times[$c,$t]}") md=$(stat_of med "${times[$c,$t]}")
    printf ' %8s/%6sms' "$mn" "$md"
    if is_docker "$t" && { [ -z "$best" ] || [ "$md" -lt "$best" ]; }; then best=$md; fi
  done
  r=$(stat_of med "${times[$c,rbuild]}")
  ratio=$(awk -v r="$r" -v b="${best:-0}" 'BEGIN {if (b > 0) printf "%.2f", r / b; else print "-"}')
  ok=$(awk -v x="$ratio" -v t="$target" 'BEGIN {print (x != "-" && x <= t) ? "ok" : "MISSED"}')
  mb=$(( ${rss[$c]:-0} / 1024 ))
  [ "$ok" = ok ] && [ "$mb" -le 150 ] || status=1
  over=""
  if [ -n "${times[$c,floor]:-}" ] && [ -n "$best" ]; then
    over=$(awk -v r="$r" -v b="$best" -v f="$(stat_of med "${times[$c,floor]}")" \
      'BEGIN {if (b > f) printf "(over floor %.2f)", (r - f) / (b - f)}')
  fi
  printf ' %6s %7s %7sMB %s %s\n' "$ratio" "≤$target" "$mb" "$ok" "$over"
done
printf 'bench took %ss; ratio = rbuild median / best BuildKit median; RSS = rbuild peak over the reps\n' "$SECONDS"
exit $status
