//! The GGUF header (metadata and tensor table), parsed from the file's memory map with every count, length and
//! offset checked before it is used, by the rules of llama.cpp's `gguf.cpp` (`gguf_init_from_file_impl`):
//!
//! - version 2 or 3; every count and string length fits in the bytes that remain;
//! - no duplicate key or tensor name, no nested arrays, tensor names shorter than 64 bytes;
//! - `general.alignment`, when present, an unsigned integer that is a power of two;
//! - a tensor has 1–4 non-zero dimensions, a row length that is a whole number of blocks of its type, and an
//!   element count and byte size that do not overflow;
//! - the tensors tile the data section in the order they are listed, each at the running offset rounded up to the
//!   alignment (no gap, no overlap, no unaligned start), and the file ends where the last one ends (plus padding).
//!
//! Parsing reads the mapped bytes in place (no `read()` call per field), and metadata arrays are bounded in total
//! (`MAX_ARRAY_ELEMENTS`), so a corrupt length cannot make us allocate gigabytes before failing.

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;

/// The alignment of the data section when `general.alignment` is absent (GGUF's default).
const DEFAULT_ALIGNMENT: u64 = 32;
/// Elements in all metadata arrays together: a few times the largest vocabulary (tokens, types, scores, merges).
pub(crate) const MAX_ARRAY_ELEMENTS: u64 = 1 << 22;
/// llama.cpp's `GGML_MAX_NAME`, the terminating NUL included.
const MAX_NAME_BYTES: usize = 64;
/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

/// The GGUF block type with llama.cpp's id `id`, if candle can hold it.
fn dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A bounds-checked little-endian reader over the mapped file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far (bounded by [`MAX_ARRAY_ELEMENTS`]).
    array_elements: u64,
}

type Res<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
        if (n as u64) > self.remaining() {
            return Err(format!(
                "{what} at byte {} needs {n} bytes, only {} remain (truncated file?)",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Res<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Res<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what remains when each item takes at least `min_bytes`.
    fn count(&mut self, what: &str, min_bytes: u64) -> Res<u64> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_bytes.max(1)) > self.remaining() {
            return Err(format!(
                "{what} is {n}, but only {} bytes remain in the file",
                self.remaining()
            ));
        }
        Ok(n)
    }

    /// A length-prefixed string; `strict` refuses invalid UTF-8 (keys and tensor names), else it is replaced.
    fn string(&mut self, what: &str, strict: bool) -> Res<String> {
        let n = self.count(&format!("the length of {what}"), 1)?;
        let bytes = self.take(n as usize, what)?;
        if strict {
            return std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|_| format!("{what} is not valid UTF-8"));
        }
        // GGUF strings are not NUL-terminated, but some writers add one; candle drops it too.
        let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        Ok(String::from_utf8_lossy(trimmed).into_owned())
    }

    /// One metadata value of type id `ty`; `in_array` refuses nested arrays (llama.cpp does not read them).
    fn value(&mut self, key: &str, ty: u32, in_array: bool) -> Res<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.u8(key)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata '{key}': {b} is not a boolean (0 or 1)")),
            },
            8 => Value::String(self.string(&format!("metadata '{key}'"), false)?),
            9 if in_array => return Err(format!("metadata '{key}': arrays of arrays are not supported")),
            9 => {
                let elem_ty = self.u32(key)?;
                let min = min_value_bytes(elem_ty).ok_or_else(|| bad_type(key, elem_ty))?;
                let n = self.count(&format!("the length of metadata array '{key}'"), min)?;
                self.array_elements = self.array_elements.saturating_add(n);
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "metadata array '{key}' of {n} elements takes the file's arrays past {MAX_ARRAY_ELEMENTS} \
                         elements, more than any vocabulary needs"
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(key, elem_ty, true)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(bad_type(key, other)),
        })
    }
}

fn bad_type(key: &str, ty: u32) -> String {
    format!("metadata '{key}' has an unknown value type {ty}")
}

