//! Replicas sharing one attempt ledger and one audit chain in PostgreSQL (`docs/deployment.md`),
//! against a real, throw-away PostgreSQL cluster started by each test (`common::postgres`) and
//! the built server binary, several at once on the same `STAGE0_DATABASE_URL`.
//!
//! - A lying agent that alternates between two replicas is deferred at its sixth call, as on one.
//! - Two replicas with 32 calls each in flight write one contiguous chain, which verifies in the
//!   database and once exported.
//! - A replica killed (SIGKILL) under load: every call it answered `executed: true` has its
//!   decision committed.
//! - PostgreSQL stopped and started again under load: the calls in between are `DENY` /
//!   `AUDIT_UNAVAILABLE` and run nothing, the calls after succeed by themselves, and every call
//!   that ran has its decision.
//! - A changed row, or a deleted one, is named by `audit verify --database`.
//!
//! The URL carries a password (the test cluster trusts local connections, so it is never sent):
//! it must appear in no log and no command output. Every wait is bounded; nothing sleeps.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Output;

use common::postgres::Postgres;
use common::{BOUND, RawServer, STAND_IN, Session, bounded, call};
use futures::future::join_all;
use serde_json::{Map, Value, json};

type Record = Map<String, Value>;

/// The password in every test's URL, which nothing may ever print.
const PASSWORD: &str = "pw-DO-NOT-LEAK-4c1d";

/// The URL of `pg` with [`PASSWORD`].
fn url_of(pg: &Postgres) -> String {
    pg.url()
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

/// The environment of a replica on `url`: the simulator, approvals off (a `DEFER` is final).
fn replica_env(url: &str) -> Vec<(&str, &str)> {
    vec![("STAGE0_DATABASE_URL", url), ("STAGE0_APPROVALS", "off")]
}

/// Runs `mcp-server-stage0 audit ARGS` with `STAGE0_DATABASE_URL` set to `url`, if any, and
/// nothing else in its environment.
async fn audit(url: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(common::BIN);
    command.arg("audit").args(args).env_clear();
    if let Some(url) = url {
        command.env("STAGE0_DATABASE_URL", url);
    }
    let output = bounded("an audit command", command.output())
        .await
        .expect("the audit command runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !printed.contains(PASSWORD),
        "the password was printed: {printed}"
    );
    output
}

/// `audit verify --database`: its stdout, failing the test unless it exits 0.
async fn verify_ok(url: &str) -> String {
    let output = audit(Some(url), &["verify", "--database"]).await;
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    stdout
}

/// The chain, read with `audit export --database`, one record a line.
async fn export(url: &str) -> Vec<Record> {
    let output = audit(Some(url), &["export", "--database"]).await;
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a record"))
        .collect()
}

fn field<'a>(record: &'a Record, name: &str) -> &'a str {
    record.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The `decision` records of the chain by `request_id`.
fn decisions(chain: &[Record]) -> HashMap<&str, &Record> {
    chain
        .iter()
        .filter(|record| field(record, "kind") == "decision")
        .map(|record| (field(record, "request_id"), record))
        .collect()
}

/// Asserts that the chain's `seq` runs 1, 2, 3… without a gap.
fn assert_contiguous(chain: &[Record]) {
    for (index, record) in chain.iter().enumerate() {
        assert_eq!(record["seq"], json!(index + 1), "{record:?}");
    }
}

/// Two replicas on `url`, started one after the other.
async fn two_replicas(url: &str) -> [Session; 2] {
    [
        Session::start(&replica_env(url)).await,
        Session::start(&replica_env(url)).await,
    ]
}

/// Stops `session` and checks its stderr for the password.
async fn stop(session: Session) {
    let stderr = session.stop().await;
    assert!(
        !stderr.contains(PASSWORD),
        "the password was logged: {stderr}"
    );
}

