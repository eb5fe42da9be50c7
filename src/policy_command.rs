//! `mcp-server-stage0 policy validate|eval`: an operator's checks of a Cedar policy before it is
//! put in force (`docs/cedar.md`, "Operator commands").
//!
//! `validate` loads each policy set as the server would at start (strict validation against the
//! schema) and reports its `policy_version`, or every diagnostic. `eval` decides one call of one
//! of the six tools as the server would, with the operator's role and a retry count given on the
//! command line, and never runs a tool body: the arguments are read by the tool's own type, its
//! claims are replaced with vouched values, and the intent, the arguments and the facts go to the
//! Cedar policy decision point.

use std::time::SystemTime;

use serde_json::Value;
use stage0_guard::ToolIntent;
use stage0_guard::claims::{ActorRole, Operator};
use stage0_guard::ledger::AttemptLedger;
use stage0_guard::policy::cedar::{Call, CedarPolicy, Evaluation, Facts, RecentCallCounts};

use crate::tools::{
    CheckAuthorization, DeployChanges, ManagedDeploy, PublishContent, ResearchTopic, RetryWorkflow,
};

/// One call to evaluate, as given on the command line.
#[derive(Debug)]
pub struct EvalCall {
    /// The MCP tool name, one of the six.
    pub tool: String,
    /// The tool's arguments, a JSON object.
    pub arguments: Value,
    /// The operator's role (`--role`); the tool's own claim can only lower it.
    pub role: ActorRole,
    /// The operator's actor id (`STAGE0_ACTOR_ID`), the principal's id.
    pub actor_id: Option<String>,
    /// The retry count the server would have observed (`--retry-count`); `None` keeps what the
    /// arguments give.
    pub retry_count: Option<u64>,
}

/// Decides `call` with `policy`, as the guard would.
///
/// # Errors
///
/// A sentence when the tool is not one of the six or its arguments cannot be read.
pub fn eval(policy: &CedarPolicy, call: &EvalCall) -> Result<Evaluation, String> {
    let decide = match call.tool.as_str() {
        ResearchTopic::NAME => decide::<ResearchTopic>,
        PublishContent::NAME => decide::<PublishContent>,
        DeployChanges::NAME => decide::<DeployChanges>,
        ManagedDeploy::NAME => decide::<ManagedDeploy>,
        RetryWorkflow::NAME => decide::<RetryWorkflow>,
        CheckAuthorization::NAME => decide::<CheckAuthorization>,
        other => return Err(format!("`{other}` is not a tool of this server")),
    };
    decide(policy, call)
}

/// [`eval`] for tool `T`.
fn decide<T: ToolIntent>(policy: &CedarPolicy, call: &EvalCall) -> Result<Evaluation, String> {
    let mut tool: T = serde_json::from_value(call.arguments.clone())
        .map_err(|error| format!("the arguments of `{}` cannot be read: {error}", T::NAME))?;
    let operator = Operator {
        actor_role: call.role,
        actor_id: call.actor_id.clone(),
    };
    let provenance = operator.vouch(tool.claims(), &AttemptLedger::default());
    let mut intent = tool.intent();
    provenance.annotate(&mut intent.context);
    let mut facts = Facts::vouched(
        &operator,
        &provenance,
        &intent,
        SystemTime::now(),
        RecentCallCounts::default(),
    );
    if let Some(count) = call.retry_count {
        facts.retry_count = count;
    }
    let Ok(Value::Object(arguments)) = serde_json::to_value(&tool) else {
        return Err(format!("the arguments of `{}` are not an object", T::NAME));
    };
    let call = Call {
        tool: T::NAME,
        arguments: &arguments,
        intent: &intent,
    };
    Ok(policy.decide(&call, &facts, "policy-eval".to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;
    use stage0_guard::policy::wire::Verdict;

    use super::*;

    fn team() -> CedarPolicy {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/stage0-guard/policies/team-example.cedar");
        CedarPolicy::load(&path, None).expect("the team example loads")
    }

    fn call(tool: &str, arguments: Value, role: ActorRole, retry_count: Option<u64>) -> EvalCall {
        EvalCall {
            tool: tool.to_owned(),
            arguments,
            role,
            actor_id: None,
            retry_count,
        }
    }

    #[test]
    fn the_role_given_decides_as_the_server_would() {
        let publish = json!({"content": "Release notes", "channel": "blog"});
        let viewer = eval(
            &team(),
            &call("publish-content", publish.clone(), ActorRole::Viewer, None),
        );
        let developer = eval(
            &team(),
            &call("publish-content", publish, ActorRole::Developer, None),
        );
        let (viewer, developer) = (viewer.unwrap(), developer.unwrap());
        assert_eq!(viewer.response.verdict, Verdict::Deny);
        assert!(
            viewer.determining.is_empty(),
            "no permit applies to a viewer"
        );
        assert_eq!(developer.response.verdict, Verdict::Allow);
        assert_eq!(developer.determining, ["PUBLISH_TEAM_CHANNELS"]);
    }

    #[test]
    fn the_retry_count_given_is_the_one_decided_on() {
        let retry = json!({"workflowId": "payments-nightly", "retryCount": 0});
        let first = eval(
            &team(),
            &call("retry-workflow", retry.clone(), ActorRole::Admin, None),
        );
        let third = eval(
            &team(),
            &call("retry-workflow", retry, ActorRole::Admin, Some(3)),
        );
        assert_eq!(first.unwrap().response.verdict, Verdict::Allow);
        let third = third.unwrap();
        assert_eq!(third.response.verdict, Verdict::Defer);
        assert_eq!(third.determining, ["PAYMENT_RETRY_REVIEW"]);
    }

    #[test]
    fn an_unknown_tool_or_unreadable_arguments_are_refused_by_name() {
        let unknown = eval(&team(), &call("rm-rf", json!({}), ActorRole::Admin, None));
        assert_eq!(unknown.unwrap_err(), "`rm-rf` is not a tool of this server");
        let unreadable = eval(
            &team(),
            &call("deploy-changes", json!({}), ActorRole::Admin, None),
        );
        assert!(unreadable.unwrap_err().contains("deploy-changes"));
    }
}
