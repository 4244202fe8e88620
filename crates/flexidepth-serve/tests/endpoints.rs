//! Every endpoint through a real HTTP client against a server on the default model: chat and completions (plain
//! and streamed, the same text for the same seed, the library's own text), prompt scoring with echo and logprobs
//! (what lm-evaluation-harness reads), the small endpoints, the API key, depth telemetry with the shipped adapter,
//! the bounded queue and cancellation.

mod common;

use common::{chat, chat_stream_text, config, start, MODEL};
use flexidepth::generate::{generate, GenerateOptions};
use flexidepth::model::{Logits, WeightFormat};
use serde_json::{json, Value};

/// The library's greedy generation for `messages` (template applied), as `flexidepth generate --chat` runs it.
fn library_chat(content: &str, max_tokens: usize) -> (Vec<u32>, String) {
    let files = flexidepth::loader::ModelFiles::open(MODEL).unwrap();
    let model = files
        .load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
        .unwrap();
    let tok = &files.tokenizer;
    let text = tok
        .chat_template
        .as_ref()
        .unwrap()
        .render(&[flexidepth::chat::Message::new("user", content)], true)
        .unwrap();
    let prompt = tok.encode(&text, false).unwrap();
    let opts = GenerateOptions::greedy(max_tokens, files.eos_token_ids());
    let gen = generate(&model, tok, &prompt, &opts, &mut |_| Ok(())).unwrap();
    (prompt, gen.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_equals_the_library_and_streams_the_same_text() {
    let s = start(false, config());
    let question = "Name three colours of the rainbow.";
    let (status, plain) = s.post("/v1/chat/completions", &chat(question, 24)).await;
    assert_eq!(status, 200, "{plain}");
    let text = plain["choices"][0]["message"]["content"].as_str().unwrap();
    let (prompt, want) = library_chat(question, 24);
    assert_eq!(text, want, "the server's greedy text is generate's");
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    assert_eq!(plain["usage"]["prompt_tokens"], prompt.len());
    let completion = plain["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion), "{plain}");
    assert_eq!(plain["usage"]["total_tokens"], prompt.len() as u64 + completion);
    assert_eq!(
        plain["depth"]["mean_layers"], 30.0,
        "no adapter: every token runs all 30 layers"
    );
    assert_eq!(plain["depth"]["policy"], "full");

    let mut streamed = chat(question, 24);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/chat/completions", &streamed).await;
    assert_eq!(chunks.last().unwrap(), &json!("[DONE]"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chat_stream_text(&chunks), text);
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        plain["choices"][0]["finish_reason"]
    );
    assert_eq!(finish["depth"]["mean_layers"], 30.0);
    let usage = &chunks[chunks.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);

    // Sampling with a seed repeats, streamed or not.
    let mut sampled = chat("Write a short poem about rain.", 20);
    sampled["temperature"] = json!(0.9);
    sampled["seed"] = json!(1234);
    let (_, a) = s.post("/v1/chat/completions", &sampled).await;
    sampled["stream"] = json!(true);
    let b = chat_stream_text(&s.stream("/v1/chat/completions", &sampled).await);
    assert_eq!(a["choices"][0]["message"]["content"].as_str().unwrap(), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_score_the_prompt_as_the_harness_reads_it() {
    let s = start(false, config());
    let body = json!({"prompt": "The capital of France is Paris", "max_tokens": 1, "temperature": 0,
                      "echo": true, "logprobs": 1, "seed": 1234});
    let (status, out) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{out}");
    let files = flexidepth::loader::ModelFiles::open(MODEL).unwrap();
    let ids = files.tokenizer.encode("The capital of France is Paris", true).unwrap();
    let lp = &out["choices"][0]["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(
        token_logprobs.len(),
        ids.len() + 1,
        "the prompt's tokens and the generated one"
    );
    assert!(token_logprobs[0].is_null());
    assert!(out["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("The capital of France is Paris"));

    // The same numbers as a direct forward pass: log-softmax of the logits of the position before each token.
    let model = files
        .load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
        .unwrap();
    let mut cache = model.new_cache(ids.len());
    let logits: Vec<Vec<f32>> = model.forward(&ids, &mut cache, Logits::All).unwrap().to_vec2().unwrap();
    for (i, &id) in ids.iter().enumerate().skip(1) {
        let row = &logits[i - 1];
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max + row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        let want = row[id as usize] as f64 - lse;
        let got = token_logprobs[i].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "token {i}: {got} vs {want}");
        // lm-eval's greedy check: the token's logprob is the best of the alternatives.
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!(best >= got - 1e-6, "{top:?} vs {got}");
    }

    // max_tokens 0 with echo: only the prompt; token ids and several prompts give one choice each.
    let body = json!({"prompt": [ids.clone(), ids[..3].to_vec()], "max_tokens": 0, "echo": true, "logprobs": 0});
    let (status, out) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{out}");
    let choices = out["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[1]["logprobs"]["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(choices[0]["logprobs"]["token_logprobs"][5], token_logprobs[5]);
    assert_eq!(out["usage"]["completion_tokens"], 0);
    assert_eq!(choices[0]["finish_reason"], "length");

    // Streamed completions give the plain text, for a seeded sample.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8, "seed": 5});
    let (_, plain) = s.post("/v1/completions", &body).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = s.stream("/v1/completions", &streamed).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["text"].as_str())
        .collect();
    assert_eq!(plain["choices"][0]["text"].as_str().unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_tokenize_and_errors_in_openai_shape() {
    let s = start(false, config());
    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["meta"]["num_layers"], 30);
    assert_eq!(s.get(&format!("/v1/models/{MODEL}")).await.0, 200);
    assert_eq!(s.get("/health").await, (200, r#"{"status":"ok"}"#.to_string()));

    let (status, tok) = s.post("/tokenize", &json!({"content": "Hello world"})).await;
    assert_eq!(status, 200);
    let files = flexidepth::loader::ModelFiles::open(MODEL).unwrap();
    assert_eq!(
        tok["tokens"],
        json!(files.tokenizer.encode("Hello world", false).unwrap())
    );
    let (_, back) = s.post("/detokenize", &json!({"tokens": tok["tokens"]})).await;
    assert_eq!(back["content"], "Hello world");
    // vLLM's names, which lm-evaluation-harness's remote tokenizer uses.
    let (status, info) = s.get("/tokenizer_info").await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert!(
        info["eos_token"].is_string() && info["chat_template"].is_string(),
        "{info}"
    );
    let (_, tok2) = s
        .post(
            "/tokenize",
            &json!({"prompt": "Hello world", "add_special_tokens": false}),
        )
        .await;
    assert_eq!(tok2["tokens"], tok["tokens"]);
    assert_eq!(back["prompt"], "Hello world");
    let (_, chat_tokens) = s
        .post("/tokenize", &json!({"messages": [{"role": "user", "content": "Hi"}]}))
        .await;
    assert!(chat_tokens["count"].as_u64().unwrap() > 3);

    for (path, code) in [("/v1/nothing", 404), ("/v1/models/other-model", 404)] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, code, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let (status, body) = s.get("/v1/chat/completions").await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = s.post("/detokenize", &json!({"tokens": [99999999]})).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("tokens")));

    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("flexidepth_requests_total{endpoint=\"/tokenize\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flexidepth_errors_total{status=\"404\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE flexidepth_layers_per_token summary"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_required_except_for_health() {
    let mut cfg = config();
    cfg.api_key = Some("sekrit".into());
    let s = start(false, cfg);
    let body = chat("Hi", 2);
    for key in [None, Some("wrong")] {
        let mut req = s.client.post(s.url("/v1/chat/completions")).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_api_key");
    }
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("sekrit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/metrics").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_is_reported_and_set_per_request_with_the_adapter() {
    let s = start(true, config());
    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    let routed_layers = models["data"][0]["meta"]["routed_layers"].as_array().unwrap().len();
    assert!(routed_layers > 0);
    let mean = |body: Value| {
        let s = &s;
        async move {
            let (status, out) = s.post("/v1/chat/completions", &body).await;
            assert_eq!(status, 200, "{out}");
            out
        }
    };
    let mut run = chat("Count from one to five.", 12);
    run["depth_mode"] = json!("run");
    run["depth_tokens"] = json!(true);
    let out = mean(run).await;
    assert_eq!(out["depth"]["mean_layers"], 30.0);
    let tokens = out["depth"]["tokens"].as_array().unwrap();
    assert_eq!(tokens.len() as u64, out["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(out["depth"]["policy"], "flexi:run");

    let mut skip = chat("Count from one to five.", 12);
    skip["depth_mode"] = json!("skip");
    let out = mean(skip).await;
    assert_eq!(out["depth"]["mean_layers"], (30 - routed_layers) as f64);

    let mut never = chat("Count from one to five.", 12);
    never["skip_threshold"] = json!(1.0);
    let out = mean(never).await;
    assert_eq!(
        out["depth"]["mean_layers"],
        (30 - routed_layers) as f64,
        "no gate is above 1"
    );

    let out = mean(chat("Count from one to five.", 12)).await;
    let m = out["depth"]["mean_layers"].as_f64().unwrap();
    assert!(
        m > (30 - routed_layers) as f64 && m < 30.0,
        "the adapter skips some layers: {m}"
    );
    assert!(out["depth"]["policy"].as_str().unwrap().starts_with("flexi"));

    // A server without routers refuses depth fields.
    let plain = start(false, config());
    let mut body = chat("Hi", 2);
    body["depth_mode"] = json!("skip");
    let (status, err) = plain.post("/v1/chat/completions", &body).await;
    assert_eq!((status, err["error"]["param"].as_str()), (400, Some("depth_mode")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_gone_client_frees_its_cache() {
    let mut cfg = config();
    cfg.max_batch = 1;
    cfg.max_queue = 1;
    let s = start(false, cfg);
    let mut long = json!({"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "stream": true});
    let mut running = s
        .client
        .post(s.url("/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    running
        .chunk()
        .await
        .unwrap()
        .expect("a first chunk: the request is running");
    long["stream"] = json!(false);
    long["max_tokens"] = json!(4);
    let queued = {
        let (client, url, body) = (s.client.clone(), s.url("/v1/completions"), long.clone());
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() })
    };
    s.wait_metric("flexidepth_queue_depth", 1.0).await;
    let (status, err) = s.post("/v1/completions", &long).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["code"], "queue_full");
    assert_eq!(err["error"]["type"], "rate_limit_error");

    drop(running); // the client goes away: its sequence is cancelled, the queued one runs
    assert_eq!(queued.await.unwrap(), 200);
    s.wait_metric("flexidepth_active_sequences", 0.0).await;
    assert_eq!(s.metric("flexidepth_kv_cache_bytes").await, 0.0);
    assert_eq!(s.metric("flexidepth_cancelled_total").await, 1.0);
    assert!(s.metric("flexidepth_generated_tokens_total").await < 2000.0);
}
