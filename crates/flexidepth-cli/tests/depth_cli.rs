//! The FlexiDepth flags of the `flexidepth` binary: `depth init`, `--depth` with modes and thresholds, traces,
//! depth maps, perplexity with depth, and their errors.

mod common;

use common::{flexidepth, text};
use std::process::Output;

/// `layers used: X of 30` from stderr.
fn layers_used(out: &Output) -> f64 {
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("layers used: "))
        .unwrap_or_else(|| panic!("{err}"));
    line["layers used: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn depth_init_generate_trace_and_maps() {
    let dir = tempfile::tempdir().unwrap();
    let depth = dir.path().join("depth.safetensors");
    let d = depth.to_str().unwrap();
    let out = flexidepth(&["depth", "init", "-o", d, "--seed", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("routed layers 15..=29"),
        "{}",
        text(&out.stderr)
    );

    let trace = dir.path().join("t.jsonl");
    let html = dir.path().join("map.html");
    let chat = [
        "generate",
        "--chat",
        "What is the capital of France?",
        "-n",
        "12",
        "--temperature",
        "0",
    ];
    let mut args = chat.to_vec();
    args.extend([
        "--depth",
        d,
        "--trace",
        trace.to_str().unwrap(),
        "--depth-map",
        html.to_str().unwrap(),
    ]);
    let out = flexidepth(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mean = layers_used(&out);
    assert!(
        mean > 15.0 && mean < 30.0,
        "fresh routers skip some routed layers: {mean}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12, "one object per generated token");
    for l in &lines {
        assert_eq!(l["prompt"], false);
        let routed = l["routed"].as_array().unwrap();
        assert_eq!(routed.len(), 15);
        let runs = routed.iter().filter(|r| r["run"] == true).count() as u64;
        assert_eq!(l["layers_used"].as_f64().unwrap(), (15 + runs) as f64);
        for r in routed {
            let g = r["gate"].as_f64().unwrap();
            assert_eq!(r["run"] == true, g > 0.5, "threshold is strict 0.5: {r}");
        }
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") || page.starts_with("<html"),
        "{}",
        &page[..100]
    );

    // Forced modes: run uses every layer, skip uses only the unrouted ones and decodes faster per token.
    let svg = dir.path().join("m.svg");
    let mut run = chat.to_vec();
    run.extend([
        "--depth",
        d,
        "--depth-mode",
        "run",
        "--depth-map",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(layers_used(&flexidepth(&run)), 30.0);
    assert!(std::fs::read_to_string(dir.path().join("m.svg"))
        .unwrap()
        .contains("<svg"));
    let mut skip = chat.to_vec();
    skip.extend(["--depth", d, "--depth-mode", "skip"]);
    assert_eq!(layers_used(&flexidepth(&skip)), 15.0);
    // A higher threshold skips more.
    let mut high = chat.to_vec();
    high.extend(["--depth", d, "--skip-threshold", "0.52"]);
    assert!(layers_used(&flexidepth(&high)) < mean);

    // Perplexity reports layers per token beside the perplexity.
    let f = dir.path().join("p.txt");
    std::fs::write(
        &f,
        "It is a truth universally acknowledged, that a single man in possession of a good fortune.",
    )
    .unwrap();
    let out = flexidepth(&[
        "perplexity",
        "-f",
        f.to_str().unwrap(),
        "--depth",
        d,
        "--depth-mode",
        "skip",
    ]);
    assert!(
        text(&out.stdout).contains("layers/token: 15.00 of 30"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn depth_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = flexidepth(&["generate", "-p", "hi", "-n", "2", "--depth-mode", "skip"]);
    let e = text(&out.stderr);
    assert!(
        !out.status.success() && e.contains("--depth-mode need(s) a model with routers"),
        "{e}"
    );
    assert!(!e.contains("--no-skip-kv"), "only the flags given are named: {e}");
    for flag in [["--skip-threshold", "0.6"], ["--skip-unit", "ffn"]] {
        let out = flexidepth(&["generate", "-p", "hi", "-n", "2", flag[0], flag[1]]);
        let e = text(&out.stderr);
        assert!(
            !out.status.success() && e.contains(&format!("{} need(s) a model with routers", flag[0])),
            "{e}"
        );
    }
    let out = flexidepth(&["generate", "-p", "hi", "-n", "2", "--trace", "x.jsonl"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--depth FILE"));
    let out = flexidepth(&["depth", "init", "-o", "x.safetensors", "--routed-layers", "25..40"]);
    assert!(!out.status.success() && text(&out.stderr).contains("layer 30 does not exist"));
    let out = flexidepth(&["depth", "init", "-o", "x.safetensors", "--routed-layers", "7"]);
    assert!(!out.status.success() && text(&out.stderr).contains("bad layer range"));

    // A depth adapter made for the other default model is refused by name.
    let qwen_depth = dir.path().join("q.safetensors");
    let out = flexidepth(&[
        "depth",
        "init",
        "-m",
        "qwen2.5-coder-0.5b-instruct",
        "-o",
        qwen_depth.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = flexidepth(&[
        "generate",
        "-p",
        "hi",
        "-n",
        "2",
        "--depth",
        qwen_depth.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("made for Qwen2ForCausalLM") && !err.contains("panicked"),
        "{err}"
    );
    let out = flexidepth(&["generate", "-p", "hi", "-n", "2", "--depth", "/no/such.safetensors"]);
    assert!(!out.status.success() && text(&out.stderr).contains("/no/such.safetensors"));
    let smol_depth = dir.path().join("s.safetensors");
    assert!(flexidepth(&["depth", "init", "-o", smol_depth.to_str().unwrap()])
        .status
        .success());
    let out = flexidepth(&[
        "generate",
        "-p",
        "hi",
        "--depth-map",
        "m.pdf",
        "-n",
        "2",
        "--depth",
        smol_depth.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && text(&out.stderr).contains(".svg"),
        "{}",
        text(&out.stderr)
    );
}

/// `perplexity --compare-full --json`: full depth against routing on a short file in small windows; forced run is
/// the base model exactly; the flag needs `--depth`.
#[test]
fn perplexity_compare_full_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let depth = dir.path().join("depth.safetensors");
    let d = depth.to_str().unwrap();
    let out = flexidepth(&["depth", "init", "-o", d, "--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let f = dir.path().join("p.txt");
    std::fs::write(
        &f,
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in \
         want of a wife. However little known the feelings or views of such a man may be on his first entering a \
         neighbourhood, this truth is so well fixed in the minds of the surrounding families.",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let json = dir.path().join("q.json");
    let args = [
        "perplexity",
        "-f",
        f,
        "--depth",
        d,
        "--compare-full",
        "--window",
        "24",
        "--max-tokens",
        "60",
    ];
    let mut with_json = args.to_vec();
    with_json.extend(["--json", json.to_str().unwrap()]);
    let out = flexidepth(&with_json);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for key in [
        "full ppl: ",
        "flexi ppl: ",
        "ratio: ",
        "KL(full‖flexi): ",
        "top-1 agreement: ",
        "of 30",
    ] {
        assert!(stdout.contains(key), "{key} in {stdout}");
    }
    let q: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(q["windows"], 3, "60 tokens in windows of 24: 24 + 24 + 12");
    assert_eq!(q["n_predicted"], 57);
    assert_eq!(q["num_layers"], 30);
    assert_eq!(
        q["policy"], "flexi:0.5",
        "the depth file's threshold, resolved in the label"
    );
    assert!(q["mean_kl"].as_f64().unwrap() > 0.0);
    let layers = q["mean_layers"].as_f64().unwrap();
    assert!(layers > 15.0 && layers < 30.0, "{layers}");
    let ratio = q["ppl_ratio"].as_f64().unwrap();
    let expect = q["flexi_ppl"].as_f64().unwrap() / q["full_ppl"].as_f64().unwrap();
    assert!((ratio - expect).abs() < 1e-9 * expect);

    let mut run = args.to_vec();
    run.extend(["--depth-mode", "run"]);
    let out = flexidepth(&run);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ratio: 1.0000  KL(full‖flexi): 0.00000") && stdout.contains("top-1 agreement: 1.0000"),
        "{stdout}"
    );

    let out = flexidepth(&["perplexity", "-f", f, "--compare-full"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("--depth"),
        "{}",
        text(&out.stderr)
    );
    let out = flexidepth(&["perplexity", "-f", f, "--heldout"]);
    assert!(!out.status.success() && text(&out.stderr).contains("cannot be used with"));
    let out = flexidepth(&["perplexity", "-f", f, "--json", "x.json"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--compare-full"));
}

/// `frontier` on the shipped FFN adapter with tiny budgets of text: a FlexiDepth row per budget, a ShortGPT row per
/// whole budget, the ship file with its threshold and hard gates stored; bad budgets are refused before loading.
#[test]
fn frontier_tunes_measures_and_ships() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("fr");
    let ship = dir.path().join("ship");
    let adapter = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../adapters/smollm2-135m-instruct/ffn-staged/flexidepth.safetensors"
    );
    let out = flexidepth(&[
        "frontier",
        "--depth",
        adapter,
        "--budgets",
        "1,2.5",
        "--iters",
        "3",
        "--tune-tokens",
        "64",
        "--max-tokens",
        "64",
        "-c",
        "32",
        "--ship-ratio",
        "1.5",
        "--ship-dir",
        ship.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let points: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("frontier.json")).unwrap()).unwrap();
    let methods: Vec<&str> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "flexi-ffn-hard:flexidepth",
            "flexi-ffn-hard:flexidepth",
            "flexi-ffn-hard:flexidepth",
            "shortgpt"
        ],
        "budgets 1 and 2.5, the ship point, and ShortGPT for the whole budget only"
    );
    for p in points.as_array().unwrap() {
        let ratio = p["heldout"]["ppl_ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.5, "{p}");
    }
    assert!(text(&out.stdout).contains("| shortgpt | 1 |"), "{}", text(&out.stdout));
    for f in ["frontier.md", "frontier.svg"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let shipped = ship.join("flexi-ffn-hard:flexidepth.ship.safetensors");
    let meta = flexidepth::depth::file::read_depth_meta(&shipped).unwrap();
    let tuned = points[2]["tuned"]["skip_threshold"].as_f64().unwrap() as f32;
    assert_eq!(meta.skip_threshold, tuned);
    assert_eq!(meta.gate_scaling, flexidepth::depth::GateScaling::Hard);

    for bad in ["0", "-1", "30", "nan"] {
        let flag = format!("--budgets={bad}");
        let out = flexidepth(&["frontier", "--depth", adapter, &flag, "-o", out_dir.to_str().unwrap()]);
        assert!(!out.status.success(), "--budgets {bad} accepted");
        assert!(text(&out.stderr).contains("budget"), "{}", text(&out.stderr));
    }
}
