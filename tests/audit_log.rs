//! The audit log end to end: the built server binary writes it, `mcp-server-stage0 audit verify`
//! and `audit show` read it.
//!
//! Each test drives the real binary (raw JSON-RPC lines or an rmcp session, see `tests/common`)
//! with `STAGE0_AUDIT_LOG` in a temporary folder, then reads the file it left. 200 calls in flight
//! leave one whole, contiguous chain that verifies; a changed byte, a deleted, swapped or forged
//! line is named by `audit verify`; a server killed with SIGKILL mid-load has the `ALLOW` decision
//! of every body that ran on disk, and a restart continues the chain (recording a torn last line);
//! a log that cannot be written denies every call (`AUDIT_UNAVAILABLE`); the retry ledger
//! survives a restart; the API key never reaches the file; two servers on one log keep one chain;
//! `audit show` selects the records of one call. Every wait is bounded; nothing sleeps.

mod common;
mod fake_stage0;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    BIN, Outcome, RawServer, SECRET_KEY, STAND_IN, Session, audit_records, bounded, call, live_env,
    temp_log, text,
};
use fake_stage0::{FakeStage0, Reply};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use stage0_guard::audit::chain::{self, GENESIS};
use stage0_guard::audit::verify::{self, Verified};
use tempfile::TempDir;
use tokio::task::JoinSet;

type Record = Map<String, Value>;

/// Call number `n` of a mixed load: `ALLOW`s, `DENY`s, report-only checks, retries (from the
/// sixth per workflow, `DEFER`s the client cannot be asked about) and invalid arguments.
fn mixed_call(n: u64) -> Value {
    let (tool, arguments) = match n % 10 {
        1 | 6 => (
            "publish-content",
            json!({"content": "post", "channel": "blog"}),
        ),
        2 | 7 => (
            "check-authorization",
            json!({"goal": format!("Summarize sales report {n}"), "sideEffects": []}),
        ),
        3 | 8 => (
            "retry-workflow",
            json!({"workflowId": format!("etl-{}", n % 3), "retryCount": 0}),
        ),
        4 => ("research-topic", json!({"topic": n})),
        _ => ("research-topic", json!({"topic": format!("topic {n}")})),
    };
    call(n, tool, arguments)
}

/// Reads stdout until `count` responses arrived; they are returned by request id.
async fn responses(server: &mut RawServer, count: usize) -> HashMap<u64, Value> {
    let mut answers = HashMap::new();
    while answers.len() < count {
        let message = server.message().await.expect("the server answers");
        if let Some(id) = message["id"].as_u64() {
            assert!(
                answers.insert(id, message).is_none(),
                "request {id} answered twice"
            );
        }
    }
    answers
}

/// The `structuredContent` of a `tools/call` response (`Null` for invalid arguments).
fn report(response: &Value) -> &Value {
    &response["result"]["structuredContent"]
}

/// A string field of a record ("" when absent).
fn field<'a>(record: &'a Record, name: &str) -> &'a str {
    record.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Runs `mcp-server-stage0 audit ARGS` in an empty environment: its exit code and stdout.
async fn audit_command(args: &[&str]) -> (i32, String) {
    let output = bounded(
        "the audit command",
        tokio::process::Command::new(BIN)
            .arg("audit")
            .args(args)
            .env_clear()
            .output(),
    )
    .await
    .expect("the audit command runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    (output.status.code().expect("an exit code"), stdout)
}

/// The library's verdict on the log at `path`, failing the test unless it verifies.
fn verified(path: &Path) -> Verified {
    verify::verify_file(path)
        .expect("the log is readable")
        .unwrap_or_else(|broken| panic!("the chain breaks: {broken}"))
}

/// `audit verify PATH` of a log that verifies; the record count it printed is `records`.
async fn assert_verifies(path: &Path, records: u64) {
    let (code, stdout) = audit_command(&["verify", text(path)]).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with(&format!("ok: {}: {records} records, ", text(path))),
        "{stdout}"
    );
}

/// `audit verify PATH` of a log that must not verify: the line and `seq` it names as the first
/// bad record.
async fn first_break(path: &Path) -> (usize, Option<u64>) {
    let (code, stdout) = audit_command(&["verify", text(path)]).await;
    assert_eq!(code, 1, "{stdout}");
    let (_, at) = stdout
        .split_once(": line ")
        .unwrap_or_else(|| panic!("no line named: {stdout}"));
    let (line, rest) = at
        .split_once([' ', ':'])
        .expect("a line number and a reason");
    let seq = rest
        .strip_prefix("(seq ")
        .and_then(|rest| rest.split_once(')'))
        .map(|(seq, _)| seq.parse().expect("a seq"));
    (line.parse().expect("a line number"), seq)
}

