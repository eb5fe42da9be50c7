//! The one policy enforcement point: no tool body runs without an `ALLOW` for its intent.
//!
//! Every tool call goes through [`Guard::enforce`] (or [`Guard::report`] for report-only
//! tools): read the arguments → replace the agent's claims with what the server vouches for
//! (`claims.rs`) → build the execution intent → ask the policy decision point → on `DEFER`, ask
//! the human through elicitation and, on approval, ask the policy once more (`approval.rs`) → on
//! `ALLOW` run the tool body, otherwise return the blocked result without running it. With an
//! audit log (`audit.rs`), every verdict is recorded, durably, before the next step, and a
//! verdict that cannot be recorded is a `DENY`.
//!
//! The guarantee is structural, not a convention. A tool body is [`GuardedTool::run`], which
//! needs a [`Permit`]; a `Permit` has a private field, so only this module can make one, and it
//! makes one in a single place: right after the verdict was `ALLOW`. Code elsewhere that tries to
//! run a tool body without the guard does not compile.

mod tool;

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{CallToolResult, JsonObject};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};

use crate::approval::{self, ApprovalReport, Approvals};
use crate::audit::record::Status;
use crate::audit::{self, AuditLog, CallTrail};
use crate::claims::{ApprovalStatus, Operator, Provenance};
use crate::escape::escaped;
use crate::ledger::AttemptLedger;
use crate::policy::wire::{Intent, PolicyResponse, Verdict};
use crate::policy::{Mode, PolicyClient};
use crate::render::{self, Checked};
use crate::transport::{self, DEFAULT_MAX_CALLS_IN_FLIGHT};

pub use crate::render::ToolOutput;
pub use tool::{GuardedTool, ToolIntent};

/// Proof that the policy decision point answered `ALLOW` for this call of tool `T`. Only the
/// guard makes one, and a permit for one tool cannot run another tool's body:
///
/// ```compile_fail,E0308
/// # use stage0_guard::guard::{GuardedTool, Permit};
/// /// Runs `other`'s body with a permit issued for a call of `T`.
/// async fn run_with_a_borrowed_permit<T: GuardedTool, U: GuardedTool>(permit: Permit<T>, other: U) {
///     let _ = other.run(permit).await;
/// }
/// ```
///
/// Only the matching tool's body takes it:
///
/// ```
/// # use stage0_guard::guard::{GuardedTool, Permit};
/// async fn run_with_its_own_permit<T: GuardedTool>(permit: Permit<T>, call: T) {
///     let _ = call.run(permit).await;
/// }
/// ```
#[derive(Debug)]
pub struct Permit<T> {
    call: PhantomData<fn() -> T>,
}

/// The policy enforcement point shared by every tool of the server.
#[derive(Debug)]
pub struct Guard {
    policy: PolicyClient,
    operator: Operator,
    approvals: Approvals,
    ledger: Arc<AttemptLedger>,
    audit: Option<AuditLog>,
    /// How many requests the guarded stdio transport takes at once.
    max_calls_in_flight: usize,
}

impl Guard {
    /// A guard that asks `policy` before every call, vouches for claims with what `operator`
    /// configured, and asks a human about a `DEFER` as `approvals` says. It keeps no audit log
    /// until [`with_audit`](Guard::with_audit), and is served
    /// [`DEFAULT_MAX_CALLS_IN_FLIGHT`] requests at once until
    /// [`with_max_calls_in_flight`](Guard::with_max_calls_in_flight).
    pub fn new(policy: PolicyClient, operator: Operator, approvals: Approvals) -> Self {
        Guard {
            policy,
            operator,
            approvals,
            ledger: Arc::new(AttemptLedger::default()),
            audit: None,
            max_calls_in_flight: DEFAULT_MAX_CALLS_IN_FLIGHT,
        }
    }

    /// The same guard, served at most `limit` requests at once (at least one) by
    /// [`GuardedServer::serve_stdio`](crate::GuardedServer::serve_stdio): its transport refuses
    /// one more at once, never queues it ([`LifecycleGate`](transport::LifecycleGate)).
    pub fn with_max_calls_in_flight(self, limit: usize) -> Self {
        Guard {
            max_calls_in_flight: limit.max(1),
            ..self
        }
    }

