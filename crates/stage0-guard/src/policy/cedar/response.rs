//! From Cedar's answer to a [`PolicyResponse`], the same type the simulator and Stage0 give.
//!
//! Cedar says allow or deny and which policies determined it; the annotations of those policies,
//! read at load time (`load::PolicyMeta`), say the rest. The determining policies are taken in
//! policy-set order (files in name order, policies in file order), so the same request always
//! gets the same reason.

use serde_json::Number;

use super::load::PolicyMeta;
use crate::policy::wire::{Decision, Issue, PolicyResponse, Verdict};

/// The issue code of a deny because no `permit` applies.
pub const NO_PERMIT: &str = "NO_PERMIT";

/// The issue code of a deny because a policy could not be evaluated or the request did not fit
/// the schema.
pub const POLICY_ERROR: &str = "POLICY_ERROR";

/// `high_risk` is `true` from this `risk_score` up; the simulator's rules agree (64 is high, 59
/// is not).
pub const HIGH_RISK_FROM: u8 = 60;

/// What every response of one policy set carries.
pub(super) struct Stamp<'a> {
    pub policy_version: &'a str,
    pub request_id: String,
}

impl Stamp<'_> {
    fn response(self, verdict: Verdict, decision: Decision, reason: String) -> PolicyResponse {
        let mut response = PolicyResponse::new(verdict, decision, reason, self.request_id);
        response.policy_version = self.policy_version.to_owned();
        response
    }
}

/// `ALLOW`: `permits` (at least one, in order) apply and no `forbid` does.
pub(super) fn allow(stamp: Stamp<'_>, permits: &[&PolicyMeta]) -> PolicyResponse {
    let reason = permits
        .iter()
        .find_map(|p| p.reason.clone())
        .unwrap_or_else(|| format!("Permitted by policy `{}`", permits[0].id));
    let mut response = stamp.response(Verdict::Allow, Decision::Go, reason);
    set_risk(&mut response, permits);
    response
}

/// `DENY` (some of `forbids` do not defer) or `DEFER` (all of them do); `forbids` in order, at
/// least one. The reason is that of the first `forbid` that made the verdict: the first that
/// does not defer for a `DENY`, the first for a `DEFER`.
pub(super) fn forbidden(stamp: Stamp<'_>, forbids: &[&PolicyMeta]) -> PolicyResponse {
    let (verdict, decision, first) = match forbids.iter().find(|f| !f.defer) {
        Some(first) => (Verdict::Deny, Decision::NoGo, first),
        None => (Verdict::Defer, Decision::Defer, &forbids[0]),
    };
    let reason = format!("{}: {}", first.id, text(first));
    let mut response = stamp.response(verdict, decision, reason);
    set_risk(&mut response, forbids);
    response.issues = forbids
        .iter()
        .map(|forbid| Issue {
            code: forbid.id.clone(),
            severity: forbid
                .severity
                .unwrap_or(if forbid.defer { "MEDIUM" } else { "HIGH" })
                .to_owned(),
            message: text(forbid),
        })
        .collect();
    if verdict == Verdict::Defer {
        for question in forbids.iter().flat_map(|f| &f.questions) {
            if !response.defer_questions.contains(question) {
                response.defer_questions.push(question.clone());
            }
        }
    }
    response
}

/// `DENY` with `NO_PERMIT`: no `permit` applies to this call of `tool`.
pub(super) fn no_permit(stamp: Stamp<'_>, tool: &str) -> PolicyResponse {
    let message = format!("No permit policy applies to this call of `{tool}`");
    let mut response = stamp.response(
        Verdict::Deny,
        Decision::NoGo,
        format!("{NO_PERMIT}: {message}"),
    );
    response.issues = vec![Issue {
        code: NO_PERMIT.to_owned(),
        severity: "HIGH".to_owned(),
        message,
    }];
    response
}

/// `DENY` / `ERROR` with `POLICY_ERROR`: the policies `failed` (id and Cedar's error, in order)
/// could not be evaluated, so no decision could safely be reached.
pub(super) fn policy_error(stamp: Stamp<'_>, failed: &[(String, String)]) -> PolicyResponse {
    let ids = failed
        .iter()
        .map(|(id, _)| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let reason = format!(
        "{POLICY_ERROR}: policy {ids} could not be evaluated: {}",
        failed[0].1
    );
    let mut response = stamp.response(Verdict::Deny, Decision::Error, reason);
    response.issues = failed
        .iter()
        .map(|(id, error)| Issue {
            code: POLICY_ERROR.to_owned(),
            severity: "HIGH".to_owned(),
            message: format!("policy `{id}` could not be evaluated: {error}"),
        })
        .collect();
    response
}

/// `DENY` / `ERROR` with `POLICY_ERROR`: the request for `tool` could not be built (it does not
/// fit the schema), so no policy was asked.
pub(super) fn request_error(stamp: Stamp<'_>, tool: &str, error: &str) -> PolicyResponse {
    let message = format!("the request for `{tool}` does not fit the schema: {error}");
    let mut response = stamp.response(
        Verdict::Deny,
        Decision::Error,
        format!("{POLICY_ERROR}: {message}"),
    );
    response.issues = vec![Issue {
        code: POLICY_ERROR.to_owned(),
        severity: "HIGH".to_owned(),
        message,
    }];
    response
}

/// `@reason`, or a sentence naming the policy.
fn text(policy: &PolicyMeta) -> String {
    policy
        .reason
        .clone()
        .unwrap_or_else(|| format!("Policy `{}` applies", policy.id))
}

/// The highest `@risk_score` of `policies`, and `high_risk` from it; both absent when no policy
/// has a score.
fn set_risk(response: &mut PolicyResponse, policies: &[&PolicyMeta]) {
    if let Some(risk) = policies.iter().filter_map(|p| p.risk_score).max() {
        response.risk_score = Some(Number::from(risk));
        response.high_risk = Some(risk >= HIGH_RISK_FROM);
    }
}
