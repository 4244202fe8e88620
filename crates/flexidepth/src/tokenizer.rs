//! Tokenizers: HF `tokenizer.json`, or one built from a GGUF file's embedded vocabulary.
//!
//! A GGUF tokenizer is turned into a `tokenizer.json` document first and loaded through the `tokenizers` crate, so
//! both formats share one code path and `convert` can write the very document we run. The recipe per
//! `tokenizer.ggml.pre` follows transformers' own GGUF conversion (see `shared/models.md`).

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::weights::GgufFile;
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Value};
use std::path::Path;

/// Qwen2's pre-tokenizer regex (also used by `deepseek-llm`-style files).
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex (`llama-bpe`): like Qwen2's but digits in groups of up to three.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Texts of the special tokens that end generation, as llama.cpp recognises them in any vocabulary
/// (`llama_vocab::impl::load`, its `special_eog_ids`): end of text, end of turn, end of message.
pub const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// A tokenizer with the model's special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl Tokenizer {
    fn from_json(json: Value, chat_template: Option<String>, bos: Option<String>, eos: Option<String>) -> Result<Self> {
        // tokenizers trusts its post-processor's references (and its BPE merges' lengths) and panics on a dangling
        // one: check them first.
        check_post_processor(&json["post_processor"])?;
        check_bpe_merges(&json["model"])?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(json).map_err(|e| Error::Tokenizer(format!("cannot build the tokenizer: {e}")))?;
        let chat_template = chat_template.map(|src| ChatTemplate::new(src, bos.clone(), eos.clone()));
        Ok(Tokenizer {
            inner,
            chat_template,
            bos_token: bos,
            eos_token: eos,
        })
    }

    /// `tokenizer.json` and `tokenizer_config.json` (chat template, special tokens) of an HF folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = crate::error::read_to_string(&path)?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, format!("invalid JSON: {e}")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let t = crate::error::read_to_string(&cfg_path)?;
            serde_json::from_str(&t).map_err(|e| Error::bad_file(&cfg_path, format!("invalid JSON: {e}")))?
        } else {
            json!({})
        };
        // A key of the wrong type is an error naming it, never silently no template or no special token.
        let bad = |key: &str, want: &str| Error::bad_file(&cfg_path, format!("'{key}' must be {want}"));
        let token_str = |key: &str| -> Result<Option<String>> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad(key, "a string or an object with a string 'content'")),
                },
                Some(_) => Err(bad(key, "a string or an object with a string 'content'")),
            }
        };
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.exists() {
            Some(crate::error::read_to_string(&jinja)?)
        } else {
            match cfg.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .map(|t| t.get("template").and_then(|t| t.as_str()).map(String::from))
                    .map(|t| t.ok_or_else(|| bad("chat_template", "a string, or a list of {name, template} strings")))
                    .transpose()?,
                Some(_) => return Err(bad("chat_template", "a string, or a list of {name, template} strings")),
            }
        };
        let (bos, eos) = (token_str("bos_token")?, token_str("eos_token")?);
        Self::from_json(json, template, bos, eos).map_err(|e| Error::bad_file(&path, e))
    }

    /// The tokenizer embedded in a GGUF file.
    pub fn from_gguf(gguf: &GgufFile, vocab_size: usize) -> Result<Self> {
        let bad = |m: String| Error::bad_file(gguf.path(), m);
        let strings = |key: &str| -> Result<Vec<String>> {
            match gguf.meta(key) {
                Some(GgufValue::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.to_string()
                            .cloned()
                            .map_err(|_| bad(format!("'{key}' holds a non-string")))
                    })
                    .collect(),
                _ => Err(bad(format!("GGUF metadata has no '{key}' list"))),
            }
        };
        let model = match gguf.meta("tokenizer.ggml.model") {
            Some(GgufValue::String(s)) => s.clone(),
            _ => return Err(bad("GGUF metadata has no 'tokenizer.ggml.model'".into())),
        };
        if model != "gpt2" {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer model '{model}' (only byte-level BPE, 'gpt2', is implemented)"
            )));
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        if tokens.len() > vocab_size {
            return Err(bad(format!(
                "'tokenizer.ggml.tokens' holds {} tokens, more than the {vocab_size} rows of the embedding",
                tokens.len()
            )));
        }
        let types: Vec<i64> = match gguf.meta("tokenizer.ggml.token_type") {
            Some(GgufValue::Array(a)) if a.len() == tokens.len() => a
                .iter()
                .map(|v| {
                    v.to_i32()
                        .map(i64::from)
                        .map_err(|_| bad("'tokenizer.ggml.token_type' holds a non-i32 value".into()))
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                return Err(bad(format!(
                    "'tokenizer.ggml.token_type' must be a list of {} token types",
                    tokens.len()
                )))
            }
            None => vec![1; tokens.len()],
        };
        let pre = match gguf.meta("tokenizer.ggml.pre") {
            Some(GgufValue::String(s)) => s.clone(),
            Some(_) => return Err(bad("'tokenizer.ggml.pre' must be a string".into())),
            None => "default".to_string(),
        };
        let id_meta = |key: &str| gguf.meta_token_id(key, tokens.len());
        let add_bos = match gguf.meta("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(GgufValue::Bool(b)) => *b,
            Some(_) => return Err(bad("'tokenizer.ggml.add_bos_token' must be a boolean".into())),
        };
        let bos_id = id_meta("tokenizer.ggml.bos_token_id")?;
        let eos_id = id_meta("tokenizer.ggml.eos_token_id")?;
        let json = gguf_tokenizer_json(&tokens, &types, &merges, &pre, if add_bos { bos_id } else { None })?;
        let name = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let template = match gguf.meta("tokenizer.chat_template") {
            Some(GgufValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("'tokenizer.chat_template' must be a string".into())),
            None => None,
        };
        Self::from_json(json, template, name(bos_id), name(eos_id))
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }

    /// Special (control) tokens of the vocabulary whose text marks an end of text or of a turn — llama.cpp's
    /// end-of-generation list in `llama-vocab.cpp` ([`END_OF_GENERATION_TEXTS`]), ascending. A plain
    /// (non-special) token with such a text is not included: it is ordinary text the model may write.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && END_OF_GENERATION_TEXTS.contains(&t.content.as_str()))
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The `tokenizer.json` document (serialised from the tokenizer itself, so nothing is kept twice).
    pub fn to_json(&self) -> Result<Value> {
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer(format!("cannot serialise the tokenizer: {e}")))?;
        serde_json::from_str(&text).map_err(|e| Error::Tokenizer(format!("cannot serialise the tokenizer: {e}")))
    }

    /// `tokenizer_config.json` for an HF folder (special tokens and chat template).
    pub fn config_json(&self) -> Value {
        let mut v = json!({ "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false });
        if let Some(b) = &self.bos_token {
            v["bos_token"] = json!(b);
        }
        if let Some(e) = &self.eos_token {
            v["eos_token"] = json!(e);
        }
        if let Some(t) = &self.chat_template {
            v["chat_template"] = json!(t.source());
        }
        v
    }
}

/// Refuse a `post_processor` (of a `tokenizer.json` document) whose template names a special token it does not
/// define, or defines one with unequal `ids` and `tokens` lists: tokenizers indexes them unchecked when encoding.
fn check_post_processor(pp: &Value) -> Result<()> {
    let bad = |m: String| Err(Error::Tokenizer(format!("post_processor: {m}")));
    match pp.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for p in pp.get("processors").and_then(Value::as_array).into_iter().flatten() {
                check_post_processor(p)?;
            }
        }
        Some("TemplateProcessing") => {
            let specials = pp.get("special_tokens").and_then(Value::as_object);
            for (name, tok) in specials.into_iter().flatten() {
                let len = |k: &str| tok.get(k).and_then(Value::as_array).map(Vec::len);
                if len("ids") != len("tokens") {
                    return bad(format!("special token '{name}' has unequal 'ids' and 'tokens' lists"));
                }
            }
            for part in ["single", "pair"] {
                for piece in pp.get(part).and_then(Value::as_array).into_iter().flatten() {
                    let Some(id) = piece
                        .get("SpecialToken")
                        .and_then(|t| t.get("id"))
                        .and_then(Value::as_str)
                    else {
                        continue;
                    };
                    if !specials.is_some_and(|m| m.contains_key(id)) {
                        return bad(format!(
                            "the '{part}' template uses '{id}', which 'special_tokens' does not define"
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuse BPE merges tokenizers would panic on while building the model: each merge `a b` must name two tokens of
/// the vocabulary, `b` must start with the `continuing_subword_prefix`, and their concatenation (prefix dropped)
/// must be a token too (tokenizers copies it into a buffer as long as the longest token before looking it up).
fn check_bpe_merges(model: &Value) -> Result<()> {
    let (Some(vocab), Some(merges)) = (
        model.get("vocab").and_then(Value::as_object),
        model.get("merges").and_then(Value::as_array),
    ) else {
        return Ok(()); // not BPE, or malformed: tokenizers' own deserializer reports it
    };
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .unwrap_or("");
    for m in merges {
        let pair: Option<(&str, &str)> = match m {
            Value::String(s) => s.split_once(' ').filter(|(_, b)| !b.contains(' ')),
            Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
            _ => None,
        };
        let bad = |why: &str| Err(Error::Tokenizer(format!("BPE merge {m}: {why}")));
        let Some((a, b)) = pair else {
            return bad("not a pair of tokens");
        };
        if !vocab.contains_key(a) || !vocab.contains_key(b) {
            return bad("names a token outside the vocabulary");
        }
        let Some(rest) = b.strip_prefix(prefix) else {
            return bad(&format!(
                "'{b}' does not start with the continuing_subword_prefix '{prefix}'"
            ));
        };
        if !vocab.contains_key(&format!("{a}{rest}")) {
            return bad("makes a token outside the vocabulary");
        }
    }
    Ok(())
}

/// The `tokenizer.json` document for a byte-level BPE vocabulary from GGUF metadata.
fn gguf_tokenizer_json(
    tokens: &[String],
    types: &[i64],
    merges: &[String],
    pre: &str,
    bos: Option<u32>,
) -> Result<Value> {
    // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 5 {
            continue;
        }
        vocab.insert(tok.clone(), json!(id));
        if ty == 3 || ty == 4 {
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": ty == 4, "special": ty == 3}),
            );
        }
    }
    let byte_level = |use_regex: bool, trim: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let (normalizer, pre_tokenizer) = match pre {
        "smollm" | "starcoder" | "refact" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true, true)]}),
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false, false)]}),
        ),
        "llama-bpe" | "llama3" | "smaug-bpe" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false, true)]}),
        ),
        "gpt2" | "gpt-2" | "default" => (Value::Null, byte_level(true, true)),
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF pre-tokenizer '{other}' (known: smollm, starcoder, refact, qwen2, llama-bpe, gpt2)"
            )))
        }
    };
    let post_processor = match bos.and_then(|b| tokens.get(b as usize).map(|t| (b, t))) {
        Some((id, tok)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}}}),
        None => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// A toy byte-level vocabulary for unit tests: a control token, every byte's symbol, and the merge "a b".
