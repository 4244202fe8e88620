//! The released DMTD config keys of an HF `config.json` (spec B2): `num_encoding_layers`, `num_thinking_layers`,
//! `num_decoding_layers`, `mtp_horizon`, with `model_type = "dmtdqwen3"` and architecture `DMTDQwen3ForCausalLM`
//! on a Qwen3 base. The state dict keeps the standard Qwen3 names, so such a folder loads as Qwen3 and the keys
//! give DMTD decoding its defaults; [`write_keys`] writes them back (`convert`).

use super::DmtdLayout;
use crate::config::{Arch, HfConfig};
use crate::error::{Error, Result};
use serde_json::{json, Value};

/// Architecture name of a Qwen3 DMTD checkpoint (`register_dmtdqwen3.py`, the authors' vLLM fork).
pub const DMTD_QWEN3_ARCHITECTURE: &str = "DMTDQwen3ForCausalLM";
/// `model_type` of a Qwen3 DMTD checkpoint.
pub const DMTD_QWEN3_MODEL_TYPE: &str = "dmtdqwen3";
/// τ when a config names the layer groups but not `mtp_horizon`: the vLLM fork's default (spec B2).
pub const DEFAULT_MTP_HORIZON: usize = 4;

/// The DMTD layout a `config.json` declares, `None` when it has none of the four keys. A missing group is the
/// rest of the layers (E defaults to 0); a missing `mtp_horizon` is [`DEFAULT_MTP_HORIZON`].
///
/// # Errors
/// [`Error::Config`] when E + T + D differs from `num_hidden_layers`, or when neither T nor D is given (the
/// split is then unknown), or for a layout [`DmtdLayout::new`] refuses.
pub fn read_layout(hf: &HfConfig) -> Result<Option<DmtdLayout>> {
    let (e, t, d, tau) = (
        hf.num_encoding_layers,
        hf.num_thinking_layers,
        hf.num_decoding_layers,
        hf.mtp_horizon,
    );
    if e.is_none() && t.is_none() && d.is_none() && tau.is_none() {
        return Ok(None);
    }
    let layers = hf.num_hidden_layers;
    let e = e.unwrap_or(0);
    let rest = |x: usize| layers.checked_sub(e).and_then(|r| r.checked_sub(x));
    let (t, d) = match (t, d) {
        (Some(t), Some(d)) => (t, d),
        (Some(t), None) => (t, rest(t).unwrap_or(0)),
        (None, Some(d)) => (rest(d).unwrap_or(0), d),
        (None, None) => {
            return Err(Error::Config(
                "DMTD keys without num_thinking_layers or num_decoding_layers: the layer split is unknown".into(),
            ))
        }
    };
    if e.checked_add(t).and_then(|s| s.checked_add(d)) != Some(layers) {
        return Err(Error::Config(format!(
            "num_encoding_layers ({e}) + num_thinking_layers ({t}) + num_decoding_layers ({d}) must equal \
             num_hidden_layers ({layers})"
        )));
    }
    let layout = DmtdLayout::new(layers, e, d, tau.unwrap_or(DEFAULT_MTP_HORIZON))
        .map_err(|err| Error::Config(err.to_string()))?;
    Ok(Some(layout))
}

/// Write `layout`'s four keys into the `config.json` document `config`; a Qwen3 base also gets the released
/// architecture and model type (other bases keep theirs and gain the keys).
pub fn write_keys(config: &mut Value, arch: Arch, layout: &DmtdLayout) {
    config["num_encoding_layers"] = json!(layout.num_encoding_layers);
    config["num_thinking_layers"] = json!(layout.num_thinking_layers);
    config["num_decoding_layers"] = json!(layout.num_decoding_layers);
    config["mtp_horizon"] = json!(layout.mtp_horizon);
    if arch == Arch::Qwen3 {
        config["architectures"] = json!([DMTD_QWEN3_ARCHITECTURE]);
        config["model_type"] = json!(DMTD_QWEN3_MODEL_TYPE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3(layers: usize) -> Value {
        json!({"architectures": [DMTD_QWEN3_ARCHITECTURE], "model_type": DMTD_QWEN3_MODEL_TYPE, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": layers, "num_attention_heads": 4, "vocab_size": 100,
               "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "head_dim": 16})
    }

    fn layout(j: &Value) -> Result<Option<DmtdLayout>> {
        read_layout(&HfConfig::from_json(j)?)
    }

    #[test]
    fn keys_read_default_and_round_trip() {
        let mut j = qwen3(36);
        assert_eq!(layout(&j).unwrap(), None);
        j["num_thinking_layers"] = json!(28);
        j["num_decoding_layers"] = json!(8);
        let l = layout(&j).unwrap().unwrap();
        assert_eq!(
            (l.thinking(), l.decoding(), l.mtp_horizon),
            (0..28, 28..36, DEFAULT_MTP_HORIZON)
        );
        let l = DmtdLayout::new(36, 2, 6, 3).unwrap();
        let mut back = qwen3(36);
        write_keys(&mut back, Arch::Qwen3, &l);
        assert_eq!(layout(&back).unwrap(), Some(l));
        assert_eq!(back["model_type"], DMTD_QWEN3_MODEL_TYPE);
        let c = crate::config::ModelConfig::from_hf_json(&back).unwrap();
        assert_eq!(c.arch, Arch::Qwen3, "the DMTD architecture is a Qwen3");
        j.as_object_mut().unwrap().remove("num_thinking_layers");
        assert_eq!(layout(&j).unwrap().unwrap().num_thinking_layers, 28, "T is the rest");
    }

    #[test]
    fn inconsistent_keys_are_refused() {
        let mut j = qwen3(36);
        j["num_thinking_layers"] = json!(28);
        j["num_decoding_layers"] = json!(4);
        let e = layout(&j).unwrap_err().to_string();
        assert!(e.contains("must equal num_hidden_layers (36)"), "{e}");
        let mut j = qwen3(36);
        j["mtp_horizon"] = json!(4);
        assert!(layout(&j).unwrap_err().to_string().contains("split is unknown"));
        let mut j = qwen3(36);
        j["num_decoding_layers"] = json!(40);
        assert!(layout(&j).is_err());
        j["num_decoding_layers"] = json!(8);
        j["mtp_horizon"] = json!(0);
        assert!(layout(&j).is_err());
        j["mtp_horizon"] = json!("four");
        assert!(layout(&j).unwrap_err().to_string().contains("'mtp_horizon"));
    }
}
