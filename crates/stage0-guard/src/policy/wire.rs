//! The shapes of the Stage0 `/check` API: the execution intent we send and the verdict we read back.
//!
//! The request is written exactly as the API expects. The response is read leniently field by
//! field and strictly on the outcome: an optional field of the wrong type is dropped, never an
//! error, but anything that is not a recognisable `ALLOW` is not an `ALLOW`. Recognisable means:
//! a JSON object that repeats no key anywhere (`{"verdict":"DENY","verdict":"ALLOW"}` has no one
//! meaning; see `json.rs`), whose `verdict` and `decision` agree (`ALLOW` with `GO`, `DEFER` with
//! `DEFER`, `DENY` with `NO_GO` or `ERROR`). A body that repeats a key, or whose verdict and
//! decision disagree, is `DENY` / `ERROR` with a reason saying so. The field names and fallbacks
//! follow the Stage0 `/check` API and the TypeScript original (`docs/contract.md` §3).
//!
//! `request_id` is always the id this server sent (`X-Request-Id`), never the one in the answer:
//! it names the check in the audit log and links the records of a call (a `DEFER`, its approval,
//! the second check, the outcome), and an authority that chose it could make two checks look like
//! one. The answer's own `request_id`, when it differs, is kept beside it as `stage0_request_id`.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::json::{self, DuplicateKey};

/// An execution intent: what a tool is about to do, asked of the policy decision point.
///
/// Serialised as the body of `POST /check` (plus `pro: false`, see [`CheckBody`]). Field names
/// follow the Stage0 `/check` API.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Intent {
    /// What the action is for, in one sentence (`Deploy api to production`).
    pub goal: String,
    /// How success is recognised; the simulator denies an intent without any.
    pub success_criteria: Vec<String>,
    /// Machine-readable limits the action promises to respect (`read-only`, `max_retries: 5`).
    pub constraints: Vec<String>,
    /// The tools the action would use (`shell`, `kubectl`).
    pub tools: Vec<String>,
    /// Effects outside the conversation (`publish`, `deploy`, `loop`).
    pub side_effects: Vec<String>,
    /// Authorization context (`actor_role`, `environment`, `retry_count`, ...).
    pub context: Map<String, Value>,
}

/// The exact JSON body of `POST /check`: the intent's fields at the top level and `pro: false`.
#[derive(Debug, Serialize)]
pub struct CheckBody<'a> {
    /// The intent, its fields flattened into the body.
    #[serde(flatten)]
    pub intent: &'a Intent,
    /// Stage0's premium evaluation switch; this server never asks for it.
    pub pro: bool,
}

/// The answer that decides whether a tool body runs. Only [`Verdict::Allow`] runs it.
///
/// `verdict` in the Stage0 `/check` API; read case-insensitively, anything else is `DENY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// `ALLOW`: the tool body may run.
    Allow,
    /// `DENY`: the body does not run; final, never put to a human.
    Deny,
    /// `DEFER`: the body does not run until a human reviews it.
    Defer,
}

/// Stage0's decision code, reported alongside the verdict. The [`Verdict`] decides; the decision
/// only has to agree with it ([`Verdict::agrees_with`]), or the answer is `DENY` / `ERROR`.
/// `decision` in the Stage0 `/check` API; read case-insensitively, anything else is `ERROR`. (Not to be confused with the audit log's `decision` record,
/// [`DecisionRecord`](crate::audit::record::DecisionRecord), which records a whole verdict.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    /// `GO`, Stage0's code for `ALLOW`.
    Go,
    /// `NO_GO`, Stage0's code for `DENY`.
    NoGo,
    /// `DEFER`.
    Defer,
    /// `ERROR`: no decision could be reached (a failed check, fail closed).
    Error,
}

impl Verdict {
    /// The wire spelling: `ALLOW`, `DENY` or `DEFER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
            Verdict::Defer => "DEFER",
        }
    }

    /// Whether `decision` is one this verdict can come with: `ALLOW` with `GO`, `DEFER` with
    /// `DEFER`, `DENY` with `NO_GO` or `ERROR`.
    pub fn agrees_with(self, decision: Decision) -> bool {
        matches!(
            (self, decision),
            (Verdict::Allow, Decision::Go)
                | (Verdict::Defer, Decision::Defer)
                | (Verdict::Deny, Decision::NoGo | Decision::Error)
        )
    }

    /// Case-insensitive; anything else (missing, wrong type, unknown word) is `DENY`.
    fn parse(value: Option<&Value>) -> Self {
        match value
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("ALLOW") => Verdict::Allow,
            Some("DEFER") => Verdict::Defer,
            _ => Verdict::Deny,
        }
    }
}

