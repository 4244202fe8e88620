//! Tiny random checkpoints of every architecture, run through the engine (safetensors and GGUF loaders, prefill
//! and cached decode) and through a plain loop-based reference forward pass written from the HF definitions.
//! Also the malformed-checkpoint errors, which need files we can break on purpose.

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::tiny::{config, load_dir, max_diff, reference, save_safetensors, weights, Weights};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::model::{Logits, Model, WeightFormat};
use flexidepth::weights::{GgufFile, WeightSource};
use flexidepth::Error;

/// Prefill 5 tokens, then decode 3 one at a time through the cache; every row must equal the reference.
fn check_against_reference(c: &ModelConfig, w: &Weights, m: &Model) {
    let ids = [3u32, 17, 5, 39, 0, 22, 8, 11];
    let want = reference(c, w, &ids, None).logits;
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
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "{:?}: max diff {diff}", c.arch);
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
            permute_rows(v, c.num_attention_heads, if shape.len() == 2 { cols } else { 1 })
        } else if g.contains("attn_k.") {
            permute_rows(v, c.num_key_value_heads, if shape.len() == 2 { cols } else { 1 })
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
        ("llama.feed_forward_length", V::U32(c.intermediate_size as u32)),
        ("llama.attention.head_count", V::U32(c.num_attention_heads as u32)),
        ("llama.attention.head_count_kv", V::U32(c.num_key_value_heads as u32)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(c.rms_norm_eps as f32)),
        ("llama.rope.freq_base", V::F32(c.rope_theta as f32)),
        ("llama.context_length", V::U32(c.max_position_embeddings as u32)),
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
    let m = Model::load(&read, &WeightSource::Gguf(gguf), WeightFormat::F32, &Device::Cpu).unwrap();
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
    assert!(matches!(e, Error::UnknownArchitecture(ref a) if a == "mamba"), "{e}");
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
    assert!(e.to_string().contains("model.layers.1.mlp.up_proj.weight"), "{e}");
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
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");
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
    assert!(matches!(m.forward(&[], &mut cache, Logits::Last), Err(Error::Input(_))));
    let e = m.forward(&[40], &mut cache, Logits::Last).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}
