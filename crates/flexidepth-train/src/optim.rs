//! AdamW, the cosine schedule with linear warm-up and global-norm clipping, as the HF Trainer applies them
//! (`torch.optim.AdamW`, `get_cosine_schedule_with_warmup`, `clip_grad_norm_`). The moments are plain tensors
//! keyed by parameter name, so that a checkpoint holds them and a resumed run continues exactly.

use super::params::DepthParams;
use candle_core::Tensor;
use flexidepth::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The official recipe: β = (0.9, 0.95), no weight decay.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub steps: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            steps: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &DepthParams, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        let c = self.config;
        self.steps += 1;
        let bc1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bc2 = 1.0 - c.beta2.powi(self.steps as i32);
        for (name, var) in &params.vars {
            let Some(g) = grads.get(name) else { continue };
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?,
                None => (g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let p = var.as_tensor();
            let decayed = if c.weight_decay > 0.0 {
                (p * (1.0 - lr * c.weight_decay))?
            } else {
                p.clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The moments by `adam_m.{name}` / `adam_v.{name}`, for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let m = self.m.iter().map(|(k, t)| (format!("adam_m.{k}"), t.clone()));
        let v = self.v.iter().map(|(k, t)| (format!("adam_v.{k}"), t.clone()));
        m.chain(v).collect()
    }

    /// Restore the moments written by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, steps: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.steps = steps;
        self.m.clear();
        self.v.clear();
        for (k, t) in tensors {
            if let Some(name) = k.strip_prefix("adam_m.") {
                self.m.insert(name.to_string(), t.clone());
            } else if let Some(name) = k.strip_prefix("adam_v.") {
                self.v.insert(name.to_string(), t.clone());
            }
        }
        if steps > 0 && self.m.is_empty() {
            return Err(Error::Input("checkpoint has no optimizer state".into()));
        }
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up from 0 over `warmup` steps, then
/// half a cosine down to 0 (HF's `get_cosine_schedule_with_warmup`).
pub fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// Warm-up steps for a warm-up ratio (HF rounds up).
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (total as f64 * ratio).ceil() as usize
}

/// Scale `grads` in place so that their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(warmup_steps(100, 0.03), 3);
        assert_eq!(cosine_lr(1.0, 0, 100, 3), 0.0);
        assert!((cosine_lr(1.0, 2, 100, 3) - 2.0 / 3.0).abs() < 1e-12);
        assert!((cosine_lr(1.0, 3, 100, 3) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(1.0, 3 + 97 / 2, 100, 3) - 0.5).abs() < 0.02);
        assert!(cosine_lr(1.0, 99, 100, 3) < 1e-3);
    }

    #[test]
    fn adamw_matches_a_hand_computed_update() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &dev).unwrap()).unwrap();
        let params = DepthParams {
            routed_layers: vec![],
            vars: BTreeMap::from([("p".to_string(), var.clone())]),
        };
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(cfg);
        let g = [0.5f64, -0.25];
        let grads = BTreeMap::from([("p".to_string(), Tensor::new(&[0.5f32, -0.25], &dev).unwrap())]);
        opt.step(&params, &grads, 0.01).unwrap();
        opt.step(&params, &grads, 0.01).unwrap();
        // By hand, two steps with the same gradient: m̂ = g, v̂ = g², so each update is lr·(sign(g)·g/(|g|+ε) + wd·p).
        let mut want = [1.0f64, -2.0];
        for _ in 0..2 {
            for (p, g) in want.iter_mut().zip(g) {
                *p *= 1.0 - 0.01 * 0.1;
                *p -= 0.01 * g / (g.abs() + 1e-8);
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut grads = BTreeMap::from([
            ("a".to_string(), Tensor::new(&[3.0f32], &dev).unwrap()),
            ("b".to_string(), Tensor::new(&[4.0f32], &dev).unwrap()),
        ]);
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = grads["a"].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5);
    }
}
