//! The stdio server binary: read the configuration, start logging, serve until stdin closes.
//!
//! stdout carries JSON-RPC and nothing else; every log line goes to stderr. The process exits 0
//! on stdin EOF, SIGINT or SIGTERM, and 2 with a message when the configuration is unusable.
//! `mcp-server-stage0 audit verify|show|export` reads the audit log, a file or the chain in
//! PostgreSQL, instead (`src/audit_command.rs`; exit 1: it does not verify);
//! `mcp-server-stage0 policy validate|eval` checks a Cedar policy (exit 1: it is invalid). With a
//! Cedar policy (`STAGE0_POLICY`), SIGHUP reads it again (`Guard::reload_policy`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mcp_server_stage0::audit_command::{self, Source};
use mcp_server_stage0::dotenv::{self, DotEnv};
use mcp_server_stage0::policy_command::{self, EvalCall};
use mcp_server_stage0::server::{SERVER_NAME, stage0_server};
use stage0_guard::Guard;
use stage0_guard::approval::Approvals;
use stage0_guard::audit::show::Selection;
use stage0_guard::claims::ActorRole;
use stage0_guard::config::{Config, redact_userinfo};
use stage0_guard::escape::escaped;
use stage0_guard::policy::Mode;
use stage0_guard::policy::cedar::CedarPolicy;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// A stdio MCP server that checks every tool call with the Stage0 policy authority before it
/// runs. Start it from an MCP client; it is configured by STAGE0_* environment variables (see
/// README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Read the audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check a Cedar policy before putting it in force (docs/cedar.md)
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Serve MCP over streamable HTTP at /mcp instead of stdio (docs/http.md)
    Http {
        /// The address to listen on [default: STAGE0_HTTP_LISTEN, else 127.0.0.1:8080]
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate Cedar policy files or folders in strict mode: exit 0 and print each one's
    /// policy_version, or exit 1 with every diagnostic (file:line:column: message)
    Validate {
        /// The Cedar schema [default: STAGE0_POLICY_SCHEMA, else the shipped one]
        #[arg(long, value_name = "PATH")]
        schema: Option<PathBuf>,
        /// Policy files or folders [default: STAGE0_POLICY and STAGE0_POLICY_SHADOW]
        paths: Vec<PathBuf>,
    },
    /// Decide one call with a Cedar policy as the server would, and print the verdict and the
    /// ids of the determining policies; nothing runs
    Eval {
        /// The tool, e.g. deploy-changes
        #[arg(long)]
        tool: String,
        /// The tool's arguments, a JSON object
        #[arg(long, value_name = "JSON")]
        arguments: String,
        /// The operator's role: viewer, developer or admin [default: STAGE0_ACTOR_ROLE]
        #[arg(long, value_name = "R")]
        role: Option<String>,
        /// The retry count the server would have observed [default: what the arguments give]
        #[arg(long, value_name = "N")]
        retry_count: Option<u64>,
        /// The policy file or folder [default: STAGE0_POLICY]
        #[arg(long, value_name = "PATH")]
        policy: Option<PathBuf>,
        /// The Cedar schema [default: STAGE0_POLICY_SCHEMA, else the shipped one]
        #[arg(long, value_name = "PATH")]
        schema: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain: exit 0 and print the log's place, record count and last hash when it
    /// holds, exit 1 and name the log and its first bad record when it does not
    Verify {
        /// The log file [default: STAGE0_AUDIT_LOG, else the per-user default]
        path: Option<PathBuf>,
        /// Read the chain in this PostgreSQL database instead [alone: STAGE0_DATABASE_URL]
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        database: Option<String>,
    },
    /// Print records readably (the log's place goes to stderr)
    Show {
        /// Only the last N records (of those selected)
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Only the records of the calls this request id took part in
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// The log file [default: STAGE0_AUDIT_LOG, else the per-user default]
        path: Option<PathBuf>,
        /// Read the chain in this PostgreSQL database instead [alone: STAGE0_DATABASE_URL]
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        database: Option<String>,
    },
    /// Write the chain of a PostgreSQL database to stdout as JSON Lines, the file log's format
    /// (which `audit verify FILE` accepts)
    Export {
        /// The database [alone: STAGE0_DATABASE_URL]
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        database: Option<String>,
    },
}

/// `audit verify|show|export`: exit 0, or 1 for a log that does not verify.
fn audit_command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { path, database } => {
            audit_command::verify(Source::new(path, database)?)
        }
        AuditCommand::Show {
            last,
            request_id,
            path,
            database,
        } => audit_command::show(
            Source::new(path, database)?,
            &Selection { request_id, last },
        ),
        AuditCommand::Export { database } => {
            audit_command::export(database.filter(|url| !url.is_empty()))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Some(Command::Http { listen }) => Some(*listen),
        _ => None,
    };
    let command = match cli.command {
        Some(Command::Audit(command)) => Some(audit_command(command)),
        Some(Command::Policy(command)) => Some(policy_command(command)),
        Some(Command::Http { .. }) | None => None,
    };

    if let Some(done) = command {
        return match done {
            Ok(code) => code,
            Err(error) => {
                eprintln!("mcp-server-stage0: {}", escaped(format_args!("{error:#}")));
                ExitCode::from(2)
            }
        };
    }
    // One thread runs every task: a stdio server has one client, and its work per call is a few
    // microseconds of CPU between waits on the pipe or on Stage0, so worker threads would only
    // add a hand-off (a thread wake-up) to every message. Calls still run concurrently: each is a
    // task, and one waiting on Stage0 yields to the others. Blocking stdio, when stdin or stdout
    // is not a pipe, runs on Tokio's blocking pool as before; the audit log has its own writer
    // thread. Measured in BENCHMARKS.md.
    // Over HTTP many clients call at once, and a worker thread per core serves them.
    let runtime = match listen {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(_) => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("a Tokio runtime");
    match runtime.block_on(run(listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-server-stage0: {}", escaped(format_args!("{error:#}")));
            ExitCode::from(2)
        }
    }
}

/// `policy validate` and `policy eval`: exit 0, or 1 for an invalid policy.
fn policy_command(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_lookup(
        DotEnv::read(Path::new(".env"), dotenv::environment).lookup(dotenv::environment),
    )?;
    let configured_schema = config
        .policy_files
        .as_ref()
        .and_then(|files| files.schema.clone());
    match command {
        PolicyCommand::Validate { schema, paths } => {
            let schema = schema.or(configured_schema);
            let paths = if paths.is_empty() {
                let configured = [&config.policy_files, &config.shadow_policy_files];
                let paths: Vec<PathBuf> = configured
                    .into_iter()
                    .flatten()
                    .map(|files| files.policies.clone())
                    .collect();
                anyhow::ensure!(
                    !paths.is_empty(),
                    "no policy given, and STAGE0_POLICY is not set"
                );
                paths
            } else {
                paths
            };
            let mut code = ExitCode::SUCCESS;
            for path in paths {
                match CedarPolicy::load(&path, schema.as_deref()) {
                    Ok(policy) => println!("ok: {}: {}", escaped(path.display()), policy.version()),
                    Err(error) => {
                        println!("INVALID {}: {}", escaped(path.display()), escaped(&error));
                        code = ExitCode::from(1);
                    }
                }
            }
            Ok(code)
        }
        PolicyCommand::Eval {
            tool,
            arguments,
            role,
            retry_count,
            policy,
            schema,
        } => {
            let path = policy
                .or(config.policy_files.map(|files| files.policies))
                .context("no --policy given, and STAGE0_POLICY is not set")?;
            let schema = schema.or(configured_schema);
            let policy = match CedarPolicy::load(&path, schema.as_deref()) {
                Ok(policy) => policy,
                Err(error) => {
                    println!("INVALID {}: {}", escaped(path.display()), escaped(&error));
                    return Ok(ExitCode::from(1));
                }
            };
            let role = match role {
                Some(role) => role
                    .parse::<ActorRole>()
                    .map_err(|_| anyhow::anyhow!("--role must be viewer, developer or admin"))?,
                None => config.operator.actor_role,
            };
            let call = EvalCall {
                tool,
                arguments: serde_json::from_str(&arguments).context("--arguments is not JSON")?,
                role,
                actor_id: config.operator.actor_id,
                retry_count,
            };
            let evaluation = policy_command::eval(&policy, &call).map_err(anyhow::Error::msg)?;
            let verdict = &evaluation.response;
            println!(
                "{} ({}) by {}\npolicies: {}\nreason: {}",
                verdict.verdict,
                verdict.decision,
                verdict.policy_version,
                escaped(evaluation.determining.join(", ")),
                escaped(&verdict.reason)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves stdio, or HTTP when `http` is `Some` (with the `--listen` address, if given).
async fn run(http: Option<Option<std::net::SocketAddr>>) -> anyhow::Result<()> {
    // Registered before anything else, so a SIGTERM during start-up is a clean stop too.
    let shutdown = CancellationToken::new();
    let signals = Signals::register().context("cannot install signal handlers")?;
    tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    // Only ./.env, as the original reads it, and only what it may set (src/dotenv.rs): it is
    // read, never exported, so no proxy or TLS variable of it reaches the HTTP client.
    let dotenv = DotEnv::read(Path::new(".env"), dotenv::environment);
    let config = Config::from_lookup(dotenv.lookup(dotenv::environment));
    // Logging first, so what .env set or was refused is logged even when the config is unusable.
    init_logging(config.as_ref().is_ok_and(|config| config.debug));
    for note in dotenv.notes() {
        note.log();
    }
    let config = match http {
        None => config?,
        Some(_) => config?.serving_http(),
    };
    if http.is_some() && config.http.oauth.is_some() && config.approvals != Approvals::Off {
        tracing::warn!(
            "STAGE0_APPROVALS=on over HTTP with OAuth: a DEFER is put to the calling client, so \
             an approval is self-approval by the token holder whose call was deferred, not a \
             review by someone else (docs/http.md)"
        );
    }
    let guard = config
        .guard()
        .context("cannot set up the policy decision point")?;
    let mode = match guard.mode() {
        Mode::Stage0 => "live Stage0 API",
        Mode::Simulator => "simulator (no STAGE0_API_KEY)",
        Mode::Cedar => "local Cedar policy",
        Mode::CedarStage0 => "local Cedar policy, then the live Stage0 API",
    };
    tracing::info!(
        base_url = %redact_userinfo(config.base_url.as_str()),
        timeout_ms = config.timeout.as_millis() as u64,
        api_key_set = config.api_key.is_some(),
        actor_role = %config.operator.actor_role,
        actor_id = %escaped(config.operator.actor_id.as_deref().unwrap_or("(unset)")),
        approvals = ?config.approvals,
        audit_log = %match (&config.audit.database, &config.audit.path) {
            (Some(database), _) => database.shown().to_owned(),
            (None, Some(path)) => escaped(path.display()).to_string(),
            (None, None) => "off".to_owned(),
        },
        audit_sync = config.audit.sync,
        max_calls_in_flight = config.max_calls_in_flight,
        from_dotenv = %from_dotenv(&dotenv),
        "starting {SERVER_NAME} {} with the {mode} as policy decision point",
        env!("CARGO_PKG_VERSION"),
    );
    let stop = shutdown.cancelled_owned();
    let server = stage0_server(guard);
    if matches!(server.guard().mode(), Mode::Cedar | Mode::CedarStage0) {
        tokio::spawn(reload_on_hangup(Arc::clone(server.guard())));
    }
    match http {
        None => server.serve_stdio(stop).await?,
        Some(listen) => {
            let mut http = config.http.clone();
            if let Some(listen) = listen {
                http.listen = listen;
            }
            server.serve_http(http, stop).await?;
        }
    }
    Ok(())
}

/// The settings taken from ./.env, for the start-up line: `none`, or their names.
fn from_dotenv(dotenv: &DotEnv) -> String {
    let names: Vec<&str> = dotenv.names().collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
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

/// Reads the Cedar policy again on every SIGHUP (Unix), for as long as the server runs.
async fn reload_on_hangup(guard: Arc<Guard>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot install the SIGHUP handler: no policy reloads");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            guard.reload_policy().await;
        }
    }
    #[cfg(not(unix))]
    let _ = guard;
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
