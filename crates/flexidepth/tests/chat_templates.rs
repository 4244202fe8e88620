//! Chat templates rendered by our environment against transformers' own renderer, byte for byte: the reference
//! strings in `fixtures/chat_templates/cases.json` were made once with `render_jinja_template` (transformers'
//! `apply_chat_template`) by `fixtures/chat_templates/make_fixtures.py`. The templates: SmolLM2's and
//! Qwen2.5-Coder's own (from their GGUF files), one with `{% generation %}` blocks, one exercising filters,
//! globals, loop controls and Python printing, one with `tools` and `documents`.

use flexidepth::chat::{ChatInput, ChatTemplate};
use std::path::Path;

#[test]
fn templates_render_exactly_as_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 15, "{}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let file = case["template"].as_str().unwrap();
        let name = format!("{file} / {}", case["name"].as_str().unwrap());
        let source = std::fs::read_to_string(dir.join(file)).unwrap();
        let t = ChatTemplate::new(
            source,
            case["bos_token"].as_str().map(String::from),
            case["eos_token"].as_str().map(String::from),
        );
        let input = ChatInput::from_json(case["input_json"].as_str().unwrap()).unwrap();
        let got = t.render_input(&input);
        match (case.get("expected").and_then(|e| e.as_str()), got) {
            (Some(want), Ok(got)) if got == want => {}
            (Some(want), got) => failures.push(format!("{name}:\n want {want:?}\n got  {got:?}")),
            (None, Err(e)) => {
                let want = case["error"].as_str().unwrap();
                if !e.to_string().contains(want) {
                    failures.push(format!("{name}: error {e} should contain {want:?}"));
                }
            }
            (None, Ok(got)) => failures.push(format!("{name}: should fail, rendered {got:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn chat_input_rejects_malformed_json() {
    for bad in ["", "[]", "{\"messages\": 3}", "{\"messages\": [1]}", "{\"messages\": ["] {
        assert!(ChatInput::from_json(bad).is_err(), "{bad}");
    }
    assert!(ChatInput::from_json("{\"messages\": []}").is_ok());
}