impl Decision {
    /// The wire spelling: `GO`, `NO_GO`, `DEFER` or `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Go => "GO",
            Decision::NoGo => "NO_GO",
            Decision::Defer => "DEFER",
            Decision::Error => "ERROR",
        }
    }

    /// Case-insensitive; anything else is `ERROR`.
    fn parse(value: Option<&Value>) -> Self {
        match value
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("GO") => Decision::Go,
            Some("NO_GO") => Decision::NoGo,
            Some("DEFER") => Decision::Defer,
            _ => Decision::Error,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding of the policy evaluation (`{code, severity, message}` in the Stage0 API).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Issue {
    /// Machine-readable code, e.g. `SIDE_EFFECTS_NEED_GUARDRAILS`; `UNKNOWN` when absent.
    pub code: String,
    /// `HIGH`, `MEDIUM` or `LOW` as Stage0 sends it; `UNKNOWN` when absent.
    pub severity: String,
    /// Human-readable explanation; empty when absent.
    pub message: String,
}

/// Stage0's cost estimate for the action (`cost_estimate` in the Stage0 API).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CostEstimate {
    /// The currency of `min` and `max`, as Stage0 sends it (e.g. `USD`).
    pub currency: String,
    /// The lowest estimate, in `currency`.
    pub min: Number,
    /// The highest estimate, in `currency`.
    pub max: Number,
    /// What the estimate assumes; left out of the JSON when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assumptions: Vec<String>,
}

/// A verdict with everything the policy decision point said about it (`PolicyResponse`).
///
/// Optional fields are `None` / empty when the authority did not send them or sent the wrong
/// type; they are left out of the JSON then. Field names follow the Stage0 `/check` API.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PolicyResponse {
    /// What decides whether the tool body runs.
    pub verdict: Verdict,
    /// Stage0's decision code; reported, and checked to agree with `verdict`.
    pub decision: Decision,
    /// Why; never empty (falls back to the issues, the trace summary, then `No reason provided`).
    pub reason: String,
    /// Identifies this check: the `X-Request-Id` this server sent (a UUID v4), or the simulator's
    /// id. Never taken from the answer (see the module documentation).
    pub request_id: String,
    /// The `request_id` in Stage0's answer, when it sent one that differs from `request_id`:
    /// Stage0's own name for this check, for finding it in Stage0's records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage0_request_id: Option<String>,
    /// The policy pack version that decided; empty when unknown.
    pub policy_version: String,
    /// The version of the policy pack, when Stage0 sends it apart from `policy_version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_pack_version: Option<String>,
    /// 0–100, higher is riskier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<Number>,
    /// Whether the authority judged the action high-risk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_risk: Option<bool>,
    /// Stage0's `value_risk` score, passed on as sent; this server does not interpret it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_risk: Option<Number>,
    /// Stage0's `waste_risk` score, passed on as sent; this server does not interpret it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waste_risk: Option<Number>,
    /// The findings behind the verdict; their codes go into the audit log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<Issue>,
    /// Conditions the authority attaches to the verdict (the simulator: `read_only` on every
    /// `ALLOW`). Reported to the client only, never enforced: see `docs/contract.md` §9.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<String>,
    /// The authority's evaluation of each guardrail, as sent; reported, never enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrail_checks: Option<Map<String, Value>>,
    /// Questions that would make a vague request clear (usually with `DEFER`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clarifying_questions: Vec<String>,
    /// Questions a human reviewer should answer before the action may go on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub defer_questions: Vec<String>,
    /// Stage0's `value_findings`, passed on as sent; this server does not interpret them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub value_findings: Vec<String>,
    /// A summary of how the authority reached the verdict; the last fallback for `reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_trace_summary: Option<String>,
    /// Stage0's `cached` flag, passed on as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    /// What the action may cost, by Stage0's estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_estimate: Option<CostEstimate>,
    /// The ids (`@id`) of the Cedar policies that determined this verdict (`cedar` mode; see
    /// `docs/cedar.md`). Set by this server, never read from a Stage0 answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub determining_policies: Vec<String>,
    /// With `cedar+stage0`: each policy decision point's own answer, the local policy's first
    /// (one only when it denied, since Stage0 is then not asked). Set by this server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<Opinion>,
    /// The verdict of the shadow policy set (`STAGE0_POLICY_SHADOW`), evaluated beside the
    /// enforcing one and never enforced. Set by this server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Opinion>,
}

/// Which policy decision point answered; part of every verdict this server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum Mode {
    /// `stage0`: the live Stage0 API (`STAGE0_API_KEY` set, no `STAGE0_POLICY`).
    #[serde(rename = "stage0")]
    Stage0,
    /// `simulator`: the deterministic built-in simulator (neither set).
    #[serde(rename = "simulator")]
    Simulator,
    /// `cedar`: the local Cedar policy set named by `STAGE0_POLICY`.
    #[serde(rename = "cedar")]
    Cedar,
    /// `cedar+stage0`: the local Cedar policy set first, then Stage0, the stricter verdict
    /// winning (`STAGE0_POLICY` and `STAGE0_API_KEY` both set).
    #[serde(rename = "cedar+stage0")]
    CedarStage0,
}

