//! The built server binary over real MCP client sessions (rmcp's `TokioChildProcess`).
//!
//! What a client can see: the tool list and server info, the simulator's verdicts for every tool,
//! the guard in front of every tool body when a (fake) Stage0 answers, invalid arguments, and the
//! secrecy of the API key. The fake Stage0 is a wiremock server on 127.0.0.1: nothing leaves the
//! machine. Every wait is bounded (see `common::BOUND`).

mod common;

use std::collections::BTreeSet;

use common::{Outcome, SECRET_KEY, STAND_IN, Session, bounded, live_env, refused_base_url};
use rmcp::model::ErrorCode;
use rmcp::service::ServiceError;
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SIX_TOOLS: [&str; 6] = [
    "research-topic",
    "publish-content",
    "deploy-changes",
    "managed-deploy",
    "retry-workflow",
    "check-authorization",
];

// ---------------------------------------------------------------------------------------------
// Shared assertions
// ---------------------------------------------------------------------------------------------

/// Checks the verdict fields every guarded result carries in `structuredContent`.
fn assert_verdict(outcome: &Outcome, tool: &str, mode: &str, verdict: &str, decision: &str) {
    let s = &outcome.structured;
    assert!(s.is_object(), "no structured content: {outcome:#?}");
    assert_eq!(s["tool"], tool, "{outcome:#?}");
    assert_eq!(s["mode"], mode, "{outcome:#?}");
    assert_eq!(s["verdict"], verdict, "{outcome:#?}");
    assert_eq!(s["decision"], decision, "{outcome:#?}");
    assert!(!outcome.field("request_id").is_empty(), "{outcome:#?}");
    assert!(s["policy_version"].is_string(), "{outcome:#?}");
    assert!(!outcome.field("reason").is_empty(), "{outcome:#?}");
}

/// The tool body ran: `executed`, its output in both the text and the structured content.
fn assert_executed(outcome: &Outcome) {
    assert!(!outcome.is_error, "{outcome:#?}");
    assert_eq!(outcome.structured["executed"], true, "{outcome:#?}");
    assert!(outcome.field("output").contains(STAND_IN), "{outcome:#?}");
    assert!(
        outcome.text.starts_with("✅ ALLOWED by Stage0"),
        "{outcome:#?}"
    );
    assert!(outcome.text.contains(STAND_IN), "{outcome:#?}");
}

/// The tool body did not run: an error result, nothing of the body's output anywhere.
fn assert_not_executed(outcome: &Outcome, text_prefix: &str) {
    assert!(
        outcome.is_error,
        "a blocked call must be isError: {outcome:#?}"
    );
    assert_eq!(outcome.structured["executed"], false, "{outcome:#?}");
    assert!(
        outcome.structured.get("output").is_none(),
        "a blocked call has no output: {outcome:#?}"
    );
    assert!(outcome.text.starts_with(text_prefix), "{outcome:#?}");
    assert!(!outcome.raw.contains(STAND_IN), "{outcome:#?}");
}

fn header<'r>(request: &'r Request, name: &str) -> &'r str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("the /check request has no `{name}` header"))
        .to_str()
        .expect("a visible ASCII header value")
}

/// The request is a `/check` call (`docs/contract.md` §3) carrying `body` exactly; returns its
/// `X-Request-Id`.
fn assert_check_request(request: &Request, body: &Value) -> String {
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), "/check");
    assert_eq!(header(request, "x-api-key"), SECRET_KEY);
    assert!(
        header(request, "content-type").starts_with("application/json"),
        "content-type: {}",
        header(request, "content-type")
    );
    let request_id = header(request, "x-request-id");
    let uuid = Uuid::parse_str(request_id).expect("X-Request-Id is a UUID");
    assert_eq!(uuid.get_version_num(), 4, "X-Request-Id is a UUID v4");
    let sent: Value = request.body_json().expect("the /check body is JSON");
    assert_eq!(
        &sent, body,
        "the /check body differs from docs/contract.md §2"
    );
    request_id.to_owned()
}

/// Every request the fake Stage0 received, in arrival order.
async fn requests(fake: &MockServer) -> Vec<Request> {
    bounded("the fake's request log", fake.received_requests())
        .await
        .expect("the fake records requests")
}

/// A fake Stage0 on 127.0.0.1 answering `POST /check` with `answers` in turn, each once, and
/// with the last one from then on.
async fn fake_stage0(answers: Vec<ResponseTemplate>) -> MockServer {
    let start = async {
        let fake = MockServer::start().await;
        let last = answers.len().saturating_sub(1);
        for (index, answer) in answers.into_iter().enumerate() {
            let mock = Mock::given(method("POST"))
                .and(path("/check"))
                .respond_with(answer);
            // Mocks that match are tried in the order they were mounted.
            let mock = if index < last {
                mock.up_to_n_times(1)
            } else {
                mock
            };
            mock.mount(&fake).await;
        }
        fake
    };
    bounded("the fake Stage0 to start", start).await
}

fn allow_body() -> Value {
    json!({
        "verdict": "ALLOW",
        "decision": "GO",
        "reason": "Fake Stage0 allows this",
        "request_id": "fake-req-allow",
        "policy_version": "fake-pack-1",
        "risk_score": 5,
        "high_risk": false
    })
}

// ---------------------------------------------------------------------------------------------
// The six tools, the intents they send, and the calls used throughout
// ---------------------------------------------------------------------------------------------

/// One tool call and the exact `/check` body `docs/contract.md` §2 says it sends.
struct Call {
    tool: &'static str,
    arguments: Value,
    body: Value,
}

