//! Tokens/s of one FlexiDepth training step on the default model, the same step as `bench/torch_train_step.py`
//! measures in PyTorch: seeded random ids `[batch, seq_len]`, routers and adapters on layers 15..29, L_lm + α·L_skip
//! (α 1e-3), backward, clipping at 1.0, one AdamW step. Our trainer runs the sequences of a step one at a time.
//! Run: `RAYON_NUM_THREADS=2 cargo bench -p flexidepth-train --bench train_step [-- BATCH SEQ_LEN STEPS]`.

use candle_core::Device;
use flexidepth::depth::default_routed_layers;
use flexidepth::depth::file::init_tensors;
use flexidepth::loader::ModelFiles;
use flexidepth::model::WeightFormat;
use flexidepth::rng::Draw;
use flexidepth_train::loss::{LossKind, Objective};
use flexidepth_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use flexidepth_train::params::DepthParams;
use flexidepth_train::step_grads;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (batch, seq_len, steps) = (
        *args.first().unwrap_or(&4),
        *args.get(1).unwrap_or(&256),
        *args.get(2).unwrap_or(&5),
    );
    let files = ModelFiles::open("smollm2-135m-instruct").expect("run scripts/fetch-models.sh first");
    let mut model = files.load_model(WeightFormat::F32, &Device::Cpu).unwrap();
    let layers = default_routed_layers(model.config.num_hidden_layers);
    let tensors = init_tensors(&model.config, &layers, 16, 16, 42).unwrap();
    let params = DepthParams::from_tensors(&layers, &tensors).unwrap();
    params
        .attach(&mut model, flexidepth::depth::Routing::default())
        .unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    let obj = Objective {
        kind: LossKind::Lm,
        alpha: 1e-3,
        routing: flexidepth::depth::Routing::default(),
    };
    let mut rng = flexidepth::rng::seeded(42);
    let vocab = model.config.vocab_size as u32;
    let mut samples = Vec::new();
    println!(
        "threads {} batch {batch} seq_len {seq_len}",
        rayon::current_num_threads()
    );
    for step in 0..=steps {
        let seqs: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..seq_len).map(|_| rng.below(vocab as usize) as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let t0 = Instant::now();
        let mut g = step_grads(&model, &params, &refs, &obj).unwrap();
        clip_grad_norm(&mut g.grads, 1.0).unwrap();
        opt.step(&params, &g.grads, 1e-3).unwrap();
        let tps = (batch * seq_len) as f64 / t0.elapsed().as_secs_f64();
        let kind = if step == 0 { "warm-up" } else { "step" };
        println!(
            "{kind} {step}: {tps:.1} tok/s, loss {:.4}, layers/token {:.2}",
            g.loss, g.layers
        );
        if step > 0 {
            samples.push(tps);
        }
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "median {:.1} tokens/s over {} steps",
        samples[samples.len() / 2],
        samples.len()
    );
}
