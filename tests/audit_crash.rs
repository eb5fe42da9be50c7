//! The audit log's guarantee table (`docs/audit-log.md`), row by row, for a crash: the built
//! server binary is killed with SIGKILL at each point of a call that a test can reach, then
//! started again on the same log, and `mcp-server-stage0 audit verify` reads what is left.
//!
//! Before the decision's commit (the policy decision point has not answered): the log holds
//! nothing of the call. After it (the verdict is durable, the call not over): the decision is
//! there without an outcome, and the restart names the call in an `unfinished` record. Between
//! the result and the outcome's commit (the outcome is not waited for): the client has its
//! answer, and the log holds either the outcome or, after the restart, the `unfinished` record
//! naming the call; whichever a kill's timing gives, it never holds neither. The log verifies
//! after every restart. A server that starts while another on the same file is mid-call names
//! that call too, and the outcome that follows still verifies. Every wait is bounded; nothing
//! sleeps.

mod common;
mod fake_stage0;

use std::path::Path;

use common::{RawServer, bounded, call, live_env, temp_log, text};
use fake_stage0::{FakeStage0, Reply};
use serde_json::{Map, Value, json};
use stage0_guard::audit::verify::{self, Verified};

type Record = Map<String, Value>;

/// A string field of a record ("" when absent).
fn field<'a>(record: &'a Record, name: &str) -> &'a str {
    record.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The library's verdict on the log at `path`, failing the test unless it verifies.
fn verified(path: &Path) -> Verified {
    verify::verify_file(path)
        .expect("the log is readable")
        .unwrap_or_else(|broken| panic!("the chain breaks: {broken}"))
}

/// Runs `mcp-server-stage0 audit verify PATH` and checks that it exits 0 and names
/// `unfinished` calls of crashes and `open` calls still without an outcome.
async fn assert_verifies(path: &Path, unfinished: u64, open: u64) {
    let output = bounded(
        "audit verify",
        tokio::process::Command::new(common::BIN)
            .args(["audit", "verify", text(path)])
            .env_clear()
            .output(),
    )
    .await
    .expect("audit verify runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let expected =
        format!("{unfinished} unfinished call(s) named, {open} call(s) without an outcome yet");
    assert!(stdout.contains(&expected), "{stdout}");
}

/// Starts the server on the log again, makes one call (an `ALLOW`) and lets it exit cleanly.
async fn restart_with_one_call(env: &[(&str, &str)]) {
    let mut server = RawServer::spawn_with(env);
    server.initialize(0).await;
    let answer = server
        .request(1, "tools/call", research(1)["params"].clone())
        .await;
    assert_eq!(
        answer["result"]["structuredContent"]["executed"], true,
        "{answer}"
    );
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// A call of `research-topic`, which the simulator allows.
fn research(id: u64) -> Value {
    call(
        id,
        "research-topic",
        json!({"topic": format!("topic {id}")}),
    )
}

/// The records of the log at `path`: its whole lines that are JSON objects (a torn last line, or
/// a torn line a recovery record names, is not one).
fn records(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).expect("the audit log is readable");
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| line.ends_with(b"\n"))
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// The `call_ids` of every `unfinished` record in the log at `path`.
fn named_unfinished(path: &Path) -> Vec<String> {
    records(path)
        .iter()
        .filter(|record| field(record, "kind") == "unfinished")
        .flat_map(|record| record["call_ids"].as_array().cloned().unwrap_or_default())
        .map(|call| call.as_str().expect("a call id").to_owned())
        .collect()
}

#[tokio::test]
async fn killed_before_the_decision_is_committed_the_log_holds_nothing_of_the_call() {
    let (_dir, path) = temp_log();
    // The policy decision point never answers: the call waits for its verdict when killed.
    let stage0 = FakeStage0::start(|_| Reply::Hang).await;
    let mut env = live_env(stage0.base_url(), "60000");
    env.push(("STAGE0_AUDIT_LOG", text(&path)));
    let mut server = RawServer::spawn_with(&env);
    server.initialize(0).await;
    server.send(research(1)).await;
    bounded(
        "the check to reach Stage0",
        stage0.wait_until(|exchanges| !exchanges.is_empty()),
    )
    .await;
    server.kill().await;
    let killed = std::fs::read(&path).unwrap_or_default();
    assert!(killed.is_empty(), "{}", String::from_utf8_lossy(&killed));

    let env = [("STAGE0_AUDIT_LOG", text(&path))];
    restart_with_one_call(&env).await;
    assert!(named_unfinished(&path).is_empty());
    assert_eq!(verified(&path).records, 2);
    assert_verifies(&path, 0, 0).await;
}

/// Starts a server that a client able to answer elicitation drives, and makes a call that the
/// simulator defers; returns once the server asks the human, with the request's id. The call's
/// decision is durable by then, and the call waits for the answer.
async fn deferred_call_waiting_for_a_human(env: &[(&str, &str)]) -> (RawServer, Value) {
    let mut server = RawServer::spawn_with(env);
    server
        .request(
            0,
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {"elicitation": {}},
                "clientInfo": {"name": "raw-test-client", "version": "0"}
            }),
        )
        .await;
    server
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    let deferred = json!({"workflowId": "nightly-etl", "retryCount": 5});
    server.send(call(1, "retry-workflow", deferred)).await;
    loop {
        let message = server.message().await.expect("the server asks the human");
        if message["method"] == "elicitation/create" {
            return (server, message["id"].clone());
        }
    }
}

