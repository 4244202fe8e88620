//! What a depth-adapter file must satisfy before it is attached or converted: metadata in range, exactly the
//! router and adapter tensors of its routed layers (none missing, none left over, no empty dimension), and every
//! number finite. A corrupt adapter is refused with the key or tensor named, never run.

use super::file::DepthMeta;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::keys::LayerKey;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// Check the metadata of a depth file against itself and against the base `config` it is meant for.
pub fn check_meta(path: &Path, meta: &DepthMeta, config: &ModelConfig) -> Result<()> {
    let bad = |m: String| Err(Error::bad_file(path, format!("depth file metadata {m}")));
    let layers = &meta.routed_layers;
    if layers.is_empty() {
        return bad("'routed_layers' is empty".into());
    }
    if !layers.windows(2).all(|w| w[0] < w[1]) {
        return bad("'routed_layers' must be increasing, without repeats".into());
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= config.num_hidden_layers) {
        return bad(format!(
            "'routed_layers' names layer {l}, but the model has {} layers",
            config.num_hidden_layers
        ));
    }
    if !(meta.skip_threshold.is_finite() && (0.0..=1.0).contains(&meta.skip_threshold)) {
        return bad(format!("'skip_threshold' is {}, not in [0, 1]", meta.skip_threshold));
    }
    if !(meta.embed_abs_mean.is_finite() && meta.embed_abs_mean > 0.0) {
        return bad(format!(
            "'embed_abs_mean' is {}, not a positive number",
            meta.embed_abs_mean
        ));
    }
    if meta.router_reduction == 0 || meta.proj_reduction == 0 {
        return bad("reduction factors must be positive".into());
    }
    Ok(())
}

/// Check a depth file's tensors: only router and adapter tensors of `meta.routed_layers`, no empty dimension, every
/// value finite. (Missing tensors and wrong shapes are named by [`super::file::load_parts`].)
pub fn check_tensors(path: &Path, meta: &DepthMeta, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let wanted: std::collections::HashSet<String> = meta
        .routed_layers
        .iter()
        .flat_map(|&l| LayerKey::DEPTH.iter().map(move |k| k.weight(l)))
        .collect();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !wanted.contains(name) {
            return Err(Error::bad_file(
                path,
                format!("tensor '{name}' is not a router or adapter tensor of the routed layers"),
            ));
        }
        if t.dims().contains(&0) {
            return Err(Error::bad_file(
                path,
                format!("tensor '{name}' has an empty dimension {:?}", t.dims()),
            ));
        }
        crate::finite::check_finite(&format!("tensor '{name}'"), t).map_err(|e| Error::bad_file(path, e))?;
    }
    Ok(())
}

/// [`check_meta`] and [`check_tensors`], and the reduction factors against the widths the tensors have.
pub fn check_depth(
    path: &Path,
    meta: &DepthMeta,
    tensors: &HashMap<String, Tensor>,
    config: &ModelConfig,
) -> Result<()> {
    check_meta(path, meta, config)?;
    check_tensors(path, meta, tensors)?;
    for &l in &meta.routed_layers {
        for (key, factor, size, k) in [
            (
                "router_reduction_factor",
                meta.router_reduction,
                config.hidden_size,
                LayerKey::RouterEnc,
            ),
            (
                "proj_reduction_factor",
                meta.proj_reduction,
                config.intermediate_size,
                LayerKey::AdapterGateProj,
            ),
        ] {
            let want = (size / factor).max(1);
            if let Some(found) = tensors.get(&k.weight(l)).and_then(|t| t.dims().first().copied()) {
                if found != want {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "metadata '{key}' {factor} implies width {want}, but '{}' has {found}",
                            k.weight(l)
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
