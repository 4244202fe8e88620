//! Tiny random checkpoints of every architecture, run through the engine (safetensors and GGUF loaders, prefill
//! and cached decode) and through a plain loop-based reference forward pass written from the HF definitions.
//! Also the malformed-checkpoint errors, which need files we can break on purpose.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::model::{Logits, Model, WeightFormat};
use flexidepth::weights::{GgufFile, SafetensorsFiles, WeightSource};
use flexidepth::Error;
use std::collections::HashMap;
use std::path::Path;

fn config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 40,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
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
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// HF-named weights with shapes for `c`.
fn weights(c: &ModelConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut out: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![c.vocab_size, h])];
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
    out.into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n = shape.iter().product();
            let v = if name.contains("norm") {
                values(n, k as u64, 0.2)
                    .into_iter()
                    .map(|x| 1.0 + x)
                    .collect()
            } else {
                values(n, k as u64, 0.4)
            };
            (name, shape, v)
        })
        .collect()
}

fn save_safetensors(w: &[(String, Vec<usize>, Vec<f32>)], path: &Path) {
    let map: HashMap<String, Tensor> = w
        .iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn load_dir(c: &ModelConfig, dir: &Path) -> flexidepth::Result<Model> {
    let src = WeightSource::Safetensors(SafetensorsFiles::open_dir(dir)?);
    Model::load(c, &src, WeightFormat::F32, &Device::Cpu)
}

// ---- the reference: plain loops, no cache, straight from the HF modelling code ----

fn matvec(w: &[f32], b: Option<&[f32]>, out: usize, x: &[f32]) -> Vec<f32> {
    let inp = x.len();
    (0..out)
        .map(|o| {
            w[o * inp..(o + 1) * inp]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + b.map_or(0.0, |b| b[o])
        })
        .collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps as f32).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

fn rope(x: &mut [f32], pos: usize, theta: f64) {
    let d = x.len();
    for i in 0..d / 2 {
        let a = pos as f64 * theta.powf(-((2 * i) as f64) / d as f64);
        let (c, s) = (a.cos() as f32, a.sin() as f32);
        let (x0, x1) = (x[i], x[i + d / 2]);
        x[i] = x0 * c - x1 * s;
        x[i + d / 2] = x1 * c + x0 * s;
    }
}

fn reference_logits(
    c: &ModelConfig,
    w: &[(String, Vec<usize>, Vec<f32>)],
    ids: &[u32],
) -> Vec<Vec<f32>> {
    let get = |n: &str| {
        w.iter()
            .find(|(name, _, _)| name == n)
            .map(|(_, _, v)| v.as_slice())
    };
    let t = |n: String| get(&n).unwrap_or_else(|| panic!("{n}"));
    let (h, hd) = (c.hidden_size, c.head_dim);
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let emb = t("model.embed_tokens.weight".into());
    let mut xs: Vec<Vec<f32>> = ids
        .iter()
        .map(|&id| emb[id as usize * h..(id as usize + 1) * h].to_vec())
        .collect();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let bias = |n: &str| get(&format!("{p}.self_attn.{n}.bias"));
        let normed: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| rmsnorm(x, t(format!("{p}.input_layernorm.weight")), c.rms_norm_eps))
            .collect();
        let heads = |x: &[f32], name: &str, n: usize, norm: Option<&str>| -> Vec<Vec<f32>> {
            let y = matvec(
                t(format!("{p}.self_attn.{name}.weight")),
                bias(name),
                n * hd,
                x,
            );
            (0..n)
                .map(|k| {
                    let v = y[k * hd..(k + 1) * hd].to_vec();
                    match norm.and_then(|nn| get(&format!("{p}.self_attn.{nn}.weight"))) {
                        Some(g) => rmsnorm(&v, g, c.rms_norm_eps),
                        None => v,
                    }
                })
                .collect()
        };
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, x) in normed.iter().enumerate() {
            let mut q = heads(x, "q_proj", nh, Some("q_norm"));
            let mut k = heads(x, "k_proj", nkv, Some("k_norm"));
            q.iter_mut().for_each(|v| rope(v, pos, c.rope_theta));
            k.iter_mut().for_each(|v| rope(v, pos, c.rope_theta));
            qs.push(q);
            ks.push(k);
            vs.push(heads(x, "v_proj", nkv, None));
        }
        for pos in 0..xs.len() {
            let mut attn = vec![0f32; nh * hd];
            for head in 0..nh {
                let kvh = head / (nh / nkv);
                let scores: Vec<f32> = (0..=pos)
                    .map(|j| {
                        qs[pos][head]
                            .iter()
                            .zip(&ks[j][kvh])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for j in 0..=pos {
                    for d in 0..hd {
                        attn[head * hd + d] += e[j] / z * vs[j][kvh][d];
                    }
                }
            }
            let o = matvec(t(format!("{p}.self_attn.o_proj.weight")), None, h, &attn);
            let hres: Vec<f32> = xs[pos].iter().zip(&o).map(|(a, b)| a + b).collect();
            let n2 = rmsnorm(
                &hres,
                t(format!("{p}.post_attention_layernorm.weight")),
                c.rms_norm_eps,
            );
            let i = c.intermediate_size;
            let g = matvec(t(format!("{p}.mlp.gate_proj.weight")), None, i, &n2);
            let u = matvec(t(format!("{p}.mlp.up_proj.weight")), None, i, &n2);
            let act: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = matvec(t(format!("{p}.mlp.down_proj.weight")), None, h, &act);
            xs[pos] = hres.iter().zip(&d).map(|(a, b)| a + b).collect();
        }
    }
    let head = get("lm_head.weight").unwrap_or(emb);
    xs.iter()
        .map(|x| {
            matvec(
                head,
                None,
                c.vocab_size,
                &rmsnorm(x, t("model.norm.weight".into()), c.rms_norm_eps),
            )
        })
        .collect()
}

