//! mcp-server-stage0: an MCP server that asks the Stage0 policy authority before every tool call.
//!
//! The server is a policy enforcement point (PEP); Stage0, or the built-in simulator when no API
//! key is set, is the policy decision point (PDP). Read the modules in this order:
//!
//! - [`guard`]: the one enforcement point, where a verdict decides whether a tool body runs;
//! - [`claims`]: what the agent claims (retry count, role, approval) and what the server vouches
//!   for instead, with the attempt [`ledger`] behind the retry count;
//! - [`approval`]: asking a human about a `DEFER` through MCP elicitation;
//! - [`tools`]: the six tools, the execution intent each sends and their stand-in actions;
//! - [`stage0`]: the policy client: the live `/check` API ([`stage0::http`]) or the simulator
//!   ([`stage0::simulator`]), with the wire types in [`stage0::wire`];
//! - [`report`]: what a tool result looks like (text and `structuredContent`);
//! - [`server`]: the MCP server that lists the tools and routes every call through the guard;
//! - [`transport`]: stdio with a maximum message size and the MCP lifecycle enforced;
//! - [`config`]: the environment variables;
//! - [`dotenv`]: what a `./.env` file may add under them (the binaries' concern: nothing above
//!   uses it).

pub mod approval;
pub mod audit;
pub mod claims;
pub mod config;
pub mod dotenv;
pub mod guard;
pub mod ledger;
pub mod report;
pub mod server;
pub mod stage0;
pub mod tools;
pub mod transport;
