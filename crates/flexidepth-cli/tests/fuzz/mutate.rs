//! Field-aware mutations of the fuzzed inputs: GGUF fields (counts, types, values, lengths, dimensions, offsets)
//! set to extremes, structural GGUF edits (a key of the wrong type, a tensor left over or missing), safetensors
//! header and data edits, JSON and TOML values replaced by extremes or other types, truncations.

use crate::rng::Rng;
use crate::tiny_gguf::{self, Field, FieldKind, Meta};
use serde_json::{json, Value};

/// Integers at the edges: zero, one, around 2^31, 2^32 and 2^63, the maximum.
const EXTREME_INTS: [u64; 9] = [0, 1, 2, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 62, 1 << 63, u64::MAX];

fn set(bytes: &mut [u8], f: &Field, v: u64) {
    bytes[f.start..f.start + f.len].copy_from_slice(&v.to_le_bytes()[..f.len]);
}

fn get(bytes: &[u8], f: &Field) -> u64 {
    let mut a = [0u8; 8];
    a[..f.len].copy_from_slice(&bytes[f.start..f.start + f.len]);
    u64::from_le_bytes(a)
}

/// A mutated tiny GGUF and what was done to it.
pub fn gguf(rng: &mut Rng, base: &[u8], fields: &[Field]) -> (Vec<u8>, String) {
    let mut b = base.to_vec();
    let data_start = fields.last().map_or(64, |f| f.start + f.len);
    match rng.below(10) {
        0..=5 => {
            let f = rng.pick(fields);
            let old = get(&b, f);
            let v = match f.kind {
                FieldKind::ValueType => *rng.pick(&[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xFFFF]),
                FieldKind::Float => {
                    f32::to_bits(*rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0, 1e-45, 3e38]))
                        as u64
                }
                FieldKind::Dims => *rng.pick(&[0, 1, 3, 5, u32::MAX as u64]),
                FieldKind::TensorType => *rng.pick(&[0, 1, 2, 3, 6, 8, 10, 12, 14, 15, 16, 30, 31, 99]),
                FieldKind::Offset => *rng.pick(&[0, old + 1, old + 32, old.saturating_sub(32), old + 4096, u64::MAX]),
                _ if rng.below(3) == 0 => *rng.pick(&[old.wrapping_sub(1), old + 1, old * 2]),
                _ => *rng.pick(&EXTREME_INTS),
            };
            set(&mut b, f, v);
            (b, format!("{:?} of '{}' {old} -> {v}", f.kind, f.owner))
        }
        6 => {
            let at = if rng.below(2) == 0 {
                rng.below(data_start)
            } else {
                rng.below(b.len())
            };
            b.truncate(at);
            (b, format!("truncated at {at}"))
        }
        7 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data_start);
                b[at] ^= 1 << rng.below(8);
            }
            (b, "flipped header bits".into())
        }
        _ => structural(rng),
    }
}

/// A GGUF rewritten from edited metadata or tensors: every offset consistent, the content wrong.
fn structural(rng: &mut Rng) -> (Vec<u8>, String) {
    let mut meta = tiny_gguf::metadata();
    let mut tensors = tiny_gguf::tensors();
    let what = match rng.below(7) {
        0 => {
            let i = rng.below(meta.len());
            let key = meta.remove(i).0;
            format!("removed key '{key}'")
        }
        1 => {
            let i = rng.below(meta.len());
            let v = rng
                .pick(&[
                    Meta::Str("x".into()),
                    Meta::F32(f32::NAN),
                    Meta::F32(1.5),
                    Meta::U32(u32::MAX),
                    Meta::Bool(true),
                    Meta::Strs(vec![]),
                    Meta::I32s(vec![-1]),
                ])
                .clone();
            meta[i].1 = v.clone();
            format!("key '{}' set to {v:?}", meta[i].0)
        }
        2 => {
            let mut extra = tensors[rng.below(tensors.len())].clone();
            extra.0 = rng
                .pick(&[
                    "blk.2.attn_norm.weight",
                    "extra.weight",
                    "blk.0.attn_q.bias",
                    "output.weight",
                ])
                .to_string();
            let name = extra.0.clone();
            tensors.push(extra);
            format!("extra tensor '{name}'")
        }
        3 => {
            let i = rng.below(tensors.len());
            format!("dropped tensor '{}'", tensors.remove(i).0)
        }
        4 => {
            // The type no longer matches the bytes.
            let i = rng.below(tensors.len());
            let t = rng.pick(&[
                candle_core::quantized::GgmlDType::F32,
                candle_core::quantized::GgmlDType::F16,
            ]);
            tensors[i].2 = *t;
            format!("tensor '{}' typed {t:?} over its bytes", tensors[i].0)
        }
        5 => {
            let i = rng.below(meta.len());
            let dup = meta[i].clone();
            meta.push(dup);
            format!("duplicate key '{}'", meta[i].0)
        }
        _ => {
            let n = *rng.pick(&[0u32, 1, 3, 1 << 31]);
            for (k, v) in &mut meta {
                if k == "llama.block_count" {
                    *v = Meta::U32(n);
                }
            }
            format!("block_count {n}")
        }
    };
    (tiny_gguf::write(&meta, &tensors).0, what)
}

