//! The six tools: their arguments, the execution intent each one sends, and the stand-in actions.
//!
//! Names, argument names and intents are the public contract of the TypeScript original
//! (`docs/contract.md` §2). The actions are stand-ins: nothing is really published, deployed or
//! retried, and their output says so. Each action takes a [`Permit`], which only the guard can make, so no
//! action can run without an `ALLOW` (see `guard.rs`). Doc comments on the argument fields become
//! the descriptions in each tool's input schema.

use std::convert::Infallible;

use rmcp::model::ToolAnnotations;
use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

use stage0_guard::claims::{ActorRole, ApprovalStatus, Claim};
use stage0_guard::ledger::WorkflowId;
use stage0_guard::{GuardedTool, Intent, Permit, ToolIntent, ToolOutput};

/// Where `deploy-changes` deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum DeployEnvironment {
    Staging,
    Production,
}

/// Where `managed-deploy` deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum ManagedEnvironment {
    Development,
    Staging,
    Production,
}

impl DeployEnvironment {
    /// The wire spelling, as in the input schema and the Stage0 context.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployEnvironment::Staging => "staging",
            DeployEnvironment::Production => "production",
        }
    }
}

impl ManagedEnvironment {
    /// The wire spelling, as in the input schema and the Stage0 context.
    pub fn as_str(self) -> &'static str {
        match self {
            ManagedEnvironment::Development => "development",
            ManagedEnvironment::Staging => "staging",
            ManagedEnvironment::Production => "production",
        }
    }
}

/// A retry count: a whole number from 0. Its schema is that of `u64` (`integer`, `minimum: 0`).
///
/// Written as an integer, any `u64` is read exactly, up to 18446744073709551615, and kept exact
/// in the intent, the audit log and `arguments_sha256` (`json.rs`). `5.0` is read as 5, because
/// the original validates with JavaScript numbers, where the two are the same; but a count
/// written with a fraction or exponent is read as a double, which from 2^53 on no longer tells
/// neighbouring integers apart (`9007199254740993.0` reads as 9007199254740992), so such a count
/// is refused there rather than recorded as a number nobody sent. `1.5`, `-1` and `"5"` are
/// refused too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent, inline)]
pub struct RetryCount(pub u64);

/// 2^53: from here on, a double cannot hold every integer.
const EXACT_DOUBLE_LIMIT: f64 = 9_007_199_254_740_992.0;

impl<'de> Deserialize<'de> for RetryCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = Number::deserialize(deserializer)?;
        if let Some(count) = number.as_u64() {
            return Ok(RetryCount(count));
        }
        match number.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < EXACT_DOUBLE_LIMIT => {
                Ok(RetryCount(f as u64))
            }
            _ => Err(D::Error::custom(format_args!(
                "expected a whole number from 0, got {number}"
            ))),
        }
    }
}

/// Arguments of `research-topic`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ResearchTopic {
    /// The topic to research
    pub topic: String,
}

/// Arguments of `publish-content`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct PublishContent {
    /// The content to publish
    pub content: String,
    /// The target channel (e.g., "blog", "social", "docs")
    pub channel: String,
}

/// Arguments of `deploy-changes`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployChanges {
    /// The service to deploy
    pub service_name: String,
    /// Target environment
    pub environment: DeployEnvironment,
    /// Description of changes
    pub changes: String,
    /// Role of the actor performing deployment (viewer when not given)
    pub actor_role: Option<ActorRole>,
}

/// Arguments of `managed-deploy`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedDeploy {
    /// The service to deploy
    pub service_name: String,
    /// Target environment
    pub environment: ManagedEnvironment,
    /// Description of changes
    pub changes: String,
    /// Role of the actor (admin, developer, viewer)
    pub actor_role: ActorRole,
    /// Approval status for this deployment
    pub approval_status: ApprovalStatus,
    /// Resource scope (e.g., "team-a", "all", "service-x"); "all" when not given
    pub resource_scope: Option<String>,
}

/// Arguments of `retry-workflow`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryWorkflow {
    /// The workflow ID to retry
    pub workflow_id: WorkflowId,
    /// Current retry count (must be >= 0)
    pub retry_count: RetryCount,
}

