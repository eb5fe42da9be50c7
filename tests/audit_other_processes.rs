//! The audit log against other processes and other local users: a lock someone else holds on the
//! file, a symbolic link planted at its path, and lines someone else appended to it.
//!
//! Each test drives the built binary (raw JSON-RPC lines, `tests/common`) with `STAGE0_AUDIT_LOG`
//! in a temporary folder, and plays the other process itself. Every wait is bounded; nothing
//! sleeps.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};

use common::RawServer;
use serde_json::{Value, json};
use stage0_guard::audit::{AUDIT_UNAVAILABLE, LOCK_WAIT};
use tempfile::TempDir;

/// A `tools/call` of `research-topic` (simulator: `ALLOW`) as request `id`.
fn research(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "research-topic", "arguments": {"topic": "Rust"}}
    })
}

/// A temporary folder and the path of an audit log in it (not created).
fn temp_log() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("a temporary folder");
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

/// A simulator server writing its audit log at `path`, initialised (request 0).
async fn server_on(path: &Path) -> RawServer {
    let path = path.to_str().expect("a UTF-8 path");
    let mut server = RawServer::spawn_with(&[("STAGE0_AUDIT_LOG", path)]);
    server.initialize(0).await;
    server
}

/// The verdict of a `tools/call` response and the code of its first issue.
fn verdict(response: &Value) -> (&str, &str) {
    let report = &response["result"]["structuredContent"];
    (
        report["verdict"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}")),
        report["issues"][0]["code"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn a_lock_held_by_another_process_denies_calls_after_the_wait_and_the_server_still_exits() {
    let (_dir, path) = temp_log();
    let mut server = server_on(&path).await;
    server.send(research(1)).await;
    assert_eq!(verdict(&server.response(1).await).0, "ALLOW");

    // Another user who can read the file takes the lock: a read-only descriptor is enough.
    let holder = std::fs::File::open(&path).expect("the log is readable");
    holder.lock().expect("the test takes the lock");
    server.send(research(2)).await;
    let denied = server.response(2).await;
    assert_eq!(verdict(&denied), ("DENY", AUDIT_UNAVAILABLE), "{denied}");
    let message = denied["result"]["structuredContent"]["issues"][0]["message"].to_string();
    assert!(message.contains("locked by another process"), "{message}");
    assert!(
        message.contains(&format!("{} s", LOCK_WAIT.as_secs())),
        "{message}"
    );

    // The lock released, the log goes on: a lock not had in time stops nothing.
    holder.unlock().expect("the test releases the lock");
    server.send(research(3)).await;
    assert_eq!(verdict(&server.response(3).await).0, "ALLOW");

    // Held again, with a call waiting on it: the end of input still ends the server.
    holder.lock().expect("the test takes the lock again");
    server.send(research(4)).await;
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
    drop(holder);
    let records = common::audit_records(&path);
    let allowed = records
        .iter()
        .filter(|r| r.get("verdict") == Some(&json!("ALLOW")))
        .count();
    assert_eq!(allowed, 2, "{records:#?}");
}

#[tokio::test]
async fn a_log_path_that_is_a_symbolic_link_is_not_followed_and_every_call_is_denied() {
    let (dir, path) = temp_log();
    // One link to an existing file someone wants overwritten, one to a file they want created.
    let existing = dir.path().join("precious");
    std::fs::write(&existing, b"").expect("the target is written");
    let missing = dir.path().join("made-for-them");
    for target in [&existing, &missing] {
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, &path).expect("a symbolic link");
        let mut server = server_on(&path).await;
        server.send(research(1)).await;
        let denied = server.response(1).await;
        assert_eq!(verdict(&denied), ("DENY", AUDIT_UNAVAILABLE), "{denied}");
        let reason = denied["result"]["structuredContent"]["reason"].to_string();
        assert!(reason.contains("symbolic link"), "{reason}");
        server.close_stdin();
        let exit = server.exit().await;
        assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
    }
    assert_eq!(
        std::fs::read(&existing).expect("the target is readable"),
        b""
    );
    assert!(!missing.exists(), "a file was created through the link");
}

/// The `seq` and `hash` of the last record of the log at `path`.
fn head(path: &Path) -> (u64, String) {
    let records = common::audit_records(path);
    let last = records.last().expect("a record");
    (
        last["seq"].as_u64().expect("a seq"),
        last["hash"].as_str().expect("a hash").to_owned(),
    )
}

/// Appends `bytes` to the file at `path`, as another process would.
fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("the log opens for appending");
    file.write_all(bytes).expect("the bytes are appended");
}

/// A `tools/call` of `retry-workflow` for `workflow`, claiming no earlier retry.
fn retry(id: u64, workflow: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "retry-workflow",
                   "arguments": {"workflowId": workflow, "retryCount": 0}}
    })
}

