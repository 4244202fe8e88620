//! A seeded mutation fuzzer over everything the CLI reads: a tiny real GGUF model (its header fields, metadata
//! types, tensor table and bytes), the HF folder `convert` makes of it (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json`), a depth-adapter file, a training config, and flags. Each mutated
//! input runs the built binary under a 4 GiB address-space cap and a time limit, and must end in a clean error
//! (exit 1 or 2 with a message) or a correct result (exit 0, every tensor file written finite) — never a panic, a
//! signal (an aborted allocation included), or a hang. Prints its counts (tried / ok / clean error).
//!
//! `FUZZ_SEED=n` draws another campaign and `FUZZ_SCALE=k` runs k times as many cases (for a longer search by hand;
//! CI runs the default), `FUZZ_TARGETS=gguf,depth` only those targets; `FUZZ_VERBOSE=1` prints every case's
//! verdict and last stderr line.

mod common;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/rng.rs"]
mod rng;
#[path = "fuzz/run.rs"]
mod run;
#[path = "../../flexidepth/tests/common/tiny_gguf.rs"]
mod tiny_gguf;

use common::{flexidepth, text};
use rng::Rng;
use run::{Case, Verdict};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const SEED: u64 = 16;
/// Cases per target (1,600 runs: under a minute on two idle cores, about two on busy ones).
const PLAN: [(&str, usize); 8] = [
    ("gguf", 560),
    ("model.safetensors", 120),
    ("depth", 170),
    ("config.json", 170),
    ("tokenizer.json", 170),
    ("tokenizer_config.json", 130),
    ("train", 140),
    ("flags", 140),
];

/// The unmutated inputs, made once.
struct Base {
    root: PathBuf,
    gguf: (Vec<u8>, Vec<tiny_gguf::Field>),
    gguf_path: PathBuf,
    /// The HF folder's files by name.
    hf: BTreeMap<String, Vec<u8>>,
    depth: Vec<u8>,
    depth_path: PathBuf,
    data_path: PathBuf,
    train_lines: Vec<String>,
}

fn s(x: &Path) -> String {
    x.display().to_string()
}

