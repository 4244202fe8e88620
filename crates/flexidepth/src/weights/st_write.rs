//! Writing a safetensors file one tensor at a time (a converted model is never held twice in memory), through a
//! registered temp file ([`crate::tmpfiles`]): an interrupted write leaves nothing behind, and the file gets
//! normal permissions.

use crate::error::{Error, Result};
use crate::tmpfiles::TmpFile;
use candle_core::Tensor;
use safetensors::View;
use std::io::Write;
use std::path::Path;

/// Write `tensors` (sorted by name) to `path` in the safetensors format.
pub fn write_safetensors(path: &Path, tensors: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        let len = t.data_len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": format!("{:?}", View::dtype(t)), "shape": t.dims(),
                               "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    // The data starts 8-byte aligned, as safetensors writes it.
    header.resize(header.len().next_multiple_of(8), b' ');
    let (tmp, file) = TmpFile::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for t in tensors.values() {
        w.write_all(&t.data()).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    tmp.persist(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let a = Tensor::arange(0f32, 6., &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let tensors = std::collections::BTreeMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
        write_safetensors(&path, &tensors).unwrap();
        let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back["a"].to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(back["b"].dtype(), DType::BF16);
        assert_eq!(
            back["b"].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
            [1.5, -2.0]
        );
    }
}
