//! Tests of the data builder on synthetic corpora (no data files, no model).

use super::select::{self, Corpus, Novel};
use super::*;
use crate::corpus::{BibleChapter, Paragraph};

/// A paragraph of `n` words, each tagged so that a test can tell where any text came from.
fn para(chapter: usize, tag: &str, n: usize) -> Paragraph {
    let text = (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>().join(" ");
    Paragraph { chapter, text }
}

/// Three novels: Persuasion (held out), Pride and Prejudice (chapters ≤ 3 held out, and one held-out paragraph
/// placed after trainable ones so that a contiguous run would run into it), and Emma.
fn corpus() -> Corpus {
    let mut pp = Vec::new();
    for ch in 1..=3 {
        pp.extend((0..4).map(|_| para(ch, "heldoutpp", 60)));
    }
    for ch in 4..=6 {
        pp.extend((0..4).map(|_| para(ch, "trainpp", 60)));
    }
    pp.push(para(2, "heldoutpp", 60));
    pp.push(para(7, "trainpp", 60));
    let emma = (1..=5)
        .flat_map(|ch| [para(ch, "emma", 10), para(ch, "emma", 80), para(ch, "emma", 300)])
        .collect();
    let persuasion = (1..=5).map(|ch| para(ch, "heldoutpersuasion", 100)).collect();
    let kjv = (1..=20)
        .map(|c| BibleChapter {
            heading: format!("Book {c}"),
            verses: (0..(c % 9 + 1)).map(|v| format!("verse {v} of chapter {c}.")).collect(),
        })
        .collect();
    let novel = |name: &str, paragraphs| Novel {
        name: name.into(),
        paragraphs,
    };
    Corpus {
        novels: vec![
            novel("emma", emma),
            novel("persuasion", persuasion),
            novel("prideprejudice", pp),
        ],
        kjv,
    }
}

fn cfg(seed: u64) -> DataConfig {
    DataConfig {
        instructions: 60,
        texts: 40,
        seed,
        text_words: 150,
    }
}

fn all_text(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan.instructions.iter().map(|i| i.prompt.clone()).collect();
    out.extend(plan.texts.iter().map(|s| match s {
        Sample::Text { text, .. } => text.clone(),
        Sample::Chat { .. } => panic!("a text sample is plain text"),
    }));
    out
}

#[test]
fn same_seed_same_samples() {
    let c = corpus();
    let a = plan(&c, &cfg(42)).unwrap();
    assert_eq!(a, plan(&c, &cfg(42)).unwrap());
    assert_ne!(a, plan(&c, &cfg(43)).unwrap());
    assert_eq!(a.instructions.len(), 60);
    assert_eq!(a.texts.len(), 40);
    let kjv = a.instructions.iter().filter(|i| i.source.starts_with("kjv:")).count();
    assert_eq!(kjv, 20);
    let order = assemble(a.texts.clone(), vec![], 42);
    assert_eq!(order, assemble(a.texts.clone(), vec![], 42));
    assert_ne!(order, a.texts);
}

#[test]
fn held_out_text_never_appears() {
    let c = corpus();
    for seed in 0..20 {
        let p = plan(&c, &cfg(seed)).unwrap();
        for t in all_text(&p) {
            assert!(!t.contains("heldout"), "seed {seed}: held-out text in {t:?}");
        }
        for s in p
            .instructions
            .iter()
            .map(|i| &i.source)
            .chain(p.texts.iter().map(|s| match s {
                Sample::Text { source, .. } | Sample::Chat { source, .. } => source,
            }))
        {
            assert!(!s.contains("persuasion"), "{s}");
            if let Some(ch) = s.strip_prefix("austen:prideprejudice:ch") {
                assert!(ch.parse::<usize>().unwrap() > 3, "{s}");
            }
        }
    }
}

#[test]
fn passages_respect_length_limits() {
    let c = corpus();
    let mut rng = flexidepth::rng::seeded(5);
    for p in select::austen_passages(&c, 50, &mut rng).unwrap() {
        let w = select::words(&p.text);
        assert!((40..=220).contains(&w), "{w} words from {}", p.source);
        assert_eq!(p.unit, "paragraph");
    }
    for p in select::kjv_passages(&c, 50, &mut rng).unwrap() {
        let verses = p.text.matches("verse ").count();
        let chapter_len = p.source["kjv:Book ".len()..]
            .split(':')
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
            % 9
            + 1;
        assert!((3..=8).contains(&verses), "{} verses in {}", verses, p.source);
        assert!(chapter_len >= 3);
        let (_, range) = p.source.rsplit_once(':').unwrap();
        let (a, b) = range.split_once('-').unwrap();
        assert_eq!(b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1, verses);
    }
    for t in select::kjv_texts(&c, 10, 20, &mut rng).unwrap() {
        let heading = t.source.strip_prefix("kjv:").unwrap();
        assert!(t.text.starts_with(&format!("{heading}\nverse 0 of")), "{:?}", t.text);
    }
    for t in select::austen_texts(&c, 30, 150, &mut rng).unwrap() {
        let w = select::words(&t.text);
        assert!(w <= 300, "{w} words: a run is cut near its target");
        assert!(!t.text.contains("heldout"));
    }
}

#[test]
fn prompts_name_the_task_and_end_with_the_passage() {
    let c = corpus();
    let p = plan(&c, &cfg(1)).unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in &p.instructions {
        seen.insert(i.task);
        let (instruction, body) = i.prompt.split_once("\n\n").unwrap();
        assert!(!body.is_empty() && !body.contains("\n\n"));
        let unit = if i.source.starts_with("kjv:") {
            "passage"
        } else {
            "paragraph"
        };
        assert!(instruction.contains(unit), "{instruction} for {}", i.source);
        assert!(
            instruction.starts_with("Please ") || instruction.ends_with('?'),
            "{instruction}"
        );
    }
    assert_eq!(
        seen.len(),
        tasks::INSTRUCTION_TASKS.len(),
        "60 picks cover the six tasks"
    );
}

#[test]
fn jsonl_lines_round_trip() {
    let i = Instruction {
        task: Task::Summarize,
        source: "austen:emma:ch12".into(),
        prompt: "Please summarize this paragraph into a single sentence:\n\n\"Hi,\" she said.".into(),
    };
    assert_eq!(i.answered("  \n"), None);
    let chat = i.answered(" Emma greets.\n").unwrap();
    let text = Sample::Text {
        text: "Genesis 1\nIn the beginning.".into(),
        source: "kjv:Genesis 1".into(),
        task: Task::Text,
    };
    let jsonl = to_jsonl(&[chat.clone(), text.clone()]).unwrap();
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"messages":[{"role":"user","content":"Please summarize this paragraph into a single sentence:\n\n\"Hi,\" she said."},{"role":"assistant","content":"Emma greets."}],"source":"austen:emma:ch12","task":"summarize"}"#
    );
    assert_eq!(
        lines[1],
        r#"{"text":"Genesis 1\nIn the beginning.","source":"kjv:Genesis 1","task":"text"}"#
    );
    assert!(jsonl.ends_with('\n'));
    let back: Vec<Sample> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(back, vec![chat, text]);
    assert_eq!(back[0].words(), 13);
    assert_eq!(back[1].task(), Task::Text);
}
