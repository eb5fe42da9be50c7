//! mcp-server-stage0: the MCP server that puts the six tools of the Stage0 original behind the
//! `stage0-guard` policy enforcement point.
//!
//! - [`tools`]: the six tools: their arguments, the execution intent each sends and their
//!   stand-in bodies;
//! - [`server`]: the list of those tools, each routed through the guard.
//!
//! - [`audit_command`]: `audit verify`, `show` and `export`, an operator's reading of the audit
//!   log, a file or the chain in PostgreSQL;
//! - [`dotenv`]: what a `./.env` file may add under the environment (the binaries' concern: the
//!   guard library never reads it);
//! - [`policy_command`]: `policy validate` and `policy eval`, an operator's checks of a Cedar
//!   policy.
//!
//! The binary (`main.rs`) reads the configuration, builds the guard and serves stdio; the demos
//! (`demos/`) are MCP clients of the same server.

pub mod audit_command;
pub mod dotenv;
pub mod policy_command;
pub mod server;
pub mod tools;
