//! Property tests (proptest): the simulator, the `/check` response parser and the guard hold
//! their contracts for arbitrary inputs, not only for the cases in the tables.
//!
//! - The simulator, over any goal (any Unicode), side-effect list and context (any JSON, wrong
//!   types, NaN-like strings, huge numbers): never panics, and the first matching rule of
//!   `docs/contract.md` §4 answers, with that rule's verdict, decision, reason code and risk score.
//! - The parser, over any JSON value and, through the real HTTP client, any bytes: never panics,
//!   and nothing but a *well-formed `ALLOW`* is an `ALLOW`. Well-formed `ALLOW` (`docs/contract.md`
//!   §3 and `wire.rs`): a `200 OK` response whose body (at most 1 MiB) is one JSON text (RFC
//!   8259) that repeats no key in any object and is an object whose `verdict` member is the string
//!   `ALLOW` and whose `decision` member is the string `GO`, each in any ASCII case. The other
//!   fields are reported, never consulted. (The TypeScript original read a repeated key as its
//!   last occurrence, as `JSON.parse` does; this server refuses the answer instead.)
//! - The guard, in front of a fake Stage0 over HTTP on 127.0.0.1 that answers each check with an
//!   arbitrary status, headers and body, or closes the connection: the tool body runs exactly
//!   when the answer that decided was a well-formed `ALLOW`, and then exactly once.
//!
//! Case counts keep the whole file at a few seconds.

mod fake_stage0;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_stage0::{Exchange, FakeStage0, Fate, Reply};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use rmcp::model::CallToolResponse;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use stage0_guard::approval::Approvals;
use stage0_guard::claims::Operator;
use stage0_guard::config::Config;
use stage0_guard::guard::{Guard, GuardedTool, Permit, ToolIntent, ToolOutput};
use stage0_guard::json::first_duplicate_key;
use stage0_guard::policy::PolicyClient;
use stage0_guard::policy::simulator::{POLICY_VERSION, simulate};
use stage0_guard::policy::wire::{Decision, Intent, PolicyResponse, Verdict};

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Strings that mean something to the simulator or the parser, mixed into arbitrary ones.
const NOTABLE: &[&str] = &[
    "",
    "ALLOW",
    "allow",
    "Allow",
    "DENY",
    "DEFER",
    "approved",
    "publish",
    "deploy",
    "loop",
    "NaN",
    "Infinity",
    "-Infinity",
    "5",
    "5.0",
    "1e999",
    "-1",
    "null",
    "true",
];

fn notable_or_any_string() -> impl Strategy<Value = String> {
    prop_oneof![select(NOTABLE).prop_map(str::to_owned), any::<String>(),]
}

/// Any JSON leaf, weighted towards numbers and strings near the simulator's boundaries.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // NaN and infinities become `null`, as serde_json has no number for them.
        any::<f64>().prop_map(Value::from),
        select(
            &[
                4.0, 4.999_999, 5.0, 5.000_001, -0.0, 5e-324, 1e308, -1e308, 4.5e15
            ][..]
        )
        .prop_map(Value::from),
        (-10i64..20).prop_map(Value::from),
        notable_or_any_string().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(notable_or_any_string(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// (a) The simulator: never panics, the first matching rule answers
// ---------------------------------------------------------------------------------------------

/// The rule of `docs/contract.md` §4 that must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Guardrails,
    LoopThreshold,
    Unclear,
    NoCriteria,
    Allow,
}

/// Who approved, when the context carries a human approval: `approval_status` exactly
/// `"approved"` and an `approved_by` string that is not blank (README, simulator table).
fn approver(intent: &Intent) -> Option<String> {
    if intent.context.get("approval_status") != Some(&json!("approved")) {
        return None;
    }
    let by = intent.context.get("approved_by")?.as_str()?.trim();
    (!by.is_empty()).then(|| by.to_owned())
}

/// `docs/contract.md` §4, written from the table, not from `simulator.rs`.
fn expected_rule(intent: &Intent) -> Rule {
    let has = |effect: &str| intent.side_effects.iter().any(|e| e == effect);
    let retry_count_at_least_5 = matches!(
        intent.context.get("retry_count"),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|count| count >= 5.0)
    );
    let approved = approver(intent).is_some();
    let lower = intent.goal.to_lowercase();
    let vague = intent.goal.encode_utf16().count() < 10
        || intent.goal.contains("幫我")
        || intent.goal.contains("想一下")
        || lower.contains("help me")
        || lower.contains("think");

    if has("publish") || has("deploy") {
        Rule::Guardrails
    } else if !approved && has("loop") && retry_count_at_least_5 {
        Rule::LoopThreshold
    } else if !approved && vague {
        Rule::Unclear
    } else if intent.success_criteria.is_empty() {
        Rule::NoCriteria
    } else {
        Rule::Allow
    }
}

