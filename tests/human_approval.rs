//! Human approval of a `DEFER` through MCP elicitation, over a real MCP session with the binary.
//!
//! The client is a scripted [`Reviewer`]: it declares the elicitation capability (or not),
//! answers every `elicitation/create` the way the test says, and keeps what it was asked. The
//! simulator defers `retry-workflow` at 5 retries; a fake Stage0 on 127.0.0.1 shows what the
//! second check carries.

mod common;

use std::sync::{Arc, Mutex};

use common::{Outcome, STAND_IN, Session, bounded, live_env};
use rmcp::ClientHandler;
use rmcp::model::{
    ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
    Implementation,
};
use rmcp::service::{RequestContext, RoleClient};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How the scripted human answers.
#[derive(Debug, Clone)]
enum Answer {
    /// `accept` with this content.
    Accept(Value),
    Decline,
    Cancel,
    /// Never answers.
    Never,
}

/// An MCP client with a scripted human behind it.
#[derive(Clone)]
struct Reviewer {
    answer: Answer,
    /// Whether the client declares the elicitation capability.
    capable: bool,
    /// Every form it was shown: (message, requested schema as JSON).
    asked: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Reviewer {
    fn answering(answer: Answer) -> Self {
        Reviewer {
            answer,
            capable: true,
            asked: Arc::default(),
        }
    }

    fn approving() -> Self {
        Reviewer::answering(Answer::Accept(
            json!({"approve": true, "name": "Dana", "reason": "root cause fixed"}),
        ))
    }

    fn asked(&self) -> Vec<(String, Value)> {
        self.asked.lock().expect("the log lock").clone()
    }
}

impl ClientHandler for Reviewer {
    fn get_info(&self) -> ClientConfig {
        let capabilities = if self.capable {
            ClientCapabilities::builder().enable_elicitation().build()
        } else {
            ClientCapabilities::default()
        };
        ClientConfig::new(capabilities, Implementation::new("reviewer", "1.0.0"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        let ElicitRequestParams::FormElicitationParams {
            message,
            requested_schema,
            ..
        } = request
        else {
            panic!("the server asks in form mode");
        };
        let schema = serde_json::to_value(&requested_schema).expect("a schema serialises");
        self.asked
            .lock()
            .expect("the log lock")
            .push((message, schema));
        match &self.answer {
            Answer::Accept(content) => {
                Ok(ElicitResult::new(ElicitationAction::Accept).with_content(content.clone()))
            }
            Answer::Decline => Ok(ElicitResult::new(ElicitationAction::Decline)),
            Answer::Cancel => Ok(ElicitResult::new(ElicitationAction::Cancel)),
            Answer::Never => std::future::pending().await,
        }
    }
}

/// Arguments the simulator defers: a sixth attempt at a workflow.
fn looping() -> Value {
    json!({"workflowId": "nightly-etl", "retryCount": 5})
}

/// The call was deferred, nothing ran, and the approval says `outcome`.
fn assert_still_deferred(outcome: &Outcome, approval: &str) {
    assert!(outcome.is_error, "{outcome:#?}");
    assert_eq!(outcome.field("verdict"), "DEFER", "{outcome:#?}");
    assert_eq!(outcome.structured["executed"], false, "{outcome:#?}");
    assert!(!outcome.raw.contains(STAND_IN), "{outcome:#?}");
    assert_eq!(
        outcome.structured["approval"]["outcome"], approval,
        "{outcome:#?}"
    );
    assert!(outcome.structured["approval"].get("approval").is_none());
}

#[tokio::test]
async fn an_approved_deferral_is_checked_again_and_runs_once() {
    let reviewer = Reviewer::approving();
    let session = Session::start_with(
        &[("STAGE0_ACTOR_ID", "dana@example.test")],
        reviewer.clone(),
    )
    .await;
    let outcome = session.call("retry-workflow", looping()).await;

    assert!(!outcome.is_error, "{outcome:#?}");
    assert_eq!(outcome.field("verdict"), "ALLOW");
    assert_eq!(
        outcome.field("reason"),
        "Approved by Dana for this call; no rule blocks it"
    );
    assert_eq!(outcome.structured["executed"], true);
    assert_eq!(
        outcome.raw.matches(STAND_IN).count(),
        2,
        "text and output, once each"
    );
    let approval = &outcome.structured["approval"];
    assert_eq!(approval["outcome"], "approved");
    assert_eq!(approval["approval"]["approved_by"], "Dana");
    assert_eq!(
        approval["approval"]["operator_actor_id"], "dana@example.test",
        "the operator's actor id is recorded beside the name the client asserted"
    );
    assert_eq!(approval["approval"]["approval_reason"], "root cause fixed");
    let approved_at = approval["approval"]["approved_at"]
        .as_str()
        .expect("a time");
    humantime::parse_rfc3339(approved_at).expect("approved_at is RFC 3339");
    assert!(approved_at.ends_with('Z'), "UTC: {approved_at}");
    assert_ne!(
        approval["deferred_request_id"], outcome.structured["request_id"],
        "the second check has its own request id"
    );
    assert!(
        outcome.text.contains("Human review: Approved by Dana at "),
        "{}",
        outcome.text
    );

    let asked = reviewer.asked();
    assert_eq!(asked.len(), 1);
    let (message, schema) = &asked[0];
    for shown in [
        "`retry-workflow`",
        "Retry workflow nightly-etl (attempt 6)",
        "LOOP_THRESHOLD_EXCEEDED",
        "Should we continue retrying or try a different approach?",
    ] {
        assert!(message.contains(shown), "{shown:?} not in {message}");
    }
    assert_eq!(schema["properties"]["approve"]["type"], "boolean");
    assert_eq!(schema["properties"]["name"]["type"], "string");
    assert_eq!(schema["properties"]["name"]["default"], "dana@example.test");
    assert_eq!(schema["properties"]["reason"]["type"], "string");
    assert_eq!(schema["required"], json!(["approve", "name"]));
    session.stop().await;
}

#[tokio::test]
async fn the_second_check_carries_the_approval_and_an_approval_is_never_reused() {
    let fake = bounded("the fake Stage0 to start", async {
        let fake = MockServer::start().await;
        // Mocks are tried in the order they were mounted: ALLOW only with a human approval.
        Mock::given(method("POST"))
            .and(path("/check"))
            .and(body_partial_json(
                json!({"context": {"approval_status": "approved"}}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": "ALLOW", "decision": "GO", "reason": "approved by a human",
                "request_id": "fake-allow", "policy_version": "fake-1"
            })))
            .mount(&fake)
            .await;
        Mock::given(method("POST"))
            .and(path("/check"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": "DEFER", "decision": "DEFER", "reason": "needs a human",
                "request_id": "fake-defer", "policy_version": "fake-1",
                "defer_questions": ["Is this deploy expected?"]
            })))
            .mount(&fake)
            .await;
        fake
    })
    .await;
    let reviewer = Reviewer::approving();
    let session = Session::start_with(&live_env(&fake.uri(), "5000"), reviewer.clone()).await;
    let research = json!({"topic": "rollback plans"});
    let mut deferred_ids = Vec::new();
    for call in 1..=2 {
        let outcome = session.call("research-topic", research.clone()).await;
        assert_eq!(
            outcome.field("verdict"),
            "ALLOW",
            "call {call}: {outcome:#?}"
        );
        assert_eq!(outcome.structured["executed"], true);
        deferred_ids.push(outcome.structured["approval"]["deferred_request_id"].clone());
    }
    assert_eq!(
        reviewer.asked().len(),
        2,
        "each call asks its own human review"
    );

