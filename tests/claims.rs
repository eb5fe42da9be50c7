//! The agent cannot vouch for itself: retry counts, roles and approvals in tool arguments are
//! claims, and what reaches the policy decision point is what the server vouches for.
//!
//! Each test drives the built binary over a real MCP session; where the request to Stage0
//! matters, a fake Stage0 on 127.0.0.1 records it.

mod common;

use common::{Session, bounded, live_env};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A fake Stage0 that answers every `/check` with `DENY`, so no tool body runs.
async fn denying_stage0() -> MockServer {
    bounded("the fake Stage0 to start", async {
        let fake = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/check"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": "DENY",
                "decision": "NO_GO",
                "reason": "Fake Stage0 denies everything",
                "request_id": "fake",
                "policy_version": "fake-1"
            })))
            .mount(&fake)
            .await;
        fake
    })
    .await
}

/// The `context` of every `/check` the fake received, in order.
async fn sent_contexts(fake: &MockServer) -> Vec<Value> {
    bounded("the fake's request log", fake.received_requests())
        .await
        .expect("the fake records requests")
        .iter()
        .map(|request| {
            let body: Value = request.body_json().expect("the /check body is JSON");
            body["context"].clone()
        })
        .collect()
}

/// The bodies of every `/check` the fake received, in order.
async fn sent_bodies(fake: &MockServer) -> Vec<Value> {
    bounded("the fake's request log", fake.received_requests())
        .await
        .expect("the fake records requests")
        .iter()
        .map(|request| request.body_json().expect("the /check body is JSON"))
        .collect()
}

/// A live-mode environment whose operator configured `role` (and the id `ops-bot`).
fn operator_env<'a>(base_url: &'a str, role: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<_> = live_env(base_url, "5000")
        .into_iter()
        .filter(|(name, _)| *name != "STAGE0_ACTOR_ROLE")
        .collect();
    env.push(("STAGE0_ACTOR_ROLE", role));
    env.push(("STAGE0_ACTOR_ID", "ops-bot"));
    env
}

#[tokio::test]
async fn an_agent_repeating_retry_count_zero_is_deferred_on_its_sixth_call() {
    let session = Session::start(&[]).await;
    let retry = json!({"workflowId": "nightly-etl", "retryCount": 0});
    for call in 1..=5 {
        let outcome = session.call("retry-workflow", retry.clone()).await;
        assert_eq!(
            outcome.field("verdict"),
            "ALLOW",
            "call {call}: {outcome:#?}"
        );
        assert_eq!(outcome.structured["executed"], true, "call {call}");
        assert_eq!(
            outcome.structured["provenance"]["retry_count"],
            json!({"effective": call - 1, "claimed": 0, "observed": call - 1}),
            "call {call}"
        );
    }
    let sixth = session.call("retry-workflow", retry.clone()).await;
    assert_eq!(sixth.field("verdict"), "DEFER", "{sixth:#?}");
    assert_eq!(sixth.structured["executed"], false);
    assert!(sixth.field("reason").starts_with("LOOP_THRESHOLD_EXCEEDED"));
    assert_eq!(
        sixth.structured["provenance"]["retry_count"],
        json!({"effective": 5, "claimed": 0, "observed": 5})
    );
    assert!(
        sixth.text.contains(
            "retry_count 5 was used, not the claimed 0: the server has seen 5 earlier attempts"
        ),
        "{}",
        sixth.text
    );

    let other = session
        .call(
            "retry-workflow",
            json!({"workflowId": "backup", "retryCount": 0}),
        )
        .await;
    assert_eq!(other.field("verdict"), "ALLOW", "{other:#?}");
    assert_eq!(other.structured["provenance"]["retry_count"]["observed"], 0);
    session.stop().await;
}