impl Mode {
    /// `stage0`, `simulator`, `cedar` or `cedar+stage0`, as in `structuredContent.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stage0 => "stage0",
            Mode::Simulator => "simulator",
            Mode::Cedar => "cedar",
            Mode::CedarStage0 => "cedar+stage0",
        }
    }
}

/// One policy decision point's own answer, reported beside the final verdict: each layer's with
/// `cedar+stage0`, and the shadow policy set's.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Opinion {
    /// Who answered: `cedar` (a local policy set) or `stage0`.
    pub mode: Mode,
    /// Its verdict.
    pub verdict: Verdict,
    /// Its decision code.
    pub decision: Decision,
    /// Its reason.
    pub reason: String,
    /// The id of its check.
    pub request_id: String,
    /// The version of the policy that answered (`cedar:` and 12 hex digits for a local set).
    pub policy_version: String,
    /// The ids of the Cedar policies that determined it; empty for Stage0.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub determining_policies: Vec<String>,
}

impl Opinion {
    /// The answer `response` of the policy decision point `mode`.
    pub fn of(mode: Mode, response: &PolicyResponse) -> Self {
        Opinion {
            mode,
            verdict: response.verdict,
            decision: response.decision,
            reason: response.reason.clone(),
            request_id: response.request_id.clone(),
            policy_version: response.policy_version.clone(),
            determining_policies: response.determining_policies.clone(),
        }
    }
}

impl PolicyResponse {
    /// `defer_questions` when there are any, else `clarifying_questions`, as the original shows
    /// them to people.
    pub fn questions(&self) -> &[String] {
        if self.defer_questions.is_empty() {
            &self.clarifying_questions
        } else {
            &self.defer_questions
        }
    }

    /// A bare verdict with every optional field empty: the base of every response we build.
    pub fn new(verdict: Verdict, decision: Decision, reason: String, request_id: String) -> Self {
        PolicyResponse {
            verdict,
            decision,
            reason,
            request_id,
            stage0_request_id: None,
            policy_version: String::new(),
            policy_pack_version: None,
            risk_score: None,
            high_risk: None,
            value_risk: None,
            waste_risk: None,
            issues: Vec::new(),
            guardrails: Vec::new(),
            guardrail_checks: None,
            clarifying_questions: Vec::new(),
            defer_questions: Vec::new(),
            value_findings: Vec::new(),
            decision_trace_summary: None,
            cached: None,
            cost_estimate: None,
            determining_policies: Vec::new(),
            answers: Vec::new(),
            shadow: None,
        }
    }

    /// `DENY` / `ERROR` with `reason`: what fail closed looks like.
    pub fn fail_closed(reason: String, request_id: String) -> Self {
        PolicyResponse::new(Verdict::Deny, Decision::Error, reason, request_id)
    }

    /// Reads the bytes of a `200 OK` `/check` response body: JSON that repeats no key, then
    /// [`PolicyResponse::from_json`].
    ///
    /// # Errors
    ///
    /// [`BodyError`] when `body` is not JSON, repeats a key, or is not a JSON object; the caller
    /// turns that into a fail-closed verdict.
    pub fn from_body(body: &[u8], sent_request_id: &str) -> Result<Self, BodyError> {
        let value: Value = serde_json::from_slice(body).map_err(BodyError::NotJson)?;
        if let Some(duplicate) = json::first_duplicate_key(body).map_err(BodyError::NotJson)? {
            return Err(BodyError::DuplicateKey(duplicate));
        }
        PolicyResponse::from_json(&value, sent_request_id).map_err(BodyError::NotAnObject)
    }

    /// Reads a `/check` response body leniently field by field; a verdict and a decision that
    /// disagree are `DENY` / `ERROR`, with a reason naming both.
    ///
    /// `sent_request_id` is the `X-Request-Id` we sent: the response's `request_id`. The body's
    /// own `request_id`, if it differs, becomes `stage0_request_id`. `value` has already been
    /// read as JSON; a caller holding the bytes uses [`from_body`](PolicyResponse::from_body),
    /// which also refuses a repeated key.
    ///
    /// # Errors
    ///
    /// Returns `Err` with a short description when `value` is not a JSON object; the caller turns
    /// that into a fail-closed verdict.
    pub fn from_json(value: &Value, sent_request_id: &str) -> Result<Self, &'static str> {
        let Some(body) = value.as_object() else {
            return Err("response body is not a JSON object");
        };
        let string = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        let number = |key: &str| match body.get(key) {
            Some(Value::Number(n)) => Some(n.clone()),
            _ => None,
        };
        let boolean = |key: &str| body.get(key).and_then(Value::as_bool);

