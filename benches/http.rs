//! The HTTP mode's figures: `cargo bench --bench http` (run `cargo build --release` first).
//!
//! The release binary serves `mcp-server-stage0 http` on a free port of 127.0.0.1 in simulator
//! mode, without OAuth (loopback), with the audit log off and then on (fsync'd, in a temporary
//! folder). A reqwest client sends stateless 2026-07-28 `tools/call` requests of
//! `check-authorization` (JSON-RPC over HTTP, each answered in its own response):
//!
//! - one client, sequential calls: p50 / p99 latency and calls/s;
//! - 64 clients at once, each sending its calls one after another: calls/s, with every answer
//!   checked to be a verdict;
//! - the server's peak resident memory (`VmHWM`) at the end.
//!
//! `-- --quick` runs a tenth of the calls. Figures in BENCHMARKS.md ("HTTP").

#[path = "common/line_client.rs"]
mod line_client;
#[path = "../tests/common/memory.rs"]
mod memory;

use std::process::Stdio;
use std::time::{Duration, Instant};

use line_client::{load_average, server_binary, watchdog};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One call: a stateless `check-authorization` that the simulator allows.
fn call_body(id: u64) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "check-authorization", "arguments": {
            "goal": "Summarise the quarterly report", "sideEffects": [],
            "successCriteria": ["A summary exists"]},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
                      "io.modelcontextprotocol/clientCapabilities": {}}}
    })
    .to_string()
}

/// Sends one call and checks that the answer is a verdict.
async fn call(client: &reqwest::Client, url: &str, id: u64) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "check-authorization")
        .body(call_body(id))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("a body");
    assert!(text.contains("\"verdict\":\"ALLOW\""), "{text}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (sequential, per_client) = if quick { (500, 30) } else { (5_000, 300) };
    watchdog("http", Duration::from_secs(600));
    let binary = server_binary();
    println!("load before: {}", load_average());
    for audit in ["off", "on"] {
        let dir = tempfile::TempDir::new().expect("a temporary folder");
        let log = dir.path().join("audit.jsonl");
        let log = if audit == "on" {
            log.display().to_string()
        } else {
            "off".to_owned()
        };
        let mut child = tokio::process::Command::new(&binary)
            .args(["http", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("STAGE0_AUDIT_LOG", &log)
            .env("STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL", "64")
            .env("RUST_LOG", "warn,stage0_guard::http_server=info")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the server starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let listen = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server says where it listens");
            if let Some(at) = line.find("listen=") {
                break line[at + 7..].split_whitespace().next().unwrap().to_owned();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = format!("http://{listen}/mcp");
        let client = reqwest::Client::new();
        for id in 0..100 {
            call(&client, &url, id).await;
        }

        let mut times = Vec::with_capacity(sequential);
        let started = Instant::now();
        for id in 0..sequential as u64 {
            let at = Instant::now();
            call(&client, &url, id).await;
            times.push(at.elapsed());
        }
        let elapsed = started.elapsed();
        times.sort();
        println!(
            "audit log {audit:3}: 1 client:   p50 {:>7.1} µs  p99 {:>7.1} µs  {:>7.0} calls/s",
            percentile(&times, 0.50).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
            sequential as f64 / elapsed.as_secs_f64()
        );

        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..64u64 {
            let (client, url) = (reqwest::Client::new(), url.clone());
            clients.spawn(async move {
                for i in 0..per_client as u64 {
                    call(&client, &url, c * 1_000_000 + i).await;
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("a client finishes");
        }
        let elapsed = started.elapsed();
        let pid = child.id().expect("the server runs");
        println!(
            "audit log {audit:3}: 64 clients: {:>7.0} calls/s; peak RSS {} MiB",
            (64 * per_client) as f64 / elapsed.as_secs_f64(),
            memory::status_kib(pid, "VmHWM") / 1024
        );
        let _ = child.kill().await;
    }
    println!("load after: {}", load_average());
}
