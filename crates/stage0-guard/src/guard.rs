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
//!
//! The verdict is all the guard enforces. The `guardrails` (and `guardrail_checks`) a policy
//! decision point attaches to an `ALLOW` are passed on to the client in the result and not
//! enforced: the body runs as it would without them, and its [`Permit`] carries none of them. They
//! are advice, not obligations (`docs/contract.md` §9).

mod tool;

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rmcp::model::{
    CallToolResponse, CallToolResult, ElicitRequest, InputRequest, InputRequests,
    InputRequiredResult, InputResponses, JsonObject, ProtocolVersion,
};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};

use crate::approval::state::{self, ApprovalStates, CallBinding, SealError, StateError, StateKey};
use crate::approval::{
    self, ApprovalOutcome, ApprovalPath, ApprovalReport, Approvals, HumanApproval,
};
use crate::audit::record::{Event, PolicyReloadRecord, Status};
use crate::audit::{self, AuditLog, CallTrail, Guardrails};
use crate::claims::{ApprovalStatus, Operator, Provenance};
use crate::escape::escaped;
use crate::json::DuplicateKey;
use crate::ledger::AttemptLedger;
use crate::policy::cedar::{self, RecentCallCounts};
use crate::policy::local::{PolicySets, Reload};
use crate::policy::wire::{Decision, Intent, Issue, PolicyResponse, Verdict};
use crate::policy::{LocalQuestion, Mode, PolicyClient};
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
    guardrails: Vec<String>,
    approval: Option<HumanApproval>,
}

impl<T> Permit<T> {
    /// The guardrails the `ALLOW` carried (`guardrails` of the `/check` answer), which the body
    /// must honour; those the tool does not declare in [`GuardedTool::GUARDRAILS`] were let
    /// through only with `STAGE0_UNENFORCED_GUARDRAILS=warn`.
    pub fn guardrails(&self) -> &[String] {
        &self.guardrails
    }

    /// The human approval the `ALLOW` was given with, when the call was deferred and approved:
    /// the body sees the approved status the check saw.
    pub fn approval(&self) -> Option<&HumanApproval> {
        self.approval.as_ref()
    }
}

/// What the guard does with an `ALLOW` that carries a guardrail the tool's body does not enforce
/// (`STAGE0_UNENFORCED_GUARDRAILS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnenforcedGuardrails {
    /// `warn` (the default): run the body, log a warning, and name the guardrail in the outcome
    /// record (`guardrails_unenforced`).
    #[default]
    Warn,
    /// `deny`: do not run the body; the call ends `DENY` / `ERROR` with issue
    /// [`UNENFORCED_GUARDRAIL`].
    Deny,
}

/// The issue code of a `DENY` for an `ALLOW` whose guardrail no code enforces
/// (`STAGE0_UNENFORCED_GUARDRAILS=deny`).
pub const UNENFORCED_GUARDRAIL: &str = "UNENFORCED_GUARDRAIL";

