//! Cedar policies decide as written against the documented request model (docs/cedar.md).
//!
//! Two tables: a policy set written by someone else, from the documentation alone, covering a
//! role-by-environment deploy rule, a `@verdict("DEFER")` loop rule on `context.retry_count`,
//! rules on nested arguments, a rate limit on `context.recent_calls`, time windows and
//! `NO_PERMIT` for tools nobody permitted; and the shipped `policies/team-example.cedar`, whose
//! rows are the table in docs/cedar.md. Each row names the verdict and the determining policies.

use std::path::Path;
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use stage0_guard::claims::{ActorRole, ApprovalStatus};
use stage0_guard::policy::cedar::{
    Call, CedarPolicy, Evaluation, Facts, NO_PERMIT, RecentCallCounts, SCHEMA, SCHEMA_PATH, Source,
};
use stage0_guard::policy::wire::{Decision, Intent, Verdict};

/// A platform team's policy set, written from docs/cedar.md.
const OUTSIDER: &str = r#"
// Developers deploy to staging; admins anywhere.
@id("STAGING_FOR_DEVELOPERS")
permit (principal, action == Stage0::Action::"deploy-changes", resource)
when { principal.role == "developer" && context.arguments.environment == "staging" };

@id("ANYWHERE_FOR_ADMINS")
permit (principal, action == Stage0::Action::"deploy-changes", resource)
when { principal.role == "admin" };

// Retries are fine until the third one, which a human looks at.
@id("RETRIES")
permit (principal, action == Stage0::Action::"retry-workflow", resource);

@id("THIRD_RETRY")
@verdict("DEFER")
@reason("Three retries already")
@risk_score("50")
@questions("Is the upstream service back?")
forbid (principal, action == Stage0::Action::"retry-workflow", resource)
when { context.retry_count >= 3 }
unless { context.approval_status == "approved" };

// Managed deploys only within a team's scope (an optional argument).
@id("TEAM_SCOPED_MANAGED_DEPLOY")
permit (principal, action == Stage0::Action::"managed-deploy", resource)
when {
  principal.role != "viewer" &&
  context.arguments has resourceScope &&
  context.arguments.resourceScope like "team-*"
};

// Reports are always answered, but never about publishing (a set inside the arguments).
@id("REPORTS")
permit (principal, action in Stage0::Action::"report", resource);

@id("NO_PUBLISH_CHECKS")
@reason("Ask about publishing in the release channel, not here")
forbid (principal, action == Stage0::Action::"check-authorization", resource)
when { context.arguments.sideEffects.contains("publish") };

// At most five calls of a tool a minute.
@id("BURST")
@risk_score("80")
forbid (principal, action in Stage0::Action::"execute", resource)
when { context.recent_calls.tool_last_minute >= 5 };

// Office hours: 07:00 to 19:00 UTC on weekdays.
@id("OFFICE_HOURS")
forbid (principal, action in Stage0::Action::"execute", resource)
when { context.hour_utc < 7 || context.hour_utc >= 19 || context.weekday_utc >= 6 };

// The year-end change freeze.
@id("CHANGE_FREEZE")
forbid (principal, action == Stage0::Action::"deploy-changes", resource)
when {
  context.now >= datetime("2026-12-21T00:00:00Z") &&
  context.now < datetime("2027-01-04T00:00:00Z")
};
"#;

/// A Tuesday at 10:00 UTC.
const TUESDAY_10: &str = "2026-11-24T10:00:00Z";

/// One call and what must decide it.
struct Row {
    name: &'static str,
    tool: &'static str,
    arguments: Value,
    role: ActorRole,
    retry_count: u64,
    approved_by: Option<&'static str>,
    now: &'static str,
    recent: RecentCallCounts,
    verdict: Verdict,
    /// The determining policies; for `NO_PERMIT`, none.
    determining: &'static [&'static str],
}

fn row(name: &'static str, tool: &'static str, arguments: Value) -> Row {
    Row {
        name,
        tool,
        arguments,
        role: ActorRole::Viewer,
        retry_count: 0,
        approved_by: None,
        now: TUESDAY_10,
        recent: RecentCallCounts::default(),
        verdict: Verdict::Deny,
        determining: &[],
    }
}

