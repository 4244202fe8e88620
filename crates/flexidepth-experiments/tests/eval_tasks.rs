//! `flexidepth eval`'s scoring rules against hand-computed values on tiny cases, the multiple-choice path (context
//! once, choices from its cache) against each choice scored alone on a tiny GGUF model, and HumanEval's sandbox with
//! a passing, a failing and a hanging program.

#[path = "../../flexidepth/tests/common/tiny_gguf.rs"]
mod tiny_gguf;

use flexidepth::depth::PolicySpec;
use flexidepth::loader::{ModelFiles, ModelPath};
use flexidepth::model::WeightFormat;
use flexidepth_experiments::tasks::humaneval::{program, run_program, Limits, Outcome};
use flexidepth_experiments::tasks::lm::{encode_pair, Lm};
use flexidepth_experiments::tasks::metrics::*;
use flexidepth_experiments::tasks::multiple_choice::{capitalize, hellaswag_preprocess, winogrande_item};
use flexidepth_experiments::tasks::run::{score_item, RunOptions};
use flexidepth_experiments::tasks::{coqa, gsm8k, subset, Item, Kind};
use std::time::{Duration, Instant};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn acc_takes_the_raw_loglikelihood_and_acc_norm_divides_by_characters() {
    // Raw: -10 > -12, so choice 0; per character: -10/2 = -5 < -12/6 = -2, so choice 1.
    let choices = vec!["ab".to_string(), "abcdef".to_string()];
    assert_eq!(acc_and_norm(&[-10.0, -12.0], &choices, 1), (0.0, 1.0));
    assert_eq!(acc_and_norm(&[-10.0, -12.0], &choices, 0), (1.0, 0.0));
    // Characters, not bytes: "é" is one character.
    let accented = vec!["éé".to_string(), "abc".to_string()];
    assert_eq!(acc_and_norm(&[-4.0, -6.5], &accented, 1), (0.0, 0.0)); // -2.0 > -2.1667
                                                                       // Ties go to the first choice, as numpy's argmax.
    assert_eq!(argmax(&[1.0, 1.0, 0.5]), 0);
}

#[test]
fn mean_stderr_is_the_sample_standard_error() {
    // [1, 0, 1, 1]: mean 0.75, sample variance 0.25, stderr sqrt(0.25 / 4) = 0.25.
    assert!(close(mean(&[1.0, 0.0, 1.0, 1.0]), 0.75));
    assert!(close(mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap(), 0.25));
    assert_eq!(mean_stderr(&[1.0]), None);
}

