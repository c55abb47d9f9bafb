#!/usr/bin/env bash
# Checks the dependency arrows between the workspace crates against the ones DESIGN.md allows (one way, pipeline
# order), from `cargo metadata`: an arrow that is not in the table below fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
allowed = {
    "rbuild-solver": set(),
    "rbuild-cache": {"rbuild-solver"},
    "rbuild-frontend": {"rbuild-solver"},
    "rbuild-image": {"rbuild-cache", "rbuild-solver"},
    "rbuild-executor": {"rbuild-image", "rbuild-cache", "rbuild-solver"},
    "rbuild": {"rbuild-frontend", "rbuild-solver", "rbuild-executor", "rbuild-cache", "rbuild-image"},
}
meta = json.load(sys.stdin)
names = {p["name"] for p in meta["packages"]}
bad = []
for p in meta["packages"]:
    if p["name"] not in allowed:
        bad.append(f"{p[\"name\"]}: a crate the arrow table does not know (add it to scripts/check-arrows.sh)")
        continue
    for d in p["dependencies"]:
        if d["name"] in names and d.get("kind") is None and d["name"] not in allowed[p["name"]]:
            bad.append(f"{p[\"name\"]} -> {d[\"name\"]}: not an arrow DESIGN.md allows")
for b in bad:
    print("error:", b, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"dependency arrows: {len(meta[\"packages\"])} crates, all arrows allowed")
'