#[tokio::test]
async fn a_lying_agent_alternating_between_two_replicas_is_deferred_at_its_sixth_call() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let replicas = two_replicas(&url).await;
    let mut verdicts = Vec::new();
    for attempt in 0..7 {
        // The agent claims every time that this is its first try.
        let outcome = replicas[attempt % 2]
            .call(
                "retry-workflow",
                json!({"workflowId": "nightly-export", "retryCount": 0}),
            )
            .await;
        verdicts.push(outcome.field("verdict").to_owned());
        assert_eq!(
            outcome.structured["provenance"]["retry_count"]["observed"],
            json!(attempt),
            "{outcome:?}"
        );
    }
    assert_eq!(
        verdicts,
        [
            "ALLOW", "ALLOW", "ALLOW", "ALLOW", "ALLOW", "DEFER", "DEFER"
        ]
    );
    for replica in replicas {
        stop(replica).await;
    }
    let ledger = pg.psql("SELECT attempts FROM stage0_ledger");
    assert_eq!(ledger.trim(), "7", "one row, every attempt counted once");
    verify_ok(&url).await;
    let shown = audit(Some(&url), &["show", "--database", "--last", "2"]).await;
    let shown = String::from_utf8(shown.stdout).expect("UTF-8");
    assert!(
        shown.contains("#16 ") && shown.contains("outcome  retry-workflow blocked"),
        "{shown}"
    );
}

#[tokio::test]
async fn two_replicas_with_32_calls_in_flight_each_write_one_chain_that_verifies() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let replicas = two_replicas(&url).await;
    let calls = replicas.iter().flat_map(|replica| {
        (0..32).map(move |n| replica.call("research-topic", json!({"topic": format!("t{n}")})))
    });
    let outcomes = bounded("64 calls", join_all(calls)).await;
    assert!(outcomes.iter().all(|o| o.structured["executed"] == true));
    for replica in replicas {
        stop(replica).await;
    }

    let stdout = verify_ok(&url).await;
    assert!(stdout.contains(": 128 records,"), "{stdout}");
    assert!(
        stdout.contains("0 call(s) without an outcome yet"),
        "{stdout}"
    );
    let chain = export(&url).await;
    assert_contiguous(&chain);
    let decided = decisions(&chain);
    for outcome in &outcomes {
        assert!(decided.contains_key(outcome.field("request_id")));
    }
    // The export is the file log's format: the file verifier accepts it as it is.
    let (_dir, path) = common::temp_log();
    let output = audit(Some(&url), &["export", "--database"]).await;
    std::fs::write(&path, &output.stdout).expect("the export is written");
    let verified = stage0_guard::audit::verify::verify_file(&path)
        .expect("readable")
        .expect("the exported chain verifies");
    assert_eq!(verified.records, 128);
}

#[tokio::test]
async fn the_same_workflow_called_at_once_through_two_replicas_is_never_decided_on_a_stale_count() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let replicas = two_replicas(&url).await;
    let calls = replicas.iter().flat_map(|replica| {
        (0..8).map(move |_| {
            replica.call(
                "retry-workflow",
                json!({"workflowId": "nightly-export", "retryCount": 0}),
            )
        })
    });
    let outcomes = bounded("16 calls", join_all(calls)).await;
    for replica in replicas {
        stop(replica).await;
    }

    // Each counted decision saw exactly the attempts before it: 0, 1, 2… once each.
    let chain = export(&url).await;
    let mut seen: Vec<u64> = chain
        .iter()
        .filter(|record| record.contains_key("workflow_sha256"))
        .map(|record| {
            record["provenance"]["retry_count"]["observed"]
                .as_u64()
                .expect("an observed count")
        })
        .collect();
    seen.sort_unstable();
    let counted = pg.psql("SELECT attempts FROM stage0_ledger");
    assert_eq!(counted.trim(), seen.len().to_string());
    assert_eq!(seen, (0..seen.len() as u64).collect::<Vec<_>>());
    // The calls refused for a stale count ran nothing and said why.
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.raw.contains("was counted first"))
        .collect();
    assert_eq!(refused.len() + seen.len(), 16, "{outcomes:?}");
    for outcome in refused {
        assert_eq!(outcome.field("verdict"), "DENY");
        assert_eq!(outcome.structured["issues"][0]["code"], "LEDGER_CONFLICT");
        assert!(!outcome.text.contains(STAND_IN));
    }
    verify_ok(&url).await;
}

