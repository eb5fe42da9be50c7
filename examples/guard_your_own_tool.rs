//! How to put your own tool behind the guard: a stdio MCP server with one tool, `delete-branch`.
//!
//! Three steps, the same as for the six built-in tools in `src/tools.rs`:
//! 1. an argument type (`Deserialize + JsonSchema`; its doc comments become the input schema);
//! 2. `ToolIntent`: the execution intent Stage0 is asked about;
//! 3. `GuardedTool::run`: the body, which needs a `Permit` that only the guard can make, so it
//!    cannot run without an `ALLOW`.
//!
//! Then a one-line `#[tool]` method hands the raw arguments to `Guard::enforce`. Run it with
//! `cargo run --example guard_your_own_tool` and connect any MCP client over stdio. Without
//! `STAGE0_API_KEY` the simulator answers; it only denies `publish` and `deploy`, so this tool is
//! allowed there. With a key, your Stage0 policy decides. Every call is recorded in the audit log
//! (see the README's "Audit log").

use mcp_server_stage0::audit::AuditLog;
use mcp_server_stage0::config::Config;
use mcp_server_stage0::guard::{Guard, GuardedTool, Permit, ToolIntent};
use mcp_server_stage0::report::ToolReport;
use mcp_server_stage0::stage0::PolicyClient;
use mcp_server_stage0::stage0::wire::Intent;
use rmcp::handler::server::common::{schema_for_input, schema_for_output};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::model::{CallToolResult, JsonObject, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Map;

/// Arguments of `delete-branch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct DeleteBranch {
    /// Repository as owner/name
    repository: String,
    /// The branch to delete
    branch_name: String,
}

impl ToolIntent for DeleteBranch {
    const NAME: &'static str = "delete-branch";

    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Delete branch {} in {}", self.branch_name, self.repository),
            success_criteria: vec!["The branch no longer exists".to_owned()],
            constraints: vec!["never the default branch".to_owned()],
            tools: vec!["git".to_owned()],
            side_effects: vec!["delete".to_owned()],
            context: Map::new(),
        }
    }
}

impl GuardedTool for DeleteBranch {
    async fn run(self, _permit: Permit) -> Result<String, String> {
        // Your real action goes here; the permit proves Stage0 said ALLOW for this very call.
        Ok(format!(
            "Deleted {} in {} (example: nothing was deleted)",
            self.branch_name, self.repository
        ))
    }
}

#[derive(Debug, Clone)]
struct BranchServer {
    guard: std::sync::Arc<Guard>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl BranchServer {
    /// Delete a git branch (checked by Stage0 before anything happens)
    #[tool(
        name = "delete-branch",
        input_schema = schema_for_input::<DeleteBranch>().expect("an object schema"),
        output_schema = schema_for_output::<ToolReport>(),
        annotations(destructive_hint = true)
    )]
    async fn delete_branch(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        // The request lets the guard ask its human to review a DEFER (elicitation) and stop
        // when the client cancels the call.
        self.guard
            .enforce::<DeleteBranch>(arguments, Some(&context))
            .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BranchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_lookup(|name| std::env::var(name).ok())?;
    let policy = PolicyClient::from_config(&config)?;
    let mut guard = Guard::new(policy, config.operator, config.approvals);
    // The audit log, as the server binary keeps it (`STAGE0_AUDIT_LOG`, `off` for none). Unlike
    // the binary, which denies every call when its log cannot be opened, this example stops.
    let audit = AuditLog::from_config(&config.audit)?;
    if let Some(log) = &audit {
        guard = guard.with_audit(log.clone());
    }
    let server = BranchServer {
        guard: std::sync::Arc::new(guard),
        tool_router: BranchServer::tool_router(),
    };
    server
        .serve(rmcp::transport::stdio())
        .await?
        .waiting()
        .await?;
    // Writes what is still queued and stops the writer thread.
    if let Some(log) = audit {
        log.close();
    }
    Ok(())
}
