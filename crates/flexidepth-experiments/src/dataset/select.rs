//! Seeded choice of passages from the corpora, with the held-out rule applied at every pick.
//!
//! The generator is [`flexidepth::rng`]'s seeded ChaCha8 (not `rand`'s `StdRng`, whose algorithm may change between
//! releases): a data set must come out byte-identical from the same seed for as long as this code is unchanged.
//! Data sets built at commit 422e5e2 or earlier drew from a SplitMix64: this code draws a different selection.

use crate::corpus::{self, BibleChapter, Paragraph};
use flexidepth::error::{Error, Result};
use flexidepth::rng::Draw;
use std::collections::HashSet;

/// The generator every pick draws from ([`flexidepth::rng`]: ChaCha8, a stream fixed by its algorithm).
pub type Rng = flexidepth::rng::SeededRng;

/// A novel's paragraphs, all of them: the held-out rule is applied when picking, so that it cannot be bypassed by
/// building a corpus differently.
#[derive(Debug, Clone)]
pub struct Novel {
    pub name: String,
    pub paragraphs: Vec<Paragraph>,
}

/// The texts to draw from.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub novels: Vec<Novel>,
    pub kjv: Vec<BibleChapter>,
}

impl Corpus {
    /// The six novels and the KJV from the data folder (`scripts/fetch-data.sh` fetches them).
    pub fn load() -> Result<Self> {
        let mut novels = Vec::new();
        for name in corpus::NOVELS {
            let paragraphs = corpus::paragraphs(&corpus::read_novel(name)?);
            novels.push(Novel {
                name: name.to_string(),
                paragraphs,
            });
        }
        let kjv = corpus::kjv_chapters(&corpus::read_kjv()?);
        Ok(Corpus { novels, kjv })
    }
}

/// A piece of text to ask about, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    /// `austen:emma:ch12` or `kjv:Genesis 1:3-8`.
    pub source: String,
    /// What a prompt calls it: "paragraph" (a novel) or "passage" (verses).
    pub unit: &'static str,
    pub text: String,
}

/// Words of an Austen paragraph that may be asked about: long enough to say something, short enough that a
/// small model's answer (copy, continue) fits in its token budget.
pub const PARAGRAPH_WORDS: (usize, usize) = (40, 220);
/// Consecutive verses in a KJV passage.
pub const VERSES: (usize, usize) = (3, 8);

pub(crate) fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// `n` picks from `pool`, without repeats until the pool is used up (then it is reshuffled and drawn again).
fn draw<T: Clone>(pool: &[T], n: usize, rng: &mut Rng) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let mut order: Vec<usize> = (0..pool.len()).collect();
    while out.len() < n && !pool.is_empty() {
        rng.shuffle(&mut order);
        out.extend(order.iter().take(n - out.len()).map(|&i| pool[i].clone()));
    }
    out
}

fn austen_source(novel: &Novel, p: &Paragraph) -> String {
    format!("austen:{}:ch{}", novel.name, p.chapter)
}

/// `n` distinct trainable Austen paragraphs of [`PARAGRAPH_WORDS`] words.
pub fn austen_passages(corpus: &Corpus, n: usize, rng: &mut Rng) -> Result<Vec<Passage>> {
    let pool: Vec<(usize, usize)> = corpus
        .novels
        .iter()
        .enumerate()
        .flat_map(|(ni, novel)| {
            novel.paragraphs.iter().enumerate().filter_map(move |(pi, p)| {
                let w = words(&p.text);
                let fits = (PARAGRAPH_WORDS.0..=PARAGRAPH_WORDS.1).contains(&w);
                (fits && corpus::trainable(&novel.name, p)).then_some((ni, pi))
            })
        })
        .collect();
    if n > 0 && pool.is_empty() {
        return Err(Error::Input(format!(
            "no trainable Austen paragraph of {}–{} words (run scripts/fetch-data.sh)",
            PARAGRAPH_WORDS.0, PARAGRAPH_WORDS.1
        )));
    }
    Ok(draw(&pool, n, rng)
        .into_iter()
        .map(|(ni, pi)| {
            let (novel, p) = (&corpus.novels[ni], &corpus.novels[ni].paragraphs[pi]);
            Passage {
                source: austen_source(novel, p),
                unit: "paragraph",
                text: p.text.clone(),
            }
        })
        .collect())
}

