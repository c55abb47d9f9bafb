#!/usr/bin/env python3
"""Compare rbuild's build checks with the reference BuildKit's on a corpus of real-world Dockerfiles.

Usage: scripts/checks-corpus.py RBUILD_BINARY CORPUS_DIR [LIMIT]
  with `docker` pointing at the reference (eval "$(../shared/tools/buildkit-newest-up.sh | tail -1)").

Each Dockerfile is checked twice by both tools with `--call check,format=json`:
  as-is    - base images cannot be pulled here (no Docker Hub), so BuildKit stops at resolving them; only the
             rules it runs before that are compared (parse-time and FROM-line rules);
  scratch  - every FROM of an image (not a stage, no variables) rewritten to `FROM scratch`, so that both tools
             dispatch every instruction and all rules are compared.
`# syntax=` lines become `# escape=\\` (same meaning, no frontend image to pull), keeping line numbers.
Prints one line per disagreement and a summary; exits 1 if any Dockerfile disagrees.
"""
import functools
import json
import os
import re
import subprocess
import sys
import tempfile

STATIC_RULES = {
    "NoEmptyContinuation", "StageNameCasing", "FromAsCasing", "ConsistentInstructionCasing", "DuplicateStageName",
    "ReservedStageName", "MaintainerDeprecated", "InvalidDefaultArgInFrom", "UndefinedArgInFrom",
    "RedundantTargetPlatform", "FromPlatformFlagConstDisallowed",
}
# Rules BuildKit 0.25 does not run by default (experimental there).
NOT_IN_REFERENCE = {"CopyIgnoredFile"}
FROM_RE = re.compile(r"^(\s*from\s+(?:--\S+\s+)*)(\S+)(.*)$", re.I)


def findings(out):
    start = out.find("{")
    if start < 0:
        return None, None
    try:
        v = json.loads(out[start:])
    except json.JSONDecodeError:
        return None, None
    ws = sorted(
        (w.get("ruleName", ""), ((w.get("location") or {}).get("ranges") or [{}])[0].get("start", {}).get("line", 0),
         w.get("detail", ""))
        for w in v.get("warnings") or []
    )
    return ws, bool(v.get("buildError"))


def fix_syntax(text):
    lines = text.split("\n")
    has_escape = any(re.match(r"^#\s*escape\s*=", l, re.I) for l in lines[:5])
    for i, l in enumerate(lines[:5]):
        if re.match(r"^#\s*syntax\s*=", l, re.I):
            lines[i] = "# check=" if has_escape else "# escape=\\"
    return "\n".join(lines)


def to_scratch(text):
    stages = set()
    out = []
    for line in text.split("\n"):
        m = FROM_RE.match(line)
        if m:
            image = m.group(2)
            rest = m.group(3)
            as_m = re.match(r"\s+as\s+(\S+)", rest, re.I)
            if "$" not in image and image.lower() not in stages and image.lower() != "scratch":
                line = m.group(1) + "scratch" + rest
            if as_m:
                stages.add(as_m.group(1).lower())
        out.append(line)
    return "\n".join(out)


def run(cmd, ctx):
    p = subprocess.run(cmd + [ctx], capture_output=True, text=True, timeout=120)
    return findings(p.stdout)


print = functools.partial(print, flush=True)  # noqa: A001 - progress shows while it runs


def main():
    rbuild, corpus = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
    files = []
    for root, _, names in os.walk(corpus):
        for n in names:
            if n.startswith("Dockerfile") or n.endswith(".Dockerfile") or n.endswith(".dockerfile"):
                files.append(os.path.join(root, n))
    files.sort()
    if limit:
        files = files[:limit]
    store = tempfile.mkdtemp(prefix="rbuild-checks-corpus-")
    ours_cmd = [rbuild, "--root", store, "build", "--call", "check,format=json"]
    theirs_cmd = ["docker", "buildx", "build", "--call", "check,format=json"]
    stats = {"as-is": [0, 0, 0], "scratch": [0, 0, 0]}  # compared, agreed, findings (BuildKit's)
    full = 0  # scratch-mode Dockerfiles BuildKit converted to the end (every rule compared)
    rules = {}
    bad = 0
    for f in files:
        try:
            text = fix_syntax(open(f, encoding="utf-8", errors="replace").read())
        except OSError:
            continue
        for mode in ("as-is", "scratch"):
            src = text if mode == "as-is" else to_scratch(text)
            with tempfile.TemporaryDirectory() as ctx:
                with open(os.path.join(ctx, "Dockerfile"), "w") as fh:
                    fh.write(src)
                o, o_err = run(ours_cmd, ctx)
                t, t_err = run(theirs_cmd, ctx)
            if o is None or t is None:
                print(f"UNREADABLE {mode} {f}: rbuild={o is not None} buildkit={t is not None}")
                continue
            keep = (lambda w: w[0] in STATIC_RULES) if mode == "as-is" else (lambda w: w[0] not in NOT_IN_REFERENCE)
            if mode == "scratch" and t_err:
                # BuildKit stopped early (e.g. an image named by a variable): compare what it checks first.
                keep = lambda w: w[0] in STATIC_RULES
            elif mode == "scratch":
                full += 1
            o = [w for w in o if keep(w)]
            t = [w for w in t if keep(w)]
            s = stats[mode]
            s[0] += 1
            s[2] += len(t)
            for w in t:
                rules[w[0]] = rules.get(w[0], 0) + 1
            if o == t:
                s[1] += 1
            else:
                bad += 1
                print(f"DIFFER {mode} {os.path.relpath(f, corpus)}")
                for w in sorted(set(o) - set(t)):
                    print(f"   only rbuild:   {w}")
                for w in sorted(set(t) - set(o)):
                    print(f"   only BuildKit: {w}")
    for mode, (n, ok, nf) in stats.items():
        print(f"{mode}: {ok}/{n} Dockerfiles agree ({nf} BuildKit findings compared)")
    print(f"scratch: {full} converted to the end by BuildKit (all rules compared)")
    print("findings by rule:", ", ".join(f"{k} {v}" for k, v in sorted(rules.items(), key=lambda kv: -kv[1])))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
