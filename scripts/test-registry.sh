#!/usr/bin/env bash
# Starts (or stops) a throwaway docker-registry on a free loopback port for the tests.
#   eval "$(scripts/test-registry.sh start)"   # exports RBUILD_TEST_REGISTRY=127.0.0.1:PORT
#   scripts/test-registry.sh stop
set -euo pipefail
state=${RBUILD_TEST_REGISTRY_DIR:-/tmp/rbuild-test-registry}
case "${1:-start}" in
  start)
    mkdir -p "$state"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$state/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $state/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
    nohup docker-registry serve "$state/config.yml" >"$state/registry.log" 2>&1 &
    echo $! > "$state/pid"
    for _ in $(seq 1 100); do
      if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then break; fi
      sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null || { cat "$state/registry.log" >&2; exit 1; }
    echo "export RBUILD_TEST_REGISTRY=127.0.0.1:$port"
    ;;
  stop)
    [ -f "$state/pid" ] && kill "$(cat "$state/pid")" 2>/dev/null || true
    rm -rf "$state"
    ;;
esac
