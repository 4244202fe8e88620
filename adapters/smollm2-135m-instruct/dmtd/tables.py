#!/usr/bin/env python3
"""Markdown tables of the DMTD evaluations: per τ, the untrained model decoded cyclically beside the trained deltas,
per cycle offset. Ratios are taken against the base model's full-depth perplexity of the same positions (the
untrained report's `full_ppl`, which never includes deltas). usage: tables.py EVAL_DIR FINAL_STEP_2 FINAL_STEP_3 FINAL_STEP_4"""
import json
import os
import sys

d = sys.argv[1]
final = dict(zip((2, 3, 4), sys.argv[2:5]))
print("| τ | offset | positions | full-depth ppl | untrained DMTD ppl | ratio | top-1 agr. | trained DMTD ppl | ratio | top-1 agr. (trained) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for tau in (2, 3, 4):
    u = json.load(open(os.path.join(d, f"untrained-tau{tau}.json")))
    t = json.load(open(os.path.join(d, f"tau{tau}-step{final[tau]}.json")))
    for uo, to in zip(u["offsets"] + [u["all"]], t["offsets"] + [t["all"]]):
        off = "all" if uo["offset"] is None else uo["offset"]
        full = uo["full_ppl"]
        print(f"| {tau} | {off} | {uo['n']} | {full:.2f} | {uo['dmtd_ppl']:.1f} | {uo['dmtd_ppl']/full:.3f} | "
              f"{uo['top1_agreement']:.3f} | {to['dmtd_ppl']:.2f} | {to['dmtd_ppl']/full:.3f} | {to['top1_agreement']:.3f} |")
