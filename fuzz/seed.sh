#!/usr/bin/env bash
# Seeds fuzz/corpus/parse_expand_convert from the conformance corpus (BuildKit's parser test files, the heredoc
# cases and the 193 real-world Dockerfiles) and the repository's own test Dockerfiles.
set -euo pipefail
cd "$(dirname "$0")"
src=${RBUILD_CONFORMANCE:-$PWD/../../shared/conformance}
out=corpus/parse_expand_convert
mkdir -p "$out"
n=0
while IFS= read -r -d '' f; do
  cp "$f" "$out/$(sha256sum "$f" | cut -c1-16)"
  n=$((n + 1))
done < <(find "$src" ../testdata -type f \( -name 'Dockerfile*' -o -name '*.Dockerfile' \) -print0)
echo "seeded $n files into $out"
