#!/usr/bin/env bash
# The `openai` Python package (from PyPI, in a venv made once under the model cache) against `flexidepth serve` on
# the default model, on a free loopback port: chat, streaming chat, completions with logprobs
# (scripts/test_openai_client.py). The server is stopped with Ctrl-C (SIGINT) at the end, as a user would.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLEXIDEPTH_CACHE:-$HOME/.cache/flexidepth}/openai-venv"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openai>=1.40,<3"
fi
cargo build --release -q -p flexidepth-cli
LOG=$(mktemp)
target/release/flexidepth serve --port 0 2>"$LOG" &
PID=$!
trap 'kill -INT $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
ADDR=""
for _ in $(seq 1 300); do
  ADDR=$(sed -n 's|^listening on http://\([^ ]*\).*|\1|p' "$LOG")
  [ -n "$ADDR" ] && break
  kill -0 $PID 2>/dev/null || break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "the server did not start:" >&2; cat "$LOG" >&2; exit 1; }
timeout 300 "$VENV/bin/python" scripts/test_openai_client.py "http://$ADDR/v1"
