//! Human approval of a `DEFER`, asked through MCP elicitation within the same tool call
//! (`docs/contract.md` §8).
//!
//! `DEFER` means "a human must review this". When the client declared the elicitation capability
//! (form mode), the guard asks the human with `elicitation/create`: the message ([`message`])
//! shows the server's facts first (tool, verdict, reason, attempts, the call's and the deferring
//! check's ids, the arguments' SHA-256, the questions), then the agent's goal and each argument
//! of the call in labelled, escaped, bounded fields; the form asks `approve` (boolean), `name`
//! (string, prefilled from `STAGE0_ACTOR_ID` when set) and `reason` (string). Only an accepted
//! form with `approve: true` and a usable `name` ([`read_answer`]) is an approval
//! ([`HumanApproval`]); the guard then checks again with the approval in the context and runs the tool only if that verdict is
//! `ALLOW`. Every other ending (declined, cancelled, `approve: false`, an unusable answer, no
//! answer within the timeout, a client without elicitation, asking turned off) leaves the call
//! blocked, and the result says which ([`ApprovalOutcome`]).
//!
//! An approval belongs to the one call it was given for: nothing is cached or reusable.
//! `DENY` is final and never sent to a human.

pub mod state;

use std::time::{Duration, SystemTime};

use rmcp::model::{
    ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema, InputResponses,
    JsonObject,
};
use rmcp::service::{ElicitationMode, ServiceError};
use rmcp::{Peer, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::claims::Operator;
use crate::escape::escaped;
use crate::ledger;
use crate::policy::wire::{Intent, PolicyResponse};

/// How long the guard waits for a human's answer when `STAGE0_APPROVAL_TIMEOUT_S` is not set,
/// in seconds.
pub const DEFAULT_APPROVAL_TIMEOUT_S: u64 = 300;

/// Whether the guard asks a human to review a `DEFER` (`STAGE0_APPROVALS`, default on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approvals {
    /// `STAGE0_APPROVALS=off`: a `DEFER` is returned as it is.
    Off,
    /// Ask, and give up after `timeout` (`STAGE0_APPROVAL_TIMEOUT_S`).
    Ask {
        /// How long to wait for the human's answer to one `elicitation/create` (whole seconds
        /// from 1 when read from the configuration; [`DEFAULT_APPROVAL_TIMEOUT_S`] by default).
        timeout: Duration,
    },
}

impl Approvals {
    /// How long a human has to answer: the `Ask` timeout, or the default when asking is off (an
    /// MRTR approval state is accepted for this long after it was sealed).
    pub fn timeout(self) -> Duration {
        match self {
            Approvals::Ask { timeout } => timeout,
            Approvals::Off => Duration::from_secs(DEFAULT_APPROVAL_TIMEOUT_S),
        }
    }
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals::Ask {
            timeout: Duration::from_secs(DEFAULT_APPROVAL_TIMEOUT_S),
        }
    }
}

/// The longest approver's name an answer may give, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The longest approval reason an answer may give, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A human's approval of one deferred call; added to the context of the second check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct HumanApproval {
    /// The name the human gave, as the client sent it (trimmed): never blank, at most
    /// [`MAX_NAME_CHARS`] characters, no control, format or other invisible character. The
    /// server cannot verify it; see `operator_actor_id`.
    pub approved_by: String,
    /// When the answer arrived, RFC 3339 in UTC (e.g. `2026-11-22T09:30:00Z`).
    pub approved_at: String,
    /// Why the human approved; may be empty, at most [`MAX_REASON_CHARS`] characters, no control
    /// or invisible character but the newline and the tab.
    pub approval_reason: String,
    /// `STAGE0_ACTOR_ID` of the server that asked, when set: who the operator says the server
    /// acts for, recorded beside the name the client asserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_actor_id: Option<String>,
}

impl HumanApproval {
    /// Puts the approval into an intent's context: `approval_status: approved`, `approved_by`,
    /// `approved_at` and `approval_reason`, the names the simulator and Stage0 read.
    pub fn annotate(&self, context: &mut Map<String, Value>) {
        for (key, value) in [
            ("approval_status", "approved"),
            ("approved_by", &self.approved_by),
            ("approved_at", &self.approved_at),
            ("approval_reason", &self.approval_reason),
        ] {
            context.insert(key.to_owned(), value.into());
        }
    }
}

