//! What a tool must say about itself to be guarded, and what its body may return.
//!
//! A tool is a type: its arguments, deserialised from the call. [`ToolIntent`] gives its MCP
//! description (name, title, description, annotations; the input schema comes from the type) and
//! the execution intent a call asks the policy decision point to authorise. [`GuardedTool`] adds
//! the body, which can only be run with a [`Permit`] for that very tool, and so only after an
//! `ALLOW` (see the parent module); it returns a [`ToolOutput`]. A report-only tool, such as
//! `check-authorization`, is a [`ToolIntent`] and nothing more: the guard reports its verdict and
//! runs nothing.

use std::future::Future;

use rmcp::model::ToolAnnotations;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Permit;
use crate::claims::Claim;
use crate::policy::wire::Intent;
use crate::render::ToolOutput;

/// A tool call that can be put to the policy decision point as an execution intent.
///
/// The type is the tool's arguments: the guard deserialises it from the call's `arguments`
/// (unknown fields are the type's own business, as serde decides), and its JSON Schema
/// (`schemars`) is the tool's `inputSchema`; `///` comments on its fields become the schema's
/// descriptions. It is also `Serialize`, with the same field names: the `cedar` policy decision
/// point reads the arguments, after the guard replaced the claims, as `context.arguments`.
pub trait ToolIntent: DeserializeOwned + Serialize + JsonSchema + Send + 'static {
    /// The MCP tool name (`name` in `tools/list`), e.g. `deploy-changes`.
    const NAME: &'static str;

    /// A short human-readable name (`title` in `tools/list`), e.g. `Deploy changes`.
    const TITLE: &'static str;

    /// What the tool does, for the model (`description` in `tools/list`).
    const DESCRIPTION: &'static str;

    /// The MCP tool annotations (`readOnlyHint`, `destructiveHint`, …), hints for the client;
    /// `None` (the default) declares none. They are hints only: the guard checks every call
    /// whatever they say.
    fn annotations() -> Option<ToolAnnotations> {
        None
    }

    /// The execution intent this call asks to be authorised (`docs/contract.md` §2 gives each of
    /// the six tools' intents).
    ///
    /// Called after the guard replaced the [`claims`](ToolIntent::claims) with vouched values.
    fn intent(&self) -> Intent;

    /// The arguments the agent asserts but cannot vouch for (retry count, role, approval); the
    /// guard overwrites each in place before it calls [`intent`](ToolIntent::intent) (see
    /// `claims.rs`). Most tools claim nothing.
    fn claims(&mut self) -> Vec<Claim<'_>> {
        Vec::new()
    }
}

/// A tool with a body; the body can only be run with a [`Permit`] for this tool, that is, after
/// `ALLOW` for this very call.
pub trait GuardedTool: ToolIntent + Sized {
    /// The guardrails (obligations a policy decision point may attach to an `ALLOW`, named as it
    /// sends them, e.g. `read_only`, `dry_run`) that this body enforces. An `ALLOW` carrying one
    /// that is not listed here runs with a warning or not at all, as the operator chose
    /// (`STAGE0_UNENFORCED_GUARDRAILS`); the body sees the `ALLOW`'s guardrails in its
    /// [`Permit::guardrails`]. None by default.
    const GUARDRAILS: &'static [&'static str] = &[];

    /// Why the body can fail. Its `Display` text is what the client and the audit log's `outcome`
    /// record are told; use [`std::convert::Infallible`] for a body that cannot fail.
    type Error: std::error::Error + Send + 'static;

    /// Runs the tool body: what it returns is shown to the client after the verdict.
    fn run(
        self,
        permit: Permit<Self>,
    ) -> impl Future<Output = Result<ToolOutput, Self::Error>> + Send;
}