        let issues = parse_issues(body.get("issues"));
        let decision_trace_summary = string("decision_trace_summary");
        let reason = string("reason")
            .filter(|r| !r.is_empty())
            .or_else(|| {
                let joined = issues
                    .iter()
                    .map(|i| format!("{}: {}", i.code, i.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                (!joined.is_empty()).then_some(joined)
            })
            .or_else(|| decision_trace_summary.clone().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "No reason provided".to_owned());
        let policy_pack_version = string("policy_pack_version");

        let mut response = PolicyResponse {
            verdict: Verdict::parse(body.get("verdict")),
            decision: Decision::parse(body.get("decision")),
            reason,
            request_id: sent_request_id.to_owned(),
            stage0_request_id: string("request_id")
                .filter(|id| !id.is_empty() && id != sent_request_id),
            policy_version: string("policy_version")
                .filter(|v| !v.is_empty())
                .or_else(|| policy_pack_version.clone())
                .unwrap_or_default(),
            policy_pack_version,
            risk_score: number("risk_score"),
            high_risk: boolean("high_risk"),
            value_risk: number("value_risk"),
            waste_risk: number("waste_risk"),
            issues,
            guardrails: string_list(body.get("guardrails")),
            guardrail_checks: body
                .get("guardrail_checks")
                .and_then(Value::as_object)
                .cloned(),
            clarifying_questions: string_list(body.get("clarifying_questions")),
            defer_questions: string_list(body.get("defer_questions")),
            value_findings: string_list(body.get("value_findings")),
            decision_trace_summary,
            cached: boolean("cached"),
            cost_estimate: body.get("cost_estimate").and_then(parse_cost_estimate),
            determining_policies: Vec::new(),
            answers: Vec::new(),
            shadow: None,
        };
        if !response.verdict.agrees_with(response.decision) {
            response.reason = format!(
                "Stage0 API error: verdict {} with decision {}: the two disagree, so the answer \
                 is not trusted",
                shown(body.get("verdict")),
                shown(body.get("decision"))
            );
            response.verdict = Verdict::Deny;
            response.decision = Decision::Error;
        }
        Ok(response)
    }
}

/// A field of the answer as a reason quotes it: a string in backticks (control characters
/// escaped, at most 40 characters), `(missing)`, or the JSON type of anything else.
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "(missing)".to_owned(),
        Some(Value::String(text)) => {
            let cut: String = text.chars().take(40).collect();
            let more = if cut.len() < text.len() { "…" } else { "" };
            format!("`{}{more}`", cut.escape_debug())
        }
        Some(Value::Null) => "null".to_owned(),
        Some(Value::Bool(_)) => "(a boolean)".to_owned(),
        Some(Value::Number(_)) => "(a number)".to_owned(),
        Some(Value::Array(_)) => "(an array)".to_owned(),
        Some(Value::Object(_)) => "(an object)".to_owned(),
    }
}

/// Why a `200 OK` `/check` body carries no verdict at all.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is not one JSON text; carries the parser's error.
    #[error("response body is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// An object in the body holds one key twice, so it has no one meaning.
    #[error("response body repeats the key {0}")]
    DuplicateKey(DuplicateKey),
    /// The body is JSON but not an object; carries [`PolicyResponse::from_json`]'s description.
    #[error("{0}")]
    NotAnObject(&'static str),
}

/// The strings of a JSON array; a non-array gives an empty list and non-strings are skipped.
fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Issue objects; entries that are not objects are skipped, missing strings get placeholders.
fn parse_issues(value: Option<&Value>) -> Vec<Issue> {
    let Some(items) = value.and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(Value::as_object)
        .map(|issue| {
            let text = |key: &str, default: &str| match issue.get(key) {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => default.to_owned(),
                Some(other) => other.to_string(),
            };
            Issue {
                code: text("code", "UNKNOWN"),
                severity: text("severity", "UNKNOWN"),
                message: text("message", ""),
            }
        })
        .collect()
}

/// A cost estimate needs `currency`, `min` and `max` of the right types, or it is dropped.
fn parse_cost_estimate(value: &Value) -> Option<CostEstimate> {
    let estimate = value.as_object()?;
    let number = |key: &str| match estimate.get(key) {
        Some(Value::Number(n)) => Some(n.clone()),
        _ => None,
    };
    Some(CostEstimate {
        currency: estimate.get("currency")?.as_str()?.to_owned(),
        min: number("min")?,
        max: number("max")?,
        assumptions: string_list(estimate.get("assumptions")),
    })
}

/// The error text of a non-2xx body: its `message`, `error` or `detail` string, if any.
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    ["message", "error", "detail"]
        .iter()
        .find_map(|key| value.get(key).and_then(Value::as_str))
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}