fn must(args: &[&str]) {
    let o = flexidepth(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
}

fn base(root: &Path) -> Base {
    let gguf = tiny_gguf::tiny_gguf();
    let gguf_path = root.join("tiny.gguf");
    std::fs::write(&gguf_path, &gguf.0).unwrap();
    let g = s(&gguf_path);
    let hf_dir = root.join("hf");
    must(&["-t", "1", "convert", "-m", &g, "-o", &s(&hf_dir)]);
    let depth_path = root.join("depth.safetensors");
    must(&[
        "-t",
        "1",
        "depth",
        "init",
        "-m",
        &g,
        "-o",
        &s(&depth_path),
        "--routed-layers",
        "1..2",
        "--router-reduction",
        "4",
        "--proj-reduction",
        "4",
    ]);
    // The unmutated inputs give results, so that every mutation is measured against a working model.
    must(&[
        "-t",
        "1",
        "generate",
        "-m",
        &g,
        "--chat",
        "hi",
        "-n",
        "3",
        "--temperature",
        "0",
    ]);
    must(&[
        "-t",
        "1",
        "generate",
        "-m",
        &s(&hf_dir),
        "-p",
        "hi",
        "-n",
        "3",
        "--temperature",
        "0",
    ]);
    must(&[
        "-t",
        "1",
        "generate",
        "-m",
        &g,
        "--depth",
        &s(&depth_path),
        "-p",
        "hi",
        "-n",
        "3",
        "--temperature",
        "0",
    ]);
    let hf = std::fs::read_dir(&hf_dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let data_path = root.join("data.jsonl");
    std::fs::write(
        &data_path,
        "{\"text\":\"hi there, a short text to train on.\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},\
         {\"role\":\"assistant\",\"content\":\"hello\"}]}\n{\"text\":\"another line of plain text.\"}\n",
    )
    .unwrap();
    let train_lines: Vec<String> = [
        "max_len = 48",
        "batch_size = 1",
        "grad_accum = 1",
        "lr = 0.001",
        "warmup_ratio = 0.0",
        "max_grad_norm = 1.0",
        "skip_threshold = 0.5",
        "checkpoint_every = 1",
        "log_every = 1",
        "routed_layers = \"1..2\"",
        "router_reduction = 4",
        "proj_reduction = 4",
        "save_dtype = \"f32\"",
        "seed = 7",
        "[adam]",
        "beta1 = 0.9",
        "beta2 = 0.95",
        "eps = 1e-8",
        "weight_decay = 0.0",
        "[[stage]]",
        "name = \"one\"",
        "alpha = 0.001",
        "steps = 2",
    ]
    .map(String::from)
    .to_vec();
    let base = Base {
        root: root.to_path_buf(),
        gguf,
        gguf_path,
        hf,
        depth: std::fs::read(&depth_path).unwrap(),
        depth_path,
        data_path,
        train_lines,
    };
    // And the unmutated training config trains.
    let mut rng = Rng::new(0);
    let case = train_case(&base, &mut rng, base.root.join("train-check"), None);
    assert!(matches!(
        run::run(Path::new(env!("CARGO_BIN_EXE_flexidepth")), &case),
        Verdict::Ok
    ));
    base
}

fn t1(args: &[&str]) -> Vec<String> {
    ["-t", "1"].iter().chain(args).map(|a| a.to_string()).collect()
}

/// A generate command that alternates between a raw prompt (post-processor, BOS) and a chat message (template).
fn generate(model: &str, k: usize, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["generate", "-m", model, "-n", "3", "--temperature", "0"];
    a.extend(if k.is_multiple_of(2) {
        ["-p", "hi"]
    } else {
        ["--chat", "hi"]
    });
    a.extend(extra);
    t1(&a)
}

/// A training run of `base`'s config with `lines` (the base config's when `None`).
fn train_case(base: &Base, rng: &mut Rng, dir: PathBuf, mutate: Option<()>) -> Case {
    let (lines, what) = match mutate {
        Some(()) => mutate::toml_lines(rng, &base.train_lines),
        None => (base.train_lines.clone(), "unmutated".into()),
    };
    let out = dir.join("run");
    let mut text = format!(
        "model = {:?}\ndata = {:?}\nout = {:?}\n",
        s(&base.gguf_path),
        s(&base.data_path),
        s(&out)
    );
    text += &lines.join("\n");
    text.push('\n');
    let cfg = dir.join("config.toml");
    Case {
        target: "train",
        what,
        args: t1(&["train", "--config", &s(&cfg)]),
        dir,
        files: vec![(cfg, text.into_bytes())],
        outputs: Some(out),
    }
}

/// Flags at the edges of their domains (or past them).
fn flags_case(base: &Base, rng: &mut Rng, dir: PathBuf) -> Case {
    let g = s(&base.gguf_path);
    let d = s(&base.depth_path);
    let big = [
        "18446744073709551615",
        "9223372036854775808",
        "4294967296",
        "1000000000000",
    ];
    let floats = ["NaN", "inf", "-inf", "-1", "0", "2", "1e308", "-0"];
    let (flag, value) = match rng.below(12) {
        0 => ("-n", *rng.pick(&big)),
        1 => ("--temperature", *rng.pick(&floats)),
        2 => ("--top-p", *rng.pick(&floats)),
        3 => ("--min-p", *rng.pick(&floats)),
        4 => ("--repeat-penalty", *rng.pick(&floats)),
        5 => ("--top-k", *rng.pick(&big)),
        6 => ("--repeat-last-n", *rng.pick(&big)),
        7 => ("--skip-threshold", *rng.pick(&floats)),
        8 => ("-t", *rng.pick(&["0", "1000000000000", "-1", "1,2"])),
        9 => ("--ctx-size", *rng.pick(&big)),
        10 => (
            "--routed-layers",
            *rng.pick(&["0..99999999999999", "1..0", "0..=18446744073709551615", "x"]),
        ),
        _ => ("--stride", *rng.pick(&big)),
    };
    let args: Vec<String> = match flag {
        "-t" => ["-t", value, "info", "-m", &g].map(String::from).to_vec(),
        "--ctx-size" | "--stride" => t1(&["perplexity", "-m", &g, "-f", &s(&base.data_path), flag, value]),
        "--routed-layers" => t1(&[
            "depth",
            "init",
            "-m",
            &g,
            "-o",
            &s(&dir.join("d.safetensors")),
            flag,
            value,
        ]),
        // -n 2^64-1 runs to the end of the 64-token context: a correct result.
        _ => generate(&g, rng.below(2), &["--depth", &d, flag, value]),
    };
    Case {
        target: "flags",
        what: format!("{flag} {value}"),
        args,
        outputs: Some(dir.clone()),
        dir,
        files: vec![],
    }
}

/// The `k`-th case of `target`.
fn make_case(base: &Base, rng: &mut Rng, target: &'static str, k: usize) -> Case {
    let dir = base.root.join(format!("{target}-{k}"));
    let g = s(&base.gguf_path);
    let hf_case = |file: &str, bytes: Vec<u8>, what: String| {
        let hf = dir.join("hf");
        let files = base
            .hf
            .iter()
            .map(|(n, b)| (hf.join(n), if n == file { bytes.clone() } else { b.clone() }))
            .collect();
        Case {
            target,
            what,
            args: generate(&s(&hf), k, &[]),
            dir: dir.clone(),
            files,
            outputs: None,
        }
    };
    match target {
        "gguf" => {
            let (bytes, what) = mutate::gguf(rng, &base.gguf.0, &base.gguf.1);
            let f = dir.join("m.gguf");
            let args = if k.is_multiple_of(3) {
                t1(&["info", "-m", &s(&f)])
            } else {
                generate(&s(&f), k, &[])
            };
            Case {
                target,
                what,
                args,
                dir: dir.clone(),
                files: vec![(f, bytes)],
                outputs: None,
            }
        }
        "model.safetensors" => {
            let (bytes, what) = mutate::safetensors(rng, &base.hf["model.safetensors"]);
            hf_case("model.safetensors", bytes, what)
        }
        "depth" => {
            let (bytes, what) = mutate::safetensors(rng, &base.depth);
            let f = dir.join("d.safetensors");
            Case {
                target,
                what,
                args: generate(&g, k, &["--depth", &s(&f)]),
                dir: dir.clone(),
                files: vec![(f, bytes)],
                outputs: None,
            }
        }
        "config.json" | "tokenizer.json" | "tokenizer_config.json" => {
            let text = String::from_utf8(base.hf[target].clone()).unwrap();
            let (doc, what) = mutate::json_doc(rng, &text);
            hf_case(target, doc.into_bytes(), what)
        }
        "train" => train_case(base, rng, dir, Some(())),
        _ => flags_case(base, rng, dir),
    }
}

#[test]
fn fuzzed_inputs_end_in_a_clean_error_or_a_correct_result() {
    let start = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let base = base(tmp.path());
    let env = |k: &str, default: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (seed, scale) = (env("FUZZ_SEED", SEED), env("FUZZ_SCALE", 1) as usize);
    let only = std::env::var("FUZZ_TARGETS").ok();
    let plan: Vec<(&str, usize)> = PLAN
        .iter()
        .filter(|(t, _)| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *t)))
        .map(|&(t, n)| (t, n * scale))
        .collect();
    let mut rng = Rng::new(seed);
    let cases: Vec<Case> = plan
        .iter()
        .flat_map(|&(target, n)| (0..n).map(move |k| (target, k)))
        .map(|(target, k)| make_case(&base, &mut rng, target, k))
        .collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_flexidepth"));
    let next = AtomicUsize::new(0);
    // Per target: (tried, ok, clean error); and the failures.
    let tally: Mutex<BTreeMap<&str, (usize, usize, usize)>> = Mutex::new(BTreeMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let verdict = run::run(bin, case);
                if std::env::var_os("FUZZ_VERBOSE").is_some() {
                    let err = std::fs::read_to_string(case.dir.join("stderr")).unwrap_or_default();
                    let last = err.lines().rev().find(|l| !l.is_empty()).unwrap_or("").to_string();
                    let v = match &verdict {
                        Verdict::Ok => "ok",
                        Verdict::CleanError => "error",
                        Verdict::Failure(_) => "FAIL",
                    };
                    let line = format!("{v:5} [{}] {} => {}\n", case.target, case.what, last);
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                }
                let mut t = tally.lock().unwrap();
                let e = t.entry(case.target).or_default();
                e.0 += 1;
                match verdict {
                    Verdict::Ok => e.1 += 1,
                    Verdict::CleanError => e.2 += 1,
                    Verdict::Failure(why) => failures.lock().unwrap().push(format!(
                        "[{}] {} -- {}\n    args: {:?}",
                        case.target, case.what, why, case.args
                    )),
                }
                // A passing case's files are not needed any more.
                let _ = std::fs::remove_dir_all(&case.dir);
            });
        }
    });
    let tally = tally.into_inner().unwrap();
    let (tried, ok, clean) = tally.values().fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    // Straight to stderr, past the test harness's capture: the counts are part of every run's output.
    let mut report = format!(
        "fuzz (seed {seed}): {tried} tried, {ok} ok, {clean} clean errors in {:.0} s\n",
        start.elapsed().as_secs_f64()
    );
    for (target, (t, o, c)) in &tally {
        report += &format!("  {target:<22} {t:>4} tried {o:>4} ok {c:>4} clean errors\n");
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {tried} runs failed:\n{}",
        failures.len(),
        failures.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(tried, plan.iter().map(|p| p.1).sum::<usize>());
}