    let requests = bounded("the fake's request log", fake.received_requests())
        .await
        .expect("the fake records requests");
    let contexts: Vec<Value> = requests
        .iter()
        .map(|r| r.body_json::<Value>().expect("JSON")["context"].clone())
        .collect();
    assert_eq!(contexts.len(), 4, "two checks per call: {contexts:#?}");
    // The approval names the DEFER by the X-Request-Id this server sent for it, not the fake's id.
    let sent_ids: Vec<Value> = requests
        .iter()
        .map(|r| json!(r.headers.get("X-Request-Id").unwrap().to_str().unwrap()))
        .collect();
    assert_eq!(deferred_ids, [sent_ids[0].clone(), sent_ids[2].clone()]);
    for call in contexts.chunks(2) {
        assert!(call[0].get("approval_status").is_none(), "{:#}", call[0]);
        assert!(call[0].get("approved_by").is_none(), "{:#}", call[0]);
        assert_eq!(call[1]["approval_status"], "approved");
        assert_eq!(call[1]["approved_by"], "Dana");
        assert_eq!(call[1]["approval_reason"], "root cause fixed");
        assert!(call[1]["approved_at"].is_string());
    }
    session.stop().await;
}

#[tokio::test]
async fn every_answer_but_an_approval_leaves_the_call_deferred_and_unrun() {
    let answers = [
        (Answer::Decline, "declined"),
        (Answer::Cancel, "cancelled"),
        (
            Answer::Accept(json!({"approve": false, "name": "Dana", "reason": "no"})),
            "rejected",
        ),
        (
            Answer::Accept(json!({"approve": "yes", "name": "Dana"})),
            "invalid_answer",
        ),
        (Answer::Accept(json!({"name": "Dana"})), "invalid_answer"),
        (
            Answer::Accept(json!({"approve": true, "name": "   "})),
            "invalid_answer",
        ),
        (Answer::Accept(json!(["approve"])), "invalid_answer"),
    ];
    for (answer, expected) in answers {
        let reviewer = Reviewer::answering(answer.clone());
        let session = Session::start_with(&[], reviewer.clone()).await;
        let outcome = session.call("retry-workflow", looping()).await;
        assert_still_deferred(&outcome, expected);
        assert_eq!(reviewer.asked().len(), 1, "{answer:?}");
        assert!(outcome.text.contains("Human review: "), "{}", outcome.text);
        if expected == "rejected" {
            assert_eq!(outcome.structured["approval"]["detail"], "Dana: no");
        }
        session.stop().await;
    }
}

