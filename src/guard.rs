//! The one policy enforcement point: no tool body runs without an `ALLOW` for its intent.
//!
//! Every tool call goes through [`Guard::enforce`] (or [`Guard::report`] for report-only
//! tools): read the arguments → build the execution intent → ask the policy decision point →
//! on `ALLOW` run the tool body, otherwise return the blocked result without running it.
//!
//! The guarantee is structural, not a convention. A tool body is [`GuardedTool::run`], which
//! needs a [`Permit`]; a `Permit` has a private field, so only this module can make one, and it
//! makes one in a single place: right after the verdict was `ALLOW`. Code elsewhere that tries to
//! run a tool body without the guard does not compile.

use std::future::Future;

use rmcp::model::{CallToolResult, JsonObject};
use serde::de::DeserializeOwned;

use crate::report;
use crate::stage0::wire::{Intent, PolicyResponse, Verdict};
use crate::stage0::{Mode, PolicyClient};

/// Proof that the policy decision point answered `ALLOW` for this call. Only the guard makes one.
#[derive(Debug)]
pub struct Permit(());

/// A tool call that can be put to the policy decision point as an execution intent.
pub trait ToolIntent: DeserializeOwned + Send + 'static {
    /// The MCP tool name, e.g. `deploy-changes`.
    const NAME: &'static str;

    /// The execution intent this call asks to be authorised (SPEC §2 gives each tool's).
    fn intent(&self) -> Intent;
}

/// A tool with a body; the body can only be run with a [`Permit`], that is, after `ALLOW`.
pub trait GuardedTool: ToolIntent {
    /// Runs the tool body. `Ok` is the text shown to the client; `Err` says why it failed.
    fn run(self, permit: Permit) -> impl Future<Output = Result<String, String>> + Send;
}

/// The policy enforcement point shared by every tool of the server.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: PolicyClient,
}

impl Guard {
    /// A guard that asks `policy` before every call.
    pub fn new(policy: PolicyClient) -> Self {
        Guard { policy }
    }

    /// Which policy decision point this guard asks.
    pub fn mode(&self) -> Mode {
        self.policy.mode()
    }

    /// Checks a call of tool `T` with `arguments` and runs its body only on `ALLOW`.
    ///
    /// Never fails: invalid arguments, `DENY`, `DEFER` and a failing body are all `isError`
    /// results (see `report.rs`); only `ALLOW` followed by a successful body is a success.
    pub async fn enforce<T: GuardedTool>(&self, arguments: JsonObject) -> CallToolResult {
        let call = match read_arguments::<T>(arguments) {
            Ok(call) => call,
            Err(invalid) => return invalid,
        };
        let policy = self.decide(T::NAME, &call.intent()).await;
        if policy.verdict != Verdict::Allow {
            return report::blocked(T::NAME, self.mode(), policy);
        }
        let outcome = call.run(Permit(())).await;
        report::executed(T::NAME, self.mode(), policy, outcome)
    }

    /// Checks a call of report-only tool `T` and reports the verdict; nothing runs.
    pub async fn report<T: ToolIntent>(&self, arguments: JsonObject) -> CallToolResult {
        let call = match read_arguments::<T>(arguments) {
            Ok(call) => call,
            Err(invalid) => return invalid,
        };
        let intent = call.intent();
        let policy = self.decide(T::NAME, &intent).await;
        report::reported(T::NAME, self.mode(), &intent, policy)
    }

    async fn decide(&self, tool: &str, intent: &Intent) -> PolicyResponse {
        let policy = self.policy.check(intent).await;
        tracing::info!(
            tool,
            goal = %intent.goal,
            verdict = %policy.verdict,
            decision = %policy.decision,
            request_id = %policy.request_id,
            policy_version = %policy.policy_version,
            mode = ?self.mode(),
            reason = %policy.reason,
            "stage0 check"
        );
        policy
    }
}

/// Reads `T` from the call's arguments; the error result names the offending field.
fn read_arguments<T: ToolIntent>(arguments: JsonObject) -> Result<T, CallToolResult> {
    serde_path_to_error::deserialize(serde_json::Value::Object(arguments)).map_err(|error| {
        let path = error.path().to_string();
        let problem = if path == "." {
            error.inner().to_string()
        } else {
            format!("`{path}`: {}", error.inner())
        };
        report::invalid_arguments(T::NAME, &problem)
    })
}