/// One call of each of the five tools that execute something, with optional arguments left out
/// so the defaults are sent.
fn executing_calls() -> Vec<Call> {
    vec![
        Call {
            tool: "research-topic",
            arguments: json!({"topic": "Rust async runtimes"}),
            body: json!({
                "goal": "Research and summarize: Rust async runtimes",
                "success_criteria": ["Summary is accurate and relevant", "No external side effects"],
                "constraints": ["read-only"],
                "tools": ["web_search", "read_file"],
                "side_effects": [],
                "context": {},
                "pro": false
            }),
        },
        Call {
            tool: "publish-content",
            arguments: json!({"content": "Release notes for 1.2", "channel": "blog"}),
            body: json!({
                "goal": "Publish content to blog",
                "success_criteria": ["Content published successfully"],
                "constraints": [],
                "tools": ["shell", "git"],
                "side_effects": ["publish"],
                "context": {},
                "pro": false
            }),
        },
        Call {
            tool: "deploy-changes",
            arguments: json!({
                "serviceName": "billing-api",
                "environment": "production",
                "changes": "Bump the TLS library"
            }),
            body: json!({
                "goal": "Deploy billing-api to production",
                "success_criteria": ["Deployment completes successfully"],
                "constraints": [],
                "tools": ["shell", "kubectl"],
                "side_effects": ["deploy"],
                "context": {
                    "environment": "production",
                    "actor_role": "viewer",
                    "claimed_actor_role": "viewer"
                },
                "pro": false
            }),
        },
        Call {
            tool: "managed-deploy",
            arguments: json!({
                "serviceName": "billing-api",
                "environment": "production",
                "changes": "Bump the TLS library",
                "actorRole": "viewer",
                "approvalStatus": "pending"
            }),
            body: json!({
                "goal": "Deploy billing-api to production as viewer",
                "success_criteria": [
                    "Deployment completes successfully",
                    "No unauthorized access to resources"
                ],
                "constraints": ["production_deployment", "approval_required", "read_only_role"],
                "tools": ["shell", "kubectl", "terraform"],
                "side_effects": ["deploy"],
                "context": {
                    "actor_role": "viewer",
                    "claimed_actor_role": "viewer",
                    "approval_status": "pending",
                    "claimed_approval_status": "pending",
                    "environment": "production",
                    "resource_scope": "all"
                },
                "pro": false
            }),
        },
        Call {
            tool: "retry-workflow",
            arguments: json!({"workflowId": "nightly-etl", "retryCount": 2}),
            body: json!({
                "goal": "Retry workflow nightly-etl (attempt 3)",
                "success_criteria": ["Workflow completes successfully"],
                "constraints": ["max_retries: 5"],
                "tools": ["shell", "api_call"],
                "side_effects": ["loop"],
                "context": {"run_id": "nightly-etl", "retry_count": 2, "claimed_retry_count": 2},
                "pro": false
            }),
        },
    ]
}

