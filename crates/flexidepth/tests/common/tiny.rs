//! Tiny random checkpoints of every architecture, and a plain loop-based reference forward pass written from the
//! HF definitions and the FlexiDepth spec (A3), with no cache, no batching tricks and no candle.

use candle_core::{Device, Tensor};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::model::{Model, WeightFormat};
use flexidepth::weights::{SafetensorsFiles, WeightSource};
use std::collections::HashMap;
use std::path::Path;

/// Named weights with their shapes and values.
pub type Weights = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 40,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        // Qwen3 decouples head_dim from hidden/heads; exercise that.
        head_dim: if arch == Arch::Qwen3 { 16 } else { 8 },
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 16,
        tie_word_embeddings: arch == Arch::Llama,
        attention_bias: arch != Arch::Qwen3,
        bos_token_id: None,
        eos_token_ids: vec![1],
    }
}

/// Deterministic pseudo-random values in [-scale, scale).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn fill(names: Vec<(String, Vec<usize>)>, seed: u64, scale: f32) -> Weights {
    names
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n = shape.iter().product();
            let v = if name.contains("norm") {
                values(n, seed + k as u64, 0.2).into_iter().map(|x| 1.0 + x).collect()
            } else {
                values(n, seed + k as u64, scale)
            };
            (name, shape, v)
        })
        .collect()
}

/// HF-named base weights with shapes for `c`.
pub fn weights(c: &ModelConfig) -> Weights {
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut out: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![c.vocab_size, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if c.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        if c.arch == Arch::Qwen3 {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![c.vocab_size, h]));
    }
    fill(out, 0, 0.4)
}

/// Router and adapter weights under the official names (bottleneck h/4, adapter width i/4), random enough that
/// gates spread well around 0.5.
pub fn depth_weights(c: &ModelConfig, routed: &[usize], seed: u64) -> Weights {
    let (h, r, m) = (c.hidden_size, c.hidden_size / 4, c.intermediate_size / 4);
    let mut out = Vec::new();
    for l in routed {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.router.router_enc.weight"), vec![r, h]));
        out.push((format!("{p}.router.router_norm.weight"), vec![r]));
        out.push((format!("{p}.router.router_dec.weight"), vec![h, r]));
        out.push((format!("{p}.router.router_head.weight"), vec![1, h]));
        out.push((format!("{p}.router_proj.gate_proj.weight"), vec![m, h]));
        out.push((format!("{p}.router_proj.down_proj.weight"), vec![m, h]));
        out.push((format!("{p}.router_proj.up_proj.weight"), vec![h, m]));
    }
    fill(out, 1000 + seed, 0.5)
}

pub fn to_tensors(w: &Weights) -> HashMap<String, Tensor> {
    w.iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

pub fn save_safetensors(w: &Weights, path: &Path) {
    candle_core::safetensors::save(&to_tensors(w), path).unwrap();
}

pub fn load_dir(c: &ModelConfig, dir: &Path) -> flexidepth::Result<Model> {
    let src = WeightSource::Safetensors(SafetensorsFiles::open_dir(dir)?);
    Model::load(c, &src, WeightFormat::F32, &Device::Cpu)
}

/// A base model (no routers) built from `w` in a temporary folder.
pub fn model_from(c: &ModelConfig, w: &Weights) -> Model {
    let dir = tempfile::tempdir().unwrap();
    save_safetensors(w, &dir.path().join("model.safetensors"));
    load_dir(c, dir.path()).unwrap()
}

// ---- the reference ----

pub fn matvec(w: &[f32], b: Option<&[f32]>, out: usize, x: &[f32]) -> Vec<f32> {
    let inp = x.len();
    (0..out)
        .map(|o| w[o * inp..(o + 1) * inp].iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + b.map_or(0.0, |b| b[o]))
        .collect()
}

pub fn rmsnorm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps as f32).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

