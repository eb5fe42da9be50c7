//! The deterministic policy decision point used when no `STAGE0_API_KEY` is set.
//!
//! A pure function of the intent: no I/O, no clock, no environment; the request id is passed in and
//! is the only part that differs between two runs. The rules, their order and their texts are those
//! of the TypeScript original (`docs/contract.md` §4), so a client written against it sees the same
//! verdicts. The first rule that matches answers, which is why DENY beats DEFER beats ALLOW:
//!
//! 1. a `publish` or `deploy` side effect → `DENY` (`SIDE_EFFECTS_NEED_GUARDRAILS`)
//! 2. a `loop` side effect with `retry_count` >= 5 → `DEFER` (`LOOP_THRESHOLD_EXCEEDED`)
//! 3. a vague goal → `DEFER` (`UNCLEAR_VALUE_SIGNAL`)
//! 4. no success criteria → `DENY` (`MISSING_SUCCESS_CRITERIA`)
//! 5. otherwise → `ALLOW`
//!
//! A human's approval (`approval_status: approved` with a non-blank `approved_by` in the context,
//! which only the guard puts there after an elicitation, see `approval.rs`) waives rules 2 and 3,
//! the two that ask for human review. Rules 1 and 4 still apply: a `DENY` is final.

use serde_json::{Map, Number, Value};

use super::wire::{Decision, Intent, Issue, PolicyResponse, Verdict};

/// The `policy_version` of every simulated verdict.
pub const POLICY_VERSION: &str = "simulated-v1.0.0";

/// Retries at or above this count are deferred (rule 2).
pub const MAX_RETRIES: f64 = 5.0;

/// Goals shorter than this many UTF-16 code units are vague (rule 3).
///
/// UTF-16 because the original measures `goal.length` in JavaScript; counting the same way keeps
/// the verdicts identical for emoji and other characters outside the Basic Multilingual Plane.
pub const MIN_GOAL_LENGTH: usize = 10;

/// Decides `intent` by the five rules above; `request_id` is copied into the verdict.
pub fn simulate(intent: &Intent, request_id: String) -> PolicyResponse {
    let has = |effect: &str| intent.side_effects.iter().any(|e| e == effect);

    if has("publish") || has("deploy") {
        return verdict(
            Verdict::Deny,
            request_id,
            "SIDE_EFFECTS_NEED_GUARDRAILS: External/irreversible side effects declared without \
             machine-readable guardrails in constraints.",
            64,
            true,
            vec![
                issue(
                    "SIDE_EFFECTS_NEED_GUARDRAILS",
                    "HIGH",
                    format!(
                        "Side effects [{}] require approval guardrails",
                        intent.side_effects.join(", ")
                    ),
                ),
                issue(
                    "CUSTOMER_VISIBLE_APPROVAL_REQUIRED",
                    "LOW",
                    "Customer-visible side effects require explicit approval before execution"
                        .to_owned(),
                ),
            ],
        );
    }

    let approved_by = approved_by(&intent.context);
    let retry_count = retry_count(intent.context.get("retry_count"));
    if approved_by.is_none() && has("loop") && retry_count >= MAX_RETRIES {
        let mut response = verdict(
            Verdict::Defer,
            request_id,
            &format!(
                "LOOP_THRESHOLD_EXCEEDED: Retry count ({retry_count}) exceeds maximum allowed \
                 ({MAX_RETRIES}). Consider alternative approaches or human review."
            ),
            45,
            false,
            vec![issue(
                "LOOP_THRESHOLD_EXCEEDED",
                "MEDIUM",
                format!("Retry count {retry_count} exceeds threshold of {MAX_RETRIES}"),
            )],
        );
        response.defer_questions = vec![
            "Should we continue retrying or try a different approach?".to_owned(),
            "Is there a root cause that needs to be addressed first?".to_owned(),
        ];
        return response;
    }

    if approved_by.is_none() && is_vague(&intent.goal) {
        let mut response = verdict(
            Verdict::Defer,
            request_id,
            "UNCLEAR_VALUE_SIGNAL: Task appears under-specified for reliable value delivery.",
            35,
            false,
            vec![issue(
                "UNCLEAR_VALUE_SIGNAL",
                "MEDIUM",
                "Task scope/goal quality suggests low expected value at current definition"
                    .to_owned(),
            )],
        );
        response.clarifying_questions = vec![
            "What is the specific outcome you want to achieve?".to_owned(),
            "What constraints or requirements should be considered?".to_owned(),
        ];
        return response;
    }

    if intent.success_criteria.is_empty() {
        return verdict(
            Verdict::Deny,
            request_id,
            "MISSING_SUCCESS_CRITERIA: Provide at least one success criterion.",
            59,
            false,
            vec![issue(
                "MISSING_SUCCESS_CRITERIA",
                "HIGH",
                "Provide at least one success criterion".to_owned(),
            )],
        );
    }

    let reason = match approved_by {
        Some(by) => &format!("Approved by {by} for this call; no rule blocks it"),
        None => "Informational operation with no high-risk side effects",
    };
    let mut response = verdict(Verdict::Allow, request_id, reason, 15, false, Vec::new());
    response.guardrails = vec!["read_only".to_owned()];
    response
}

/// Who approved the call, when the context carries a human approval (see the module docs).
fn approved_by(context: &Map<String, Value>) -> Option<&str> {
    if context.get("approval_status").and_then(Value::as_str) != Some("approved") {
        return None;
    }
    context
        .get("approved_by")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|by| !by.is_empty())
}

/// `retry_count` as the original reads it: a finite number >= 0, anything else is 0.
fn retry_count(value: Option<&Value>) -> f64 {
    value
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite() && *n >= 0.0)
        .unwrap_or(0.0)
}

/// Rule 3: too short, or phrased as a request for help rather than an outcome.
fn is_vague(goal: &str) -> bool {
    let lower = goal.to_lowercase();
    goal.encode_utf16().count() < MIN_GOAL_LENGTH
        || goal.contains("幫我")
        || goal.contains("想一下")
        || lower.contains("help me")
        || lower.contains("think")
}

fn verdict(
    verdict: Verdict,
    request_id: String,
    reason: &str,
    risk_score: u8,
    high_risk: bool,
    issues: Vec<Issue>,
) -> PolicyResponse {
    let decision = match verdict {
        Verdict::Allow => Decision::Go,
        Verdict::Deny => Decision::NoGo,
        Verdict::Defer => Decision::Defer,
    };
    let mut response = PolicyResponse::new(verdict, decision, reason.to_owned(), request_id);
    response.policy_version = POLICY_VERSION.to_owned();
    response.risk_score = Some(Number::from(risk_score));
    response.high_risk = Some(high_risk);
    response.issues = issues;
    response
}

fn issue(code: &str, severity: &str, message: String) -> Issue {
    Issue {
        code: code.to_owned(),
        severity: severity.to_owned(),
        message,
    }
}
