//! Hostile bytes on the built binary's stdin: the server never crashes, its memory stays bounded,
//! and a valid request afterwards is answered.
//!
//! Each test sends one kind of hostile input to a fresh server (simulator mode), then checks
//! [`survives`]: the process is still running, its peak resident memory (`VmHWM`, read from
//! `/proc/<pid>/status`) is under [`MEMORY_BOUND_KIB`], and a `tools/call` gets its `ALLOW`.
//! The bound is generous (a debug build idles at about 14 MiB) but far below what an unbounded
//! reader reaches: before the 4 MiB message cap, one 16 MiB line made the server peak at about
//! 200 MiB. A flood of 3.9 MiB calls sent without waiting for answers is held to the limit of
//! requests in flight instead (`STAGE0_MAX_CALLS_IN_FLIGHT`): each is answered, run or refused,
//! and memory stays under a bound derived from the limit. Memory is asserted, never time; every
//! wait is bounded (see `common::BOUND`).

#![cfg(target_os = "linux")]

mod common;

use common::{Exit, RawServer};
use serde_json::{Value, json};
use stage0_guard::transport::MAX_MESSAGE_BYTES;

/// The most resident memory the server may ever have used, in KiB (64 MiB).
const MEMORY_BOUND_KIB: u64 = 64 * 1024;

/// A `tools/call` of `research-topic` about `topic`, as request `id`.
fn research(id: u64, topic: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": "research-topic", "arguments": {"topic": topic}}
    })
}

/// A server that has completed `initialize` (as request 1).
async fn initialized() -> RawServer {
    let mut server = RawServer::spawn();
    server.initialize(1).await;
    server
}

/// The server is running, has stayed under [`MEMORY_BOUND_KIB`], answers request `id` (a
/// `tools/call`) with an `ALLOW` that ran, and then exits 0 when stdin closes; every line it
/// wrote to stdout, for further checks.
async fn survives(mut server: RawServer, id: u64) -> Exit {
    server.assert_running();
    server.send(research(id, "Rust async runtimes")).await;
    let answer = server.response(id).await;
    assert_eq!(
        answer["result"]["structuredContent"]["verdict"], "ALLOW",
        "{answer}"
    );
    assert_eq!(answer["result"]["structuredContent"]["executed"], true);
    let (peak, now) = server.memory_kib();
    assert!(
        peak < MEMORY_BOUND_KIB,
        "peak resident memory {peak} KiB (now {now} KiB) is over {MEMORY_BOUND_KIB} KiB"
    );
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
    exit
}

/// Whether one of `lines` answers request `id`.
fn answers(lines: &[String], id: u64) -> bool {
    lines.iter().any(|line| {
        let message: Value = serde_json::from_str(line).expect("checked as JSON-RPC");
        message["id"] == id
    })
}

/// One line of `len` bytes, newline included: a `tools/call` whose topic pads it out.
fn padded_call(id: u64, len: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"research-topic","arguments":{{"topic":""#
    );
    padded(head, b"\"}}}\n", len)
}

/// One line of `len` bytes, newline included: a `ping` padded out by an ignored parameter.
///
/// A ping, not a tool call, so that the memory measured is the transport's: a `tools/call` of
/// the maximum size is answered with a result that repeats its topic four times (about 16 MiB),
/// and peaks at about 56 MiB in a release build.
fn padded_ping(id: u64, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping","params":{{"pad":""#);
    padded(head, b"\"}}\n", len)
}

/// `head`, then `a`s, then `tail`: `len` bytes in all.
fn padded(head: String, tail: &[u8], len: usize) -> Vec<u8> {
    let mut line = head.into_bytes();
    line.resize(len - tail.len(), b'a');
    line.extend_from_slice(tail);
    line
}

#[tokio::test]
async fn invalid_json_is_ignored() {
    let mut server = initialized().await;
    for line in [
        "{not json",
        r#"{"jsonrpc": "2.0", "id": "#,
        "}}}]]]",
        "null",
        "12345",
        r#""just a string""#,
        "",
        "   ",
    ] {
        server.send_line(line).await;
    }
    survives(server, 2).await;
}

#[tokio::test]
async fn invalid_utf8_is_ignored() {
    let mut server = initialized().await;
    server.send_bytes(b"\xff\xfe\xfd\xfc\n").await;
    server
        .send_bytes(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"research-topic\",\"arguments\":{\"topic\":\"\xc3\x28\xed\xa0\x80\"}}}\n")
        .await;
    server.send_bytes(b"\xef\xbb\xbf\xc0\xaf\n").await;
    survives(server, 2).await;
}

#[tokio::test]
async fn a_16_mib_line_is_dropped_without_being_buffered() {
    let mut server = initialized().await;
    let line = padded_call(3, 16 * 1024 * 1024);
    server.send_bytes(&line).await;
    let stdout = survives(server, 2).await.stdout_lines;
    assert!(
        !answers(&stdout, 3),
        "the 16 MiB request was read and answered"
    );
}

#[tokio::test]
async fn a_line_just_over_the_maximum_is_dropped_and_one_at_the_maximum_is_answered() {
    let mut server = initialized().await;
    server
        .send_bytes(&padded_ping(3, MAX_MESSAGE_BYTES + 1))
        .await;
    server.send_bytes(&padded_ping(4, MAX_MESSAGE_BYTES)).await;
    assert_eq!(server.response(4).await["result"], json!({}));
    let stdout = survives(server, 2).await.stdout_lines;
    assert!(!answers(&stdout, 3), "the oversized request 3 was answered");
}

#[tokio::test]
async fn json_nested_100_000_deep_is_refused_without_overflowing_the_stack() {
    let mut server = initialized().await;
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // Once as the whole message, once inside a tool's arguments.
    server.send_line(&nested).await;
    server
        .send_line(&format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"research-topic","arguments":{{"topic":{nested}}}}}}}"#
        ))
        .await;
    survives(server, 2).await;
}

