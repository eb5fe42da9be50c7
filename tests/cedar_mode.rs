//! The `cedar` policy decision point in the server: chosen by `STAGE0_POLICY`, deciding every
//! call with the arguments and the facts the server vouches for, layered before Stage0, with a
//! shadow policy beside it, reloaded on SIGHUP, refused at start when invalid, and checked by the
//! `policy validate` and `policy eval` commands (docs/cedar.md).
//!
//! Each test drives the built binary over a real MCP session (or raw JSON-RPC lines); Stage0 is a
//! fake on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{RawServer, STAND_IN, Session, bounded, live_env};
use serde_json::{Value, json};
use tempfile::TempDir;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A shipped policy set, by file name.
fn shipped(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stage0-guard/policies")
        .join(name)
        .display()
        .to_string()
}

/// Every record of the audit log at `path`.
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record is JSON"))
        .collect()
}

/// The `decision` records of the audit log at `path`.
fn decisions(path: &Path) -> Vec<Value> {
    let all = records(path);
    all.into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect()
}

/// The ids in a `determining_policies` array.
fn ids(value: &Value) -> Vec<&str> {
    let ids = value.as_array().map(Vec::as_slice).unwrap_or_default();
    ids.iter().filter_map(Value::as_str).collect()
}

#[tokio::test]
async fn the_team_policy_decides_with_the_arguments_and_names_its_policies() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("audit.jsonl");
    let team = shipped("team-example.cedar");
    let session = Session::start(&[
        ("STAGE0_POLICY", team.as_str()),
        ("STAGE0_ACTOR_ROLE", "developer"),
        ("STAGE0_AUDIT_LOG", log.to_str().unwrap()),
    ])
    .await;

    let blog = json!({"content": "Release notes", "channel": "blog"});
    let allowed = session.call("publish-content", blog).await;
    assert!(!allowed.is_error, "{allowed:#?}");
    assert!(allowed.text.contains(STAND_IN));
    assert_eq!(allowed.field("mode"), "cedar");
    assert_eq!(allowed.field("verdict"), "ALLOW");
    assert!(allowed.field("policy_version").starts_with("cedar:"));
    assert_eq!(
        ids(&allowed.structured["determining_policies"]),
        ["PUBLISH_TEAM_CHANNELS"]
    );

    let public = json!({"content": "Release notes", "channel": "public"});
    let denied = session.call("publish-content", public).await;
    assert!(denied.is_error);
    assert!(!denied.text.contains(STAND_IN), "the body must not run");
    assert_eq!(denied.field("verdict"), "DENY");
    assert_eq!(
        ids(&denied.structured["determining_policies"]),
        ["PUBLIC_CHANNEL_FORBIDDEN"]
    );
    assert!(denied.field("reason").contains("public channel"));
    session.stop().await;

    let decisions = decisions(&log);
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0]["mode"], "cedar");
    assert_eq!(
        ids(&decisions[1]["determining_policies"]),
        ["PUBLIC_CHANNEL_FORBIDDEN"]
    );
    assert_eq!(
        decisions[0]["policy_version"],
        allowed.structured["policy_version"]
    );
}

#[tokio::test]
async fn the_policy_sees_the_retry_count_the_server_observed_not_the_claim() {
    let team = shipped("team-example.cedar");
    let session = Session::start(&[
        ("STAGE0_POLICY", team.as_str()),
        ("STAGE0_AUDIT_LOG", "off"),
    ])
    .await;
    let lying = json!({"workflowId": "payments-nightly", "retryCount": 0});
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        let outcome = session.call("retry-workflow", lying.clone()).await;
        verdicts.push(outcome.field("verdict").to_owned());
        if outcome.field("verdict") == "DEFER" {
            assert_eq!(
                ids(&outcome.structured["determining_policies"]),
                ["PAYMENT_RETRY_REVIEW"]
            );
        }
    }
    // The third call has two earlier attempts behind it, whatever it claims.
    assert_eq!(verdicts, ["ALLOW", "ALLOW", "DEFER"]);
    session.stop().await;
}

