//! The stdio server binary: read the configuration, start logging, serve until stdin closes.
//!
//! stdout carries JSON-RPC and nothing else; every log line goes to stderr. The process exits 0
//! on stdin EOF, SIGINT or SIGTERM, and 2 with a message when the configuration is unusable.

use std::process::ExitCode;

use anyhow::Context as _;
use mcp_server_stage0::config::Config;
use mcp_server_stage0::guard::Guard;
use mcp_server_stage0::server::Stage0Server;
use mcp_server_stage0::stage0::{Mode, PolicyClient};
use mcp_server_stage0::transport;
use rmcp::ServiceExt;
use rmcp::service::ServerInitializeError;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        return match arg.as_str() {
            "--version" | "-V" => {
                println!("mcp-server-stage0 {}", env!("CARGO_PKG_VERSION"));
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!(
                    "usage: mcp-server-stage0\n\nA stdio MCP server: start it from an MCP client. \
                     Configuration comes from STAGE0_* environment variables (see README)."
                );
                ExitCode::from(2)
            }
        };
    }
    // One thread runs every task: a stdio server has one client, and its work per call is a few
    // microseconds of CPU between waits on the pipe or on Stage0, so worker threads would only
    // add a hand-off (a thread wake-up) to every message. Calls still run concurrently: each is a
    // task, and one waiting on Stage0 yields to the others. Blocking stdio, when stdin or stdout
    // is not a pipe, runs on Tokio's blocking pool as before. Measured in BENCHMARKS.md.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-server-stage0: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Registered before anything else, so a SIGTERM during start-up is a clean stop too.
    let shutdown = CancellationToken::new();
    let signals = Signals::register().context("cannot install signal handlers")?;
    tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    // Only ./.env, as the original reads it; `dotenvy::dotenv` would also search parent folders.
    let dotenv = dotenvy::from_path(".env");
    let config = Config::from_lookup(|name| std::env::var(name).ok())?;
    init_logging(config.debug);
    match dotenv {
        Ok(()) => tracing::debug!("read ./.env"),
        Err(error) if !error.not_found() => tracing::warn!("ignoring .env: {error}"),
        Err(_) => {}
    }
    let policy =
        PolicyClient::from_config(&config).context("cannot build the Stage0 HTTP client")?;
    let mode = match policy.mode() {
        Mode::Stage0 => "live Stage0 API",
        Mode::Simulator => "simulator (no STAGE0_API_KEY)",
    };
    tracing::info!(
        base_url = %config.base_url,
        timeout_ms = config.timeout.as_millis() as u64,
        api_key_set = config.api_key.is_some(),
        actor_role = %config.operator.actor_role,
        actor_id = config.operator.actor_id.as_deref().unwrap_or("(unset)"),
        approvals = ?config.approvals,
        "starting {} {} with the {mode} as policy decision point",
        mcp_server_stage0::server::SERVER_NAME,
        env!("CARGO_PKG_VERSION"),
    );

    let server = Stage0Server::new(Guard::new(policy, config.operator, config.approvals));
    let service = match server.serve_with_ct(transport::stdio(), shutdown).await {
        Ok(service) => service,
        Err(ServerInitializeError::ConnectionClosed(_) | ServerInitializeError::Cancelled) => {
            tracing::info!("stopped before the client initialised");
            return Ok(());
        }
        Err(error) => return Err(error).context("MCP initialisation failed"),
    };
    let reason = service.waiting().await?;
    tracing::info!(?reason, "stopped");
    Ok(())
}

/// Logs to stderr. `RUST_LOG` wins; otherwise `info` (or `debug` with `STAGE0_DEBUG=true`), with
/// rmcp's own per-connection chatter kept to warnings.
fn init_logging(debug: bool) {
    let default = if debug {
        "debug,rmcp=info"
    } else {
        "info,rmcp=warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM: the signals that stop the server cleanly.
struct Signals {
    #[cfg(unix)]
    handlers: [tokio::signal::unix::Signal; 2],
}

impl Signals {
    /// Installs the handlers now, so that a signal that arrives at any later moment is caught.
    fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                handlers: [
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Cancels `shutdown` when the first signal arrives.
    async fn cancel_on_first(self, shutdown: CancellationToken) {
        #[cfg(unix)]
        {
            let [mut interrupt, mut terminate] = self.handlers;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        tracing::info!("signal received, shutting down");
        shutdown.cancel();
    }
}