/// Split a safetensors file into its header and data.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// Extreme or wrongly-typed JSON values.
fn json_extreme(rng: &mut Rng) -> Value {
    let raw = [
        "0",
        "-1",
        "1",
        "2147483648",
        "9223372036854775808",
        "18446744073709551615",
        "1.5",
        "1e308",
        "-1e308",
        "\"x\"",
        "\"\"",
        "null",
        "true",
        "[]",
        "{}",
        "[0, 1]",
        "\"NaN\"",
    ];
    let text: &&str = rng.pick(&raw);
    serde_json::from_str(text).unwrap()
}

/// Metadata strings a depth file might hold: numbers at the edges, non-numbers, lists out of order.
const META_STRINGS: [&str; 14] = [
    "",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "0,0",
    "1,0",
    "99",
    "1,99",
    "x",
    "0.5",
];

/// A mutated safetensors file (`model.safetensors` or a depth file) and what was done to it.
pub fn safetensors(rng: &mut Rng, base: &[u8]) -> (Vec<u8>, String) {
    let (mut header, mut data) = split_safetensors(base);
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = rng.pick(&names).clone();
    let what = match rng.below(8) {
        0 => {
            let v = json!(*rng.pick(&["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "XX"]));
            header[&name]["dtype"] = v.clone();
            format!("'{name}' dtype {v}")
        }
        1 => {
            let v = rng
                .pick(&[
                    json!([0]),
                    json!([]),
                    json!([0, 64]),
                    json!([1u64 << 40, 1u64 << 40]),
                    json!([1, 1, 1, 1, 1]),
                    json!([u64::MAX]),
                ])
                .clone();
            header[&name]["shape"] = v.clone();
            format!("'{name}' shape {v}")
        }
        2 => {
            let end = data.len() as u64;
            let v = rng
                .pick(&[
                    json!([0, 0]),
                    json!([0, end]),
                    json!([end, end + 4]),
                    json!([8, 4]),
                    json!([0, u64::MAX]),
                ])
                .clone();
            header[&name]["data_offsets"] = v.clone();
            format!("'{name}' data_offsets {v}")
        }
        3 if header.contains_key("__metadata__") => {
            let keys: Vec<String> = header["__metadata__"].as_object().unwrap().keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            let v = rng.pick(&META_STRINGS).to_string();
            header["__metadata__"][&key] = json!(v);
            format!("metadata '{key}' = {v:?}")
        }
        3 | 4 => {
            // A NaN or an infinity in a tensor's data.
            let off = header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
            let end = header[&name]["data_offsets"][1].as_u64().unwrap() as usize;
            let dtype = header[&name]["dtype"].as_str().unwrap().to_string();
            let width = if dtype == "F32" { 4 } else { 2 };
            let at = off + rng.below((end - off) / width) * width;
            let pattern: &[u8] = match (width, rng.below(2)) {
                (4, 0) => &[0x00, 0x00, 0xC0, 0x7F],
                (4, _) => &[0x00, 0x00, 0x80, 0x7F],
                (_, 0) => {
                    if dtype == "BF16" {
                        &[0xC0, 0x7F]
                    } else {
                        &[0x00, 0x7E]
                    }
                }
                _ => {
                    if dtype == "BF16" {
                        &[0x80, 0x7F]
                    } else {
                        &[0x00, 0x7C]
                    }
                }
            };
            data[at..at + width].copy_from_slice(pattern);
            format!("non-finite value in '{name}'")
        }
        5 => {
            header.remove(&name);
            format!("'{name}' removed from the header")
        }
        6 => {
            let mut b = join_safetensors(&header, &data);
            let at = rng.below(b.len());
            b.truncate(at);
            return (b, format!("truncated at {at}"));
        }
        _ => {
            let mut b = join_safetensors(&header, &data);
            let v = *rng.pick(&[0u64, 1, 7, 1 << 20, 1 << 40, u64::MAX]);
            b[..8].copy_from_slice(&v.to_le_bytes());
            return (b, format!("header length {v}"));
        }
    };
    (join_safetensors(&header, &data), what)
}

/// JSON pointers of every node of `v`, with their depth.
fn pointers(v: &Value, at: String, depth: usize, out: &mut Vec<(String, usize)>) {
    out.push((at.clone(), depth));
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            pointers(
                c,
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                depth + 1,
                out,
            )
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| pointers(c, format!("{at}/{i}"), depth + 1, out)),
        _ => {}
    }
}

/// Chat templates that loop without end, build huge texts, recurse, or fail.
pub const NASTY_TEMPLATES: [&str; 8] = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 100000000 }}",
    "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ raise_exception('no') }}",
    "{{ messages[99].content.strip() }}",
    "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}",
    "{% if %}",
];