#[tokio::test]
async fn a_batch_array_is_refused_as_an_invalid_request() {
    let mut server = initialized().await;
    server
        .send(json!([research(3, "one"), research(4, "two")]))
        .await;
    // JSON-RPC batches are not part of MCP: one `-32600` with a null id, nothing run.
    server
        .send(json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
        .await;
    server.response(5).await;
    let refusals: Vec<&String> = server
        .lines
        .iter()
        .filter(|line| line.contains("-32600"))
        .collect();
    assert_eq!(refusals.len(), 1, "{:#?}", server.lines);
    let ran = |line: &String| {
        let message: Value = serde_json::from_str(line).expect("checked as JSON-RPC");
        message["id"] == 3 || message["id"] == 4
    };
    assert!(
        !server.lines.iter().any(ran),
        "a call inside the batch was answered: {:#?}",
        server.lines
    );
    survives(server, 2).await;
}

#[tokio::test]
async fn requests_before_initialize_are_answered_with_errors_and_initialize_still_works() {
    let mut server = RawServer::spawn();
    let early = server
        .request(1, "tools/call", research(1, "too early")["params"].clone())
        .await;
    assert!(early["error"].is_object(), "{early}");
    let listed = server.request(2, "tools/list", json!({})).await;
    assert!(listed["error"].is_object(), "{listed}");
    let ping = server.request(3, "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}));
    server.initialize(4).await;
    survives(server, 5).await;
}

#[tokio::test]
async fn notifications_and_responses_before_initialize_do_not_end_the_session() {
    // rmcp alone ends the session on these, and the server exited with status 2.
    let mut server = RawServer::spawn();
    server
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    server
        .send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}))
        .await;
    server
        .send(json!({"jsonrpc": "2.0", "id": 8, "result": {}}))
        .await;
    let initialize = server.initialize(1).await;
    assert_eq!(initialize["result"]["protocolVersion"], "2025-11-25");
    survives(server, 2).await;
}

#[tokio::test]
async fn a_second_initialize_is_refused_and_the_session_keeps_its_version() {
    let mut server = initialized().await;
    let second = server
        .request(
            3,
            "initialize",
            json!({
                "protocolVersion": "2024-11-05",
                "capabilities": {"elicitation": {}},
                "clientInfo": {"name": "impostor", "version": "0"}
            }),
        )
        .await;
    assert_eq!(second["error"]["code"], -32600, "{second}");
    assert!(second.get("result").is_none(), "{second}");
    survives(server, 2).await;
}

#[tokio::test]
async fn a_duplicate_id_is_answered_once_per_request() {
    // rmcp alone let the second request take over the first one's slot: the first answer then
    // cancelled the second call, which was never answered. Now each request gets one answer: a
    // result, or `-32600` when its id belongs to a request still in flight.
    let mut server = initialized().await;
    server.send(research(3, "first")).await;
    server.send(research(3, "second")).await;
    let answers = [server.response(3).await, server.response(3).await];
    let mut topics = Vec::new();
    for answer in &answers {
        if answer["error"]["code"] == -32600 {
            continue;
        }
        assert_eq!(
            answer["result"]["structuredContent"]["verdict"], "ALLOW",
            "{answer}"
        );
        let text = answer["result"]["content"][0]["text"].as_str();
        topics.push(text.expect("a text block").to_owned());
    }
    assert!(
        topics.iter().any(|text| text.contains("first")),
        "{answers:#?}"
    );
    survives(server, 2).await;
}