#[tokio::test]
async fn killed_after_the_decision_is_committed_the_restart_names_the_call_unfinished() {
    let (_dir, path) = temp_log();
    let env = [("STAGE0_AUDIT_LOG", text(&path))];
    // The body would run after the human's answer: the kill comes between the decision and it.
    let (server, _) = deferred_call_waiting_for_a_human(&env).await;
    server.kill().await;
    let killed = records(&path);
    let kinds: Vec<&str> = killed.iter().map(|r| field(r, "kind")).collect();
    assert_eq!(kinds, ["decision"], "{killed:#?}");
    assert_eq!(field(&killed[0], "verdict"), "DEFER");
    let call_id = field(&killed[0], "call_id").to_owned();
    assert_eq!(verified(&path).open, 1);

    restart_with_one_call(&env).await;
    assert_eq!(named_unfinished(&path), [call_id]);
    assert_verifies(&path, 1, 0).await;
    // A second restart has nothing more to name.
    restart_with_one_call(&env).await;
    assert_verifies(&path, 1, 0).await;
}

/// How many times the last test kills the server right after a result.
const KILLS_AFTER_A_RESULT: u64 = 12;

#[tokio::test]
async fn killed_after_a_result_the_log_holds_its_outcome_or_names_the_call_unfinished() {
    let (_dir, path) = temp_log();
    let (mut lost, mut named) = (0, 0);
    for round in 1..=KILLS_AFTER_A_RESULT {
        let env = [("STAGE0_AUDIT_LOG", text(&path))];
        let mut server = RawServer::spawn_with(&env);
        server.initialize(0).await;
        let answer = server
            .request(1, "tools/call", research(round)["params"].clone())
            .await;
        server.kill().await;
        let request_id = answer["result"]["structuredContent"]["request_id"]
            .as_str()
            .expect("a verdict")
            .to_owned();
        let killed = records(&path);
        let decision = killed
            .iter()
            .find(|r| field(r, "kind") == "decision" && field(r, "request_id") == request_id)
            .expect("the decision of a call that ran is on disk");
        let call_id = field(decision, "call_id").to_owned();
        let has_outcome = killed
            .iter()
            .any(|r| field(r, "kind") == "outcome" && field(r, "call_id") == call_id);
        lost += u64::from(!has_outcome);

        restart_with_one_call(&env).await;
        let is_named = named_unfinished(&path).contains(&call_id);
        named += u64::from(is_named);
        assert_ne!(
            has_outcome, is_named,
            "round {round}: the outcome must be on disk, or else the call named unfinished"
        );
        assert_eq!(verified(&path).open, 0);
        assert_verifies(&path, named, 0).await;
    }
    eprintln!("{lost} of {KILLS_AFTER_A_RESULT} kills after a result lost its outcome");
}

#[tokio::test]
async fn a_call_another_server_is_in_the_middle_of_is_named_and_its_outcome_still_verifies() {
    let (_dir, path) = temp_log();
    let env = [("STAGE0_AUDIT_LOG", text(&path))];
    let (mut first, question) = deferred_call_waiting_for_a_human(&env).await;
    // A second server starts on the same file while the first one's call waits.
    restart_with_one_call(&env).await;
    let named = named_unfinished(&path);
    assert_eq!(named.len(), 1, "{named:?}");

    // The human declines; the first server's call ends and its outcome follows the naming.
    first
        .send(json!({"jsonrpc": "2.0", "id": question, "result": {"action": "decline"}}))
        .await;
    let answer = first.response(1).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    first.close_stdin();
    let exit = first.exit().await;
    assert!(exit.status.success(), "{}", exit.stderr);
    let outcome = records(&path)
        .into_iter()
        .rfind(|r| field(r, "kind") == "outcome" && field(r, "call_id") == named[0])
        .expect("the named call's outcome, written after it was named");
    assert_eq!(field(&outcome, "status"), "blocked");
    assert_verifies(&path, 1, 0).await;
}