#[tokio::test]
async fn the_recent_calls_the_server_counted_make_a_rate_limit() {
    let team = shipped("team-example.cedar");
    let session = Session::start(&[
        ("STAGE0_POLICY", team.as_str()),
        ("STAGE0_AUDIT_LOG", "off"),
    ])
    .await;
    let research = json!({"topic": "Rust"});
    for call in 0..30 {
        let outcome = session.call("research-topic", research.clone()).await;
        assert_eq!(
            outcome.field("verdict"),
            "ALLOW",
            "call {call}: {outcome:#?}"
        );
    }
    let limited = session.call("research-topic", research).await;
    assert_eq!(limited.field("verdict"), "DENY");
    assert_eq!(
        ids(&limited.structured["determining_policies"]),
        ["RATE_LIMIT"]
    );
    session.stop().await;
}

/// A fake Stage0 that answers every `/check` with `verdict`.
async fn stage0_answering(verdict: &str, decision: &str) -> MockServer {
    bounded("the fake Stage0 to start", async {
        let fake = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/check"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": verdict,
                "decision": decision,
                "reason": "Fake Stage0 says so",
                "policy_version": "fake-7",
                "defer_questions": ["Really?"]
            })))
            .mount(&fake)
            .await;
        fake
    })
    .await
}

/// How many `/check` requests `fake` received.
async fn checks(fake: &MockServer) -> usize {
    let received = bounded("the fake's request log", fake.received_requests()).await;
    received.expect("the fake records requests").len()
}

/// A server with the team policy set and a key for `fake`: `cedar+stage0`, nobody asked.
async fn layered_session(fake: &MockServer) -> Session {
    let (team, uri) = (shipped("team-example.cedar"), fake.uri());
    let mut env = live_env(&uri, "5000");
    env.push(("STAGE0_POLICY", team.as_str()));
    env.push(("STAGE0_AUDIT_LOG", "off"));
    env.push(("STAGE0_APPROVALS", "off"));
    Session::start(&env).await
}

