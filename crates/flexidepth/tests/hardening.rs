//! Regression tests of the hardening kinds that live in the engine, each on a tiny GGUF written as llama.cpp
//! writes one (`common::tiny_gguf`) or on the default model: sizes checked before they size anything (1), input a
//! dependency would panic on refused first (2), inconsistent layouts refused with the key named (3), non-finite
//! adapters refused on attach (4), and the header read from the map, not with a `read()` per field (8).

mod common;

use common::tiny_gguf::{self, Meta};
use flexidepth::loader::ModelFiles;
use flexidepth::model::WeightFormat;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Write a GGUF and open it as a model (config, tokenizer and weights), returning the error text.
fn open_err(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join(format!("m{}.gguf", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    let start = Instant::now();
    let res = ModelFiles::open(path.to_str().unwrap()).and_then(|f| {
        f.load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
            .map(|_| ())
    });
    // Refused at once: nothing is allocated or looped over by the bad value first.
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    match res {
        Ok(()) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

/// The tiny model with metadata `key` set to `value` (added when absent).
fn with_meta(key: &str, value: Meta) -> Vec<u8> {
    let mut meta = tiny_gguf::metadata();
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value,
        None => meta.push((key.into(), value)),
    }
    tiny_gguf::write(&meta, &tiny_gguf::tensors()).0
}

/// The tiny model with the field of `kind` owned by `owner` set to `value` (little-endian, the field's width).
fn with_field(owner: &str, kind: tiny_gguf::FieldKind, value: u64) -> Vec<u8> {
    let (mut b, fields) = tiny_gguf::tiny_gguf();
    let f = fields.iter().find(|f| f.owner == owner && f.kind == kind).unwrap();
    b[f.start..f.start + f.len].copy_from_slice(&value.to_le_bytes()[..f.len]);
    b
}

#[test]
fn the_tiny_gguf_itself_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf::tiny_gguf().0).unwrap();
    let files = ModelFiles::open(path.to_str().unwrap()).unwrap();
    files
        .load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(files.config.num_hidden_layers, tiny_gguf::LAYERS);
}

/// Kind 1: counts far beyond what the file holds are refused before they size an allocation.
#[test]
fn sizes_are_checked_before_they_are_used() {
    let dir = tempfile::tempdir().unwrap();
    use tiny_gguf::FieldKind::*;
    for (bytes, want) in [
        (
            with_meta("llama.block_count", Meta::U32(1 << 31)),
            "'llama.block_count' is 2147483648, outside 1..=1024",
        ),
        (
            with_meta("llama.context_length", Meta::U32(u32::MAX)),
            "'llama.context_length' is 4294967295",
        ),
        (
            with_meta("llama.embedding_length", Meta::U32(u32::MAX)),
            "'llama.embedding_length'",
        ),
        (
            with_meta("llama.attention.head_count", Meta::U32(0)),
            "'llama.attention.head_count' is 0",
        ),
        (
            with_field("tokenizer.ggml.tokens", Length, 90_000_000),
            "'tokenizer.ggml.tokens' is 90000000",
        ),
        (with_field("tensor_count", Count, u64::MAX), "the tensor count"),
        (with_field("blk.0.attn_q.weight", Dim, 1 << 62), "overflow"),
    ] {
        let e = open_err(dir.path(), &bytes);
        assert!(e.contains(want), "{want}: {e}");
    }
    // A metadata array as long as the file allows, far past any vocabulary: refused by the element budget.
    let mut meta = tiny_gguf::metadata();
    meta.push(("big".into(), Meta::I32s(vec![0; 5_000_000])));
    let e = open_err(dir.path(), &tiny_gguf::write(&meta, &tiny_gguf::tensors()).0);
    assert!(
        e.contains("metadata array 'big'") && e.contains("more than any vocabulary"),
        "{e}"
    );
    // The same in config.json: num_hidden_layers 2^63, a context of 2^31.
    let hf = hf_dir(dir.path());
    for (key, value, want) in [
        (
            "num_hidden_layers",
            "9223372036854775808",
            "'num_hidden_layers' is 9223372036854775808",
        ),
        (
            "max_position_embeddings",
            "2147483648",
            "'max_position_embeddings' is 2147483648",
        ),
        (
            "num_hidden_layers",
            "1",
            "'num_hidden_layers' is 1, but the weights hold 'model.layers.1.",
        ),
    ] {
        let e = hf_err(&hf, key, value);
        assert!(e.contains(want), "{key}: {e}");
    }
}

/// An HF folder of the tiny model (`convert`), its config.json kept as text.
fn hf_dir(root: &Path) -> PathBuf {
    let path = root.join("tiny.gguf");
    std::fs::write(&path, tiny_gguf::tiny_gguf().0).unwrap();
    let files = ModelFiles::open(path.to_str().unwrap()).unwrap();
    let dir = root.join("hf");
    flexidepth::convert::convert_to_hf(&files, &dir, flexidepth::convert::ConvertDtype::F32).unwrap();
    dir
}

/// Open `hf` with config.json's `key` replaced by the raw JSON `value`; the error text (the original is restored).
fn hf_err(hf: &Path, key: &str, value: &str) -> String {
    let cfg = hf.join("config.json");
    let orig = std::fs::read_to_string(&cfg).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
    v[key] = serde_json::json!("__VALUE__");
    std::fs::write(&cfg, v.to_string().replace("\"__VALUE__\"", value)).unwrap();
    let res = ModelFiles::open(hf.to_str().unwrap()).map(|_| ());
    std::fs::write(&cfg, orig).unwrap();
    match res {
        Ok(()) => panic!("{key} = {value} accepted"),
        Err(e) => e.to_string(),
    }
}

/// Kind 2: input a dependency would divide by, or index with, is refused first.
#[test]
fn input_a_dependency_would_panic_on_is_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    for (bytes, want) in [
        (
            with_meta("general.alignment", Meta::U32(0)),
            "'general.alignment' is 0, not a power of two",
        ),
        (
            with_meta("general.alignment", Meta::U32(48)),
            "'general.alignment' is 48",
        ),
        (
            with_meta("general.alignment", Meta::Str("x".into())),
            "'general.alignment' must be an unsigned integer",
        ),
    ] {
        let e = open_err(dir.path(), &bytes);
        assert!(e.contains(want), "{want}: {e}");
    }
    // A tokenizer.json whose post-processor names a token it does not define (tokenizers panics on encode).
    let hf = hf_dir(dir.path());
    let tok = hf.join("tokenizer.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tok).unwrap()).unwrap();
    v["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {}});
    std::fs::write(&tok, v.to_string()).unwrap();
    let e = ModelFiles::open(hf.to_str().unwrap()).err().unwrap().to_string();
    assert!(e.contains("'<s>'") && e.contains("special_tokens"), "{e}");
}

/// Kind 3: layouts llama.cpp's loader refuses are refused, with the key or tensor named.
#[test]
fn inconsistent_layouts_are_refused_by_name() {
    use candle_core::quantized::GgmlDType;
    use tiny_gguf::FieldKind::*;
    let dir = tempfile::tempdir().unwrap();
    let (_, fields) = tiny_gguf::tiny_gguf();
    let offset_of = |name: &str| {
        let (b, _) = tiny_gguf::tiny_gguf();
        let f = fields.iter().find(|f| f.owner == name && f.kind == Offset).unwrap();
        u64::from_le_bytes(b[f.start..f.start + 8].try_into().unwrap())
    };
    let q = offset_of("blk.0.attn_q.weight");
    let mut extra = tiny_gguf::tensors();
    let mut unused = extra[1].clone();
    unused.0 = "blk.0.attn_unused.weight".into();
    extra.push(unused);
    let mut retyped = tiny_gguf::tensors();
    let last = retyped.len() - 1;
    retyped[last].2 = GgmlDType::F16; // output_norm: f32 bytes read as f16
    let mut fewer = tiny_gguf::metadata();
    fewer.iter_mut().find(|(k, _)| k == "llama.block_count").unwrap().1 = Meta::U32(1);
    for (bytes, want) in [
        (
            with_field("blk.0.attn_q.weight", Offset, q + 1),
            "'blk.0.attn_q.weight': data at offset",
        ),
        (with_field("blk.0.attn_q.weight", Offset, q + 32), "must tile"),
        (with_field("blk.0.attn_q.weight", Offset, q - 32), "must tile"),
        (
            with_field("blk.0.attn_q.weight", TensorType, 1),
            "'blk.0.attn_k.weight': data at offset",
        ),
        (
            tiny_gguf::write(&tiny_gguf::metadata(), &retyped).0,
            "follow the last tensor",
        ),
        (
            tiny_gguf::write(&tiny_gguf::metadata(), &extra).0,
            "does not use (first: 'blk.0.attn_unused.weight')",
        ),
        (
            tiny_gguf::write(&fewer, &tiny_gguf::tensors()).0,
            "'llama.block_count' is 1, but the file holds tensors for 2",
        ),
        (
            with_meta("llama.rope.freq_base", Meta::Str("x".into())),
            "'llama.rope.freq_base' must be a float",
        ),
        (
            with_meta("llama.rope.freq_base", Meta::F32(f32::INFINITY)),
            "'llama.rope.freq_base' is inf",
        ),
        (
            with_meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(f32::INFINITY)),
            "layer_norm_rms_epsilon' is inf",
        ),
        (
            with_meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(0.0)),
            "layer_norm_rms_epsilon' is 0",
        ),
        (
            with_meta("llama.block_count", Meta::Str("2".into())),
            "'llama.block_count' must be an integer",
        ),
        (
            with_meta("tokenizer.ggml.eos_token_id", Meta::U32(9999)),
            "'tokenizer.ggml.eos_token_id' is 9999",
        ),
        (
            with_meta("tokenizer.ggml.token_type", Meta::I32s(vec![1])),
            "'tokenizer.ggml.token_type' must be a list of 260",
        ),
    ] {
        let e = open_err(dir.path(), &bytes);
        assert!(e.contains(want), "{want}: {e}");
    }
    // config.json: rope_theta "x" or out of range, rms_norm_eps 1e999 (infinity).
    let hf = hf_dir(dir.path());
    for (key, value, want) in [
        ("rope_theta", "\"x\"", "'rope_theta': invalid type"),
        ("rope_theta", "0.5", "'rope_theta' is 0.5"),
        ("rms_norm_eps", "1e999", "number out of range"),
        ("rms_norm_eps", "0", "'rms_norm_eps' is 0"),
    ] {
        let e = hf_err(&hf, key, value);
        assert!(e.contains(want), "{key} = {value}: {e}");
    }
    // generation_config.json: a value of the wrong type is named, not ignored; one out of its domain is refused.
    let gen = hf.join("generation_config.json");
    for (body, want) in [
        (r#"{"temperature": "hot"}"#, "'temperature' must be a number"),
        (r#"{"top_p": 2.0}"#, "top_p must be"),
        // do_sample false would otherwise hide it
        (
            r#"{"temperature": -1.0, "do_sample": false}"#,
            "'temperature' -1 in generation_config.json must be",
        ),
        (r#"{"eos_token_id": [2, "x"]}"#, "'eos_token_id' must be"),
        (
            r#"{"eos_token_id": 99999}"#,
            "'eos_token_id' 99999 is outside the vocabulary",
        ),
    ] {
        std::fs::write(&gen, body).unwrap();
        let e = ModelFiles::open(hf.to_str().unwrap())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(want) && e.contains("generation_config.json"), "{body}: {e}");
    }
}

/// Kind 4: a depth adapter with one NaN, or a router with an empty bottleneck, is refused when attached.
#[test]
fn non_finite_or_empty_adapters_are_refused_on_attach() {
    use candle_core::{DType, Device, Tensor};
    use flexidepth::depth::file::{attach_depth_file, fresh_depth, write_depth_file};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf::tiny_gguf().0).unwrap();
    let files = ModelFiles::open(path.to_str().unwrap()).unwrap();
    let mut model = files.load_model(WeightFormat::F32, &Device::Cpu).unwrap();
    let (meta, tensors) = fresh_depth(&model, Some(vec![1]), 4, 4, 1).unwrap();
    let file = dir.path().join("d.safetensors");
    let head = "model.layers.1.router.router_head.weight";

    let mut nan = tensors.clone();
    let v: Vec<f32> = (0..tiny_gguf::HIDDEN)
        .map(|i| if i == 3 { f32::NAN } else { 0.01 })
        .collect();
    nan.insert(
        head.into(),
        Tensor::from_vec(v, (1, tiny_gguf::HIDDEN), &Device::Cpu).unwrap(),
    );
    write_depth_file(&file, &meta, &nan, DType::F32).unwrap();
    let e = attach_depth_file(&mut model, &file).unwrap_err().to_string();
    assert!(e.contains(head) && e.contains("1 non-finite"), "{e}");

    let mut empty = tensors.clone();
    let enc = "model.layers.1.router.router_enc.weight";
    empty.insert(
        enc.into(),
        Tensor::zeros((0, tiny_gguf::HIDDEN), DType::F32, &Device::Cpu).unwrap(),
    );
    write_depth_file(&file, &meta, &empty, DType::F32).unwrap();
    let e = attach_depth_file(&mut model, &file).unwrap_err().to_string();
    assert!(e.contains(enc) && e.contains("empty dimension"), "{e}");

    let mut extra = tensors.clone();
    extra.insert("model.layers.0.router.router_head.weight".into(), tensors[head].clone());
    write_depth_file(&file, &meta, &extra, DType::F32).unwrap();
    let e = attach_depth_file(&mut model, &file).unwrap_err().to_string();
    assert!(e.contains("not a router or adapter tensor of the routed layers"), "{e}");

    write_depth_file(&file, &meta, &tensors, DType::F32).unwrap();
    attach_depth_file(&mut model, &file).unwrap();
}

/// Kind 8: the header (here the default model's, 49k tokens and merges) is parsed from the memory map: a handful
/// of `read()` calls, not one per field (it took 247,055).
#[test]
fn the_gguf_header_is_not_read_field_by_field() {
    let path = flexidepth::loader::cache_dir().join("smollm2-135m-instruct.Q4_1.gguf");
    assert!(path.exists(), "{}: run scripts/fetch-models.sh", path.display());
    // This thread's own read() count (other tests run on other threads).
    let reads = || -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = reads();
    let gguf = flexidepth::weights::GgufFile::open(&path).unwrap();
    let after = reads();
    assert!(gguf.config().is_ok());
    // Two are reading /proc/thread-self/io itself.
    assert!(after - before < 20, "{} read() calls", after - before);
}
