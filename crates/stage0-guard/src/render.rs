//! What a tool result looks like (`docs/contract.md` §6): text in the original's shape for people
//! and models, and `structuredContent` with the whole verdict for clients that act on it.
//!
//! A blocked call (`DENY`, `DEFER`) and a failed tool body set `isError: true`, so no client
//! mistakes them for success. `check-authorization` only reports, so its result is never an error.
//! Invalid arguments are an `isError` result whose text names the field (MCP 2025-11-25).

use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Serialize;

use crate::approval::ApprovalReport;
use crate::claims::Provenance;
use crate::policy::Mode;
use crate::policy::wire::{Intent, PolicyResponse, Verdict};

/// What a tool body returns: text for people and models, and, optionally, structured data for
/// clients (`structuredContent.data` of the result).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// Shown after the verdict in the result's text content, and as `structuredContent.output`.
    pub text: String,
    /// Any JSON value, as `structuredContent.data`; `None` leaves the field out.
    pub data: Option<serde_json::Value>,
}

impl ToolOutput {
    /// Text only.
    pub fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            data: None,
        }
    }

    /// The same output with `data` as its structured part.
    pub fn with_data(self, data: serde_json::Value) -> Self {
        ToolOutput {
            data: Some(data),
            ..self
        }
    }
}

/// Everything the guard knows about a call once it has its final verdict.
#[derive(Debug)]
pub struct Checked {
    /// The tool that was called, e.g. `deploy-changes`.
    pub tool: &'static str,
    /// Which policy decision point answered.
    pub mode: Mode,
    /// The final verdict: after a human approval, that of the second check.
    pub policy: PolicyResponse,
    /// Where the authorization context came from.
    pub provenance: Provenance,
    /// How asking a human ended, when the call was deferred.
    pub approval: Option<ApprovalReport>,
}

/// The `structuredContent` of every guarded tool result; its schema is each tool's `outputSchema`.
///
/// The verdict fields (`verdict`, `decision`, `reason`, `request_id`, `policy_version`,
/// `risk_score`, `high_risk`, `issues`, questions, ...) are those of the Stage0 `/check` response,
/// at the top level.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolReport {
    /// The tool that was called, e.g. `deploy-changes`.
    pub tool: String,
    /// Whether the tool body ran; only ever after `ALLOW`.
    pub executed: bool,
    /// Which policy decision point answered: `stage0` (live API) or `simulator`.
    pub mode: Mode,
    /// The final verdict with everything the policy decision point said, its fields at the top
    /// level of `structuredContent` (`verdict`, `decision`, `reason`, `request_id`, ...).
    #[serde(flatten)]
    pub policy: PolicyResponse,
    /// Where the authorization context came from: effective and claimed values.
    pub provenance: Provenance,
    /// How asking a human ended; present whenever the call was deferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalReport>,
    /// What the tool body returned, when it ran and succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The structured part of what the tool body returned, when it ran, succeeded and returned
    /// one (`ToolOutput::data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Why the tool body failed, when it ran and failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a call the guard did not let run (`DENY` or `DEFER`): `isError: true`.
pub fn blocked(checked: Checked) -> CallToolResult {
    let policy = &checked.policy;
    let mut text = match policy.verdict {
        Verdict::Defer => format!("⏸️ DEFERRED by Stage0\n\nReason: {}\n\n", policy.reason),
        _ => format!("⛔ BLOCKED by Stage0\n\nReason: {}\n\n", policy.reason),
    };
    let questions = policy.questions();
    if policy.verdict == Verdict::Defer && !questions.is_empty() {
        text.push_str("Questions:\n");
        for question in questions {
            text.push_str(&format!("- {question}\n"));
        }
        text.push('\n');
    }
    text.push_str(&context_notes(&checked));
    text.push_str(&ids(policy));
    result(text, ToolReport::new(checked, None, None), true)
}

/// The result of a call that ran after `ALLOW`; `isError: true` when the body failed (`outcome`
/// is then the error's text).
pub fn executed(checked: Checked, outcome: Result<ToolOutput, String>) -> CallToolResult {
    let notes = context_notes(&checked);
    let ids = ids(&checked.policy);
    match outcome {
        Ok(ToolOutput { text: output, data }) => {
            let text = format!("✅ ALLOWED by Stage0\n\n{notes}{ids}\n\n---\n\n{output}");
            let mut report = ToolReport::new(checked, Some(output), None);
            report.data = data;
            result(text, report, false)
        }
        Err(error) => {
            let text = format!("❌ ERROR during execution\n\nError: {error}\n\n{notes}{ids}");
            result(text, ToolReport::new(checked, None, Some(error)), true)
        }
    }
}