#[tokio::test]
async fn with_a_key_too_the_local_policy_decides_first_and_the_stricter_verdict_wins() {
    let fake = stage0_answering("DEFER", "DEFER").await;
    let session = layered_session(&fake).await;

    // Cedar allows research, Stage0 defers it: DEFER, with both answers.
    let research = session
        .call("research-topic", json!({"topic": "Rust"}))
        .await;
    assert_eq!(research.field("mode"), "cedar+stage0");
    assert_eq!(research.field("verdict"), "DEFER");
    assert!(!research.text.contains(STAND_IN));
    let answers = research.structured["answers"].as_array().expect("answers");
    let said: Vec<(&str, &str)> = answers
        .iter()
        .map(|a| (a["mode"].as_str().unwrap(), a["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(said, [("cedar", "ALLOW"), ("stage0", "DEFER")]);
    assert_eq!(checks(&fake).await, 1);

    // Cedar denies publishing to the public channel: final, and Stage0 is never asked.
    let public = session
        .call(
            "publish-content",
            json!({"content": "x", "channel": "public"}),
        )
        .await;
    assert_eq!(public.field("verdict"), "DENY");
    assert_eq!(public.structured["answers"].as_array().unwrap().len(), 1);
    assert_eq!(checks(&fake).await, 1, "a local DENY makes no network call");
    session.stop().await;
}

#[tokio::test]
async fn a_local_defer_is_not_lifted_by_a_stage0_allow() {
    let fake = stage0_answering("ALLOW", "GO").await;
    let session = layered_session(&fake).await;
    let retry = json!({"workflowId": "payments-nightly", "retryCount": 2});
    let outcome = session.call("retry-workflow", retry).await;
    assert_eq!(outcome.field("verdict"), "DEFER");
    assert!(!outcome.text.contains(STAND_IN));
    assert_eq!(checks(&fake).await, 1);
    session.stop().await;
}

#[tokio::test]
async fn a_shadow_policy_is_recorded_beside_the_enforcing_one_and_never_enforced() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("audit.jsonl");
    let (simulator, team) = (shipped("simulator.cedar"), shipped("team-example.cedar"));
    let session = Session::start(&[
        ("STAGE0_POLICY", simulator.as_str()),
        ("STAGE0_POLICY_SHADOW", team.as_str()),
        ("STAGE0_ACTOR_ROLE", "developer"),
        ("STAGE0_APPROVALS", "off"),
        ("STAGE0_AUDIT_LOG", log.to_str().unwrap()),
    ])
    .await;
    // The simulator's rules defer publishing without an approval; the team's set allows the blog.
    let outcome = session
        .call(
            "publish-content",
            json!({"content": "Notes", "channel": "blog"}),
        )
        .await;
    assert_ne!(outcome.field("verdict"), "ALLOW");
    assert!(
        !outcome.text.contains(STAND_IN),
        "the shadow is never enforced"
    );
    assert_eq!(outcome.structured["shadow"]["verdict"], "ALLOW");
    let stderr = session.stop().await;
    assert!(
        stderr.contains("the shadow policy set disagrees"),
        "{stderr}"
    );

    let decision = &decisions(&log)[0];
    assert_eq!(decision["shadow"]["verdict"], "ALLOW");
    assert_eq!(
        ids(&decision["shadow"]["determining_policies"]),
        ["PUBLISH_TEAM_CHANNELS"]
    );
    assert!(
        decision["shadow"]["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("cedar:")
    );
    assert_ne!(
        decision["shadow"]["policy_version"],
        decision["policy_version"]
    );
}

/// Runs the server binary with `args` and `env` only, in `dir`, to its end.
async fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = common::command(dir, env);
    command.args(args).stdin(std::process::Stdio::null());
    bounded("the server binary to exit", command.output())
        .await
        .expect("the server binary runs")
}

/// A policy file `name` in `dir` with `text`.
fn policy_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A policy whose second `permit` does not parse (line 3).
const BROKEN: &str = "@id(\"RESEARCH\")\npermit (principal, action, resource);\npermit (principal, action resource);\n";

#[tokio::test]
async fn an_invalid_policy_stops_the_server_with_the_file_line_and_column() {
    let dir = TempDir::new().unwrap();
    let bad = policy_file(dir.path(), "bad.cedar", BROKEN);
    let output = run(dir.path(), &[], &[("STAGE0_POLICY", bad.to_str().unwrap())]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.cedar:3:"), "{stderr}");

    // A policy that parses but names an attribute the schema does not declare.
    let unknown = "permit (principal, action, resource) when { context.nonsense == 1 };\n";
    let typo = policy_file(dir.path(), "typo.cedar", unknown);
    let output = run(
        dir.path(),
        &[],
        &[("STAGE0_POLICY", typo.to_str().unwrap())],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("typo.cedar:1:"), "{stderr}");
}

/// Sets the permission bits of `path` to `mode`.
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn a_policy_others_can_write_stops_the_server_and_is_not_reloaded() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("audit.jsonl");
    let policy = policy_file(
        dir.path(),
        "policy.cedar",
        "@id(\"RESEARCH\")\npermit (principal, action == Stage0::Action::\"research-topic\", resource);\n",
    );
    chmod(&policy, 0o666);
    let output = run(
        dir.path(),
        &[],
        &[("STAGE0_POLICY", policy.to_str().unwrap())],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("`{}`", policy.display())) && stderr.contains("mode 0666"),
        "{stderr}"
    );

    chmod(&policy, 0o644);
    let mut server = RawServer::spawn_with(&[
        ("STAGE0_POLICY", policy.to_str().unwrap()),
        ("STAGE0_AUDIT_LOG", log.to_str().unwrap()),
    ]);
    server.initialize(1).await;
    let first = research(&mut server, 2).await;
    assert_eq!(first["verdict"], "ALLOW");
    std::fs::write(
        &policy,
        "@id(\"NOTHING\")\nforbid (principal, action, resource);\n",
    )
    .unwrap();
    chmod(&policy, 0o666);
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(hangup.success());
    let refused = reload_record(&log, 1).await;
    assert_eq!(refused["loaded"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("mode 0666"),
        "{refused}"
    );
    let second = research(&mut server, 3).await;
    assert_eq!(second["verdict"], "ALLOW", "the old policy stays");
    assert_eq!(second["policy_version"], first["policy_version"]);
    server.kill().await;
}

#[tokio::test]
async fn policy_validate_says_which_files_hold_and_which_do_not() {
    let dir = TempDir::new().unwrap();
    let bad = policy_file(dir.path(), "bad.cedar", BROKEN);
    let team = shipped("team-example.cedar");
    let output = run(dir.path(), &["policy", "validate", &team], &[]).await;
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("ok: ") && stdout.contains("cedar:"),
        "{stdout}"
    );

    let output = run(
        dir.path(),
        &["policy", "validate", &team, bad.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("INVALID") && stdout.contains("bad.cedar:3:"),
        "{stdout}"
    );
}

#[tokio::test]
async fn policy_eval_prints_the_verdict_and_the_determining_policies() {
    let dir = TempDir::new().unwrap();
    let team = shipped("team-example.cedar");
    let eval = |role: &'static str, retry_count: &'static str| {
        let team = team.clone();
        let dir = dir.path().to_owned();
        async move {
            let args = [
                "policy",
                "eval",
                "--tool",
                "retry-workflow",
                "--arguments",
                r#"{"workflowId": "payments-nightly", "retryCount": 0}"#,
                "--role",
                role,
                "--retry-count",
                retry_count,
                "--policy",
                &team,
            ];
            run(&dir, &args, &[]).await
        }
    };
    let output = eval("viewer", "0").await;
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("ALLOW (GO) by cedar:"), "{stdout}");
    assert!(stdout.contains("policies: RETRY\n"), "{stdout}");

    let output = eval("viewer", "3").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("DEFER (DEFER) by cedar:"), "{stdout}");
    assert!(
        stdout.contains("policies: PAYMENT_RETRY_REVIEW\n"),
        "{stdout}"
    );
}

