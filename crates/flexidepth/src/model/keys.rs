//! The one table from a module of the struct tree to its checkpoint key (HF names; the official FlexiDepth names
//! for routers and adapters). Loading, depth files, conversion and the trainer's parameters all name tensors here.

/// The embedding table, `[vocab, hidden]`.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// The final norm, `[hidden]`.
pub const NORM: &str = "model.norm.weight";
/// The output head, `[vocab, hidden]` (absent when tied to the embedding).
pub const LM_HEAD: &str = "lm_head.weight";

/// A tensor-holding module of decoder layer `i`, `model.layers.{i}.<path>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKey {
    InputLayernorm,
    QProj,
    KProj,
    VProj,
    OProj,
    /// Qwen3's per-head norms.
    QNorm,
    KNorm,
    PostAttentionLayernorm,
    GateProj,
    UpProj,
    DownProj,
    /// FlexiDepth router: W_down `[bottleneck, hidden]`.
    RouterEnc,
    /// Router bottleneck norm `[bottleneck]`.
    RouterNorm,
    /// W_up `[hidden, bottleneck]`.
    RouterDec,
    /// W_r `[1, hidden]`.
    RouterHead,
    /// Adapter gate `[narrow, hidden]`.
    AdapterGateProj,
    /// Adapter branch `[narrow, hidden]` (official name `down_proj`, see `model::adapter`).
    AdapterDownProj,
    /// Adapter output `[hidden, narrow]` (official name `up_proj`).
    AdapterUpProj,
}

impl LayerKey {
    /// The trainable tensors of one FlexiDepth layer, in a fixed order (router, then adapter).
    pub const DEPTH: [LayerKey; 7] = [
        LayerKey::RouterEnc,
        LayerKey::RouterNorm,
        LayerKey::RouterDec,
        LayerKey::RouterHead,
        LayerKey::AdapterGateProj,
        LayerKey::AdapterDownProj,
        LayerKey::AdapterUpProj,
    ];

    /// The module path inside the layer.
    pub const fn path(self) -> &'static str {
        match self {
            LayerKey::InputLayernorm => "input_layernorm",
            LayerKey::QProj => "self_attn.q_proj",
            LayerKey::KProj => "self_attn.k_proj",
            LayerKey::VProj => "self_attn.v_proj",
            LayerKey::OProj => "self_attn.o_proj",
            LayerKey::QNorm => "self_attn.q_norm",
            LayerKey::KNorm => "self_attn.k_norm",
            LayerKey::PostAttentionLayernorm => "post_attention_layernorm",
            LayerKey::GateProj => "mlp.gate_proj",
            LayerKey::UpProj => "mlp.up_proj",
            LayerKey::DownProj => "mlp.down_proj",
            LayerKey::RouterEnc => "router.router_enc",
            LayerKey::RouterNorm => "router.router_norm",
            LayerKey::RouterDec => "router.router_dec",
            LayerKey::RouterHead => "router.router_head",
            LayerKey::AdapterGateProj => "router_proj.gate_proj",
            LayerKey::AdapterDownProj => "router_proj.down_proj",
            LayerKey::AdapterUpProj => "router_proj.up_proj",
        }
    }

    /// `model.layers.{layer_idx}.<path>` (the module, without `.weight`).
    pub fn module(self, layer_idx: usize) -> String {
        format!("model.layers.{layer_idx}.{}", self.path())
    }

    /// `model.layers.{layer_idx}.<path>.weight`.
    pub fn weight(self, layer_idx: usize) -> String {
        format!("{}.weight", self.module(layer_idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_checkpoints() {
        assert_eq!(LayerKey::QProj.weight(3), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(
            LayerKey::RouterEnc.weight(16),
            "model.layers.16.router.router_enc.weight"
        );
        assert_eq!(
            LayerKey::AdapterUpProj.weight(0),
            "model.layers.0.router_proj.up_proj.weight"
        );
        assert_eq!(
            LayerKey::PostAttentionLayernorm.module(1),
            "model.layers.1.post_attention_layernorm"
        );
    }
}
