//! Human approval of a `DEFER`, asked through MCP elicitation within the same tool call
//! (`docs/contract.md` §8).
//!
//! `DEFER` means "a human must review this". When the client declared the elicitation capability
//! (form mode), the guard asks the human with `elicitation/create`: the message shows the tool,
//! the goal, the reason and the questions, and the form asks `approve` (boolean), `name` (string,
//! prefilled from `STAGE0_ACTOR_ID` when set) and `reason` (string). Only an accepted form with
//! `approve: true` and a non-blank `name` is an approval ([`HumanApproval`]); the guard then
//! checks again with the approval in the context and runs the tool only if that verdict is
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
};
use rmcp::service::{ElicitationMode, ServiceError};
use rmcp::{Peer, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::claims::Operator;
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

/// A human's approval of one deferred call; added to the context of the second check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct HumanApproval {
    /// The name the human gave; never blank.
    pub approved_by: String,
    /// When the answer arrived, RFC 3339 in UTC (e.g. `2026-11-22T09:30:00Z`).
    pub approved_at: String,
    /// Why the human approved; may be empty.
    pub approval_reason: String,
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
    /// The answer did not fit the form (missing fields, wrong types, blank name).
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
    tool: &str,
    intent: &Intent,
    deferred: &PolicyResponse,
) -> ApprovalReport {
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
        .create_elicitation_with_timeout(question(operator, tool, intent, deferred), Some(timeout))
        .await;
    let report = match asked {
        Ok(answer) => read_answer(answer, &deferred.request_id),
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
) -> ApprovalReport {
    let answer = input_responses
        .and_then(|mut responses| responses.remove(INPUT_KEY))
        .ok_or_else(|| format!("the retry carries no answer under `{INPUT_KEY}`"))
        .and_then(|answer| {
            serde_json::from_value::<ElicitResult>(answer)
                .map_err(|error| format!("the answer is not an elicitation result: {error}"))
        });
    let report = match answer {
        Ok(answer) => read_answer(answer, deferred_request_id),
        Err(why) => ApprovalReport::new(ApprovalOutcome::InvalidAnswer, deferred_request_id)
            .with_detail(why),
    };
    report.via(ApprovalPath::Mrtr)
}

/// The form elicitation that asks the human about the deferred call of `tool`: the message
/// (tool, goal, reason, questions) and the form (`approve`, `name`, `reason`). Sent as
/// `elicitation/create` (2025-11-25) or as an MRTR input request (2026-07-28).
pub fn question(
    operator: &Operator,
    tool: &str,
    intent: &Intent,
    deferred: &PolicyResponse,
) -> ElicitRequestParams {
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message(tool, intent, deferred),
        requested_schema: form(operator),
    }
}

/// What the human's `answer` to [`question`] means for the call deferred by the check
/// `deferred_request_id`. Only an accepted form with `approve: true` and a non-blank name is an
/// approval.
pub fn read_answer(answer: ElicitResult, deferred_request_id: &str) -> ApprovalReport {
    let report = |outcome| ApprovalReport::new(outcome, deferred_request_id);
    match answer.action {
        ElicitationAction::Decline => report(ApprovalOutcome::Declined),
        ElicitationAction::Cancel => report(ApprovalOutcome::Cancelled),
        ElicitationAction::Accept => {
            let content = answer.content.unwrap_or(Value::Null);
            match serde_json::from_value::<Answer>(content) {
                Err(error) => report(ApprovalOutcome::InvalidAnswer).with_detail(error.to_string()),
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
                    }),
                    ..report(ApprovalOutcome::Approved)
                },
            }
        }
        // A newer protocol's action this server does not know is not an approval.
        other => report(ApprovalOutcome::Failed).with_detail(format!("unknown action {other:?}")),
    }
}

/// What the human reads: the tool, the goal, the reason and the questions.
fn message(tool: &str, intent: &Intent, deferred: &PolicyResponse) -> String {
    let mut message = format!(
        "Stage0 deferred a call of `{tool}` for human review.\n\nGoal: {}\nReason: {}\n",
        intent.goal, deferred.reason
    );
    let questions = deferred.questions();
    if !questions.is_empty() {
        message.push_str("\nQuestions:\n");
        for question in questions {
            message.push_str(&format!("- {question}\n"));
        }
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
                .min_length(1);
            match &operator.actor_id {
                Some(actor_id) => schema.with_default(actor_id.as_str()),
                None => schema,
            }
        })
        .optional_string_with("reason", |schema| {
            schema
                .title("Reason")
                .description("Why you approve or reject; recorded as approval_reason.")
        })
        .build()
        .expect("every required field of the approval form is one of its properties")
}
