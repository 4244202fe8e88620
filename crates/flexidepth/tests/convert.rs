//! `convert`: the HF folder written from the SmolLM2 GGUF loads (through the safetensors path) to the same model,
//! tokenizer and chat template. Also the damaged-file errors, made from copies of the real files.

mod common;

use common::{golden_model, ids, model, MODELS};
use flexidepth::chat::Message;
use flexidepth::convert::{convert_to_hf, ConvertDtype};
use flexidepth::loader::{ModelFiles, ModelPath};
use flexidepth::model::{Logits, WeightFormat};
use flexidepth::Error;
use std::path::Path;

fn open(path: &Path) -> flexidepth::Result<ModelFiles> {
    ModelFiles::open(path.to_str().unwrap())
}

#[test]
fn converted_hf_folder_gives_the_same_model() {
    let name = MODELS[0];
    let (gguf, gguf_model) = model(name);
    let dir = tempfile::tempdir().unwrap();
    convert_to_hf(gguf, dir.path(), ConvertDtype::F32).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} written");
    }
    let hf = open(dir.path()).unwrap();
    assert_eq!(hf.path, ModelPath::HfDir(dir.path().to_path_buf()));
    assert_eq!(hf.config, gguf.config);
    assert_eq!(hf.eos_token_ids(), gguf.eos_token_ids());
    for case in golden_model(name)["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(hf.tokenizer.encode(text, false).unwrap(), ids(&case["ids"]), "{text:?}");
    }
    let msgs = [Message::new("user", "hi")];
    assert_eq!(
        hf.tokenizer
            .chat_template
            .as_ref()
            .unwrap()
            .render(&msgs, true)
            .unwrap(),
        gguf.tokenizer
            .chat_template
            .as_ref()
            .unwrap()
            .render(&msgs, true)
            .unwrap()
    );
    let hf_model = hf.load_model(WeightFormat::F32, &candle_core::Device::Cpu).unwrap();
    for case in golden_model(name)["logits"].as_array().unwrap() {
        let prompt = ids(&case["ids"]);
        let run = |m: &flexidepth::model::Model| -> Vec<Vec<f32>> {
            let mut cache = m.new_cache(prompt.len());
            m.forward(&prompt, &mut cache, Logits::All).unwrap().to_vec2().unwrap()
        };
        let (a, b) = (run(gguf_model), run(&hf_model));
        let diff = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "max logit difference {diff}");
    }

    // A config.json with a key missing, or not JSON at all, is refused with the file and key named.
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let e = open(dir.path()).err().expect("missing key refused").to_string();
    assert!(e.contains("num_hidden_layers") && e.contains("config.json"), "{e}");
    std::fs::write(&cfg_path, b"{\"architectures\": [").unwrap();
    let e = open(dir.path()).err().expect("bad JSON refused").to_string();
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
}

#[test]
fn truncated_corrupt_and_missing_gguf_are_clear_errors() {
    let src = flexidepth::loader::cache_dir().join("smollm2-135m-instruct.Q4_1.gguf");
    let bytes = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-models.sh", src.display()));
    let dir = tempfile::tempdir().unwrap();

    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = open(&truncated).err().expect("truncated file refused");
    assert!(matches!(e, Error::BadModelFile { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..1000]).unwrap();
    let e = open(&header_only).err().expect("cut header refused").to_string();
    assert!(e.contains("header.gguf"), "{e}");

    let corrupt = dir.path().join("corrupt.gguf");
    let mut c = bytes[..4096].to_vec();
    c[..4].copy_from_slice(b"XXXX");
    std::fs::write(&corrupt, &c).unwrap();
    let e = open(&corrupt).err().expect("bad magic refused").to_string();
    assert!(e.contains("not a readable GGUF file"), "{e}");

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(open(&empty).is_err());

    let e = ModelFiles::open("no/such/model.gguf")
        .err()
        .expect("missing file refused")
        .to_string();
    assert!(e.contains("not found") && e.contains("smollm2-135m-instruct"), "{e}");
}
