//! `flexidepth train` end to end on the default model with a few short sequences: outputs, a depth file that loads,
//! clear errors for bad data, and a run killed with SIGKILL that resumes to the same adapter as an unbroken run.

mod common;

use common::{flexidepth, text};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DATA: &str = r#"{"messages":[{"role":"user","content":"Name a colour."},{"role":"assistant","content":"Blue."}]}
{"text":"It was a bright cold day in April, and the clocks were striking thirteen."}
{"text":"The sea was calm that night, and the moon shone on the water."}
{"messages":[{"role":"user","content":"Say hello."},{"role":"assistant","content":"Hello!"}]}
"#;

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Replace the value after `flag`.
fn set<'a>(args: &mut [&'a str], flag: &str, value: &'a str) {
    let i = args.iter().position(|a| *a == flag).unwrap();
    args[i + 1] = value;
}

/// Every tensor of a safetensors file, as raw bytes by name (the header's metadata order is not fixed).
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(k, v)| (k, v.data().to_vec())).collect();
    out.sort();
    out
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "-t",
        "2",
        "train",
        "-d",
        data,
        "-o",
        out,
        "--routed-layers",
        "26..30",
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--alpha",
        "1e-3",
        "--checkpoint-every",
        "1",
        "--max-len",
        "64",
    ]
}

#[test]
fn trains_writes_outputs_and_refuses_bad_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "d.jsonl", DATA);
    let out = dir.path().join("run").display().to_string();
    let mut args = train_args(&data, &out);
    set(&mut args, "--steps", "2");
    let o = flexidepth(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("4 sequences") && err.contains("tokens/s"), "{err}");
    for f in [
        "depth.safetensors",
        "train.safetensors",
        "checkpoint.safetensors",
        "log.csv",
        "curves.svg",
        "config.toml",
    ] {
        assert!(dir.path().join("run").join(f).exists(), "{f}");
    }
    let log = std::fs::read_to_string(dir.path().join("run/log.csv")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    // The trained file generates.
    let depth = dir.path().join("run/depth.safetensors").display().to_string();
    let o = flexidepth(&[
        "generate",
        "-p",
        "Hello",
        "-n",
        "4",
        "--depth",
        &depth,
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The same folder again is refused, not overwritten.
    let o = flexidepth(&args);
    assert!(!o.status.success() && text(&o.stderr).contains("--resume"));

    let out2 = dir.path().join("run2").display().to_string();
    let bad = write(dir.path(), "bad.jsonl", "{\"text\":\"fine\"}\n{\"text\": \"x\",\n");
    let o = flexidepth(&train_args(&bad, &out2));
    assert!(
        !o.status.success() && text(&o.stderr).contains("line 2"),
        "{}",
        text(&o.stderr)
    );
    let empty = write(dir.path(), "empty.jsonl", "\n");
    let o = flexidepth(&train_args(&empty, &out2));
    assert!(
        !o.status.success() && text(&o.stderr).contains("no samples"),
        "{}",
        text(&o.stderr)
    );
    let mut long = train_args(&data, &out2);
    set(&mut long, "--max-len", "8"); // every sample is longer
    let o = flexidepth(&long);
    let e = text(&o.stderr);
    assert!(!o.status.success() && e.contains("4 longer than max_len 8"), "{e}");
    // That run stopped before its first checkpoint: --resume says so, and a fresh start in the folder is allowed.
    let o = flexidepth(&["train", "--resume", "--out", &out2]);
    let e = text(&o.stderr);
    assert!(!o.status.success() && e.contains("no checkpoint to resume from"), "{e}");
    // Path errors name what they are, before any model loads (an unknown model name would fail later).
    let missing = dir.path().join("missing.jsonl").display().to_string();
    let mut args = train_args(&missing, &out2);
    args.extend(["-m", "no-such-model"]);
    let e = text(&flexidepth(&args).stderr);
    assert!(
        e.contains("cannot read the data file") && !e.contains("no-such-model"),
        "{e}"
    );
    let file = write(dir.path(), "a-file", "");
    let mut args = train_args(&data, &file);
    args.extend(["-m", "no-such-model"]);
    let e = text(&flexidepth(&args).stderr);
    assert!(
        e.contains("is a file, not a folder") && !e.contains("no-such-model"),
        "{e}"
    );
    // Bad data leaves no run folder behind.
    let out3 = dir.path().join("run3");
    let o = flexidepth(&train_args(&bad, out3.to_str().unwrap()));
    assert!(!o.status.success() && !out3.exists());
    let e = text(&flexidepth(&["train", "--config", &missing]).stderr);
    assert!(e.contains("cannot read the config file"), "{e}");
}

#[test]
fn a_killed_run_resumes_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "d.jsonl", DATA);
    let whole = dir.path().join("whole").display().to_string();
    let o = flexidepth(&train_args(&data, &whole));
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Kill -9 once a checkpoint of step ≥ 2 exists (the log is written with it), mid-run.
    let split = dir.path().join("split");
    let split_s = split.display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flexidepth"))
        .args(train_args(&data, &split_s))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let rows = std::fs::read_to_string(split.join("log.csv"))
            .map(|l| l.lines().count())
            .unwrap_or(0);
        if rows >= 3 || start.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !split.join("depth.safetensors").exists(),
        "the run finished before it was killed"
    );

    let o = flexidepth(&["-t", "2", "train", "--resume", "--out", &split_s]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("resumed at step"), "{}", text(&o.stderr));
    let a = tensors(&dir.path().join("whole/depth.safetensors"));
    let b = tensors(&split.join("depth.safetensors"));
    assert_eq!(a.len(), 28);
    assert!(a == b, "the resumed run's adapter differs from the unbroken run's");
    let log_a = std::fs::read_to_string(dir.path().join("whole/log.csv")).unwrap();
    let log_b = std::fs::read_to_string(split.join("log.csv")).unwrap();
    let losses = |l: &str| {
        l.lines()
            .map(|r| r.split(',').nth(4).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&log_a), losses(&log_b));

    // Settings beside --resume are refused (the saved config rules).
    let o = flexidepth(&["train", "--resume", "--out", &split_s, "--lr", "1"]);
    assert!(!o.status.success() && text(&o.stderr).contains("saved"));
}