#[tokio::test]
async fn calls_of_one_workflow_at_once_through_one_replica_are_counted_one_after_another() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let replica = Session::start(&replica_env(&url)).await;
    let calls = (0..12).map(|_| {
        replica.call(
            "retry-workflow",
            json!({"workflowId": "nightly-export", "retryCount": 0}),
        )
    });
    let outcomes = bounded("12 calls", join_all(calls)).await;
    stop(replica).await;
    let mut observed: Vec<u64> = outcomes
        .iter()
        .map(|o| {
            o.structured["provenance"]["retry_count"]["observed"]
                .as_u64()
                .unwrap_or_else(|| panic!("counted: {o:?}"))
        })
        .collect();
    observed.sort_unstable();
    assert_eq!(observed, (0..12).collect::<Vec<_>>());
    let verdicts: Vec<&str> = outcomes.iter().map(|o| o.field("verdict")).collect();
    assert_eq!(
        verdicts.iter().filter(|v| **v == "ALLOW").count(),
        5,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts.iter().filter(|v| **v == "DEFER").count(),
        7,
        "{verdicts:?}"
    );
}

#[tokio::test]
async fn a_replica_killed_under_load_has_a_committed_decision_for_every_call_it_ran() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let mut replica = RawServer::spawn_with(&replica_env(&url));
    replica.initialize(0).await;
    for id in 1..=48 {
        let message = call(id, "research-topic", json!({"topic": format!("t{id}")}));
        replica.send(message).await;
    }
    // Kill it as soon as some calls were answered and others are still in flight.
    let mut answered = Vec::new();
    while answered.len() < 8 {
        let message = bounded("an answer", replica.message())
            .await
            .expect("the replica answers");
        if message["result"]["structuredContent"]["executed"] == true {
            answered.push(message["result"]["structuredContent"]["request_id"].clone());
        }
    }
    replica.kill().await;

    let chain = export(&url).await;
    assert_contiguous(&chain);
    let decided = decisions(&chain);
    for request_id in &answered {
        let decision = decided
            .get(request_id.as_str().expect("a request id"))
            .unwrap_or_else(|| panic!("no committed decision for {request_id}"));
        assert_eq!(field(decision, "verdict"), "ALLOW");
    }
    // The chain goes on from where the killed replica left it.
    let survivor = Session::start(&replica_env(&url)).await;
    let outcome = survivor
        .call("research-topic", json!({"topic": "after"}))
        .await;
    assert_eq!(outcome.structured["executed"], true, "{outcome:?}");
    stop(survivor).await;
    verify_ok(&url).await;
}

