//! No route of a server built with the library reaches a tool body without a verdict.
//!
//! A server is built with [`GuardedServer::builder`] from a tool with a counting body and a
//! report-only tool, and a real rmcp client calls every tool that `tools/list` shows, over an
//! in-process pipe. With a policy decision point that cannot answer (Stage0 at a port where
//! nothing listens: every verdict is `DENY` / `ERROR`), no call may run a body; with the simulator,
//! which allows the counting tool, exactly the allowed calls do, which shows the count can move.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use stage0_guard::approval::Approvals;
use stage0_guard::claims::Operator;
use stage0_guard::policy::PolicyClient;
use stage0_guard::policy::http::{ApiKey, HttpPolicyClient};
use stage0_guard::{Guard, GuardedServer, GuardedTool, Intent, Permit, ToolIntent, ToolOutput};

/// How often a [`Counted`] body ran, in this test binary.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// The longest any step may take.
const BOUND: Duration = Duration::from_secs(10);

/// A tool whose body only counts that it ran.
#[derive(Deserialize, serde::Serialize, JsonSchema)]
struct Counted {
    /// Anything
    note: String,
}

impl ToolIntent for Counted {
    const NAME: &'static str = "counted";
    const TITLE: &'static str = "Counted";
    const DESCRIPTION: &'static str = "Counts the runs of its body";

    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Count one run for {}", self.note),
            success_criteria: vec!["Counted".to_owned()],
            ..Intent::default()
        }
    }
}

impl GuardedTool for Counted {
    type Error = Infallible;

    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(ToolOutput::text("counted"))
    }
}

/// A report-only tool: it has no body at all.
#[derive(Deserialize, serde::Serialize, JsonSchema)]
struct Asked {
    /// Anything
    note: String,
}

impl ToolIntent for Asked {
    const NAME: &'static str = "asked";
    const TITLE: &'static str = "Asked";
    const DESCRIPTION: &'static str = "Only asks for a verdict";

    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Ask about {}", self.note),
            success_criteria: vec!["Answered".to_owned()],
            ..Intent::default()
        }
    }
}

/// A base URL on 127.0.0.1 where nothing listens.
fn refused_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    let port = listener.local_addr().expect("a bound address").port();
    format!("http://127.0.0.1:{port}")
}

/// Calls every tool the server lists, once, and returns each result's `structuredContent`.
async fn call_every_listed_tool(policy: PolicyClient) -> Vec<(String, Value)> {
    let guard = Guard::new(policy, Operator::default(), Approvals::Off);
    let server = GuardedServer::builder(guard)
        .tool::<Counted>()
        .report::<Asked>()
        .build();
    let (server_end, client_end) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        let running = server
            .serve(server_end)
            .await
            .expect("the server initialises");
        running.waiting().await.expect("the server stops")
    });
    let client = tokio::time::timeout(BOUND, ().serve(client_end))
        .await
        .expect("initialize in time")
        .expect("the client initialises");
    let tools = tokio::time::timeout(BOUND, client.list_all_tools())
        .await
        .expect("tools/list in time")
        .expect("tools/list");
    let mut results = Vec::new();
    for tool in tools {
        let arguments = json!({"note": "a note long enough"});
        let params = CallToolRequestParams::new(tool.name.to_string())
            .with_arguments(arguments.as_object().cloned().expect("an object"));
        let result = tokio::time::timeout(BOUND, client.call_tool(params))
            .await
            .expect("tools/call in time")
            .expect("tools/call");
        let report = result
            .structured_content
            .expect("every result carries a verdict");
        results.push((tool.name.to_string(), report));
    }
    client.cancel().await.expect("the client stops");
    let _ = tokio::time::timeout(BOUND, serving).await;
    results
}

#[tokio::test]
async fn no_listed_tool_runs_a_body_without_an_allow_and_allowed_ones_run_once() {
    let key = ApiKey::new("sk-routes-test".to_owned());
    let base_url = refused_base_url().parse().expect("a URL");
    let unreachable =
        HttpPolicyClient::new(&base_url, Duration::from_millis(500), key).expect("an HTTP client");
    let denied = call_every_listed_tool(PolicyClient::Live(unreachable)).await;
    let names: Vec<&str> = denied.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["asked", "counted"], "tools/list shows both tools");
    for (name, report) in &denied {
        assert_eq!(report["verdict"], "DENY", "{name}: {report}");
        assert_eq!(report["executed"], false, "{name}: {report}");
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 0, "no body ran without ALLOW");

    let allowed = call_every_listed_tool(PolicyClient::Simulator).await;
    for (name, report) in &allowed {
        assert_eq!(report["verdict"], "ALLOW", "{name}: {report}");
    }
    let executed: Vec<bool> = allowed
        .iter()
        .map(|(_, report)| report["executed"] == true)
        .collect();
    assert_eq!(executed, [false, true], "only the tool with a body runs it");
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "the allowed call ran its body once"
    );
}