#[test]
fn sweep_report_picks_the_most_skipping_point_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    // (α, layers/token, ppl ratio)
    for (alpha, layers, ratio) in [("1e-4", 29.9, 1.004), ("3e-4", 29.0, 1.025), ("1e-3", 27.5, 1.2)] {
        let d = dir.path().join(format!("a{alpha}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("config.toml"),
            format!("data = \"d\"\nout = \"o\"\n[[stage]]\nname = \"align\"\nalpha = {alpha}\nsteps = 2\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("log.csv"),
            "step,stage,stage_step,lr,loss,lm,kl,skip,layers,grad_norm,tokens_per_s,elapsed_s\n\
             1,align,1,0,3,3,0,100,29,1,100,2\n2,align,2,0.001,2.5,2.5,0,90,28,1,300,3\n",
        )
        .unwrap();
        let q = serde_json::json!({
            "windows": 2, "n_predicted": 100, "full_mean_nll": 3.0, "full_ppl": 20.0,
            "flexi_mean_nll": 3.0 + f64::ln(ratio), "flexi_ppl": 20.0 * ratio, "ppl_ratio": ratio,
            "mean_kl": 0.1, "top1_agreement": 0.9, "mean_layers": layers, "num_layers": 30,
            "depth_mode": "dynamic", "skip_threshold": 0.5, "skip_kv": true
        });
        std::fs::write(d.join("quality.json"), q.to_string()).unwrap();
        runs.push(d.display().to_string());
    }
    let out = dir.path().join("report").display().to_string();
    let mut args = vec!["sweep-report", "-o", out.as_str()];
    args.extend(runs.iter().map(String::as_str));
    let o = flexidepth(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let md = std::fs::read_to_string(dir.path().join("report/sweep.md")).unwrap();
    let shipped: Vec<&str> = md.lines().filter(|l| l.contains("(shipped)")).collect();
    assert_eq!(shipped.len(), 1, "{md}");
    assert!(shipped[0].starts_with("| 3e-4"), "{md}");
    // Training throughput: 100 tokens/s for 2 s, then 300 for 1 s: 500 tokens in 3 s.
    assert!(shipped[0].contains("| 167 |"), "{md}");
    assert!(dir.path().join("report/sweep.svg").exists());
}