/// The result of a report-only check (`check-authorization`): never an error.
pub fn reported(checked: Checked, intent: &Intent) -> CallToolResult {
    let policy = &checked.policy;
    let status = match policy.verdict {
        Verdict::Allow => "✅ ALLOWED",
        Verdict::Defer => "⏸️ DEFERRED",
        Verdict::Deny => "⛔ DENIED",
    };
    let side_effects = if intent.side_effects.is_empty() {
        "None".to_owned()
    } else {
        intent.side_effects.join(", ")
    };
    let mut text = format!(
        "{status}\n\nGoal: {}\nSide Effects: {side_effects}\nSuccess Criteria: {}",
        intent.goal,
        intent.success_criteria.join(", ")
    );
    if let Some(retry_count) = intent.context.get("retry_count") {
        text.push_str(&format!("\nRetry Count: {retry_count}"));
    }
    let optional = |value: Option<String>| value.unwrap_or_else(|| "n/a".to_owned());
    text.push_str(&format!(
        "\n\nDecision: {}\nReason: {}\n\n{}\nRisk Score: {}\nHigh Risk: {}",
        policy.decision,
        policy.reason,
        ids(policy),
        optional(policy.risk_score.as_ref().map(ToString::to_string)),
        optional(policy.high_risk.map(|h| h.to_string())),
    ));
    let questions = policy.questions();
    if !questions.is_empty() {
        text.push_str("\n\nQuestions:");
        for question in questions {
            text.push_str(&format!("\n- {question}"));
        }
    }
    result(text, ToolReport::new(checked, None, None), false)
}

/// The result of a call the client cancelled before its final verdict: `isError: true`, nothing
/// ran. rmcp does not send the answer to a cancelled request; this is for the record.
pub fn cancelled(tool: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "`{tool}` was cancelled before its verdict; nothing ran"
    ))])
}

/// The result of an MRTR retry whose `requestState` was refused (`why`): `isError: true`,
/// nothing was checked or run.
pub fn state_refused(tool: &str, why: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "the approval for `{tool}` was not accepted: {why}; nothing was checked or run. \
         Call the tool again to be asked afresh."
    ))])
}

/// The result of a call whose arguments could not be read: `isError: true`, nothing was checked.
pub fn invalid_arguments(tool: &str, problem: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "invalid arguments for `{tool}`: {problem}"
    ))])
}

/// The paragraphs on the server-vouched context and the human review, each ending in a blank line;
/// empty when the call's claims were taken as given and nobody was asked.
fn context_notes(checked: &Checked) -> String {
    let mut notes = String::new();
    let overrides = checked.provenance.overrides();
    if !overrides.is_empty() {
        notes.push_str("Context vouched for by the server:\n");
        for line in overrides {
            notes.push_str(&format!("- {line}\n"));
        }
        notes.push('\n');
    }
    if let Some(approval) = &checked.approval {
        notes.push_str(&format!("Human review: {}\n\n", approval.sentence()));
    }
    notes
}

/// The `Request ID:` line (and, when Stage0 named the check otherwise, a `Stage0 Request ID:`
/// line) and the `Policy Version:` line.
fn ids(policy: &PolicyResponse) -> String {
    let stage0 = match &policy.stage0_request_id {
        Some(id) => format!("Stage0 Request ID: {id}\n"),
        None => String::new(),
    };
    format!(
        "Request ID: {}\n{stage0}Policy Version: {}",
        policy.request_id, policy.policy_version
    )
}

impl ToolReport {
    /// The report of `checked`; `executed` is whether the body ran, that is, `output` or `error`.
    fn new(checked: Checked, output: Option<String>, error: Option<String>) -> Self {
        ToolReport {
            tool: checked.tool.to_owned(),
            executed: output.is_some() || error.is_some(),
            mode: checked.mode,
            policy: checked.policy,
            provenance: checked.provenance,
            approval: checked.approval,
            output,
            data: None,
            error,
        }
    }
}

/// A result with `text` as its content and `report` as its `structuredContent`.
///
/// Built from `success` / `error` rather than `CallToolResult::structured`, which would also
/// write the whole report out as JSON text for a content block that `text` replaces anyway: that
/// second serialisation was 9–12% of the instructions of a call (BENCHMARKS.md).
fn result(text: String, report: ToolReport, is_error: bool) -> CallToolResult {
    let content = vec![ContentBlock::text(text)];
    let mut result = if is_error {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    result.structured_content =
        Some(serde_json::to_value(&report).expect("a tool report always serialises"));
    result
}