#[tokio::test]
async fn no_answer_within_the_approval_timeout_leaves_the_call_deferred() {
    let reviewer = Reviewer::answering(Answer::Never);
    let session =
        Session::start_with(&[("STAGE0_APPROVAL_TIMEOUT_S", "1")], reviewer.clone()).await;
    let outcome = session.call("retry-workflow", looping()).await;
    assert_still_deferred(&outcome, "timed_out");
    assert_eq!(reviewer.asked().len(), 1);
    session.stop().await;
}

#[tokio::test]
async fn a_client_without_elicitation_gets_the_deferral_and_a_sentence_why() {
    let reviewer = Reviewer {
        capable: false,
        ..Reviewer::approving()
    };
    let session = Session::start_with(&[], reviewer.clone()).await;
    let outcome = session.call("retry-workflow", looping()).await;
    assert_still_deferred(&outcome, "unsupported");
    assert!(
        outcome
            .text
            .contains("Approval needs an MCP client that supports elicitation"),
        "{}",
        outcome.text
    );
    assert!(reviewer.asked().is_empty());
    session.stop().await;
}

#[tokio::test]
async fn approvals_off_never_asks() {
    let reviewer = Reviewer::approving();
    let session = Session::start_with(&[("STAGE0_APPROVALS", "off")], reviewer.clone()).await;
    let outcome = session.call("retry-workflow", looping()).await;
    assert_still_deferred(&outcome, "disabled");
    assert!(reviewer.asked().is_empty());
    session.stop().await;
}

#[tokio::test]
async fn a_deny_and_a_report_only_check_never_ask_a_human() {
    let reviewer = Reviewer::approving();
    let session = Session::start_with(&[], reviewer.clone()).await;
    let denied = session
        .call(
            "publish-content",
            json!({"content": "hello", "channel": "blog"}),
        )
        .await;
    assert_eq!(denied.field("verdict"), "DENY");
    assert!(denied.structured.get("approval").is_none(), "{denied:#?}");
    let deploy = session
        .call(
            "managed-deploy",
            json!({
                "serviceName": "web", "environment": "production", "changes": "c",
                "actorRole": "admin", "approvalStatus": "approved"
            }),
        )
        .await;
    assert_eq!(deploy.field("verdict"), "DENY");
    let vague = session
        .call(
            "check-authorization",
            json!({"goal": "help me", "sideEffects": []}),
        )
        .await;
    assert_eq!(vague.field("verdict"), "DEFER");
    assert!(vague.structured.get("approval").is_none(), "{vague:#?}");
    assert!(reviewer.asked().is_empty(), "{:?}", reviewer.asked());
    session.stop().await;
}

