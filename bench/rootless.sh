#!/usr/bin/env bash
# Rootless rbuild vs root rbuild vs rootless buildah (Debian's, --layers), in one run, one table (issue #14).
# Usage: bench/rootless.sh   (as root: it makes the unprivileged user; takes a few minutes)
#
# Cases:
#   cold      the 10-step Dockerfile of bench/run.sh (ENV, WORKDIR, 3 COPY, 4 RUN, CMD), --no-cache
#   noop      the same build rebuilt unchanged
#   bigcopy   COPY data/ /data/ of 20,000 files (200 MB), --no-cache
# Everything builds FROM the busybox base (testdata/busybox-base), built by rbuild, pushed to a throwaway local
# registry and pulled by each tool before anything is timed. Each number is the median of REPS runs; the tools take
# turns rep by rep, and each run is timed inside a shell of its user's (see run_reps).
# Target: rootless rbuild within 1.3x of root rbuild on every case.
# Env: BENCH_DIR (default /var/tmp/rbuild-bench-rootless), REPS (default 5), BENCH_USER (default rbuild-rootless,
#      made with a subordinate range if missing), SKIP_BUILDAH=1, SNAPSHOTTER (rootless rbuild's, default auto),
#      RBUILD_BIN (time this rbuild binary instead of building a release one), BUILDAH_RUNTIME (default runc:
#      Debian's crun refuses hybrid cgroup hosts), BUILDAH_DRIVER (buildah's storage driver, default overlay: the
#      kernel's, in its user namespace; vfs copies every layer).
# The user's commands run through setpriv, not runuser: runuser opens a PAM session (~30 ms here), which would be
# timed as rootless rbuild's cost.
set -euo pipefail
# shellcheck source=bench/contexts.sh
source "$(dirname "$0")/contexts.sh"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${BENCH_DIR:-/var/tmp/rbuild-bench-rootless}
reps=${REPS:-5}
user=${BENCH_USER:-rbuild-rootless}
snapshotter=${SNAPSHOTTER:-auto}
[ "$(id -u)" = 0 ] || { echo "bench/rootless.sh must run as root (it makes the unprivileged user)" >&2; exit 1; }