#[tokio::test]
async fn a_workflow_spelled_otherwise_is_the_same_workflow_and_runs_under_the_counted_id() {
    let session = Session::start(&[]).await;
    let spellings = [
        "etl",
        "ETL",
        "etl ",
        "\u{ff45}\u{ff54}\u{ff4c}",
        " Etl\u{3000}",
    ];
    for (seen, spelling) in spellings.into_iter().enumerate() {
        let outcome = session
            .call(
                "retry-workflow",
                json!({"workflowId": spelling, "retryCount": 0}),
            )
            .await;
        assert_eq!(
            outcome.field("verdict"),
            "ALLOW",
            "{spelling:?}: {outcome:#?}"
        );
        assert_eq!(
            outcome.structured["provenance"]["retry_count"]["observed"], seen,
            "{spelling:?}"
        );
        assert!(
            outcome.text.contains("Workflow etl retried successfully."),
            "the body runs on the id that was counted: {}",
            outcome.text
        );
    }
    let sixth = session
        .call(
            "retry-workflow",
            json!({"workflowId": "\u{ff25}TL", "retryCount": 0}),
        )
        .await;
    assert_eq!(sixth.field("verdict"), "DEFER", "{sixth:#?}");
    assert_eq!(sixth.structured["executed"], false);
    session.stop().await;
}

#[tokio::test]
async fn a_workflow_id_with_a_control_or_invisible_character_is_invalid_and_nothing_is_checked() {
    let fake = denying_stage0().await;
    let session = Session::start(&live_env(&fake.uri(), "5000")).await;
    for (spelling, shown) in [
        ("etl\u{200b}", "U+200B"),
        ("etl\t", "U+0009"),
        ("etl\u{0}", "U+0000"),
        ("etl\n", "U+000A"),
        ("etl\u{2060}", "U+2060"),
    ] {
        let outcome = session
            .call(
                "retry-workflow",
                json!({"workflowId": spelling, "retryCount": 0}),
            )
            .await;
        assert!(outcome.is_error, "{spelling:?}: {outcome:#?}");
        assert_eq!(outcome.structured, Value::Null, "{spelling:?}");
        let expected = format!(
            "invalid arguments for `retry-workflow`: `workflowId`: character 4 of the workflow id \
             is `{shown}`"
        );
        assert!(outcome.text.starts_with(&expected), "{}", outcome.text);
    }
    assert_eq!(
        sent_bodies(&fake).await,
        Vec::<Value>::new(),
        "nothing was checked"
    );
    session.stop().await;
}