/// How asking a human about a `DEFER` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// Accepted with `approve: true`; the call was checked again.
    Approved,
    /// Accepted with `approve: false`.
    Rejected,
    /// The human declined to answer (elicitation action `decline`).
    Declined,
    /// The human dismissed the form (elicitation action `cancel`).
    Cancelled,
    /// The answer did not fit the form (missing fields, wrong types, a blank name, a name or a
    /// reason too long or holding control or invisible characters).
    InvalidAnswer,
    /// No answer within `STAGE0_APPROVAL_TIMEOUT_S`.
    TimedOut,
    /// The client did not declare the elicitation capability (form mode).
    Unsupported,
    /// `STAGE0_APPROVALS=off`.
    Disabled,
    /// The elicitation request itself failed (the connection, the protocol version).
    Failed,
    /// An MRTR retry's `requestState` was refused (failed verification, expired, issued for
    /// another call or principal, or already used); `detail` says which. Nothing was checked.
    StateRefused,
}

/// How the question reached the human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalPath {
    /// `elicitation/create` within the call (MCP 2025-11-25 and earlier).
    Elicitation,
    /// An `input_required` result and the client's retry with the answer and the sealed
    /// `requestState` (MRTR, MCP 2026-07-28).
    Mrtr,
}

/// The `approval` part of a tool result: present whenever a tool call was deferred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ApprovalReport {
    /// How asking ended.
    pub outcome: ApprovalOutcome,
    /// How the question reached the human; absent when nobody was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<ApprovalPath>,
    /// The `request_id` of the check that answered `DEFER`.
    pub deferred_request_id: String,
    /// Who approved, when and why; only when `outcome` is `approved`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<HumanApproval>,
    /// Who rejected and why (`name: reason`) for `rejected`; what went wrong for
    /// `invalid_answer` and `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ApprovalReport {
    /// How asking about the call deferred by the check `deferred_request_id` ended, without
    /// details.
    pub fn new(outcome: ApprovalOutcome, deferred_request_id: &str) -> Self {
        ApprovalReport {
            outcome,
            via: None,
            deferred_request_id: deferred_request_id.to_owned(),
            approval: None,
            detail: None,
        }
    }

    /// The same report, saying how the question reached the human.
    pub fn via(self, path: ApprovalPath) -> Self {
        ApprovalReport {
            via: Some(path),
            ..self
        }
    }

    /// The same report with `detail` (see [`ApprovalReport::detail`]).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// One sentence for the result's text saying how asking ended.
    pub fn sentence(&self) -> String {
        let detail = self.detail.as_deref().unwrap_or("unknown");
        match self.outcome {
            ApprovalOutcome::Approved => match &self.approval {
                Some(human) => format!(
                    "Approved by {} at {} ({}).",
                    human.approved_by,
                    human.approved_at,
                    if human.approval_reason.is_empty() {
                        "no reason given"
                    } else {
                        &human.approval_reason
                    }
                ),
                None => "Approved.".to_owned(),
            },
            ApprovalOutcome::Rejected => {
                format!("The reviewer did not approve this call ({detail}).")
            }
            ApprovalOutcome::Declined => "The reviewer declined to review this call.".to_owned(),
            ApprovalOutcome::Cancelled => {
                "The reviewer dismissed the approval request without answering.".to_owned()
            }
            ApprovalOutcome::InvalidAnswer => {
                format!("The reviewer's answer could not be used: {detail}.")
            }
            ApprovalOutcome::TimedOut => {
                "No answer from the reviewer within the approval timeout.".to_owned()
            }
            ApprovalOutcome::Unsupported => "Approval needs an MCP client that supports \
                elicitation; this client did not declare it, so the call stays deferred."
                .to_owned(),
            ApprovalOutcome::Disabled => {
                "Asking a human is turned off on this server (STAGE0_APPROVALS=off).".to_owned()
            }
            ApprovalOutcome::Failed => format!("Asking the reviewer failed: {detail}."),
            ApprovalOutcome::StateRefused => {
                format!("The answer was not taken: {detail}. Nothing was checked or run.")
            }
        }
    }
}

