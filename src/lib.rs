//! mcp-server-stage0: the MCP server that puts the six tools of the Stage0 original behind the
//! `stage0-guard` policy enforcement point.
//!
//! - [`tools`]: the six tools: their arguments, the execution intent each sends and their
//!   stand-in bodies;
//! - [`server`]: the list of those tools, each routed through the guard.
//!
//! The binary (`main.rs`) reads the configuration, builds the guard and serves stdio; the demos
//! (`demos/`) are MCP clients of the same server.

pub mod server;
pub mod tools;