/// A mutated JSON document and what was done: a value replaced by an extreme or another type, a key removed, a
/// chat template replaced, or the text truncated. Nodes near the root are picked more often than deep ones (a
/// vocabulary would otherwise take every pick).
pub fn json_doc(rng: &mut Rng, base: &str) -> (String, String) {
    let mut v: Value = serde_json::from_str(base).unwrap();
    if rng.below(8) == 0 {
        let mut at = rng.below(base.len());
        while !base.is_char_boundary(at) {
            at -= 1;
        }
        return (base[..at].to_string(), format!("truncated at {at}"));
    }
    if v.get("chat_template").is_some() && rng.below(3) == 0 {
        let t = rng.pick(&NASTY_TEMPLATES);
        v["chat_template"] = json!(t);
        return (v.to_string(), format!("chat_template {t:?}"));
    }
    let mut all = Vec::new();
    pointers(&v, String::new(), 0, &mut all);
    let shallow: Vec<&(String, usize)> = all.iter().filter(|(_, d)| (1..=2).contains(d)).collect();
    let (ptr, _) = if rng.below(3) > 0 && !shallow.is_empty() {
        *rng.pick(&shallow)
    } else {
        rng.pick(&all[1..])
    };
    let ptr = ptr.clone();
    if rng.below(5) == 0 {
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        match v.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.remove(&key.replace("~1", "/").replace("~0", "~"));
            }
            Some(Value::Array(a)) => {
                a.remove(key.parse::<usize>().unwrap());
            }
            _ => {}
        }
        return (v.to_string(), format!("removed {ptr}"));
    }
    let new = json_extreme(rng);
    *v.pointer_mut(&ptr).unwrap() = new.clone();
    (v.to_string(), format!("{ptr} = {new}"))
}

/// TOML values at the edges and of other types.
const TOML_VALUES: [&str; 16] = [
    "0",
    "-1",
    "1",
    "2147483648",
    "9223372036854775807",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "1.0",
    "0.999999",
    "\"x\"",
    "\"\"",
    "true",
    "[]",
    "\"0..99999999999999\"",
];

/// A training config with one `key = value` line (of `lines`, `[section]` headers kept) mutated, and what was done.
pub fn toml_lines(rng: &mut Rng, lines: &[String]) -> (Vec<String>, String) {
    let mut out = lines.to_vec();
    let editable: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(" = ") && !lines[i].starts_with("out ") && !lines[i].starts_with("model "))
        .collect();
    let i = *rng.pick(&editable);
    let key = lines[i].split(" = ").next().unwrap().to_string();
    let value = match rng.below(10) {
        0 if key == "name" => format!("\"{}\"", "s".repeat(300)),
        1 if key == "name" => "\"a/b\"".into(),
        _ => rng.pick(&TOML_VALUES).to_string(),
    };
    out[i] = format!("{key} = {value}");
    (out, format!("{key} = {}", value.chars().take(40).collect::<String>()))
}
