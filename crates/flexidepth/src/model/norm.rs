//! RMSNorm: `x / sqrt(mean(x²) + eps) · weight`, as in Llama and Qwen.

use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[dim]`
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    /// Normalise over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps as f32,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn matches_the_formula() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, -2., 3., 0.5], [0.1, 0.2, -0.3, 4.0]], &dev).unwrap();
        let w = Tensor::new(&[1f32, 2., 0.5, -1.], &dev).unwrap();
        let got = RmsNorm::new(w.clone(), 1e-5).forward(&x).unwrap();
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want = x
            .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
