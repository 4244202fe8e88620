//! The released DMTD layout (spec B2) on a tiny Qwen3 checkpoint: an HF folder with `DMTDQwen3ForCausalLM`,
//! `model_type: dmtdqwen3` and the layer-group keys loads as Qwen3 with its layout, decodes cyclically, and
//! `convert` writes the keys back; keys whose groups do not add up to the layers are refused with the keys named.

mod common;

use candle_core::{DType, Device, Tensor};
use common::tiny_gguf;
use flexidepth::convert::{convert_to_hf, ConvertDtype};
use flexidepth::dmtd::{DmtdDecoder, DmtdLayout, DmtdOptions};
use flexidepth::loader::ModelFiles;
use flexidepth::model::WeightFormat;
use serde_json::{json, Value};
use std::path::Path;

fn open(dir: &Path) -> flexidepth::Result<ModelFiles> {
    ModelFiles::open(dir.to_str().unwrap())
}

fn read_config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn write_config(dir: &Path, v: &Value) {
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// The tiny GGUF as an HF folder turned into a DMTD Qwen3 checkpoint (per-head q/k norms added) with `keys`.
fn dmtd_qwen3_folder(dir: &Path, keys: Value) {
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf::tiny_gguf().0).unwrap();
    let hf = dir.join("hf");
    convert_to_hf(&open(&gguf).unwrap(), &hf, ConvertDtype::F32).unwrap();
    let mut cfg = read_config(&hf);
    let (layers, head_dim) = (
        cfg["num_hidden_layers"].as_u64().unwrap(),
        cfg["head_dim"].as_u64().unwrap(),
    );
    cfg["architectures"] = json!(["DMTDQwen3ForCausalLM"]);
    cfg["model_type"] = json!("dmtdqwen3");
    for (k, v) in keys.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    write_config(&hf, &cfg);
    let st = hf.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    for l in 0..layers {
        for n in ["q_norm", "k_norm"] {
            let t = Tensor::ones(head_dim as usize, DType::F32, &Device::Cpu).unwrap();
            tensors.insert(format!("model.layers.{l}.self_attn.{n}.weight"), t);
        }
    }
    candle_core::safetensors::save(&tensors, &st).unwrap();
}

#[test]
fn released_keys_load_decode_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let layers = tiny_gguf::LAYERS;
    let keys = json!({"num_encoding_layers": 0, "num_thinking_layers": layers - 1, "num_decoding_layers": 1,
                      "mtp_horizon": 2});
    dmtd_qwen3_folder(dir.path(), keys);
    let hf = dir.path().join("hf");
    let files = open(&hf).unwrap();
    assert_eq!(files.config.arch, flexidepth::config::Arch::Qwen3);
    let want = DmtdLayout::new(layers, 0, 1, 2).unwrap();
    assert_eq!(files.dmtd, Some(want));
    let model = files.load_model(WeightFormat::F32, &Device::Cpu).unwrap();
    let mut dec = DmtdDecoder::new(&model, DmtdOptions::new(want), 8).unwrap();
    dec.prefill(&[1, 2]).unwrap();
    assert!(dec.step(3).unwrap().head && !dec.step(4).unwrap().head);

    let back = dir.path().join("back");
    convert_to_hf(&files, &back, ConvertDtype::F32).unwrap();
    let cfg = read_config(&back);
    assert_eq!(cfg["architectures"], json!(["DMTDQwen3ForCausalLM"]));
    assert_eq!(cfg["model_type"], "dmtdqwen3");
    assert_eq!(cfg["num_thinking_layers"], layers - 1);
    assert_eq!(cfg["mtp_horizon"], 2);
    assert_eq!(open(&back).unwrap().dmtd, Some(want));
}

#[test]
fn groups_that_do_not_add_up_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layers = tiny_gguf::LAYERS;
    dmtd_qwen3_folder(
        dir.path(),
        json!({"num_thinking_layers": layers, "num_decoding_layers": 1}),
    );
    let e = open(&dir.path().join("hf")).err().expect("refused").to_string();
    assert!(
        e.contains("config.json") && e.contains("must equal num_hidden_layers"),
        "{e}"
    );
}
