#!/usr/bin/env python3
"""Quality-vs-training-tokens curve of the DMTD runs: reads the per-offset JSON reports of `flexidepth perplexity
--dmtd ... --json` for each snapshot and the runs' log.csv (tokens seen at each step), writes curve.csv and curve.svg.

usage: curve.py RUNS_DIR OUT_DIR   (RUNS_DIR holds tau{2,3,4}/log.csv and eval/*.json named tau{T}-step{S}.json
and untrained-tau{T}.json; only the perplexities are used)
"""
import csv
import json
import os
import sys

runs, out = sys.argv[1:3]
rows = []
for tau in (2, 3, 4):
    # Tokens of each step = tokens_per_s × that step's seconds (elapsed_s is cumulative).
    seen, acc, prev = {0: 0}, 0.0, 0.0
    with open(os.path.join(runs, f"tau{tau}", "log.csv")) as f:
        for r in csv.DictReader(f):
            el = float(r["elapsed_s"])
            acc += float(r["tokens_per_s"]) * (el - prev)
            prev = el
            seen[int(r["step"])] = round(acc)
    evals = [(0, os.path.join(runs, "eval", f"untrained-tau{tau}.json"))]
    for name in os.listdir(os.path.join(runs, "eval")):
        if name.startswith(f"tau{tau}-step") and name.endswith(".json"):
            evals.append((int(name[len(f"tau{tau}-step") : -5]), os.path.join(runs, "eval", name)))
    # Ratios against the base's full-depth perplexity of the same positions (the untrained report's full_ppl).
    base = json.load(open(evals[0][1]))
    for step, path in sorted(evals):
        if not os.path.exists(path):
            continue
        q = json.load(open(path))
        row = {
            "tau": tau,
            "step": step,
            "tokens": seen.get(step, ""),
            "dmtd_ppl": round(q["all"]["dmtd_ppl"], 3),
            "ppl_ratio": round(q["all"]["dmtd_ppl"] / base["all"]["full_ppl"], 4),
        }
        for o, b in zip(q["offsets"], base["offsets"]):
            row[f"ratio_offset{o['offset']}"] = round(o["dmtd_ppl"] / b["full_ppl"], 4)
        rows.append(row)
keys = ["tau", "step", "tokens", "dmtd_ppl", "ppl_ratio"] + [f"ratio_offset{k}" for k in range(4)]
with open(os.path.join(out, "curve.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)

# A small SVG: log10(ppl ratio) against training tokens, one line per τ.
import math

W, H, L, B = 520, 320, 60, 40
pts = [r for r in rows if r["tokens"] != ""]
xmax = max(r["tokens"] for r in pts) or 1
ys = [math.log10(r["ppl_ratio"]) for r in pts]
ymax, ymin = max(ys), min(0.0, min(ys))
X = lambda t: L + (W - L - 20) * t / xmax
Y = lambda v: 20 + (H - B - 20) * (ymax - v) / (ymax - ymin or 1)
colors = {2: "#1f77b4", 3: "#2ca02c", 4: "#d62728"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<text x="{(W+L)/2}" y="{H-8}" text-anchor="middle">training tokens</text>',
       f'<text x="14" y="{H/2}" transform="rotate(-90 14 {H/2})" text-anchor="middle">log10(held-out ppl ratio to full depth)</text>']
for k in range(5):
    v = ymin + (ymax - ymin) * k / 4
    svg.append(f'<text x="{L-4}" y="{Y(v)+4}" text-anchor="end">{v:.2f}</text>')
    t = xmax * k / 4
    svg.append(f'<text x="{X(t)}" y="{H-B+14}" text-anchor="middle">{t:.0f}</text>')
for tau, c in colors.items():
    p = [(X(r["tokens"]), Y(math.log10(r["ppl_ratio"]))) for r in pts if r["tau"] == tau]
    if p:
        svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in p)}"/>')
        svg.append(f'<text x="{p[-1][0]-30}" y="{p[-1][1]-6}" fill="{c}">τ = {tau}</text>')
svg.append("</svg>")
open(os.path.join(out, "curve.svg"), "w").write("\n".join(svg) + "\n")