pub fn rope(x: &mut [f32], pos: usize, theta: f64) {
    let d = x.len();
    for i in 0..d / 2 {
        let a = pos as f64 * theta.powf(-((2 * i) as f64) / d as f64);
        let (c, s) = (a.cos() as f32, a.sin() as f32);
        let (x0, x1) = (x[i], x[i + d / 2]);
        x[i] = x0 * c - x1 * s;
        x[i + d / 2] = x1 * c + x0 * s;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// How the reference routes (mirrors `DepthSettings`; `None` = plain model).
#[derive(Clone, Copy)]
pub struct RefDepth {
    pub threshold: f32,
    pub force: Option<bool>,
    pub skip_kv: bool,
}

/// What a skipped row leaves out in the reference (mirrors `flexidepth::depth::SkipUnit`).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum RefUnit {
    #[default]
    Layer,
    Ffn,
    Attention,
}

/// Depth choices beyond routing, for the reference: layers removed (static pruning), an early exit, the skip unit.
#[derive(Clone, Default)]
pub struct RefExtra {
    pub removed: Vec<usize>,
    /// Run layers `0..exit_after` only.
    pub exit_after: Option<usize>,
    pub unit: RefUnit,
    /// Hard gates (`GateScaling::Hard`): the gate only decides; nothing is scaled by it.
    pub hard: bool,
}

/// What the reference computed.
pub struct RefOutput {
    /// `[pos][vocab]`
    pub logits: Vec<Vec<f32>>,
    /// Per layer, per position, per KV head: the rotated key.
    pub keys: Vec<Vec<Vec<Vec<f32>>>>,
    /// Per routed layer (in order): per position, (gate, run).
    pub decisions: Vec<Vec<(f32, bool)>>,
}

/// The model of `w` on `ids`, all positions at once, every layer routed that has router weights in `w`.
pub fn reference(c: &ModelConfig, w: &Weights, ids: &[u32], depth: Option<RefDepth>) -> RefOutput {
    reference_with(c, w, ids, depth, &RefExtra::default())
}

/// [`reference`] with layers removed, an early exit or another skip unit.
pub fn reference_with(
    c: &ModelConfig,
    w: &Weights,
    ids: &[u32],
    depth: Option<RefDepth>,
    extra: &RefExtra,
) -> RefOutput {
    let get = |n: &str| w.iter().find(|(name, _, _)| name == n).map(|(_, _, v)| v.as_slice());
    let t = |n: String| get(&n).unwrap_or_else(|| panic!("{n}"));
    let (h, hd) = (c.hidden_size, c.head_dim);
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let emb = t("model.embed_tokens.weight".into());
    let mut xs: Vec<Vec<f32>> = ids
        .iter()
        .map(|&id| emb[id as usize * h..(id as usize + 1) * h].to_vec())
        .collect();
    let mut keys = Vec::new();
    let mut decisions = Vec::new();
    for l in 0..c.num_hidden_layers {
        if extra.exit_after == Some(l) {
            break;
        }
        if extra.removed.contains(&l) {
            keys.push(Vec::new());
            continue;
        }
        if extra.exit_after == Some(l) {
            break;
        }
        if extra.removed.contains(&l) {
            keys.push(Vec::new());
            continue;
        }
        let p = format!("model.layers.{l}");
        let bias = |n: &str| get(&format!("{p}.self_attn.{n}.bias"));
        let eps = c.rms_norm_eps;
        let us: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| rmsnorm(x, t(format!("{p}.input_layernorm.weight")), eps))
            .collect();
        // Routing: gate per token, then the decision.
        let routed = depth.filter(|_| get(&format!("{p}.router.router_enc.weight")).is_some());
        let gates: Vec<(f32, bool)> = match routed {
            None => vec![(1.0, true); xs.len()],
            Some(d) => us
                .iter()
                .map(|u| {
                    let r = t(format!("{p}.router.router_norm.weight")).len();
                    let z = matvec(t(format!("{p}.router.router_enc.weight")), None, r, u);
                    let z: Vec<f32> = rmsnorm(&z, t(format!("{p}.router.router_norm.weight")), eps)
                        .iter()
                        .map(|v| v.tanh())
                        .collect();
                    let y = matvec(t(format!("{p}.router.router_dec.weight")), None, h, &z);
                    let logit = matvec(t(format!("{p}.router.router_head.weight")), None, 1, &y)[0];
                    let g = 1.0 / (1.0 + (-logit).exp());
                    (g, d.force.unwrap_or(g > d.threshold))
                })
                .collect(),
        };
        let heads = |x: &[f32], name: &str, n: usize, norm: Option<&str>| -> Vec<Vec<f32>> {
            let y = matvec(t(format!("{p}.self_attn.{name}.weight")), bias(name), n * hd, x);
            (0..n)
                .map(|k| {
                    let v = y[k * hd..(k + 1) * hd].to_vec();
                    match norm.and_then(|nn| get(&format!("{p}.self_attn.{nn}.weight"))) {
                        Some(g) => rmsnorm(&v, g, eps),
                        None => v,
                    }
                })
                .collect()
        };
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, u) in us.iter().enumerate() {
            let mut k = heads(u, "k_proj", nkv, Some("k_norm"));
            k.iter_mut().for_each(|v| rope(v, pos, c.rope_theta));
            ks.push(k);
            vs.push(heads(u, "v_proj", nkv, None));
        }
        let skip_kv = routed.is_none_or(|d| d.skip_kv);
        let mut out = Vec::new();
        for pos in 0..xs.len() {
            let (g, run) = gates[pos];
            if !run && extra.unit == RefUnit::Layer {
                // Skipped: no attention; (1 - w) · adapter(post_norm(x)); official names: down_proj is the branch.
                let v = rmsnorm(&xs[pos], t(format!("{p}.post_attention_layernorm.weight")), eps);
                let m = t(format!("{p}.router_proj.gate_proj.weight")).len() / h;
                let a = matvec(t(format!("{p}.router_proj.gate_proj.weight")), None, m, &v);
                let b = matvec(t(format!("{p}.router_proj.down_proj.weight")), None, m, &v);
                let act: Vec<f32> = a.iter().zip(&b).map(|(a, b)| silu(*a) * b).collect();
                let y = matvec(t(format!("{p}.router_proj.up_proj.weight")), None, h, &act);
                let a = if extra.hard { 1.0 } else { 1.0 - g };
                out.push(xs[pos].iter().zip(&y).map(|(x, y)| x + a * y).collect());
                continue;
            }
            let attends = run || extra.unit == RefUnit::Ffn;
            let mut q = heads(&us[pos], "q_proj", nh, Some("q_norm"));
            q.iter_mut().for_each(|v| rope(v, pos, c.rope_theta));
            // With the FFN as the skip unit every row attends, so every key stays visible.
            let visible: Vec<usize> = (0..=pos)
                .filter(|&j| j == pos || skip_kv || gates[j].1 || extra.unit == RefUnit::Ffn)
                .collect();
            let mut attn = vec![0f32; nh * hd];
            for (head, qh) in q.iter().enumerate() {
                let kvh = head / (nh / nkv);
                let scores: Vec<f32> = visible
                    .iter()
                    .map(|&j| qh.iter().zip(&ks[j][kvh]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt())
                    .collect();
                let mx = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for (n, &j) in visible.iter().enumerate() {
                    for d in 0..hd {
                        attn[head * hd + d] += e[n] / z * vs[j][kvh][d];
                    }
                }
            }
            let o = matvec(t(format!("{p}.self_attn.o_proj.weight")), None, h, &attn);
            let hres = if attends { add(&xs[pos], &o) } else { xs[pos].clone() };
            let n2 = rmsnorm(&hres, t(format!("{p}.post_attention_layernorm.weight")), eps);
            if !run && extra.unit == RefUnit::Ffn {
                // The adapter stands in for the MLP, scaled by 1 − w.
                let m = t(format!("{p}.router_proj.gate_proj.weight")).len() / h;
                let a = matvec(t(format!("{p}.router_proj.gate_proj.weight")), None, m, &n2);
                let b = matvec(t(format!("{p}.router_proj.down_proj.weight")), None, m, &n2);
                let act: Vec<f32> = a.iter().zip(&b).map(|(a, b)| silu(*a) * b).collect();
                let y = matvec(t(format!("{p}.router_proj.up_proj.weight")), None, h, &act);
                let a = if extra.hard { 1.0 } else { 1.0 - g };
                out.push(hres.iter().zip(&y).map(|(x, y)| x + a * y).collect());
                continue;
            }
            let i = c.intermediate_size;
            let gp = matvec(t(format!("{p}.mlp.gate_proj.weight")), None, i, &n2);
            let up = matvec(t(format!("{p}.mlp.up_proj.weight")), None, i, &n2);
            let act: Vec<f32> = gp.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            let d = matvec(t(format!("{p}.mlp.down_proj.weight")), None, h, &act);
            // The FFN is scaled by w on routed layers (dynamic and skip modes); forced run is the plain layer.
            // Attention-only skipping leaves the MLP unscaled.
            let scale = match routed {
                Some(dd) if dd.force != Some(true) && extra.unit != RefUnit::Attention && !extra.hard => g,
                _ => 1.0,
            };
            out.push(hres.iter().zip(&d).map(|(a, b)| a + scale * b).collect());
        }
        if routed.is_some() {
            decisions.push(gates);
        }
        keys.push(ks);
        xs = out;
    }
    let head = get("lm_head.weight").unwrap_or(emb);
    let logits = xs
        .iter()
        .map(|x| {
            matvec(
                head,
                None,
                c.vocab_size,
                &rmsnorm(x, t("model.norm.weight".into()), c.rms_norm_eps),
            )
        })
        .collect();
    RefOutput {
        logits,
        keys,
        decisions,
    }
}

/// Largest absolute difference between two equally shaped row lists.
pub fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max)
}

/// A tiny model with routers on `routed`, attached (threshold 0.5) from `depth`'s official-named tensors through a
/// depth-weights file, as a user's file would be read.
pub fn routed_model(c: &ModelConfig, base: &Weights, depth: &Weights, routed: &[usize]) -> Model {
    let mut m = model_from(c, base);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("depth.safetensors");
    candle_core::safetensors::save(&to_tensors(depth), &path).unwrap();
    let src = WeightSource::Safetensors(SafetensorsFiles::open(vec![path]).unwrap());
    let parts = flexidepth::depth::file::load_parts(&src, c, routed, &Device::Cpu).unwrap();
    m.attach_depth(parts, flexidepth::depth::Routing::default()).unwrap();
    m
}