log() { printf '%s\n' "$*" >&2; }
rm -rf "$work"; mkdir -p "$work"; chmod 0755 "$work"
cleanup() {
  RBUILD_TEST_REGISTRY_DIR=$work/registry bash "$repo/scripts/test-registry.sh" stop >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
for dev in /dev/net/tun /dev/fuse; do [ "$(stat -c %a "$dev")" = 666 ] || chmod 0666 "$dev"; done
uhome=$(getent passwd "$user" | cut -d: -f6)
as_user() {
  setpriv --reuid="$user" --regid="$user" --init-groups env HOME="$uhome" XDG_RUNTIME_DIR="$work/xdg-run" "$@"
}
buildah_storage=(--root "$work/user/buildah" --runroot "$work/xdg-run/buildah" --storage-driver "${BUILDAH_DRIVER:-overlay}")

if [ -n "${RBUILD_BIN:-}" ]; then
  install -m 0755 "$RBUILD_BIN" "$work/rbuild"
else
  log "== building rbuild (release)"
  (cd "$repo" && cargo build --release -q -p rbuild)
  install -m 0755 "${CARGO_TARGET_DIR:-$repo/target}/release/rbuild" "$work/rbuild"
fi
RBUILD=$work/rbuild

log "== a local registry and the base image"
eval "$(RBUILD_TEST_REGISTRY_DIR=$work/registry bash "$repo/scripts/test-registry.sh" start)"
reg=$RBUILD_TEST_REGISTRY
base=$reg/bench/busybox:latest
mkdir -p "$work/base"; cp -r "$repo/testdata/busybox-base/." "$work/base/"; cp /bin/busybox "$work/base/busybox"
"$RBUILD" --root "$work/base-store" build -t "$base" --push "$work/base" >"$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
mkdir -p "$work/user" "$work/xdg-run"; chown "$user:" "$work/user" "$work/xdg-run"; chmod 0700 "$work/xdg-run"
"$RBUILD" --root "$work/store-root" pull "$base" >/dev/null
as_user "$RBUILD" --root "$work/user/store" pull "$base" >/dev/null
have_buildah=1
{ [ -z "${SKIP_BUILDAH:-}" ] && command -v buildah >/dev/null; } || have_buildah=0
if [ $have_buildah = 1 ]; then
  as_user buildah "${buildah_storage[@]}" pull -q --tls-verify=false "$base" >/dev/null 2>"$work/buildah-pull.log" || {
    log "rootless buildah cannot pull here (skipped):"; tail -5 "$work/buildah-pull.log" >&2; have_buildah=0; }
fi

log "== contexts"
ten=$work/ctx-ten
ten_context "$ten" "$base"
big=$work/ctx-big
mkdir -p "$big"
big_data "$big/data"
printf 'FROM %s\nCOPY data/ /data/\n' "$base" >"$big/Dockerfile"
chmod -R a+rX "$ten" "$big"

# The command that builds context $2 with tool $1 (extra build flags after), in the array `cmd`.
command_for() {
  local tool=$1 ctx=$2; shift 2
  case $tool in
    root) cmd=("$RBUILD" --root "$work/store-root" build -t "bench/$(basename "$ctx")" "$@" "$ctx") ;;
    rootless) cmd=("$RBUILD" --root "$work/user/store" --snapshotter "$snapshotter" build -t "bench/$(basename "$ctx")" "$@" "$ctx") ;;
    buildah) cmd=(buildah "${buildah_storage[@]}" bud --runtime "${BUILDAH_RUNTIME:-runc}" --layers --network host --tls-verify=false -q -t "bench/$(basename "$ctx")" "$@" "$ctx") ;;
  esac
}
# Runs the command REPS times (as the tool's user), printing each run's milliseconds. The unprivileged tools are
# timed inside one shell of the user's, as root rbuild is timed inside root's: starting that shell (setpriv reads
# the group database, ~6 ms here) is not part of any tool's time.
# shellcheck disable=SC2016
reps_loop='n=$1; log=$2; shift 2
for _ in $(seq 1 "$n"); do
  sync
  t0=$(date +%s%N)
  "$@" >"$log" 2>&1 || { echo failed; exit 1; }
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
done'
run_reps() {
  local tool=$1 n=$2 ctx=$3; shift 3
  local cmd out=$work/xdg-run/last-$tool.log
  command_for "$tool" "$ctx" "$@"
  local times
  if [ "$tool" = root ]; then
    times=$(bash -c "$reps_loop" _ "$n" "$out" "${cmd[@]}")
  else
    times=$(as_user bash -c "$reps_loop" _ "$n" "$out" "${cmd[@]}")
  fi
  if [[ $times == *failed* ]]; then log "$tool build of $ctx failed:"; tail -30 "$out" >&2; exit 1; fi
  echo "$times"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A result times
tools=(root rootless)
[ $have_buildah = 0 ] || tools+=(buildah)
for tool in "${tools[@]}"; do
  run_reps "$tool" 1 "$ten" >/dev/null  # warm-up: fills the cache
done
# Rep by rep, each tool in turn, so a slow spell of the machine hits every tool alike.
for case in cold noop bigcopy; do
  log "== $case"
  for _ in $(seq 1 "$reps"); do
    for tool in "${tools[@]}"; do
      case $case in
        cold) ms=$(run_reps "$tool" 1 "$ten" --no-cache) ;;
        noop) ms=$(run_reps "$tool" 1 "$ten") ;;
        bigcopy) ms=$(run_reps "$tool" 1 "$big" --no-cache) ;;
      esac
      times[$case,$tool]+="$ms "
    done
  done
  for tool in "${tools[@]}"; do
    result[$case,$tool]=$(tr ' ' '\n' <<<"${times[$case,$tool]}" | grep . | median)
    log "   $case $tool: ${times[$case,$tool]}ms"
  done
done

log "rootless rbuild snapshotter: $(as_user "$RBUILD" --root "$work/user/store" --snapshotter "$snapshotter" info | grep '^snapshotter')"
printf '\n%-10s %10s %10s %10s %8s %8s\n' case root rootless buildah ratio target
status=0
for c in cold noop bigcopy; do
  r=${result[$c,root]} u=${result[$c,rootless]} h=${result[$c,buildah]:-}
  ratio=$(awk -v u="$u" -v r="$r" 'BEGIN {printf "%.2f", u / r}')
  ok=$(awk -v x="$ratio" 'BEGIN {print (x <= 1.3) ? "ok" : "MISSED"}')
  [ "$ok" = ok ] || status=1
  printf '%-10s %8sms %8sms %10s %8s %6s %s\n' "$c" "$r" "$u" "${h:+${h}ms}" "$ratio" "≤1.3" "$ok"
done
printf 'bench took %ss\n' "$SECONDS"
exit $status
