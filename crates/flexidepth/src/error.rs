//! The library's error type: every failure that user input can cause is one of these, never a panic.

use std::path::PathBuf;

/// Errors of the flexidepth library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The I/O error is part of the message rather than a `source`, so that error chains do not print it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// A model file that cannot be read as what it claims to be (truncated, corrupt, wrong format).
    #[error("{path}: {msg}")]
    BadModelFile { path: PathBuf, msg: String },
    #[error("unsupported architecture '{0}' (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM; GGUF: llama, qwen2, qwen3)")]
    UnknownArchitecture(String),
    /// A config option we do not implement; refused at load so that kernels never branch on it.
    #[error("unsupported model option: {0}")]
    Unsupported(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor '{name}': expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor '{0}' is missing from the model weights")]
    MissingTensor(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt (plus what is to be generated, or a perplexity window) does not fit the model's context.
    #[error("the input has {tokens} tokens but the context window holds {context} (use a shorter input)")]
    ContextOverflow { tokens: usize, context: usize },
    /// A parameter outside its domain, e.g. a sampling value (`top_p` must be in (0, 1]).
    #[error("{name} must be {domain}, not {value}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        domain: &'static str,
    },
    /// Anything else wrong with what the user gave us (empty prompt, bad option value, ...).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
    /// `path` is not what it should be (malformed, truncated, of another kind).
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::BadModelFile {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

/// Read a whole UTF-8 text file; the error names the file, and the byte where invalid UTF-8 starts.
pub fn read_to_string(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not valid UTF-8 at byte {}",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Write a file atomically: a temporary file in the same folder, then a rename, so that a crash, a full disk or a
/// Ctrl-C never leaves a half-written file under the final name (nor the temporary one, see [`crate::tmpfiles`]).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let (tmp, mut f) = crate::tmpfiles::TmpFile::create(path)?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.persist(f)
}