/// Reads the audit log at `log` until it holds `count` `policy_reload` records (within
/// [`common::BOUND`]), and returns the last: the record is the server's own signal that the
/// reload is done.
async fn reload_record(log: &Path, count: usize) -> Value {
    bounded("the policy_reload record", async {
        loop {
            let reloads: Vec<Value> = records(log)
                .into_iter()
                .filter(|r| r["kind"] == "policy_reload")
                .collect();
            if reloads.len() >= count {
                return reloads[count - 1].clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// `research-topic` through `server` with request id `id`: its `structuredContent`.
async fn research(server: &mut RawServer, id: u64) -> Value {
    let params = json!({"name": "research-topic", "arguments": {"topic": "Rust"}});
    let response = server.request(id, "tools/call", params).await;
    response["result"]["structuredContent"].clone()
}

#[tokio::test]
async fn sighup_reloads_a_valid_policy_and_keeps_the_old_one_when_the_new_is_invalid() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("audit.jsonl");
    let policy = policy_file(
        dir.path(),
        "policy.cedar",
        "@id(\"RESEARCH\")\npermit (principal, action == Stage0::Action::\"research-topic\", resource);\n",
    );
    let mut server = RawServer::spawn_with(&[
        ("STAGE0_POLICY", policy.to_str().unwrap()),
        ("STAGE0_AUDIT_LOG", log.to_str().unwrap()),
    ]);
    server.initialize(1).await;
    let first = research(&mut server, 2).await;
    assert_eq!(first["verdict"], "ALLOW");

    std::fs::write(
        &policy,
        "@id(\"NOTHING\")\nforbid (principal, action, resource);\n",
    )
    .unwrap();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(hangup.success());
    let loaded = reload_record(&log, 1).await;
    assert_eq!(loaded["loaded"], true);
    assert_eq!(loaded["previous_policy_version"], first["policy_version"]);
    let second = research(&mut server, 3).await;
    assert_eq!(second["verdict"], "DENY");
    assert_eq!(second["policy_version"], loaded["policy_version"]);
    assert_ne!(second["policy_version"], first["policy_version"]);

    std::fs::write(&policy, BROKEN).unwrap();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(hangup.success());
    let refused = reload_record(&log, 2).await;
    assert_eq!(refused["loaded"], false);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("policy.cedar:3:"),
        "{refused}"
    );
    let third = research(&mut server, 4).await;
    assert_eq!(
        third["policy_version"], second["policy_version"],
        "the old policy stays"
    );
    server.kill().await;

    // The reload records are links of the chain like any other, and `audit show` tells them.
    let log = log.to_str().unwrap();
    let verified = run(dir.path(), &["audit", "verify", log], &[]).await;
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    let shown = run(dir.path(), &["audit", "show", log], &[]).await;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(" policy_reload ") && shown.contains(" loaded cedar:"),
        "{shown}"
    );
    assert!(shown.contains(" refused cedar:"), "{shown}");
}
