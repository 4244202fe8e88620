//! The offline benchmark data (`scripts/fetch-eval-data.sh`, run by `scripts/test.sh`) read into each task's items:
//! the item counts of the released splits and the prompts of known items.

use flexidepth_experiments::tasks::{Kind, TaskName};

fn load(t: TaskName, shots: usize) -> Vec<flexidepth_experiments::tasks::Item> {
    t.load(shots)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-eval-data.sh)", t.name()))
}

#[test]
fn every_task_has_its_released_item_count() {
    for (t, n) in [
        (TaskName::Hellaswag, 10042),
        (TaskName::Winogrande, 1267),
        (TaskName::ArcEasy, 570),
        (TaskName::ArcChallenge, 299),
        (TaskName::Mmlu, 14042),
        (TaskName::Gsm8k, 1319),
        (TaskName::Humaneval, 164),
        (TaskName::Coqa, 500),
    ] {
        assert_eq!(load(t, t.default_shots()).len(), n, "{}", t.name());
    }
}

#[test]
fn prompts_follow_the_harness_templates() {
    let mmlu = load(TaskName::Mmlu, 5);
    let Kind::Choice { context, choices, gold } = &mmlu[0].kind else {
        panic!()
    };
    assert!(
        context.starts_with("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    );
    assert_eq!(context.matches("\nAnswer:").count(), 6, "5 shots and the question");
    assert!(context.ends_with("\nAnswer:"));
    assert_eq!(choices, &["A", "B", "C", "D"]);
    assert!(*gold < 4);
    let Kind::Choice { context, .. } = &load(TaskName::Mmlu, 0)[0].kind else {
        panic!()
    };
    assert_eq!(context.matches("\nAnswer:").count(), 1);

    let gsm = load(TaskName::Gsm8k, 8);
    let Kind::Gsm8k { prompt, answer } = &gsm[0].kind else {
        panic!()
    };
    assert!(prompt.starts_with("Q: There are 15 trees in the grove."), "{prompt}");
    assert!(prompt.contains("So there must have been 21 - 15 = 6. The answer is 6.\n\nQ: "));
    assert!(prompt.contains("\nA: Olivia had 23 dollars."));
    assert!(prompt.ends_with("How much in dollars does she make every day at the farmers' market?\nA:"));
    assert_eq!(answer, "18");
    assert!(TaskName::Gsm8k.load(9).is_err());
    assert!(TaskName::Hellaswag.load(1).is_err());

    let Kind::Choice { context, choices, .. } = &load(TaskName::ArcEasy, 0)[0].kind else {
        panic!()
    };
    assert!(context.starts_with("Question: ") && context.ends_with("\nAnswer:"));
    assert!(choices.len() >= 3);

    let coqa = load(TaskName::Coqa, 0);
    let Kind::Coqa { prompt, golds } = &coqa[0].kind else {
        panic!()
    };
    assert!(prompt.ends_with("\n\nA:") && prompt.contains("\n\nQ: "));
    assert!(!golds.is_empty());

    let Kind::HumanEval {
        prompt, entry_point, ..
    } = &load(TaskName::Humaneval, 0)[0].kind
    else {
        panic!()
    };
    assert!(prompt.contains(&format!("def {entry_point}(")));
}