#[tokio::test]
async fn ten_thousand_notifications_in_a_burst_are_absorbed() {
    let mut server = initialized().await;
    let mut burst = Vec::new();
    for n in 0..10_000 {
        let notification = match n % 3 {
            0 => json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            1 => json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": n}}),
            _ => json!({"jsonrpc": "2.0", "method": "notifications/no-such-thing",
                        "params": {"n": n}}),
        };
        burst.extend_from_slice(notification.to_string().as_bytes());
        burst.push(b'\n');
    }
    server.send_bytes(&burst).await;
    survives(server, 2).await;
}

#[tokio::test]
async fn a_tools_call_with_a_1_mib_topic_is_answered() {
    let mut server = initialized().await;
    let topic = "x".repeat(1024 * 1024);
    server.send(research(3, &topic)).await;
    let answer = server.response(3).await;
    assert_eq!(answer["result"]["structuredContent"]["verdict"], "ALLOW");
    let exit = survives(server, 2).await;
    // The check's log line carries an excerpt of the goal, not 1 MiB of it.
    let check = exit
        .stderr
        .lines()
        .find(|line| line.contains("stage0 check") && line.contains("bytes in all"))
        .expect("the 1 MiB call's check line");
    assert!(check.len() < 1024, "{} bytes", check.len());
    assert!(exit.stderr.len() < 64 * 1024, "{} bytes", exit.stderr.len());
}

/// How many 3.9 MiB calls the bounded-work test pipelines.
const PIPELINED_CALLS: u64 = 40;

/// The limit of requests in flight the bounded-work test sets (`STAGE0_MAX_CALLS_IN_FLIGHT`).
const PIPELINED_LIMIT: u64 = 4;

/// The most resident memory the server may reach while it is sent [`PIPELINED_CALLS`] calls of
/// 3.9 MiB without waiting for answers, in KiB: 48 MiB for each of the [`PIPELINED_LIMIT`]
/// requests it may hold at once (the message, its parsed arguments and intent, and a result that
/// repeats the topic four times, serialised) plus 64 MiB for the rest of the process. Measured in
/// a debug build: about 140 MiB; before the limit, the same flood peaked at 330 to 600 MiB.
const PIPELINED_MEMORY_BOUND_KIB: u64 = (PIPELINED_LIMIT * 48 + 64) * 1024;

/// The most bytes of audit log one call of a 3.9 MiB goal may add: its decision keeps a 1,024
/// character prefix of the goal and the whole goal's digest, its outcome no goal at all.
const AUDIT_BYTES_PER_CALL: u64 = 8 * 1024;

#[tokio::test]
async fn forty_pipelined_calls_of_3_9_mib_are_each_answered_in_bounded_memory() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::TempDir::new().expect("a temporary folder");
    let log = dir.path().join("audit.jsonl");
    let limit = PIPELINED_LIMIT.to_string();
    let mut server = RawServer::spawn_with(&[
        ("STAGE0_MAX_CALLS_IN_FLIGHT", &limit),
        ("STAGE0_AUDIT_LOG", log.to_str().expect("a UTF-8 path")),
    ]);
    server.initialize(1).await;
    let length = MAX_MESSAGE_BYTES - 100 * 1024;
    let calls: Vec<Vec<u8>> = (0..PIPELINED_CALLS)
        .map(|n| padded_call(100 + n, length))
        .collect();
    // Written while the answers are read: a client that does not wait for them.
    let mut stdin = server.take_stdin();
    let writer = tokio::spawn(async move {
        for call in calls {
            stdin.write_all(&call).await.expect("the server reads");
        }
        stdin
    });
    let mut answered = std::collections::HashSet::new();
    let mut executed = 0;
    while answered.len() < PIPELINED_CALLS as usize {
        let message = server.message().await.expect("an answer to each call");
        let id = message["id"].as_u64().expect("a response to a call");
        assert!(answered.insert(id), "{id} answered twice");
        // Each call runs, or is refused at once as one too many: none waits in a queue.
        if message["error"]["code"] != -32000 {
            let report = &message["result"]["structuredContent"];
            assert_eq!(
                report["executed"], true,
                "call {id} neither ran nor was refused"
            );
            executed += 1;
        }
        // The test keeps ids, not 16 MiB results.
        server.lines.clear();
    }
    let (peak, now) = server.memory_kib();
    assert!(
        peak < PIPELINED_MEMORY_BOUND_KIB,
        "peak resident memory {peak} KiB (now {now} KiB) is over {PIPELINED_MEMORY_BOUND_KIB} KiB"
    );
    assert!(executed >= 1, "no call ran");
    let stdin = common::bounded("the writer", writer)
        .await
        .expect("the writer finishes");
    drop(stdin);
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
    let logged = std::fs::metadata(&log).expect("the audit log").len();
    assert!(
        logged < executed * AUDIT_BYTES_PER_CALL,
        "{executed} calls of a 3.9 MiB goal added {logged} bytes of audit log"
    );
}
