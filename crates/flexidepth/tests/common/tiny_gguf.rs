//! A tiny but complete GGUF model written the way llama.cpp writes one (version 3, Q8_0 matrices, f32 norms, a
//! byte-level BPE vocabulary and a ChatML template in the metadata), with a map of where each field lies so that a
//! fuzzer can edit fields rather than random bytes.

// Each test binary that includes this uses a different part of it.
#![allow(dead_code)]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// A metadata value as written.
#[derive(Clone, Debug)]
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// Where a field lies in the file: its byte range and what it is.
#[derive(Clone, Debug)]
pub struct Field {
    pub start: usize,
    pub len: usize,
    pub kind: FieldKind,
    /// The key or tensor the field belongs to.
    pub owner: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A header count (tensors, metadata entries).
    Count,
    /// The type id of a metadata value.
    ValueType,
    /// An integer value (of `len` bytes).
    Int,
    /// An f32 value.
    Float,
    /// A string's or an array's length prefix.
    Length,
    /// A tensor's number of dimensions.
    Dims,
    /// One of a tensor's dimensions.
    Dim,
    /// A tensor's block type id.
    TensorType,
    /// A tensor's data offset.
    Offset,
}

/// The model's shape.
pub const HIDDEN: usize = 64;
pub const FFN: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const CONTEXT: u32 = 64;

/// GPT-2's byte → printable-symbol map.
fn byte_symbol(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let n = (0u8..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The vocabulary: three control tokens, the 256 byte symbols and one merge ("h i").
pub fn vocabulary() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3];
    for b in 0..=255u8 {
        tokens.push(byte_symbol(b).to_string());
        types.push(1);
    }
    tokens.push("hi".into());
    types.push(1);
    (tokens, types)
}

