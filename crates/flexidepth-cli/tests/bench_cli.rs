//! `flexidepth bench`: its rows, columns and output formats (not its speed, which a test cannot judge).

mod common;

use common::{flexidepth, text};

/// `bench` with the adapters folder pointed at `dir` (an empty one: no shipped adapter, so fresh routers).
fn bench_with_adapters(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flexidepth"))
        .arg("bench")
        .args(args)
        .env("FLEXIDEPTH_ADAPTERS", dir)
        .output()
        .expect("the binary runs")
}

#[test]
fn flexi_rows_use_the_shipped_adapter_unless_there_is_none() {
    let args = ["-p", "0", "-n", "2", "-r", "1", "--configs", "full,skip", "-o", "json"];
    // The repository's adapters/shipped.toml names SmolLM2's FFN-unit adapter: a skipped FFN counts as the share
    // of the layer's bytes it does not read, so skipping every routed layer leaves between 15 and 30 layers.
    let out = flexidepth(&[&["bench"][..], &args[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("using the shipped adapter"),
        "{}",
        text(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skip = rows.as_array().unwrap().iter().find(|r| r["config"] == "skip").unwrap();
    let layers = skip["layers_per_token"].as_f64().unwrap();
    assert!(layers > 15.0 && layers < 30.0, "{layers}");

    let empty = tempfile::tempdir().unwrap();
    let out = bench_with_adapters(empty.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("freshly initialised routers"),
        "{}",
        text(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skip = rows.as_array().unwrap().iter().find(|r| r["config"] == "skip").unwrap();
    assert_eq!(skip["layers_per_token"], 15.0, "fresh routers skip whole layers");

    std::fs::write(
        empty.path().join("shipped.toml"),
        "[smollm2-135m-instruct]\ndepth = \"missing.safetensors\"\n",
    )
    .unwrap();
    let out = bench_with_adapters(empty.path(), &args);
    assert!(
        !out.status.success() && text(&out.stderr).contains("which is not a file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_rows_and_formats() {
    // Fresh routers (no shipped adapter): whole-layer skipping, so `skip` runs exactly the 15 unrouted layers.
    let no_adapters = tempfile::tempdir().unwrap();
    let out = bench_with_adapters(
        no_adapters.path(),
        &[
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "2",
            "--configs",
            "full,flexi:0.5,skip,prune:3",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 8, "4 configs × (pp16, tg4)");
    let find = |config: &str, test: &str| {
        rows.iter()
            .find(|r| r["config"] == config && r["test"] == test)
            .unwrap_or_else(|| panic!("{config} {test}"))
    };
    for r in rows {
        assert_eq!(r["engine"], "flexidepth");
        assert_eq!(r["dtype"], "q");
        assert_eq!(r["samples_tps"].as_array().unwrap().len(), 2);
        assert!(r["mean_tps"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(find("full", "tg4")["layers_per_token"], 30.0);
    assert_eq!(find("full", "tg4")["speedup"], 1.0);
    assert_eq!(find("skip", "tg4")["layers_per_token"], 15.0);
    assert_eq!(find("prune:3", "pp16")["layers_per_token"], 27.0);
    let flexi = find("flexi:0.5", "tg4")["layers_per_token"].as_f64().unwrap();
    assert!(flexi > 15.0 && flexi < 30.0, "{flexi}");
    // Skipping every routed layer reads fewer weight bytes: its bound is above 1.
    assert!(find("skip", "tg4")["bound_speedup"].as_f64().unwrap() > 1.1);

    let out = flexidepth(&[
        "bench",
        "-p",
        "0",
        "-n",
        "2",
        "-r",
        "1",
        "--configs",
        "full",
        "-o",
        "csv",
        "-t",
        "1,2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = text(&out.stdout);
    let lines: Vec<&str> = csv.trim().lines().collect();
    assert_eq!(lines.len(), 3, "a header and one row per thread count: {csv}");
    assert!(lines[0].starts_with("engine,model,dtype,threads,config,test"));
    assert!(
        lines[1].contains(",q,1,full,tg2,") && lines[2].contains(",q,2,full,tg2,"),
        "{csv}"
    );

    let out = flexidepth(&[
        "bench",
        "-p",
        "8",
        "-n",
        "0",
        "-r",
        "1",
        "--configs",
        "full",
        "--dtype",
        "f32",
    ]);
    let md = text(&out.stdout);
    assert!(
        md.starts_with("| model | dtype |") && md.contains("| f32 | ") && md.contains("| pp8 |"),
        "{md}"
    );

    let out = flexidepth(&["bench", "--configs", "half"]);
    assert!(!out.status.success() && text(&out.stderr).contains("unknown depth policy 'half'"));
    let out = flexidepth(&["bench", "-o", "xml"]);
    assert!(!out.status.success() && text(&out.stderr).contains("invalid value 'xml' for '--output-format"));
}

/// `-b`: the generation test runs as batched decode, one row per batch size with the aggregate, per-sequence and
/// batch-1 ratio columns; bad batch sizes are refused with a message.
#[test]
fn batched_rows() {
    let no_adapters = tempfile::tempdir().unwrap();
    let args = [
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "-b",
        "1,2",
        "--configs",
        "full",
        "-o",
        "json",
    ];
    let out = bench_with_adapters(no_adapters.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "pp8, and tg2@d8 at batch 1 and 2");
    assert!(rows[0]["batch"].is_null());
    for (r, b) in rows[1..].iter().zip([1.0, 2.0]) {
        assert_eq!(r["test"], "tg2@d8");
        assert_eq!(r["batch"].as_f64(), Some(b));
        let (agg, per) = (r["mean_tps"].as_f64().unwrap(), r["per_seq_tps"].as_f64().unwrap());
        assert!(agg > 0.0 && (per - agg / b).abs() < 1e-9 * agg, "{r}");
        assert_eq!(r["layers_per_token"], 30.0);
    }
    assert_eq!(rows[1]["batch_speedup"], 1.0);
    let md = bench_with_adapters(no_adapters.path(), &args[..10]);
    assert!(
        text(&md.stdout).contains("| tokens/s (aggregate) |"),
        "{}",
        text(&md.stdout)
    );
    for bad in ["0", "65", "x"] {
        let out = bench_with_adapters(no_adapters.path(), &["-p", "8", "-n", "2", "-b", bad]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("batch size"), "{bad}: {}", text(&out.stderr));
    }
}
