#!/usr/bin/env bash
# The project's test command: fetch what the tests read (default models, the Austen and KJV texts, the benchmark data
# of `flexidepth eval`), then run every test,
# then the `openai` Python client against `flexidepth serve`.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
scripts/fetch-eval-data.sh
cargo test --release --workspace "$@"
scripts/test-openai-client.sh
