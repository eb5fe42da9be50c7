//! What the three demo binaries share: a real MCP session with the real server, and the printing.
//!
//! Each demo is an MCP client of the server ([`stage0_server`]), connected in process over `tokio::io::duplex`
//! (the shape of rmcp's own tests), so every call goes through the same `tools/call` handling and
//! the same guard as a call from Claude or any other client. The demo reads the verdict from the
//! result's `structuredContent`, as a client that acts on verdicts would, prints it in the shape of
//! the TypeScript original's demos, and checks it saw the verdict it demonstrates.
//!
//! The client speaks MCP 2026-07-28 ([`PROTOCOL_REVISION`]) and has a [`ScriptedHuman`] behind
//! it: it declares the elicitation capability, so the server can ask for a human review of a
//! `DEFER` (over MRTR, which rmcp's client drives), and answers from a script that
//! the demo sets before the call, printing what the human was shown.
//!
//! Exit status (see [`run`]): 0 when the demo saw what it demonstrates, 1 otherwise (wrong verdict,
//! bad configuration, broken session), with the reason on stderr. Nothing here initialises
//! logging, so stdout holds the demo and nothing else.

use std::collections::VecDeque;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use mcp_server_stage0::dotenv::{self, DotEnv};
use mcp_server_stage0::server::stage0_server;
use rmcp::model::ProtocolVersion;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ContentBlock, ElicitRequestParams,
    ElicitResult, ElicitationAction, Implementation,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, RequestContext, RoleClient, RunningService,
};
use rmcp::{ClientHandler, RoleServer, ServiceExt};
use serde::Deserialize;
use serde_json::{Number, Value};
use stage0_guard::audit::AuditLog;
use stage0_guard::config::Config;
use stage0_guard::policy::Mode;
use stage0_guard::policy::wire::{Decision, Verdict};
use tokio::task::JoinHandle;

/// The MCP revision the demos speak (see [`Session::start`]); approvals go through MRTR.
pub const PROTOCOL_REVISION: ProtocolVersion = ProtocolVersion::V_2026_07_28;

/// Bytes buffered in each direction of the in-process pipe between client and server.
const PIPE_BYTES: usize = 64 * 1024;

/// How many lines of a tool's output the demo shows.
const OUTPUT_LINES: usize = 5;

/// The width of the `=` and `-` rules, as in the original.
const RULE_WIDTH: usize = 70;

/// Runs `demo` against a fresh server and turns its outcome into the exit status.
///
/// Reads the `STAGE0_*` variables, and what `./.env` may add under them, as the server binary
/// does, so the demo asks the live Stage0 API when `STAGE0_API_KEY` is set and the simulator
/// otherwise. A note on where the verdicts came from follows the demo's output either way.
pub async fn run(demo: impl AsyncFnOnce(&Session) -> anyhow::Result<()>) -> ExitCode {
    let outcome = async {
        let session = Session::start().await?;
        let mode = session.mode;
        let outcome = demo(&session).await;
        let audit = session.audit.clone();
        let closed = session.close().await;
        print_mode_note(mode);
        print_audit_note(audit.as_ref());
        outcome.and(closed)
    }
    .await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}: {error:#}", env!("CARGO_BIN_NAME"));
            ExitCode::FAILURE
        }
    }
}

/// An MCP client session with the server running in this process.
pub struct Session {
    client: RunningService<RoleClient, ScriptedHuman>,
    server: JoinHandle<anyhow::Result<()>>,
    mode: Mode,
    /// The audit log the server records every call in, as the binary does (`STAGE0_AUDIT_LOG`).
    audit: Option<AuditLog>,
    /// The person at the client, who answers approval requests.
    // Only demo_defer scripts answers; the other demos compile this module too.
    #[allow(dead_code)]
    pub human: ScriptedHuman,
}

