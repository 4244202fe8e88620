//! `flexidepth study` end to end on the list tasks (no corpus needed): its files, its tables, its errors.

mod common;

use common::{flexidepth, text};

#[test]
fn study_writes_tables_json_and_depth_maps() {
    let dir = tempfile::tempdir().unwrap();
    let depth = dir.path().join("depth.safetensors");
    let d = depth.to_str().unwrap();
    let out = flexidepth(&["depth", "init", "-o", d, "--seed", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let res = dir.path().join("study");
    let r = res.to_str().unwrap();
    let args = ["study", "--depth", d, "--instances", "2", "--max-new-tokens", "4"];
    let mut full = args.to_vec();
    full.extend(["--tasks", "product,repeat,sum", "--control", "-o", r]);
    let out = flexidepth(&full);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let md = std::fs::read_to_string(res.join("study.md")).unwrap();
    for heading in ["## dynamic", "## full depth (control)", "## no skip kv (control)"] {
        assert!(md.contains(heading), "{md}");
    }
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| repeat |")).collect();
    assert_eq!(rows.len(), 3, "one row per run: {md}");
    assert!(
        md.contains("| sum (add) |") && md.contains("| product (multiply) |"),
        "{md}"
    );
    assert!(!md.contains("| copy |"), "only the tasks asked for");
    assert_eq!(
        text(&out.stdout).matches("| repeat |").count(),
        3,
        "tables on stdout too"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(res.join("study.json")).unwrap()).unwrap();
    assert_eq!(json["setup"]["num_layers"], 30);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let tasks: Vec<&str> = runs[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["repeat", "sum", "product"], "the paper's order");
    for run in runs {
        for t in run["tasks"].as_array().unwrap() {
            let instances = t["instances"].as_array().unwrap();
            assert_eq!(instances.len(), 2);
            let n: usize = instances.iter().map(|i| i["layers"].as_array().unwrap().len()).sum();
            assert_eq!(t["generated_tokens"].as_u64().unwrap() as usize, n);
            assert!((2..=8).contains(&n), "1..=4 tokens per instance: {n}");
            let mean = t["mean_layers"].as_f64().unwrap();
            assert!((15.0..=30.0).contains(&mean), "{mean}");
        }
    }
    for t in runs[1]["tasks"].as_array().unwrap() {
        assert_eq!(t["mean_layers"], 30.0, "full depth uses every layer");
        assert_eq!(t["variance"], 0.0);
    }
    assert_eq!(runs[2]["skip_kv"], false);
    for task in ["repeat", "sum", "product"] {
        let svg = std::fs::read_to_string(res.join(format!("depthmap-{task}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{task}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&res)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Errors: an unknown task, no routers, zero instances.
    let mut bad = args.to_vec();
    bad.extend(["--tasks", "divide", "-o", r]);
    let out = flexidepth(&bad);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown task 'divide'"),
        "{}",
        text(&out.stderr)
    );
    let out = flexidepth(&["study", "--tasks", "sum", "--instances", "1", "-o", r]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("give --depth FILE"), "{}", text(&out.stderr));
    let out = flexidepth(&["study", "--depth", d, "--instances", "0", "--tasks", "sum", "-o", r]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("at least 1"), "{}", text(&out.stderr));
}
