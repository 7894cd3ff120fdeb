#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then checks formatting and
# lints, and runs every test: Rust (unit, property, integration against the real binary) and the
# JavaScript client (Node's test runner, the real relay, headless Chromium).
# Usage: tests/run.sh            (from anywhere; it works in the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"   # Debian puts nginx in /usr/sbin

need_apt=()
pkg-config --exists openssl 2>/dev/null || need_apt+=(pkg-config libssl-dev)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)   # tests/nginx.rs
command -v caddy >/dev/null 2>&1 || [ -x /usr/bin/caddy ] || need_apt+=(caddy)    # tests/caddy.rs
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)                       # tests/js/browser.test.js
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)                           # tests/js
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)  # tests/nats.rs
command -v curl >/dev/null 2>&1 || need_apt+=(curl)                                # tests/api.rs (the guide's examples)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)                                    # tests/api.rs (the guide's examples)
# tests/upstream/mesh_peer.py runs in a venv; Debian's python3 has `venv` but keeps ensurepip (which
# creating one needs) in python3-venv, so ask for it only when the venv is not there yet.
target/upstream-venv/bin/python -c 'import aether_core' 2>/dev/null || python3 -c 'import ensurepip' 2>/dev/null \
  || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  echo "==> installing ${need_apt[*]} (Debian packages)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
# The mesh interop tests federate our relay with upstream's own MeshNode (tests/upstream/mesh_peer.py),
# so they need upstream exactly as released. It lives in a venv under target/ (never the system
# Python), made once and reused. websockets<14 is upstream's own pin: 0.4.0 uses the legacy API.
if ! target/upstream-venv/bin/python -c 'import aether_core' 2>/dev/null; then
  echo "==> upstream aether-zta 0.4.0 in target/upstream-venv (mesh interop tests)"
  mkdir -p target
  python3 -m venv --clear target/upstream-venv
  target/upstream-venv/bin/pip install -q --disable-pip-version-check aether-zta==0.4.0 "websockets>=11.0.3,<14"
fi
export AETHER_UPSTREAM_PYTHON="$PWD/target/upstream-venv/bin/python"
# tests/closes.rs also times close() with a current `websockets` (its sync client reads ahead).
if ! target/closes-venv/bin/python -c 'import websockets.sync.client' 2>/dev/null; then
  echo "==> current websockets in target/closes-venv (closing-handshake tests)"
  python3 -m venv --clear target/closes-venv
  target/closes-venv/bin/pip install -q --disable-pip-version-check "websockets>=15"
fi
echo "==> cargo test"
cargo test --locked
echo "==> JavaScript client (tests/js: node --test, the real relay, headless Chromium)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && AETHER_BIN=target/debug/aether-actix npm test)