impl Session {
    /// Builds the server exactly as the stdio binary does and connects a client to it.
    async fn start() -> anyhow::Result<Self> {
        // Only ./.env and only what it may set, as the server binary reads it; what it set or
        // was refused goes to stderr, so stdout holds the demo and nothing else.
        let dotenv = DotEnv::read(Path::new(".env"), dotenv::environment);
        for note in dotenv.notes() {
            eprintln!("{}: {note}", env!("CARGO_BIN_NAME"));
        }
        let config = Config::from_lookup(dotenv.lookup(dotenv::environment))?;
        let guard = config
            .guard()
            .context("cannot set up the policy decision point")?;
        let audit = guard.audit().cloned();
        let mode = guard.mode();
        let server = stage0_server(guard);

        let (server_transport, client_transport) = tokio::io::duplex(PIPE_BYTES);
        // The server must answer `initialize` while the client sends it, so it runs on its own task.
        let server = tokio::spawn(async move {
            let running: RunningService<RoleServer, _> = server
                .serve(server_transport)
                .await
                .context("the server did not initialise")?;
            running.waiting().await?;
            Ok(())
        });
        let human = ScriptedHuman::default();
        // The current revision, as the official SDKs' default clients speak it: no `initialize`,
        // each request says its protocol version and capabilities, and a human is asked through
        // MRTR (an `input_required` result and a retry), which rmcp's client drives.
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![PROTOCOL_REVISION],
        };
        let client = human
            .clone()
            .serve_with_lifecycle(client_transport, lifecycle)
            .await
            .context("the client did not start its session")?;
        Ok(Session {
            client,
            server,
            mode,
            audit,
            human,
        })
    }

    /// Calls `tool` with `arguments` (a JSON object), prints the verdict and returns it.
    ///
    /// # Errors
    ///
    /// When the call fails at the protocol level, or its result carries no verdict (invalid
    /// arguments, for instance); the error holds the result's text.
    pub async fn call_tool(&self, tool: &'static str, arguments: Value) -> anyhow::Result<Report> {
        println!("Calling Stage0 to check authorization...");
        println!("  tools/call {tool} {arguments}");
        println!();
        let Value::Object(arguments) = arguments else {
            bail!("the arguments of `{tool}` must be a JSON object, got {arguments}");
        };
        let result = self
            .client
            .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments))
            .await
            .with_context(|| format!("`tools/call {tool}` failed"))?;
        let Some(structured) = result.structured_content else {
            let text: Vec<&str> = result
                .content
                .iter()
                .filter_map(ContentBlock::as_text)
                .map(|text| text.text.as_str())
                .collect();
            bail!("`{tool}` returned no verdict: {}", text.join("\n"));
        };
        let report: Report = serde_json::from_value(structured)
            .with_context(|| format!("the structuredContent of `{tool}` is not a verdict"))?;
        report.print();
        Ok(report)
    }

    /// Ends the session: the client hangs up, then the server sees the pipe close and stops.
    async fn close(self) -> anyhow::Result<()> {
        self.client.cancel().await?;
        self.server.await??;
        if let Some(log) = &self.audit {
            log.close();
        }
        Ok(())
    }
}

/// The person at the MCP client: answers each approval request (an elicitation) with the next
/// answer of its script, or declines when the script is empty, and prints what it was shown.
#[derive(Debug, Clone, Default)]
pub struct ScriptedHuman {
    answers: Arc<Mutex<VecDeque<Value>>>,
}

impl ScriptedHuman {
    /// Queues the form content (`approve`, `name`, `reason`) of the next approval request.
    #[allow(dead_code)] // as `Session::human`: only demo_defer uses it
    pub fn will_answer(&self, form: Value) {
        self.answers
            .lock()
            .expect("the script lock")
            .push_back(form);
    }
}

impl ClientHandler for ScriptedHuman {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_elicitation().build(),
            Implementation::new("stage0-demo", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        if let ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            println!(
                "👤 The server asks the human at the client (MCP {}: an input request of an \
                 input_required result, answered in a retry):",
                PROTOCOL_REVISION.as_str()
            );
            for line in message.lines() {
                println!("{}", format!("   │ {line}").trim_end());
            }
        }
        let answer = self.answers.lock().expect("the script lock").pop_front();
        Ok(match answer {
            Some(form) => {
                println!("👤 The human answers: {form}");
                println!();
                ElicitResult::new(ElicitationAction::Accept).with_content(form)
            }
            None => {
                println!("👤 The human declines to review.");
                println!();
                ElicitResult::new(ElicitationAction::Decline)
            }
        })
    }
}