/// Calls with optional arguments given, and `check-authorization`, with the bodies they send.
fn more_calls() -> Vec<Call> {
    vec![
        Call {
            tool: "deploy-changes",
            arguments: json!({
                "serviceName": "web",
                "environment": "staging",
                "changes": "New banner",
                "actorRole": "admin"
            }),
            body: json!({
                "goal": "Deploy web to staging",
                "success_criteria": ["Deployment completes successfully"],
                "constraints": [],
                "tools": ["shell", "kubectl"],
                "side_effects": ["deploy"],
                "context": {
                    "environment": "staging",
                    "actor_role": "admin",
                    "claimed_actor_role": "admin"
                },
                "pro": false
            }),
        },
        Call {
            tool: "managed-deploy",
            arguments: json!({
                "serviceName": "web",
                "environment": "staging",
                "changes": "New banner",
                "actorRole": "admin",
                "approvalStatus": "approved",
                "resourceScope": "team-a"
            }),
            body: json!({
                "goal": "Deploy web to staging as admin",
                "success_criteria": [
                    "Deployment completes successfully",
                    "No unauthorized access to resources"
                ],
                "constraints": [],
                "tools": ["shell", "kubectl", "terraform"],
                "side_effects": ["deploy"],
                "context": {
                    "actor_role": "admin",
                    "claimed_actor_role": "admin",
                    "approval_status": "pending",
                    "claimed_approval_status": "approved",
                    "environment": "staging",
                    "resource_scope": "team-a"
                },
                "pro": false
            }),
        },
        Call {
            tool: "managed-deploy",
            arguments: json!({
                "serviceName": "web",
                "environment": "production",
                "changes": "New banner",
                "actorRole": "developer",
                "approvalStatus": "approved"
            }),
            body: json!({
                "goal": "Deploy web to production as developer",
                "success_criteria": [
                    "Deployment completes successfully",
                    "No unauthorized access to resources"
                ],
                "constraints": ["production_deployment", "approval_required"],
                "tools": ["shell", "kubectl", "terraform"],
                "side_effects": ["deploy"],
                "context": {
                    "actor_role": "developer",
                    "claimed_actor_role": "developer",
                    "approval_status": "pending",
                    "claimed_approval_status": "approved",
                    "environment": "production",
                    "resource_scope": "all"
                },
                "pro": false
            }),
        },
        Call {
            tool: "retry-workflow",
            arguments: json!({"workflowId": "W", "retryCount": 0}),
            body: json!({
                // The workflow id is sent in canonical form (ledger.rs): `W` is `w`.
                "goal": "Retry workflow w (attempt 1)",
                "success_criteria": ["Workflow completes successfully"],
                "constraints": ["max_retries: 5"],
                "tools": ["shell", "api_call"],
                "side_effects": ["loop"],
                "context": {"run_id": "w", "retry_count": 0, "claimed_retry_count": 0},
                "pro": false
            }),
        },
        Call {
            tool: "check-authorization",
            arguments: json!({"goal": "Summarize the quarterly sales report", "sideEffects": []}),
            body: json!({
                "goal": "Summarize the quarterly sales report",
                "success_criteria": ["Task completes successfully"],
                "constraints": [],
                "tools": [],
                "side_effects": [],
                "context": {},
                "pro": false
            }),
        },
        Call {
            tool: "check-authorization",
            arguments: json!({
                "goal": "Publish the quarterly sales report",
                "sideEffects": ["publish"],
                "successCriteria": [],
                "retryCount": 3
            }),
            body: json!({
                "goal": "Publish the quarterly sales report",
                "success_criteria": [],
                "constraints": [],
                "tools": [],
                "side_effects": ["publish"],
                "context": {"retry_count": 3},
                "pro": false
            }),
        },
        Call {
            tool: "check-authorization",
            arguments: json!({
                "goal": "Summarize the quarterly sales report",
                "sideEffects": ["loop"],
                "successCriteria": ["Report has totals", "Report is one page"]
            }),
            body: json!({
                "goal": "Summarize the quarterly sales report",
                "success_criteria": ["Report has totals", "Report is one page"],
                "constraints": [],
                "tools": [],
                "side_effects": ["loop"],
                "context": {},
                "pro": false
            }),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// 1. tools/list and initialize
// ---------------------------------------------------------------------------------------------

/// The tool list of a simulator-mode server, as JSON in wire (camelCase) form.
async fn listed_tools() -> Vec<Value> {
    let session = Session::start(&[]).await;
    let tools = bounded("tools/list", session.client.list_all_tools())
        .await
        .expect("tools/list succeeds");
    session.stop().await;
    tools
        .iter()
        .map(|tool| serde_json::to_value(tool).expect("a tool serialises"))
        .collect()
}

fn tool<'t>(tools: &'t [Value], name: &str) -> &'t Value {
    tools
        .iter()
        .find(|tool| tool["name"] == name)
        .unwrap_or_else(|| panic!("`{name}` is not listed"))
}

fn names(value: &Value) -> BTreeSet<String> {
    match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().expect("a string").to_owned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// The allowed string values of `property`, following a `$ref` or `anyOf` / `oneOf` if the
/// schema generator used one; `null` (from an optional field) is not a value.
fn enum_values(schema: &Value, property: &str) -> BTreeSet<String> {
    fn collect(schema: &Value, node: &Value, out: &mut BTreeSet<String>) {
        if let Some(values) = node["enum"].as_array() {
            out.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        if let Some(value) = node["const"].as_str() {
            out.insert(value.to_owned());
        }
        if let Some(reference) = node["$ref"].as_str() {
            let name = reference.rsplit('/').next().expect("a $ref name");
            collect(schema, &schema["$defs"][name], out);
        }
        for key in ["anyOf", "oneOf"] {
            for branch in node[key].as_array().into_iter().flatten() {
                collect(schema, branch, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    collect(schema, &schema["properties"][property], &mut out);
    out
}

#[tokio::test]
async fn tools_list_offers_exactly_the_six_tools_of_the_original() {
    let tools = listed_tools().await;
    let listed: BTreeSet<String> = tools
        .iter()
        .map(|tool| tool["name"].as_str().expect("a tool name").to_owned())
        .collect();
    assert_eq!(listed, set(&SIX_TOOLS));
    assert_eq!(tools.len(), 6, "a tool is listed twice");
}

#[tokio::test]
async fn input_schemas_use_the_original_camel_case_argument_names_and_required_lists() {
    let tools = listed_tools().await;
    let cases: [(&str, &[&str], &[&str]); 6] = [
        ("research-topic", &["topic"], &["topic"]),
        (
            "publish-content",
            &["content", "channel"],
            &["content", "channel"],
        ),
        (
            "deploy-changes",
            &["serviceName", "environment", "changes", "actorRole"],
            &["serviceName", "environment", "changes"],
        ),
        (
            "managed-deploy",
            &[
                "serviceName",
                "environment",
                "changes",
                "actorRole",
                "approvalStatus",
                "resourceScope",
            ],
            &[
                "serviceName",
                "environment",
                "changes",
                "actorRole",
                "approvalStatus",
            ],
        ),
        (
            "retry-workflow",
            &["workflowId", "retryCount"],
            &["workflowId", "retryCount"],
        ),
        (
            "check-authorization",
            &["goal", "sideEffects", "successCriteria", "retryCount"],
            &["goal", "sideEffects"],
        ),
    ];
    for (name, properties, required) in cases {
        let schema = &tool(&tools, name)["inputSchema"];
        assert_eq!(schema["type"], "object", "{name}: {schema}");
        assert_eq!(
            names(&schema["properties"]),
            set(properties),
            "{name} properties"
        );
        assert_eq!(names(&schema["required"]), set(required), "{name} required");
    }
}

#[tokio::test]
async fn input_schemas_restrict_enums_and_retry_counts() {
    let tools = listed_tools().await;
    let roles = set(&["admin", "developer", "viewer"]);
    let deploy = &tool(&tools, "deploy-changes")["inputSchema"];
    assert_eq!(
        enum_values(deploy, "environment"),
        set(&["staging", "production"])
    );
    assert_eq!(enum_values(deploy, "actorRole"), roles);
    let managed = &tool(&tools, "managed-deploy")["inputSchema"];
    assert_eq!(
        enum_values(managed, "environment"),
        set(&["development", "staging", "production"])
    );
    assert_eq!(enum_values(managed, "actorRole"), roles);
    assert_eq!(
        enum_values(managed, "approvalStatus"),
        set(&["approved", "pending", "none"])
    );

    for name in ["retry-workflow", "check-authorization"] {
        let retry_count = &tool(&tools, name)["inputSchema"]["properties"]["retryCount"];
        let is_integer = match &retry_count["type"] {
            Value::String(kind) => kind == "integer",
            Value::Array(kinds) => kinds.iter().any(|kind| kind == "integer"),
            _ => false,
        };
        assert!(is_integer, "{name} retryCount is an integer: {retry_count}");
        assert_eq!(
            retry_count["minimum"].as_f64(),
            Some(0.0),
            "{name} retryCount minimum: {retry_count}"
        );
    }
    let side_effects =
        &tool(&tools, "check-authorization")["inputSchema"]["properties"]["sideEffects"];
    assert_eq!(side_effects["type"], "array");
    assert_eq!(side_effects["items"]["type"], "string");
}

/// The `format` values JSON Schema 2020-12 defines (Validation, section 7.3).
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// What is wrong with `schema` and its subschemas, each with its JSON pointer: a `format` JSON
/// Schema 2020-12 does not define, a `null` type, a `null` in an `enum`, a `const: null`.
///
/// Walks only where subschemas are (so a property named `format` is not mistaken for the
/// keyword), everywhere they can be.
fn schema_problems(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Value::Object(node) = schema else {
        return;
    };
    if let Some(format) = node.get("format")
        && !format
            .as_str()
            .is_some_and(|f| STANDARD_FORMATS.contains(&f))
    {
        problems.push(format!("{at}: format {format}"));
    }
    let null_type = match node.get("type") {
        Some(Value::String(kind)) => kind == "null",
        Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "null"),
        _ => false,
    };
    if null_type {
        problems.push(format!("{at}: type {}", node["type"]));
    }
    if let Some(Value::Array(values)) = node.get("enum")
        && values.iter().any(Value::is_null)
    {
        problems.push(format!("{at}: enum {}", node["enum"]));
    }
    if node.get("const").is_some_and(Value::is_null) {
        problems.push(format!("{at}: const null"));
    }
    for (key, value) in node {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                for (name, subschema) in value.as_object().into_iter().flatten() {
                    schema_problems(subschema, &format!("{at}/{key}/{name}"), problems);
                }
            }
            "allOf" | "anyOf" | "oneOf" | "prefixItems" | "items" if value.is_array() => {
                for (index, subschema) in value.as_array().into_iter().flatten().enumerate() {
                    schema_problems(subschema, &format!("{at}/{key}/{index}"), problems);
                }
            }
            "items"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "additionalProperties"
            | "propertyNames"
            | "unevaluatedItems"
            | "unevaluatedProperties" => {
                schema_problems(value, &format!("{at}/{key}"), problems);
            }
            _ => {}
        }
    }
}

/// The values an enum property lists, in order, nulls included: its `enum`, or the `const` of each
/// `oneOf` / `anyOf` branch (schemars writes the second form when the variants have doc
/// comments). Every branch must be a string.
fn listed_values(property: &Value) -> Vec<Value> {
    if let Some(values) = property["enum"].as_array() {
        assert_eq!(property["type"], "string", "{property}");
        return values.clone();
    }
    ["oneOf", "anyOf"]
        .iter()
        .flat_map(|key| property[key].as_array().into_iter().flatten())
        .map(|branch| {
            assert_eq!(branch["type"], "string", "{property}");
            branch["const"].clone()
        })
        .collect()
}

#[test]
fn the_schema_walk_finds_every_kind_of_problem() {
    let schema = json!({
        "type": "object",
        "properties": {
            "format": {"type": "string", "format": "uint64"},
            "a": {"type": ["string", "null"], "enum": ["x", null]},
            "b": {"anyOf": [{"$ref": "#/$defs/B"}, {"type": "null"}]},
            "c": {"type": "array", "items": {"const": null}},
            "d": {"type": "string", "format": "date-time"}
        },
        "$defs": {"B": {"type": "integer", "format": "int64"}}
    });
    let mut problems = Vec::new();
    schema_problems(&schema, "", &mut problems);
    problems.sort();
    assert_eq!(
        problems,
        [
            "/$defs/B: format \"int64\"",
            "/properties/a: enum [\"x\",null]",
            "/properties/a: type [\"string\",\"null\"]",
            "/properties/b/anyOf/1: type \"null\"",
            "/properties/c/items: const null",
            "/properties/format: format \"uint64\"",
        ]
    );
}

#[tokio::test]
async fn schemas_use_only_standard_formats_and_optional_arguments_are_not_nullable() {
    let tools = listed_tools().await;
    let mut problems = Vec::new();
    for tool in &tools {
        let name = tool["name"].as_str().expect("a tool name");
        for kind in ["inputSchema", "outputSchema"] {
            assert!(tool[kind].is_object(), "{name} has no {kind}");
            schema_problems(&tool[kind], &format!("{name} {kind} "), &mut problems);
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // Optional enums list exactly the original's values, and stay optional.
    let roles = [json!("admin"), json!("developer"), json!("viewer")];
    let deploy = &tool(&tools, "deploy-changes")["inputSchema"];
    assert_eq!(
        listed_values(&deploy["properties"]["actorRole"]),
        roles,
        "{deploy}"
    );
    assert!(!names(&deploy["required"]).contains("actorRole"));
    let managed = &tool(&tools, "managed-deploy")["inputSchema"];
    assert_eq!(listed_values(&managed["properties"]["actorRole"]), roles);
    assert_eq!(managed["properties"]["resourceScope"]["type"], "string");
    let check = &tool(&tools, "check-authorization")["inputSchema"];
    assert_eq!(check["properties"]["successCriteria"]["type"], "array");
    assert_eq!(check["properties"]["retryCount"]["type"], "integer");
    assert_eq!(check["properties"]["retryCount"]["minimum"], 0);
}

#[tokio::test]
async fn annotations_mark_read_only_destructive_and_open_world_tools() {
    let tools = listed_tools().await;
    let hint = |name: &str, hint: &str| tool(&tools, name)["annotations"][hint].as_bool();
    assert_eq!(hint("research-topic", "readOnlyHint"), Some(true));
    assert_eq!(hint("check-authorization", "readOnlyHint"), Some(true));
    assert_eq!(hint("deploy-changes", "destructiveHint"), Some(true));
    assert_eq!(hint("managed-deploy", "destructiveHint"), Some(true));
    assert_eq!(hint("publish-content", "openWorldHint"), Some(true));
    for name in [
        "publish-content",
        "deploy-changes",
        "managed-deploy",
        "retry-workflow",
    ] {
        assert_ne!(
            hint(name, "readOnlyHint"),
            Some(true),
            "{name} has side effects and must not claim to be read-only"
        );
    }
}

#[tokio::test]
async fn every_tool_has_a_description_and_an_output_schema_for_its_verdict() {
    let tools = listed_tools().await;
    for name in SIX_TOOLS {
        let tool = tool(&tools, name);
        let description = tool["description"].as_str().unwrap_or_default();
        assert!(!description.trim().is_empty(), "{name} has no description");
        let output = &tool["outputSchema"];
        assert_eq!(output["type"], "object", "{name} outputSchema: {output}");
        let properties = names(&output["properties"]);
        for field in [
            "tool",
            "executed",
            "mode",
            "verdict",
            "decision",
            "reason",
            "request_id",
            "policy_version",
            "output",
        ] {
            assert!(
                properties.contains(field),
                "{name} outputSchema lacks {field}"
            );
        }
    }
}

#[tokio::test]
async fn server_introduces_itself_by_name_and_version_and_explains_the_verdicts() {
    let session = Session::start(&[]).await;
    let info = session.client.peer_info().expect("initialize was answered");
    let info = serde_json::to_value(&*info).expect("server info serialises");
    session.stop().await;

    assert_eq!(info["serverInfo"]["name"], "stage0-authorization-server");
    assert_eq!(info["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["capabilities"]["tools"].is_object(), "{info}");
    let instructions = info["instructions"]
        .as_str()
        .expect("instructions are given");
    for verdict in ["ALLOW", "DENY", "DEFER"] {
        assert!(
            instructions.contains(verdict),
            "instructions lack {verdict}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Simulator verdicts for every tool
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn simulator_verdicts_for_every_tool_follow_the_spec_rules() {
    struct Case {
        tool: &'static str,
        arguments: Value,
        verdict: &'static str,
        decision: &'static str,
        reason_starts: &'static str,
        text_starts: &'static str,
    }
    let case = |tool, arguments, verdict, decision, reason_starts, text_starts| Case {
        tool,
        arguments,
        verdict,
        decision,
        reason_starts,
        text_starts,
    };
    let deploy = json!({
        "serviceName": "billing-api", "environment": "staging", "changes": "Bump", "actorRole": "admin"
    });
    let managed = json!({
        "serviceName": "billing-api", "environment": "development", "changes": "Bump",
        "actorRole": "admin", "approvalStatus": "approved", "resourceScope": "team-a"
    });
    let cases = [
        case(
            "research-topic",
            json!({"topic": "Rust async runtimes"}),
            "ALLOW",
            "GO",
            "Informational operation",
            "✅ ALLOWED by Stage0",
        ),
        case(
            "research-topic",
            json!({"topic": "how to think about caching"}),
            "DEFER",
            "DEFER",
            "UNCLEAR_VALUE_SIGNAL: ",
            "⏸️ DEFERRED by Stage0",
        ),
        case(
            "publish-content",
            json!({"content": "Release notes", "channel": "blog"}),
            "DENY",
            "NO_GO",
            "SIDE_EFFECTS_NEED_GUARDRAILS: ",
            "⛔ BLOCKED by Stage0",
        ),
        case(
            "deploy-changes",
            deploy,
            "DENY",
            "NO_GO",
            "SIDE_EFFECTS_NEED_GUARDRAILS: ",
            "⛔ BLOCKED by Stage0",
        ),
        case(
            "managed-deploy",
            managed,
            "DENY",
            "NO_GO",
            "SIDE_EFFECTS_NEED_GUARDRAILS: ",
            "⛔ BLOCKED by Stage0",
        ),
        case(
            "retry-workflow",
            json!({"workflowId": "nightly-etl", "retryCount": 4}),
            "ALLOW",
            "GO",
            "Informational operation",
            "✅ ALLOWED by Stage0",
        ),
        case(
            "retry-workflow",
            json!({"workflowId": "nightly-etl", "retryCount": 5}),
            "DEFER",
            "DEFER",
            "LOOP_THRESHOLD_EXCEEDED: ",
            "⏸️ DEFERRED by Stage0",
        ),
        case(
            "check-authorization",
            json!({"goal": "Summarize the quarterly sales report", "sideEffects": []}),
            "ALLOW",
            "GO",
            "Informational operation",
            "✅ ALLOWED",
        ),
        case(
            "check-authorization",
            json!({"goal": "Summarize the quarterly sales report", "sideEffects": ["publish"]}),
            "DENY",
            "NO_GO",
            "SIDE_EFFECTS_NEED_GUARDRAILS: ",
            "⛔ DENIED",
        ),
        case(
            "check-authorization",
            json!({"goal": "help me", "sideEffects": []}),
            "DEFER",
            "DEFER",
            "UNCLEAR_VALUE_SIGNAL: ",
            "⏸️ DEFERRED",
        ),
        case(
            "check-authorization",
            json!({
                "goal": "Summarize the quarterly sales report",
                "sideEffects": ["loop"],
                "retryCount": 7
            }),
            "DEFER",
            "DEFER",
            "LOOP_THRESHOLD_EXCEEDED: ",
            "⏸️ DEFERRED",
        ),
        case(
            "check-authorization",
            json!({
                "goal": "Summarize the quarterly sales report",
                "sideEffects": [],
                "successCriteria": []
            }),
            "DENY",
            "NO_GO",
            "MISSING_SUCCESS_CRITERIA: ",
            "⛔ DENIED",
        ),
    ];

    let session = Session::start(&[]).await;
    let mut request_ids = BTreeSet::new();
    for case in &cases {
        let outcome = session.call(case.tool, case.arguments.clone()).await;
        let label = format!("{} {}", case.tool, case.arguments);
        assert_verdict(
            &outcome,
            case.tool,
            "simulator",
            case.verdict,
            case.decision,
        );
        assert_eq!(
            outcome.structured["policy_version"], "simulated-v1.0.0",
            "{label}"
        );
        let request_id = outcome.field("request_id");
        assert_eq!(
            Uuid::parse_str(request_id).map(|id| id.get_version_num()),
            Ok(4),
            "{label}: request_id {request_id} is a UUID v4"
        );
        assert!(
            request_ids.insert(request_id.to_owned()),
            "{label}: reused id"
        );
        assert!(
            outcome.field("reason").starts_with(case.reason_starts),
            "{label}: {outcome:#?}"
        );
        assert!(
            outcome.text.starts_with(case.text_starts),
            "{label}: {outcome:#?}"
        );

        if case.tool == "check-authorization" {
            assert!(
                !outcome.is_error,
                "{label}: check-authorization only reports"
            );
            assert_eq!(outcome.structured["executed"], false, "{label}");
            assert!(outcome.structured.get("output").is_none(), "{label}");
        } else if case.verdict == "ALLOW" {
            assert_executed(&outcome);
        } else {
            assert_not_executed(&outcome, case.text_starts);
        }
    }
    session.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. The guard proof: live mode against a fake Stage0
// ---------------------------------------------------------------------------------------------

/// Calls each executing tool once against the Stage0 at `base_url`.
async fn call_every_executing_tool(base_url: &str, timeout_ms: &str) -> Vec<(Call, Outcome)> {
    let session = Session::start(&live_env(base_url, timeout_ms)).await;
    let mut outcomes = Vec::new();
    for call in executing_calls() {
        let outcome = session.call(call.tool, call.arguments.clone()).await;
        outcomes.push((call, outcome));
    }
    session.stop().await;
    outcomes
}

#[tokio::test]
async fn stage0_allow_runs_every_executing_tool_after_sending_its_spec_intent() {
    let fake = fake_stage0(vec![ResponseTemplate::new(200).set_body_json(allow_body())]).await;
    let outcomes = call_every_executing_tool(&fake.uri(), "5000").await;
    let requests = requests(&fake).await;
    assert_eq!(requests.len(), 5, "one /check per call");
    for ((call, outcome), request) in outcomes.iter().zip(&requests) {
        let sent = assert_check_request(request, &call.body);
        assert_verdict(outcome, call.tool, "stage0", "ALLOW", "GO");
        // The check is named by the id sent; the fake's own id for it is kept beside it.
        assert_eq!(outcome.structured["request_id"], sent);
        assert_eq!(outcome.structured["stage0_request_id"], "fake-req-allow");
        assert!(
            outcome.text.contains(&format!(
                "Request ID: {sent}\nStage0 Request ID: fake-req-allow\nPolicy Version: fake-pack-1"
            )),
            "{}",
            outcome.text
        );
        assert_eq!(outcome.structured["policy_version"], "fake-pack-1");
        assert_executed(outcome);
    }
}

#[tokio::test]
async fn stage0_deny_runs_no_tool_body() {
    let deny = json!({
        "verdict": "DENY",
        "decision": "NO_GO",
        "reason": "FAKE_DENY: the fake says no",
        "request_id": "fake-req-deny",
        "policy_version": "fake-pack-1"
    });
    let fake = fake_stage0(vec![ResponseTemplate::new(200).set_body_json(deny)]).await;
    let outcomes = call_every_executing_tool(&fake.uri(), "5000").await;
    let requests = requests(&fake).await;
    assert_eq!(requests.len(), 5, "one /check per call");
    for ((call, outcome), request) in outcomes.iter().zip(&requests) {
        assert_verdict(outcome, call.tool, "stage0", "DENY", "NO_GO");
        assert_not_executed(outcome, "⛔ BLOCKED by Stage0");
        assert_eq!(outcome.field("reason"), "FAKE_DENY: the fake says no");
        assert!(outcome.text.contains("FAKE_DENY: the fake says no"));
        assert_eq!(
            outcome.structured["request_id"],
            header(request, "x-request-id")
        );
        assert_eq!(outcome.structured["stage0_request_id"], "fake-req-deny");
        assert_eq!(outcome.structured["policy_version"], "fake-pack-1");
    }
}

#[tokio::test]
async fn stage0_defer_runs_no_tool_body_and_shows_the_questions() {
    // No request_id in the answer: the one sent in X-Request-Id stands in for it.
    let defer = json!({
        "verdict": "defer",
        "decision": "DEFER",
        "reason": "FAKE_DEFER: a human must look",
        "policy_version": "fake-pack-1",
        "defer_questions": ["Who approved this change?"]
    });
    let fake = fake_stage0(vec![ResponseTemplate::new(200).set_body_json(defer)]).await;
    let outcomes = call_every_executing_tool(&fake.uri(), "5000").await;
    let requests = requests(&fake).await;
    assert_eq!(requests.len(), 5, "one /check per call");
    for ((call, outcome), request) in outcomes.iter().zip(&requests) {
        let sent_id = assert_check_request(request, &call.body);
        assert_verdict(outcome, call.tool, "stage0", "DEFER", "DEFER");
        assert_not_executed(outcome, "⏸️ DEFERRED by Stage0");
        assert!(
            outcome.text.contains("Who approved this change?"),
            "{outcome:#?}"
        );
        assert_eq!(outcome.field("request_id"), sent_id);
    }
}

/// Checks a fail-closed verdict (`DENY` / `ERROR`) that kept the request id it sent.
fn assert_fail_closed(outcomes: &[(Call, Outcome)], requests: &[Request], reason_starts: &str) {
    assert_eq!(requests.len(), outcomes.len(), "one /check per call");
    for ((call, outcome), request) in outcomes.iter().zip(requests) {
        let sent_id = assert_check_request(request, &call.body);
        assert_verdict(outcome, call.tool, "stage0", "DENY", "ERROR");
        assert_not_executed(outcome, "⛔ BLOCKED by Stage0");
        assert!(
            outcome.field("reason").starts_with(reason_starts),
            "{outcome:#?}"
        );
        assert_eq!(outcome.field("request_id"), sent_id);
    }
}

#[tokio::test]
async fn stage0_http_500_runs_no_tool_body() {
    let fake = fake_stage0(vec![ResponseTemplate::new(500)]).await;
    let outcomes = call_every_executing_tool(&fake.uri(), "2000").await;
    assert_fail_closed(&outcomes, &requests(&fake).await, "HTTP 500");
}

#[tokio::test]
async fn stage0_answer_that_is_not_json_runs_no_tool_body() {
    let html = ResponseTemplate::new(200).set_body_raw("<html>ALLOW</html>", "text/html");
    let fake = fake_stage0(vec![html]).await;
    let outcomes = call_every_executing_tool(&fake.uri(), "2000").await;
    assert_fail_closed(&outcomes, &requests(&fake).await, "Stage0 API error: ");
}

#[tokio::test]
async fn unreachable_stage0_runs_no_tool_body() {
    let outcomes = call_every_executing_tool(&refused_base_url(), "2000").await;
    for (call, outcome) in &outcomes {
        assert_verdict(outcome, call.tool, "stage0", "DENY", "ERROR");
        assert_not_executed(outcome, "⛔ BLOCKED by Stage0");
        assert!(
            outcome.field("reason").starts_with("Stage0 API error: "),
            "{outcome:#?}"
        );
        assert!(Uuid::parse_str(outcome.field("request_id")).is_ok());
    }
}

#[tokio::test]
async fn every_check_request_carries_the_key_a_fresh_request_id_and_the_spec_intent() {
    let fake = fake_stage0(vec![ResponseTemplate::new(200).set_body_json(allow_body())]).await;
    let session = Session::start(&live_env(&fake.uri(), "5000")).await;
    let calls = more_calls();
    for call in &calls {
        let outcome = session.call(call.tool, call.arguments.clone()).await;
        assert_verdict(&outcome, call.tool, "stage0", "ALLOW", "GO");
    }
    session.stop().await;

    let requests = requests(&fake).await;
    assert_eq!(requests.len(), calls.len(), "one /check per call");
    let mut sent_ids = BTreeSet::new();
    for (call, request) in calls.iter().zip(&requests) {
        let sent_id = assert_check_request(request, &call.body);
        assert!(sent_ids.insert(sent_id), "X-Request-Id reused");
    }
}

#[tokio::test]
async fn check_authorization_reports_every_live_verdict_without_being_an_error() {
    let fake = fake_stage0(vec![
        ResponseTemplate::new(200).set_body_json(allow_body()),
        ResponseTemplate::new(200).set_body_json(json!({
            "verdict": "DENY", "decision": "NO_GO", "reason": "FAKE_DENY: no",
            "request_id": "fake-req-deny", "policy_version": "fake-pack-1"
        })),
        ResponseTemplate::new(200).set_body_json(json!({
            "verdict": "DEFER", "decision": "DEFER", "reason": "FAKE_DEFER: ask",
            "request_id": "fake-req-defer", "policy_version": "fake-pack-1",
            "clarifying_questions": ["Which quarter?"]
        })),
        ResponseTemplate::new(503).set_body_json(json!({"error": "maintenance"})),
    ])
    .await;
    let expected = [
        ("ALLOW", "GO", "✅ ALLOWED"),
        ("DENY", "NO_GO", "⛔ DENIED"),
        ("DEFER", "DEFER", "⏸️ DEFERRED"),
        ("DENY", "ERROR", "⛔ DENIED"),
    ];
    let arguments = json!({"goal": "Summarize the quarterly sales report", "sideEffects": []});
    let session = Session::start(&live_env(&fake.uri(), "2000")).await;
    for (verdict, decision, text_starts) in expected {
        let outcome = session.call("check-authorization", arguments.clone()).await;
        assert_verdict(&outcome, "check-authorization", "stage0", verdict, decision);
        assert!(
            !outcome.is_error,
            "check-authorization only reports: {outcome:#?}"
        );
        assert_eq!(outcome.structured["executed"], false);
        assert!(outcome.text.starts_with(text_starts), "{outcome:#?}");
        if verdict == "DEFER" {
            assert!(outcome.text.contains("Which quarter?"), "{outcome:#?}");
        }
        if decision == "ERROR" {
            assert_eq!(outcome.field("reason"), "maintenance");
        }
    }
    session.stop().await;
    // The 503 is transient: it was retried once, with the same X-Request-Id (and answered 503 again).
    let requests = requests(&fake).await;
    assert_eq!(requests.len(), 5);
    assert_eq!(
        header(&requests[3], "X-Request-Id"),
        header(&requests[4], "X-Request-Id")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Invalid arguments and unknown tools
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_arguments_are_tool_errors_naming_the_field_and_nothing_is_checked_or_run() {
    let cases = [
        (
            "retry-workflow",
            json!({"workflowId": "W", "retryCount": -1}),
            "retryCount",
        ),
        (
            "retry-workflow",
            json!({"workflowId": "W", "retryCount": 1.5}),
            "retryCount",
        ),
        (
            "retry-workflow",
            json!({"workflowId": "W", "retryCount": "5"}),
            "retryCount",
        ),
        ("retry-workflow", json!({"workflowId": "W"}), "retryCount"),
        ("research-topic", json!({}), "topic"),
        ("research-topic", json!({"topic": 42}), "topic"),
        (
            "deploy-changes",
            json!({"serviceName": "api", "environment": "prod", "changes": "x"}),
            "environment",
        ),
        (
            "managed-deploy",
            json!({
                "serviceName": "api", "environment": "development", "changes": "x",
                "actorRole": "root", "approvalStatus": "approved"
            }),
            "actorRole",
        ),
        (
            "check-authorization",
            json!({"goal": "Summarize the quarterly sales report"}),
            "sideEffects",
        ),
        (
            "check-authorization",
            json!({"goal": "Summarize the report", "sideEffects": [], "retryCount": -1}),
            "retryCount",
        ),
    ];
    // Live mode, so the fake's request count shows whether anything was checked.
    let fake = fake_stage0(vec![ResponseTemplate::new(200).set_body_json(allow_body())]).await;
    let session = Session::start(&live_env(&fake.uri(), "5000")).await;
    for (tool, arguments, field) in &cases {
        let outcome = session.call(tool, arguments.clone()).await;
        let label = format!("{tool} {arguments}");
        assert!(outcome.is_error, "{label}: {outcome:#?}");
        assert!(
            outcome.text.contains(field),
            "{label}: names `{field}`: {outcome:#?}"
        );
        assert!(!outcome.raw.contains(STAND_IN), "{label}: {outcome:#?}");
        assert_ne!(outcome.structured["executed"], true, "{label}");

        let next = session
            .call("research-topic", json!({"topic": "Rust async runtimes"}))
            .await;
        assert_executed(&next);
    }
    session.stop().await;
    assert_eq!(
        requests(&fake).await.len(),
        cases.len(),
        "only the valid calls were checked"
    );
}

#[tokio::test]
async fn unknown_tool_is_a_json_rpc_error_and_the_session_goes_on() {
    let session = Session::start(&[]).await;
    let error = session
        .try_call("delete-everything", json!({}))
        .await
        .expect_err("an unknown tool is a JSON-RPC error");
    match &error {
        ServiceError::McpError(data) => assert_eq!(data.code, ErrorCode::INVALID_PARAMS),
        other => panic!("expected a JSON-RPC error, got {other}"),
    }
    let next = session
        .call("research-topic", json!({"topic": "Rust async runtimes"}))
        .await;
    assert_executed(&next);
    session.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. The API key is a secret
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_key_never_appears_in_results_or_logs_even_at_debug_level() {
    let fake = fake_stage0(vec![
        ResponseTemplate::new(401).set_body_json(json!({"message": "invalid key"})),
        ResponseTemplate::new(500),
    ])
    .await;
    let refused = refused_base_url();
    let mut seen = Vec::new();
    let mut stderr = String::new();
    for base_url in [fake.uri(), refused] {
        let mut env = live_env(&base_url, "2000");
        env.extend([("STAGE0_DEBUG", "true"), ("RUST_LOG", "debug")]);
        let session = Session::start(&env).await;
        for (tool, arguments) in [
            (
                "deploy-changes",
                json!({"serviceName": "api", "environment": "production", "changes": "x"}),
            ),
            (
                "check-authorization",
                json!({"goal": "Summarize the quarterly sales report", "sideEffects": []}),
            ),
        ] {
            seen.push(session.call(tool, arguments).await);
        }
        stderr.push_str(&session.stop().await);
    }

    assert_eq!(seen[0].field("reason"), "invalid key", "{:#?}", seen[0]);
    assert_eq!(seen[1].field("reason"), "HTTP 500", "{:#?}", seen[1]);
    for outcome in &seen[2..] {
        assert!(outcome.field("reason").starts_with("Stage0 API error: "));
    }
    for outcome in &seen {
        assert_eq!(outcome.structured["verdict"], "DENY");
        assert!(
            !outcome.raw.contains(SECRET_KEY),
            "key in a result: {outcome:#?}"
        );
        assert!(!outcome.text.contains(SECRET_KEY));
    }
    assert!(stderr.contains("DEBUG"), "debug logging was on:\n{stderr}");
    assert!(!stderr.contains(SECRET_KEY), "key in the logs:\n{stderr}");
    // The key did reach Stage0, so its absence above is not an accident of it never being read.
    let requests = requests(&fake).await;
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(header(request, "x-api-key"), SECRET_KEY);
    }
}

#[tokio::test]
async fn a_hung_stage0_check_holds_up_only_its_own_call() {
    let fake = bounded("the fake Stage0 to start", MockServer::start()).await;
    Mock::given(wiremock::matchers::body_partial_json(
        json!({"goal": "Research and summarize: slow"}),
    ))
    .respond_with(
        ResponseTemplate::new(200)
            .set_body_json(allow_body())
            .set_delay(std::time::Duration::from_secs(60)),
    )
    .mount(&fake)
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(allow_body()))
        .mount(&fake)
        .await;
    let session = Session::start(&live_env(&fake.uri(), "2000")).await;

    let slow = {
        let slow = session.call("research-topic", json!({"topic": "slow"}));
        let fast = session.call("research-topic", json!({"topic": "fast"}));
        tokio::pin!(slow);
        // The fast call is answered while the slow one still waits on its 2 s deadline.
        tokio::select! {
            outcome = &mut slow => panic!("the hung call was answered first: {outcome:#?}"),
            outcome = fast => assert_executed(&outcome),
        }
        slow.await
    };
    assert_not_executed(&slow, "⛔ BLOCKED by Stage0");
    assert!(
        slow.field("reason")
            .contains("no complete answer within 2000 ms"),
        "{slow:#?}"
    );
    session.stop().await;
}