#[tokio::test]
async fn every_call_counts_as_an_attempt_whatever_its_verdict() {
    let fake = denying_stage0().await;
    let session = Session::start(&live_env(&fake.uri(), "5000")).await;
    for _ in 0..3 {
        let outcome = session
            .call(
                "retry-workflow",
                json!({"workflowId": "W", "retryCount": 0}),
            )
            .await;
        assert_eq!(outcome.field("verdict"), "DENY");
    }
    let bodies = sent_bodies(&fake).await;
    let sent: Vec<(Value, Value, Value)> = bodies
        .iter()
        .map(|body| {
            (
                body["goal"].clone(),
                body["context"]["retry_count"].clone(),
                body["context"]["claimed_retry_count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            // `W` is counted, checked and run as its canonical form `w`.
            (json!("Retry workflow w (attempt 1)"), json!(0), json!(0)),
            (json!("Retry workflow w (attempt 2)"), json!(1), json!(0)),
            (json!("Retry workflow w (attempt 3)"), json!(2), json!(0)),
        ]
    );
    session.stop().await;
}

#[tokio::test]
async fn a_higher_claimed_retry_count_is_kept() {
    let fake = denying_stage0().await;
    let session = Session::start(&live_env(&fake.uri(), "5000")).await;
    session
        .call(
            "retry-workflow",
            json!({"workflowId": "W", "retryCount": 7}),
        )
        .await;
    let contexts = sent_contexts(&fake).await;
    assert_eq!(contexts[0]["retry_count"], 7);
    assert_eq!(contexts[0]["claimed_retry_count"], 7);
    session.stop().await;
}

#[tokio::test]
async fn the_role_sent_is_the_lower_of_the_claim_and_the_operators_role() {
    let roles = ["viewer", "developer", "admin"];
    let lower = |a: &str, b: &str| {
        let rank = |role: &str| roles.iter().position(|r| *r == role).expect("a role");
        roles[rank(a).min(rank(b))]
    };
    for configured in roles {
        let fake = denying_stage0().await;
        let session = Session::start(&operator_env(&fake.uri(), configured)).await;
        // deploy-changes: the role is optional, and a missing claim is a claim of viewer.
        let claims = [None, Some("viewer"), Some("developer"), Some("admin")];
        for claimed in claims {
            let mut arguments = json!({
                "serviceName": "web", "environment": "staging", "changes": "c"
            });
            if let Some(role) = claimed {
                arguments["actorRole"] = json!(role);
            }
            session.call("deploy-changes", arguments).await;
        }
        // managed-deploy: the role is required.
        for claimed in roles {
            session
                .call(
                    "managed-deploy",
                    json!({
                        "serviceName": "web", "environment": "staging", "changes": "c",
                        "actorRole": claimed, "approvalStatus": "none"
                    }),
                )
                .await;
        }
        let contexts = sent_contexts(&fake).await;
        let claimed_roles = claims
            .iter()
            .map(|claim| claim.unwrap_or("viewer"))
            .chain(roles);
        assert_eq!(contexts.len(), 7);
        for (context, claimed) in contexts.iter().zip(claimed_roles) {
            let expected = lower(claimed, configured);
            assert_eq!(
                (&context["actor_role"], &context["claimed_actor_role"]),
                (&json!(expected), &json!(claimed)),
                "configured {configured}, claimed {claimed}: {context}"
            );
            assert_eq!(context["actor_id"], "ops-bot");
        }
        session.stop().await;
    }
}

#[tokio::test]
async fn the_result_shows_the_effective_and_the_claimed_role_and_approval() {
    let session = Session::start(&[("STAGE0_ACTOR_ROLE", "developer")]).await;
    let outcome = session
        .call(
            "managed-deploy",
            json!({
                "serviceName": "web", "environment": "production", "changes": "c",
                "actorRole": "admin", "approvalStatus": "approved"
            }),
        )
        .await;
    // The simulator denies every deploy; what matters is what it was asked and what was shown.
    assert_eq!(outcome.field("verdict"), "DENY");
    assert_eq!(
        outcome.structured["provenance"],
        json!({
            "actor_role": {"effective": "developer", "claimed": "admin", "configured": "developer"},
            "approval_status": {"effective": "pending", "claimed": "approved"}
        })
    );
    assert!(
        outcome
            .text
            .contains("actor_role developer was used, not the claimed admin"),
        "{}",
        outcome.text
    );
    assert!(
        outcome
            .text
            .contains("approval_status pending was used, not the claimed approved"),
        "{}",
        outcome.text
    );
    session.stop().await;
}

#[tokio::test]
async fn a_claimed_approval_reaches_stage0_as_pending_and_requires_approval() {
    let fake = denying_stage0().await;
    let session = Session::start(&live_env(&fake.uri(), "5000")).await;
    for status in ["approved", "pending", "none"] {
        session
            .call(
                "managed-deploy",
                json!({
                    "serviceName": "web", "environment": "production", "changes": "c",
                    "actorRole": "admin", "approvalStatus": status
                }),
            )
            .await;
    }
    let bodies = sent_bodies(&fake).await;
    let sent: Vec<(&Value, &Value, &Value)> = bodies
        .iter()
        .map(|body| {
            (
                &body["context"]["approval_status"],
                &body["context"]["claimed_approval_status"],
                &body["constraints"],
            )
        })
        .collect();
    let required = json!(["production_deployment", "approval_required"]);
    assert_eq!(
        sent,
        [
            (&json!("pending"), &json!("approved"), &required),
            (&json!("pending"), &json!("pending"), &required),
            (&json!("none"), &json!("none"), &required),
        ]
    );
    for body in &bodies {
        assert!(body["context"].get("approved_by").is_none(), "{body}");
    }
    session.stop().await;
}

#[tokio::test]
async fn an_invalid_operator_role_stops_the_server_at_start() {
    let dir = tempfile::TempDir::new().expect("a temporary directory");
    let output = bounded(
        "the server to refuse to start",
        common::command(dir.path(), &[("STAGE0_ACTOR_ROLE", "root")]).output(),
    )
    .await
    .expect("the server runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`STAGE0_ACTOR_ROLE` must be `viewer`, `developer` or `admin`, got `root`"),
        "{stderr}"
    );
}