/// The `structuredContent` of a guarded tool result: the verdict and what happened to the call.
///
/// Field names are those of the server's output schema (`ToolReport` in `src/report.rs`); fields
/// the demos do not show (guardrails, cost estimate, ...) are ignored.
#[derive(Debug, Deserialize)]
pub struct Report {
    pub tool: String,
    pub executed: bool,
    /// `stage0` or `simulator`.
    pub mode: String,
    pub verdict: String,
    pub decision: String,
    pub reason: String,
    pub request_id: String,
    pub policy_version: String,
    #[serde(default)]
    pub risk_score: Option<Number>,
    #[serde(default)]
    pub high_risk: Option<bool>,
    #[serde(default)]
    pub issues: Vec<Issue>,
    #[serde(default)]
    pub clarifying_questions: Vec<String>,
    #[serde(default)]
    pub defer_questions: Vec<String>,
    /// What the tool body returned, when it ran and succeeded.
    #[serde(default)]
    pub output: Option<String>,
    /// Why the tool body failed, when it ran and failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Where the authorization context came from (effective and claimed values).
    #[serde(default)]
    pub provenance: Value,
    /// How asking a human ended, when the call was deferred.
    #[serde(default)]
    pub approval: Option<Approval>,
}

/// The `approval` of a deferred call.
#[derive(Debug, Deserialize)]
pub struct Approval {
    /// `approved`, `rejected`, `declined`, `unsupported`, ...
    pub outcome: String,
    #[serde(default)]
    pub approval: Option<HumanApproval>,
    /// Who rejected and why, or what went wrong.
    #[serde(default)]
    pub detail: Option<String>,
}

/// Who approved, when and why.
#[derive(Debug, Deserialize)]
pub struct HumanApproval {
    pub approved_by: String,
    pub approved_at: String,
    pub approval_reason: String,
}

/// One finding of the policy evaluation.
#[derive(Debug, Deserialize)]
pub struct Issue {
    pub code: String,
    pub severity: String,
    pub message: String,
}

impl Report {
    /// Whether `code` is one of the issues, or the code the reason starts with.
    fn has_code(&self, code: &str) -> bool {
        self.issues.iter().any(|issue| issue.code == code) || self.reason.starts_with(code)
    }

    fn print(&self) {
        println!("Response from Stage0:");
        println!("{}", "-".repeat(RULE_WIDTH));
        println!("Verdict: {}", self.verdict);
        println!("Decision: {}", self.decision);
        println!("Reason: {}", self.reason);
        println!("Request ID: {}", self.request_id);
        let policy_version = match self.policy_version.as_str() {
            "" => "(none)",
            version => version,
        };
        println!("Policy Version: {policy_version}");
        if let Some(risk_score) = &self.risk_score {
            println!("Risk Score: {risk_score}");
        }
        if let Some(high_risk) = self.high_risk {
            println!("High Risk: {high_risk}");
        }
        println!("Mode: {}", self.mode);
        println!("Tool: {} (executed: {})", self.tool, self.executed);
        if let Some(retry) = self.provenance.get("retry_count") {
            println!(
                "Retry count: {} used (agent claimed {}, server saw {} earlier attempts)",
                retry["effective"], retry["claimed"], retry["observed"]
            );
        }
        if let Some(approval) = &self.approval {
            match &approval.approval {
                Some(human) => println!(
                    "Human review: {} by {} at {} ({})",
                    approval.outcome, human.approved_by, human.approved_at, human.approval_reason
                ),
                None => match &approval.detail {
                    Some(detail) => println!("Human review: {} ({detail})", approval.outcome),
                    None => println!("Human review: {}", approval.outcome),
                },
            }
        }
        if !self.issues.is_empty() {
            println!();
            println!("Issues detected:");
            for issue in &self.issues {
                println!("  [{}] {}: {}", issue.severity, issue.code, issue.message);
            }
        }
        print_questions("Clarifying questions:", &self.clarifying_questions);
        print_questions("Questions for the reviewer:", &self.defer_questions);
        println!("{}", "-".repeat(RULE_WIDTH));
        if let Some(output) = &self.output {
            let lines: Vec<&str> = output.lines().collect();
            println!();
            if lines.len() > OUTPUT_LINES {
                println!(
                    "Tool output (first {OUTPUT_LINES} of {} lines):",
                    lines.len()
                );
            } else {
                println!("Tool output:");
            }
            for line in lines.iter().take(OUTPUT_LINES) {
                println!("{}", format!("  | {line}").trim_end());
            }
        }
        if let Some(error) = &self.error {
            println!();
            println!("Tool error: {error}");
        }
        println!();
    }
}