#[tokio::test]
async fn two_hundred_concurrent_calls_leave_one_whole_contiguous_chain_that_verifies() {
    const CALLS: u64 = 200;
    let (_dir, path) = temp_log();
    // All 200 in flight at once: over the default limit (64), which would refuse some.
    let mut server = RawServer::spawn_with(&[
        ("STAGE0_AUDIT_LOG", text(&path)),
        ("STAGE0_MAX_CALLS_IN_FLIGHT", "200"),
    ]);
    server.initialize(0).await;
    for n in 1..=CALLS {
        server.send(mixed_call(n)).await;
    }
    let answers = responses(&mut server, CALLS as usize).await;
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{}", exit.stderr);

    let records = audit_records(&path);
    assert!(
        records.len() >= 2 * CALLS as usize,
        "{} records",
        records.len()
    );
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], index + 1, "{record:?}");
    }
    let verified = verified(&path);
    assert_eq!(verified.records, records.len() as u64);
    assert_verifies(&path, verified.records).await;

    // Each call: one `call_id`, exactly one outcome, a decision unless its arguments were invalid.
    let mut calls: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in &records {
        calls
            .entry(field(record, "call_id"))
            .or_default()
            .push(record);
    }
    assert_eq!(calls.len(), CALLS as usize);
    for (call_id, trail) in &calls {
        let kinds: Vec<&str> = trail.iter().map(|r| field(r, "kind")).collect();
        assert_eq!(
            kinds.iter().filter(|&&k| k == "outcome").count(),
            1,
            "{call_id}: {kinds:?}"
        );
        assert_eq!(kinds.last(), Some(&"outcome"), "{call_id}: {kinds:?}");
        let outcome = trail.last().expect("an outcome");
        let decided = kinds.contains(&"decision");
        assert_eq!(
            decided,
            outcome["status"] != "invalid_arguments",
            "{call_id}: {kinds:?}"
        );
    }
    // The mix, by outcome: per ten calls, three research ALLOWs that run, two publish DENYs,
    // two report-only checks, one call with invalid arguments and two retries, which run five
    // times per workflow (3 workflows) and are deferred from then on.
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        let kind = field(record, "kind");
        let key = if kind == "outcome" {
            field(record, "status")
        } else {
            kind
        };
        *tally.entry(key).or_default() += 1;
    }
    let expected = [
        ("ok", 60 + 15),
        ("blocked", 40 + 25),
        ("reported", 40),
        ("invalid_arguments", 20),
        ("decision", 180),
        ("approval", 25),
    ];
    assert_eq!(tally, HashMap::from(expected));

    // Each answer the client got matches its call's records.
    let decisions: HashMap<&str, &Record> = records
        .iter()
        .filter(|r| field(r, "kind") == "decision")
        .map(|r| (field(r, "request_id"), r))
        .collect();
    for (id, answer) in &answers {
        let report = report(answer);
        if report.is_null() {
            continue; // invalid arguments: checked above through the outcome records
        }
        let request_id = report["request_id"].as_str().expect("a request id");
        let decision = decisions
            .get(request_id)
            .unwrap_or_else(|| panic!("no decision record for request {id}: {answer}"));
        assert_eq!(decision["verdict"], report["verdict"], "request {id}");
        let outcome = calls[field(decision, "call_id")]
            .last()
            .expect("an outcome");
        assert_eq!(outcome["executed"], report["executed"], "request {id}");
        assert_eq!(outcome["request_id"], report["request_id"], "request {id}");
    }
}

/// How many `audit verify` commands the tamper test runs at once.
const PARALLEL_COMMANDS: usize = 8;

/// A log written by a real server: `calls` calls, alternately `ALLOW` (research) and `DENY`
/// (publish), so two records each; its path and the folder that holds it.
async fn log_of_calls(calls: usize) -> (TempDir, PathBuf, Vec<Outcome>) {
    let (dir, path) = temp_log();
    let session = Session::start(&[("STAGE0_AUDIT_LOG", text(&path))]).await;
    let mut outcomes = Vec::new();
    for n in 0..calls {
        let outcome = if n.is_multiple_of(2) {
            session
                .call("research-topic", json!({"topic": format!("topic {n}")}))
                .await
        } else {
            session
                .call(
                    "publish-content",
                    json!({"content": "post", "channel": "blog"}),
                )
                .await
        };
        outcomes.push(outcome);
    }
    session.stop().await;
    (dir, path, outcomes)
}

