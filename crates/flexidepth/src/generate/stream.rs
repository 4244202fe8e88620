//! Streaming text out of a token stream: never splits a UTF-8 character, and holds back text that may be the
//! start of a stop string.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Incremental detokenizer: decodes a window of recent tokens and emits only the text that is complete
/// (a byte-level token can end in the middle of a multi-byte character, which decodes to U+FFFD until the
/// next token completes it).
#[derive(Debug, Default)]
pub struct TokenStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TokenStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a token; returns the new complete text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        self.ids.push(id);
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let new = match after.get(before.len()..) {
                Some(s) if after.starts_with(&before) => s.to_string(),
                _ => after.chars().skip(before.chars().count()).collect(),
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(new));
        }
        Ok(None)
    }

    /// Whatever is left undecoded at the end (possibly with replacement characters).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}

/// Finds stop strings in streamed text; text that could still become a stop string is held back.
#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Feed text; returns the text safe to show and whether a stop string was reached (text from it on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop` (on character boundaries).
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_chunks() {
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("hello E"), ("hello ".to_string(), false));
        assert_eq!(s.push("N"), (String::new(), false));
        assert_eq!(s.push("D and more"), (String::new(), true));
    }

    #[test]
    fn held_text_is_released_when_it_cannot_stop() {
        let mut s = StopStrings::new(vec!["\n\nUser:".into()]);
        assert_eq!(s.push("a\n"), ("a".to_string(), false));
        assert_eq!(s.push("b"), ("\nb".to_string(), false));
        assert_eq!(s.push("é\n\nUs"), ("é".to_string(), false));
        assert_eq!(s.finish(), "\n\nUs");
    }

    #[test]
    fn detokenizer_waits_for_whole_characters() {
        let tok = crate::tokenizer::toy_tokenizer();
        let text = "aé🚀b";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids.len(), 1 + 2 + 4 + 1, "one token per byte in the toy vocabulary");
        let mut stream = TokenStream::new();
        let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.push(&tok, id).unwrap()).collect();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            pieces,
            vec![some("a"), None, some("é"), None, None, None, some("🚀"), some("b")]
        );
        assert_eq!(stream.finish(&tok).unwrap(), "");
    }

    #[test]
    fn no_stops_passes_through() {
        let mut s = StopStrings::new(vec![]);
        assert_eq!(s.push("abc"), ("abc".to_string(), false));
    }
}