/// The policy enforcement point shared by every tool of the server.
#[derive(Debug)]
pub struct Guard {
    policy: PolicyClient,
    operator: Operator,
    approvals: Approvals,
    ledger: Arc<AttemptLedger>,
    audit: Option<AuditLog>,
    states: ApprovalStates,
    unenforced: UnenforcedGuardrails,
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
            states: ApprovalStates::new(StateKey::random(), approvals.timeout()),
            unenforced: UnenforcedGuardrails::default(),
        }
    }

    /// The same guard, handling an `ALLOW` with a guardrail the tool does not enforce as
    /// `unenforced` says.
    pub fn with_unenforced_guardrails(self, unenforced: UnenforcedGuardrails) -> Self {
        Guard { unenforced, ..self }
    }

    /// The same guard, sealing MRTR approval states with `key` instead of the random key of this
    /// process (`STAGE0_REQUEST_STATE_KEY`), so that servers sharing the key accept each other's
    /// states. Spent nonces are kept. A state stays single-use across restarts and servers only
    /// with [`with_audit`](Guard::with_audit) on one audit log shared by every holder of the key:
    /// [`Config::from_lookup`](crate::Config::from_lookup) refuses the key without a log, and
    /// [`Config::guard`](crate::Config::guard) warns that the log must be shared.
    pub fn with_state_key(self, key: StateKey) -> Self {
        let spent = self.states.spent_nonces();
        Guard {
            states: ApprovalStates::new(key, self.approvals.timeout()).sharing(spent),
            ..self
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
    /// ledger rebuilt from it ([`AuditLog::ledger`]), so a restart does not reset a loop count;
    /// the MRTR approval states it spent are remembered from it too ([`AuditLog::spent_nonces`]),
    /// so a restart does not let one be answered twice.
    pub fn with_audit(self, audit: AuditLog) -> Self {
        Guard {
            ledger: audit.ledger(),
            states: self.states.sharing(audit.spent_nonces()),
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

    /// Who a call in `request` acts for: the principal its bearer token vouched for (the HTTP
    /// mode puts it in the request's extensions, `http_server.rs`), else the operator configured in the
    /// environment (stdio, and HTTP on loopback without OAuth).
    fn operator<'a>(&'a self, request: Option<&'a RequestContext<RoleServer>>) -> &'a Operator {
        request
            .and_then(|request| request.extensions.get::<http::request::Parts>())
            .and_then(|parts| parts.extensions.get::<Operator>())
            .unwrap_or(&self.operator)
    }

    /// Reads the local Cedar policy again (on SIGHUP): a valid policy is in force for every call
    /// prepared from now on, an invalid one leaves the old one in force and its diagnostics in the
    /// log. Either way the reload is recorded in the audit log (`policy_reload`). Calls in flight
    /// finish on the policy they started with. `None` when this guard has no local policy.
    pub async fn reload_policy(&self) -> Option<Reload> {
        let reload = self.policy.local()?.reload();
        let record = match &reload.result {
            Ok((version, shadow)) => {
                tracing::info!(
                    previous_policy_version = %reload.previous_version,
                    policy_version = %version,
                    shadow_policy_version = ?shadow,
                    "Cedar policy reloaded"
                );
                PolicyReloadRecord {
                    loaded: true,
                    previous_policy_version: reload.previous_version.clone(),
                    policy_version: version.clone(),
                    shadow_policy_version: shadow.clone(),
                    error: None,
                }
            }
            Err(error) => {
                tracing::error!(
                    policy_version = %reload.previous_version,
                    error = %escaped(error),
                    "Cedar policy not reloaded: the old one stays in force"
                );
                PolicyReloadRecord {
                    loaded: false,
                    previous_policy_version: reload.previous_version.clone(),
                    policy_version: reload.previous_version.clone(),
                    shadow_policy_version: None,
                    error: Some(error.to_string()),
                }
            }
        };
        if let Some(audit) = &self.audit
            && let Err(why) = audit.append(&Event::PolicyReload(record)).await
        {
            tracing::error!(why = %escaped(&why), "the policy reload was not recorded");
        }
        Some(reload)
    }

    /// Checks a call of tool `T` with `arguments` and runs its body only on `ALLOW`.
    ///
    /// `request` is the MCP request this call arrived in (`None` when there is none, as in unit
    /// tests). On `DEFER`, the guard asks a human (`docs/contract.md` §8): at protocol 2026-07-28
    /// or later, to a client that declared form elicitation in the request's `_meta`, the answer
    /// is an `input_required` result carrying the question and a sealed `requestState`, and the
    /// client's retry (with `inputResponses` and that state) is checked by
    /// [`resume`](Guard::enforce) below; at earlier revisions, through `elicitation/create`
    /// within the call. On approval, the guard checks once more with the approval in the
    /// context. If the client cancels the request (`notifications/cancelled`) or the session
    /// ends before the final verdict, the check is dropped where it is and nothing runs; a body
    /// that has started runs to its end. With an audit log, each verdict's `decision` record is
    /// durable before anything else happens; the call's `outcome` record is not waited for: it
    /// rides on the log's next batch (`docs/contract.md` §10).
    ///
    /// Never fails: invalid arguments, `DENY`, `DEFER`, a refused approval state, a cancelled call
    /// and a failing body are all `isError` results (see [`render`] and `docs/contract.md` §6);
    /// only `ALLOW` and a successful body is a success.
    pub async fn enforce<T: GuardedTool>(
        &self,
        arguments: JsonObject,
        request: Option<Request<'_>>,
    ) -> CallToolResponse {
        let mut trail = CallTrail::new(self.audit.as_ref(), T::NAME, &arguments);
        let context = request.as_ref().map(|request| request.context);
        if let Some(Request {
            request_state: Some(state),
            input_responses,
            ..
        }) = request
        {
            let retry = Retry {
                state: &state,
                input_responses,
            };
            return self
                .resume::<T>(arguments, retry, context, trail)
                .await
                .into();
        }
        // A call that may go to a human keeps its arguments, for the digest and the excerpts the
        // prompt shows (and, over MRTR, seals); they are worked out only if it is deferred.
        let kept = (self.approvals != Approvals::Off).then(|| arguments.clone());
        let mrtr = kept.is_some() && context.is_some_and(asks_through_mrtr);
        let repeated = repeated_key(context);
        let operator = self.operator(context);
        let prepared = self
            .prepare::<T>(operator, arguments, repeated, &mut trail, Counting::Count)
            .await;
        let (call, mut provenance, mut intent, local) = match prepared {
            Ok(prepared) => prepared,
            Err(invalid) => return invalid.into(),
        };
        let review = Review {
            operator,
            peer: context.map(|context| &context.peer),
            arguments: kept.as_ref(),
            mrtr,
        };
        let decision = self.decide_and_review(
            &mut trail,
            T::NAME,
            (&mut intent, &mut provenance, local.as_ref()),
            review,
        );
        let Some(reviewed) = until_cancelled(context, decision).await else {
            trail.outcome(None, Status::Cancelled, None, None).await;
            return render::cancelled(T::NAME).into();
        };
        let (policy, approval) = match reviewed {
            Reviewed::Final(policy, approval) => (policy, approval),
            Reviewed::Ask(policy, input_required) => {
                trail
                    .outcome(Some(&policy.request_id), Status::InputRequired, None, None)
                    .await;
                return CallToolResponse::InputRequired(input_required);
            }
        };
        let checked = Checked {
            tool: T::NAME,
            mode: self.mode(),
            policy,
            provenance,
            approval,
        };
        self.conclude(&mut trail, call, checked).await.into()
    }

    /// Checks an MRTR retry of a deferred call of `T`: opens the sealed `requestState` (it must
    /// verify, be unexpired, name this tool, these arguments and this principal, and not have been
    /// answered before), spends its nonce and records the human's answer. An approval makes the
    /// guard check the call once more, with the approval in the context, and run the body only on
    /// `ALLOW`. Any other answer (`approve: false`, declined, cancelled, unusable, none at all, or
    /// any answer while approvals are off) ends the call with the `DEFER` that asked, as the
    /// elicitation path does: no second check, whose verdict might have changed since, so a "No"
    /// is final and echoing a state buys no fresh check. The retry is the deferred call's
    /// continuation, so it does not count another attempt in the ledger.
    async fn resume<T: GuardedTool>(
        &self,
        arguments: JsonObject,
        retry: Retry<'_>,
        context: Option<&RequestContext<RoleServer>>,
        mut trail: CallTrail<'_>,
    ) -> CallToolResult {
        let arguments_sha256 = state::arguments_sha256(&arguments);
        let repeated = repeated_key(context);
        let operator = self.operator(context);
        let prepared = self
            .prepare::<T>(
                operator,
                arguments,
                repeated,
                &mut trail,
                Counting::Continue,
            )
            .await;
        let (call, mut provenance, mut intent, local) = match prepared {
            Ok(prepared) => prepared,
            Err(invalid) => return invalid,
        };
        let principal = operator.principal();
        let binding = CallBinding {
            tool: T::NAME,
            arguments_sha256: &arguments_sha256,
            principal: &principal,
        };
        let opened = match self.states.open(retry.state, binding) {
            Ok(opened) => opened,
            Err(refused) => return self.refuse_state::<T>(&trail, &refused).await,
        };
        // Any answer spends the state: each question is answered once.
        if let Err(refused) = self.states.spend(&opened) {
            return self.refuse_state::<T>(&trail, &refused).await;
        }
        let asked = match self.approvals {
            // A state sealed by a server that asks (one that shares the key) is no approval here.
            Approvals::Off => {
                ApprovalReport::new(ApprovalOutcome::Disabled, opened.deferred_request_id())
                    .via(ApprovalPath::Mrtr)
            }
            Approvals::Ask { .. } => approval::read_retry(
                retry.input_responses,
                opened.deferred_request_id(),
                operator.actor_id.as_deref(),
            ),
        };
        log_review(T::NAME, &asked);
        let spent = (opened.nonce_sha256(), opened.expires_at());
        if let Err(why) = trail.approval(&asked, Some(spent)).await {
            let denied = PolicyResponse::fail_closed(
                "the approval record could not be written".to_owned(),
                opened.deferred_request_id().to_owned(),
            );
            let checked = Checked {
                tool: T::NAME,
                mode: self.mode(),
                policy: audit::fail_closed(denied, &why),
                provenance,
                approval: Some(asked),
            };
            trail
                .outcome(
                    Some(&checked.policy.request_id),
                    Status::Blocked,
                    None,
                    None,
                )
                .await;
            return render::blocked(checked);
        }
        let Some(human) = &asked.approval else {
            let checked = Checked {
                tool: T::NAME,
                mode: self.mode(),
                policy: recorded_defer(&opened),
                provenance,
                approval: Some(asked),
            };
            return self.conclude(&mut trail, call, checked).await;
        };
        human.annotate(&mut intent.context);
        if let Some(status) = &mut provenance.approval_status {
            status.effective = ApprovalStatus::Approved;
        }
        let decision = self.decide(
            &mut trail,
            T::NAME,
            &intent,
            &provenance,
            (operator, local.as_ref()),
        );
        let Some(policy) = until_cancelled(context, decision).await else {
            trail.outcome(None, Status::Cancelled, None, None).await;
            return render::cancelled(T::NAME);
        };
        let checked = Checked {
            tool: T::NAME,
            mode: self.mode(),
            policy,
            provenance,
            approval: Some(asked),
        };
        self.conclude(&mut trail, call, checked).await
    }

    /// Ends a call whose final verdict is in `checked`: runs the body on `ALLOW`, records the
    /// outcome, and renders the result.
    async fn conclude<T: GuardedTool>(
        &self,
        trail: &mut CallTrail<'_>,
        call: T,
        mut checked: Checked,
    ) -> CallToolResult {
        if checked.policy.verdict == Verdict::Allow {
            let (enforced, unenforced): (Vec<String>, Vec<String>) = checked
                .policy
                .guardrails
                .iter()
                .cloned()
                .partition(|guardrail| T::GUARDRAILS.contains(&guardrail.as_str()));
            if !unenforced.is_empty() {
                tracing::warn!(
                    tool = T::NAME,
                    request_id = %escaped(&checked.policy.request_id),
                    unenforced = %escaped(&unenforced.join(",")),
                    action = ?self.unenforced,
                    "the ALLOW carries guardrails this tool does not enforce"
                );
                if self.unenforced == UnenforcedGuardrails::Deny {
                    checked.policy = unenforced_denial(checked.policy, T::NAME, &unenforced);
                }
            }
            trail.guardrails(Guardrails {
                enforced,
                unenforced,
            });
        }
        let request_id = Some(checked.policy.request_id.as_str());
        if checked.policy.verdict != Verdict::Allow {
            trail.outcome(request_id, Status::Blocked, None, None).await;
            return render::blocked(checked);
        }
        let started = Instant::now();
        let permit = Permit {
            call: PhantomData,
            guardrails: checked.policy.guardrails.clone(),
            approval: checked
                .approval
                .as_ref()
                .and_then(|asked| asked.approval.clone()),
        };
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

    /// The result of an MRTR retry whose `requestState` was refused: nothing checked, nothing run.
    async fn refuse_state<T: ToolIntent>(
        &self,
        trail: &CallTrail<'_>,
        refused: &StateError,
    ) -> CallToolResult {
        let why = refused.to_string();
        // The client is told only what the error says; the detail of a state that failed
        // verification is for the server's log.
        tracing::warn!(tool = T::NAME, refused = ?refused, "approval state refused");
        trail
            .outcome(None, Status::StateRefused, Some(&why), None)
            .await;
        render::state_refused(T::NAME, &why)
    }

    /// Checks a call of report-only tool `T` and reports the verdict; nothing runs and no human
    /// is asked, since there is nothing to approve. `request` is as for
    /// [`enforce`](Guard::enforce).
    pub async fn report<T: ToolIntent>(
        &self,
        arguments: JsonObject,
        request: Option<&RequestContext<RoleServer>>,
    ) -> CallToolResult {
        let mut trail = CallTrail::new(self.audit.as_ref(), T::NAME, &arguments);
        let repeated = repeated_key(request);
        let operator = self.operator(request);
        let prepared = self
            .prepare::<T>(operator, arguments, repeated, &mut trail, Counting::Count)
            .await;
        let (_, provenance, intent, local) = match prepared {
            Ok(prepared) => prepared,
            Err(invalid) => return invalid,
        };
        let policy = self
            .decide(
                &mut trail,
                T::NAME,
                &intent,
                &provenance,
                (operator, local.as_ref()),
            )
            .await;
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

    /// Asks the policy decision point and, on `DEFER`, a human as `review` allows: over MRTR,
    /// the answer is the question to send back ([`Reviewed::Ask`]); through elicitation, the
    /// guard waits for the human and, on approval, asks the policy once more with the approval
    /// in `intent`. Returns the final verdict and, when the call was deferred, how asking ended.
    async fn decide_and_review(
        &self,
        trail: &mut CallTrail<'_>,
        tool: &'static str,
        (intent, provenance, local): (&mut Intent, &mut Provenance, Option<&Local>),
        review: Review<'_>,
    ) -> Reviewed {
        let operator = review.operator;
        let policy = self
            .decide(trail, tool, intent, provenance, (operator, local))
            .await;
        if policy.verdict != Verdict::Defer {
            return Reviewed::Final(policy, None);
        }
        let shown = review.arguments.map(approval::CallArguments::new);
        let prompt = shown.as_ref().map(|arguments| approval::Prompt {
            tool,
            intent,
            deferred: &policy,
            arguments,
            attempts: provenance.retry_count.map(|retry| retry.effective),
            call_id: trail.call_id(),
        });
        if let (true, Some(prompt)) = (review.mrtr, &prompt) {
            return match self.ask_through_mrtr(operator, prompt) {
                Ok(input_required) => Reviewed::Ask(policy, input_required),
                Err(error) => {
                    let failed = ApprovalReport::new(ApprovalOutcome::Failed, &policy.request_id)
                        .via(ApprovalPath::Mrtr)
                        .with_detail(error.to_string());
                    Reviewed::Final(policy, Some(failed))
                }
            };
        }
        let asked = match &prompt {
            Some(prompt) => approval::ask(review.peer, self.approvals, operator, prompt).await,
            None => ApprovalReport::new(ApprovalOutcome::Disabled, &policy.request_id),
        };
        log_review(tool, &asked);
        if let Err(why) = trail.approval(&asked, None).await {
            return Reviewed::Final(audit::fail_closed(policy, &why), Some(asked));
        }
        let Some(human) = &asked.approval else {
            return Reviewed::Final(policy, Some(asked));
        };
        // The check after approval is bound to the arguments the human was shown (their SHA-256
        // is in the prompt): on this path the question is asked within the one tool call, whose
        // arguments were read once and cannot change before it ends, so the intent checked again
        // is built from exactly those arguments. (Over MRTR, where the arguments come back in a
        // new request, the sealed state binds their digest: see `resume`.)
        human.annotate(&mut intent.context);
        if let Some(status) = &mut provenance.approval_status {
            status.effective = ApprovalStatus::Approved;
        }
        Reviewed::Final(
            self.decide(trail, tool, intent, provenance, (operator, local))
                .await,
            Some(asked),
        )
    }

    /// The `input_required` result that puts the deferred call of `tool` to a human over MRTR:
    /// the approval form as input request [`approval::INPUT_KEY`], and a `requestState` sealed
    /// for this call (tool, arguments, deferring check, principal), its expiry and a new nonce.
    fn ask_through_mrtr(
        &self,
        operator: &Operator,
        prompt: &approval::Prompt<'_>,
    ) -> Result<InputRequiredResult, SealError> {
        let (tool, deferred) = (prompt.tool, prompt.deferred);
        let principal = operator.principal();
        let binding = CallBinding {
            tool,
            arguments_sha256: &prompt.arguments.sha256,
            principal: &principal,
        };
        let sealed = self.states.seal(
            binding,
            &deferred.request_id,
            &deferred.policy_version,
            &deferred.reason,
            deferred.questions(),
        )?;
        tracing::info!(
            tool,
            deferred_request_id = %deferred.request_id,
            nonce_sha256 = %sealed.nonce_sha256,
            "human review asked through MRTR"
        );
        let question = approval::question(operator, prompt);
        let requests = InputRequests::from([(
            approval::INPUT_KEY.to_owned(),
            InputRequest::Elicitation(ElicitRequest::new(question)),
        )]);
        Ok(InputRequiredResult::new(Some(requests), Some(sealed.state)))
    }

    /// Reads the arguments, replaces the claims with vouched values and builds the intent, and,
    /// for a Cedar policy, what it reads beside the intent ([`Local`]). Calls whose arguments
    /// cannot be read, or repeated a key (`repeated`), end here, with their `outcome` record.
    async fn prepare<T: ToolIntent>(
        &self,
        operator: &Operator,
        arguments: JsonObject,
        repeated: Option<&DuplicateKey>,
        trail: &mut CallTrail<'_>,
        counting: Counting,
    ) -> Result<(T, Provenance, Intent, Option<Local>), CallToolResult> {
        let read = match repeated {
            Some(duplicate) => Err(format!(
                "the arguments repeat the key {duplicate}: a key may appear only once in an object"
            )),
            None => read_arguments::<T>(arguments),
        };
        let mut call = match read {
            Ok(call) => call,
            Err(problem) => {
                trail
                    .outcome(None, Status::InvalidArguments, Some(&problem), None)
                    .await;
                return Err(render::invalid_arguments(T::NAME, &problem));
            }
        };
        let ledger = self.ledger_for(operator, &mut call, counting, trail).await;
        let provenance = match counting {
            Counting::Count => operator.vouch(call.claims(), &ledger),
            Counting::Continue => operator.vouch_again(call.claims(), &ledger),
        };
        let mut intent = call.intent();
        provenance.annotate(&mut intent.context);
        let local = match self.policy.local() {
            None => None,
            Some(policy) => match serde_json::to_value(&call) {
                Ok(serde_json::Value::Object(arguments)) => {
                    let principal = operator.actor_id.as_deref().unwrap_or(cedar::ANONYMOUS);
                    Some(Local {
                        arguments,
                        recent_calls: policy.observe(principal, T::NAME),
                        sets: policy.current(),
                    })
                }
                // The tool's arguments type is not an object once serialised: its `inputSchema`
                // is not one either, so no client could have called it.
                _ => {
                    let problem = "the arguments do not serialise to a JSON object";
                    trail
                        .outcome(None, Status::InvalidArguments, Some(problem), None)
                        .await;
                    return Err(render::invalid_arguments(T::NAME, problem));
                }
            },
        };
        Ok((call, provenance, intent, local))
    }

    /// The attempt ledger `call` is vouched with: this server's own, or, with a shared ledger in
    /// a database, the counts of the call's workflows read from it now. A call that counts an
    /// attempt first waits for its turn at its workflows, and `trail` holds the turn until the
    /// decision is recorded, so the calls of one workflow through this server are counted one
    /// after another. A count that cannot be read is taken as 0: the decision record of a call
    /// that saw fewer attempts than the ledger counts is refused when it is committed
    /// (`audit/database.rs`), so nothing runs on it.
    async fn ledger_for(
        &self,
        operator: &Operator,
        call: &mut impl ToolIntent,
        counting: Counting,
        trail: &mut CallTrail<'_>,
    ) -> Arc<AttemptLedger> {
        let Some(shared) = self.audit.as_ref().and_then(AuditLog::shared_ledger) else {
            return Arc::clone(&self.ledger);
        };
        let keys = operator.retry_keys(&call.claims());
        if keys.is_empty() {
            return Arc::clone(&self.ledger);
        }
        if counting == Counting::Count {
            trail.hold(shared.turns(&keys).await);
        }
        let counts = shared.attempts(&keys).await.unwrap_or_else(|error| {
            tracing::warn!(error = %escaped(&error), "the shared attempt ledger could not be read");
            vec![0; keys.len()]
        });
        Arc::new(AttemptLedger::seeded(
            operator.actor_id.as_deref(),
            keys.into_iter().zip(counts),
        ))
    }

    /// Asks the policy decision point about `intent` and records the verdict; a verdict whose
    /// `decision` record cannot be written becomes a `DENY` (`AUDIT_UNAVAILABLE`).
    async fn decide(
        &self,
        trail: &mut CallTrail<'_>,
        tool: &str,
        intent: &Intent,
        provenance: &Provenance,
        (operator, local): (&Operator, Option<&Local>),
    ) -> PolicyResponse {
        let started = Instant::now();
        let question = local.map(|local| LocalQuestion {
            call: cedar::Call {
                tool,
                arguments: &local.arguments,
                intent,
            },
            facts: cedar::Facts::vouched(
                operator,
                provenance,
                intent,
                SystemTime::now(),
                local.recent_calls,
            ),
            sets: &local.sets,
        });
        let policy = self.policy.check(intent, question.as_ref()).await;
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

/// The `DEFER` an MRTR state was sealed for, as the retry that brings no approval ends with it:
/// the deferring check's `request_id`, `policy_version`, reason and questions for the human, as
/// far as the state kept them ([`state::SEALED_REASON_CHARS`], [`state::SEALED_QUESTIONS`]); the
/// rest of that verdict (its issues, risk) is in its `decision` record in the audit log.
fn recorded_defer(opened: &state::OpenedState) -> PolicyResponse {
    let mut deferred = PolicyResponse::new(
        Verdict::Defer,
        Decision::Defer,
        opened.reason().to_owned(),
        opened.deferred_request_id().to_owned(),
    );
    deferred.policy_version = opened.policy_version().to_owned();
    deferred.defer_questions = opened.questions().to_vec();
    deferred
}

/// `allowed`, an `ALLOW` for `tool` whose `unenforced` guardrails no code enforces, as the `DENY`
/// the operator chose for it (`STAGE0_UNENFORCED_GUARDRAILS=deny`): decision `ERROR`, issue
/// [`UNENFORCED_GUARDRAIL`], the same `request_id` and `policy_version`.
fn unenforced_denial(allowed: PolicyResponse, tool: &str, unenforced: &[String]) -> PolicyResponse {
    let why = format!(
        "The policy allowed `{tool}` under guardrails it does not enforce ({}), and this server \
         runs nothing under a guardrail no code enforces (STAGE0_UNENFORCED_GUARDRAILS=deny)",
        unenforced.join(", ")
    );
    let mut denied = PolicyResponse::fail_closed(why.clone(), allowed.request_id);
    denied.policy_version = allowed.policy_version;
    denied.issues = vec![Issue {
        code: UNENFORCED_GUARDRAIL.to_owned(),
        severity: "HIGH".to_owned(),
        message: why,
    }];
    denied
}

/// The MCP request a tool call arrived in, with the MRTR round it answers, if any.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request's context: its peer (for elicitation), its cancellation, its `_meta`
    /// (protocol version and client capabilities at 2026-07-28).
    pub context: &'a RequestContext<RoleServer>,
    /// `inputResponses` of an MRTR retry: the client's answers, by input request key.
    pub input_responses: Option<InputResponses>,
    /// `requestState` of an MRTR retry, as the client echoed it.
    pub request_state: Option<String>,
}

/// What the Cedar policy reads about a call beside its intent, fixed when the call is prepared.
struct Local {
    /// The tool's arguments after the guard replaced the claims: `context.arguments`.
    arguments: JsonObject,
    /// The principal's calls before this one: `context.recent_calls`.
    recent_calls: RecentCallCounts,
    /// The policy sets in force when the call was prepared; it decides on them to its end.
    sets: Arc<PolicySets>,
}

/// An MRTR retry: the state it echoes and the answers it brings.
struct Retry<'a> {
    state: &'a str,
    input_responses: Option<InputResponses>,
}

/// How a `DEFER` may reach a human in this call.
struct Review<'a> {
    /// Who the call acts for ([`Guard::operator`]).
    operator: &'a Operator,
    /// The client, for `elicitation/create`.
    peer: Option<&'a Peer<RoleServer>>,
    /// The call's arguments, for the prompt; `None` when asking is turned off.
    arguments: Option<&'a JsonObject>,
    /// Whether the client takes MRTR input requests for elicitation.
    mrtr: bool,
}

/// What checking (and maybe asking) gave.
enum Reviewed {
    /// The final verdict, and how asking ended when the call was deferred.
    Final(PolicyResponse, Option<ApprovalReport>),
    /// `DEFER`, put to a human over MRTR: the call ends with this `input_required` result.
    Ask(PolicyResponse, InputRequiredResult),
}

/// Whether preparing a call counts an attempt in the ledger.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counting {
    /// A new call: one more attempt.
    Count,
    /// The MRTR retry of a deferred call, whose attempt was counted when it was deferred.
    Continue,
}

/// Whether the request may carry a `DEFER` to a human as an MRTR input request: protocol
/// 2026-07-28 or later, and form elicitation declared in the request's `_meta` capabilities (a
/// declaration with neither `form` nor `url` means form, as MCP says for backward compatibility).
fn asks_through_mrtr(context: &RequestContext<RoleServer>) -> bool {
    let current = context
        .protocol_version()
        .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
    current
        && context
            .client_capabilities()
            .and_then(|capabilities| capabilities.elicitation)
            .is_some_and(|elicitation| elicitation.form.is_some() || elicitation.url.is_none())
}

/// Waits for `work` unless the client cancels the request first (`None`). rmcp marks a cancelled
/// request on its token but lets the handler run on, so the guard itself stops waiting: a verdict
/// that arrives after the cancellation runs nothing.
async fn until_cancelled<F: Future>(
    context: Option<&RequestContext<RoleServer>>,
    work: F,
) -> Option<F::Output> {
    match context {
        Some(context) => tokio::select! {
            biased;
            () = transport::cancelled(context) => None,
            done = work => Some(done),
        },
        None => Some(work.await),
    }
}

/// The log line of how asking a human ended.
fn log_review(tool: &str, asked: &ApprovalReport) {
    tracing::info!(
        tool,
        outcome = ?asked.outcome,
        via = ?asked.via,
        deferred_request_id = %escaped(&asked.deferred_request_id),
        approved_by = asked
            .approval
            .as_ref()
            .map(|h| escaped(excerpt(&h.approved_by)))
            .map(tracing::field::display),
        "human review"
    );
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

/// The key the call's arguments repeated, as the stdio transport marked the request
/// (`transport.rs`); the `Value` the arguments arrive in kept only its last value.
fn repeated_key(request: Option<&RequestContext<RoleServer>>) -> Option<&DuplicateKey> {
    request.and_then(|request| request.extensions.get::<DuplicateKey>())
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
        /// The guardrails the last [`Probe`] body found in its permit.
        static GUARDRAILS_SEEN: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        /// An audit log the [`Probe`] body reads when it runs, and the last line it found there.
        static AUDIT_FILE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
        static LAST_LINE_SEEN: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// The error of a [`Probe`] told to fail.
    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct ProbeFailed;

    /// A tool whose intent and outcome the test chooses.
    #[derive(Deserialize, serde::Serialize, schemars::JsonSchema)]
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

        async fn run(self, permit: Permit<Self>) -> Result<ToolOutput, Self::Error> {
            RUNS.set(RUNS.get() + 1);
            GUARDRAILS_SEEN.set(permit.guardrails().to_vec());
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
        .complete()
    }

    /// A tool call's final result; these tests never go through MRTR.
    trait Complete {
        fn complete(self) -> CallToolResult;
    }

    impl Complete for CallToolResponse {
        fn complete(self) -> CallToolResult {
            match self {
                CallToolResponse::Complete(result) => result,
                other => panic!("expected a complete result, got {other:?}"),
            }
        }
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
        let result = guard.enforce::<Probe>(arguments, None).await.complete();
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
            .await
            .complete();
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
            .report::<Probe>(object(json!({"side_effects": [], "fail": false})), None)
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

    /// The outcome record of the last call in the log at `path`.
    fn last_outcome(path: &std::path::Path) -> serde_json::Value {
        records(path)
            .into_iter()
            .rev()
            .find(|record| record["kind"] == "outcome")
            .expect("an outcome record")
    }

    #[tokio::test]
    async fn an_allow_with_a_guardrail_the_tool_does_not_enforce_runs_and_is_recorded_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (guard, log) = audited(&path);
        let arguments = object(json!({"side_effects": [], "fail": false}));
        let result = guard.enforce::<Probe>(arguments, None).await.complete();
        log.close();
        assert_eq!(RUNS.get(), 1);
        assert_eq!(result.is_error, Some(false));
        // The simulator's ALLOW carries `read_only`; the body sees it, and the record says that
        // no code enforced it.
        assert_eq!(GUARDRAILS_SEEN.take(), ["read_only"]);
        let outcome = last_outcome(&path);
        assert_eq!(outcome["guardrails_unenforced"], json!(["read_only"]));
        assert!(outcome.get("guardrails_enforced").is_none(), "{outcome}");
    }

    #[tokio::test]
    async fn with_unenforced_guardrails_denied_such_an_allow_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (guard, log) = audited(&path);
        let guard = guard.with_unenforced_guardrails(UnenforcedGuardrails::Deny);
        let arguments = object(json!({"side_effects": [], "fail": false}));
        let result = guard.enforce::<Probe>(arguments, None).await.complete();
        log.close();
        assert_eq!(RUNS.get(), 0, "the body did not run");
        assert_eq!(result.is_error, Some(true));
        let report = result.structured_content.unwrap();
        assert_eq!(report["verdict"], "DENY");
        assert_eq!(report["issues"][0]["code"], UNENFORCED_GUARDRAIL);
        let outcome = last_outcome(&path);
        assert_eq!(outcome["status"], "blocked");
        assert_eq!(outcome["guardrails_unenforced"], json!(["read_only"]));
    }
}