    /// How many requests at once the stdio transport serving this guard takes
    /// (`STAGE0_MAX_CALLS_IN_FLIGHT`).
    pub fn max_calls_in_flight(&self) -> usize {
        self.max_calls_in_flight
    }

    /// The same guard, recording every call in `audit` and counting retries in the attempt
    /// ledger rebuilt from it ([`AuditLog::ledger`]), so a restart does not reset a loop count.
    pub fn with_audit(self, audit: AuditLog) -> Self {
        Guard {
            ledger: audit.ledger(),
            audit: Some(audit),
            ..self
        }
    }

    /// The audit log this guard records in, if any.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// Which policy decision point this guard asks.
    pub fn mode(&self) -> Mode {
        self.policy.mode()
    }

    /// Checks a call of tool `T` with `arguments` and runs its body only on `ALLOW`.
    ///
    /// `request` is the MCP request this call arrived in (`None` when there is none, as in unit
    /// tests). On `DEFER`, the guard asks the human behind its peer through elicitation and, on
    /// approval, checks once more with the approval in the context. If the client cancels the
    /// request (`notifications/cancelled`) or the session ends before the final verdict, the
    /// check is dropped where it is and nothing runs; a body that has started runs to its end.
    /// With an audit log, each verdict's `decision` record is durable before anything else
    /// happens, and the call's `outcome` record before the result is returned.
    ///
    /// Never fails: invalid arguments, `DENY`, `DEFER`, a cancelled call and a failing body are
    /// all `isError` results (see `report.rs`); only `ALLOW` and a successful body is a success.
    pub async fn enforce<T: GuardedTool>(
        &self,
        arguments: JsonObject,
        request: Option<&RequestContext<RoleServer>>,
    ) -> CallToolResult {
        let mut trail = CallTrail::new(self.audit.as_ref(), T::NAME, &arguments);
        let (call, mut provenance, mut intent) = match self.prepare::<T>(arguments, &trail).await {
            Ok(prepared) => prepared,
            Err(invalid) => return invalid,
        };
        let peer = request.map(|request| &request.peer);
        let decision =
            self.decide_and_review(&mut trail, T::NAME, &mut intent, &mut provenance, peer);
        // A cancelled request (`notifications/cancelled`, or the session's end) is only marked,
        // and the handler runs on, so the guard itself stops waiting: a verdict that arrives after
        // the cancellation runs nothing.
        let decided = match request {
            Some(request) => tokio::select! {
                biased;
                () = transport::cancelled(request) => None,
                decided = decision => Some(decided),
            },
            None => Some(decision.await),
        };
        let Some((policy, approval)) = decided else {
            trail.outcome(None, Status::Cancelled, None, None).await;
            return render::cancelled(T::NAME);
        };
        let checked = Checked {
            tool: T::NAME,
            mode: self.mode(),
            policy,
            provenance,
            approval,
        };
        let request_id = Some(checked.policy.request_id.as_str());
        if checked.policy.verdict != Verdict::Allow {
            trail.outcome(request_id, Status::Blocked, None, None).await;
            return render::blocked(checked);
        }
        let started = Instant::now();
        let permit = Permit { call: PhantomData };
        let outcome = call.run(permit).await.map_err(|error| error.to_string());
        let (status, error) = match &outcome {
            Ok(_) => (Status::Ok, None),
            Err(error) => (Status::Error, Some(error.as_str())),
        };
        trail
            .outcome(request_id, status, error, Some(started.elapsed()))
            .await;
        render::executed(checked, outcome)
    }

    /// Checks a call of report-only tool `T` and reports the verdict; nothing runs and no human
    /// is asked, since there is nothing to approve.
    pub async fn report<T: ToolIntent>(&self, arguments: JsonObject) -> CallToolResult {
        let mut trail = CallTrail::new(self.audit.as_ref(), T::NAME, &arguments);
        let (_, provenance, intent) = match self.prepare::<T>(arguments, &trail).await {
            Ok(prepared) => prepared,
            Err(invalid) => return invalid,
        };
        let policy = self.decide(&mut trail, T::NAME, &intent, &provenance).await;
        trail
            .outcome(Some(&policy.request_id), Status::Reported, None, None)
            .await;
        let checked = Checked {
            tool: T::NAME,
            mode: self.mode(),
            policy,
            provenance,
            approval: None,
        };
        render::reported(checked, &intent)
    }

