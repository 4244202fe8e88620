#!/usr/bin/env python3
"""PyTorch CPU reference for the speed of ONE FlexiDepth training step, beside `flexidepth train`.

Loads a GGUF file with transformers (which DEQUANTIZES every tensor to f32, so this trains on an f32
model, as our Rust trainer does) and replicates the step of `crates/flexidepth-train/src`:

  * the base model is frozen (requires_grad False everywhere); the later half of the layers
    (15..29 for SmolLM2-135M) is routed, each routed layer gets a trainable router and adapter:
      router:  u = input_layernorm(x);  z = tanh(RMSNorm_r(W_enc u));  w = sigmoid(W_head W_dec z)
               W_enc [hidden/16, hidden], RMSNorm_r [hidden/16] (ones, eps = rms_norm_eps),
               W_dec [hidden, hidden/16], W_head [1, hidden];  hard mask m = [w > 0.5] (no gradient)
      adapter: up_proj(silu(gate_proj(v)) * down_proj(v)),  gate_proj/down_proj [inter/16, hidden]
               (N(0, 0.02)), up_proj [hidden, inter/16] (zeros)
  * every routed layer is computed densely for all rows, then mixed with the hard decision:
      h = x + m * attn(u)          (causal self-attention, every row's K/V visible)
      v = post_attention_layernorm(h)
      out = h + m*w*mlp(v) + (1-m)*(1-w)*adapter(v)
  * the layers below the first routed one run under torch.no_grad() (no graph);
  * each sequence of T ids is scored on its T-1 next-token predictions:
      L = (Σ CE + alpha * Σ_positions (Σ_routed layers w)^2) / (predicted positions of the whole step)
    then loss.backward(), clip_grad_norm_(params, 1.0), one AdamW step (lr 1e-3, betas (0.9, 0.95),
    weight decay 0).

A timed step is zero_grad + forward + backward + clip + optimizer step on a batch of B seeded random
sequences of T token ids; tokens/s = B*T / step time (the Rust trainer's `tokens_per_s` also counts
all T ids of each sequence). By default the batch runs as one [B, T] forward/backward; with
--per-sequence it runs one sequence at a time (forward + backward each, gradients accumulated, one
optimizer step), which is how the Rust trainer does it.

--check first verifies the hand-written forward: with every routed layer forced to run and w forced
to 1, its logits must equal `model(input_ids).logits` (the max |diff| is printed, ~1e-4 expected).

Prints per-step tokens/s to stderr and a JSON summary to stdout (or -o FILE).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time


def log(msg):
    print(f"[torch_train_step] {msg}", file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (B)")
    ap.add_argument("--seq-len", type=int, default=256, help="token ids per sequence (T)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--alpha", type=float, default=1e-3, help="weight of the skip loss")
    ap.add_argument("--threshold", type=float, default=0.5, help="a row runs its layer when w > threshold")
    ap.add_argument("--per-sequence", action="store_true",
                    help="forward+backward one sequence at a time, as the Rust trainer does")
    ap.add_argument("--check", action="store_true",
                    help="first compare the forward (all layers run, w = 1) with model(input_ids).logits")
    ap.add_argument("-o", "--output", help="write the JSON here instead of stdout")
    return ap.parse_args()


def main():
    args = parse_args()
    if args.seq_len < 2:
        sys.exit("--seq-len must be at least 2 (a sequence of T ids has T-1 predictions)")

    from torch_common import load_gguf_f32, set_threads

    set_threads(args.threads)
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import transformers

    # ---------------------------------------------------------------- model
    t0 = time.perf_counter()
    model = load_gguf_f32(args.model)
    model.requires_grad_(False)
    load_s = time.perf_counter() - t0
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_heads = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    eps = cfg.rms_norm_eps
    log(
        f"loaded {os.path.basename(args.model)} in {load_s:.1f} s (dequantized to f32, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params); torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {torch.get_num_threads()} threads"
    )

    # ------------------------------------------------------ routers, adapters
    class Router(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            r = hidden // 16
            self.enc = nn.Parameter(torch.empty(r, hidden).normal_(0.0, 0.02))
            self.norm = nn.Parameter(torch.ones(r))
            self.dec = nn.Parameter(torch.empty(hidden, r).normal_(0.0, 0.02))
            self.head = nn.Parameter(torch.empty(1, hidden).normal_(0.0, 0.02))

        def forward(self, u):  # [..., hidden] -> w [..., 1]
            z = torch.tanh(rms_norm(u @ self.enc.t(), self.norm))
            return torch.sigmoid((z @ self.dec.t()) @ self.head.t())

    class Adapter(nn.Module):
        def __init__(self, hidden, inter):
            super().__init__()
            a = inter // 16
            self.gate_proj = nn.Parameter(torch.empty(a, hidden).normal_(0.0, 0.02))
            self.down_proj = nn.Parameter(torch.empty(a, hidden).normal_(0.0, 0.02))
            self.up_proj = nn.Parameter(torch.zeros(hidden, a))

        def forward(self, v):
            return (F.silu(v @ self.gate_proj.t()) * (v @ self.down_proj.t())) @ self.up_proj.t()

    def rms_norm(x, weight):
        # The Llama RMSNorm (computed in f32, which everything here is).
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    torch.manual_seed(args.seed)
    first = n_layers // 2  # routed layers: the later half (15..29 for 30 layers)
    routed = list(range(first, n_layers))
    routers = nn.ModuleList(Router(cfg.hidden_size) for _ in routed)
    adapters = nn.ModuleList(Adapter(cfg.hidden_size, cfg.intermediate_size) for _ in routed)
    params = list(routers.parameters()) + list(adapters.parameters())
    log(
        f"routed layers {routed[0]}..{routed[-1]}: {sum(p.numel() for p in params)} trainable params; "
        f"base frozen: {not any(p.requires_grad for p in model.parameters())}"
    )

    # ------------------------------------------------------------- forward
    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def attention(attn, u, cos, sin):
        b, t, _ = u.shape
        q = attn.q_proj(u).view(b, t, n_heads, head_dim).transpose(1, 2)
        k = attn.k_proj(u).view(b, t, n_kv, head_dim).transpose(1, 2)
        v = attn.v_proj(u).view(b, t, n_kv, head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = n_heads // n_kv  # query heads sharing a KV head are adjacent
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn.o_proj(o.transpose(1, 2).reshape(b, t, n_heads * head_dim))

    def mlp(m, v):
        return m.down_proj(F.silu(m.gate_proj(v)) * m.up_proj(v))

    def plain_layer(layer, x, cos, sin):
        h = x + attention(layer.self_attn, rms_norm(x, layer.input_layernorm.weight), cos, sin)
        return h + mlp(layer.mlp, rms_norm(h, layer.post_attention_layernorm.weight))

    def forward(ids, force_full=False):
        """ids [B, T] -> (logits [B, T, vocab], gates: one [B, T] per routed layer, rows run)."""
        b, t = ids.shape
        pos = torch.arange(t).unsqueeze(0)
        layers = model.model.layers
        with torch.no_grad():
            x = model.model.embed_tokens(ids)
            cos, sin = model.model.rotary_emb(x, pos)  # [1, T, head_dim]
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
            for i in range(first):
                x = plain_layer(layers[i], x, cos, sin)
        gates, rows_run = [], 0
        for j, i in enumerate(routed):
            layer = layers[i]
            if force_full:
                x = plain_layer(layer, x, cos, sin)
                continue
            u = rms_norm(x, layer.input_layernorm.weight)
            w = routers[j](u)  # [B, T, 1]
            m = (w.detach() > args.threshold).to(x.dtype)
            rows_run += int(m.sum())
            h = x + m * attention(layer.self_attn, u, cos, sin)
            v = rms_norm(h, layer.post_attention_layernorm.weight)
            x = h + (m * w) * mlp(layer.mlp, v) + ((1 - m) * (1 - w)) * adapters[j](v)
            gates.append(w.squeeze(-1))
        logits = model.lm_head(rms_norm(x, model.model.norm.weight))
        return logits, gates, rows_run

    def sequence_loss(ids, step_tokens):
        """Forward ids[:, :-1], score ids[:, 1:]; the objective is already divided by the step's tokens."""
        inputs, targets = ids[:, :-1], ids[:, 1:]
        logits, gates, rows_run = forward(inputs)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        skip = torch.stack(gates, 0).sum(0).pow(2).sum()
        return (ce + args.alpha * skip) / step_tokens, ce.item(), skip.item(), rows_run

    # ------------------------------------------------------------- check
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), generator=gen)
    check_diff = None
    if args.check:
        with torch.no_grad():
            ours, _, _ = forward(ids, force_full=True)
            ref = model(input_ids=ids).logits
            check_diff = (ours - ref).abs().max().item()
        ok = check_diff < 1e-3
        log(f"check: max |our logits - model(input_ids).logits| = {check_diff:.3e} "
            f"(logits up to {ref.abs().max().item():.1f}) {'OK' if ok else 'MISMATCH'}")
        if not ok:
            sys.exit(1)

    # ------------------------------------------------------------- train
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    step_tokens = args.batch * (args.seq_len - 1)  # predicted positions of the whole step
    n_tok = args.batch * args.seq_len

    def train_step():
        opt.zero_grad(set_to_none=True)
        ce = skip = 0.0
        rows = 0
        chunks = ids.split(1) if args.per_sequence else [ids]
        for chunk in chunks:
            loss, c, s, r = sequence_loss(chunk, step_tokens)
            loss.backward()
            ce, skip, rows = ce + c, skip + s, rows + r
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        opt.step()
        loss = (ce + args.alpha * skip) / step_tokens
        layers_used = first + rows / step_tokens  # mean layers run per predicted token
        return loss, grad_norm, layers_used

    mode = "per-sequence" if args.per_sequence else "batched"
    log(f"{mode}: batch {args.batch} x seq_len {args.seq_len} = {n_tok} tokens/step, "
        f"{args.warmup} warm-up + {args.steps} timed steps")
    samples, secs, losses = [], [], []
    for s in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss, gnorm, layers_used = train_step()
        dt = time.perf_counter() - t
        timed = s >= args.warmup
        if timed:
            samples.append(n_tok / dt)
            secs.append(dt)
            losses.append(loss)
        log(f"{'step' if timed else 'warm-up'} {s + 1}: {dt:.2f} s, {n_tok / dt:.1f} tok/s, loss {loss:.4f}, "
            f"grad_norm {gnorm:.3e}, layers/token {layers_used:.2f}")
        if not math.isfinite(loss):
            sys.exit("non-finite loss")

    summary = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": os.path.basename(args.model),
        "dtype": "f32",
        "threads": args.threads,
        "mode": mode,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "routed_layers": [routed[0], routed[-1]],
        "median_tokens_per_s": statistics.median(samples) if samples else None,
        "samples": samples,
        "step_s": secs,
        "losses": losses,
        "check_max_abs_diff": check_diff,
        "note": "GGUF dequantized to f32 by transformers; step = zero_grad+forward+backward+clip+AdamW",
    }
    text = json.dumps(summary, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