/// Prefill 5 tokens, then decode 3 one at a time through the cache; every row must equal the reference.
fn check_against_reference(c: &ModelConfig, w: &[(String, Vec<usize>, Vec<f32>)], m: &Model) {
    let ids = [3u32, 17, 5, 39, 0, 22, 8, 11];
    let want = reference_logits(c, w, &ids);
    let mut cache = m.new_cache(ids.len());
    let mut got: Vec<Vec<f32>> = m
        .forward(&ids[..5], &mut cache, Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap();
    for &id in &ids[5..] {
        got.extend(
            m.forward(&[id], &mut cache, Logits::Last)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
        );
    }
    for (pos, (g, r)) in got.iter().zip(&want).enumerate() {
        let diff = g
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{:?} pos {pos}: max diff {diff}", c.arch);
    }
}

#[test]
fn every_architecture_matches_the_reference_from_safetensors() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let c = config(arch);
        let w = weights(&c);
        let dir = tempfile::tempdir().unwrap();
        save_safetensors(&w, &dir.path().join("model.safetensors"));
        let m = load_dir(&c, dir.path()).unwrap();
        check_against_reference(&c, &w, &m);
    }
}

/// The llama converter's q/k row permutation, as llama.cpp's convert script applies it.
fn permute_rows(v: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = v.len() / cols;
    let hd = rows / n_head;
    let mut out = vec![0f32; v.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + j * (hd / 2) + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A llama GGUF written the way llama.cpp writes one (GGUF names, permuted q/k rows, metadata config) loads to
/// the same model as its safetensors twin.
#[test]
fn llama_gguf_with_permuted_qk_matches_the_reference() {
    let c = config(Arch::Llama);
    let w = weights(&c);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let mut tensors = Vec::new();
    for (name, shape, v) in &w {
        let g = flexidepth::weights::names::hf_to_gguf(name).unwrap();
        let cols = *shape.last().unwrap();
        let v = if g.contains("attn_q.") {
            permute_rows(
                v,
                c.num_attention_heads,
                if shape.len() == 2 { cols } else { 1 },
            )
        } else if g.contains("attn_k.") {
            permute_rows(
                v,
                c.num_key_value_heads,
                if shape.len() == 2 { cols } else { 1 },
            )
        } else {
            v.clone()
        };
        let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
        tensors.push((g, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    use gguf_file::Value as V;
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(c.num_hidden_layers as u32)),
        ("llama.embedding_length", V::U32(c.hidden_size as u32)),
        (
            "llama.feed_forward_length",
            V::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count",
            V::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            V::U32(c.num_key_value_heads as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            V::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", V::F32(c.rope_theta as f32)),
        (
            "llama.context_length",
            V::U32(c.max_position_embeddings as u32),
        ),
        ("tokenizer.ggml.eos_token_id", V::U32(1)),
    ];
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &t_refs).unwrap();
    drop(f);

    let gguf = GgufFile::open(&path).unwrap();
    let read = gguf.config().unwrap();
    assert_eq!(read, c);
    let m = Model::load(
        &read,
        &WeightSource::Gguf(gguf),
        WeightFormat::F32,
        &Device::Cpu,
    )
    .unwrap();
    check_against_reference(&c, &w, &m);

    // The same file with an architecture we do not know is refused by name.
    let mut meta = meta;
    meta[0].1 = V::String("mamba".into());
    let bad = dir.path().join("mamba.gguf");
    let mut f = std::fs::File::create(&bad).unwrap();
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &meta_refs, &t_refs).unwrap();
    drop(f);
    let e = match flexidepth::loader::ModelFiles::open(bad.to_str().unwrap()) {
        Err(e) => e,
        Ok(_) => panic!("an unknown architecture must be refused"),
    };
    assert!(
        matches!(e, Error::UnknownArchitecture(ref a) if a == "mamba"),
        "{e}"
    );
}

#[test]
fn wrong_shape_and_missing_tensor_are_named() {
    let c = config(Arch::Qwen2);
    let mut w = weights(&c);
    let dir = tempfile::tempdir().unwrap();
    let k = w
        .iter()
        .position(|(n, _, _)| n == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    w[k].1 = vec![c.intermediate_size - 1, c.hidden_size];
    w[k].2.truncate((c.intermediate_size - 1) * c.hidden_size);
    save_safetensors(&w, &dir.path().join("model.safetensors"));
    let e = load_dir(&c, dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { name, expected, found } if name == "model.layers.1.mlp.up_proj.weight"
            && expected == &vec![48, 32] && found == &vec![47, 32]),
        "{e}"
    );
    w.remove(k);
    save_safetensors(&w, &dir.path().join("model.safetensors"));
    let e = load_dir(&c, dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_safetensors_are_clear_errors() {
    let c = config(Arch::Qwen3);
    let w = weights(&c);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_safetensors(&w, &path);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_dir(&c, dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage").unwrap();
    let e = load_dir(&c, dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a readable safetensors file"), "{e}");
}

#[test]
fn context_overflow_and_empty_input_are_errors() {
    let c = config(Arch::Llama);
    let w = weights(&c);
    let dir = tempfile::tempdir().unwrap();
    save_safetensors(&w, &dir.path().join("model.safetensors"));
    let m = load_dir(&c, dir.path()).unwrap();
    let mut cache = m.new_cache(64);
    assert_eq!(
        cache.max_len(),
        c.max_position_embeddings,
        "the cache never exceeds the context window"
    );
    let long: Vec<u32> = (0..17).map(|i| i % 40).collect();
    assert!(matches!(
        m.forward(&long, &mut cache, Logits::Last),
        Err(Error::ContextOverflow {
            tokens: 17,
            context: 16
        })
    ));
    assert!(matches!(
        m.forward(&[], &mut cache, Logits::Last),
        Err(Error::Input(_))
    ));
    let e = m
        .forward(&[40], &mut cache, Logits::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}