/// `n` KJV passages of [`VERSES`] consecutive verses, within one chapter, distinct where the Bible allows.
pub fn kjv_passages(corpus: &Corpus, n: usize, rng: &mut Rng) -> Result<Vec<Passage>> {
    let chapters: Vec<&BibleChapter> = corpus.kjv.iter().filter(|c| c.verses.len() >= VERSES.0).collect();
    if n > 0 && chapters.is_empty() {
        return Err(Error::Input(
            "no KJV chapter to draw from (run scripts/fetch-data.sh)".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut attempts = 0;
    while out.len() < n {
        let ch = rng.below(chapters.len());
        let len = rng.range(VERSES.0, VERSES.1).min(chapters[ch].verses.len());
        let start = rng.below(chapters[ch].verses.len() - len + 1);
        attempts += 1;
        // A repeat is only accepted once distinct picks have become hard to find.
        if !seen.insert((ch, start, len)) && attempts < 100 * n {
            continue;
        }
        let c = chapters[ch];
        out.push(Passage {
            source: format!("kjv:{}:{}-{}", c.heading, start + 1, start + len),
            unit: "passage",
            text: c.verses[start..start + len].join(" "),
        });
    }
    Ok(out)
}

/// Take units from the front until about `target` words: always the first, then more while under the target,
/// but not one that would overshoot by half once half the target is there.
fn cut<'a>(units: impl Iterator<Item = &'a str>, target: usize) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut total = 0;
    for u in units {
        let w = words(u);
        if !out.is_empty() && (total >= target || (2 * total >= target && 2 * (total + w) > 3 * target)) {
            break;
        }
        out.push(u);
        total += w;
    }
    out
}

/// `n` runs of consecutive trainable Austen paragraphs joined with "\n", about `target` words each. A run stops
/// before a held-out paragraph and at the end of its novel.
pub fn austen_texts(corpus: &Corpus, n: usize, target: usize, rng: &mut Rng) -> Result<Vec<Passage>> {
    let starts: Vec<(usize, usize)> = corpus
        .novels
        .iter()
        .enumerate()
        .flat_map(|(ni, novel)| {
            (0..novel.paragraphs.len())
                .filter(move |&pi| corpus::trainable(&novel.name, &novel.paragraphs[pi]))
                .map(move |pi| (ni, pi))
        })
        .collect();
    if n > 0 && starts.is_empty() {
        return Err(Error::Input(
            "no trainable Austen text (run scripts/fetch-data.sh)".into(),
        ));
    }
    Ok(draw(&starts, n, rng)
        .into_iter()
        .map(|(ni, pi)| {
            let novel = &corpus.novels[ni];
            let run = novel.paragraphs[pi..]
                .iter()
                .take_while(|p| corpus::trainable(&novel.name, p))
                .map(|p| p.text.as_str());
            Passage {
                source: austen_source(novel, &novel.paragraphs[pi]),
                unit: "text",
                text: cut(run, target).join("\n"),
            }
        })
        .collect())
}

/// `n` KJV chapters from their first verse: the heading, a newline, then verses joined with spaces, cut to about
/// `target` words.
pub fn kjv_texts(corpus: &Corpus, n: usize, target: usize, rng: &mut Rng) -> Result<Vec<Passage>> {
    if n > 0 && corpus.kjv.is_empty() {
        return Err(Error::Input(
            "no KJV chapter to draw from (run scripts/fetch-data.sh)".into(),
        ));
    }
    let idx: Vec<usize> = (0..corpus.kjv.len()).collect();
    Ok(draw(&idx, n, rng)
        .into_iter()
        .map(|i| {
            let c = &corpus.kjv[i];
            let verses = cut(c.verses.iter().map(String::as_str), target);
            Passage {
                source: format!("kjv:{}", c.heading),
                unit: "text",
                text: format!("{}\n{}", c.heading, verses.join(" ")),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_stops_near_the_target_at_unit_boundaries() {
        let ten = "a b c d e f g h i j";
        assert_eq!(cut([ten; 30].into_iter(), 35).len(), 4);
        // One oversized unit is still taken whole; one that would overshoot by more than half is not added.
        assert_eq!(cut([ten, &"w ".repeat(100)].into_iter(), 5).len(), 1);
        assert_eq!(cut([&"w ".repeat(20)[..], &"w ".repeat(100)].into_iter(), 30).len(), 1);
        assert!(cut(std::iter::empty(), 10).is_empty());
    }
}
