//! The server: the six tools of the original, each routed through the guard.
//!
//! This file is the list of tool types and what the server says about itself; everything about a
//! tool (name, title, description, annotations, schema, intent, body) is on its type in
//! `tools.rs`, and every route goes through the guard (`stage0_guard::server`).

use stage0_guard::{Guard, GuardedServer};

use crate::tools::{
    CheckAuthorization, DeployChanges, ManagedDeploy, PublishContent, ResearchTopic, RetryWorkflow,
};

/// The name this server introduces itself with in `initialize` (as the original does).
pub const SERVER_NAME: &str = "stage0-authorization-server";

/// What the server tells the client's model about verdicts (`instructions` in `initialize`).
pub const INSTRUCTIONS: &str = "Every tool on this server is checked by the Stage0 policy \
authority before it runs; the check happens on the server and cannot be skipped. \
ALLOW: the action ran and its output follows the verdict. \
DENY: the action was blocked and did not run; do not retry it unchanged, tell the user the reason. \
DEFER: the action did not run because a human must review it; ask the user the questions in the \
result instead of retrying. \
Every result carries request_id and policy_version for audit, and structuredContent holds the \
whole verdict. check-authorization only asks for a verdict and never runs anything.";

/// The guarded MCP server with the six tools, every call checked by `guard`.
pub fn stage0_server(guard: Guard) -> GuardedServer {
    GuardedServer::builder(guard)
        .named(SERVER_NAME, env!("CARGO_PKG_VERSION"))
        .instructions(INSTRUCTIONS)
        .tool::<ResearchTopic>()
        .tool::<PublishContent>()
        .tool::<DeployChanges>()
        .tool::<ManagedDeploy>()
        .tool::<RetryWorkflow>()
        .report::<CheckAuthorization>()
        .build()
}
