//! Micro-benchmarks of the guard path's parts, in process (criterion): `cargo bench --bench micro`.
//!
//! - `simulator/*`: one simulated verdict (the policy decision point without a key);
//! - `parse/*`: reading a Stage0 `/check` response body into a verdict, as the live client does
//!   (bytes → JSON → [`PolicyResponse`]), for a typical body and one of 1 MiB, the largest read;
//! - `guarded_call/*`: one `tools/call` through a real rmcp client and the server over an
//!   in-memory duplex pipe: the whole MCP path without a process or an OS pipe;
//! - `result/*`: building the tool result (text and `structuredContent`) from a verdict;
//! - `approval_state/*`: sealing the `requestState` of an approval asked over MRTR, and opening it
//!   (verification, the call's bindings, the spent-nonce check) and spending its nonce;
//! - `audit/seal_*`: sealing one audit record into the hash chain (its line and `hash`), as the
//!   audit writer thread does for every record: a `research-topic` call's `decision` and
//!   `outcome`, as the server writes them.
//!
//! The end-to-end figures (process, pipes, memory, live mode) are in `benches/e2e.rs`; what each
//! figure means and what bounds it is in BENCHMARKS.md.

use std::hint::black_box;

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mcp_server_stage0::server::stage0_server;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Map, Value, json};
use stage0_guard::approval::Approvals;
use stage0_guard::approval::state::{ApprovalStates, CallBinding, StateKey, arguments_sha256};
use stage0_guard::audit::chain;
use stage0_guard::claims::{ActorRole, Operator, Principal, Provenance};
use stage0_guard::guard::Guard;
use stage0_guard::policy::wire::{Intent, PolicyResponse};
use stage0_guard::policy::{Mode, PolicyClient, simulator};
use stage0_guard::render::{self, Checked, ToolOutput};

/// The intent `research-topic` sends for a typical topic (`docs/contract.md` §2).
fn research_intent() -> Intent {
    Intent {
        goal: "Research and summarize: Rust async runtimes".to_owned(),
        success_criteria: vec!["Summary produced".to_owned()],
        constraints: vec!["read-only".to_owned()],
        tools: vec!["web_search".to_owned()],
        side_effects: Vec::new(),
        context: Map::new(),
    }
}

/// A typical `/check` answer: an `ALLOW` with the fields Stage0 usually sends.
fn typical_body() -> Value {
    json!({
        "verdict": "ALLOW",
        "decision": "GO",
        "reason": "Low-risk informational request",
        "request_id": "8d5c6a3e-1f0b-4c47-9a57-3c1f2e4b5d6a",
        "policy_version": "2026.11.1",
        "policy_pack_version": "core-3.2.0",
        "risk_score": 12,
        "high_risk": false,
        "value_risk": 5,
        "waste_risk": 3,
        "issues": [
            {"code": "READ_ONLY", "severity": "LOW", "message": "Read-only research"}
        ],
        "guardrails": ["rate-limit"],
        "guardrail_checks": {"rate-limit": "ok"},
        "value_findings": ["Clear goal"],
        "decision_trace_summary": "All rules passed",
        "cached": false,
        "cost_estimate": {"currency": "USD", "min": 0, "max": 0.01}
    })
}

/// The typical answer with `issues` grown until the body is just under 1 MiB (the read cap).
fn one_mib_body() -> Vec<u8> {
    let mut body = typical_body();
    let issue = json!({"code": "NOTE", "severity": "LOW", "message": "x".repeat(200)});
    let issue_len = issue.to_string().len() + 1;
    let count = (1024 * 1024 - typical_body().to_string().len()) / issue_len - 1;
    body["issues"] = Value::Array(vec![issue; count]);
    let bytes = serde_json::to_vec(&body).expect("JSON");
    assert!(bytes.len() <= 1024 * 1024 && bytes.len() > 1000 * 1024);
    bytes
}

/// What the live client does with a 2xx body.
fn parse(body: &[u8]) -> PolicyResponse {
    let value: Value = serde_json::from_slice(body).expect("a JSON body");
    PolicyResponse::from_json(&value, "sent-id").expect("a JSON object")
}

fn simulator_decision(c: &mut Criterion) {
    let allow = research_intent();
    let deny = Intent {
        side_effects: vec!["deploy".to_owned()],
        ..research_intent()
    };
    c.bench_function("simulator/allow", |b| {
        b.iter(|| simulator::simulate(black_box(&allow), "id".to_owned()))
    });
    c.bench_function("simulator/deny", |b| {
        b.iter(|| simulator::simulate(black_box(&deny), "id".to_owned()))
    });
}

fn response_parsing(c: &mut Criterion) {
    let typical = serde_json::to_vec(&typical_body()).expect("JSON");
    let large = one_mib_body();
    c.bench_function("parse/typical", |b| b.iter(|| parse(black_box(&typical))));
    c.bench_function("parse/1MiB", |b| b.iter(|| parse(black_box(&large))));
}