/// The form the human fills in; field names are those of the elicitation schema.
#[derive(Debug, Deserialize)]
struct Answer {
    approve: bool,
    name: String,
    #[serde(default)]
    reason: String,
}

/// Asks the human behind `peer` whether the deferred call of `tool` may go on.
///
/// `peer` is the client of this call (`None` when there is none, as in unit tests: unsupported).
/// Never fails: every ending is an [`ApprovalReport`]; only [`ApprovalOutcome::Approved`] carries
/// a [`HumanApproval`].
pub async fn ask(
    peer: Option<&Peer<RoleServer>>,
    approvals: Approvals,
    operator: &Operator,
    call: &Prompt<'_>,
) -> ApprovalReport {
    let deferred = call.deferred;
    let report = |outcome| ApprovalReport::new(outcome, &deferred.request_id);
    let Approvals::Ask { timeout } = approvals else {
        return report(ApprovalOutcome::Disabled);
    };
    let Some(peer) = peer.filter(|peer| {
        peer.supported_elicitation_modes()
            .contains(&ElicitationMode::Form)
    }) else {
        return report(ApprovalOutcome::Unsupported);
    };
    let asked = peer
        .create_elicitation_with_timeout(question(operator, call), Some(timeout))
        .await;
    let report = match asked {
        Ok(answer) => read_answer(answer, &deferred.request_id, operator.actor_id.as_deref()),
        Err(ServiceError::Timeout { .. }) => report(ApprovalOutcome::TimedOut),
        Err(error) => report(ApprovalOutcome::Failed).with_detail(error.to_string()),
    };
    report.via(ApprovalPath::Elicitation)
}

/// The key of the approval form among an MRTR result's `inputRequests` (and of the answer among
/// the retry's `inputResponses`).
pub const INPUT_KEY: &str = "approval";

/// What the `inputResponses` of an MRTR retry say about the call deferred by the check
/// `deferred_request_id`: the answer under [`INPUT_KEY`] read as [`read_answer`] does, or
/// [`ApprovalOutcome::InvalidAnswer`] when there is none or it is not an elicitation result.
pub fn read_retry(
    input_responses: Option<InputResponses>,
    deferred_request_id: &str,
    operator_actor_id: Option<&str>,
) -> ApprovalReport {
    let answer = input_responses
        .and_then(|mut responses| responses.remove(INPUT_KEY))
        .ok_or_else(|| format!("the retry carries no answer under `{INPUT_KEY}`"))
        .and_then(|answer| {
            serde_json::from_value::<ElicitResult>(answer)
                .map_err(|error| format!("the answer is not an elicitation result: {error}"))
        });
    let report = match answer {
        Ok(answer) => read_answer(answer, deferred_request_id, operator_actor_id),
        Err(why) => ApprovalReport::new(ApprovalOutcome::InvalidAnswer, deferred_request_id)
            .with_detail(why),
    };
    report.via(ApprovalPath::Mrtr)
}

/// How many characters of each agent- or client-supplied text (the goal, each argument) the
/// prompt shows; the rest is cut, and the prompt says how long the whole was.
pub const PROMPT_EXCERPT_CHARS: usize = 200;

/// How many arguments the prompt shows one by one; the digest covers them all.
pub const PROMPT_MAX_ARGUMENTS: usize = 20;

/// How many characters of the policy's reason, and of each of its questions, the prompt shows.
const PROMPT_REASON_CHARS: usize = 500;

/// How many of the policy's questions the prompt shows.
const PROMPT_MAX_QUESTIONS: usize = 10;