/// The lines of a log, each with its newline.
fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[tokio::test]
async fn audit_verify_names_the_first_bad_record_of_an_edited_log() {
    let (dir, path, _) = log_of_calls(10).await;
    let original = std::fs::read(&path).expect("the log is readable");
    let lines = lines_of(&original);
    let n = lines.len();
    assert_eq!(n, 20);
    assert_verifies(&path, n as u64).await;
    let tampered = dir.path().join("tampered.jsonl");
    let write = |bytes: &[u8]| std::fs::write(&tampered, bytes).expect("the copy is written");

    // (a) One byte changed: every byte of line 4 (an outcome record, newline included), and
    // every 61st byte of the file.
    let line_4_start: usize = lines[..3].iter().map(Vec::len).sum();
    let positions: Vec<usize> = (line_4_start..line_4_start + lines[3].len())
        .chain((0..original.len()).step_by(61))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let original = Arc::new(original);
    for batch in positions.chunks(PARALLEL_COMMANDS) {
        let mut checks = JoinSet::new();
        for &at in batch {
            let (original, copy) = (
                Arc::clone(&original),
                dir.path().join(format!("{at}.jsonl")),
            );
            checks.spawn(async move {
                let mut bytes = original.to_vec();
                bytes[at] ^= 1 << (at % 8);
                std::fs::write(&copy, bytes).expect("the copy is written");
                // The line the byte is on, or the line it ended when it was a newline.
                let line = original[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                let (named, _) = first_break(&copy).await;
                assert_eq!(
                    named, line,
                    "byte {at} changed from {:?}",
                    original[at] as char
                );
            });
        }
        while let Some(checked) = checks.join_next().await {
            checked.expect("the check passes");
        }
    }

    // (b) A line deleted: the next record is the first bad one (its seq is one too high).
    for deleted in 1..n {
        let mut kept = lines.clone();
        kept.remove(deleted - 1);
        write(&kept.concat());
        assert_eq!(
            first_break(&tampered).await,
            (deleted, Some(deleted as u64 + 1))
        );
    }
    // The last line deleted leaves a shorter chain that holds: only the count and last hash
    // `audit verify` prints, kept elsewhere, show it, and the call whose outcome it was, now
    // without one (which a running server would be in the middle of).
    write(&lines[..n - 1].concat());
    let (code, stdout) = audit_command(&["verify", text(&tampered)]).await;
    assert_eq!(code, 0, "{stdout}");
    let last_hash = |line: &[u8]| {
        chain::check(&line[..line.len() - 1])
            .expect("a record")
            .hash
    };
    assert_eq!(
        stdout,
        format!(
            "ok: {}: {} records, 0 torn line(s) recovered, 0 unfinished call(s) named, 1 call(s) \
             without an outcome yet, last hash {}\n",
            text(&tampered),
            n - 1,
            last_hash(&lines[n - 2])
        )
    );
    assert_ne!(last_hash(&lines[n - 2]), last_hash(&lines[n - 1]));

    // (c) Two lines swapped: the first of the two is the first bad record.
    for (first, second) in [(1, 2), (5, 6), (3, 10), (1, n), (n - 1, n)] {
        let mut swapped = lines.clone();
        swapped.swap(first - 1, second - 1);
        write(&swapped.concat());
        assert_eq!(first_break(&tampered).await, (first, Some(second as u64)));
    }

    // (d) A forged line appended: a real record with its content changed, resealed as the next
    // seq, but after the wrong record.
    let mut forged: Record =
        serde_json::from_slice(&lines[2][..lines[2].len() - 1]).expect("a record");
    forged.insert("goal".to_owned(), "Research and summarize: forged".into());
    forged.insert("verdict".to_owned(), "ALLOW".into());
    let next = n as u64 + 1;
    let ts = || "2026-11-30T18:00:00.000000Z".to_owned();
    for prev in [GENESIS.to_owned(), last_hash(&lines[n - 2])] {
        let sealed = chain::seal(forged.clone(), next, ts(), &prev);
        write(&[original.as_slice(), &sealed.line, b"\n"].concat());
        assert_eq!(first_break(&tampered).await, (n + 1, Some(next)));
    }
    // The same forgery sealed after the true last record holds: the `prev` is what gave it away.
    let sealed = chain::seal(forged, next, ts(), &last_hash(&lines[n - 1]));
    write(&[original.as_slice(), &sealed.line, b"\n"].concat());
    assert_verifies(&tampered, next).await;
}

/// The rounds of the SIGKILL test: after how many answers the server is killed, and
/// `STAGE0_AUDIT_SYNC` (a decision reaches the file before its body runs either way).
const KILL_ROUNDS: [(usize, &str); 6] = [
    (1, "on"),
    (7, "off"),
    (30, "on"),
    (80, "off"),
    (150, "on"),
    (300, "off"),
];
/// How many calls the SIGKILL test keeps in flight.
const IN_FLIGHT: u64 = 64;
/// The round after whose kill the test cuts the last line in half, as a kill in the middle of a
/// write would leave it, so that the restart's recovery runs whether or not a kill tore a line.
const CUT_ROUND: usize = 80;

/// Call number `n` of a plain load: three `ALLOW`s (bodies that run) to one `DENY`.
fn allow_or_deny_call(n: u64) -> Value {
    if n.is_multiple_of(4) {
        call(
            n,
            "publish-content",
            json!({"content": "post", "channel": "blog"}),
        )
    } else {
        call(n, "research-topic", json!({"topic": format!("topic {n}")}))
    }
}

/// The `decision` records among the whole lines of `bytes` (a torn last line, and torn lines
/// that recovery records name, are skipped): their verdicts by `request_id`.
fn decided_verdicts(bytes: &[u8]) -> HashMap<String, String> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Record>(line).ok())
        .filter(|record| field(record, "kind") == "decision")
        .map(|record| {
            let verdict = field(&record, "verdict").to_owned();
            (field(&record, "request_id").to_owned(), verdict)
        })
        .collect()
}