fn goal() -> impl Strategy<Value = String> {
    let trigger = select(
        &[
            "help me",
            "HELP ME",
            "Help Me",
            "think",
            "THINK",
            "ThInK",
            "幫我",
            "想一下",
            "help  me",
            "thin k",
            "",
        ][..],
    );
    prop_oneof![
        any::<String>(),
        "[a-zA-Z ]{0,14}",
        (any::<String>(), trigger, "[a-z ]{0,12}").prop_map(|(a, t, b)| format!("{a}{t}{b}")),
    ]
}

fn side_effects() -> impl Strategy<Value = Vec<String>> {
    let effect = prop_oneof![
        3 => select(&["publish", "deploy", "loop", "read", "PUBLISH", "Deploy", " loop", "loop "][..])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(effect, 0..4)
}

/// A context with the keys the rules read (right and wrong types) and arbitrary others.
fn context() -> impl Strategy<Value = Map<String, Value>> {
    let retry_count = prop_oneof![Just(None), json_leaf().prop_map(Some)];
    let approval_status = prop_oneof![
        Just(None),
        Just(Some(json!("approved"))),
        json_leaf().prop_map(Some),
    ];
    let approved_by = prop_oneof![
        Just(None),
        Just(Some(json!(""))),
        Just(Some(json!(" \t "))),
        Just(Some(json!("alice@example.com"))),
        json_leaf().prop_map(Some),
    ];
    let others = prop::collection::btree_map("[a-z_]{1,12}", json_value(), 0..3);
    (retry_count, approval_status, approved_by, others).prop_map(
        |(retry_count, approval_status, approved_by, others)| {
            let mut context: Map<String, Value> = others.into_iter().collect();
            for (key, value) in [
                ("retry_count", retry_count),
                ("approval_status", approval_status),
                ("approved_by", approved_by),
            ] {
                match value {
                    Some(value) => context.insert(key.to_owned(), value),
                    None => context.remove(key),
                };
            }
            context
        },
    )
}

fn intent() -> impl Strategy<Value = Intent> {
    (
        goal(),
        prop::collection::vec(any::<String>(), 0..3),
        side_effects(),
        context(),
    )
        .prop_map(|(goal, success_criteria, side_effects, context)| Intent {
            goal,
            success_criteria,
            constraints: Vec::new(),
            tools: Vec::new(),
            side_effects,
            context,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_simulator_answers_every_intent_by_the_first_matching_rule(
        intent in intent(),
        request_id in any::<String>(),
    ) {
        let response = simulate(&intent, request_id.clone());
        let rule = expected_rule(&intent);
        let approved_allow = approver(&intent).map(|by| format!("Approved by {by} for this call"));
        let (verdict, decision, code, risk) = match rule {
            Rule::Guardrails => (Verdict::Deny, Decision::NoGo, "SIDE_EFFECTS_NEED_GUARDRAILS: ", 64),
            Rule::LoopThreshold => (Verdict::Defer, Decision::Defer, "LOOP_THRESHOLD_EXCEEDED: ", 45),
            Rule::Unclear => (Verdict::Defer, Decision::Defer, "UNCLEAR_VALUE_SIGNAL: ", 35),
            Rule::NoCriteria => (Verdict::Deny, Decision::NoGo, "MISSING_SUCCESS_CRITERIA: ", 59),
            Rule::Allow => (
                Verdict::Allow,
                Decision::Go,
                approved_allow
                    .as_deref()
                    .unwrap_or("Informational operation with no high-risk side effects"),
                15,
            ),
        };
        prop_assert_eq!(response.verdict, verdict, "{:?} for {:?}", rule, intent);
        prop_assert_eq!(response.decision, decision);
        prop_assert!(response.reason.starts_with(code), "{}", response.reason);
        prop_assert_eq!(response.risk_score.as_ref().and_then(|n| n.as_u64()), Some(risk));
        prop_assert_eq!(response.high_risk, Some(rule == Rule::Guardrails));
        prop_assert_eq!(&response.policy_version, POLICY_VERSION);
        prop_assert_eq!(&response.request_id, &request_id);
        prop_assert!(serde_json::to_value(&response).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The response parser: nothing but a well-formed ALLOW is an ALLOW
// ---------------------------------------------------------------------------------------------

/// Whether a parsed body is a well-formed `ALLOW` (see the module documentation); a `Value`
/// cannot hold a repeated key, so the bytes are checked for one apart ([`answered_allow`]).
fn is_well_formed_allow(body: &Value) -> bool {
    let member = |name: &str, expected: &str| {
        body.as_object()
            .and_then(|object| object.get(name))
            .and_then(Value::as_str)
            .is_some_and(|value| value.eq_ignore_ascii_case(expected))
    };
    member("verdict", "ALLOW") && member("decision", "GO")
}

/// The `decision` member: the notable spellings, near misses and wrong types.
fn decision_member() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => select(&["GO", "go", "Go", "NO_GO", "DEFER", "ERROR", "GO ", "GOO", ""][..])
            .prop_map(Value::from),
        1 => json_value(),
    ]
}

/// The `verdict` member: the notable spellings, near misses and wrong types.
fn verdict_member() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(
            &[
                "ALLOW",
                "allow",
                "aLLoW",
                "DENY",
                "DEFER",
                "defer",
                "ALLOW ",
                " ALLOW",
                "ALLOWED",
                "ALLOW\u{0}",
                "ALLOW\n",
                "\u{FEFF}ALLOW",
                "ＡＬＬＯＷ",
                "AL LOW",
                "",
            ][..]
        )
        .prop_map(Value::from),
        json_value(),
        Just(json!(["ALLOW"])),
        Just(json!({"verdict": "ALLOW"})),
    ]
}

/// A response body: an object with `/check` fields of any type, or any JSON value at all.
fn response_body() -> impl Strategy<Value = Value> {
    let field = select(
        &[
            "decision",
            "reason",
            "request_id",
            "policy_version",
            "policy_pack_version",
            "risk_score",
            "high_risk",
            "value_risk",
            "waste_risk",
            "issues",
            "guardrails",
            "guardrail_checks",
            "clarifying_questions",
            "defer_questions",
            "value_findings",
            "decision_trace_summary",
            "cached",
            "cost_estimate",
            "Verdict",
            "VERDICT",
        ][..],
    )
    .prop_map(str::to_owned);
    let key = prop_oneof![3 => field, 1 => any::<String>()];
    let object = (
        prop::option::of(verdict_member()),
        prop::option::of(decision_member()),
        prop::collection::btree_map(key, json_value(), 0..8),
    )
        .prop_map(|(verdict, decision, fields)| {
            let mut body: Map<String, Value> = fields.into_iter().collect();
            if let Some(verdict) = verdict {
                body.insert("verdict".to_owned(), verdict);
            }
            if let Some(decision) = decision {
                body.insert("decision".to_owned(), decision);
            }
            Value::Object(body)
        });
    prop_oneof![4 => object, 1 => json_value()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn only_a_well_formed_allow_parses_as_allow(body in response_body()) {
        match PolicyResponse::from_json(&body, "sent-id") {
            Err(_) => prop_assert!(!body.is_object(), "an object is always read: {}", body),
            Ok(response) => {
                prop_assert!(body.is_object());
                prop_assert_eq!(
                    response.verdict == Verdict::Allow,
                    is_well_formed_allow(&body),
                    "{}", body
                );
                prop_assert!(!response.reason.is_empty());
                prop_assert!(!response.request_id.is_empty());
                prop_assert!(serde_json::to_value(&response).is_ok());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by (b) over HTTP and (c): a live policy client in front of the scriptable fake
// ---------------------------------------------------------------------------------------------

/// Long enough that no answer of the fake on 127.0.0.1 misses it, even on a loaded machine.
const TIMEOUT_MS: u64 = 2000;

/// One `/check` answer the fake gives: a status (never one without a body: 1xx, 204, 304),
/// maybe a `Retry-After`, and a body that is an ALLOW, another JSON value or arbitrary bytes;
/// or a connection closed without an answer.
fn reply() -> impl Strategy<Value = Reply> {
    let status = prop_oneof![
        3 => Just(200u16),
        2 => select(&[201u16, 202, 299, 400, 401, 403, 404, 418, 429, 500, 502, 503, 504][..]),
        1 => (200u16..600).prop_filter("statuses with a body", |s| *s != 204 && *s != 304),
    ];
    // "1" is left out: waiting one second for it would fit the deadline and slow every case.
    let retry_after = prop::option::of(select(&["0", "120", "soon", "-1"][..]));
    let body = prop_oneof![
        2 => response_body().prop_map(|body| body.to_string().into_bytes()),
        1 => verdict_member().prop_map(|verdict| json!({"verdict": verdict}).to_string().into_bytes()),
        1 => (verdict_member(), verdict_member(), decision_member()).prop_map(
            |(first, second, decision)| {
                // The same key twice: no one meaning, whichever comes last.
                format!(r#"{{"verdict":{first},"decision":{decision},"verdict":{second}}}"#)
                    .into_bytes()
            }
        ),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => response_body().prop_flat_map(|body| {
            // A JSON text broken at one byte: cut short, or one byte changed.
            let bytes = body.to_string().into_bytes();
            let len = bytes.len();
            (Just(bytes), 0..len, any::<u8>(), any::<bool>()).prop_map(|(mut bytes, at, byte, cut)| {
                if cut { bytes.truncate(at) } else { bytes[at] = byte }
                bytes
            })
        }),
    ];
    prop_oneof![
        9 => (status, retry_after, body).prop_map(|(status, retry_after, body)| Reply::Answer {
            status,
            headers: retry_after
                .map(|value| vec![("retry-after".to_owned(), value.to_owned())])
                .unwrap_or_default(),
            body,
        }),
        1 => Just(Reply::Close),
    ]
}

/// The answers for one check: the first request's, and the retry's if there is one.
type Plan = Vec<Reply>;

/// A fake Stage0 answering the `n`-th request of a check with `plan[n]` (the last one after).
async fn planned_fake() -> (FakeStage0, Arc<Mutex<Plan>>) {
    let plan: Arc<Mutex<Plan>> = Arc::new(Mutex::new(Vec::new()));
    let script = plan.clone();
    let fake = FakeStage0::start(move |received| {
        let plan = script.lock().unwrap();
        plan[received.attempt.min(plan.len() - 1)].clone()
    })
    .await;
    (fake, plan)
}

fn live_client(base_url: &str) -> PolicyClient {
    let config = Config::from_lookup(|name| match name {
        "STAGE0_API_KEY" => Some("sk-test-properties".to_owned()),
        "STAGE0_BASE_URL" => Some(base_url.to_owned()),
        "STAGE0_TIMEOUT_MS" => Some(TIMEOUT_MS.to_string()),
        _ => None,
    })
    .expect("a valid configuration");
    config.policy().expect("an HTTP client")
}

/// Whether the fake's answer to `exchange` was a well-formed `ALLOW`.
fn answered_allow(exchange: &Exchange) -> bool {
    match &exchange.fate {
        Fate::Answered { status, body } => {
            *status == 200
                && body.len() <= 1024 * 1024
                && first_duplicate_key(body).is_ok_and(|found| found.is_none())
                && serde_json::from_slice::<Value>(body)
                    .is_ok_and(|body| is_well_formed_allow(&body))
        }
        _ => false,
    }
}

/// Whether `exchange` was answered with a transient failure (`429`, `503`).
fn answered_transient(exchange: &Exchange) -> bool {
    matches!(
        exchange.fate,
        Fate::Answered {
            status: 429 | 503,
            ..
        }
    )
}

/// Checks the requests of one check: one request id, at most one retry and only after a
/// transient failure; returns the exchange whose answer decided (`None` when none arrived).
fn deciding_exchange(exchanges: &[Exchange]) -> Result<Option<&Exchange>, TestCaseError> {
    prop_assert!(exchanges.len() <= 2, "at most one retry: {:?}", exchanges);
    if let [first, second] = exchanges {
        prop_assert_eq!(
            &first.request_id,
            &second.request_id,
            "a retry keeps the request id"
        );
        prop_assert!(
            answered_transient(first),
            "only 429 and 503 are retried: {:?}",
            first
        );
    }
    Ok(exchanges.last())
}

/// The fake's exchanges once each has been answered or closed: the client may have read an
/// answer before the fake noted that it finished writing it.
async fn settled(fake: &FakeStage0) -> Vec<Exchange> {
    let all_settled = |exchanges: &[Exchange]| exchanges.iter().all(|e| e.fate != Fate::Pending);
    tokio::time::timeout(Duration::from_secs(10), fake.wait_until(all_settled))
        .await
        .expect("the fake settles every request");
    fake.exchanges()
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn only_a_well_formed_allow_over_http_is_an_allow() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (fake, plan) = runtime.block_on(planned_fake());
    let client = live_client(fake.base_url());
    let intent = Intent {
        goal: "Summarize the quarterly sales report".to_owned(),
        success_criteria: vec!["Summary is accurate".to_owned()],
        constraints: Vec::new(),
        tools: Vec::new(),
        side_effects: Vec::new(),
        context: Map::new(),
    };
    let result = runner(300).run(&prop::collection::vec(reply(), 1..=2), |answers| {
        *plan.lock().unwrap() = answers;
        fake.clear();
        let response = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.check(&intent, None))
                .await
                .expect("every check ends")
        });
        let exchanges = runtime.block_on(settled(&fake));
        let decided = deciding_exchange(&exchanges)?;
        prop_assert_eq!(
            response.verdict == Verdict::Allow,
            decided.is_some_and(answered_allow),
            "{:?} after {:?}",
            response,
            exchanges
        );
        prop_assert!(!response.reason.is_empty());
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The guard: the body runs exactly when the verdict is ALLOW, exactly once
// ---------------------------------------------------------------------------------------------

/// How many times a [`Counted`] body has run in this test binary.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A tool defined by the test, whose body only counts that it ran.
#[derive(Deserialize, serde::Serialize, schemars::JsonSchema)]
struct Counted {
    case: u64,
}

impl ToolIntent for Counted {
    const NAME: &'static str = "counted";
    const TITLE: &'static str = "A test tool";
    const DESCRIPTION: &'static str = "Exists only in tests.";

    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Count the runs of property case {}", self.case),
            success_criteria: vec!["Counted".to_owned()],
            constraints: Vec::new(),
            tools: Vec::new(),
            side_effects: Vec::new(),
            context: Map::new(),
        }
    }
}

impl GuardedTool for Counted {
    type Error = std::convert::Infallible;

    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Self::Error> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(ToolOutput::text(format!("counted case {}", self.case)))
    }
}

#[test]
fn the_guard_runs_the_body_exactly_once_exactly_when_stage0_allows() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (fake, plan) = runtime.block_on(planned_fake());
    let guard = Guard::new(
        live_client(fake.base_url()),
        Operator::default(),
        Approvals::default(),
    );
    let case = AtomicUsize::new(0);
    let result = runner(300).run(&prop::collection::vec(reply(), 1..=2), |answers| {
        *plan.lock().unwrap() = answers;
        fake.clear();
        let case = case.fetch_add(1, Ordering::SeqCst);
        let runs_before = RUNS.load(Ordering::SeqCst);
        let Value::Object(arguments) = json!({"case": case}) else {
            unreachable!("an object literal")
        };
        let result = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                guard.enforce::<Counted>(arguments, None),
            )
            .await
            .expect("every guarded call ends")
        });
        let CallToolResponse::Complete(result) = result else {
            panic!("a call without a human to ask ends complete: {result:?}");
        };
        let runs = RUNS.load(Ordering::SeqCst) - runs_before;
        let exchanges = runtime.block_on(settled(&fake));
        let allowed = deciding_exchange(&exchanges)?.is_some_and(answered_allow);
        prop_assert_eq!(
            runs,
            usize::from(allowed),
            "body runs after {:?}",
            exchanges
        );
        let report = result
            .structured_content
            .expect("a guarded result has a report");
        prop_assert_eq!(&report["executed"], &json!(allowed));
        prop_assert_eq!(report["verdict"] == "ALLOW", allowed);
        prop_assert_eq!(result.is_error, Some(!allowed));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
