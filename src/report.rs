//! What a tool result looks like (SPEC §6): text in the original's shape for people and models,
//! and `structuredContent` with the whole verdict for clients that act on it.
//!
//! A blocked call (`DENY`, `DEFER`) and a failed tool body set `isError: true`, so no client
//! mistakes them for success. `check-authorization` only reports, so its result is never an error.
//! Invalid arguments are an `isError` result whose text names the field (MCP 2025-11-25).

use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Serialize;

use crate::stage0::Mode;
use crate::stage0::wire::{Intent, PolicyResponse, Verdict};

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
    #[serde(flatten)]
    pub policy: PolicyResponse,
    /// What the tool body returned, when it ran and succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Why the tool body failed, when it ran and failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a call the guard did not let run (`DENY` or `DEFER`): `isError: true`.
pub fn blocked(tool: &str, mode: Mode, policy: PolicyResponse) -> CallToolResult {
    let mut text = match policy.verdict {
        Verdict::Defer => format!("⏸️ DEFERRED by Stage0\n\nReason: {}\n\n", policy.reason),
        _ => format!("⛔ BLOCKED by Stage0\n\nReason: {}\n\n", policy.reason),
    };
    let questions = questions(&policy);
    if policy.verdict == Verdict::Defer && !questions.is_empty() {
        text.push_str("Questions:\n");
        for question in questions {
            text.push_str(&format!("- {question}\n"));
        }
        text.push('\n');
    }
    text.push_str(&ids(&policy));
    let report = ToolReport {
        tool: tool.to_owned(),
        executed: false,
        mode,
        policy,
        output: None,
        error: None,
    };
    result(text, &report, true)
}

/// The result of a call that ran after `ALLOW`; `isError: true` when the body failed.
pub fn executed(
    tool: &str,
    mode: Mode,
    policy: PolicyResponse,
    outcome: Result<String, String>,
) -> CallToolResult {
    let (text, output, error) = match outcome {
        Ok(output) => {
            let text = format!(
                "✅ ALLOWED by Stage0\n\n{}\n\n---\n\n{output}",
                ids(&policy)
            );
            (text, Some(output), None)
        }
        Err(error) => {
            let text = format!(
                "❌ ERROR during execution\n\nError: {error}\n\n{}",
                ids(&policy)
            );
            (text, None, Some(error))
        }
    };
    let failed = error.is_some();
    let report = ToolReport {
        tool: tool.to_owned(),
        executed: true,
        mode,
        policy,
        output,
        error,
    };
    result(text, &report, failed)
}

/// The result of a report-only check (`check-authorization`): never an error.
pub fn reported(tool: &str, mode: Mode, intent: &Intent, policy: PolicyResponse) -> CallToolResult {
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
        ids(&policy),
        optional(policy.risk_score.as_ref().map(ToString::to_string)),
        optional(policy.high_risk.map(|h| h.to_string())),
    ));
    let questions = questions(&policy);
    if !questions.is_empty() {
        text.push_str("\n\nQuestions:");
        for question in questions {
            text.push_str(&format!("\n- {question}"));
        }
    }
    let report = ToolReport {
        tool: tool.to_owned(),
        executed: false,
        mode,
        policy,
        output: None,
        error: None,
    };
    result(text, &report, false)
}

/// The result of a call whose arguments could not be read: `isError: true`, nothing was checked.
pub fn invalid_arguments(tool: &str, problem: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "invalid arguments for `{tool}`: {problem}"
    ))])
}

/// `defer_questions` when there are any, else `clarifying_questions`, as the original shows them.
fn questions(policy: &PolicyResponse) -> &[String] {
    if policy.defer_questions.is_empty() {
        &policy.clarifying_questions
    } else {
        &policy.defer_questions
    }
}

fn ids(policy: &PolicyResponse) -> String {
    format!(
        "Request ID: {}\nPolicy Version: {}",
        policy.request_id, policy.policy_version
    )
}

fn result(text: String, report: &ToolReport, is_error: bool) -> CallToolResult {
    let value = serde_json::to_value(report).expect("a tool report always serialises");
    let mut result = if is_error {
        CallToolResult::structured_error(value)
    } else {
        CallToolResult::structured(value)
    };
    result.content = vec![ContentBlock::text(text)];
    result
}