/// Keeps [`IN_FLIGHT`] calls in flight until `answers` have come back, then kills the server
/// with SIGKILL; the `request_id` of every answer whose tool body ran.
async fn load_then_kill(env: &[(&str, &str)], answers: usize) -> Vec<String> {
    let mut server = RawServer::spawn_with(env);
    server.initialize(0).await;
    let mut sent = 0;
    while sent < IN_FLIGHT {
        sent += 1;
        server.send(allow_or_deny_call(sent)).await;
    }
    let (mut answered, mut executed) = (0, Vec::new());
    while answered < answers {
        let message = server.message().await.expect("the server answers");
        if message["id"].as_u64().is_none() {
            continue;
        }
        answered += 1;
        let report = report(&message);
        if report["executed"] == true {
            let request_id = report["request_id"].as_str().expect("a request id");
            executed.push(request_id.to_owned());
        }
        sent += 1;
        server.send(allow_or_deny_call(sent)).await;
    }
    server.kill().await;
    executed
}

/// Starts the server on the log again, makes one call and lets it exit.
async fn restart_with_one_call(env: &[(&str, &str)]) {
    let mut server = RawServer::spawn_with(env);
    server.initialize(0).await;
    let call = allow_or_deny_call(1);
    let answer = server
        .request(1, "tools/call", call["params"].clone())
        .await;
    assert_eq!(report(&answer)["executed"], true, "{answer}");
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// Checks that `after` is `torn` (a log ending in a torn line) followed by a newline and a
/// `recovery` record naming the torn line's offset and length.
fn assert_recovery_of(torn: &[u8], after: &[u8]) {
    let offset = torn
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    assert_eq!(
        after.get(torn.len()),
        Some(&b'\n'),
        "the torn line was ended"
    );
    let next = after[torn.len() + 1..].split(|&b| b == b'\n').next();
    let recovery: Record = serde_json::from_slice(next.expect("a line after the torn one"))
        .expect("the line after the torn one is a record");
    assert_eq!(field(&recovery, "kind"), "recovery", "{recovery:?}");
    assert_eq!(recovery["torn_offset"], offset);
    assert_eq!(recovery["torn_length"], torn.len() - offset);
}

#[tokio::test]
async fn every_body_that_ran_before_a_sigkill_has_its_allow_on_disk_and_a_restart_continues_the_chain()
 {
    let (_dir, path) = temp_log();
    let (mut torn_by_kill, mut recoveries) = (0, 0);
    for (answers, sync) in KILL_ROUNDS {
        let env = [
            ("STAGE0_AUDIT_LOG", text(&path)),
            ("STAGE0_AUDIT_SYNC", sync),
        ];
        let executed = load_then_kill(&env, answers).await;
        let mut killed = std::fs::read(&path).expect("the log is readable");
        let verdicts = decided_verdicts(&killed);
        for request_id in &executed {
            assert_eq!(
                verdicts.get(request_id).map(String::as_str),
                Some("ALLOW"),
                "round {answers}: the body of {request_id} ran without its ALLOW on disk"
            );
        }
        let mut torn = killed.last().is_some_and(|&b| b != b'\n');
        torn_by_kill += usize::from(torn);
        if answers == CUT_ROUND && !torn {
            let last_line = killed[..killed.len() - 1].iter().rposition(|&b| b == b'\n');
            let start = last_line.map_or(0, |at| at + 1);
            killed.truncate(start + (killed.len() - start) / 2);
            std::fs::write(&path, &killed).expect("the log is cut");
            torn = true;
        }

        restart_with_one_call(&env).await;
        let after = std::fs::read(&path).expect("the log is readable");
        assert!(
            after.starts_with(&killed),
            "the restart changed what was there"
        );
        if torn {
            assert_recovery_of(&killed, &after);
            recoveries += 1;
        }
        let verified = verified(&path);
        assert_eq!(verified.recoveries, recoveries);
        assert_verifies(&path, verified.records).await;
    }
    eprintln!(
        "{torn_by_kill} of {} kills left a torn last line",
        KILL_ROUNDS.len()
    );
}

#[tokio::test]
async fn a_log_that_cannot_be_written_denies_every_call_with_audit_unavailable_and_runs_nothing() {
    let dir = TempDir::new().expect("a temporary folder");
    // A path under a regular file fails with ENOTDIR, even for root, whom permissions do not stop.
    let file = dir.path().join("a-regular-file");
    std::fs::write(&file, "not a folder").expect("the file is written");
    let path = file.join("audit.jsonl");
    let session = Session::start(&[("STAGE0_AUDIT_LOG", text(&path))]).await;

    let outcome = session
        .call("research-topic", json!({"topic": "Rust"}))
        .await;
    assert_eq!(outcome.field("verdict"), "DENY", "{outcome:#?}");
    assert_eq!(outcome.structured["issues"][0]["code"], "AUDIT_UNAVAILABLE");
    assert_eq!(outcome.structured["executed"], false);
    assert!(outcome.is_error);
    assert!(
        !outcome.text.contains(STAND_IN),
        "the body ran: {}",
        outcome.text
    );
    assert!(
        outcome.field("reason").contains(text(&path)),
        "{outcome:#?}"
    );
    // A report-only check is denied too: its verdict could not be recorded either.
    let goal = "Summarize the quarterly sales report";
    let reported = session
        .call(
            "check-authorization",
            json!({"goal": goal, "sideEffects": []}),
        )
        .await;
    assert_eq!(reported.field("verdict"), "DENY", "{reported:#?}");
    assert_eq!(
        reported.structured["issues"][0]["code"],
        "AUDIT_UNAVAILABLE"
    );

    let stderr = session.stop().await;
    let warning = stderr
        .lines()
        .find(|line| line.contains("every tool call will be denied"))
        .unwrap_or_else(|| panic!("no start-up line says calls will be denied:\n{stderr}"));
    assert!(warning.contains(text(&path)), "{warning}");
}

#[tokio::test]
async fn the_retry_ledger_survives_a_restart() {
    let (_dir, path) = temp_log();
    let env = [
        ("STAGE0_APPROVALS", "off"),
        ("STAGE0_AUDIT_LOG", text(&path)),
    ];
    // One workflow in six spellings: the ledger counts, and the log records, its canonical id.
    let spellings = [
        "etl",
        "ETL",
        "etl ",
        "Etl",
        "\u{ff45}\u{ff54}\u{ff4c}",
        " eTL",
    ];
    let mut outcomes = Vec::new();
    for session_spellings in spellings.chunks(3) {
        let session = Session::start(&env).await;
        for spelling in session_spellings {
            let retry = json!({"workflowId": spelling, "retryCount": 0});
            outcomes.push(session.call("retry-workflow", retry).await);
        }
        session.stop().await;
    }
    // As in tests/claims.rs: call n has seen n - 1 earlier attempts; from 5 the simulator defers.
    for (index, outcome) in outcomes.iter().enumerate() {
        let observed = &outcome.structured["provenance"]["retry_count"]["observed"];
        assert_eq!(observed, index, "call {}: {outcome:#?}", index + 1);
        let verdict = if index < 5 { "ALLOW" } else { "DEFER" };
        assert_eq!(outcome.field("verdict"), verdict, "call {}", index + 1);
    }
    assert!(
        outcomes[5]
            .field("reason")
            .starts_with("LOOP_THRESHOLD_EXCEEDED")
    );
    let etl = hex::encode(Sha256::digest(b"etl"));
    let counted: Vec<_> = audit_records(&path)
        .into_iter()
        .filter_map(|record| record.get("workflow_sha256").cloned())
        .collect();
    assert_eq!(counted, vec![json!(etl); 6]);
}

#[tokio::test]
async fn a_flood_of_new_workflow_ids_does_not_reset_a_deferred_workflow_not_even_after_a_restart() {
    let (_dir, path) = temp_log();
    let env = [
        ("STAGE0_APPROVALS", "off"),
        ("STAGE0_AUDIT_LOG", text(&path)),
        ("STAGE0_AUDIT_SYNC", "off"),
        // The flood is sent 100 calls at a time, more than the default limit in flight.
        ("STAGE0_MAX_CALLS_IN_FLIGHT", "100"),
    ];
    let retry = |workflow: &str| json!({"workflowId": workflow, "retryCount": 0});
    let mut server = RawServer::spawn_with(&env);
    server.initialize(1).await;
    let mut id = 1;
    let call_etl = async |server: &mut RawServer, id: u64| {
        let answer = server
            .request(
                id,
                "tools/call",
                json!({"name": "retry-workflow", "arguments": retry("etl")}),
            )
            .await;
        answer["result"]["structuredContent"].clone()
    };
    for _ in 0..5 {
        id += 1;
        assert_eq!(call_etl(&mut server, id).await["verdict"], "ALLOW");
    }
    id += 1;
    assert_eq!(call_etl(&mut server, id).await["verdict"], "DEFER");

    // More new workflows than the ledger counts exactly, 100 requests at a time (small enough
    // for the stdin pipe, so writing never waits on the server's answers).
    let flood = stage0_guard::ledger::LEDGER_CAPACITY as u64 + 100;
    for chunk in (0..flood).collect::<Vec<_>>().chunks(100) {
        let mut lines = Vec::new();
        for n in chunk {
            let request = call(id + 1 + n, "retry-workflow", retry(&format!("flood-{n}")));
            lines.extend_from_slice(request.to_string().as_bytes());
            lines.push(b'\n');
        }
        server.send_bytes(&lines).await;
        // Answers may come in any order: take the chunk's worth, whichever they are.
        for _ in chunk {
            let answer = server.message().await.expect("an answer");
            assert_eq!(
                answer["result"]["structuredContent"]["verdict"], "ALLOW",
                "{answer}"
            );
        }
        server.lines.clear();
    }
    id += flood + 1;
    let after_flood = call_etl(&mut server, id).await;
    assert_eq!(after_flood["verdict"], "DEFER", "{after_flood}");
    assert_eq!(after_flood["provenance"]["retry_count"]["observed"], 6);
    server.close_stdin();
    assert!(server.exit().await.status.success());

    // The restart replays every recorded attempt, flood included, and still defers `etl`.
    let mut server = RawServer::spawn_with(&env);
    server.initialize(1).await;
    let after_restart = call_etl(&mut server, 2).await;
    assert_eq!(after_restart["verdict"], "DEFER", "{after_restart}");
    assert_eq!(after_restart["provenance"]["retry_count"]["observed"], 7);
    server.close_stdin();
    assert!(server.exit().await.status.success());
}

#[tokio::test]
async fn integers_past_2_pow_53_are_recorded_exactly_and_tell_calls_apart() {
    let (_dir, path) = temp_log();
    let env = [
        ("STAGE0_APPROVALS", "off"),
        ("STAGE0_AUDIT_LOG", text(&path)),
    ];
    let session = Session::start(&env).await;
    // Two argument sets that differ only past 2^53, where a double holds every other integer.
    for count in [9_007_199_254_740_993_u64, 9_007_199_254_740_992] {
        let outcome = session
            .call(
                "retry-workflow",
                json!({"workflowId": "etl", "retryCount": count}),
            )
            .await;
        assert_eq!(
            outcome.structured["provenance"]["retry_count"]["claimed"],
            count
        );
    }
    session.stop().await;
    let decisions: Vec<_> = audit_records(&path)
        .into_iter()
        .filter(|r| field(r, "kind") == "decision")
        .collect();
    assert_eq!(decisions.len(), 2);
    let expected = |count: u64| {
        let arguments = format!(r#"{{"retryCount":{count},"workflowId":"etl"}}"#);
        hex::encode(Sha256::digest(arguments.as_bytes()))
    };
    for (decision, count) in decisions
        .iter()
        .zip([9_007_199_254_740_993_u64, 9_007_199_254_740_992])
    {
        assert_eq!(decision["context"]["retry_count"].as_u64(), Some(count));
        assert_eq!(
            decision["context"]["claimed_retry_count"].as_u64(),
            Some(count)
        );
        assert_eq!(field(decision, "arguments_sha256"), expected(count));
    }
    assert_ne!(
        decisions[0]["arguments_sha256"],
        decisions[1]["arguments_sha256"]
    );
    let line = std::fs::read_to_string(&path).unwrap();
    assert!(line.contains(r#""retry_count":9007199254740993"#), "{line}");
    assert!(
        verify::verify_file(&path).unwrap().is_ok(),
        "the log verifies"
    );
}

/// A fake Stage0 whose verdict is named in the goal: `deny`, `defer`, else `ALLOW`.
async fn verdict_by_goal_stage0() -> FakeStage0 {
    FakeStage0::start(|received| {
        let (verdict, decision) = if received.goal.contains("deny") {
            ("DENY", "NO_GO")
        } else if received.goal.contains("defer") {
            ("DEFER", "DEFER")
        } else {
            ("ALLOW", "GO")
        };
        Reply::json(
            200,
            &json!({
                "verdict": verdict, "decision": decision, "reason": "fake",
                "request_id": received.request_id, "policy_version": "fake-1"
            }),
        )
    })
    .await
}

#[tokio::test]
async fn a_decision_record_keeps_the_request_id_sent_and_the_one_stage0_gave_beside_it() {
    let fake = FakeStage0::start(|received| {
        let own = format!("stage0-{}", received.goal.len());
        Reply::json(
            200,
            &json!({"verdict": "ALLOW", "decision": "GO", "reason": "fake", "request_id": own}),
        )
    })
    .await;
    let (_dir, path) = temp_log();
    let mut env = live_env(fake.base_url(), "5000");
    env.push(("STAGE0_AUDIT_LOG", text(&path)));
    let session = Session::start(&env).await;
    let outcome = session
        .call("research-topic", json!({"topic": "request ids"}))
        .await;
    session.stop().await;
    let sent = fake.exchanges()[0].request_id.clone();
    let stage0_id = format!("stage0-{}", "Research and summarize: request ids".len());
    assert_eq!(outcome.field("request_id"), sent);
    assert_eq!(outcome.field("stage0_request_id"), stage0_id);
    let records = audit_records(&path);
    let decision = records
        .iter()
        .find(|r| field(r, "kind") == "decision")
        .expect("a decision record");
    assert_eq!(field(decision, "request_id"), sent);
    assert_eq!(field(decision, "stage0_request_id"), stage0_id);
    let outcome_record = records
        .iter()
        .find(|r| field(r, "kind") == "outcome")
        .expect("an outcome record");
    assert_eq!(field(outcome_record, "request_id"), sent);
}

#[tokio::test]
async fn the_api_key_is_nowhere_in_the_log() {
    let fake = verdict_by_goal_stage0().await;
    let (_dir, path) = temp_log();
    let mut env = live_env(fake.base_url(), "5000");
    env.extend([
        ("STAGE0_AUDIT_LOG", text(&path)),
        ("STAGE0_DEBUG", "true"),
        ("RUST_LOG", "debug"),
    ]);
    let session = Session::start(&env).await;
    for verdict in ["allow", "deny", "defer"] {
        for n in 0..2 {
            let topic = format!("{verdict} {n}");
            let outcome = session
                .call("research-topic", json!({"topic": topic}))
                .await;
            assert_eq!(
                outcome.field("verdict"),
                verdict.to_uppercase(),
                "{outcome:#?}"
            );
            let goal = format!("Tell me whether to {verdict} this");
            let outcome = session
                .call(
                    "check-authorization",
                    json!({"goal": goal, "sideEffects": []}),
                )
                .await;
            assert_eq!(
                outcome.field("verdict"),
                verdict.to_uppercase(),
                "{outcome:#?}"
            );
        }
    }
    let stderr = session.stop().await;

    assert_eq!(
        fake.exchanges().len(),
        12,
        "every call reached the fake Stage0"
    );
    let records = audit_records(&path);
    let live = records
        .iter()
        .filter(|r| field(r, "kind") == "decision" && field(r, "mode") == "stage0")
        .count();
    assert_eq!(live, 12, "every live verdict is recorded");
    let bytes = std::fs::read(&path).expect("the log is readable");
    let leaked = bytes
        .windows(SECRET_KEY.len())
        .any(|w| w == SECRET_KEY.as_bytes());
    assert!(!leaked, "the API key is in the audit log");
    assert!(
        !stderr.contains(SECRET_KEY),
        "the API key is in the logs:\n{stderr}"
    );
}

/// Sends `calls` mixed calls numbered from `first` and waits for their answers; the request id
/// of each verdict.
async fn call_and_collect(server: &mut RawServer, first: u64, calls: u64) -> Vec<String> {
    for n in first..first + calls {
        server.send(allow_or_deny_call(n)).await;
    }
    let answers = responses(server, calls as usize).await;
    answers
        .values()
        .map(|answer| {
            let id = report(answer)["request_id"].as_str();
            id.unwrap_or_else(|| panic!("no verdict: {answer}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn two_servers_on_one_log_keep_one_chain_with_every_record_of_both() {
    const CALLS: u64 = 50;
    let (_dir, path) = temp_log();
    let env = [("STAGE0_AUDIT_LOG", text(&path))];
    let (mut first, mut second) = (RawServer::spawn_with(&env), RawServer::spawn_with(&env));
    tokio::join!(first.initialize(0), second.initialize(0));
    let (ids_first, ids_second) = tokio::join!(
        call_and_collect(&mut first, 1, CALLS),
        call_and_collect(&mut second, 1, CALLS)
    );
    for mut server in [first, second] {
        server.close_stdin();
        let exit = server.exit().await;
        assert!(exit.status.success(), "{}", exit.stderr);
    }

    let bytes = std::fs::read(&path).expect("the log is readable");
    let verified = verified(&path);
    assert_eq!(verified.records, 4 * CALLS);
    assert_verifies(&path, 4 * CALLS).await;
    let verdicts = decided_verdicts(&bytes);
    for request_id in ids_first.iter().chain(&ids_second) {
        assert!(
            verdicts.contains_key(request_id),
            "no decision record for {request_id}"
        );
    }
}

#[tokio::test]
async fn audit_show_prints_every_record_of_one_call_and_the_last_n() {
    let (_dir, path, outcomes) = log_of_calls(3).await;
    let request_ids: Vec<&str> = outcomes.iter().map(|o| o.field("request_id")).collect();
    let records = audit_records(&path);
    let call_of = |request_id: &str| {
        let record = records
            .iter()
            .find(|r| field(r, "request_id") == request_id);
        field(record.expect("a record of the call"), "call_id").to_owned()
    };
    let heads = |shown: &str| -> Vec<String> {
        shown
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };

    let (code, shown) = audit_command(&["show", "--request-id", request_ids[1], text(&path)]).await;
    assert_eq!(code, 0, "{shown}");
    let heads_shown = heads(&shown);
    assert_eq!(heads_shown.len(), 2, "{shown}");
    assert!(
        heads_shown[0].starts_with("#3 ") && heads_shown[0].contains(" decision "),
        "{shown}"
    );
    assert!(
        heads_shown[1].starts_with("#4 ") && heads_shown[1].contains(" outcome "),
        "{shown}"
    );
    assert!(shown.contains(request_ids[1]), "{shown}");
    assert!(shown.contains(&call_of(request_ids[1])), "{shown}");
    for other in [0, 2] {
        assert!(!shown.contains(request_ids[other]), "{shown}");
        assert!(!shown.contains(&call_of(request_ids[other])), "{shown}");
    }

    let (code, shown) = audit_command(&["show", "--last", "2", text(&path)]).await;
    assert_eq!(code, 0, "{shown}");
    let heads_shown = heads(&shown);
    assert_eq!(heads_shown.len(), 2, "{shown}");
    assert!(
        heads_shown[0].starts_with("#5 ") && heads_shown[1].starts_with("#6 "),
        "{shown}"
    );
}

#[tokio::test]
async fn the_request_state_key_appears_in_no_log_line_record_or_error() {
    const STATE_KEY: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
    let (_dir, path) = temp_log();
    let env = [
        ("STAGE0_AUDIT_LOG", text(&path)),
        ("STAGE0_REQUEST_STATE_KEY", STATE_KEY),
        ("STAGE0_DEBUG", "true"),
    ];
    let mut server = RawServer::spawn_with(&env);
    server.initialize(1).await;
    let retry = json!({"workflowId": "etl", "retryCount": 5});
    let answer = server
        .request(
            2,
            "tools/call",
            call(2, "retry-workflow", retry)["params"].clone(),
        )
        .await;
    assert_eq!(answer["result"]["structuredContent"]["verdict"], "DEFER");
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success());
    assert!(!exit.stderr.contains(STATE_KEY), "{}", exit.stderr);
    let log = std::fs::read_to_string(&path).expect("the audit log");
    assert!(!log.contains(STATE_KEY));

    // An unusable key stops the server without showing it.
    let short = "5ec2e75ec2e7";
    let env = [
        ("STAGE0_AUDIT_LOG", "off"),
        ("STAGE0_REQUEST_STATE_KEY", short),
    ];
    let mut server = RawServer::spawn_with(&env);
    server.close_stdin();
    let exit = server.exit().await;
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("STAGE0_REQUEST_STATE_KEY"),
        "{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains(short), "{}", exit.stderr);
}

#[tokio::test]
async fn a_request_state_key_without_an_audit_log_stops_the_server_and_with_one_is_warned_about() {
    const STATE_KEY: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
    // No log, no spent nonces after a restart: a state the key opens could be answered again.
    let env = [
        ("STAGE0_AUDIT_LOG", "off"),
        ("STAGE0_REQUEST_STATE_KEY", STATE_KEY),
    ];
    let mut server = RawServer::spawn_with(&env);
    server.close_stdin();
    let exit = server.exit().await;
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    for named in ["STAGE0_REQUEST_STATE_KEY", "STAGE0_AUDIT_LOG"] {
        assert!(exit.stderr.contains(named), "{named}: {}", exit.stderr);
    }
    assert!(!exit.stderr.contains(STATE_KEY), "{}", exit.stderr);

    // With a log the server starts, and says that every holder of the key must share it.
    let (_dir, path) = temp_log();
    let env = [
        ("STAGE0_AUDIT_LOG", text(&path)),
        ("STAGE0_REQUEST_STATE_KEY", STATE_KEY),
    ];
    let mut server = RawServer::spawn_with(&env);
    server.initialize(1).await;
    server.close_stdin();
    let exit = server.exit().await;
    assert!(exit.status.success(), "{}", exit.stderr);
    let warning = exit
        .stderr
        .lines()
        .find(|line| line.contains("every server holding this key"))
        .unwrap_or_else(|| panic!("no warning about the key: {}", exit.stderr));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(!exit.stderr.contains(STATE_KEY), "{}", exit.stderr);
}
