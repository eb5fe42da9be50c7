//! Reading `/check` responses: lenient per field, strict on the outcome (`docs/contract.md` §3).
//!
//! One test per fallback of the parser, so each can fail on its own.

use serde_json::{Value, json};
use stage0_guard::policy::wire::{Decision, PolicyResponse, Verdict, error_message};

const SENT: &str = "sent-id";

fn parse(body: Value) -> PolicyResponse {
    PolicyResponse::from_json(&body, SENT).expect("an object parses")
}

#[test]
fn a_complete_allow_passes_through_unchanged() {
    let response = parse(json!({
        "verdict": "ALLOW", "decision": "GO", "reason": "fine", "request_id": "r-1",
        "policy_version": "v1.2.3", "policy_pack_version": "pack-7", "risk_score": 12.5,
        "high_risk": false, "value_risk": 3, "waste_risk": 4,
        "issues": [{"code": "C", "severity": "LOW", "message": "m"}],
        "guardrails": ["read_only"], "guardrail_checks": {"a": true},
        "clarifying_questions": ["q1"], "defer_questions": ["q2"], "value_findings": ["v"],
        "decision_trace_summary": "trace", "cached": true,
        "cost_estimate": {"currency": "USD", "min": 0.1, "max": 2, "assumptions": ["x"]}
    }));
    assert_eq!(response.verdict, Verdict::Allow);
    assert_eq!(response.decision, Decision::Go);
    assert_eq!(response.reason, "fine");
    assert_eq!(response.request_id, SENT);
    assert_eq!(response.stage0_request_id.as_deref(), Some("r-1"));
    assert_eq!(response.policy_version, "v1.2.3");
    assert_eq!(response.policy_pack_version.as_deref(), Some("pack-7"));
    assert_eq!(response.risk_score.unwrap().as_f64(), Some(12.5));
    assert_eq!(response.high_risk, Some(false));
    assert_eq!(response.issues.len(), 1);
    assert_eq!(response.guardrails, ["read_only"]);
    assert!(response.guardrail_checks.is_some());
    assert_eq!(response.clarifying_questions, ["q1"]);
    assert_eq!(response.defer_questions, ["q2"]);
    assert_eq!(response.value_findings, ["v"]);
    assert_eq!(response.cached, Some(true));
    assert_eq!(response.cost_estimate.unwrap().assumptions, ["x"]);
}

#[test]
fn verdict_and_decision_are_case_insensitive() {
    let response = parse(json!({"verdict": "allow", "decision": "go"}));
    assert_eq!(response.verdict, Verdict::Allow);
    assert_eq!(response.decision, Decision::Go);
    let response = parse(json!({"verdict": "Deny", "decision": "no_go"}));
    assert_eq!(response.decision, Decision::NoGo);
    let response = parse(json!({"verdict": "Defer", "decision": "defer"}));
    assert_eq!(response.verdict, Verdict::Defer);
}

#[test]
fn an_unknown_missing_or_wrong_typed_verdict_is_deny() {
    for verdict in [
        json!("PERMIT"),
        json!(""),
        json!(true),
        json!(1),
        json!(["ALLOW"]),
        Value::Null,
    ] {
        assert_eq!(
            parse(json!({"verdict": verdict, "decision": "GO"})).verdict,
            Verdict::Deny,
            "{verdict}"
        );
    }
    assert_eq!(parse(json!({"decision": "GO"})).verdict, Verdict::Deny);
    assert_eq!(parse(json!({"verdict": " ALLOW"})).verdict, Verdict::Deny);
}

#[test]
fn an_unknown_or_missing_decision_is_error_and_so_no_allow() {
    for body in [
        json!({"verdict": "ALLOW", "decision": "MAYBE"}),
        json!({"verdict": "ALLOW"}),
    ] {
        let response = parse(body.clone());
        assert_eq!(response.decision, Decision::Error, "{body}");
        assert_eq!(response.verdict, Verdict::Deny, "{body}");
    }
    let response = parse(json!({"verdict": "DENY", "reason": "no"}));
    assert_eq!(
        (response.verdict, response.decision),
        (Verdict::Deny, Decision::Error)
    );
    assert_eq!(
        response.reason, "no",
        "a DENY without a decision is a DENY as it was given"
    );
}

/// Every pair of verdict and decision, and what the answer comes to.
#[test]
fn a_verdict_stands_only_with_a_decision_that_agrees_with_it() {
    let agree = [
        ("ALLOW", "GO"),
        ("DEFER", "DEFER"),
        ("DENY", "NO_GO"),
        ("DENY", "ERROR"),
    ];
    for verdict in ["ALLOW", "DEFER", "DENY"] {
        for decision in ["GO", "NO_GO", "DEFER", "ERROR"] {
            let response =
                parse(json!({"verdict": verdict, "decision": decision, "reason": "stage0 says"}));
            let shown = (response.verdict.as_str(), response.decision.as_str());
            if agree.contains(&(verdict, decision)) {
                assert_eq!(shown, (verdict, decision));
                assert_eq!(response.reason, "stage0 says");
            } else {
                assert_eq!(shown, ("DENY", "ERROR"), "{verdict} with {decision}");
                assert_eq!(
                    response.reason,
                    format!(
                        "Stage0 API error: verdict `{verdict}` with decision `{decision}`: the two \
                         disagree, so the answer is not trusted"
                    )
                );
            }
        }
    }
}

