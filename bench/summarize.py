#!/usr/bin/env python3
"""Summarise a bench/peers.sh run as a markdown table (standard library only).

usage: summarize.py [--per-run median|mean] RUN_DIR
           reads RUN_DIR/meta.txt and RUN_DIR/round<k>-<engine>.json
       summarize.py [--per-run median|mean] FILE.json ...
           any mix of llama-bench `-o json` and flexidepth-shaped files; the round is "round<k>" in
           the file name, else the n-th file of an engine is its round n

Batched decode (bench/peers.sh -b): RUN_DIR/batched-round<k>-<engine>.json, llama-batched-bench
`--output-format jsonl` rows (pl, speed_tg) or flexidepth bench -b rows (batch; mean_tps is the
aggregate decode tokens/s), get a second table: per batch size the aggregate decode tokens/s of each engine, its
scaling over batch 1 and flexidepth / llama.cpp (median over rounds of the within-round ratio).

Rows: one per test (pp<P>, tg<N>). Columns: per engine the median over rounds of each run's
tokens/s (by default the median of the run's reps, which shrugs off a rep hit by another job;
--per-run mean takes the engine's own mean), ± half the range over rounds (± the std over reps
where an engine ran one round), then flexidepth / llama.cpp and flexidepth / PyTorch: the median
over rounds of the ratio within a round (the engines of one round ran back to back, so this
cancels slow drifts of the machine).
"""

import json
import os
import re
import statistics
import sys

ENGINE_NAMES = {"llama.cpp": "llama.cpp", "torch": "PyTorch", "flexidepth": "flexidepth"}
ENGINE_ORDER = ["llama.cpp", "flexidepth", "torch"]


def test_name(n_prompt, n_gen):
    if n_prompt and n_gen:
        return f"pp{n_prompt}+tg{n_gen}"
    return f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"


def normalize(row):
    """One result row -> dict(engine, config, dtype, test, threads, model, mean, std, samples, extra)."""
    if "avg_ts" in row:  # llama-bench -o json
        n_prompt, n_gen = int(row.get("n_prompt", 0)), int(row.get("n_gen", 0))
        return {
            "engine": "llama.cpp",
            "config": "full",
            "dtype": row.get("model_type", "?"),
            "test": test_name(n_prompt, n_gen),
            "threads": row.get("n_threads"),
            "model": os.path.basename(row.get("model_filename", "?")),
            "mean": float(row["avg_ts"]),
            "std": float(row.get("stddev_ts", 0.0)),
            "samples": [float(x) for x in row.get("samples_ts", [])],
            "build": f"{row.get('build_commit', '?')} (build {row.get('build_number', '?')})",
            "backend": row.get("backends") or row.get("backend"),
        }
    if "mean_tps" in row:  # flexidepth bench -o json, bench/torch_bench.py
        test = row.get("test") or test_name(int(row.get("n_prompt", 0)), int(row.get("n_gen", 0)))
        return {
            "engine": row.get("engine", "?"),
            "config": row.get("config") or "full",
            "dtype": row.get("dtype", "?"),
            "test": test,
            "threads": row.get("threads"),
            "model": os.path.basename(str(row.get("model", "?"))),
            "mean": float(row["mean_tps"]),
            "std": float(row.get("std_tps", 0.0)),
            "samples": [float(x) for x in row.get("samples_tps", [])],
            "backend": row.get("backend"),
            "note": row.get("note"),
        }
    raise ValueError(f"unknown result row (no avg_ts / mean_tps): {sorted(row)}")


def load_json_rows(path):
    with open(path) as f:
        text = f.read().strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # jsonl
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("results", [data])
    return data


def read_meta(run_dir):
    meta = {}
    path = os.path.join(run_dir, "meta.txt")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    if k == "busy_run":
                        meta.setdefault(k, []).append(v)
                    else:
                        meta[k] = v
    return meta


def column_label(engine, config, multi_config):
    name = ENGINE_NAMES.get(engine, engine)
    if config != "full" or multi_config:
        name += f" [{config}]"
    return name


def fmt_tps(values_by_round, std_one_round):
    """median over rounds ± half the range (± the std over reps for a single round)."""
    vals = list(values_by_round.values())
    if not vals:
        return "—"
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / 2 if len(vals) > 1 else std_one_round
    prec = 1 if med >= 10 else 2
    return f"{med:.{prec}f} ± {spread:.{prec}f}"


