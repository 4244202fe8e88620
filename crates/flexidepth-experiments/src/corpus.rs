//! The plain-text corpora that ship in packages (`scripts/fetch-data.sh`): Jane Austen's six novels and the King
//! James Bible, cut into paragraphs, plus the one rule that keeps evaluation text out of training data.
//!
//! Held out of every training set: the whole of [`HELDOUT_NOVEL`] (the layer-usage study and the α-sweep quality
//! evaluation draw from it) and the opening chapters of Pride and Prejudice (the golden perplexity passage).

use flexidepth::error::{Error, Result};
use std::path::PathBuf;

/// The six novels, by file stem under `data/austen/`.
pub const NOVELS: [&str; 6] = [
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
];

/// Never used for training: the study's paragraphs and the held-out evaluation text come from here.
pub const HELDOUT_NOVEL: &str = "persuasion";

/// The golden perplexity passage starts Pride and Prejudice; its first chapters stay out of training too.
const FIXTURE_NOVEL: &str = "prideprejudice";
const FIXTURE_CHAPTERS: usize = 3;

/// `data/` in the cache folder (`$FLEXIDEPTH_CACHE`, or `~/.cache/flexidepth`).
pub fn data_dir() -> PathBuf {
    flexidepth::loader::cache_dir().join("data")
}

fn read(path: PathBuf, what: &str) -> Result<String> {
    std::fs::read_to_string(&path).map_err(|e| {
        Error::Input(format!(
            "cannot read {what} at {}: {e} (run scripts/fetch-data.sh)",
            path.display()
        ))
    })
}

/// One novel's text, as fetched (one line of the packaged R vector per line).
pub fn read_novel(name: &str) -> Result<String> {
    if !NOVELS.contains(&name) {
        return Err(Error::Input(format!(
            "unknown novel '{name}' (one of {})",
            NOVELS.join(", ")
        )));
    }
    read(data_dir().join("austen").join(format!("{name}.txt")), name)
}

/// The KJV text, as `bible 'Gen1:1-Rev22:21'` prints it.
pub fn read_kjv() -> Result<String> {
    read(data_dir().join("kjv.txt"), "the King James Bible")
}

/// A paragraph of a novel and the chapter it sits in (0 before the first chapter heading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paragraph {
    pub chapter: usize,
    pub text: String,
}

fn is_chapter_heading(line: &str) -> bool {
    let l = line.trim();
    let mut words = l.split_whitespace();
    matches!(words.next(), Some(w) if w.eq_ignore_ascii_case("chapter")) && words.count() <= 1
}

/// Paragraphs of a novel: runs of non-empty lines joined with single spaces. Chapter headings count chapters and
/// are not paragraphs; so is everything before the first heading (title page).
pub fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut chapter = 0;
    let mut current: Vec<&str> = Vec::new();
    let mut flush = |current: &mut Vec<&str>, chapter: usize| {
        if chapter > 0 && !current.is_empty() {
            out.push(Paragraph {
                chapter,
                text: current.join(" "),
            });
        }
        current.clear();
    };
    for line in text.lines() {
        let l = line.trim();
        if is_chapter_heading(l) {
            flush(&mut current, chapter);
            chapter += 1;
        } else if l.is_empty() {
            flush(&mut current, chapter);
        } else {
            current.push(l);
        }
    }
    flush(&mut current, chapter);
    out
}

/// The held-out evaluation text starts at this chapter of [`HELDOUT_NOVEL`] (volume II of Persuasion), so that
/// it does not begin with the title-page-like opening that every model has seen quoted.
pub const HELDOUT_FROM_CHAPTER: usize = 13;

/// The held-out evaluation text: the paragraphs of [`HELDOUT_NOVEL`] from [`HELDOUT_FROM_CHAPTER`] on, joined
/// with `"\n"`. The layer-usage study samples paragraphs of the whole novel; the overlap is harmless since none of
/// it is ever trained on.
pub fn heldout_text() -> Result<String> {
    Ok(heldout_from(&read_novel(HELDOUT_NOVEL)?))
}

fn heldout_from(novel: &str) -> String {
    let ps: Vec<String> = paragraphs(novel)
        .into_iter()
        .filter(|p| p.chapter >= HELDOUT_FROM_CHAPTER)
        .map(|p| p.text)
        .collect();
    ps.join("\n")
}

/// Whether a paragraph of `novel` may go into training data.
pub fn trainable(novel: &str, p: &Paragraph) -> bool {
    novel != HELDOUT_NOVEL && !(novel == FIXTURE_NOVEL && p.chapter <= FIXTURE_CHAPTERS)
}

/// One chapter of the KJV: its heading ("Genesis 1") and its verses, numbers stripped, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BibleChapter {
    pub heading: String,
    pub verses: Vec<String>,
}

/// Chapters of the KJV text. A verse starts at a line with a leading verse number; continuation lines join it.
pub fn kjv_chapters(text: &str) -> Vec<BibleChapter> {
    let mut out: Vec<BibleChapter> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let trimmed = line.trim_start();
        let indented = trimmed.len() < line.len();
        let number_len = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        if indented && number_len > 0 {
            let verse = trimmed[number_len..].trim().to_string();
            if let Some(ch) = out.last_mut() {
                ch.verses.push(verse);
            }
        } else if !indented && line.split_whitespace().last().is_some_and(|w| w.parse::<u32>().is_ok()) {
            out.push(BibleChapter {
                heading: line.trim().to_string(),
                verses: Vec::new(),
            });
        } else if let Some(verse) = out.last_mut().and_then(|ch| ch.verses.last_mut()) {
            verse.push(' ');
            verse.push_str(line.trim());
        }
    }
    out.retain(|ch| !ch.verses.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_follow_blank_lines_and_chapters() {
        let text = "Title\n\nby\n\nChapter 1\n\n\nFirst line\nsecond line.\n\nNext one.\nCHAPTER II\nThird.\n";
        let ps = paragraphs(text);
        assert_eq!(
            ps,
            vec![
                Paragraph {
                    chapter: 1,
                    text: "First line second line.".into()
                },
                Paragraph {
                    chapter: 1,
                    text: "Next one.".into()
                },
                Paragraph {
                    chapter: 2,
                    text: "Third.".into()
                },
            ]
        );
        assert!(!trainable(HELDOUT_NOVEL, &ps[0]));
        assert!(!trainable("prideprejudice", &ps[2]));
        assert!(trainable("emma", &ps[0]));
        let late = Paragraph {
            chapter: 4,
            text: String::new(),
        };
        assert!(trainable("prideprejudice", &late));
    }

    #[test]
    fn heldout_text_starts_at_its_chapter() {
        let mut text = String::new();
        for ch in 1..=14 {
            text += &format!("Chapter {ch}\n\nParagraph {ch}a\nwraps.\n\nParagraph {ch}b.\n\n");
        }
        assert_eq!(
            heldout_from(&text),
            "Paragraph 13a wraps.\nParagraph 13b.\nParagraph 14a wraps.\nParagraph 14b."
        );
    }

    #[test]
    fn kjv_verses_join_continuation_lines() {
        let text = "Genesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 And the earth was \
                    without form,\nand void.\n\nGenesis 2\n\n  1 Thus the heavens.\n";
        let chs = kjv_chapters(text);
        assert_eq!(chs.len(), 2);
        assert_eq!(chs[0].heading, "Genesis 1");
        assert_eq!(
            chs[0].verses,
            vec![
                "In the beginning God created the heaven and the earth.",
                "And the earth was without form, and void."
            ]
        );
        assert_eq!(chs[1].verses, vec!["Thus the heavens."]);
    }
}