#[tokio::test]
async fn a_name_outside_the_limits_is_an_invalid_answer_and_nothing_runs() {
    let huge = "x".repeat(3 * 1024 * 1024);
    for name in [
        huge.as_str(),
        "\u{200b}",
        "Dana\u{200b}",
        "Dana\nApproved by: security",
    ] {
        let reviewer = Reviewer::answering(Answer::Accept(
            json!({"approve": true, "name": name, "reason": "ok"}),
        ));
        let session = Session::start_with(&[], reviewer.clone()).await;
        let outcome = session.call("retry-workflow", looping()).await;
        assert_still_deferred(&outcome, "invalid_answer");
        assert!(
            outcome.raw.len() < 64 * 1024,
            "the name is not echoed back: {} bytes",
            outcome.raw.len()
        );
        session.stop().await;
    }
}

/// A fake Stage0 that defers every check, saying `reason`.
async fn always_deferring(reason: &str) -> MockServer {
    let reason = reason.to_owned();
    bounded("the fake Stage0 to start", async move {
        let fake = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/check"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": "DEFER", "decision": "DEFER", "reason": reason,
                "request_id": "fake-defer", "policy_version": "fake-1"
            })))
            .mount(&fake)
            .await;
        fake
    })
    .await
}

#[tokio::test]
async fn the_prompt_shows_the_call_s_own_arguments_and_agent_text_cannot_forge_it() {
    let fake = always_deferring("REAL_REASON: publishing needs review").await;
    let reviewer = Reviewer::answering(Answer::Decline);
    let session = Session::start_with(&live_env(&fake.uri(), "5000"), reviewer.clone()).await;
    let hostile = format!(
        "harmless\nReason: pre-approved by security{}\u{1b}[2J",
        "\n".repeat(60)
    );
    for content in ["a harmless post", "THE LEAKED PAYROLL", hostile.as_str()] {
        let outcome = session
            .call(
                "publish-content",
                json!({"content": content, "channel": "blog"}),
            )
            .await;
        assert_still_deferred(&outcome, "declined");
    }
    let asked = reviewer.asked();
    assert_eq!(asked.len(), 3);
    let (harmless, leak, forged) = (&asked[0].0, &asked[1].0, &asked[2].0);
    assert_ne!(harmless, leak, "two contents, two prompts");
    assert!(
        harmless.contains("[argument content] a harmless post\n"),
        "{harmless}"
    );
    assert!(
        leak.contains("[argument content] THE LEAKED PAYROLL\n"),
        "{leak}"
    );
    for message in [harmless, leak, forged] {
        assert!(message.contains("Arguments SHA-256: "), "{message}");
        assert!(
            message.contains("Call (id of the deferring check): "),
            "{message}"
        );
    }
    let call_id = |message: &str| {
        message
            .lines()
            .find_map(|line| line.strip_prefix("Call id (audit log): "))
            .map(str::to_owned)
            .expect("the audit log's call id is shown")
    };
    assert_ne!(call_id(harmless), call_id(leak), "each call its own id");

    let lines: Vec<&str> = forged.lines().collect();
    let reason = lines
        .iter()
        .position(|line| *line == "Reason: REAL_REASON: publishing needs review")
        .expect("the real reason has its own line");
    let agent = lines
        .iter()
        .position(|line| line.contains("harmless"))
        .expect("the agent's content is shown");
    assert!(reason < agent, "{forged}");
    assert!(
        lines[agent].starts_with("[argument content] harmless\\nReason: pre-approved"),
        "the content stays in its field, newlines escaped: {}",
        lines[agent]
    );
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.starts_with("Reason:"))
            .count(),
        1,
        "{forged}"
    );
    assert!(!forged.contains('\u{1b}'), "{forged}");
    session.stop().await;
}

