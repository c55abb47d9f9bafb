#!/usr/bin/env bash
# Checks the dependency arrows between the workspace crates against the ones DESIGN.md allows (one way, pipeline
# order), from `cargo metadata`: an arrow that is not in the table below fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --no-deps > "$meta"
python3 - "$meta" <<'PY'
import json, sys
allowed = {
    # Vocabulary (digests, OCI documents, .dockerignore patterns): at the bottom, used by anyone.
    "rbuild-types": set(),
    "rbuild-solver": {"rbuild-types"},
    "rbuild-cache": {"rbuild-solver", "rbuild-types"},
    "rbuild-frontend": {"rbuild-solver", "rbuild-types"},
    "rbuild-image": {"rbuild-cache", "rbuild-solver", "rbuild-types"},
    "rbuild-executor": {"rbuild-image", "rbuild-cache", "rbuild-solver", "rbuild-types"},
    "rbuild-builder": {"rbuild-frontend", "rbuild-solver", "rbuild-executor", "rbuild-cache", "rbuild-image", "rbuild-types"},
    # The CLI maps flags to a build request and renders; its own subcommands (images, push, prune, info, the
    # rootless re-exec into a user namespace) use the store, registry and executor crates directly.
    "rbuild": {"rbuild-builder", "rbuild-frontend", "rbuild-solver", "rbuild-executor", "rbuild-cache", "rbuild-image", "rbuild-types"},
    # Test fixtures (the root/tool gate, a local registry): a dev-dependency only, which this check does not count
    # as an arrow; it depends on no workspace crate, so no test can pull a production arrow in through it.
    "rbuild-test-support": set(),
}
meta = json.load(open(sys.argv[1]))
names = {p["name"] for p in meta["packages"]}
bad = []
for p in meta["packages"]:
    name = p["name"]
    if name not in allowed:
        bad.append("%s: a crate the arrow table does not know (add it to scripts/check-arrows.sh)" % name)
        continue
    for d in p["dependencies"]:
        if d["name"] in names and d.get("kind") is None and d["name"] not in allowed[name]:
            bad.append("%s -> %s: not an arrow DESIGN.md allows" % (name, d["name"]))
for b in bad:
    print("error: " + b, file=sys.stderr)
if bad:
    sys.exit(1)
print("dependency arrows: %d crates, every arrow allowed" % len(meta["packages"]))
PY
