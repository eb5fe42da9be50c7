//! stage0-guard: a policy enforcement point (PEP) for rmcp servers.
//!
//! Before any tool body runs, the guard sends the call's execution intent to a policy decision
//! point (PDP): the Stage0 `/check` API, a local Cedar policy set, or a deterministic simulator
//! when neither is configured. Only
//! `ALLOW` runs the body; `DENY` and `DEFER` return the verdict as an `isError` result, and a
//! `DEFER` can be put to a human through MCP elicitation. Every decision can be recorded in a
//! hash-chained audit log before the body runs. The contract the code follows is written in the
//! repository's `docs/contract.md`.
//!
//! A server adopts it in three steps: read a [`Config`] (from the same `STAGE0_*` variables as
//! `mcp-server-stage0`), build its guard ([`Config::guard`]), and list its tool types in a
//! [`GuardedServer`] — one line per tool — served over the guarded stdio [`transport`].
//!
//! Read the modules top-down, in the order dependencies point:
//!
//! - [`server`]: the MCP server, a list of tool types each routed through the guard, with the
//!   tools' schemas from [`schema`];
//! - [`transport`]: stdio with a maximum message size, the MCP lifecycle enforced, a bound on the
//!   requests in flight, and the client's cancellations (which the guard waits on);
//! - [`config`]: the `STAGE0_*` variables, and the one place a guard is built from them;
//! - [`guard`]: the one enforcement point, where a verdict decides whether a tool body runs,
//!   and the traits a tool implements;
//! - [`claims`]: what the agent claims (retry count, role, approval) and what the server vouches
//!   for instead, with the attempt [`ledger`] behind the retry count;
//! - [`approval`]: asking a human about a `DEFER` through MCP elicitation;
//! - [`audit`]: the hash-chained audit log of every decision and outcome;
//! - [`render`]: what a tool result looks like (text and `structuredContent`);
//! - [`escape`]: outside text made safe for a log line or a terminal;
//! - [`policy`]: the policy decision points: the live `/check` API ([`policy::http`]), the
//!   simulator ([`policy::simulator`]) or Cedar policies ([`policy::cedar`], kept in force and
//!   reloaded by [`policy::local`]), with the wire types in [`policy::wire`];
//! - [`json`]: what `serde_json` forgets (repeated keys) where it could change a verdict.

#![warn(missing_docs)]

mod admission;
pub mod approval;
pub mod audit;
pub mod claims;
pub mod config;
pub mod escape;
pub mod guard;
pub mod http_server;
pub mod json;
pub mod ledger;
pub mod oauth;
pub mod policy;
pub mod render;
pub mod schema;
pub mod server;
pub mod transport;

pub use config::Config;
pub use guard::{Guard, GuardedTool, Permit, ToolIntent, ToolOutput};
pub use policy::wire::Intent;
pub use server::GuardedServer;
