//! The instruction tasks and their prompt wording.
//!
//! The layer-usage study asks "Please copy / summarize / continue writing this paragraph" about Persuasion
//! paragraphs, and integer-list questions (repeat, sum, product). Persuasion never reaches this builder (the
//! held-out rule), and no task here is about integer lists, so no study instance can leak into training.

use serde::{Deserialize, Serialize};

/// What a sample asks for. `Text` marks a plain-text sample (no prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Copy,
    Summarize,
    Continue,
    Question,
    Title,
    Keywords,
    Text,
}

/// The instruction tasks, in the order the seeded choice indexes them.
pub const INSTRUCTION_TASKS: [Task; 6] = [
    Task::Copy,
    Task::Summarize,
    Task::Continue,
    Task::Question,
    Task::Title,
    Task::Keywords,
];

/// Questions of [`Task::Question`]; `{unit}` is "paragraph" or "passage".
const QUESTIONS: [&str; 3] = [
    "Who is mentioned in this {unit}?",
    "What is this {unit} about?",
    "What is the mood of this {unit}?",
];

/// How many variants a task's wording has (the question task picks one of its questions).
pub fn variants(task: Task) -> usize {
    match task {
        Task::Question => QUESTIONS.len(),
        _ => 1,
    }
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Copy => "copy",
            Task::Summarize => "summarize",
            Task::Continue => "continue",
            Task::Question => "question",
            Task::Title => "title",
            Task::Keywords => "keywords",
            Task::Text => "text",
        }
    }

    /// The user message: an instruction about `text`, which follows after a blank line. `unit` names the text
    /// ("paragraph" for a novel, "passage" for verses); `variant` picks a wording (below [`variants`]).
    pub fn prompt(self, unit: &str, variant: usize, text: &str) -> String {
        let instruction = match self {
            Task::Copy => format!("Please copy this {unit}:"),
            Task::Summarize => format!("Please summarize this {unit} into a single sentence:"),
            Task::Continue => format!("Please continue writing this {unit}:"),
            Task::Question => QUESTIONS[variant % QUESTIONS.len()].replace("{unit}", unit),
            Task::Title => format!("Please give this {unit} a short title:"),
            Task::Keywords => format!("Please list five keywords for this {unit}:"),
            Task::Text => return text.to_string(),
        };
        format!("{instruction}\n\n{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_put_the_text_after_a_blank_line() {
        assert_eq!(
            Task::Copy.prompt("paragraph", 0, "Some text."),
            "Please copy this paragraph:\n\nSome text."
        );
        assert_eq!(
            Task::Summarize.prompt("paragraph", 0, "X"),
            "Please summarize this paragraph into a single sentence:\n\nX"
        );
        assert_eq!(
            Task::Continue.prompt("passage", 0, "X"),
            "Please continue writing this passage:\n\nX"
        );
        assert_eq!(
            Task::Question.prompt("passage", 0, "X"),
            "Who is mentioned in this passage?\n\nX"
        );
        assert_eq!(
            Task::Question.prompt("paragraph", 1, "X"),
            "What is this paragraph about?\n\nX"
        );
        for task in INSTRUCTION_TASKS {
            for v in 0..variants(task) {
                let p = task.prompt("paragraph", v, "BODY");
                assert!(p.ends_with("\n\nBODY"), "{p}");
                // Integer-list tasks belong to the study only.
                assert!(
                    !p.contains("following list") && !p.contains("sum of") && !p.contains("product"),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn task_names_match_serde() {
        for t in INSTRUCTION_TASKS.iter().chain([&Task::Text]) {
            assert_eq!(serde_json::to_string(t).unwrap(), format!("\"{}\"", t.name()));
        }
    }
}