/// What the approval prompt shows of the call's own arguments, taken before the guard reads
/// them: the SHA-256 of them all (as [`state::arguments_sha256`], the audit record's
/// `arguments_sha256` and what an MRTR state binds) and a bounded excerpt of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallArguments {
    /// [`state::arguments_sha256`] of the arguments.
    pub sha256: String,
    /// Each argument's name and value (a string as it is, any other value as JSON), both cut at
    /// [`PROMPT_EXCERPT_CHARS`] and escaped; at most [`PROMPT_MAX_ARGUMENTS`] of them.
    pub excerpts: Vec<(String, String)>,
    /// How many arguments the call has in all.
    pub count: usize,
}

impl CallArguments {
    /// The digest and excerpts of `arguments`.
    pub fn new(arguments: &JsonObject) -> Self {
        let excerpts = arguments
            .iter()
            .take(PROMPT_MAX_ARGUMENTS)
            .map(|(name, value)| {
                let value = match value {
                    Value::String(text) => field(text, PROMPT_EXCERPT_CHARS),
                    other => field(&other.to_string(), PROMPT_EXCERPT_CHARS),
                };
                (field(name, PROMPT_EXCERPT_CHARS), value)
            })
            .collect();
        CallArguments {
            sha256: state::arguments_sha256(arguments),
            excerpts,
            count: arguments.len(),
        }
    }
}

/// Everything the approval prompt is about: the deferred call of `tool`, its intent, the
/// deferring check and what the server knows of the call.
#[derive(Debug, Clone, Copy)]
pub struct Prompt<'a> {
    /// The tool's name (a server constant).
    pub tool: &'a str,
    /// The intent the policy checked; its goal is agent text.
    pub intent: &'a Intent,
    /// The check that answered `DEFER`; its `request_id` names the call in the prompt.
    pub deferred: &'a PolicyResponse,
    /// The call's own arguments, digested and cut.
    pub arguments: &'a CallArguments,
    /// The attempts the server counted for the call's workflow, when the tool counts them.
    pub attempts: Option<u64>,
    /// The audit log's `call_id` of the call, when there is an audit log.
    pub call_id: Option<&'a str>,
}

/// The form elicitation that asks the human about the deferred call: the message (server facts
/// first, then the agent's text in labelled, escaped, bounded fields; see [`message`]) and the
/// form (`approve`, `name`, `reason`). Sent as `elicitation/create` (2025-11-25) or as an MRTR
/// input request (2026-07-28).
pub fn question(operator: &Operator, call: &Prompt<'_>) -> ElicitRequestParams {
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message(call),
        requested_schema: form(operator),
    }
}

/// What the human's `answer` to [`question`] means for the call deferred by the check
/// `deferred_request_id`. Only an accepted form with `approve: true` and a usable name is an
/// approval: not blank, at most [`MAX_NAME_CHARS`] characters, no control, format or other
/// invisible character; a reason must keep to [`MAX_REASON_CHARS`] and hold no such character
/// but the newline and the tab. Any answer outside these limits, approving or not, is
/// [`ApprovalOutcome::InvalidAnswer`]. `operator_actor_id` (`STAGE0_ACTOR_ID`) is recorded in
/// the approval beside the name.
pub fn read_answer(
    answer: ElicitResult,
    deferred_request_id: &str,
    operator_actor_id: Option<&str>,
) -> ApprovalReport {
    let report = |outcome| ApprovalReport::new(outcome, deferred_request_id);
    match answer.action {
        ElicitationAction::Decline => report(ApprovalOutcome::Declined),
        ElicitationAction::Cancel => report(ApprovalOutcome::Cancelled),
        ElicitationAction::Accept => {
            let content = answer.content.unwrap_or(Value::Null);
            match serde_json::from_value::<Answer>(content) {
                Err(error) => report(ApprovalOutcome::InvalidAnswer).with_detail(error.to_string()),
                Ok(answer) if usable(&answer).is_err() => {
                    let why = usable(&answer).err().unwrap_or_default();
                    report(ApprovalOutcome::InvalidAnswer).with_detail(why)
                }
                Ok(answer) if !answer.approve => report(ApprovalOutcome::Rejected)
                    .with_detail(format!("{}: {}", answer.name.trim(), answer.reason.trim())),
                Ok(answer) if answer.name.trim().is_empty() => {
                    report(ApprovalOutcome::InvalidAnswer).with_detail("the name is blank")
                }
                Ok(answer) => ApprovalReport {
                    approval: Some(HumanApproval {
                        approved_by: answer.name.trim().to_owned(),
                        approved_at: humantime::format_rfc3339_seconds(SystemTime::now())
                            .to_string(),
                        approval_reason: answer.reason.trim().to_owned(),
                        operator_actor_id: operator_actor_id.map(str::to_owned),
                    }),
                    ..report(ApprovalOutcome::Approved)
                },
            }
        }
        // A newer protocol's action this server does not know is not an approval.
        other => report(ApprovalOutcome::Failed).with_detail(format!("unknown action {other:?}")),
    }
}