#[test]
fn a_missing_reason_falls_back_to_the_issues_joined() {
    let response = parse(json!({
        "issues": [{"code": "A", "message": "first"}, {"message": "second"}, "not an issue"]
    }));
    assert_eq!(response.reason, "A: first; UNKNOWN: second");
    assert_eq!(response.issues[1].severity, "UNKNOWN");
}

#[test]
fn without_reason_or_issues_the_trace_summary_is_the_reason() {
    let response =
        parse(json!({"reason": "", "issues": [], "decision_trace_summary": "trace says no"}));
    assert_eq!(response.reason, "trace says no");
}

#[test]
fn with_nothing_to_explain_it_the_reason_is_no_reason_provided() {
    assert_eq!(parse(json!({"reason": 42})).reason, "No reason provided");
}

#[test]
fn the_request_id_is_always_the_one_sent_and_a_different_one_from_stage0_is_kept_beside_it() {
    for (body, stage0) in [
        (json!({}), None),
        (json!({"request_id": 7}), None),
        (json!({"request_id": ""}), None),
        (json!({"request_id": SENT}), None),
        (json!({"request_id": "stage0-7"}), Some("stage0-7")),
    ] {
        let response = parse(body.clone());
        assert_eq!(response.request_id, SENT, "{body}");
        assert_eq!(response.stage0_request_id.as_deref(), stage0, "{body}");
    }
    let json = serde_json::to_value(parse(json!({}))).unwrap();
    assert!(json.get("stage0_request_id").is_none(), "{json}");
}

#[test]
fn a_body_that_repeats_a_key_is_refused_whichever_value_comes_last() {
    for (body, key) in [
        (
            r#"{"verdict":"DENY","verdict":"ALLOW","decision":"GO"}"#,
            "`verdict` (at `/verdict`)",
        ),
        (
            r#"{"verdict":"ALLOW","decision":"GO","decision":"GO"}"#,
            "`decision` (at `/decision`)",
        ),
        (
            r#"{"verdict":"ALLOW","decision":"GO","cost_estimate":{"min":1,"min":2}}"#,
            "`min` (at `/cost_estimate/min`)",
        ),
        (
            r#"{"verdict":"ALLOW","decision":"GO","\u0076erdict":"ALLOW"}"#,
            "`verdict`",
        ),
    ] {
        let error = PolicyResponse::from_body(body.as_bytes(), SENT)
            .expect_err(body)
            .to_string();
        assert!(
            error.starts_with(&format!("response body repeats the key {key}")),
            "{body}: {error}"
        );
    }
    let allow = br#"{"verdict":"ALLOW","decision":"GO","a":{"x":1},"b":{"x":1}}"#;
    let response = PolicyResponse::from_body(allow, SENT).expect("distinct keys per object");
    assert_eq!(response.verdict, Verdict::Allow);
}

#[test]
fn policy_version_falls_back_to_the_pack_version_then_empty() {
    assert_eq!(
        parse(json!({"policy_pack_version": "pack-2"})).policy_version,
        "pack-2"
    );
    assert_eq!(parse(json!({"policy_version": 3})).policy_version, "");
}

#[test]
fn wrong_typed_optional_fields_are_dropped_not_errors() {
    let response = parse(json!({
        "verdict": "DENY", "risk_score": "high", "high_risk": "yes", "value_risk": [],
        "waste_risk": {}, "issues": "none", "guardrails": "read_only", "guardrail_checks": [1],
        "clarifying_questions": {"q": 1}, "cached": "no", "policy_pack_version": 1,
        "decision_trace_summary": 5, "cost_estimate": {"currency": "USD", "min": "0", "max": 1}
    }));
    assert_eq!(response.risk_score, None);
    assert_eq!(response.high_risk, None);
    assert_eq!(response.value_risk, None);
    assert_eq!(response.waste_risk, None);
    assert!(response.issues.is_empty());
    assert!(response.guardrails.is_empty());
    assert_eq!(response.guardrail_checks, None);
    assert!(response.clarifying_questions.is_empty());
    assert_eq!(response.cached, None);
    assert_eq!(response.policy_pack_version, None);
    assert_eq!(response.decision_trace_summary, None);
    assert_eq!(response.cost_estimate, None);
}

#[test]
fn non_strings_inside_string_lists_are_skipped_and_empty_lists_left_out() {
    let response = parse(json!({"defer_questions": ["ok?", 3, null], "guardrails": []}));
    assert_eq!(response.defer_questions, ["ok?"]);
    let json = serde_json::to_value(&response).unwrap();
    assert!(json.get("guardrails").is_none(), "{json}");
    assert!(json.get("risk_score").is_none(), "{json}");
}

#[test]
fn a_body_that_is_not_an_object_is_refused() {
    for body in [json!([]), json!("ALLOW"), json!(1), Value::Null] {
        assert!(PolicyResponse::from_json(&body, SENT).is_err(), "{body}");
    }
}

#[test]
fn error_bodies_give_their_message_error_or_detail() {
    assert_eq!(
        error_message(br#"{"message":"bad key","error":"x"}"#).as_deref(),
        Some("bad key")
    );
    assert_eq!(
        error_message(br#"{"error":"quota"}"#).as_deref(),
        Some("quota")
    );
    assert_eq!(
        error_message(br#"{"detail":"nope"}"#).as_deref(),
        Some("nope")
    );
    assert_eq!(error_message(br#"{"detail":[{"loc":1}]}"#), None);
    assert_eq!(error_message(b"<html>502</html>"), None);
}
