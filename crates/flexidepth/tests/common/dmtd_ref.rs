//! A loop-based reference for DMTD decoding (spec B3, B4): each step recomputed from scratch over the whole
//! sequence with plain `Vec<f32>` arithmetic (no cache, no candle), layer groups run on the rows the semantics say.
//!
//! With cyclical refilling, every position's thinking-layer K/V come from its real token over the real history,
//! so the thinking layers are an ordinary causal pass over all rows (as in training, B3); the shadow ablation's
//! thinking layers see only the prompt and the heads, at their true positions. The decoding layers see every row,
//! with input `t` (plain prefill) or `e + t` (re-added) at the prompt, `e + t` at heads (`t` when τ = 1, the base
//! model) and `e` at late-only tokens.

use super::tiny::{add, matvec, rmsnorm, rope, silu, Weights};
use flexidepth::config::ModelConfig;

/// The DMTD setting the reference follows.
#[derive(Debug, Clone, Copy)]
pub struct RefDmtd {
    pub encoding: usize,
    pub decoding: usize,
    pub tau: usize,
    /// Re-added embedding at the prompt (the HF reference's prefill).
    pub readd: bool,
    /// The no-refill shadow history.
    pub shadow: bool,
}

fn get<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    w.iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, v)| v.as_slice())
        .unwrap_or_else(|| panic!("{name}"))
}

fn try_get<'a>(w: &'a Weights, name: &str) -> Option<&'a [f32]> {
    w.iter().find(|(n, _, _)| n == name).map(|(_, _, v)| v.as_slice())
}

/// Plain decoder layer `l` on rows `xs` at `positions` (increasing): each row attends over the rows up to itself.
pub fn layer(c: &ModelConfig, w: &Weights, l: usize, xs: &[Vec<f32>], positions: &[usize]) -> Vec<Vec<f32>> {
    let p = format!("model.layers.{l}");
    let (h, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let heads = |x: &[f32], name: &str, n: usize, norm: Option<&str>, pos: Option<usize>| -> Vec<Vec<f32>> {
        let bias = try_get(w, &format!("{p}.self_attn.{name}.bias"));
        let y = matvec(get(w, &format!("{p}.self_attn.{name}.weight")), bias, n * hd, x);
        (0..n)
            .map(|k| {
                let mut v = y[k * hd..(k + 1) * hd].to_vec();
                if let Some(g) = norm.and_then(|nn| try_get(w, &format!("{p}.self_attn.{nn}.weight"))) {
                    v = rmsnorm(&v, g, eps);
                }
                if let Some(pos) = pos {
                    rope(&mut v, pos, c.rope_theta);
                }
                v
            })
            .collect()
    };
    let us: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| rmsnorm(x, get(w, &format!("{p}.input_layernorm.weight")), eps))
        .collect();
    let ks: Vec<_> = us
        .iter()
        .zip(positions)
        .map(|(u, &pos)| heads(u, "k_proj", nkv, Some("k_norm"), Some(pos)))
        .collect();
    let vs: Vec<_> = us.iter().map(|u| heads(u, "v_proj", nkv, None, None)).collect();
    (0..xs.len())
        .map(|r| {
            let q = heads(&us[r], "q_proj", nh, Some("q_norm"), Some(positions[r]));
            let mut attn = vec![0f32; nh * hd];
            for (head, qh) in q.iter().enumerate() {
                let kvh = head / (nh / nkv);
                let scores: Vec<f32> = (0..=r)
                    .map(|j| qh.iter().zip(&ks[j][kvh]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt())
                    .collect();
                let mx = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for j in 0..=r {
                    for d in 0..hd {
                        attn[head * hd + d] += e[j] / z * vs[j][kvh][d];
                    }
                }
            }
            let hres = add(
                &xs[r],
                &matvec(get(w, &format!("{p}.self_attn.o_proj.weight")), None, h, &attn),
            );
            let n2 = rmsnorm(&hres, get(w, &format!("{p}.post_attention_layernorm.weight")), eps);
            let i = c.intermediate_size;
            let g = matvec(get(w, &format!("{p}.mlp.gate_proj.weight")), None, i, &n2);
            let u = matvec(get(w, &format!("{p}.mlp.up_proj.weight")), None, i, &n2);
            let act: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            add(
                &hres,
                &matvec(get(w, &format!("{p}.mlp.down_proj.weight")), None, h, &act),
            )
        })
        .collect()
}

fn layers(
    c: &ModelConfig,
    w: &Weights,
    range: std::ops::Range<usize>,
    xs: Vec<Vec<f32>>,
    pos: &[usize],
) -> Vec<Vec<f32>> {
    range.fold(xs, |xs, l| layer(c, w, l, &xs, pos))
}

/// Logits of the last row of `ids` (the first `prompt_len` the prompt, the rest fed one by one) under `r`.
pub fn dmtd_logits(c: &ModelConfig, w: &Weights, ids: &[u32], prompt_len: usize, r: RefDmtd) -> Vec<f32> {
    let (n, h) = (ids.len(), c.hidden_size);
    let (e_end, d_start) = (r.encoding, c.num_hidden_layers - r.decoding);
    let emb = get(w, "model.embed_tokens.weight");
    let x: Vec<Vec<f32>> = ids
        .iter()
        .map(|&i| emb[i as usize * h..(i as usize + 1) * h].to_vec())
        .collect();
    let all: Vec<usize> = (0..n).collect();
    let e = layers(c, w, 0..e_end, x, &all);
    let is_head = |j: usize| j >= prompt_len && (j - prompt_len).is_multiple_of(r.tau);
    let think_rows: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&j| !r.shadow || j < prompt_len || is_head(j))
        .collect();
    let t_rows = layers(
        c,
        w,
        e_end..d_start,
        think_rows.iter().map(|&j| e[j].clone()).collect(),
        &think_rows,
    );
    let t = |j: usize| &t_rows[think_rows.iter().position(|&k| k == j).expect("a thinking row")];
    let s0: Vec<Vec<f32>> = all
        .iter()
        .map(|&j| {
            if j < prompt_len {
                if r.readd {
                    add(&e[j], t(j))
                } else {
                    t(j).clone()
                }
            } else if is_head(j) {
                if r.tau > 1 {
                    add(&e[j], t(j))
                } else {
                    t(j).clone()
                }
            } else {
                e[j].clone()
            }
        })
        .collect();
    let s = layers(c, w, d_start..c.num_hidden_layers, s0, &all);
    let head = try_get(w, "lm_head.weight").unwrap_or(emb);
    matvec(
        head,
        None,
        c.vocab_size,
        &rmsnorm(&s[n - 1], get(w, "model.norm.weight"), c.rms_norm_eps),
    )
}