def ratio(num_by_round, den_by_round):
    common = sorted(set(num_by_round) & set(den_by_round))
    if common:
        r = statistics.median(num_by_round[k] / den_by_round[k] for k in common)
    elif num_by_round and den_by_round:  # no shared round: ratio of the medians
        r = statistics.median(num_by_round.values()) / statistics.median(den_by_round.values())
    else:
        return "—"
    return f"{r:.2f}×"


def normalize_batched(row):
    """A batched-decode row -> (engine, batch size, aggregate decode tokens/s), or None if not one."""
    if "speed_tg" in row and "pl" in row:  # llama-batched-bench --output-format jsonl
        return "llama.cpp", int(row["pl"]), float(row["speed_tg"])
    if row.get("batch") and "mean_tps" in row and row.get("config", "full") == "full":  # flexidepth bench -b
        return row.get("engine", "flexidepth"), int(row["batch"]), float(row["mean_tps"])
    return None


def batched_table(run_dir):
    """The batched-decode table of a peers.sh run folder, as markdown lines ([] without batched files)."""
    by = {}  # (engine, batch) -> {round: aggregate tps}
    for f in sorted(os.listdir(run_dir)):
        m = re.fullmatch(r"batched-round(\d+)-\w+\.json", f)
        if not m:
            continue
        try:
            rows = load_json_rows(os.path.join(run_dir, f))
        except (OSError, ValueError) as e:
            print(f"skipping {f}: {e}", file=sys.stderr)
            continue
        for row in rows:
            n = normalize_batched(row) if isinstance(row, dict) else None
            if n:
                by.setdefault((n[0], n[1]), {})[int(m.group(1))] = n[2]
    if not by:
        return []
    engines = [e for e in ENGINE_ORDER if any(k[0] == e for k in by)]
    sizes = sorted({k[1] for k in by})
    header = ["batch"]
    for e in engines:
        header += [f"{ENGINE_NAMES.get(e, e)} tok/s", f"{ENGINE_NAMES.get(e, e)} × batch 1"]
    both = "llama.cpp" in engines and "flexidepth" in engines
    if both:
        header.append("flexidepth / llama.cpp")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for b in sizes:
        cells = [str(b)]
        for e in engines:
            cells.append(fmt_tps(by.get((e, b), {}), 0.0))
            cells.append(ratio(by.get((e, b), {}), by.get((e, 1), {})) if (e, 1) in by else "—")
        if both:
            cells.append(ratio(by.get(("flexidepth", b), {}), by.get(("llama.cpp", b), {})))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Aggregate decode tokens/s of all sequences together (each sequence its own prompt and cache), median over "
        "rounds ± half the range; the ratios are medians over rounds of within-round ratios."
    )
    return lines


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    per_run = "median"
    if argv[0].startswith("--per-run"):
        per_run = argv[0].split("=", 1)[1] if "=" in argv[0] else argv.pop(1)
        argv = argv[1:]
        if per_run not in ("median", "mean"):
            print(f"--per-run: median or mean, not {per_run}", file=sys.stderr)
            return 2
    meta = {}
    files = []
    for arg in argv:
        if os.path.isdir(arg):
            meta.update(read_meta(arg))
            files += sorted(
                os.path.join(arg, f) for f in os.listdir(arg) if f.endswith(".json") and f.startswith("round")
            )
        else:
            files.append(arg)
    if not files:
        print("no result files", file=sys.stderr)
        return 1

    results = []  # normalized rows with a "round"
    files_seen = {}  # engine -> files without a round number so far
    for path in files:
        m = re.search(r"round(\d+)", os.path.basename(path))
        rnd = int(m.group(1)) if m else None
        try:
            rows = load_json_rows(path)
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        rows = [normalize(row) for row in rows]
        if rnd is None and rows:
            eng = rows[0]["engine"]
            files_seen[eng] = files_seen.get(eng, 0) + 1
            rnd = files_seen[eng]
        for n in rows:
            n["round"] = rnd
            results.append(n)
    if not results:
        print("no results in the files", file=sys.stderr)
        return 1

    engines_present = {r["engine"] for r in results}
    configs = {}
    for r in results:
        configs.setdefault(r["engine"], set()).add(r["config"])
    col_keys = sorted(
        {(r["engine"], r["config"]) for r in results},
        key=lambda k: (ENGINE_ORDER.index(k[0]) if k[0] in ENGINE_ORDER else 99, k[1] != "full", k[1]),
    )
    labels = {k: column_label(k[0], k[1], len(configs[k[0]]) > 1) for k in col_keys}
    tests = sorted({r["test"] for r in results}, key=lambda t: (not t.startswith("pp"), t))

    # per (engine, config, test): {round: mean tps}, and the std over reps of the single round
    by_round, std_one = {}, {}
    for r in results:
        key = (r["engine"], r["config"], r["test"])
        value = statistics.median(r["samples"]) if per_run == "median" and r["samples"] else r["mean"]
        by_round.setdefault(key, {})[r["round"]] = value
        std_one[key] = r["std"]

    def first(engine, field):
        for r in results:
            if r["engine"] == engine and r.get(field):
                return r[field]
        return None

    # ---------------------------------------------------------------- provenance
    models = sorted({r["model"] for r in results})
    threads = sorted({str(r["threads"]) for r in results if r["threads"] is not None})
    n_rounds = len({r["round"] for r in results})
    print(f"### flexidepth vs peers: {', '.join(models)}, {'/'.join(threads)} threads")
    print()
    if meta.get("date"):
        print(f"- date: {meta['date']}")
    if meta.get("machine"):
        extra = ", ".join(v for v in (meta.get("cpus"), meta.get("mem")) if v)
        print(f"- machine: {meta['machine']}" + (f" ({extra})" if extra else ""))
    if "flexidepth" in engines_present or meta.get("flexidepth_commit"):
        dts = sorted({r["dtype"] for r in results if r["engine"] == "flexidepth"})
        print(
            f"- flexidepth: commit {meta.get('flexidepth_commit', '?')}"
            + (f", dtype {'/'.join(dts)}" if dts else "")
            + (f" (`flexidepth bench {meta['flexidepth_args']}`)" if meta.get("flexidepth_args") else "")
            + ("" if "flexidepth" in engines_present else " (not run)")
        )
    if "llama.cpp" in engines_present:
        build = meta.get("llama_build") or first("llama.cpp", "build")
        dts = sorted({r["dtype"] for r in results if r["engine"] == "llama.cpp"})
        print(f"- llama.cpp: `llama-bench` {build}; model type {'/'.join(dts)}")
    if "torch" in engines_present:
        print(f"- PyTorch: {first('torch', 'backend') or '?'}; {first('torch', 'note') or 'f32'}")
    sizes = ", ".join(f"{k}={meta[k]}" for k in ("n_prompt", "n_gen", "reps") if k in meta)
    print(
        f"- {n_rounds} interleaved round(s)" + (f"; {sizes}" if sizes else "")
        + (f"; model sha256 {meta['model_sha256']}…" if meta.get("model_sha256") else "")
    )
    if meta.get("busy_run"):
        print(f"- runs started while the CPUs were busy: {', '.join(meta['busy_run'])}")
    if len(models) > 1 or len(threads) > 1:
        print("- **warning: the engines did not all run the same model file / thread count**")
    print()

    # ---------------------------------------------------------------- table
    fd_keys = [k for k in col_keys if k[0] == "flexidepth"]
    ratio_cols = []
    for fk in fd_keys:
        for peer in ("llama.cpp", "torch"):
            if peer in engines_present:
                suffix = f" [{fk[1]}]" if len(fd_keys) > 1 or fk[1] != "full" else ""
                ratio_cols.append((f"flexidepth{suffix} / {ENGINE_NAMES[peer]}", fk, (peer, "full")))
    header = ["test"] + [f"{labels[k]} tok/s" for k in col_keys] + [c[0] for c in ratio_cols]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for t in tests:
        cells = [t]
        for k in col_keys:
            key = (k[0], k[1], t)
            cells.append(fmt_tps(by_round.get(key, {}), std_one.get(key, 0.0)))
        for _, fk, pk in ratio_cols:
            cells.append(ratio(by_round.get((fk[0], fk[1], t), {}), by_round.get((pk[0], pk[1], t), {})))
        print("| " + " | ".join(cells) + " |")
    print()
    run_stat = "median of its reps" if per_run == "median" else "mean"
    spread = "half the range over rounds (the std over reps where an engine ran one round)"
    if n_rounds == 1:
        spread = "the std over reps"
    print(f"tokens/s: median over rounds of each run's {run_stat}, ± {spread}.", end="")
    if ratio_cols:
        print(" Ratios: median over rounds of the within-round ratio (> 1: flexidepth faster).", end="")
    print()
    for arg in argv:
        if os.path.isdir(arg):
            lines = batched_table(arg)
            if lines:
                print()
                print(f"#### Batched decode ({meta.get('batch_prompt', '?')}-token prompt per sequence, "
                      f"{meta.get('n_gen', '?')} tokens each)")
                print()
                print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
