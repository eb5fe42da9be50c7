//! What an audit record says, one shape per `kind` (`docs/contract.md` §10).
//!
//! - `decision`: a verdict of the policy decision point, written and made durable before the tool
//!   body may run. A deferred call that a human approved has two: the `DEFER`, then the verdict
//!   of the second check (which names the first in `deferred_request_id`).
//! - `approval`: how asking a human about a `DEFER` ended (MCP elicitation).
//! - `outcome`: how the call ended: the body ran (`ok` / `error`, with its duration) or it did
//!   not (`blocked`, `reported`, `cancelled`, `invalid_arguments`).
//! - `recovery`: a torn last line, left by a crash, that the server found at start and kept.
//! - `policy_reload`: the Cedar policy was read again (SIGHUP): the new `policy_version`, or why
//!   the old one stays.
//! - `unfinished`: the calls that had a `decision` and no `outcome` when the server started: a
//!   crash ended them, or lost their outcome before it was written (outcomes are not awaited,
//!   `writer.rs`), or another server on the same file was still running them.
//!
//! Every record of one tool call carries the same `call_id`. The chain fields (`seq`, `ts`,
//! `prev`, `hash`) are added when the record is sealed (`chain.rs`). The tool arguments are never
//! stored, only `arguments_sha256`; the API key is never part of any record.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::approval::{ApprovalOutcome, ApprovalPath, HumanApproval};
use crate::claims::Provenance;
use crate::policy::Mode;
use crate::policy::wire::{self, Verdict};

/// One event of the audit log, serialised as one JSON object whose `kind` is the variant's name
/// in snake case (`decision`, `approval`, `outcome`, `recovery`, `unfinished`, `policy_reload`) beside the
/// record's fields. The chain fields are added when it is sealed ([`chain::seal`](super::chain::seal)).
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event<'a> {
    /// `kind: decision`: one verdict.
    Decision(DecisionRecord<'a>),
    /// `kind: approval`: how asking a human about a `DEFER` ended.
    Approval(ApprovalRecord<'a>),
    /// `kind: outcome`: how the call ended.
    Outcome(OutcomeRecord<'a>),
    /// `kind: recovery`: a torn last line found at start.
    Recovery(RecoveryRecord),
    /// `kind: policy_reload`: the Cedar policy was read again.
    PolicyReload(PolicyReloadRecord),
    /// `kind: unfinished`: the calls without an outcome found at start.
    Unfinished(UnfinishedRecord),
}

/// A `decision` record: one verdict and everything it was given and said.
#[derive(Debug, Serialize)]
pub struct DecisionRecord<'a> {
    /// The tool call this verdict belongs to (a UUID, the same in every record of the call).
    pub call_id: &'a str,
    /// The check's id: the `X-Request-Id` sent to Stage0, or the simulator's.
    pub request_id: &'a str,
    /// The `request_id` Stage0's answer gave, when it differs from the one sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage0_request_id: Option<&'a str>,
    /// On the check after a human approval: the `request_id` of the `DEFER` that was approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred_request_id: Option<&'a str>,
    /// The MCP tool name, e.g. `retry-workflow`.
    pub tool: &'a str,
    /// SHA-256 (hex) of the canonical JSON of the call's arguments: RFC 8785, with integers
    /// written whole (`json.rs`).
    pub arguments_sha256: &'a str,
    /// The execution intent's goal: whole up to [`GOAL_PREFIX_CHARS`] characters, else its first
    /// [`GOAL_PREFIX_CHARS`] characters, with `goal_bytes` and `goal_sha256` naming the whole.
    pub goal: &'a str,
    /// The whole goal's length in bytes (UTF-8); only when `goal` holds a prefix of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal_bytes: Option<usize>,
    /// SHA-256 (hex) of the whole goal's UTF-8 bytes; only when `goal` holds a prefix of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal_sha256: Option<String>,
    /// The execution intent's side effects (`publish`, `deploy`, `loop`, ...).
    pub side_effects: &'a [String],
    /// The authorization context sent to the policy decision point: the effective values and,
    /// beside them, what the agent claimed (`claimed_retry_count`, `claimed_actor_role`, ...).
    pub context: &'a Map<String, Value>,
    /// Where each effective value came from (see `claims.rs`).
    pub provenance: &'a Provenance,
    /// SHA-256 (hex) of the workflow id whose retry this call counted in the attempt ledger; the
    /// ledger is rebuilt from these at start. Only on the first check of a call that counted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_sha256: Option<String>,
    /// `ALLOW`, `DENY` or `DEFER`: what decided whether the body could run.
    pub verdict: Verdict,
    /// The decision code reported with the verdict (`GO`, `NO_GO`, `DEFER`, `ERROR`).
    pub decision: wire::Decision,
    /// Why, as the policy decision point said (or the fail-closed reason).
    pub reason: &'a str,
    /// The policy version that decided; empty when the policy decision point sent none.
    pub policy_version: &'a str,
    /// 0–100; `null` when the policy decision point sent none.
    pub risk_score: Option<&'a Number>,
    /// The `code` of each issue the policy decision point raised.
    pub issues: Vec<&'a str>,
    /// Which policy decision point answered: `stage0`, `simulator`, `cedar` or `cedar+stage0`.
    pub mode: Mode,
    /// The ids of the Cedar policies that determined the verdict (`cedar` modes).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub determining_policies: &'a [String],
    /// With `cedar+stage0`: each policy decision point's own answer, the local policy's first.
    #[serde(skip_serializing_if = "<[wire::Opinion]>::is_empty")]
    pub answers: &'a [wire::Opinion],
    /// The shadow policy set's answer (`STAGE0_POLICY_SHADOW`), never enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<&'a wire::Opinion>,
    /// How long the check took, in milliseconds (microsecond precision).
    pub check_latency_ms: f64,
}

/// An `approval` record: a human's answer (or its absence) about a `DEFER`.
#[derive(Debug, Serialize)]
pub struct ApprovalRecord<'a> {
    /// The tool call this answer belongs to.
    pub call_id: &'a str,
    /// The `request_id` of the check that answered `DEFER`.
    pub request_id: &'a str,
    /// The MCP tool name.
    pub tool: &'a str,
    /// How asking ended (`approved`, `rejected`, `timed_out`, ...).
    pub outcome: ApprovalOutcome,
    /// How the question reached the human (`elicitation` or `mrtr`); absent when nobody was
    /// asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<ApprovalPath>,
    /// For an answer that came back through MRTR: the SHA-256 (hex) of its `requestState`'s
    /// nonce, now spent. The log names every spent nonce, so a restart cannot accept it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_sha256: Option<&'a str>,
    /// With `nonce_sha256`: when that state expires, in Unix milliseconds; past it the nonce
    /// need not be remembered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_expires_at_ms: Option<u64>,
    /// Who approved, when and why; only when `outcome` is `approved`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<&'a HumanApproval>,
    /// Who rejected and why, or what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// An `outcome` record: how a tool call ended.
#[derive(Debug, Serialize)]
pub struct OutcomeRecord<'a> {
    /// The tool call that ended.
    pub call_id: &'a str,
    /// The `request_id` of the final verdict; absent when no verdict was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// The MCP tool name.
    pub tool: &'a str,
    /// SHA-256 (hex) of the RFC 8785 canonical JSON of the call's arguments.
    pub arguments_sha256: &'a str,
    /// Whether the tool body ran (only ever after an `ALLOW` whose decision record is durable).
    pub executed: bool,
    /// How the call ended.
    pub status: Status,
    /// Why the body failed, or why the arguments could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// How long the tool body ran, in milliseconds (microsecond precision); only when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The guardrails of the `ALLOW` that the tool's body enforces (`GuardedTool::GUARDRAILS`);
    /// only when the verdict carried some.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub guardrails_enforced: &'a [String],
    /// The guardrails of the `ALLOW` that no code enforced: the body ran without them
    /// (`STAGE0_UNENFORCED_GUARDRAILS=warn`) or did not run (`deny`).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub guardrails_unenforced: &'a [String],
}

