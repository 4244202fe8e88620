//! Training data: a JSONL file with one sample per line, either a chat
//! (`{"messages": [{"role": "user", "content": …}, {"role": "assistant", "content": …}]}`, rendered with the model's
//! chat template) or plain text (`{"text": …}`). Other keys (`source`, `task`) are ignored. As in the official
//! recipe, every token is scored and sequences longer than `max_len` are dropped (and counted), never truncated.

use flexidepth::chat::Message;
use flexidepth::error::{Error, Result};
use flexidepth::tokenizer::Tokenizer;
use serde::Deserialize;
use std::path::Path;

/// One sample of the data file.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Chat(Vec<Message>),
    Text(String),
}

#[derive(Deserialize)]
struct Line {
    messages: Option<Vec<Message>>,
    text: Option<String>,
}

/// Parse a JSONL data set; an unreadable line is an error naming the file and the line.
pub fn parse_jsonl(path: &Path, content: &str) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let at = |msg: String| Error::bad_file(path, format!("line {}: {msg}", i + 1));
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let sample = match (parsed.messages, parsed.text) {
            (Some(messages), None) => {
                if messages.is_empty() {
                    return Err(at("\"messages\" is empty".into()));
                }
                if let Some(m) = messages
                    .iter()
                    .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
                {
                    return Err(at(format!("unknown role '{}'", m.role)));
                }
                Sample::Chat(messages)
            }
            (None, Some(text)) if !text.trim().is_empty() => Sample::Text(text),
            (None, Some(_)) => return Err(at("\"text\" is empty".into())),
            (Some(_), Some(_)) => return Err(at("a sample has either \"messages\" or \"text\", not both".into())),
            (None, None) => return Err(at("expected a \"messages\" list or a \"text\" string".into())),
        };
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(Error::bad_file(path, "the data set has no samples"));
    }
    Ok(samples)
}

/// Token sequences ready for training, and what was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedData {
    pub sequences: Vec<Vec<u32>>,
    /// Samples longer than `max_len` tokens, dropped.
    pub dropped_long: usize,
    /// Samples of fewer than 2 tokens (nothing to predict), dropped.
    pub dropped_short: usize,
}

impl TokenizedData {
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }
}

/// Tokenize samples: chats through the chat template (no generation prompt), text as is; both with the
/// tokenizer's default special tokens, as the official recipe does.
pub fn tokenize(samples: &[Sample], tokenizer: &Tokenizer, max_len: usize) -> Result<TokenizedData> {
    let mut out = TokenizedData {
        sequences: Vec::new(),
        dropped_long: 0,
        dropped_short: 0,
    };
    for sample in samples {
        let ids = match sample {
            Sample::Chat(messages) => {
                let template = tokenizer
                    .chat_template
                    .as_ref()
                    .ok_or_else(|| Error::Input("the data has chats but the model has no chat template".into()))?;
                tokenizer.encode(&template.render(messages, false)?, true)?
            }
            Sample::Text(text) => tokenizer.encode(text, true)?,
        };
        if ids.len() > max_len {
            out.dropped_long += 1;
        } else if ids.len() < 2 {
            out.dropped_short += 1;
        } else {
            out.sequences.push(ids);
        }
    }
    if out.sequences.is_empty() {
        return Err(Error::Input(format!(
            "no training sequences left: {} longer than max_len {max_len}, {} too short",
            out.dropped_long, out.dropped_short
        )));
    }
    Ok(out)
}

/// The order of the sequences in epoch `epoch` of stage `stage`: a seeded shuffle, so that a resumed run sees the
/// same order without storing it. Each (stage, epoch) has its own stream of [`flexidepth::rng`] under `seed`
/// (stream 0, which initialises fresh adapters, is never used here).
pub fn epoch_order(n: usize, seed: u64, stage: usize, epoch: usize) -> Vec<usize> {
    use flexidepth::rng::Draw;
    let mut order: Vec<usize> = (0..n).collect();
    let stream = ((stage as u64 + 1) << 32) | (epoch as u64 + 1);
    flexidepth::rng::seeded_stream(seed, stream).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chats_and_text_and_names_bad_lines() {
        let p = Path::new("d.jsonl");
        let ok = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}],\
                  \"task\":\"x\"}\n\n{\"text\":\"plain\"}\n";
        let s = parse_jsonl(p, ok).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1], Sample::Text("plain".into()));
        let bad = "{\"text\":\"a\"}\n{\"text\": 3}\n";
        let e = parse_jsonl(p, bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_jsonl(p, "{\"text\":\"a\"}\n{oops\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("invalid JSON"), "{e}");
        let e = parse_jsonl(p, "{\"foo\":1}\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_jsonl(p, "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}").unwrap_err();
        assert!(e.to_string().contains("unknown role"));
        assert!(parse_jsonl(p, "\n \n").unwrap_err().to_string().contains("no samples"));
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(50, 42, 0, 0);
        assert_eq!(a, epoch_order(50, 42, 0, 0));
        assert_ne!(a, epoch_order(50, 42, 0, 1));
        assert_ne!(a, epoch_order(50, 42, 1, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
