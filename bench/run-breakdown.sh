#!/usr/bin/env bash
# Where the fixed cost of a RUN step goes (issue 16): builds 20 `RUN true` steps (--no-cache) once per runtime under
# `strace -f --seccomp-bpf` (only the syscalls that mark a phase are stopped at, so the overhead stays small) and
# prints the median time per step of each phase, from these markers:
#   fsmount .. move_mount        mounting the step's overlay
#   move_mount .. runtime exec   the bundle: hosts, resolv.conf, mount stubs, config.json; the step's mounts
#   runtime exec .. /bin/sh exec the runtime creating the container (namespaces, mounts, cgroups, seccomp)
#   /bin/sh exec .. its exit     the step's own process
#   .. runtime exit              the runtime tearing the container down (cgroup, state)
#   .. umount2 of the rootfs     reaping, mount stubs, the bundle's removal
#   umount2 .. last rename       diff of the upper dir, layer digest, snapshot commit, cache record (fsyncs)
#   last rename .. next fsmount  the solver: cache key, scheduling the next step
# Usage: bench/run-breakdown.sh BASE_IMAGE [RUNTIMES]   (as root; RBUILD=path/to/rbuild, default target/release)
set -euo pipefail
base=$1; runtimes=${2:-runc crun}
repo=$(cd "$(dirname "$0")/.." && pwd)
rbuild=${RBUILD:-${CARGO_TARGET_DIR:-$repo/target}/release/rbuild}
work=$(mktemp -d /var/tmp/rbuild-breakdown.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx"
{ echo "FROM $base"; for _ in $(seq 1 20); do echo "RUN true"; done; } >"$work/ctx/Dockerfile"
"$rbuild" --root "$work/store" pull "$base" >/dev/null
for rt in $runtimes; do
  "$rbuild" --root "$work/store" build --runtime "$rt" -t bd "$work/ctx" >/dev/null 2>&1
  strace -f --seccomp-bpf -ttt -o "$work/trace-$rt" \
    -e trace=execve,exit_group,fsmount,move_mount,umount2,rename,renameat2,fsync \
    "$rbuild" --root "$work/store" build --runtime "$rt" --no-cache -t bd "$work/ctx" >/dev/null 2>&1
  s=$(date +%s%N)
  "$rbuild" --root "$work/store" build --runtime "$rt" --no-cache -t bd "$work/ctx" >/dev/null 2>&1
  echo "== $rt: $(( ($(date +%s%N) - s) / 1000000 )) ms for 20 steps without strace"
  python3 - "$work/trace-$rt" "$rt" <<'PY'
import re, statistics, sys
path, rt = sys.argv[1], sys.argv[2]
ev = []
for line in open(path):
    m = re.match(r"(\d+)\s+([\d.]+)\s+(.*)", line)
    if not m:
        continue
    pid, t, rest = m.group(1), float(m.group(2)), m.group(3)
    ev.append((t, pid, rest))
steps, cur, sh_pid, rt_pid = [], None, None, None
for t, pid, rest in ev:
    if rest.startswith("fsmount("):
        cur = {"fsmount": t}
    elif cur is None:
        continue
    elif rest.startswith("move_mount(") and "move_mount" not in cur:
        cur["move_mount"] = t
    elif rest.startswith(f'execve("/usr/sbin/{rt}"') or rest.startswith(f'execve("/usr/bin/{rt}"'):
        cur.setdefault("runtime", t); rt_pid = pid
    elif rest.startswith('execve("/bin/sh"'):
        cur["sh"] = t; sh_pid = pid
    elif rest.startswith("+++ exited") and pid == sh_pid and "sh_exit" not in cur:
        cur["sh_exit"] = t
    elif rest.startswith("+++ exited") and pid == rt_pid and "runtime_exit" not in cur:
        cur["runtime_exit"] = t
    elif rest.startswith("umount2(") and "merged" in rest and "runtime_exit" in cur and "umount" not in cur:
        cur["umount"] = t
    elif rest.startswith("rename(") and "index/steps" in rest and "umount" in cur:
        cur["stored"] = t
        steps.append(cur); cur = None
names = ["fsmount", "move_mount", "runtime", "sh", "sh_exit", "runtime_exit", "umount", "stored"]
labels = ["overlay mount", "bundle + spec", "runtime: create container", "the process itself",
          "runtime: tear down", "reap, stubs, bundle removal", "diff, commit, cache record"]
full = [s for s in steps if all(k in s for k in names)]
print(f"   {len(full)} steps traced; median ms per step (strace adds to every phase):")
for a, b, label in zip(names, names[1:], labels):
    print(f"   {label:32} {statistics.median((s[b] - s[a]) * 1000 for s in full):7.1f}")
gaps = [(n["fsmount"] - s["stored"]) * 1000 for s, n in zip(full, full[1:])]
if gaps:
    print(f"   {'solver, between steps':32} {statistics.median(gaps):7.1f}")
print(f"   {'step total (fsmount..stored)':32} {statistics.median((s['stored'] - s['fsmount']) * 1000 for s in full):7.1f}")
PY
done
