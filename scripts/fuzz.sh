#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time: scripts/fuzz.sh [SECONDS] [TARGET...]
# (default 60 s per target, all targets). Needs `cargo install cargo-fuzz` and a nightly
# toolchain. Targets are built without a sanitizer (all cairn code is safe Rust: what the
# fuzzers look for is panics, hangs and broken invariants) and with debug assertions (integer
# overflow panics). New inputs go to fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>,
# logs to fuzz/logs/<target>.log. Exits non-zero if any target found a crash or timeout.
set -euo pipefail

secs="${1:-60}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sse crm chunker extract)
fi

# Seed inputs per target (read-only; libFuzzer writes new inputs to the first directory only).
seeds() {
  case "$1" in
    sse) echo "seeds/sse" ;;
    crm) echo "../samples/crm ../ingest/tests/fixtures/crm/salesforce ../ingest/tests/fixtures/crm/hubspot" ;;
    chunker) echo "../samples/corpus/help-center ../samples/corpus/cairn-docs" ;;
    extract) echo "seeds/extract ../ingest/tests/fixtures/pdf" ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"

mkdir -p logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${secs}s"
  # shellcheck disable=SC2046
  if cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" $(seeds "$t") -- \
      -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
      >"logs/$t.log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "logs/$t.log" | sed "s/^/$t /" || true
  else
    echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "targets with findings: ${failed[*]}"
  exit 1
fi
echo "no findings in ${targets[*]} (${secs}s each)"
