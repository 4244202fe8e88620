//! The table between HF tensor names (what the code uses everywhere) and llama.cpp's GGUF names.

/// Per-layer suffixes: (HF name after `model.layers.{i}.`, GGUF name after `blk.{i}.`).
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF name of an HF tensor name, if the table knows it.
pub fn hf_to_gguf(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let layer_idx: usize = idx.parse().ok()?;
    let (_, g) = LAYER_NAMES.iter().find(|(h, _)| *h == suffix)?;
    Some(format!("blk.{layer_idx}.{g}"))
}

/// The HF name of a GGUF tensor name, if the table knows it.
pub fn gguf_to_hf(gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let layer_idx: usize = idx.parse().ok()?;
    let (h, _) = LAYER_NAMES.iter().find(|(_, g)| *g == suffix)?;
    Some(format!("model.layers.{layer_idx}.{h}"))
}

/// A short kind for a tensor name (`q_proj`, `embed_tokens`, ...), used to summarise dtypes per kind.
pub fn tensor_kind(hf: &str) -> &str {
    let stem = hf
        .strip_suffix(".weight")
        .or_else(|| hf.strip_suffix(".bias"))
        .unwrap_or(hf);
    let kind = stem.rsplit('.').next().unwrap_or(stem);
    if hf.ends_with(".bias") {
        // Keep biases apart from weights of the same projection.
        return match kind {
            "q_proj" => "q_proj.bias",
            "k_proj" => "k_proj.bias",
            "v_proj" => "v_proj.bias",
            _ => "bias",
        };
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways() {
        for (hf, g) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.layers.7.self_attn.o_proj.weight", "blk.7.attn_output.weight"),
            ("model.layers.12.mlp.down_proj.weight", "blk.12.ffn_down.weight"),
            ("model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"),
        ] {
            assert_eq!(hf_to_gguf(hf).as_deref(), Some(g));
            assert_eq!(gguf_to_hf(g).as_deref(), Some(hf));
        }
        assert_eq!(hf_to_gguf("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_to_hf("rope_freqs.weight"), None);
        assert_eq!(tensor_kind("model.layers.3.self_attn.q_proj.weight"), "q_proj");
        assert_eq!(tensor_kind("model.layers.3.self_attn.q_proj.bias"), "q_proj.bias");
    }
}