fn print_questions(heading: &str, questions: &[String]) {
    if questions.is_empty() {
        return;
    }
    println!();
    println!("{heading}");
    for question in questions {
        println!("  ? {question}");
    }
}

/// Prints the demo's title between `=` rules and the scenario it plays.
pub fn banner(title: &str, scenario: &str) {
    let rule = "=".repeat(RULE_WIDTH);
    println!("{rule}");
    println!("DEMO: {title}");
    println!("{rule}");
    println!();
    println!("Scenario: {scenario}");
    println!();
}

/// Prints what the verdict means for the agent: a headline, its consequence and the reasons why.
pub fn explain(headline: &str, consequence: &str, because: &str, reasons: &[&str]) {
    println!("{headline}");
    println!("{consequence}");
    println!("{because}");
    for reason in reasons {
        println!("  - {reason}");
    }
    println!();
}

/// Checks that `report` is the verdict the demo shows: `verdict`, a real policy decision (not a
/// fail-closed `ERROR`), `code` among its issues when given, and no tool body run without `ALLOW`.
///
/// # Errors
///
/// What was expected and what was seen, for stderr.
pub fn expect_verdict(report: &Report, verdict: Verdict, code: Option<&str>) -> anyhow::Result<()> {
    let expected = match code {
        Some(code) => format!("{verdict} ({code})"),
        None => verdict.to_string(),
    };
    let seen = format!(
        "{} / {} from `{}` in {} mode: {}",
        report.verdict, report.decision, report.tool, report.mode, report.reason
    );
    if report.verdict != verdict.as_str() || code.is_some_and(|code| !report.has_code(code)) {
        bail!("expected {expected}, saw {seen}");
    }
    if report.decision == Decision::Error.as_str() {
        bail!("expected {expected} decided by the policy, saw a fail-closed {seen}");
    }
    if verdict != Verdict::Allow && report.executed {
        bail!("the tool body ran without ALLOW: {seen}");
    }
    Ok(())
}

/// Says where the verdicts came from; with a live key, that they depend on the account's policy.
fn print_mode_note(mode: Mode) {
    match mode {
        Mode::Simulator => println!(
            "Note: these verdicts came from the built-in simulator (STAGE0_API_KEY is not set),\n\
             whose rules are deterministic. With a key the live Stage0 API decides, and the\n\
             actual verdict depends on your Stage0 plan and policy configuration."
        ),
        Mode::Stage0 => println!(
            "Note: these verdicts came from the live Stage0 API (STAGE0_API_KEY is set). The\n\
             actual verdict depends on your Stage0 plan and policy configuration:\n\
             \x20 - Pro plans may return DEFER for vague requests with clarifying_questions\n\
             \x20 - Free/Starter plans may return ALLOW with clarifying questions, or DENY,\n\
             \x20   depending on policy settings\n\
             Unset STAGE0_API_KEY to see the simulator's deterministic verdicts."
        ),
        Mode::Cedar | Mode::CedarStage0 => println!(
            "Note: these verdicts came from the local Cedar policy named by STAGE0_POLICY{}.
             They are what that policy says; unset STAGE0_POLICY to see the simulator's.",
            if mode == Mode::CedarStage0 {
                ", then the live Stage0 API (the stricter verdict wins)"
            } else {
                ""
            }
        ),
    }
}

/// Where the calls were recorded, and how to check the record.
fn print_audit_note(audit: Option<&AuditLog>) {
    match audit.map(AuditLog::path) {
        Some(Some(path)) => println!(
            "\nEvery call above is recorded in the audit log {path}.\n\
             Check its hash chain with `cargo run -- audit verify {path}`, read it with `audit show`.",
            path = path.display()
        ),
        Some(None) => println!(
            "\nEvery call above is recorded in the audit chain in PostgreSQL (STAGE0_DATABASE_URL).\n\
             Check it with `cargo run -- audit verify --database`, read it with `audit show --database`."
        ),
        None => println!("\nThe audit log is off (STAGE0_AUDIT_LOG=off)."),
    }
}