/// Arguments of `check-authorization`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckAuthorization {
    /// The goal/action to check
    pub goal: String,
    /// List of side effects (e.g., "publish", "deploy", "loop")
    pub side_effects: Vec<String>,
    /// List of success criteria ("Task completes successfully" when not given)
    pub success_criteria: Option<Vec<String>>,
    /// Current retry count (for loop scenarios, must be >= 0)
    pub retry_count: Option<RetryCount>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn context<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

impl ToolIntent for ResearchTopic {
    const NAME: &'static str = "research-topic";
    const TITLE: &'static str = "Research a topic";
    const DESCRIPTION: &'static str =
        "Research a topic and return informational summary (LOW RISK - typically ALLOWED)";

    fn annotations() -> Option<ToolAnnotations> {
        Some(ToolAnnotations::new().read_only(true))
    }

    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Research and summarize: {}", self.topic),
            success_criteria: strings(&[
                "Summary is accurate and relevant",
                "No external side effects",
            ]),
            constraints: strings(&["read-only"]),
            tools: strings(&["web_search", "read_file"]),
            side_effects: Vec::new(),
            context: Map::new(),
        }
    }
}

impl GuardedTool for ResearchTopic {
    type Error = Infallible;
    /// A stand-in: it reads its arguments and writes nothing anywhere.
    const GUARDRAILS: &'static [&'static str] = &["read_only"];

    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        let topic = self.topic;
        Ok(ToolOutput::text(format!(
            "Research Summary: {topic}\n\nThis is an informational summary about {topic}.\n\n\
             Key findings:\n- Point 1: Overview of the topic\n- Point 2: Key considerations\n\
             - Point 3: Common approaches\n\nThis research is for informational purposes only.\n\
             (Stand-in action: no search was run.)"
        )))
    }
}

impl ToolIntent for PublishContent {
    const NAME: &'static str = "publish-content";
    const TITLE: &'static str = "Publish content";
    const DESCRIPTION: &'static str =
        "Publish content to a public channel (HIGH RISK - typically DENIED)";

    fn annotations() -> Option<ToolAnnotations> {
        Some(ToolAnnotations::new().open_world(true))
    }

    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Publish content to {}", self.channel),
            success_criteria: strings(&["Content published successfully"]),
            constraints: Vec::new(),
            tools: strings(&["shell", "git"]),
            side_effects: strings(&["publish"]),
            context: Map::new(),
        }
    }
}

impl GuardedTool for PublishContent {
    type Error = Infallible;
    /// A stand-in: it reads its arguments and writes nothing anywhere.
    const GUARDRAILS: &'static [&'static str] = &["read_only"];

    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        const PREVIEW_CHARS: usize = 200;
        let mut preview: String = self.content.chars().take(PREVIEW_CHARS).collect();
        if self.content.chars().nth(PREVIEW_CHARS).is_some() {
            preview.push_str("...");
        }
        Ok(ToolOutput::text(format!(
            "Content published to {}:\n\n{preview}\n\n(Stand-in action: nothing was really published.)",
            self.channel
        )))
    }
}

impl DeployChanges {
    fn role(&self) -> ActorRole {
        self.actor_role.unwrap_or(ActorRole::Viewer)
    }
}

impl ToolIntent for DeployChanges {
    const NAME: &'static str = "deploy-changes";
    const TITLE: &'static str = "Deploy changes";
    const DESCRIPTION: &'static str = "Deploy changes to an environment. Context-aware: requires appropriate actor_role for production deployments.";

    fn annotations() -> Option<ToolAnnotations> {
        Some(ToolAnnotations::new().destructive(true))
    }

    /// A missing role is a claim of `viewer` (`docs/contract.md` §2, §7).
    fn claims(&mut self) -> Vec<Claim<'_>> {
        vec![Claim::ActorRole(
            self.actor_role.get_or_insert(ActorRole::Viewer),
        )]
    }

    fn intent(&self) -> Intent {
        Intent {
            goal: format!(
                "Deploy {} to {}",
                self.service_name,
                self.environment.as_str()
            ),
            success_criteria: strings(&["Deployment completes successfully"]),
            constraints: Vec::new(),
            tools: strings(&["shell", "kubectl"]),
            side_effects: strings(&["deploy"]),
            context: context([
                ("environment", self.environment.as_str().into()),
                ("actor_role", self.role().as_str().into()),
            ]),
        }
    }
}