#[tokio::test]
async fn with_postgres_stopped_calls_are_denied_and_run_nothing_and_succeed_once_it_is_back() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let replica = Session::start(&replica_env(&url)).await;
    let research = |n: usize| replica.call("research-topic", json!({"topic": format!("t{n}")}));
    let mut outcomes = Vec::new();
    for n in 0..4 {
        outcomes.push(research(n).await);
    }
    assert!(outcomes.iter().all(|o| o.structured["executed"] == true));

    pg.stop();
    // Eight calls at once while it is down.
    let during = bounded("8 calls", join_all((4..12).map(research))).await;
    for outcome in &during {
        assert_eq!(outcome.field("verdict"), "DENY", "{outcome:?}");
        assert_eq!(outcome.structured["executed"], false);
        assert!(outcome.raw.contains("AUDIT_UNAVAILABLE"), "{}", outcome.raw);
        assert!(
            !outcome.text.contains(STAND_IN),
            "the body ran: {}",
            outcome.text
        );
    }
    outcomes.extend(during);
    pg.start_again();
    // The replica connects again by itself: the first call after may still find the old
    // connection closed; within a bounded number of calls they succeed again.
    let deadline = std::time::Instant::now() + BOUND;
    let mut n = 12;
    loop {
        let outcome = research(n).await;
        n += 1;
        let ran = outcome.structured["executed"] == true;
        outcomes.push(outcome);
        if ran {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calls never succeeded again"
        );
    }
    stop(replica).await;

    let chain = export(&url).await;
    assert_contiguous(&chain);
    let decided = decisions(&chain);
    for outcome in outcomes.iter().filter(|o| o.structured["executed"] == true) {
        let decision = decided
            .get(outcome.field("request_id"))
            .unwrap_or_else(|| panic!("a call ran without its decision: {outcome:?}"));
        assert_eq!(field(decision, "verdict"), "ALLOW");
    }
    // The outcome records of the denied calls were kept and written once it was back.
    let ended: HashSet<&str> = chain
        .iter()
        .filter(|record| field(record, "kind") == "outcome")
        .map(|record| field(record, "request_id"))
        .collect();
    for outcome in &outcomes {
        assert!(ended.contains(outcome.field("request_id")), "{outcome:?}");
    }
    verify_ok(&url).await;
}

#[tokio::test]
async fn replicas_starting_at_once_on_a_new_database_apply_each_migration_once() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let env = replica_env(&url);
    let replicas = bounded(
        "four starts",
        join_all((0..4).map(|_| Session::start(&env))),
    )
    .await;
    let outcomes = join_all(
        replicas
            .iter()
            .map(|replica| replica.call("research-topic", json!({"topic": "t"}))),
    )
    .await;
    assert!(outcomes.iter().all(|o| o.structured["executed"] == true));
    for replica in replicas {
        stop(replica).await;
    }
    let applied = pg.psql("SELECT string_agg(version::text, ',') FROM stage0_migrations");
    assert_eq!(applied.trim(), "1");
    verify_ok(&url).await;
}

#[tokio::test]
async fn a_changed_or_deleted_row_is_named_by_audit_verify() {
    let pg = Postgres::start();
    let url = url_of(&pg);
    let replica = Session::start(&replica_env(&url)).await;
    for n in 0..3 {
        replica
            .call("research-topic", json!({"topic": format!("t{n}")}))
            .await;
    }
    stop(replica).await;
    verify_ok(&url).await;

    pg.psql("UPDATE stage0_audit SET line = replace(line, '\"ALLOW\"', '\"DENY\"') WHERE seq = 3");
    let output = audit(Some(&url), &["verify", "--database"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("BROKEN at database"), "{stdout}");
    assert!(stdout.contains("line 3"), "{stdout}");

    pg.psql("UPDATE stage0_audit SET line = replace(line, '\"DENY\"', '\"ALLOW\"') WHERE seq = 3");
    verify_ok(&url).await;
    pg.psql("DELETE FROM stage0_audit WHERE seq = 2");
    let output = audit(Some(&url), &["verify", "--database"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("line 2"), "{stdout}");
}

/// `mcp-server-stage0 audit ARGS` without `STAGE0_DATABASE_URL`: its stderr, failing the test
/// unless it exits 2 (an unusable command line or database).
async fn audit_refused(args: &[&str]) -> String {
    let output = audit(None, args).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

#[tokio::test]
async fn the_audit_commands_say_what_is_wrong_with_a_database_they_cannot_read() {
    let both = audit_refused(&["verify", "audit.jsonl", "--database"]).await;
    assert!(both.contains("not both"), "{both}");
    let unset = audit_refused(&["export", "--database"]).await;
    assert!(unset.contains("STAGE0_DATABASE_URL is not set"), "{unset}");
    // Nothing listens on port 1 of 127.0.0.1: refused at once.
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/postgres");
    let refused = audit_refused(&["verify", "--database", &url]).await;
    assert!(
        refused.contains("cannot read the audit chain in postgres://postgres@127.0.0.1:1/postgres"),
        "{refused}"
    );
}