/// The fewest bytes a value of type id `ty` takes on disk (`None` for an unknown type).
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// `general.alignment`: absent means 32; else an unsigned integer that is a power of two.
fn alignment(metadata: &HashMap<String, Value>) -> Res<u64> {
    let key = "general.alignment";
    let Some(v) = metadata.get(key) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let a = match v {
        Value::U8(x) => u64::from(*x),
        Value::U16(x) => u64::from(*x),
        Value::U32(x) => u64::from(*x),
        Value::U64(x) => *x,
        other => return Err(format!("metadata '{key}' must be an unsigned integer, not {other:?}")),
    };
    if !a.is_power_of_two() {
        return Err(format!("metadata '{key}' is {a}, not a power of two"));
    }
    Ok(a)
}

/// Parse and check the header of the GGUF file whose bytes are `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Res<Content> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        array_elements: 0,
    };
    let magic = c.array::<4>("the magic")?;
    if &magic != b"GGUF" {
        return Err("not a GGUF file (no 'GGUF' magic)".into());
    }
    let magic = match c.u32("the version")? {
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("GGUF version {v} is not supported (only 2 and 3)")),
    };
    // A tensor entry takes at least a name length, a dimension count, a type and an offset; a metadata entry a key
    // length, a type and one byte.
    let n_tensors = c.count("the tensor count", 8 + 4 + 4 + 8)?;
    let n_kv = c.count("the metadata count", 8 + 4 + 1)?;

    let mut metadata = HashMap::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = c.string("a metadata key", true)?;
        let ty = c.u32(&key)?;
        let value = c.value(&key, ty, false)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate metadata key '{key}'"));
        }
    }
    let align = alignment(&metadata)?;

    let mut tensor_infos = HashMap::with_capacity(n_tensors as usize);
    // Where the last tensor's data ends (before its padding).
    let mut last_end: u64 = 0;
    // The running end of the data: each tensor must start exactly there, rounded up to the alignment.
    let mut expected: u64 = 0;
    for _ in 0..n_tensors {
        let name = c.string("a tensor name", true)?;
        if name.len() >= MAX_NAME_BYTES {
            return Err(format!(
                "tensor name '{name}' is {} bytes, the limit is {}",
                name.len(),
                MAX_NAME_BYTES - 1
            ));
        }
        let t = |m: String| format!("tensor '{name}': {m}");
        let n_dims = c.u32(&name)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(t(format!("{n_dims} dimensions (1 to {MAX_DIMS} are allowed)")));
        }
        // GGUF lists dimensions innermost first; candle's shapes are outermost first.
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64(&name)?;
            if d == 0 || d > i64::MAX as u64 {
                return Err(t(format!("dimension {d} is out of range")));
            }
            dims.push(d);
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| t(format!("{dims:?} elements overflow")))?;
        let type_id = c.u32(&name)?;
        let dtype = dtype_from_id(type_id).ok_or_else(|| t(format!("unknown or unsupported type id {type_id}")))?;
        let block = dtype.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(t(format!(
                "rows of {} elements are not whole blocks of {dtype:?} ({block} elements)",
                dims[0]
            )));
        }
        let size = elems / block * dtype.type_size() as u64;
        let offset = c.u64(&name)?;
        if offset != expected {
            return Err(t(format!(
                "data at offset {offset}, but the tensors before it end at {expected} (with {align}-byte alignment): \
                 offsets must tile the data section"
            )));
        }
        last_end = offset
            .checked_add(size)
            .ok_or_else(|| t("its data runs past any file size".into()))?;
        expected = last_end
            .checked_next_multiple_of(align)
            .ok_or_else(|| t("its data runs past any file size".into()))?;
        let dims: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        let info = TensorInfo {
            ggml_dtype: dtype,
            shape: candle_core::Shape::from(dims),
            offset,
        };
        if tensor_infos.insert(name.clone(), info).is_some() {
            return Err(format!("duplicate tensor name '{name}'"));
        }
    }
    let data_start = (c.pos as u64)
        .checked_next_multiple_of(align)
        .ok_or("the data section starts past any file size")?;
    let len = bytes.len() as u64;
    let (need, padded) = (data_start.saturating_add(last_end), data_start.saturating_add(expected));
    if need > len {
        return Err(format!(
            "the tensor data ends at byte {need} but the file has {len} bytes (truncated download?)"
        ));
    }
    if n_tensors > 0 && len > padded {
        return Err(format!(
            "{} bytes follow the last tensor's data (a tensor's type or size does not match its bytes?)",
            len - padded
        ));
    }
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset: data_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with `kv` metadata entries (already encoded) and f32 tensors of `dims` at `offsets`, data included.
    fn file(kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u64)], data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        for (k, ty, v) in kv {
            s(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims, offset) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(0u32.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32) + data, 0);
        b
    }

    #[test]
    fn a_well_formed_file_parses() {
        let f = file(
            &[("general.alignment", 4, 32u32.to_le_bytes().to_vec())],
            &[("a", vec![8], 0), ("b", vec![4, 2], 32)],
            64,
        );
        let h = parse(&f).unwrap();
        assert_eq!(h.tensor_infos["b"].shape.dims(), [2, 4]);
        assert_eq!(h.tensor_data_offset as usize, f.len() - 64);
    }

    #[test]
    fn layouts_that_do_not_tile_are_refused() {
        for (tensors, data, want) in [
            (vec![("a", vec![8], 0), ("b", vec![8], 40)], 96, "must tile"), // gap
            (vec![("a", vec![8], 0), ("b", vec![8], 16)], 64, "must tile"), // overlap, unaligned
            (vec![("a", vec![8], 0)], 16, "truncated"),
            (vec![("a", vec![8], 0)], 96, "follow the last tensor"),
            (vec![("a", vec![8], 0), ("a", vec![8], 32)], 64, "duplicate tensor"),
            (vec![("a", vec![0], 0)], 32, "dimension 0"),
            (vec![("a", vec![1 << 40, 1 << 40], 0)], 32, "overflow"),
        ] {
            let e = parse(&file(&[], &tensors, data)).err().unwrap();
            assert!(e.contains(want), "{tensors:?}: {e}");
        }
    }

    #[test]
    fn bad_metadata_is_refused_before_allocating() {
        let huge_array = {
            let mut v = 0u32.to_le_bytes().to_vec(); // U8 elements
            v.extend((MAX_ARRAY_ELEMENTS + 1).to_le_bytes());
            v.extend(vec![0u8; MAX_ARRAY_ELEMENTS as usize + 1]);
            v
        };
        for (kv, want) in [
            (
                vec![("general.alignment", 4, 0u32.to_le_bytes().to_vec())],
                "not a power of two",
            ),
            (
                vec![("general.alignment", 4, 24u32.to_le_bytes().to_vec())],
                "not a power of two",
            ),
            (
                vec![("general.alignment", 8, 2u64.to_le_bytes().to_vec())],
                "unsigned integer",
            ),
            (
                vec![("k", 4, vec![1, 0, 0, 0]), ("k", 4, vec![1, 0, 0, 0])],
                "duplicate metadata key",
            ),
            (
                vec![("k", 9, [&4u32.to_le_bytes()[..], &(1u64 << 40).to_le_bytes()].concat())],
                "the length of metadata array",
            ),
            (vec![("k", 9, huge_array)], "more than any vocabulary"),
            (vec![("k", 99, vec![0])], "unknown value type"),
            (vec![("k", 7, vec![2])], "not a boolean"),
        ] {
            let e = parse(&file(&kv, &[], 0)).err().unwrap();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut f = file(&[], &[], 0);
        f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&f).err().unwrap().contains("tensor count"));
        assert!(parse(b"GGUF\x01\0\0\0").err().unwrap().contains("version 1"));
    }
}