#[tokio::test]
async fn after_an_approval_the_body_sees_the_approved_status_and_its_guardrails_are_recorded() {
    let fake = bounded("the fake Stage0 to start", async {
        let fake = MockServer::start().await;
        // Approved: ALLOW under the `read_only` guardrail. Anything else: DEFER.
        Mock::given(method("POST"))
            .and(path("/check"))
            .and(body_partial_json(
                json!({"context": {"approval_status": "approved"}}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": "ALLOW", "decision": "GO", "reason": "approved deploy",
                "request_id": "fake-allow", "policy_version": "fake-1",
                "guardrails": ["read_only"]
            })))
            .with_priority(1)
            .mount(&fake)
            .await;
        Mock::given(method("POST"))
            .and(path("/check"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "verdict": "DEFER", "decision": "DEFER", "reason": "needs a human",
                "request_id": "fake-defer", "policy_version": "fake-1"
            })))
            .with_priority(2)
            .mount(&fake)
            .await;
        fake
    })
    .await;
    let reviewer = Reviewer::answering(Answer::Accept(
        json!({"approve": true, "name": "Dana", "reason": "change window open"}),
    ));
    let dir = tempfile::TempDir::new().expect("a working folder");
    let base_url = fake.uri();
    let env = live_env(&base_url, "5000");
    let session = Session::spawn(common::command(dir.path(), &env), reviewer).await;
    let outcome = session
        .call(
            "managed-deploy",
            json!({"serviceName": "api", "environment": "staging", "changes": "bump",
                   "actorRole": "admin", "approvalStatus": "pending"}),
        )
        .await;
    assert!(!outcome.is_error, "{outcome:#?}");
    assert_eq!(outcome.structured["executed"], true);
    let output = outcome.structured["output"]
        .as_str()
        .expect("the body's output");
    assert!(output.contains("- Approval Status: approved"), "{output}");
    assert!(!output.contains("pending"), "{output}");
    session.stop().await;
    let records = common::audit_records(&dir.path().join(common::AUDIT_LOG));
    let ended = records.last().expect("an outcome record");
    assert_eq!(ended["kind"], "outcome");
    assert_eq!(ended["guardrails_enforced"], json!(["read_only"]));
    assert!(ended.get("guardrails_unenforced").is_none(), "{ended:?}");
}

/// The `params` of a stateless 2026-07-28 `tools/call` of `research-topic` from a client that
/// declares form elicitation: the first round, or, with `retry`, the retry echoing its
/// `requestState` with these `inputResponses` (`None`: the state alone).
fn mrtr_round(retry: Option<(&str, Option<Value>)>) -> Value {
    let mut params = json!({
        "name": "research-topic",
        "arguments": {"topic": "rollback plans"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "mrtr-test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
        }
    });
    if let Some((state, responses)) = retry {
        params["requestState"] = json!(state);
        if let Some(responses) = responses {
            params["inputResponses"] = responses;
        }
    }
    params
}

/// Makes `fake` a policy decision point whose answer changes between checks: the first check
/// is `DEFER`, every later one `ALLOW`, approved or not.
async fn defer_once_then_allow(fake: &MockServer) {
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path("/check"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "verdict": "DEFER", "decision": "DEFER", "reason": "needs a human",
            "request_id": "fake-defer", "policy_version": "fake-1"
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/check"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "verdict": "ALLOW", "decision": "GO", "reason": "risk is low now",
            "request_id": "fake-allow", "policy_version": "fake-2"
        })))
        .with_priority(2)
        .mount(fake)
        .await;
}