    /// Asks the policy decision point and, on `DEFER`, the human behind `peer`; on approval, asks
    /// the policy once more with the approval in `intent`. Returns the final verdict and, when
    /// the call was deferred, how asking ended.
    async fn decide_and_review(
        &self,
        trail: &mut CallTrail<'_>,
        tool: &'static str,
        intent: &mut Intent,
        provenance: &mut Provenance,
        peer: Option<&Peer<RoleServer>>,
    ) -> (PolicyResponse, Option<ApprovalReport>) {
        let policy = self.decide(trail, tool, intent, provenance).await;
        if policy.verdict != Verdict::Defer {
            return (policy, None);
        }
        let asked =
            approval::ask(peer, self.approvals, &self.operator, tool, intent, &policy).await;
        tracing::info!(
            tool,
            outcome = ?asked.outcome,
            deferred_request_id = %escaped(&asked.deferred_request_id),
            approved_by = asked.approval.as_ref().map(|h| escaped(excerpt(&h.approved_by))).map(tracing::field::display),
            "human review"
        );
        if let Err(why) = trail.approval(&asked).await {
            return (audit::fail_closed(policy, &why), Some(asked));
        }
        let Some(human) = &asked.approval else {
            return (policy, Some(asked));
        };
        human.annotate(&mut intent.context);
        if let Some(status) = &mut provenance.approval_status {
            status.effective = ApprovalStatus::Approved;
        }
        (
            self.decide(trail, tool, intent, provenance).await,
            Some(asked),
        )
    }

    /// Reads the arguments, replaces the claims with vouched values and builds the intent. Calls
    /// whose arguments cannot be read end here, with their `outcome` record.
    async fn prepare<T: ToolIntent>(
        &self,
        arguments: JsonObject,
        trail: &CallTrail<'_>,
    ) -> Result<(T, Provenance, Intent), CallToolResult> {
        let mut call = match read_arguments::<T>(arguments) {
            Ok(call) => call,
            Err(problem) => {
                trail
                    .outcome(None, Status::InvalidArguments, Some(&problem), None)
                    .await;
                return Err(render::invalid_arguments(T::NAME, &problem));
            }
        };
        let provenance = self.operator.vouch(call.claims(), &self.ledger);
        let mut intent = call.intent();
        provenance.annotate(&mut intent.context);
        Ok((call, provenance, intent))
    }

    /// Asks the policy decision point about `intent` and records the verdict; a verdict whose
    /// `decision` record cannot be written becomes a `DENY` (`AUDIT_UNAVAILABLE`).
    async fn decide(
        &self,
        trail: &mut CallTrail<'_>,
        tool: &str,
        intent: &Intent,
        provenance: &Provenance,
    ) -> PolicyResponse {
        let started = Instant::now();
        let policy = self.policy.check(intent).await;
        let latency = started.elapsed();
        tracing::info!(
            tool,
            goal = %escaped(excerpt(&intent.goal)),
            verdict = %policy.verdict,
            decision = %policy.decision,
            request_id = %escaped(excerpt(&policy.request_id)),
            policy_version = %escaped(excerpt(&policy.policy_version)),
            mode = self.mode().as_str(),
            reason = %escaped(excerpt(&policy.reason)),
            "stage0 check"
        );
        match trail
            .decision(intent, provenance, &policy, self.mode(), latency)
            .await
        {
            Ok(()) => policy,
            Err(why) => {
                tracing::error!(
                    tool,
                    request_id = %escaped(excerpt(&policy.request_id)),
                    why = %escaped(&why),
                    "decision record not written: denied"
                );
                audit::fail_closed(policy, &why)
            }
        }
    }
}

/// How many characters of a goal or a reason a log line keeps.
const LOG_EXCERPT_CHARS: usize = 200;

/// `text` cut to [`LOG_EXCERPT_CHARS`] characters for a log line, saying how long it was, so a
/// 4 MiB goal (the largest message, `transport::MAX_MESSAGE_BYTES`) or a 1 MiB reason from Stage0
/// is not copied to stderr whole. The tool result and the `/check` request keep the whole text.
fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(LOG_EXCERPT_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes in all)", &text[..cut], text.len())),
    }
}