#[cfg(test)]
pub(crate) fn toy_tokenizer() -> Tokenizer {
    tests::toy()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn toy() -> Tokenizer {
        let bytes: Vec<String> = (0u8..=255).map(|b| byte_symbol(b).to_string()).collect();
        let mut tokens = vec!["<|s|>".to_string()];
        tokens.extend(bytes);
        tokens.push("ab".into());
        let mut types = vec![3i64];
        types.extend(std::iter::repeat_n(1, 257));
        let json = gguf_tokenizer_json(&tokens, &types, &["a b".to_string()], "smollm", None).unwrap();
        Tokenizer::from_json(json, None, None, None).unwrap()
    }

    /// GPT-2's byte → printable-symbol map.
    fn byte_symbol(b: u8) -> char {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        if printable(b) {
            return b as char;
        }
        let n = (0u8..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }

    #[test]
    fn toy_bpe_merges_splits_digits_and_round_trips() {
        let t = toy();
        let ab = t.token_to_id("ab").unwrap();
        assert_eq!(t.encode("ab", false).unwrap(), vec![ab]);
        // Digits are split one by one by the smollm pre-tokenizer.
        let ids = t.encode("12", false).unwrap();
        assert_eq!(ids.len(), 2);
        let text = "héllo ab 12 — ✓";
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        // The control token is matched whole and skipped on request.
        let ids = t.encode("<|s|>ab", false).unwrap();
        assert_eq!(ids, vec![0, ab]);
        assert_eq!(t.decode(&ids, true).unwrap(), "ab");
    }

    /// A post-processor naming a special token it does not define is refused when the tokenizer is built (the
    /// tokenizers crate would panic on the first encode with special tokens).
    #[test]
    fn dangling_post_processor_references_are_refused() {
        let tokens: Vec<String> = vec!["<s>".into(), "a".into()];
        let mut json = gguf_tokenizer_json(&tokens, &[3, 1], &[], "gpt2", Some(0)).unwrap();
        assert!(Tokenizer::from_json(json.clone(), None, None, None).is_ok());
        json["post_processor"]["special_tokens"] = json!({});
        let e = Tokenizer::from_json(json.clone(), None, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'<s>'") && e.contains("special_tokens"), "{e}");
        json["post_processor"] = json!({"type": "Sequence", "processors": [{"type": "TemplateProcessing",
            "single": [], "pair": [], "special_tokens": {"x": {"id": "x", "ids": [0, 1], "tokens": ["x"]}}}]});
        let e = Tokenizer::from_json(json, None, None, None).err().unwrap().to_string();
        assert!(e.contains("unequal"), "{e}");
    }

    /// Merges that would make tokenizers slice past its buffer (a merge longer than every token, a second part
    /// shorter than the subword prefix) are refused, not handed over.
    #[test]
    fn bpe_merges_tokenizers_would_panic_on_are_refused() {
        let tokens: Vec<String> = vec!["ab".into(), "cd".into(), "abcd".into()];
        let mut json = gguf_tokenizer_json(&tokens, &[1, 1, 1], &["ab cd".into()], "gpt2", None).unwrap();
        assert!(Tokenizer::from_json(json.clone(), None, None, None).is_ok());
        let abcd = json["model"]["vocab"].as_object_mut().unwrap().remove("abcd").unwrap();
        let e = Tokenizer::from_json(json.clone(), None, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
        json["model"]["vocab"]["abcd"] = abcd;
        json["model"]["continuing_subword_prefix"] = json!("NaN");
        let e = Tokenizer::from_json(json, None, None, None).err().unwrap().to_string();
        assert!(e.contains("continuing_subword_prefix"), "{e}");
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused() {
        let e = gguf_tokenizer_json(&["a".into()], &[1], &[], "mystery", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mystery"), "{e}");
    }
}
