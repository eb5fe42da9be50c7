//! A guarded MCP server: a list of tool types, every one of them routed through the guard.
//!
//! [`GuardedServer::builder`] takes a [`Guard`] and one line per tool:
//! [`tool::<T>()`](ServerBuilder::tool) for a tool with a body ([`GuardedTool`]),
//! [`report::<T>()`](ServerBuilder::report) for a report-only tool ([`ToolIntent`]). Each line
//! builds the tool's `tools/list` entry from its type (name, title, description, annotations,
//! input schema; the output schema is always [`ToolReport`]'s; both through [`crate::schema`])
//! and an rmcp `ToolRoute` whose only code is a call of [`Guard::enforce`] or [`Guard::report`].
//! There is no other way to add a route, so no tool body of a server built here is reachable
//! without a verdict.

use std::future::Future;
use std::sync::Arc;

use rmcp::handler::server::tool::{ToolCallContext, ToolRoute, ToolRouter};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ResultType, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, ServerInitializeError};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use tokio_util::sync::CancellationToken;

use crate::admission::CallBounds;
use crate::guard::{Guard, GuardedTool, Request, ToolIntent};
use crate::json::DuplicateKey;
use crate::render::ToolReport;
use crate::{schema, transport};

/// An MCP server whose every tool call goes through one [`Guard`]. Cheap to clone: clones share
/// the guard and the tool list.
#[derive(Debug, Clone)]
pub struct GuardedServer {
    guard: Arc<Guard>,
    router: ToolRouter<GuardedServer>,
    info: ServerConfig,
}

/// Builds a [`GuardedServer`]: the server's name and instructions, then one line per tool.
#[derive(Debug)]
pub struct ServerBuilder {
    guard: Guard,
    router: ToolRouter<GuardedServer>,
    implementation: Implementation,
    instructions: Option<String>,
}

impl GuardedServer {
    /// Starts a server that checks every call with `guard`. Until
    /// [`named`](ServerBuilder::named), it introduces itself as `stage0-guard` with this crate's
    /// version.
    pub fn builder(guard: Guard) -> ServerBuilder {
        ServerBuilder {
            guard,
            router: ToolRouter::new(),
            implementation: Implementation::new("stage0-guard", env!("CARGO_PKG_VERSION")),
            instructions: None,
        }
    }

    /// The guard every call goes through, shared: clone it to reach the guard from elsewhere
    /// while the server runs (to [`reload_policy`](Guard::reload_policy) on SIGHUP, say).
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// Serves one MCP session on stdin and stdout through the guarded transport
    /// ([`transport::stdio`]: 4 MiB message cap, lifecycle gate, at most
    /// [`Guard::max_calls_in_flight`] requests at once) until the client closes stdin
    /// or `stop` completes (a signal, for instance; `std::future::pending()` for never), then
    /// closes the audit log, so every record is written before it returns.
    ///
    /// Must be called inside a Tokio runtime. A client that leaves before `initialize` is a
    /// clean stop, not an error.
    ///
    /// # Errors
    ///
    /// [`ServeError`] when the `initialize` handshake fails, or the session's task panics.
    pub async fn serve_stdio(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                stop.await;
                tracing::info!("stopping");
                shutdown.cancel();
            }
        });
        let guard = Arc::clone(&self.guard);
        let transport = transport::stdio().with_max_calls_in_flight(guard.max_calls_in_flight());
        let served = match self.serve_with_ct(transport, shutdown).await {
            Ok(service) => match service.waiting().await {
                Ok(reason) => {
                    tracing::info!(?reason, "stopped");
                    Ok(())
                }
                Err(error) => Err(ServeError::Session(error)),
            },
            Err(ServerInitializeError::ConnectionClosed(_) | ServerInitializeError::Cancelled) => {
                tracing::info!("stopped before the client initialised");
                Ok(())
            }
            Err(error) => Err(ServeError::Initialize(Box::new(error))),
        };
        watcher.abort();
        if let Some(log) = guard.audit() {
            log.close();
        }
        served
    }
}