impl GuardedTool for DeployChanges {
    type Error = Infallible;
    /// A stand-in: it reads its arguments and writes nothing anywhere.
    const GUARDRAILS: &'static [&'static str] = &["read_only"];

    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        Ok(ToolOutput::text(format!(
            "Deployment initiated:\n- Service: {}\n- Environment: {}\n- Changes: {}\n\
             - Actor Role: {}\n\n(Stand-in action: nothing was really deployed.)",
            self.service_name,
            self.environment.as_str(),
            self.changes,
            self.role().as_str()
        )))
    }
}

impl ManagedDeploy {
    fn scope(&self) -> &str {
        self.resource_scope.as_deref().unwrap_or("all")
    }
}

impl ToolIntent for ManagedDeploy {
    const NAME: &'static str = "managed-deploy";
    const TITLE: &'static str = "Deploy with authorization context";
    const DESCRIPTION: &'static str = "Deploy with full authorization context. Demonstrates actor_role, approval_status, environment, and resource_scope usage.";

    fn annotations() -> Option<ToolAnnotations> {
        Some(ToolAnnotations::new().destructive(true))
    }

    fn claims(&mut self) -> Vec<Claim<'_>> {
        vec![
            Claim::ActorRole(&mut self.actor_role),
            Claim::ApprovalStatus(&mut self.approval_status),
        ]
    }

    fn intent(&self) -> Intent {
        let mut constraints = Vec::new();
        if self.environment == ManagedEnvironment::Production {
            constraints.push("production_deployment".to_owned());
            if self.approval_status != ApprovalStatus::Approved {
                constraints.push("approval_required".to_owned());
            }
        }
        if self.actor_role == ActorRole::Viewer {
            constraints.push("read_only_role".to_owned());
        }
        Intent {
            goal: format!(
                "Deploy {} to {} as {}",
                self.service_name,
                self.environment.as_str(),
                self.actor_role.as_str()
            ),
            success_criteria: strings(&[
                "Deployment completes successfully",
                "No unauthorized access to resources",
            ]),
            constraints,
            tools: strings(&["shell", "kubectl", "terraform"]),
            side_effects: strings(&["deploy"]),
            context: context([
                ("actor_role", self.actor_role.as_str().into()),
                ("approval_status", self.approval_status.as_str().into()),
                ("environment", self.environment.as_str().into()),
                ("resource_scope", self.scope().into()),
            ]),
        }
    }
}

impl GuardedTool for ManagedDeploy {
    type Error = Infallible;
    /// A stand-in: it reads its arguments and writes nothing anywhere.
    const GUARDRAILS: &'static [&'static str] = &["read_only"];

    async fn run(self, permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        // After a human approval the body sees the status the check saw, not the claim the
        // server replaced with `pending`.
        let approval_status = match permit.approval() {
            Some(_) => ApprovalStatus::Approved,
            None => self.approval_status,
        };
        let (role, approval, environment, scope) = (
            self.actor_role.as_str(),
            approval_status.as_str(),
            self.environment.as_str(),
            self.scope(),
        );
        Ok(ToolOutput::text(format!(
            "Deployment Details:\n- Service: {}\n- Environment: {environment}\n- Changes: {}\n\
             - Actor Role: {role}\n- Approval Status: {approval}\n- Resource Scope: {scope}\n\n\
             Authorization Context Used:\n- actor_role: {role}\n- approval_status: {approval}\n\
             - environment: {environment}\n- resource_scope: {scope}\n\n\
             (Stand-in action: nothing was really deployed.)",
            self.service_name, self.changes
        )))
    }
}

impl RetryWorkflow {
    /// The attempt this call would be; `u128` so that `u64::MAX` retries cannot overflow.
    fn attempt(&self) -> u128 {
        u128::from(self.retry_count.0) + 1
    }
}