fn structured_result(c: &mut Criterion) {
    let checked = || Checked {
        tool: "research-topic",
        mode: Mode::Simulator,
        policy: simulator::simulate(&research_intent(), "id".to_owned()),
        provenance: Provenance::default(),
        approval: None,
    };
    c.bench_function("result/executed", |b| {
        b.iter_batched(
            checked,
            |checked| render::executed(checked, Ok(ToolOutput::text("Stand-in action: summary"))),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("result/reported", |b| {
        let intent = research_intent();
        b.iter_batched(
            checked,
            |checked| render::reported(checked, &intent),
            BatchSize::SmallInput,
        )
    });
}

fn guarded_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let client = runtime.block_on(async {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = stage0_server(Guard::new(
            PolicyClient::Simulator,
            Operator::default(),
            Approvals::default(),
        ));
        tokio::spawn(async move {
            let running = server.serve(server_io).await.expect("server initialised");
            let _ = running.waiting().await;
        });
        ().serve(client_io).await.expect("client initialised")
    });
    let calls = [
        (
            "check-authorization",
            json!({"goal": "Summarise the release notes", "sideEffects": [],
                   "successCriteria": ["Summary produced"]}),
        ),
        ("research-topic", json!({"topic": "Rust async runtimes"})),
    ];
    for (tool, arguments) in calls {
        let Value::Object(arguments) = arguments else {
            unreachable!("literal objects")
        };
        c.bench_function(&format!("guarded_call/{tool}"), |b| {
            b.to_async(&runtime).iter(|| {
                let params = CallToolRequestParams::new(tool).with_arguments(arguments.clone());
                let client = &client;
                async move {
                    let result = client.call_tool(params).await.expect("a tool result");
                    assert_eq!(result.is_error, Some(false));
                    result
                }
            })
        });
    }
    runtime
        .block_on(client.cancel())
        .expect("the client session shuts down");
}

fn approval_state(c: &mut Criterion) {
    let states = ApprovalStates::new(StateKey::random(), Duration::from_secs(300));
    let Value::Object(arguments) = json!({"workflowId": "wf-1", "retryCount": 5}) else {
        unreachable!("a literal object")
    };
    let hash = arguments_sha256(&arguments);
    let principal = Principal {
        actor_id: Some("ada".to_owned()),
        actor_role: ActorRole::Developer,
    };
    let call = CallBinding {
        tool: "retry-workflow",
        arguments_sha256: &hash,
        principal: &principal,
    };
    let request_id = "9eda8a06-6860-4863-a588-6f32813d1d56";
    let seal = || {
        states
            .seal(
                call,
                request_id,
                "simulated-v1.0.0",
                "LOOP_THRESHOLD_EXCEEDED",
                &["Should we continue retrying or try a different approach?".to_owned()],
            )
            .expect("a state seals")
    };
    c.bench_function("approval_state/seal", |b| b.iter(seal));
    c.bench_function("approval_state/open_and_spend", |b| {
        b.iter_batched(
            seal,
            |sealed| {
                let opened = states.open(&sealed.state, call).expect("the state opens");
                states.spend(&opened).expect("its nonce is spent once");
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("approval_state/arguments_sha256", |b| {
        b.iter(|| arguments_sha256(black_box(&arguments)))
    });
}

/// A `research-topic` call's `decision` and `outcome` records, as the server hands them to the
/// audit writer (without the chain fields, which sealing adds).
fn audit_records() -> [(&'static str, Map<String, Value>); 2] {
    let decision = json!({
        "kind": "decision",
        "call_id": "1bc1fca6-f23b-480c-8bf4-9cfd8f1c7fa8",
        "request_id": "48af4432-de7d-4fe5-b952-242afc26899d",
        "tool": "research-topic",
        "arguments_sha256": "3ca951d8e51e4b0e827319b5a6963ad38a78ce8cfc4443814cc1cf2db4a2a80d",
        "goal": "Research and summarize: Rust async runtimes",
        "side_effects": [],
        "context": {},
        "provenance": {},
        "verdict": "ALLOW",
        "decision": "GO",
        "reason": "Informational operation with no high-risk side effects",
        "policy_version": "simulated-v1.0.0",
        "risk_score": 15,
        "issues": [],
        "mode": "simulator",
        "check_latency_ms": 0.004
    });
    let outcome = json!({
        "kind": "outcome",
        "call_id": "1bc1fca6-f23b-480c-8bf4-9cfd8f1c7fa8",
        "request_id": "48af4432-de7d-4fe5-b952-242afc26899d",
        "tool": "research-topic",
        "arguments_sha256": "3ca951d8e51e4b0e827319b5a6963ad38a78ce8cfc4443814cc1cf2db4a2a80d",
        "status": "ok",
        "executed": true,
        "guardrails_enforced": ["read_only"],
        "duration_ms": 0.001
    });
    let object = |value| match value {
        Value::Object(object) => object,
        _ => unreachable!("a literal object"),
    };
    [("decision", object(decision)), ("outcome", object(outcome))]
}

fn audit_seal(c: &mut Criterion) {
    let prev = "676705e5603119deef3bf17b57a7568253469cde738cdd2abf49cdb6ab657cfa";
    for (kind, record) in audit_records() {
        c.bench_function(&format!("audit/seal_{kind}"), |b| {
            b.iter_batched(
                || record.clone(),
                |record| {
                    let ts = "2026-12-01T05:38:48.790498Z".to_owned();
                    chain::seal(record, black_box(7), ts, black_box(prev))
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(
    benches,
    simulator_decision,
    response_parsing,
    structured_result,
    guarded_call,
    approval_state,
    audit_seal
);
criterion_main!(benches);