/// Reads `T` from the call's arguments; the error names the offending field.
fn read_arguments<T: ToolIntent>(arguments: JsonObject) -> Result<T, String> {
    serde_path_to_error::deserialize(serde_json::Value::Object(arguments)).map_err(|error| {
        let path = error.path().to_string();
        if path == "." {
            error.inner().to_string()
        } else {
            format!("`{path}`: {}", error.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::path::PathBuf;

    use serde::Deserialize;
    use serde_json::{Map, json};

    use super::*;

    thread_local! {
        /// How often a [`Probe`] body ran. `#[tokio::test]` runs each test on its own thread
        /// (a current-thread runtime), so every test has its own count.
        static RUNS: Cell<usize> = const { Cell::new(0) };
        /// An audit log the [`Probe`] body reads when it runs, and the last line it found there.
        static AUDIT_FILE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
        static LAST_LINE_SEEN: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// The error of a [`Probe`] told to fail.
    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct ProbeFailed;

    /// A tool whose intent and outcome the test chooses.
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Probe {
        side_effects: Vec<String>,
        fail: bool,
    }

    impl ToolIntent for Probe {
        const NAME: &'static str = "probe";
        const TITLE: &'static str = "A test tool";
        const DESCRIPTION: &'static str = "Exists only in tests.";

        fn intent(&self) -> Intent {
            Intent {
                goal: "Count how often the probe body runs".to_owned(),
                success_criteria: vec!["Counted".to_owned()],
                constraints: Vec::new(),
                tools: Vec::new(),
                side_effects: self.side_effects.clone(),
                context: Map::new(),
            }
        }
    }

    impl GuardedTool for Probe {
        type Error = ProbeFailed;

        async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Self::Error> {
            RUNS.set(RUNS.get() + 1);
            if let Some(path) = AUDIT_FILE.with_borrow(Clone::clone) {
                let log = std::fs::read_to_string(path).expect("the audit log is readable");
                LAST_LINE_SEEN.set(log.lines().last().map(str::to_owned));
            }
            if self.fail {
                Err(ProbeFailed)
            } else {
                Ok(ToolOutput::text("counted"))
            }
        }
    }

    async fn enforce(arguments: serde_json::Value) -> CallToolResult {
        let serde_json::Value::Object(arguments) = arguments else {
            panic!("arguments are an object");
        };
        Guard::new(
            PolicyClient::Simulator,
            Operator::default(),
            Approvals::default(),
        )
        .enforce::<Probe>(arguments, None)
        .await
    }

    /// A simulator guard that records in a new log at `path`.
    fn audited(path: &std::path::Path) -> (Guard, AuditLog) {
        let (log, _) = AuditLog::open(path, true).expect("the audit log opens");
        let guard = Guard::new(
            PolicyClient::Simulator,
            Operator::default(),
            Approvals::default(),
        )
        .with_audit(log.clone());
        (guard, log)
    }

    fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("the audit log is readable")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON record"))
            .collect()
    }

    fn object(value: serde_json::Value) -> JsonObject {
        match value {
            serde_json::Value::Object(map) => map,
            _ => panic!("arguments are an object"),
        }
    }

    #[tokio::test]
    async fn the_allow_decision_is_in_the_audit_log_before_the_body_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (guard, log) = audited(&path);
        AUDIT_FILE.set(Some(path.clone()));
        let arguments = object(json!({"side_effects": [], "fail": false}));
        let result = guard.enforce::<Probe>(arguments, None).await;
        log.close();
        assert_eq!(RUNS.get(), 1);
        let seen: serde_json::Value =
            serde_json::from_str(&LAST_LINE_SEEN.take().expect("the body saw a record")).unwrap();
        assert_eq!(seen["kind"], "decision");
        assert_eq!(seen["verdict"], "ALLOW");
        let request_id = &result.structured_content.unwrap()["request_id"];
        assert_eq!(&seen["request_id"], request_id);
        let records = records(&path);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1]["kind"], "outcome");
        assert_eq!(records[1]["status"], "ok");
        assert_eq!(&records[1]["request_id"], request_id);
        assert_eq!(records[1]["call_id"], seen["call_id"]);
    }

    #[tokio::test]
    async fn a_call_whose_decision_cannot_be_recorded_is_denied_and_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, true).unwrap();
        let broken = audit::AuditError::Broken {
            path: path.clone(),
            offset: 0,
            why: "test".to_owned(),
        };
        let guard = Guard::new(
            PolicyClient::Simulator,
            Operator::default(),
            Approvals::default(),
        )
        .with_audit(AuditLog::unavailable(&path, &broken));
        let result = guard
            .enforce::<Probe>(object(json!({"side_effects": [], "fail": false})), None)
            .await;
        log.close();
        assert_eq!(RUNS.get(), 0);
        assert_eq!(result.is_error, Some(true));
        let report = result.structured_content.unwrap();
        assert_eq!(report["verdict"], "DENY");
        assert_eq!(report["decision"], "ERROR");
        assert_eq!(report["issues"][0]["code"], audit::AUDIT_UNAVAILABLE);
        assert_eq!(report["executed"], false);
    }

    #[tokio::test]
    async fn every_ending_of_a_call_has_its_outcome_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (guard, log) = audited(&path);
        for arguments in [
            json!({"side_effects": ["deploy"], "fail": false}),
            json!({"side_effects": [], "fail": true}),
            json!({"side_effects": [], "fail": "yes"}),
        ] {
            guard.enforce::<Probe>(object(arguments), None).await;
        }
        guard
            .report::<Probe>(object(json!({"side_effects": [], "fail": false})))
            .await;
        log.close();
        let kinds: Vec<String> = records(&path)
            .iter()
            .map(|r| format!("{} {}", r["kind"], r["status"]).replace('"', ""))
            .collect();
        assert_eq!(
            kinds,
            [
                "decision null",
                "outcome blocked",
                "decision null",
                "outcome error",
                "outcome invalid_arguments",
                "decision null",
                "outcome reported",
            ]
        );
    }

    fn text(result: &CallToolResult) -> &str {
        &result.content[0].as_text().expect("text content").text
    }

    #[tokio::test]
    async fn an_allow_runs_the_body_exactly_once() {
        let result = enforce(json!({"side_effects": [], "fail": false})).await;
        assert_eq!(RUNS.get(), 1);
        assert_eq!(result.is_error, Some(false));
        assert_eq!(result.structured_content.unwrap()["output"], "counted");
    }

    #[tokio::test]
    async fn a_deny_never_runs_the_body() {
        let result = enforce(json!({"side_effects": ["deploy"], "fail": false})).await;
        assert_eq!(RUNS.get(), 0);
        assert_eq!(result.is_error, Some(true));
        assert_eq!(result.structured_content.unwrap()["executed"], false);
    }

    #[tokio::test]
    async fn a_failing_body_after_allow_is_an_error_result_that_says_why() {
        let result = enforce(json!({"side_effects": [], "fail": true})).await;
        assert_eq!(RUNS.get(), 1);
        assert_eq!(result.is_error, Some(true));
        assert!(text(&result).starts_with("❌ ERROR during execution\n\nError: disk full"));
        let report = result.structured_content.unwrap();
        assert_eq!(report["executed"], true);
        assert_eq!(report["error"], "disk full");
        assert!(report.get("output").is_none());
    }

    #[tokio::test]
    async fn unreadable_arguments_are_an_error_naming_the_field_and_nothing_is_checked() {
        let result = enforce(json!({"side_effects": [], "fail": "yes"})).await;
        assert_eq!(RUNS.get(), 0);
        assert_eq!(result.is_error, Some(true));
        assert!(result.structured_content.is_none());
        let text = text(&result);
        assert!(
            text.starts_with("invalid arguments for `probe`: `fail`: "),
            "{text}"
        );
    }

    #[test]
    fn a_log_excerpt_keeps_short_text_and_cuts_long_text_on_a_character_boundary() {
        assert_eq!(excerpt("Research Rust"), "Research Rust");
        let exact = "é".repeat(LOG_EXCERPT_CHARS);
        assert_eq!(excerpt(&exact), exact);
        let long = "é".repeat(LOG_EXCERPT_CHARS + 1);
        let cut = excerpt(&long);
        assert_eq!(
            cut,
            format!(
                "{}… ({} bytes in all)",
                "é".repeat(LOG_EXCERPT_CHARS),
                long.len()
            )
        );
    }
}