impl ToolIntent for RetryWorkflow {
    const NAME: &'static str = "retry-workflow";
    const TITLE: &'static str = "Retry a workflow";
    const DESCRIPTION: &'static str =
        "Retry a failing workflow (MEDIUM RISK - may DEFER if loop threshold exceeded)";

    fn claims(&mut self) -> Vec<Claim<'_>> {
        vec![Claim::RetryCount {
            workflow_id: &self.workflow_id,
            count: &mut self.retry_count.0,
        }]
    }

    fn intent(&self) -> Intent {
        Intent {
            goal: format!(
                "Retry workflow {} (attempt {})",
                self.workflow_id,
                self.attempt()
            ),
            success_criteria: strings(&["Workflow completes successfully"]),
            constraints: strings(&["max_retries: 5"]),
            tools: strings(&["shell", "api_call"]),
            side_effects: strings(&["loop"]),
            context: context([
                ("run_id", self.workflow_id.as_str().into()),
                ("retry_count", self.retry_count.0.into()),
            ]),
        }
    }
}

impl GuardedTool for RetryWorkflow {
    type Error = Infallible;
    /// A stand-in: it reads its arguments and writes nothing anywhere.
    const GUARDRAILS: &'static [&'static str] = &["read_only"];

    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        Ok(ToolOutput::text(format!(
            "Workflow {} retried successfully.\nTotal attempts: {}\n\n\
             (Stand-in action: no workflow was really retried.)",
            self.workflow_id,
            self.attempt()
        )))
    }
}

/// `check-authorization` only asks; it has no action, so it is a [`ToolIntent`] and nothing more.
impl ToolIntent for CheckAuthorization {
    const NAME: &'static str = "check-authorization";
    const TITLE: &'static str = "Check authorization";
    const DESCRIPTION: &'static str =
        "Check if an action would be authorized by Stage0 (does NOT execute the action)";

    fn annotations() -> Option<ToolAnnotations> {
        Some(ToolAnnotations::new().read_only(true))
    }

    fn intent(&self) -> Intent {
        let mut context = Map::new();
        if let Some(RetryCount(retry_count)) = self.retry_count {
            context.insert("retry_count".to_owned(), retry_count.into());
        }
        Intent {
            goal: self.goal.clone(),
            success_criteria: self
                .success_criteria
                .clone()
                .unwrap_or_else(|| strings(&["Task completes successfully"])),
            constraints: Vec::new(),
            tools: Vec::new(),
            side_effects: self.side_effects.clone(),
            context,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::RetryCount;

    fn read(value: serde_json::Value) -> Result<u64, String> {
        serde_json::from_value::<RetryCount>(value)
            .map(|c| c.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_retry_count_is_a_whole_number_from_zero_written_as_an_integer_or_a_float() {
        assert_eq!(read(json!(0)), Ok(0));
        assert_eq!(read(json!(5)), Ok(5));
        assert_eq!(read(json!(5.0)), Ok(5));
        assert_eq!(
            read(json!(9_007_199_254_740_991.0)),
            Ok(9_007_199_254_740_991)
        );
        assert_eq!(
            read(json!(9_007_199_254_740_993_u64)),
            Ok(9_007_199_254_740_993)
        );
        assert_eq!(read(json!(u64::MAX)), Ok(u64::MAX));
    }

    #[test]
    fn a_count_written_as_a_double_past_2_pow_53_is_refused_not_rounded() {
        let written = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| e.to_string())
                .and_then(read)
        };
        assert_eq!(written("9007199254740993"), Ok(9_007_199_254_740_993));
        for text in ["9007199254740993.0", "9007199254740992.0", "1e17", "1.8e19"] {
            assert!(written(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn fractions_negatives_strings_and_huge_floats_are_not_retry_counts() {
        for value in [
            json!(1.5),
            json!(-1),
            json!(-0.5),
            json!("5"),
            json!(null),
            json!(1e300),
        ] {
            assert!(read(value.clone()).is_err(), "{value} was accepted");
        }
        assert_eq!(
            read(json!(-1)),
            Err("expected a whole number from 0, got -1".to_owned())
        );
    }
}
