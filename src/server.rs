//! The MCP server: lists the six tools and sends every call through the guard.
//!
//! Each tool method below is a single line that hands the raw arguments to the [`Guard`]; the
//! guard reads them, asks the policy decision point and runs the tool body only on `ALLOW`. The
//! `///` comment on each method is the tool's description; the input schema comes from the
//! argument type in `tools.rs` and the output schema from [`ToolReport`].

use std::sync::Arc;

use rmcp::handler::server::common::{schema_for_input, schema_for_output};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::model::{CallToolResult, Implementation, JsonObject, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;

use crate::guard::Guard;
use crate::report::ToolReport;
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

/// The guarded MCP server. Cheap to clone: clones share one guard and one tool list.
#[derive(Debug, Clone)]
pub struct Stage0Server {
    guard: Arc<Guard>,
    tool_router: ToolRouter<Self>,
}

/// The input schema of a tool's argument type (object-shaped, as MCP requires).
fn input<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    schema_for_input::<T>().expect("tool arguments are JSON objects")
}

#[tool_router]
impl Stage0Server {
    /// A server whose every tool call goes through `guard`.
    pub fn new(guard: Guard) -> Self {
        Stage0Server {
            guard: Arc::new(guard),
            tool_router: Self::tool_router(),
        }
    }

    /// Research a topic and return informational summary (LOW RISK - typically ALLOWED)
    #[tool(
        name = "research-topic",
        title = "Research a topic",
        input_schema = input::<ResearchTopic>(),
        output_schema = schema_for_output::<ToolReport>(),
        annotations(read_only_hint = true)
    )]
    async fn research_topic(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.guard
            .enforce::<ResearchTopic>(arguments, Some(&context))
            .await
    }

    /// Publish content to a public channel (HIGH RISK - typically DENIED)
    #[tool(
        name = "publish-content",
        title = "Publish content",
        input_schema = input::<PublishContent>(),
        output_schema = schema_for_output::<ToolReport>(),
        annotations(open_world_hint = true)
    )]
    async fn publish_content(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.guard
            .enforce::<PublishContent>(arguments, Some(&context))
            .await
    }

    /// Deploy changes to an environment. Context-aware: requires appropriate actor_role for production deployments.
    #[tool(
        name = "deploy-changes",
        title = "Deploy changes",
        input_schema = input::<DeployChanges>(),
        output_schema = schema_for_output::<ToolReport>(),
        annotations(destructive_hint = true)
    )]
    async fn deploy_changes(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.guard
            .enforce::<DeployChanges>(arguments, Some(&context))
            .await
    }

    /// Deploy with full authorization context. Demonstrates actor_role, approval_status, environment, and resource_scope usage.
    #[tool(
        name = "managed-deploy",
        title = "Deploy with authorization context",
        input_schema = input::<ManagedDeploy>(),
        output_schema = schema_for_output::<ToolReport>(),
        annotations(destructive_hint = true)
    )]
    async fn managed_deploy(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.guard
            .enforce::<ManagedDeploy>(arguments, Some(&context))
            .await
    }

    /// Retry a failing workflow (MEDIUM RISK - may DEFER if loop threshold exceeded)
    #[tool(
        name = "retry-workflow",
        title = "Retry a workflow",
        input_schema = input::<RetryWorkflow>(),
        output_schema = schema_for_output::<ToolReport>()
    )]
    async fn retry_workflow(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.guard
            .enforce::<RetryWorkflow>(arguments, Some(&context))
            .await
    }

    /// Check if an action would be authorized by Stage0 (does NOT execute the action)
    #[tool(
        name = "check-authorization",
        title = "Check authorization",
        input_schema = input::<CheckAuthorization>(),
        output_schema = schema_for_output::<ToolReport>(),
        annotations(read_only_hint = true)
    )]
    async fn check_authorization(&self, arguments: JsonObject) -> CallToolResult {
        self.guard.report::<CheckAuthorization>(arguments).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Stage0Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
