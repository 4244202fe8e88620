//! `bench` rows `dmtd:τ`: greedy generation with Direct Multi-Token Decoding ([`flexidepth::dmtd::DmtdDecoder`]),
//! and its costs averaged over a cycle (spec B4.8): one head reads every layer, each of the τ−1 late-only tokens
//! the encoding and decoding layers; every token reads the output head. The refill block's extra rows at a head
//! read no extra weights (the thinking layers' weights are read once for all rows of the block).

use crate::bench::Timed;
use flexidepth::dmtd::{DmtdDecoder, DmtdOptions};
use flexidepth::error::Result;
use flexidepth::generate::sampler::argmax;
use flexidepth::model::plan::RowStep;
use flexidepth::model::Model;
use std::time::Instant;

/// Layers run and weight bytes read per token, averaged over one cycle of `opts` (head, output head and one
/// embedding row included).
pub fn cycle_costs(model: &Model, opts: &DmtdOptions) -> (f64, f64) {
    let bytes = model.layer_bytes();
    let layer = |l: usize| bytes[l].read(Some(RowStep::RUN), false) as f64;
    let layout = &opts.layout;
    let every: Vec<usize> = layout.encoding().chain(layout.decoding()).collect();
    let late_bytes: f64 = every.iter().map(|&l| layer(l)).sum();
    let thinking_bytes: f64 = layout.thinking().map(layer).sum();
    let tau = layout.mtp_horizon as f64;
    let head = model.head_weight_bytes() as f64;
    let layers = every.len() as f64 + layout.num_thinking_layers as f64 / tau;
    (layers, late_bytes + thinking_bytes / tau + head)
}

/// Generation with DMTD: prefill `context` (untimed), then `n` greedy decode steps, the first a cycle head. The
/// costs are the cycle averages of [`cycle_costs`], one entry per generated token.
pub fn time_generation(model: &Model, opts: DmtdOptions, context: &[u32], n: usize) -> Result<Timed> {
    let mut dec = DmtdDecoder::new(model, opts, context.len().saturating_add(n).saturating_add(1))?;
    let out = dec.prefill(context)?;
    let mut next = argmax(&out.logits.squeeze(0)?.to_vec1::<f32>()?);
    let start = Instant::now();
    for _ in 0..n {
        let out = dec.step(next)?;
        next = argmax(&out.logits.squeeze(0)?.to_vec1::<f32>()?);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Timed {
        seconds,
        costs: vec![cycle_costs(model, &opts); n],
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flexidepth::config::{Arch, ModelConfig};
    use flexidepth::dmtd::DmtdLayout;
    use flexidepth::model::WeightFormat;
    use flexidepth::weights::{SafetensorsFiles, WeightSource};

    /// A tiny random Llama (4 layers, hidden 8, vocabulary 16), f32.
    pub(crate) fn tiny() -> Model {
        let c = ModelConfig {
            arch: Arch::Llama,
            vocab_size: 16,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 4,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        };
        let dev = candle_core::Device::Cpu;
        let mut t = std::collections::HashMap::new();
        let mut put = |n: String, shape: &[usize]| {
            let v = candle_core::Tensor::rand(-0.3f32, 0.3, shape, &dev).unwrap();
            t.insert(n, v);
        };
        put("model.embed_tokens.weight".into(), &[16, 8]);
        put("model.norm.weight".into(), &[8]);
        for l in 0..4 {
            let p = format!("model.layers.{l}");
            for (n, s) in [
                ("input_layernorm", vec![8]),
                ("post_attention_layernorm", vec![8]),
                ("self_attn.q_proj", vec![8, 8]),
                ("self_attn.k_proj", vec![4, 8]),
                ("self_attn.v_proj", vec![4, 8]),
                ("self_attn.o_proj", vec![8, 8]),
                ("mlp.gate_proj", vec![16, 8]),
                ("mlp.up_proj", vec![16, 8]),
                ("mlp.down_proj", vec![8, 16]),
            ] {
                put(format!("{p}.{n}.weight"), &s);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
        let src = WeightSource::Safetensors(SafetensorsFiles::open_dir(dir.path()).unwrap());
        Model::load(&c, &src, WeightFormat::F32, &dev).unwrap()
    }

    #[test]
    fn cycle_costs_follow_the_cost_model() {
        let m = tiny();
        let per_layer = m.layer_bytes()[0].base() as f64;
        let head = m.head_weight_bytes() as f64;
        // 4 equal layers, D = 1, τ = 3: 1 + 3/3 = 2 layers per token.
        let opts = DmtdOptions::new(DmtdLayout::new(4, 0, 1, 3).unwrap());
        let (layers, bytes) = cycle_costs(&m, &opts);
        assert_eq!(layers, 2.0);
        assert!((bytes - (2.0 * per_layer + head)).abs() < 1e-6);
        // τ = 1 costs full depth.
        let (layers, bytes) = cycle_costs(&m, &DmtdOptions::new(DmtdLayout::new(4, 1, 1, 1).unwrap()));
        assert_eq!((layers, bytes), (4.0, 4.0 * per_layer + head));
        let t = time_generation(&m, opts, &[1, 2, 3], 5).unwrap();
        assert_eq!(t.costs.len(), 5);
    }
}