/// How a tool call ended, as an `outcome` record's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The body ran and succeeded.
    Ok,
    /// The body ran and failed.
    Error,
    /// The final verdict was `DENY` or `DEFER`; the body did not run.
    Blocked,
    /// A report-only tool (`check-authorization`): the verdict was reported, nothing ran.
    Reported,
    /// The client cancelled the call before its final verdict; nothing ran.
    Cancelled,
    /// The arguments could not be read; nothing was checked or run.
    InvalidArguments,
    /// The verdict was `DEFER` and the human was asked over MRTR: the call ended with an
    /// `input_required` result, and the answer comes in a retry, which is a call of its own.
    InputRequired,
    /// An MRTR retry's `requestState` was refused; nothing was checked or run.
    StateRefused,
}

/// A `recovery` record: the torn last line a crash left, kept where it is and named here.
#[derive(Debug, Serialize)]
pub struct RecoveryRecord {
    /// Where the torn line starts in the file, in bytes from its start.
    pub torn_offset: u64,
    /// Its length in bytes; the server ended it with a newline before this record.
    pub torn_length: u64,
    /// SHA-256 (hex) of its bytes, so they cannot be changed unseen either.
    pub torn_sha256: String,
}

/// A `policy_reload` record: the Cedar policy files were read again (SIGHUP).
#[derive(Debug, Serialize)]
pub struct PolicyReloadRecord {
    /// Whether the new policy is in force; when `false`, the old one still is.
    pub loaded: bool,
    /// The enforcing policy set's `policy_version` before the reload.
    pub previous_policy_version: String,
    /// The `policy_version` in force after the reload (the old one when it failed).
    pub policy_version: String,
    /// The shadow set's `policy_version` after a reload that loaded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_policy_version: Option<String>,
    /// Why the reload failed: Cedar's diagnostics, one per line (file:line:column: message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An `unfinished` record: the calls that, when the server started, had a `decision` record
/// and no `outcome` record after it (nor an earlier `unfinished` record naming them).
#[derive(Debug, Serialize)]
pub struct UnfinishedRecord {
    /// Their `call_id`s, in the order of their first decision.
    pub call_ids: Vec<String>,
}

/// The most characters of a goal a `decision` record holds: 1,024.
///
/// A goal is the agent's text (a topic, a goal of `check-authorization`), as long as a message
/// allows (4 MiB); stored whole, 40 calls in flight added 156 MiB to the log and held each goal
/// several times over in the writer's batch. The policy decision point still gets the whole goal;
/// the record keeps a prefix a human can read and the digest and length that identify the rest.
pub const GOAL_PREFIX_CHARS: usize = 1024;

/// `goal` as a `decision` record stores it: the goal itself when it has at most
/// [`GOAL_PREFIX_CHARS`] characters, else its first [`GOAL_PREFIX_CHARS`] characters with the
/// whole goal's length in bytes and SHA-256 (hex).
pub fn bounded_goal(goal: &str) -> (&str, Option<(usize, String)>) {
    match goal.char_indices().nth(GOAL_PREFIX_CHARS) {
        None => (goal, None),
        Some((cut, _)) => (
            &goal[..cut],
            Some((goal.len(), super::chain::sha256_hex(goal.as_bytes()))),
        ),
    }
}

/// `duration` in milliseconds with microsecond precision, as records write durations.
pub fn millis(duration: std::time::Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}