/// Why [`GuardedServer::serve_stdio`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The `initialize` handshake failed (other than the client leaving, which is a clean stop).
    #[error("MCP initialisation failed: {0}")]
    Initialize(#[source] Box<ServerInitializeError>),
    /// The task serving the session panicked or was aborted.
    #[error("the MCP session ended abnormally: {0}")]
    Session(#[source] tokio::task::JoinError),
}

impl ServerBuilder {
    /// The `serverInfo` name and version this server gives in `initialize`.
    pub fn named(self, name: impl Into<String>, version: impl Into<String>) -> Self {
        ServerBuilder {
            implementation: Implementation::new(name, version),
            ..self
        }
    }

    /// The `instructions` this server gives the client's model in `initialize`.
    pub fn instructions(self, instructions: impl Into<String>) -> Self {
        ServerBuilder {
            instructions: Some(instructions.into()),
            ..self
        }
    }

    /// Adds tool `T`: each call is checked, and `T`'s body runs only on `ALLOW`
    /// ([`Guard::enforce`]).
    ///
    /// # Panics
    ///
    /// When a tool named [`T::NAME`](ToolIntent::NAME) was already added, or when `T`'s schema is
    /// not an object (MCP requires object-shaped arguments): both are mistakes in the server's
    /// code, found the first time it starts.
    pub fn tool<T: GuardedTool>(self) -> Self {
        self.route::<T>(ToolRoute::new_dyn(
            entry::<T>(),
            |call: ToolCallContext<'_, GuardedServer>| {
                Box::pin(async move {
                    let request = Request {
                        context: &call.request_context,
                        input_responses: call.input_responses,
                        request_state: call.request_state,
                    };
                    let arguments = call.arguments.unwrap_or_default();
                    Ok(call
                        .service
                        .guard
                        .enforce::<T>(arguments, Some(request))
                        .await)
                })
            },
        ))
    }

    /// Adds report-only tool `T`: each call is checked and its verdict reported; nothing runs and
    /// no human is asked ([`Guard::report`]).
    ///
    /// # Panics
    ///
    /// As [`tool`](ServerBuilder::tool).
    pub fn report<T: ToolIntent>(self) -> Self {
        self.route::<T>(ToolRoute::new_dyn(
            entry::<T>(),
            |call: ToolCallContext<'_, GuardedServer>| {
                Box::pin(async move {
                    let arguments = call.arguments.unwrap_or_default();
                    let guard = &call.service.guard;
                    let result = guard
                        .report::<T>(arguments, Some(&call.request_context))
                        .await;
                    Ok(CallToolResponse::from(result))
                })
            },
        ))
    }

    /// The server, with the tools added so far.
    pub fn build(self) -> GuardedServer {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(self.implementation);
        if let Some(instructions) = self.instructions {
            info = info.with_instructions(instructions);
        }
        GuardedServer {
            guard: Arc::new(self.guard),
            router: self.router,
            info,
        }
    }

    fn route<T: ToolIntent>(mut self, route: ToolRoute<GuardedServer>) -> Self {
        assert!(
            !self.router.has_route(T::NAME),
            "two tools are named `{}`",
            T::NAME
        );
        self.router.add_route(route);
        self
    }
}

/// `T`'s entry in `tools/list`.
fn entry<T: ToolIntent>() -> Tool {
    let input = schema::input::<T>()
        .unwrap_or_else(|error| panic!("the arguments of `{}`: {error}", T::NAME));
    let mut tool = Tool::new(T::NAME, T::DESCRIPTION, input)
        .with_title(T::TITLE)
        .with_raw_output_schema(schema::output::<ToolReport>());
    if let Some(annotations) = T::annotations() {
        tool = tool.with_annotations(annotations);
    }
    tool
}

impl ServerHandler for GuardedServer {
    fn get_info(&self) -> ServerConfig {
        self.info.clone()
    }

    /// Routes a call to its tool. Over HTTP, the call holds its place in the server's bounds
    /// until it has ended, and is ended at its deadline or when its client goes away
    /// (`CallBounds`, put in the request by `http_server.rs`); a repeated argument key found
    /// there reaches the guard as over stdio.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (bounds, repeated) = match context.extensions.get_mut::<http::request::Parts>() {
            Some(parts) => (
                parts
                    .extensions
                    .get::<CallBounds>()
                    .and_then(CallBounds::take),
                parts.extensions.remove::<DuplicateKey>(),
            ),
            None => (None, None),
        };
        if let Some(repeated) = repeated {
            context.extensions.insert(repeated);
        }
        let cancel = context.ct.clone();
        let call = self
            .router
            .call(ToolCallContext::new(self, request, context));
        match bounds {
            Some(bounds) => bounds.hold(&cancel, call).await,
            None => call.await,
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // As rmcp's `#[tool_handler]` answers: the list never changes, so at 2026-07-28 a client
        // may cache it for everyone.
        let cache_hints = context
            .protocol_version()
            .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
        Ok(ListToolsResult {
            result_type: Some(ResultType::COMPLETE),
            tools: self.router.list_all(),
            meta: None,
            next_cursor: None,
            ttl_ms: cache_hints.then_some(0),
            cache_scope: cache_hints.then_some(CacheScope::Public),
        })
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.router.get(name).cloned()
    }
}
