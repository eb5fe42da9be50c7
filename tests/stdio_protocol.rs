//! The built server binary over raw stdio: JSON-RPC lines in, JSON-RPC lines out.
//!
//! These tests check what an MCP client library would hide: that stdout carries nothing but
//! JSON-RPC 2.0, that logs go to stderr, that a garbled line does not kill the server, and that
//! the process exits cleanly (status 0) when stdin closes or SIGTERM arrives. Simulator mode
//! only; every wait is bounded (see `common::BOUND`).

mod common;

use common::RawServer;
use serde_json::json;

fn research(id: u64) -> serde_json::Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": "research-topic", "arguments": {"topic": "Rust async runtimes"}}
    })
}

#[tokio::test]
async fn malformed_json_line_does_not_stop_the_server() {
    let mut server = RawServer::spawn();
    server.send_line("{not json").await;
    let initialize = server.initialize(1).await;
    assert_eq!(
        initialize["result"]["serverInfo"]["name"],
        "stage0-authorization-server"
    );

    server.send_line("{not json").await;
    server.send_line(r#"{"jsonrpc": "2.0", "id": "#).await;
    server.send(research(2)).await;
    let answer = server.response(2).await;
    assert_eq!(answer["result"]["structuredContent"]["verdict"], "ALLOW");
    assert_eq!(answer["result"]["structuredContent"]["executed"], true);

    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
}

#[tokio::test]
async fn every_stdout_line_is_a_json_rpc_2_0_message() {
    let mut server = RawServer::spawn();
    server.initialize(1).await;
    let tools = server.request(2, "tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"].as_array().map(Vec::len), Some(6));
    server.send(research(3)).await;
    server.response(3).await;
    let unknown_tool = server
        .request(
            4,
            "tools/call",
            json!({"name": "delete-everything", "arguments": {}}),
        )
        .await;
    assert_eq!(unknown_tool["error"]["code"], -32602);
    let unknown_method = server.request(5, "no/such/method", json!({})).await;
    assert_eq!(unknown_method["error"]["code"], -32601);
    let invalid = server
        .request(
            6,
            "tools/call",
            json!({"name": "retry-workflow", "arguments": {"workflowId": "W", "retryCount": -1}}),
        )
        .await;
    assert_eq!(invalid["result"]["isError"], true);
    server
        .send(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
        .await;
    server.response(7).await;

    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
    // `RawServer` already parsed each line as JSON-RPC 2.0; check nothing else slipped in.
    assert!(exit.stdout_lines.len() >= 7, "{:#?}", exit.stdout_lines);
    for line in &exit.stdout_lines {
        common::assert_json_rpc(line);
    }
}

#[tokio::test]
async fn logs_go_to_stderr_and_the_start_up_line_names_the_simulator_mode() {
    let mut server = RawServer::spawn();
    server.initialize(1).await;
    server.send(research(2)).await;
    server.response(2).await;
    server.close_stdin();
    let exit = server.exit().await;

    let start_up = exit
        .stderr
        .lines()
        .find(|line| line.contains("api_key_set="))
        .unwrap_or_else(|| panic!("no start-up line on stderr:\n{}", exit.stderr));
    assert!(start_up.contains("simulator"), "{start_up}");
    assert!(
        start_up.contains("base_url=https://api.signalpulse.org"),
        "{start_up}"
    );
    assert!(start_up.contains("timeout_ms=5000"), "{start_up}");
    assert!(start_up.contains("api_key_set=false"), "{start_up}");
    for line in &exit.stdout_lines {
        assert!(
            !line.contains("api_key_set"),
            "a log line on stdout: {line}"
        );
    }
}

#[tokio::test]
async fn server_exits_zero_when_stdin_closes_after_initialize() {
    let mut server = RawServer::spawn();
    server.initialize(1).await;
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
}

#[tokio::test]
async fn server_exits_zero_when_stdin_closes_before_initialize() {
    let mut server = RawServer::spawn();
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
    assert!(exit.stdout_lines.is_empty(), "{:#?}", exit.stdout_lines);
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_server_with_a_success_status() {
    let mut server = RawServer::spawn();
    server.initialize(1).await;
    // A served call shows the runtime is up, signal handler included, before the signal is sent.
    server.send(research(2)).await;
    server.response(2).await;

    let kill = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.pid().to_string())
        .status();
    let kill = common::bounded("kill -TERM", kill)
        .await
        .expect("`kill` runs");
    assert!(kill.success(), "kill -TERM failed: {kill:?}");

    // stdin stays open: only the signal can make the server stop.
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
}

#[tokio::test]
async fn a_tool_call_that_repeats_an_argument_key_is_invalid_and_nothing_is_checked_or_run() {
    let dir = tempfile::TempDir::new().expect("a temporary folder");
    let log = dir.path().join("audit.jsonl");
    let mut server = RawServer::spawn_with(&[("STAGE0_AUDIT_LOG", log.to_str().unwrap())]);
    server.initialize(1).await;
    // `serde_json` keeps the last of a repeated key: `b` would have been researched, `leak`
    // published, and a retry count of 0 sent.
    let lines = [
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"research-topic","arguments":{"topic":"a","topic":"b"}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"publish-content","arguments":{"channel":"blog","content":"ok","content":"leak"}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"check-authorization","arguments":{"goal":"g","sideEffects":[],"retryCount":9,"retryCount":0}}}"#,
    ];
    for (id, (line, key)) in (2..).zip(lines.iter().zip(["topic", "content", "retryCount"])) {
        server.send_line(line).await;
        let answer = server.response(id).await;
        let result = &answer["result"];
        assert_eq!(result["isError"], true, "{answer}");
        assert!(
            result.get("structuredContent").is_none(),
            "nothing was checked: {answer}"
        );
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(
            text.ends_with(&format!(
                ": the arguments repeat the key `{key}` (at `/{key}`): a key may appear only \
                 once in an object"
            )),
            "{text}"
        );
        assert!(text.starts_with("invalid arguments for `"), "{text}");
    }
    // The tool's name twice: which tool was meant is not known, so the request is refused.
    server
        .send_line(
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"research-topic","name":"publish-content","arguments":{"topic":"x"}}}"#,
        )
        .await;
    let refused = server.response(5).await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    // Distinct keys in different objects are fine, and the session goes on.
    server.send(research(6)).await;
    let answer = server.response(6).await;
    assert_eq!(answer["result"]["structuredContent"]["executed"], true);
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);

    let records = common::audit_records(&log);
    let kinds: Vec<String> = records
        .iter()
        .map(|r| format!("{} {}", r["kind"], r.get("status").unwrap_or(&json!(""))))
        .collect();
    assert_eq!(
        kinds,
        [
            r#""outcome" "invalid_arguments""#,
            r#""outcome" "invalid_arguments""#,
            r#""outcome" "invalid_arguments""#,
            r#""decision" """#,
            r#""outcome" "ok""#,
        ],
        "no decision for a call that repeats a key"
    );
}