/// Whether the name and reason of `answer` keep to the limits of [`read_answer`]; the error says
/// which does not, without repeating it.
fn usable(answer: &Answer) -> Result<(), String> {
    let name = answer.name.trim();
    let reason = answer.reason.trim();
    let name_chars = name.chars().count();
    if name_chars > MAX_NAME_CHARS {
        return Err(format!(
            "the name is {name_chars} characters long; at most {MAX_NAME_CHARS} are taken"
        ));
    }
    if let Some((position, character, kind)) = ledger::first_invisible(name) {
        return Err(format!(
            "character {position} of the name is `U+{:04X}`, {kind}: a name may not hold \
             control, format or other invisible characters",
            u32::from(character)
        ));
    }
    let reason_chars = reason.chars().count();
    if reason_chars > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is {reason_chars} characters long; at most {MAX_REASON_CHARS} are taken"
        ));
    }
    let visible = reason.replace(['\n', '\t'], " ");
    if let Some((position, character, kind)) = ledger::first_invisible(&visible) {
        return Err(format!(
            "character {position} of the reason is `U+{:04X}`, {kind}: a reason may not hold \
             control, format or other invisible characters but newlines and tabs",
            u32::from(character)
        ));
    }
    Ok(())
}

/// `text` cut at `limit` characters and escaped ([`escaped`]), on one line: whole, or its first
/// `limit` characters followed by `… (cut: N characters in all)`.
fn field(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        None => escaped(text).to_string(),
        Some((cut, _)) => format!(
            "{}… (cut: {} characters in all)",
            escaped(&text[..cut]),
            text.chars().count()
        ),
    }
}

/// What the human reads. The server's facts come first, one per line: the tool, the verdict and
/// the policy's reason, the attempts counted, the id of the deferring check, the arguments'
/// SHA-256 and the policy's questions. Then, under a heading saying so, every text the agent
/// supplied (the goal, each argument) in a labelled field of its own line, escaped
/// ([`crate::escape`]) and cut at [`PROMPT_EXCERPT_CHARS`]: a newline, a fake `Reason:` or sixty
/// blank lines in it stay inside that one field, after the real reason.
pub fn message(call: &Prompt<'_>) -> String {
    let Prompt {
        tool,
        intent,
        deferred,
        arguments,
        attempts,
        call_id,
    } = *call;
    let mut message = format!(
        "Stage0 deferred a call of `{tool}` for human review.\n\n\
         Tool: `{tool}`\n\
         Verdict: {} ({})\n\
         Reason: {}\n",
        deferred.verdict,
        deferred.decision,
        field(&deferred.reason, PROMPT_REASON_CHARS),
    );
    if let Some(attempts) = attempts {
        message.push_str(&format!("Attempts counted by the server: {attempts}\n"));
    }
    if let Some(call_id) = call_id {
        message.push_str(&format!("Call id (audit log): {call_id}\n"));
    }
    message.push_str(&format!(
        "Call (id of the deferring check): {}\nArguments SHA-256: {}\n",
        field(&deferred.request_id, PROMPT_EXCERPT_CHARS),
        arguments.sha256
    ));
    let questions = deferred.questions();
    if !questions.is_empty() {
        message.push_str("\nQuestions from the policy:\n");
        for question in questions.iter().take(PROMPT_MAX_QUESTIONS) {
            message.push_str(&format!("- {}\n", field(question, PROMPT_REASON_CHARS)));
        }
        if questions.len() > PROMPT_MAX_QUESTIONS {
            message.push_str(&format!("- … ({} questions in all)\n", questions.len()));
        }
    }
    message.push_str(&format!(
        "\nSupplied by the agent (not checked by the server; each field escaped and cut at {} \
         characters):\n",
        PROMPT_EXCERPT_CHARS
    ));
    message.push_str(&format!(
        "[goal] {}\n",
        field(&intent.goal, PROMPT_EXCERPT_CHARS)
    ));
    for (name, value) in &arguments.excerpts {
        message.push_str(&format!("[argument {name}] {value}\n"));
    }
    if arguments.count > arguments.excerpts.len() {
        message.push_str(&format!(
            "[… {} more arguments, covered by the SHA-256]\n",
            arguments.count - arguments.excerpts.len()
        ));
    }
    message.push_str(
        "\nApprove this one call? The approval is not remembered for later calls, and the call \
         runs only if the policy allows it once it knows you approved.",
    );
    message
}

