#!/usr/bin/env python3
"""PyTorch + transformers CPU baseline for bench/peers.sh.

Loads a GGUF file with transformers (which DEQUANTIZES every tensor to f32: this measures an f32
model, not the quantized one) and measures, like llama-bench:

  pp{P}: one forward of P seeded random token ids from an empty KV cache (logits of the last
         position only), tokens/s = P / time;
  tg{N}: N greedy single-token decode steps at batch 1 with the KV cache (a DynamicCache passed back each step),
         starting from an empty cache, tokens/s = N / time of the N steps.

Each test runs once as warm-up, then R timed repetitions. Prints a JSON array with the same
shape as `flexidepth bench -o json` (engine, model, dtype, threads, config, test, n_prompt, n_gen,
reps, mean_tps, std_tps, samples_tps, plus a few extras).
"""

import argparse
import inspect
import json
import os
import statistics
import sys
import time


def log(msg):
    print(f"[torch_bench] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("-o", "--output", help="write the JSON here instead of stdout")
    args = ap.parse_args()

    from torch_common import load_gguf_f32, set_threads

    set_threads(args.threads)
    import torch
    import transformers

    t0 = time.perf_counter()
    model = load_gguf_f32(args.model)
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"loaded {os.path.basename(args.model)} in {load_s:.1f} s: transformers dequantized the GGUF to f32 "
        f"({n_params / 1e6:.1f} M params); torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, vocab, (1, args.n_prompt), generator=gen)
    first = torch.randint(0, vocab, (1, 1), generator=gen)

    def new_cache():
        from transformers import DynamicCache

        try:
            return DynamicCache(config=model.config)
        except TypeError:
            return DynamicCache()

    # transformers >= 5.2x calls the KV-cache argument `cache` (`past_key_values` is deprecated);
    # `logits_to_keep=1` computes the lm_head for the last position only, as llama-bench does.
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def forward(ids, cache):
        return model(input_ids=ids, use_cache=True, **{cache_arg: cache}, **extra)

    def run_pp():
        cache = new_cache()
        t = time.perf_counter()
        forward(prompt, cache)
        return args.n_prompt / (time.perf_counter() - t)

    def run_tg():
        cache = new_cache()
        tok = first
        t = time.perf_counter()
        for _ in range(args.n_gen):
            out = forward(tok, cache)
            tok = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        dt = time.perf_counter() - t
        assert cache.get_seq_length() == args.n_gen, "the KV cache was not used"
        return args.n_gen / dt

    rows = []
    tests = []
    if args.n_prompt > 0:
        tests.append((f"pp{args.n_prompt}", args.n_prompt, 0, run_pp))
    if args.n_gen > 0:
        tests.append((f"tg{args.n_gen}", 0, args.n_gen, run_tg))
    with torch.inference_mode():
        for name, n_prompt, n_gen, fn in tests:
            fn()  # warm-up
            samples = [fn() for _ in range(args.reps)]
            mean = statistics.fmean(samples)
            std = statistics.stdev(samples) if len(samples) > 1 else 0.0
            log(f"{name}: {mean:.2f} ± {std:.2f} tok/s")
            rows.append(
                {
                    "engine": "torch",
                    "model": os.path.basename(args.model),
                    "dtype": "f32",
                    "threads": args.threads,
                    "config": "full",
                    "test": name,
                    "n_prompt": n_prompt,
                    "n_gen": n_gen,
                    "reps": args.reps,
                    "mean_tps": mean,
                    "std_tps": std,
                    "samples_tps": samples,
                    "backend": f"torch {torch.__version__} + transformers {transformers.__version__}",
                    "note": "GGUF dequantized to f32 by transformers",
                    "load_s": load_s,
                }
            )

    text = json.dumps(rows, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