#[test]
fn winogrande_fills_the_blank_and_scores_the_rest_of_the_sentence() {
    let item = winogrande_item(
        0,
        "The trophy did not fit in the case because _ was too big.",
        "the trophy",
        "the case",
        "1",
    )
    .unwrap();
    match item.kind {
        Kind::Partial {
            contexts,
            continuation,
            gold,
        } => {
            assert_eq!(
                contexts,
                vec![
                    "The trophy did not fit in the case because the trophy",
                    "The trophy did not fit in the case because the case"
                ]
            );
            assert_eq!(continuation, "was too big.");
            assert_eq!(gold, 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(winogrande_item(0, "no blank", "a", "b", "1").is_err());
    assert!(winogrande_item(0, "a _ b", "a", "b", "3").is_err());
}

#[test]
fn gsm8k_filters_on_tricky_strings() {
    let ignore = gsm8k_ignore();
    let em = |pred: &str, gold: &str| exact_match(pred, gold, &ignore, true);
    // strict takes the first "The answer is N."; flexible the last number-like run.
    let (s, f) = gsm8k_extract("5 + 3 = 8. The answer is 8.");
    assert_eq!((s.as_str(), f.as_str()), ("8", "8."));
    assert_eq!((em(&s, "8"), em(&f, "8")), (1.0, 1.0));
    // A dollar sign breaks the strict pattern; the flexible one keeps "$1,234.56." and the ignores clean it.
    let (s, f) = gsm8k_extract("She pays 2 times. The answer is $1,234.56.");
    assert_eq!(s, INVALID);
    assert_eq!(f, "$1,234.56.");
    assert_eq!(em(&f, "1234.56"), 1.0);
    // A negative answer; the period after it is the pattern's last `.`.
    assert_eq!(gsm8k_extract("The answer is -3.").0, "-3");
    // Two answers: strict keeps the first, flexible the last number. The group is greedy, so it takes "4." and the
    // pattern's last `.` the space after it (as Python's `re` does); the ignored final "." makes it match "4".
    let (s, f) = gsm8k_extract("The answer is 4. Wait, 2 + 3 = 5");
    assert_eq!((s.as_str(), f.as_str()), ("4.", "5"));
    assert_eq!(em(&s, "4"), 1.0);
    // Case matters to the strict pattern ("the answer is" does not match).
    assert_eq!(gsm8k_extract("So the answer is 7.").0, INVALID);
    // No number at all.
    assert_eq!(
        gsm8k_extract("I do not know"),
        (INVALID.to_string(), INVALID.to_string())
    );
    assert_eq!(em(INVALID, "7"), 0.0);
    // The gold side: the text after ####, and "####" ignored if present in a prediction.
    assert_eq!(gsm8k::gold("Janet sells 9 eggs.\n#### 18"), "18");
    assert_eq!(em("#### 18", "18"), 1.0);
    assert_eq!(em("1,000", "1000"), 1.0);
    assert_eq!(em("18.5", "185"), 0.0);
}

#[test]
fn gsm8k_exemplars_are_rewritten_to_the_harness_wording() {
    let ctx = "Question: 1 + 1?\nAnswer: 1 + 1 = 2. So the answer is 2.\n\nQuestion: 2 + 2?\nAnswer: 4. So the answer \
               is 4.\n\nQuestion: test?\nAnswer:";
    let ex = gsm8k::exemplars(ctx).unwrap();
    assert_eq!(
        ex,
        vec![
            ("1 + 1?".to_string(), "1 + 1 = 2. The answer is 2.".to_string()),
            ("2 + 2?".to_string(), "4. The answer is 4.".to_string())
        ]
    );
    assert!(gsm8k::exemplars("Q: x\nA: y\n\nQuestion: z\nAnswer:").is_err());
}

#[test]
fn coqa_normalises_like_squad_and_averages_leave_one_out() {
    assert_eq!(normalize_answer("The  Cat, sat!"), "cat sat");
    assert_eq!(normalize_answer("An apple a day"), "apple day");
    assert_eq!(normalize_answer("theater"), "theater"); // articles only as whole words
    assert_eq!(squad_exact("The cat.", "cat"), 1.0);
    // gold {black, cat}, prediction {black, dog}: precision = recall = 1/2.
    assert!(close(squad_f1("the black cat", "a black dog"), 0.5));
    assert_eq!(squad_f1("", ""), 1.0);
    assert_eq!(squad_f1("the", "cat"), 0.0); // gold normalises to nothing
                                             // Two golds: leave "white" out -> best against {"white kitten"}: em 0, f1 2/3; leave "white kitten" out -> 1, 1.
    let golds = vec!["white".to_string(), "white kitten".to_string()];
    let (em, f1) = coqa_scores(&golds, "White");
    assert!(close(em, 0.5));
    assert!(close(f1, (2.0 / 3.0 + 1.0) / 2.0));
    assert_eq!(coqa_scores(&["no".to_string()], "No."), (1.0, 1.0));
    assert_eq!(
        coqa::unique_answers(&["white".into(), "White".into(), "grey".into()]),
        vec!["white".to_string(), "grey".to_string()]
    );
    let turns = vec![
        ("Q1".to_string(), "A1".to_string()),
        ("Q2".to_string(), "A2".to_string()),
    ];
    assert_eq!(
        coqa::prompt("Story.", &turns),
        "Story.\n\nQ: Q1\n\nA: A1\n\nQ: Q2\n\nA:"
    );
}

#[test]
fn hellaswag_preprocessing_is_the_harness_one() {
    assert_eq!(capitalize("then, the man"), "Then, the man");
    assert_eq!(capitalize("He SAID"), "He said"); // Python's capitalize lowers the rest
    assert_eq!(
        hellaswag_preprocess(" How to cook [title] Boil water. [step] Add  salt "),
        "How to cook. Boil water. Add salt"
    );
}

#[test]
fn subsets_are_seeded_sorted_and_complete_without_a_limit() {
    let a = subset(100, Some(10), 7);
    assert_eq!(a, subset(100, Some(10), 7));
    assert_ne!(a, subset(100, Some(10), 8));
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(subset(5, Some(10), 7), vec![0, 1, 2, 3, 4]);
    assert_eq!(subset(5, None, 7), vec![0, 1, 2, 3, 4]);
}

/// A program that runs `body` as the candidate's check.
fn checked(body: &str) -> String {
    program("def f(x):\n", body, "def check(c):\n    assert c(2) == 4\n", "f")
}

#[test]
fn pass_at_1_passes_fails_and_times_out() {
    let limits = Limits {
        timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    assert_eq!(
        run_program(&checked("    return x * 2\n"), limits).unwrap(),
        Outcome::Passed
    );
    assert_eq!(
        run_program(&checked("    return x + 3\n"), limits).unwrap(),
        Outcome::Failed
    );
    let start = Instant::now();
    assert_eq!(
        run_program(&checked("    while True:\n        pass\n"), limits).unwrap(),
        Outcome::TimedOut
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    // Memory and file-size limits: 2 GiB under a 1 GiB address space, a 2 MiB file under 1 MiB.
    assert_eq!(
        run_program(&checked("    b = bytearray(2 << 30)\n    return x * 2\n"), limits).unwrap(),
        Outcome::Failed
    );
    let write = "    open('big', 'wb').write(b'0' * (2 << 20))\n    return x * 2\n";
    assert_eq!(run_program(&checked(write), limits).unwrap(), Outcome::Failed);
}

/// The tiny GGUF model (byte-level vocabulary, 2 layers, 64 positions) and its tokenizer.
fn tiny() -> (ModelFiles, flexidepth::model::Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf::tiny_gguf().0).unwrap();
    let files = ModelFiles::open_path(ModelPath::Gguf(path)).unwrap();
    let model = files.load_model(WeightFormat::F32, &candle_core::Device::Cpu).unwrap();
    (files, model)
}

#[test]
fn choices_from_the_shared_context_equal_each_choice_alone() {
    let (files, model) = tiny();
    let calibration: Vec<u32> = (3..40).collect();
    let context = "Question: hi there?\nAnswer:";
    let choices: Vec<String> = [" hi", " a", " longer one", " hi hi"].map(String::from).to_vec();
    for spec in ["full", "exit:1"] {
        let policy = spec.parse::<PolicySpec>().unwrap().build(&model, &calibration).unwrap();
        let mut lm = Lm::new(&model, &files.tokenizer, policy.as_ref());
        let shared = lm.choices(context, &choices).unwrap();
        let distinct: std::collections::BTreeSet<i64> = shared.iter().map(|l| (l.logprob * 1e6) as i64).collect();
        assert_eq!(distinct.len(), choices.len(), "{spec}: choices must differ");
        for (c, s) in choices.iter().zip(&shared) {
            let alone = lm.alone(context, c).unwrap();
            assert!(
                (s.logprob - alone.logprob).abs() < 1e-4,
                "{spec} {c:?}: {s:?} vs {alone:?}"
            );
            assert_eq!(s.is_greedy, alone.is_greedy, "{spec} {c:?}");
            assert!(s.logprob < 0.0);
        }
        // Cost: the context once, then each choice's tokens but its last.
        let (ctx, _) = encode_pair(&files.tokenizer, context, &choices[0]).unwrap();
        let conts: usize = choices
            .iter()
            .map(|c| encode_pair(&files.tokenizer, context, c).unwrap().1.len() - 1)
            .sum();
        let alone_rows: usize = choices
            .iter()
            .map(|c| {
                let (x, y) = encode_pair(&files.tokenizer, context, c).unwrap();
                x.len() + y.len() - 1
            })
            .sum();
        assert_eq!(lm.cost.tokens, ctx.len() + conts + alone_rows);
        let per_layer = if spec == "full" { 2.0 } else { 1.0 };
        assert!((lm.cost.layers_per_token() - per_layer).abs() < 1e-9, "{spec}");
    }
}

#[test]
fn trailing_context_space_moves_to_the_continuation() {
    let (files, _) = tiny();
    let (a_ctx, a_cont) = encode_pair(&files.tokenizer, "Answer: ", "hi").unwrap();
    let (b_ctx, b_cont) = encode_pair(&files.tokenizer, "Answer:", " hi").unwrap();
    assert_eq!((a_ctx, a_cont), (b_ctx, b_cont));
}

#[test]
fn partial_scoring_scores_the_shared_continuation_after_each_option() {
    let (files, model) = tiny();
    let policy = flexidepth::model::plan::FullDepth;
    let mut lm = Lm::new(&model, &files.tokenizer, &policy);
    let item = winogrande_item(0, "hi _ is here.", "a", "hi", "2").unwrap();
    let opts = RunOptions {
        chat: None,
        confirm_run_unsafe_code: false,
        limits: Limits::default(),
        batch_size: 1,
    };
    let rec = score_item(&mut lm, &item, &opts).unwrap();
    let l1 = lm.alone("hi a", " is here.").unwrap().logprob;
    let l2 = lm.alone("hi hi", " is here.").unwrap().logprob;
    let got: Vec<f64> = serde_json::from_value(rec.output["logliks"].clone()).unwrap();
    assert!(
        (got[0] - l1).abs() < 1e-4 && (got[1] - l2).abs() < 1e-4,
        "{got:?} vs {l1} {l2}"
    );
    assert_ne!(l1, l2);
    assert_eq!(rec.scores["acc,none"], (l2 > l1) as u8 as f64);
    // HumanEval refuses to run without the opt-in.
    let he = Item {
        id: "x".into(),
        kind: Kind::HumanEval {
            prompt: "def f():\n".into(),
            test: String::new(),
            entry_point: "f".into(),
        },
    };
    assert!(score_item(&mut lm, &he, &opts).is_err());
}

#[test]
fn greedy_generation_stops_at_the_first_stop_sequence() {
    use flexidepth_experiments::tasks::lm::cut_at_stop;
    let stops = vec!["Q:".to_string(), "\n\n".to_string()];
    assert_eq!(cut_at_stop("6.\n\nQ: next", &stops), Some("6."));
    assert_eq!(cut_at_stop("x Q: y\n\n", &stops), Some("x "));
    assert_eq!(cut_at_stop("no stop", &stops), None);
    let (files, model) = tiny();
    let policy = flexidepth::model::plan::FullDepth;
    let mut lm = Lm::new(&model, &files.tokenizer, &policy);
    let text = lm.generate_until("hi", &[], 5).unwrap();
    assert!(lm.cost.tokens >= 1 && lm.cost.tokens <= 2 + 5, "{}", lm.cost.tokens);
    // The same prompt with the generated text's first character as a stop: nothing before it is kept.
    if let Some(first) = text.chars().next() {
        let cut = lm.generate_until("hi", &[first.to_string()], 5).unwrap();
        assert_eq!(cut, "");
    }
}

/// `--batch-size`: generation requests decoded together (continuous batching, fewer places than requests, so
/// places are reused) give every request the text it gets alone, and the same rows and layers computed; under full
/// depth, early exit and LaCo (a merged layer in place of two), on f32 and quantized weights; `run_task` scores batched items as it scores them one by one.
#[test]
fn batched_generation_equals_one_request_at_a_time() {
    use flexidepth_experiments::tasks::lm::GenRequest;
    use flexidepth_experiments::tasks::run::run_task;
    use flexidepth_experiments::tasks::TaskName;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf::tiny_gguf().0).unwrap();
    let files = ModelFiles::open_path(ModelPath::Gguf(path)).unwrap();
    let calibration: Vec<u32> = (3..40).collect();
    let prompts = [
        "hi",
        "hi there, a longer prompt",
        "a",
        "hi hi hi",
        "there is",
        "one more",
    ];
    let limits = [5, 1, 7, 0, 3, 6];
    for format in [WeightFormat::F32, WeightFormat::Quantized] {
        let model = files.load_model(format, &candle_core::Device::Cpu).unwrap();
        for spec in ["full", "exit:1", "laco:1"] {
            let policy = spec.parse::<PolicySpec>().unwrap().build(&model, &calibration).unwrap();
            let mut alone = Lm::new(&model, &files.tokenizer, policy.as_ref());
            let mut requests: Vec<GenRequest> = prompts
                .iter()
                .zip(limits)
                .map(|(p, n)| GenRequest {
                    prompt: p.to_string(),
                    stops: vec![],
                    max_new_tokens: n,
                })
                .collect();
            // A stop sequence that cuts one generation short: the first character it generates alone.
            let first = alone.generate_until(prompts[2], &[], 7).unwrap();
            if let Some(c) = first.chars().nth(1) {
                requests[2].stops = vec![c.to_string()];
            }
            let mut alone = Lm::new(&model, &files.tokenizer, policy.as_ref());
            let want: Vec<String> = requests
                .iter()
                .map(|r| alone.generate_until(&r.prompt, &r.stops, r.max_new_tokens).unwrap())
                .collect();
            for batch in [1, 2, 4, 16] {
                let mut lm = Lm::new(&model, &files.tokenizer, policy.as_ref());
                let mut finished = Vec::new();
                let got = lm.generate_batch(&requests, batch, &mut |i| finished.push(i)).unwrap();
                assert_eq!(got, want, "{format:?} {spec} batch {batch}");
                finished.sort_unstable();
                assert_eq!(finished, (0..requests.len()).collect::<Vec<_>>());
                assert_eq!(lm.cost.tokens, alone.cost.tokens, "{spec} batch {batch}");
                assert!(
                    (lm.cost.layers - alone.cost.layers).abs() < 1e-9,
                    "{spec} batch {batch}"
                );
            }
            let mut lm = Lm::new(&model, &files.tokenizer, policy.as_ref());
            assert!(lm.generate_batch(&requests, 0, &mut |_| {}).is_err());
            // Through run_task: GSM8K items, scored one by one and in batches of 4.
            let items: Vec<Item> = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| Item {
                    id: i.to_string(),
                    kind: Kind::Gsm8k {
                        prompt: p.to_string(),
                        answer: "3".into(),
                    },
                })
                .collect();
            let records = |batch_size: usize| {
                let opts = RunOptions {
                    chat: None,
                    confirm_run_unsafe_code: false,
                    limits: Limits::default(),
                    batch_size,
                };
                let mut lm = Lm::new(&model, &files.tokenizer, policy.as_ref());
                let mut ticks = 0;
                let r = run_task(&mut lm, TaskName::Gsm8k, 0, &items, &opts, &mut || ticks += 1).unwrap();
                assert_eq!(ticks, items.len());
                (r.items, r.cost)
            };
            assert_eq!(records(1), records(4), "{format:?} {spec}");
        }
    }
}
