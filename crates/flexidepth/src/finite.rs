//! Non-finite numbers (NaN, ±inf) in tensors: refused where weights are read from a file or written to one, so
//! that a corrupt or diverged tensor is an error naming it, never a silent stream of `<|endoftext|>`.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// How many elements of `t` are NaN or infinite.
pub fn count_non_finite(t: &Tensor) -> Result<usize> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(v.iter().filter(|x| !x.is_finite()).count())
}

/// `Ok` when every element of `t` is finite, else an error naming `what`.
pub fn check_finite(what: &str, t: &Tensor) -> Result<()> {
    match count_non_finite(t)? {
        0 => Ok(()),
        n => Err(Error::Input(format!(
            "{what} holds {n} non-finite value(s) (NaN or infinity) of {}",
            t.elem_count()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nan_and_infinity_are_found_and_named() {
        let ok = Tensor::new(&[1f32, -2.0, 0.0], &Device::Cpu).unwrap();
        assert!(check_finite("w", &ok).is_ok());
        let bad = Tensor::new(&[[1f32, f32::NAN], [f32::INFINITY, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(count_non_finite(&bad).unwrap(), 2);
        let e = check_finite("router 'x'", &bad.to_dtype(DType::BF16).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("router 'x'") && e.contains("2 non-finite"), "{e}");
    }
}