impl Row {
    fn role(mut self, role: ActorRole) -> Self {
        self.role = role;
        self
    }
    fn retry(mut self, count: u64) -> Self {
        self.retry_count = count;
        self
    }
    fn approved_by(mut self, name: &'static str) -> Self {
        self.approved_by = Some(name);
        self
    }
    fn at(mut self, now: &'static str) -> Self {
        self.now = now;
        self
    }
    fn recent(mut self, tool_last_minute: u64, all_last_minute: u64) -> Self {
        self.recent = RecentCallCounts {
            tool_last_minute,
            tool_last_hour: tool_last_minute,
            all_last_minute,
        };
        self
    }
    fn allow(self, determining: &'static [&'static str]) -> Self {
        self.decided(Verdict::Allow, determining)
    }
    fn deny(self, determining: &'static [&'static str]) -> Self {
        self.decided(Verdict::Deny, determining)
    }
    fn defer(self, determining: &'static [&'static str]) -> Self {
        self.decided(Verdict::Defer, determining)
    }
    fn no_permit(self) -> Self {
        self.decided(Verdict::Deny, &[])
    }
    fn decided(mut self, verdict: Verdict, determining: &'static [&'static str]) -> Self {
        self.verdict = verdict;
        self.determining = determining;
        self
    }

    /// The intent's side effects as each tool declares them (`check-authorization` passes its
    /// argument on); the goal and the rest do not matter to these policies.
    fn intent(&self) -> Intent {
        let side_effects: Vec<String> = match self.tool {
            "deploy-changes" | "managed-deploy" => vec!["deploy".to_owned()],
            "publish-content" => vec!["publish".to_owned()],
            "retry-workflow" => vec!["loop".to_owned()],
            "check-authorization" => serde_json::from_value(self.arguments["sideEffects"].clone())
                .expect("a list of side effects"),
            _ => Vec::new(),
        };
        Intent {
            goal: format!("Call {}", self.tool),
            success_criteria: vec!["Completes successfully".to_owned()],
            constraints: Vec::new(),
            tools: Vec::new(),
            side_effects,
            context: Map::new(),
        }
    }

    fn facts(&self) -> Facts {
        Facts {
            actor_id: Some("alice@example.com".to_owned()),
            role: self.role,
            retry_count: self.retry_count,
            claimed_retry_count: self.retry_count,
            approval_status: if self.approved_by.is_some() {
                ApprovalStatus::Approved
            } else {
                ApprovalStatus::None
            },
            approved_by: self.approved_by.map(str::to_owned),
            now: at(self.now),
            recent_calls: self.recent,
        }
    }

    fn decide(&self, policy: &CedarPolicy) -> Evaluation {
        let arguments = self.arguments.as_object().expect("an object").clone();
        let intent = self.intent();
        let call = Call {
            tool: self.tool,
            arguments: &arguments,
            intent: &intent,
        };
        policy.decide(&call, &self.facts(), "req-1".to_owned())
    }
}

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).expect("an RFC 3339 time")
}

fn deploy(environment: &str) -> Value {
    json!({"serviceName": "api", "environment": environment, "changes": "Bump", "actorRole": "admin"})
}

fn managed(scope: Option<&str>) -> Value {
    let mut arguments = json!({
        "serviceName": "api", "environment": "staging", "changes": "Bump",
        "actorRole": "developer", "approvalStatus": "none",
    });
    if let Some(scope) = scope {
        arguments["resourceScope"] = scope.into();
    }
    arguments
}

fn retry(workflow: &str, count: u64) -> Value {
    json!({"workflowId": workflow, "retryCount": count})
}

fn check(side_effects: &[&str]) -> Value {
    json!({"goal": "Summarize the quarterly report", "sideEffects": side_effects})
}

fn publish(channel: &str) -> Value {
    json!({"content": "Release notes", "channel": channel})
}

fn research() -> Value {
    json!({"topic": "Rust async runtimes"})
}

