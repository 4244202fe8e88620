//! The tensors a [`ModelConfig`] implies, by HF name with their shapes: the checklist a file is held against
//! before anything is sized by its metadata (llama.cpp's loader refuses a file with a tensor missing, misshapen or
//! left over; so do we).

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::model::keys::{self, LayerKey};

/// Every base tensor `config` implies (no routers), by HF name, with its shape.
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let c = config;
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut out = vec![
        (keys::EMBED_TOKENS.to_string(), vec![c.vocab_size, h]),
        (keys::NORM.to_string(), vec![h]),
    ];
    if !c.tie_word_embeddings {
        out.push((keys::LM_HEAD.to_string(), vec![c.vocab_size, h]));
    }
    for l in 0..c.num_hidden_layers {
        let mut layer = vec![
            (LayerKey::InputLayernorm, vec![h]),
            (LayerKey::PostAttentionLayernorm, vec![h]),
            (LayerKey::QProj, vec![q, h]),
            (LayerKey::KProj, vec![kv, h]),
            (LayerKey::VProj, vec![kv, h]),
            (LayerKey::OProj, vec![h, q]),
            (LayerKey::GateProj, vec![i, h]),
            (LayerKey::UpProj, vec![i, h]),
            (LayerKey::DownProj, vec![h, i]),
        ];
        if c.arch == Arch::Qwen3 {
            layer.push((LayerKey::QNorm, vec![hd]));
            layer.push((LayerKey::KNorm, vec![hd]));
        }
        for (k, shape) in layer {
            out.push((k.weight(l), shape));
        }
        if c.attention_bias {
            for (k, n) in [(LayerKey::QProj, q), (LayerKey::KProj, kv), (LayerKey::VProj, kv)] {
                out.push((format!("{}.bias", k.module(l)), vec![n]));
            }
        }
    }
    out
}

/// The layer index of an HF tensor name `model.layers.{i}.…`, if it is one.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split_once('.')?.0.parse().ok()
}

/// Refuse tensor names of layers the config does not have (`num_hidden_layers` smaller than the checkpoint: it
/// would run silently with fewer layers).
pub fn check_layer_count<'a>(names: impl IntoIterator<Item = &'a String>, config: &ModelConfig) -> Result<()> {
    let n = config.num_hidden_layers;
    if let Some(extra) = names.into_iter().find(|name| layer_of(name).is_some_and(|l| l >= n)) {
        return Err(Error::Config(format!(
            "'num_hidden_layers' is {n}, but the weights hold '{extra}'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tensors_follow_the_config() {
        let c = ModelConfig::from_hf_json(&serde_json::json!({"architectures": ["Qwen2ForCausalLM"],
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}))
        .unwrap();
        let t = expected_tensors(&c);
        // embed, norm, lm_head, and per layer 9 weights + 3 biases.
        assert_eq!(t.len(), 3 + 2 * 12);
        assert!(t.contains(&("model.layers.1.self_attn.k_proj.bias".into(), vec![32])));
        let names: Vec<String> = vec!["model.layers.1.mlp.up_proj.weight".into()];
        assert!(check_layer_count(&names, &c).is_ok());
        let names: Vec<String> = vec!["model.layers.2.mlp.up_proj.weight".into()];
        let e = check_layer_count(&names, &c).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers") && e.contains("layers.2"), "{e}");
    }
}
