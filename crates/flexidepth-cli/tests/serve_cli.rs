//! `flexidepth serve` as a user runs it: it prints where it listens (any free port with `--port 0`), answers over
//! HTTP, and on Ctrl-C (SIGINT) finishes the request in flight, then exits cleanly.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// A raw HTTP/1.1 POST with a JSON body on a fresh connection (closed after the response).
fn post(addr: &str, path: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("the server accepts connections");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

#[test]
fn serve_answers_and_stops_cleanly_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flexidepth"))
        .args(["serve", "--port", "0", "--shutdown-grace", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.trim().strip_prefix("listening on http://") {
            addr = Some(rest.split_whitespace().next().unwrap().to_string());
            break;
        }
        line.clear();
    }
    let addr = addr.unwrap_or_else(|| panic!("no 'listening on' line; last: {line}"));
    assert!(addr.starts_with("127.0.0.1:"), "loopback by default: {addr}");

    let mut answer = String::new();
    post(
        &addr,
        "/v1/completions",
        r#"{"prompt": "Hello", "max_tokens": 3, "temperature": 0}"#,
    )
    .read_to_string(&mut answer)
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""object":"text_completion""#), "{answer}");

    // A streamed request in flight (its first token out) when Ctrl-C comes: it still finishes.
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "stream": true}"#;
    let mut inflight = post(&addr, "/v1/completions", body);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let mut buf = [0u8; 256];
        let n = inflight.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    inflight.read_to_string(&mut rest).unwrap();
    assert!(rest.contains(r#""finish_reason":"length""#), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");

    let exit = child.wait().unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(exit.success(), "{log}");
    assert!(log.contains("shutting down") && log.contains("stopped"), "{log}");
    assert!(TcpStream::connect(&addr).is_err(), "nothing listens after the exit");
}
