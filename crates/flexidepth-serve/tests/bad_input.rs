//! Bad input: malformed JSON, wrong types, empty messages, a prompt over the context, `max_tokens` 0 or huge, a
//! body of several MB, out-of-domain values, and clients that go away or stop reading — each a clear error in
//! OpenAI's shape (or a clean cancel), after which the server keeps serving.

mod common;

use common::{chat, config, start, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

/// The server still answers: health, and a short generation.
async fn still_serving(s: &TestServer) {
    assert_eq!(s.get("/health").await.0, 200);
    let (status, out) = s.post("/v1/chat/completions", &chat("Hi", 3)).await;
    assert_eq!(status, 200, "{out}");
}

/// POST raw bytes as JSON: the status and the error object.
async fn post_raw(s: &TestServer, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = s
        .client
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Assert an OpenAI-shaped error with `status`, whose message contains `needle` (and naming `param`, if given).
fn assert_error(what: &str, (status, body): &(u16, Value), want: u16, needle: &str, param: Option<&str>) {
    assert_eq!(*status, want, "{what}: {body}");
    let e = &body["error"];
    let msg = e["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {body}"));
    assert!(msg.contains(needle), "{what}: {msg:?} should mention {needle:?}");
    assert!(e["type"].is_string(), "{what}: {body}");
    if let Some(p) = param {
        assert_eq!(e["param"].as_str(), Some(p), "{what}: {body}");
    }
}

/// POST `body` to chat completions and assert the error.
async fn chat_error(s: &TestServer, what: &str, body: Value, needle: &str, param: Option<&str>) {
    let got = s.post("/v1/chat/completions", &body).await;
    assert_error(what, &got, 400, needle, param);
}

/// One user message saying hi, with `extra` fields.
fn hi(extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mistyped_requests_get_clear_400s() {
    let s = start(false, config());
    let chat_path = "/v1/chat/completions";
    let truncated = br#"{"messages": [{"role": "user", "content": "hi"}"#.to_vec();
    assert_error(
        "truncated JSON",
        &post_raw(&s, chat_path, truncated).await,
        400,
        "not valid JSON",
        None,
    );
    assert_error(
        "empty body",
        &post_raw(&s, chat_path, vec![]).await,
        400,
        "not valid JSON",
        None,
    );
    assert_error(
        "not an object",
        &post_raw(&s, chat_path, b"[1]".to_vec()).await,
        400,
        "invalid type",
        None,
    );
    chat_error(
        &s,
        "messages a string",
        json!({"messages": "hi"}),
        "invalid type",
        Some("messages"),
    )
    .await;
    let content = json!({"messages": [{"role": "user", "content": 5}]});
    chat_error(
        &s,
        "content a number",
        content,
        "did not match",
        Some("messages[0].content"),
    )
    .await;
    chat_error(
        &s,
        "temperature a string",
        hi(json!({"temperature": "hot"})),
        "invalid type",
        Some("temperature"),
    )
    .await;
    chat_error(
        &s,
        "negative max_tokens",
        hi(json!({"max_tokens": -1})),
        "invalid value",
        Some("max_tokens"),
    )
    .await;
    chat_error(
        &s,
        "missing messages",
        json!({"model": "x"}),
        "missing field `messages`",
        None,
    )
    .await;
    chat_error(
        &s,
        "stop a number",
        hi(json!({"stop": 5})),
        "did not match",
        Some("stop"),
    )
    .await;
    let got = s.post("/v1/completions", &json!({"prompt": {"text": "hi"}})).await;
    assert_error("prompt an object", &got, 400, "prompt must be", Some("prompt"));
    let got = s.post("/v1/completions", &json!({"prompt": [1, -2]})).await;
    assert_error("negative token id", &got, 400, "prompt must be", Some("prompt"));
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_out_of_their_domain_get_clear_400s() {
    let s = start(false, config());
    chat_error(
        &s,
        "empty messages",
        json!({"messages": []}),
        "must not be empty",
        Some("messages"),
    )
    .await;
    let image = json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]});
    chat_error(&s, "image part", image, "only text parts", Some("messages")).await;
    chat_error(&s, "n = 2", hi(json!({"n": 2})), "n must be 1", Some("n")).await;
    chat_error(
        &s,
        "temperature < 0",
        hi(json!({"temperature": -1})),
        "temperature must be",
        Some("temperature"),
    )
    .await;
    chat_error(&s, "top_p = 0", hi(json!({"top_p": 0})), "top_p must be", Some("top_p")).await;
    let top50 = hi(json!({"logprobs": true, "top_logprobs": 50}));
    chat_error(&s, "top_logprobs 50", top50, "at most 20", Some("logprobs")).await;
    chat_error(
        &s,
        "empty stop",
        hi(json!({"stop": [""]})),
        "must not be empty",
        Some("stop"),
    )
    .await;
    chat_error(
        &s,
        "max_tokens 0",
        hi(json!({"max_tokens": 0})),
        "at least 1",
        Some("max_tokens"),
    )
    .await;
    let huge = hi(json!({"max_tokens": 1_000_000_000u64}));
    chat_error(&s, "max_tokens huge", huge, "at most 4096", Some("max_tokens")).await;
    chat_error(
        &s,
        "depth_mode without routers",
        hi(json!({"depth_mode": "skip"})),
        "routers",
        Some("depth_mode"),
    )
    .await;
    let got = s.post("/v1/completions", &json!({"prompt": "hi"})).await;
    assert_eq!(got.0, 200, "completions default to 16 tokens: {}", got.1);
    let got = s
        .post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 0}))
        .await;
    assert_error("max_tokens 0 without echo", &got, 400, "at least 1", Some("max_tokens"));
    let got = s.post("/v1/completions", &json!({"prompt": ""})).await;
    assert_error("empty prompt", &got, 400, "empty", Some("prompt"));
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_the_context_and_huge_bodies_are_refused() {
    let s = start(false, config());
    // 8,192 tokens: the whole context, and more than a prompt may have.
    let long = vec![1000u32; 8192];
    let got = s
        .post("/v1/completions", &json!({"prompt": long, "max_tokens": 1}))
        .await;
    assert_error("prompt over the context", &got, 400, "at most 8191", Some("prompt"));
    assert_eq!(got.1["error"]["code"], "context_length_exceeded");
    let got = s
        .post(
            "/v1/completions",
            &json!({"prompt": vec![1000u32; 6000], "max_tokens": 4000}),
        )
        .await;
    assert_error(
        "prompt + max_tokens over the context",
        &got,
        400,
        "maximum context length is 8192",
        Some("max_tokens"),
    );
    assert_eq!(got.1["error"]["code"], "context_length_exceeded");
    let words = "lorem ipsum ".repeat(20_000);
    let got = s.post("/v1/chat/completions", &chat(&words, 4)).await;
    assert_error(
        "chat over the context",
        &got,
        400,
        "this server takes at most",
        Some("messages"),
    );

    // 8 MB of JSON: refused before parsing, with the limit in the message.
    let big = json!({"prompt": "x".repeat(8 << 20), "max_tokens": 1})
        .to_string()
        .into_bytes();
    let got = post_raw(&s, "/v1/completions", big).await;
    assert_error("8 MB body", &got, 413, "larger than 2097152 bytes", None);
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_or_stop_reading_do_not_stop_the_server() {
    let s = start(false, config());
    // A plain request whose client gives up: the server notices and cancels it.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0});
    assert!(impatient
        .post(s.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .is_err());
    s.wait_metric("flexidepth_cancelled_total", 1.0).await;

    // A stream the client stops reading: the others are served meanwhile; it is cancelled once the client is gone.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["max_tokens"] = json!(600);
    let mut stalled = s
        .client
        .post(s.url("/v1/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    stalled.chunk().await.unwrap().expect("a first chunk");
    for _ in 0..3 {
        still_serving(&s).await;
    }
    drop(stalled);
    s.wait_metric("flexidepth_active_sequences", 0.0).await;
    assert_eq!(s.metric("flexidepth_kv_cache_bytes").await, 0.0);
    still_serving(&s).await;
}
