"""Put lm-evaluation-harness's scores through `flexidepth serve` beside flexidepth's own (the engine directly) on the
same items, and compare them item by item: each candidate's log-likelihood and each generation.
Usage: compare.py LM_EVAL_OUTPUT_DIR REFERENCE.json OUT.md HEADER"""

import glob
import json
import sys

out_dir, ref_path, md_path, header = sys.argv[1:5]
ref = json.load(open(ref_path))
results_file = sorted(glob.glob(f"{out_dir}/**/results_*.json", recursive=True))[-1]
results = json.load(open(results_file))["results"]


def samples(task):
    path = sorted(glob.glob(f"{out_dir}/**/samples_{task}_*.jsonl", recursive=True))[-1]
    rows = [json.loads(line) for line in open(path)]
    return sorted(rows, key=lambda r: r["doc_id"])


def metric(task, name):
    return results[task].get(f"{name},none", results[task].get(name))


lines = [header, "", "| task | metric | lm-eval via `flexidepth serve` | flexidepth (engine, no server) |", "|---|---|---|---|"]
for task, names in (("fd_mc", ("acc", "acc_norm")), ("fd_gen", ("exact_match",))):
    for name in names:
        lines.append(f"| {task} | {name} | {metric(task, name):.4f} | {ref[task][name]:.4f} |")

# Item by item: the log-likelihood of every candidate, and every generation.
diffs = []
for row, lls in zip(samples("fd_mc"), ref["fd_mc"]["lls"]):
    theirs = [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0]) for r in row["resps"]]
    diffs += [abs(a - b) for a, b in zip(theirs, lls)]
same = sum(
    1
    for row, text in zip(samples("fd_gen"), ref["fd_gen"]["texts"])
    if (row["filtered_resps"][0] if isinstance(row["filtered_resps"], list) else row["filtered_resps"]) == text
)
lines += [
    "",
    f"Per item: {len(diffs)} candidate log-likelihoods, largest difference {max(diffs):.2e} nats "
    f"({sum(d < 1e-4 for d in diffs)} within 1e-4); {same} of {ref['fd_gen']['items']} generations identical.",
]
open(md_path, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