/// The `X-Request-Id` of each `/check` `fake` received, in order.
async fn checks(fake: &MockServer) -> Vec<String> {
    bounded("the fake's request log", fake.received_requests())
        .await
        .expect("the fake records requests")
        .iter()
        .map(|r| r.headers["X-Request-Id"].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn over_mrtr_a_retry_without_an_approval_ends_with_the_defer_and_is_not_checked_again() {
    let fake = bounded("the fake Stage0 to start", MockServer::start()).await;
    let base_url = fake.uri();
    let mut server = common::RawServer::spawn_with(&live_env(&base_url, "5000"));
    let rejected = json!({"action": "accept",
                          "content": {"approve": false, "name": "Dana", "reason": "no"}});
    let endings = [
        (Some(json!({"approval": rejected})), "rejected"),
        (Some(json!({"approval": {"action": "decline"}})), "declined"),
        (Some(json!({"approval": {"action": "cancel"}})), "cancelled"),
        (Some(json!({})), "invalid_answer"),
        (None, "invalid_answer"),
    ];
    let mut id = 0;
    for (responses, expected) in endings {
        defer_once_then_allow(&fake).await;
        id += 2;
        let asked = server.request(id, "tools/call", mrtr_round(None)).await;
        assert_eq!(asked["result"]["resultType"], "input_required", "{asked:#}");
        let state = asked["result"]["requestState"].as_str().expect("a state");
        let answered = server
            .request(id + 1, "tools/call", mrtr_round(Some((state, responses))))
            .await;
        let result = &answered["result"];
        let report = &result["structuredContent"];
        let deferred = checks(&fake).await;
        assert_eq!(
            deferred.len(),
            1,
            "{expected}: no second check: {answered:#}"
        );
        assert_eq!(result["isError"], true, "{expected}: {answered:#}");
        assert_eq!(report["verdict"], "DEFER", "{expected}: {answered:#}");
        assert_eq!(report["decision"], "DEFER");
        assert_eq!(report["executed"], false);
        assert_eq!(report["request_id"], deferred[0].as_str());
        assert_eq!(report["policy_version"], "fake-1");
        assert_eq!(report["reason"], "needs a human");
        assert_eq!(report["approval"]["outcome"], expected);
        assert_eq!(report["approval"]["via"], "mrtr");
        assert_eq!(
            report["approval"]["deferred_request_id"],
            deferred[0].as_str()
        );
        assert!(!answered.to_string().contains(STAND_IN), "{answered:#}");
    }

    // An approval is checked again, with the approval, and runs on that check's ALLOW.
    defer_once_then_allow(&fake).await;
    let asked = server.request(20, "tools/call", mrtr_round(None)).await;
    let state = asked["result"]["requestState"].as_str().expect("a state");
    let approve = json!({"approval": {"action": "accept",
                                      "content": {"approve": true, "name": "Dana"}}});
    let answered = server
        .request(21, "tools/call", mrtr_round(Some((state, Some(approve)))))
        .await;
    let report = &answered["result"]["structuredContent"];
    assert_eq!(report["verdict"], "ALLOW", "{answered:#}");
    assert_eq!(report["executed"], true);
    assert_eq!(report["approval"]["outcome"], "approved");
    let requests = bounded("the fake's request log", fake.received_requests())
        .await
        .expect("the fake records requests");
    assert_eq!(requests.len(), 2, "checked again after the approval");
    let second: Value = requests[1].body_json().expect("JSON");
    assert_eq!(second["context"]["approval_status"], "approved");
    server.close_stdin();
    server.exit().await;
}

#[tokio::test]
async fn a_server_with_approvals_off_takes_no_approval_from_a_state_another_server_sealed() {
    const STATE_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let fake = bounded("the fake Stage0 to start", MockServer::start()).await;
    defer_once_then_allow(&fake).await;
    let base_url = fake.uri();
    let mut asking = live_env(&base_url, "5000");
    asking.push(("STAGE0_REQUEST_STATE_KEY", STATE_KEY));
    let mut not_asking = asking.clone();
    not_asking.push(("STAGE0_APPROVALS", "off"));
    let mut first = common::RawServer::spawn_with(&asking);
    let mut second = common::RawServer::spawn_with(&not_asking);
    let asked = first.request(1, "tools/call", mrtr_round(None)).await;
    let state = asked["result"]["requestState"].as_str().expect("a state");
    let approve = json!({"approval": {"action": "accept",
                                      "content": {"approve": true, "name": "Dana"}}});
    let answered = second
        .request(1, "tools/call", mrtr_round(Some((state, Some(approve)))))
        .await;
    let report = &answered["result"]["structuredContent"];
    assert_eq!(report["verdict"], "DEFER", "{answered:#}");
    assert_eq!(report["executed"], false);
    assert_eq!(report["approval"]["outcome"], "disabled");
    assert_eq!(checks(&fake).await.len(), 1, "not checked again");
    for server in [first, second] {
        let mut server = server;
        server.close_stdin();
        server.exit().await;
    }
}
