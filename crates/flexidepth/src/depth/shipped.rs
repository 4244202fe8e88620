//! The adapters shipped with this repository, by model short name (`adapters/shipped.toml`): what `bench`'s flexi
//! rows use when no `--depth` is given, so that every figure we quote runs on the adapter we ship.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The index file's name inside the adapters folder.
pub const INDEX: &str = "shipped.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    depth: PathBuf,
}

/// The adapters folder: `$FLEXIDEPTH_ADAPTERS` when set, else this repository's `adapters/` (where the binary was
/// built from).
pub fn adapters_dir() -> PathBuf {
    match std::env::var_os("FLEXIDEPTH_ADAPTERS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../adapters"),
    }
}

/// The shipped depth file for the model named `model` (a short name such as `smollm2-135m-instruct`), looked up in
/// `<adapters_dir()>/shipped.toml`. `None` when there is no index (a binary run away from its repository) or the
/// model has no entry.
///
/// # Errors
/// [`Error::Input`] when `$FLEXIDEPTH_ADAPTERS` is set to something that is not a folder, or the index cannot be
/// read or parsed, or names a file that does not exist.
pub fn shipped_depth(model: &str) -> Result<Option<PathBuf>> {
    let dir = adapters_dir();
    if std::env::var_os("FLEXIDEPTH_ADAPTERS").is_some() && !dir.is_dir() {
        return Err(Error::Input(format!(
            "FLEXIDEPTH_ADAPTERS={} is not a folder",
            dir.display()
        )));
    }
    shipped_depth_in(&dir, model)
}

/// [`shipped_depth`] with the adapters folder given.
pub fn shipped_depth_in(dir: &Path, model: &str) -> Result<Option<PathBuf>> {
    let index = dir.join(INDEX);
    let text = match std::fs::read_to_string(&index) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Input(format!("cannot read {}: {e}", index.display()))),
    };
    let entries: BTreeMap<String, Entry> =
        toml::from_str(&text).map_err(|e| Error::Input(format!("{}: {e}", index.display())))?;
    let Some(entry) = entries.get(model) else {
        return Ok(None);
    };
    let path = dir.join(&entry.depth);
    if !path.is_file() {
        return Err(Error::Input(format!(
            "{} names {} for '{model}', which is not a file",
            index.display(),
            path.display()
        )));
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_index_names_existing_files() {
        let dir = adapters_dir();
        let text = std::fs::read_to_string(dir.join(INDEX)).unwrap();
        let entries: BTreeMap<String, Entry> = toml::from_str(&text).unwrap();
        assert!(entries.contains_key(crate::loader::DEFAULT_MODEL));
        for model in entries.keys() {
            assert!(
                crate::loader::KNOWN_MODELS.iter().any(|(name, _)| name == model),
                "{model}"
            );
            assert!(shipped_depth(model).unwrap().unwrap().is_file());
        }
        assert_eq!(shipped_depth("no-such-model").unwrap(), None);
    }

    #[test]
    fn bad_indexes_are_errors_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("fd-shipped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(shipped_depth_in(&dir, "m").unwrap(), None);
        for bad in [
            "[m]\ndepth = \"nope.safetensors\"\n",
            "[m]\ndepht = \"x\"\n",
            "[m\n",
            "[m]\ndepth = 3\n",
        ] {
            std::fs::write(dir.join(INDEX), bad).unwrap();
            assert!(shipped_depth_in(&dir, "m").is_err(), "{bad}");
        }
        std::fs::write(dir.join("a.safetensors"), b"").unwrap();
        std::fs::write(dir.join(INDEX), "[m]\ndepth = \"a.safetensors\"\n").unwrap();
        assert_eq!(shipped_depth_in(&dir, "m").unwrap(), Some(dir.join("a.safetensors")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
