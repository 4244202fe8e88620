//! Next-token selection from logits: repeat penalty, temperature, top-k, top-p, min-p (in transformers' order),
//! then a seeded draw. Temperature 0 is greedy (argmax, first index on ties).

use crate::error::{Error, Result};
use rand::Rng;

/// Sampling settings; the neutral value of each filter switches it off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f64,
    /// 0 = off.
    pub min_p: f64,
    /// 1 = off. Logits of recent tokens: positive ones divided by it, negative ones multiplied.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), the other values at their defaults.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Refuse values outside each parameter's domain, naming the parameter and the domain:
    /// `temperature` ≥ 0 (0 = greedy), `top_p` in (0, 1], `min_p` in [0, 1], `repeat_penalty` > 0 (1 = off),
    /// all finite. `top_k` (0 = off) and `repeat_last_n` take any count. The domains are llama.cpp's and
    /// transformers' (`TopPLogitsWarper` and `RepetitionPenaltyLogitsProcessor` raise on the same values); a value
    /// outside them used to fall back silently to greedy decoding or garble the text.
    ///
    /// Errors: [`Error::InvalidParameter`] for the first parameter out of its domain.
    pub fn validate(&self) -> Result<()> {
        check("temperature", self.temperature, "a number ≥ 0 (0 = greedy)", |x| {
            x >= 0.0
        })?;
        check("top_p", self.top_p, "a number in (0, 1] (1 = off)", |x| {
            x > 0.0 && x <= 1.0
        })?;
        check("min_p", self.min_p, "a number in [0, 1] (0 = off)", |x| {
            (0.0..=1.0).contains(&x)
        })?;
        check(
            "repeat_penalty",
            self.repeat_penalty as f64,
            "a number > 0 (1 = off)",
            |x| x > 0.0,
        )?;
        Ok(())
    }
}

/// `Ok` when `value` is finite and `ok(value)`, else [`Error::InvalidParameter`].
fn check(name: &'static str, value: f64, domain: &'static str, ok: impl Fn(f64) -> bool) -> Result<()> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: value.to_string(),
            domain,
        })
    }
}

/// A seeded sampler over [`SamplingParams`].
pub struct Sampler {
    params: SamplingParams,
    rng: crate::rng::SeededRng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`; it does not check the values (see [`SamplingParams::validate`]).
    pub fn new(params: SamplingParams) -> Self {
        let rng = crate::rng::seeded(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from `logits` (`[vocab]`), given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits: Vec<f32> = logits
            .iter()
            .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
            .collect();
        self.apply_repeat_penalty(&mut logits, history);
        if self.params.temperature <= 0.0 {
            return argmax(&logits);
        }
        let probs = self.filtered_probs(&logits);
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for &(id, p) in &probs {
            acc += p;
            if r < acc {
                return id;
            }
        }
        probs.last().map(|&(id, _)| id).unwrap_or_else(|| argmax(&logits))
    }

    fn apply_repeat_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let p = self.params.repeat_penalty;
        if p == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(self.params.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &t in &history[start..] {
            if let Some(l) = logits.get_mut(t as usize) {
                if seen.insert(t) {
                    *l = if *l > 0.0 { *l / p } else { *l * p };
                }
            }
        }
    }

    /// Candidates that survive the filters with their renormalised probabilities, most likely first.
    pub fn filtered_probs(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        let t = self.params.temperature.max(1e-6);
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l as f64 / t))
            .collect();
        if cand.is_empty() {
            return vec![(0, 1.0)];
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut z = 0.0;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            z += c.1;
        }
        for c in cand.iter_mut() {
            c.1 /= z;
        }
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = 0;
            for c in &cand {
                keep += 1;
                acc += c.1;
                if acc >= self.params.top_p {
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if self.params.min_p > 0.0 {
            let floor = cand[0].1 * self.params.min_p;
            cand.retain(|c| c.1 >= floor);
        }
        let z: f64 = cand.iter().map(|c| c.1).sum();
        for c in cand.iter_mut() {
            c.1 /= z;
        }
        cand
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: usize, top_p: f64, min_p: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 7,
        }
    }

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
        assert_eq!(s.sample(&[f32::NAN, 0.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0, 0, 1.0, 0.0)
            });
            (0..40).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5f32, 2.0, 1.9, -3.0];
        for p in [
            params(1.5, 1, 1.0, 0.0),
            params(1.5, 0, 1e-9, 0.0),
            params(1.5, 0, 0.0, 0.0),
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..20 {
                assert_eq!(s.sample(&logits, &[]), 1);
            }
        }
    }

    #[test]
    fn top_k_larger_than_vocab_keeps_all() {
        let s = Sampler::new(params(1.0, 1000, 1.0, 0.0));
        let probs = s.filtered_probs(&[0.0, 0.0, 0.0]);
        assert_eq!(probs.len(), 3);
        assert!(probs.iter().all(|&(_, p)| (p - 1.0 / 3.0).abs() < 1e-12));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (logits are their logs).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let s = Sampler::new(params(1.0, 0, 0.75, 0.0));
        let ids: Vec<u32> = s.filtered_probs(&logits).iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![0, 1]);
        let s = Sampler::new(params(1.0, 0, 0.5, 0.0));
        assert_eq!(s.filtered_probs(&logits).len(), 1);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let s = Sampler::new(params(1.0, 0, 1.0, 0.5));
        let ids: Vec<u32> = s.filtered_probs(&logits).iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![0, 1]); // 0.2 < 0.5 · 0.5
    }

    #[test]
    fn values_outside_each_domain_are_refused_with_name_and_domain() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        for good in [
            SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                min_p: 0.0,
                ..ok.clone()
            },
            SamplingParams {
                temperature: 5.0,
                top_p: 1e-9,
                min_p: 1.0,
                repeat_penalty: 0.01,
                ..ok.clone()
            },
        ] {
            assert!(good.validate().is_ok(), "{good:?}");
        }
        let bad: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f64::NAN,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f64::INFINITY,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: -0.5,
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: 2.0,
                    ..ok.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    min_p: -0.01,
                    ..ok.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..ok.clone()
                },
                "repeat_penalty",
            ),
            (
                SamplingParams {
                    repeat_penalty: -1.0,
                    ..ok.clone()
                },
                "repeat_penalty",
            ),
            (
                SamplingParams {
                    repeat_penalty: f32::NAN,
                    ..ok.clone()
                },
                "repeat_penalty",
            ),
        ];
        for (p, name) in bad {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("must be"), "{e}");
        }
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&[1.0, 1.5, -1.0], &[1]), 0); // 1.5 / 2 < 1.0
        assert_eq!(s.sample(&[-1.0, -1.2, -5.0], &[0]), 1); // -1.0 · 2 < -1.2
    }
}