/// Checks every row, and the shape of every verdict; reports all failing rows at once.
fn check_table(policy: &CedarPolicy, rows: Vec<Row>) {
    let mut failures = Vec::new();
    for row in &rows {
        let evaluation = row.decide(policy);
        let response = &evaluation.response;
        let mut problems = Vec::new();
        if response.verdict != row.verdict {
            problems.push(format!("verdict {}", response.verdict));
        }
        if evaluation.determining != row.determining {
            problems.push(format!("determining {:?}", evaluation.determining));
        }
        let decision = match response.verdict {
            Verdict::Allow => Decision::Go,
            Verdict::Deny => Decision::NoGo,
            Verdict::Defer => Decision::Defer,
        };
        if response.decision != decision {
            problems.push(format!("decision {}", response.decision));
        }
        let codes: Vec<&str> = response.issues.iter().map(|i| i.code.as_str()).collect();
        let expected_codes: Vec<&str> = match (row.verdict, row.determining) {
            (Verdict::Allow, _) => Vec::new(),
            (_, []) => vec![NO_PERMIT],
            (_, ids) => ids.to_vec(),
        };
        if codes != expected_codes {
            problems.push(format!("issues {codes:?}"));
        }
        if row.verdict != Verdict::Allow && !response.reason.starts_with(expected_codes[0]) {
            problems.push(format!("reason {:?}", response.reason));
        }
        if (row.verdict == Verdict::Defer) == response.defer_questions.is_empty() {
            problems.push(format!("questions {:?}", response.defer_questions));
        }
        if response.policy_version != policy.version() || response.request_id != "req-1" {
            problems.push("version or request id".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: expected {} {:?}, got {}",
                row.name,
                row.verdict,
                row.determining,
                problems.join(", ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn load(text: &str) -> CedarPolicy {
    CedarPolicy::from_sources(
        &[Source::new("outsider.cedar", text)],
        &Source::new(SCHEMA_PATH, SCHEMA),
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn a_policy_written_from_the_documentation_decides_as_written() {
    use ActorRole::*;
    #[rustfmt::skip]
    let rows = vec![
        // Role by environment.
        row("a developer deploys to staging", "deploy-changes", deploy("staging")).role(Developer).allow(&["STAGING_FOR_DEVELOPERS"]),
        row("a developer cannot deploy to production", "deploy-changes", deploy("production")).role(Developer).no_permit(),
        row("an admin deploys to production", "deploy-changes", deploy("production")).role(Admin).allow(&["ANYWHERE_FOR_ADMINS"]),
        row("an admin deploys to staging too", "deploy-changes", deploy("staging")).role(Admin).allow(&["ANYWHERE_FOR_ADMINS"]),
        row("a viewer deploys nothing", "deploy-changes", deploy("staging")).no_permit(),
        // The loop rule on the vouched retry count.
        row("a second retry runs", "retry-workflow", retry("etl", 2)).retry(2).allow(&["RETRIES"]),
        row("a third retry is deferred", "retry-workflow", retry("etl", 3)).retry(3).defer(&["THIRD_RETRY"]),
        row("an approved third retry runs", "retry-workflow", retry("etl", 3)).retry(3).approved_by("Bob").allow(&["RETRIES"]),
        // Nested arguments: an optional field, and a set inside the arguments.
        row("a managed deploy in a team scope", "managed-deploy", managed(Some("team-a"))).role(Developer).allow(&["TEAM_SCOPED_MANAGED_DEPLOY"]),
        row("a managed deploy to all scopes", "managed-deploy", managed(Some("all"))).role(Developer).no_permit(),
        row("a managed deploy without a scope", "managed-deploy", managed(None)).role(Developer).no_permit(),
        row("a report without publishing", "check-authorization", check(&["read"])).allow(&["REPORTS"]),
        row("a report about publishing", "check-authorization", check(&["read", "publish"])).deny(&["NO_PUBLISH_CHECKS"]),
        // The rate limit counts what the server saw.
        row("a fifth call in a minute runs", "deploy-changes", deploy("staging")).role(Developer).recent(4, 4).allow(&["STAGING_FOR_DEVELOPERS"]),
        row("a sixth call in a minute is denied", "deploy-changes", deploy("staging")).role(Developer).recent(5, 5).deny(&["BURST"]),
        row("reports are not rate limited", "check-authorization", check(&[])).recent(50, 50).allow(&["REPORTS"]),
        // Time windows.
        row("before office hours", "deploy-changes", deploy("staging")).role(Developer).at("2026-11-24T06:59:59Z").deny(&["OFFICE_HOURS"]),
        row("the last minute of office hours", "deploy-changes", deploy("staging")).role(Developer).at("2026-11-24T18:59:59Z").allow(&["STAGING_FOR_DEVELOPERS"]),
        row("on a Saturday", "retry-workflow", retry("etl", 0)).at("2026-11-28T10:00:00Z").deny(&["OFFICE_HOURS"]),
        row("reports at night", "check-authorization", check(&[])).at("2026-11-24T03:00:00Z").allow(&["REPORTS"]),
        row("in the change freeze", "deploy-changes", deploy("production")).role(Admin).at("2026-12-24T10:00:00Z").deny(&["CHANGE_FREEZE"]),
        row("after the change freeze", "deploy-changes", deploy("production")).role(Admin).at("2027-01-04T10:00:00Z").allow(&["ANYWHERE_FOR_ADMINS"]),
        row("several forbids at once", "deploy-changes", deploy("staging")).role(Admin).recent(9, 9).at("2026-12-26T10:00:00Z").deny(&["BURST", "OFFICE_HOURS", "CHANGE_FREEZE"]),
        // Tools nobody permitted.
        row("research is not listed", "research-topic", research()).role(Admin).no_permit(),
        row("publishing is not listed", "publish-content", publish("blog")).role(Admin).no_permit(),
    ];
    check_table(&load(OUTSIDER), rows);
}

#[test]
fn the_team_example_decides_as_its_table_in_the_docs_says() {
    use ActorRole::*;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/team-example.cedar");
    let team = CedarPolicy::load(&path, None).unwrap_or_else(|error| panic!("{error}"));
    #[rustfmt::skip]
    let rows = vec![
        row("anyone researches", "research-topic", research()).allow(&["RESEARCH"]),
        row("a read-only report", "check-authorization", check(&["read"])).allow(&["REPORT_READ_ONLY"]),
        row("a report about a deploy", "check-authorization", check(&["deploy"])).no_permit(),
        row("a developer deploys to staging", "deploy-changes", deploy("staging")).role(Developer).allow(&["DEPLOY_OUTSIDE_PRODUCTION"]),
        row("a developer's managed deploy to staging", "managed-deploy", managed(None)).role(Developer).allow(&["DEPLOY_OUTSIDE_PRODUCTION"]),
        row("a viewer deploys nothing", "deploy-changes", deploy("staging")).no_permit(),
        row("a developer's production deploy is no permit, not a deferral", "deploy-changes", deploy("production")).role(Developer).no_permit(),
        row("an admin's production deploy waits for a human", "deploy-changes", deploy("production")).role(Admin).defer(&["PRODUCTION_NEEDS_APPROVAL"]),
        row("an approved admin production deploy runs", "deploy-changes", deploy("production")).role(Admin).approved_by("Carol").allow(&["DEPLOY_PRODUCTION_AS_ADMIN"]),
        row("no deploys on a Sunday", "deploy-changes", deploy("production")).role(Admin).approved_by("Carol").at("2026-11-29T10:00:00Z").deny(&["NO_WEEKEND_DEPLOYS"]),
        row("a developer publishes to the blog", "publish-content", publish("blog")).role(Developer).allow(&["PUBLISH_TEAM_CHANNELS"]),
        row("a viewer publishes nothing", "publish-content", publish("blog")).no_permit(),
        row("nobody publishes to public", "publish-content", publish("public")).role(Admin).deny(&["PUBLIC_CHANNEL_FORBIDDEN"]),
        row("a second payment retry runs", "retry-workflow", retry("payment-refunds", 1)).retry(1).allow(&["RETRY"]),
        row("the third payment retry waits for a human", "retry-workflow", retry("payment-refunds", 2)).retry(2).defer(&["PAYMENT_RETRY_REVIEW"]),
        row("an approved payment retry runs", "retry-workflow", retry("payment-refunds", 2)).retry(2).approved_by("Dan").allow(&["RETRY"]),
        row("a fifth retry of another workflow runs", "retry-workflow", retry("nightly-etl", 4)).retry(4).allow(&["RETRY"]),
        row("the sixth retry of any workflow waits", "retry-workflow", retry("nightly-etl", 5)).retry(5).defer(&["LOOP_THRESHOLD"]),
        row("both loop rules at once", "retry-workflow", retry("payment-refunds", 5)).retry(5).defer(&["PAYMENT_RETRY_REVIEW", "LOOP_THRESHOLD"]),
        row("30 calls of a tool in a minute", "research-topic", research()).recent(30, 30).deny(&["RATE_LIMIT"]),
        row("120 calls in a minute", "research-topic", research()).recent(1, 120).deny(&["RATE_LIMIT"]),
        row("119 calls in a minute", "research-topic", research()).recent(29, 119).allow(&["RESEARCH"]),
        row("reports are not rate limited", "check-authorization", check(&[])).recent(30, 200).allow(&["REPORT_READ_ONLY"]),
    ];
    check_table(&team, rows);
}