const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The metadata of the tiny model, in file order.
pub fn metadata() -> Vec<(String, Meta)> {
    let (tokens, types) = vocabulary();
    let m = |k: &str, v: Meta| (k.to_string(), v);
    vec![
        m("general.architecture", Meta::Str("llama".into())),
        m("general.alignment", Meta::U32(32)),
        m("llama.block_count", Meta::U32(LAYERS as u32)),
        m("llama.context_length", Meta::U32(CONTEXT)),
        m("llama.embedding_length", Meta::U32(HIDDEN as u32)),
        m("llama.feed_forward_length", Meta::U32(FFN as u32)),
        m("llama.attention.head_count", Meta::U32(HEADS as u32)),
        m("llama.attention.head_count_kv", Meta::U32(KV_HEADS as u32)),
        m("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        m("llama.rope.freq_base", Meta::F32(10_000.0)),
        m("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        m("tokenizer.ggml.pre", Meta::Str("smollm".into())),
        m("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        m("tokenizer.ggml.token_type", Meta::I32s(types)),
        m("tokenizer.ggml.merges", Meta::Strs(vec!["h i".into()])),
        m("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        m("tokenizer.ggml.add_bos_token", Meta::Bool(false)),
        m("tokenizer.chat_template", Meta::Str(TEMPLATE.into())),
    ]
}

/// The tensors of the tiny model by GGUF name: (name, shape outermost first, type, bytes).
pub fn tensors() -> Vec<(String, Vec<usize>, GgmlDType, Vec<u8>)> {
    let vocab = vocabulary().0.len();
    let hd = HIDDEN / HEADS;
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, dtype: GgmlDType| {
        let n: usize = shape.iter().product();
        let v = if name.contains("norm") {
            values(n, out.len() as u64, 0.1).into_iter().map(|x| 1.0 + x).collect()
        } else {
            values(n, out.len() as u64, 0.3)
        };
        let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
        let bytes = QTensor::quantize(&t, dtype).unwrap().data().unwrap().to_vec();
        out.push((name, shape, dtype, bytes));
    };
    add("token_embd.weight".into(), vec![vocab, HIDDEN], GgmlDType::Q8_0);
    for l in 0..LAYERS {
        let p = |s: &str| format!("blk.{l}.{s}");
        add(p("attn_norm.weight"), vec![HIDDEN], GgmlDType::F32);
        add(p("attn_q.weight"), vec![HEADS * hd, HIDDEN], GgmlDType::Q8_0);
        add(p("attn_k.weight"), vec![KV_HEADS * hd, HIDDEN], GgmlDType::Q8_0);
        add(p("attn_v.weight"), vec![KV_HEADS * hd, HIDDEN], GgmlDType::Q8_0);
        add(p("attn_output.weight"), vec![HIDDEN, HEADS * hd], GgmlDType::Q8_0);
        add(p("ffn_norm.weight"), vec![HIDDEN], GgmlDType::F32);
        add(p("ffn_gate.weight"), vec![FFN, HIDDEN], GgmlDType::Q8_0);
        add(p("ffn_up.weight"), vec![FFN, HIDDEN], GgmlDType::Q8_0);
        add(p("ffn_down.weight"), vec![HIDDEN, FFN], GgmlDType::Q8_0);
    }
    add("output_norm.weight".into(), vec![HIDDEN], GgmlDType::F32);
    out
}

/// llama.cpp's type id of a block type.
fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q8_0 => 8,
        other => panic!("no id for {other:?} here"),
    }
}

/// Serialise `meta` and `tensors` as GGUF v3 with 32-byte alignment, returning the bytes and the field map.
pub fn write(meta: &[(String, Meta)], tensors: &[(String, Vec<usize>, GgmlDType, Vec<u8>)]) -> (Vec<u8>, Vec<Field>) {
    let mut b: Vec<u8> = b"GGUF".to_vec();
    let mut fields = Vec::new();
    let field = |b: &Vec<u8>, len: usize, kind: FieldKind, owner: &str| Field {
        start: b.len(),
        len,
        kind,
        owner: owner.to_string(),
    };
    b.extend(3u32.to_le_bytes());
    fields.push(field(&b, 8, FieldKind::Count, "tensor_count"));
    b.extend((tensors.len() as u64).to_le_bytes());
    fields.push(field(&b, 8, FieldKind::Count, "kv_count"));
    b.extend((meta.len() as u64).to_le_bytes());
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    for (key, value) in meta {
        string(&mut b, key);
        fields.push(field(&b, 4, FieldKind::ValueType, key));
        let ty: u32 = match value {
            Meta::U32(_) => 4,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Strs(_) | Meta::I32s(_) => 9,
        };
        b.extend(ty.to_le_bytes());
        match value {
            Meta::U32(x) => {
                fields.push(field(&b, 4, FieldKind::Int, key));
                b.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                fields.push(field(&b, 4, FieldKind::Float, key));
                b.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => b.push(u8::from(*x)),
            Meta::Str(s) => {
                fields.push(field(&b, 8, FieldKind::Length, key));
                string(&mut b, s);
            }
            Meta::Strs(v) => {
                b.extend(8u32.to_le_bytes());
                fields.push(field(&b, 8, FieldKind::Length, key));
                b.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    string(&mut b, s);
                }
            }
            Meta::I32s(v) => {
                b.extend(5u32.to_le_bytes());
                fields.push(field(&b, 8, FieldKind::Length, key));
                b.extend((v.len() as u64).to_le_bytes());
                for x in v {
                    b.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0usize;
    for (name, shape, dtype, bytes) in tensors {
        string(&mut b, name);
        fields.push(field(&b, 4, FieldKind::Dims, name));
        b.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            fields.push(field(&b, 8, FieldKind::Dim, name));
            b.extend((*d as u64).to_le_bytes());
        }
        fields.push(field(&b, 4, FieldKind::TensorType, name));
        b.extend(type_id(*dtype).to_le_bytes());
        fields.push(field(&b, 8, FieldKind::Offset, name));
        b.extend((offset as u64).to_le_bytes());
        offset = (offset + bytes.len()).next_multiple_of(32);
    }
    b.resize(b.len().next_multiple_of(32), 0);
    for (_, _, _, bytes) in tensors {
        b.extend(bytes);
        b.resize(b.len().next_multiple_of(32), 0);
    }
    (b, fields)
}

/// The tiny model's file and field map.
pub fn tiny_gguf() -> (Vec<u8>, Vec<Field>) {
    write(&metadata(), &tensors())
}