/// Runs `mcp-server-stage0 audit show PATH`: its stdout.
async fn audit_show(path: &Path) -> String {
    let output = common::bounded(
        "audit show",
        tokio::process::Command::new(common::BIN)
            .args(["audit", "show"])
            .arg(path)
            .env_clear()
            .output(),
    )
    .await
    .expect("audit show runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn five_forged_lines_appended_by_another_process_never_make_a_new_workflow_defer() {
    let (_dir, path) = temp_log();
    let mut server = server_on(&path).await;
    server.send(research(1)).await;
    assert_eq!(verdict(&server.response(1).await).0, "ALLOW");

    // Five decision records that continue `seq` and `prev`, as the running server checked them
    // before, each counting a retry of a workflow the server has never seen, with made-up hashes.
    let (seq, mut prev) = head(&path);
    let never_seen = stage0_guard::ledger::WorkflowId::new("never-seen").expect("a valid id");
    let key = hex::encode(stage0_guard::ledger::AttemptLedger::key(&never_seen));
    let mut forged = Vec::new();
    for n in 1..=5 {
        let hash = format!("{:064x}", seq + n);
        let line = json!({
            "kind": "decision", "seq": seq + n, "prev": prev, "hash": hash,
            "ts": "2026-01-01T00:00:00Z", "tool": "retry-workflow", "workflow_sha256": key,
            "verdict": "DEFER", "decision": "DEFER",
        });
        let Value::Object(line) = line else {
            unreachable!("an object literal")
        };
        forged.extend_from_slice(&stage0_guard::audit::chain::canonical(&line));
        forged.push(b'\n');
        prev = hash;
    }
    append(&path, &forged);

    // The next write catches up with them (it used to count the five retries), then the
    // workflow's first call.
    server.send(research(2)).await;
    let caught_up = server.response(2).await;
    server.send(retry(3, "never-seen")).await;
    let answer = server.response(3).await;
    assert_ne!(
        verdict(&answer).0,
        "DEFER",
        "the forged lines were counted: {answer}"
    );
    // The log refuses to go on after lines it cannot verify: both calls fail closed.
    for answer in [caught_up, answer] {
        assert_eq!(verdict(&answer), ("DENY", AUDIT_UNAVAILABLE), "{answer}");
        let reason = answer["result"]["structuredContent"]["reason"].to_string();
        assert!(reason.contains("`hash` does not match"), "{reason}");
    }
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
}

#[tokio::test]
async fn a_line_without_its_newline_appended_by_another_process_is_never_shown_as_a_record() {
    let (_dir, path) = temp_log();
    let mut server = server_on(&path).await;
    server.send(research(1)).await;
    assert_eq!(verdict(&server.response(1).await).0, "ALLOW");

    // A decision that would verify, even, but without its newline: not a crash's torn write,
    // since this server is running.
    let (seq, hash) = head(&path);
    let Value::Object(record) = json!({
        "kind": "decision", "tool": "publish-content", "verdict": "ALLOW", "decision": "GO",
        "reason": "FORGED approval",
    }) else {
        unreachable!()
    };
    let sealed = stage0_guard::audit::chain::seal(record, seq + 1, "t".to_owned(), &hash);
    append(&path, &sealed.line);
    server.send(research(2)).await;
    let refused = server.response(2).await;
    assert_eq!(verdict(&refused), ("DENY", AUDIT_UNAVAILABLE), "{refused}");
    server.close_stdin();
    assert!(server.exit().await.status.success());
    let shown = audit_show(&path).await;
    assert!(shown.contains("torn line of"), "{shown}");
    assert!(
        !shown.contains("FORGED") && !shown.contains("publish-content"),
        "{shown}"
    );

    // A restart recovers it as what a crash leaves: kept, named, and still not a record.
    let mut server = server_on(&path).await;
    server.send(research(3)).await;
    assert_eq!(verdict(&server.response(3).await).0, "ALLOW");
    server.close_stdin();
    assert!(server.exit().await.status.success());
    let shown = audit_show(&path).await;
    assert!(shown.contains("kept by recovery record"), "{shown}");
    assert!(
        !shown.contains("FORGED") && !shown.contains("publish-content"),
        "{shown}"
    );
}
