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