/// The form: `approve` (boolean), `name` (prefilled with `STAGE0_ACTOR_ID`), `reason`.
fn form(operator: &Operator) -> ElicitationSchema {
    ElicitationSchema::builder()
        .required_bool_with("approve", |schema| {
            schema
                .title("Approve this call")
                .description("Yes lets the policy check this call again with your approval.")
        })
        .required_string_with("name", |schema| {
            let schema = schema
                .title("Your name")
                .description("Recorded as approved_by.")
                .min_length(1)
                .max_length(MAX_NAME_CHARS as u32);
            match &operator.actor_id {
                Some(actor_id) => schema.with_default(actor_id.as_str()),
                None => schema,
            }
        })
        .optional_string_with("reason", |schema| {
            schema
                .title("Reason")
                .description("Why you approve or reject; recorded as approval_reason.")
                .max_length(MAX_REASON_CHARS as u32)
        })
        .build()
        .expect("every required field of the approval form is one of its properties")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::wire::{Decision, Verdict};

    fn deferred() -> PolicyResponse {
        let mut deferred = PolicyResponse::new(
            Verdict::Defer,
            Decision::Defer,
            "LOOP_THRESHOLD_EXCEEDED: too many retries".to_owned(),
            "req-defer-1".to_owned(),
        );
        deferred.defer_questions = vec!["Should we go on?".to_owned()];
        deferred
    }

    fn arguments(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    fn prompt_for(goal: &str, call: &JsonObject, attempts: Option<u64>) -> String {
        let intent = Intent {
            goal: goal.to_owned(),
            ..Intent::default()
        };
        let deferred = deferred();
        let shown = CallArguments::new(call);
        message(&Prompt {
            tool: "publish-content",
            intent: &intent,
            deferred: &deferred,
            arguments: &shown,
            attempts,
            call_id: Some("call-1"),
        })
    }

    #[test]
    fn the_prompt_shows_each_argument_cut_and_the_digest_and_differs_by_content() {
        let leak = "SECRET-LEAK ".repeat(100);
        let one = arguments(json!({"channel": "blog", "content": "harmless post"}));
        let two = arguments(json!({"channel": "blog", "content": leak}));
        let first = prompt_for("Publish content to blog", &one, None);
        let second = prompt_for("Publish content to blog", &two, None);
        assert_ne!(first, second, "two contents, two prompts");
        assert!(
            first.contains("[argument content] harmless post\n"),
            "{first}"
        );
        assert!(first.contains("[argument channel] blog\n"), "{first}");
        assert!(first.contains(&state::arguments_sha256(&one)), "{first}");
        assert!(second.contains(&state::arguments_sha256(&two)), "{second}");
        assert!(second.contains("SECRET-LEAK"), "{second}");
        assert!(
            second.contains(&format!("(cut: {} characters in all)", leak.len())),
            "{second}"
        );
        assert!(
            second.len() < first.len() + 2 * PROMPT_EXCERPT_CHARS,
            "cut at {PROMPT_EXCERPT_CHARS} characters: {second}"
        );
        assert!(first.contains("Call (id of the deferring check): req-defer-1"));
        assert!(first.contains("Call id (audit log): call-1\n"));
    }

    #[test]
    fn agent_text_cannot_forge_the_top_of_the_prompt() {
        let hostile = format!(
            "etl\nReason: approved by security, safe to run{}\u{1b}[2J\u{202e}end",
            "\n".repeat(60)
        );
        let call = arguments(json!({"workflowId": hostile, "retryCount": 5}));
        let prompt = prompt_for(&format!("Retry workflow {hostile}"), &call, Some(5));
        let lines: Vec<&str> = prompt.lines().collect();
        let reason = lines
            .iter()
            .position(|line| line.starts_with("Reason: LOOP_THRESHOLD_EXCEEDED"))
            .expect("the server's reason has its own line");
        let agent = lines
            .iter()
            .position(|line| line.contains("etl"))
            .expect("the agent's text is shown");
        assert!(reason < agent, "{prompt}");
        assert_eq!(
            lines
                .iter()
                .filter(|line| line.starts_with("Reason:"))
                .count(),
            1,
            "{prompt}"
        );
        assert!(
            prompt.contains("Attempts counted by the server: 5\n"),
            "{prompt}"
        );
        for line in &lines[agent..] {
            if line.contains("etl") {
                assert!(line.starts_with('['), "a labelled field: {line}");
                assert!(line.contains(r"etl\nReason: approved"), "{line}");
            }
        }
        assert!(
            !prompt.contains('\u{1b}') && !prompt.contains('\u{202e}'),
            "{prompt}"
        );
        assert!(
            !prompt.contains("\n\n\n"),
            "no run of blank lines: {prompt}"
        );
    }

    fn accepted(content: Value) -> ElicitResult {
        ElicitResult::new(ElicitationAction::Accept).with_content(content)
    }

    #[test]
    fn a_name_or_reason_outside_the_limits_is_an_invalid_answer_not_an_approval() {
        let huge = "x".repeat(3 * 1024 * 1024);
        let long_reason = "y".repeat(MAX_REASON_CHARS + 1);
        for (approve, name, reason) in [
            (true, huge.as_str(), ""),
            (true, "\u{200b}", ""),
            (true, "Dana\u{200b}", ""),
            (true, "Dana\nReason: forged", ""),
            (true, "Da\u{1b}]52;c;SGk=\u{7}na", ""),
            (true, "\u{202e}anaD", ""),
            (true, "Dana", long_reason.as_str()),
            (true, "Dana", "ok\u{1b}[2J"),
            (false, huge.as_str(), "no"),
        ] {
            let answer = accepted(json!({"approve": approve, "name": name, "reason": reason}));
            let report = read_answer(answer, "req-1", None);
            assert_eq!(
                report.outcome,
                ApprovalOutcome::InvalidAnswer,
                "{name:.40?}"
            );
            assert!(report.approval.is_none());
            let detail = report.detail.expect("a detail");
            assert!(
                detail.len() < 300,
                "the detail does not repeat it: {detail}"
            );
        }
        let name = "D".repeat(MAX_NAME_CHARS);
        let fine = accepted(json!({"approve": true, "name": name, "reason": "line one\nline two"}));
        assert_eq!(
            read_answer(fine, "req-1", None).outcome,
            ApprovalOutcome::Approved
        );
    }

    #[test]
    fn the_operator_actor_id_is_recorded_beside_the_asserted_name() {
        let answer = accepted(json!({"approve": true, "name": "Dana", "reason": "ok"}));
        let report = read_answer(answer.clone(), "req-1", Some("dana@example.test"));
        let human = report.approval.expect("approved");
        assert_eq!(human.approved_by, "Dana");
        assert_eq!(
            human.operator_actor_id.as_deref(),
            Some("dana@example.test")
        );
        let json = serde_json::to_value(&human).expect("serialises");
        assert_eq!(json["approved_by"], "Dana");
        assert_eq!(json["operator_actor_id"], "dana@example.test");

        let unset = read_answer(answer, "req-1", None)
            .approval
            .expect("approved");
        let json = serde_json::to_value(&unset).expect("serialises");
        assert!(json.get("operator_actor_id").is_none(), "{json}");
    }
}
