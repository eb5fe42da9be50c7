//! What the agent claims and what the server vouches for instead (`docs/contract.md` §7).
//!
//! Three arguments decide verdicts yet come from the model itself: a retry count (an agent in a
//! runaway loop can send 0 forever), an actor role (it can claim `admin`) and an approval status
//! (it can claim `approved`). The policy enforcement point must not take the agent's word for
//! them. A tool names these arguments as [`Claim`]s; before the guard builds the execution intent
//! it replaces each one in place with what the server knows ([`Operator::vouch`]):
//!
//! - retry count: the larger of the claim and the attempts the server has seen for the workflow;
//! - actor role: the lower of the claim and the role the operator configured
//!   (`STAGE0_ACTOR_ROLE`), in the order viewer < developer < admin;
//! - approval status: a claimed `approved` becomes `pending`; only a human's answer to an
//!   elicitation makes a call approved (see `approval.rs`).
//!
//! The claims still reach the policy decision point, as `claimed_retry_count`,
//! `claimed_actor_role` and `claimed_approval_status` next to the effective values, plus
//! `actor_id` (`STAGE0_ACTOR_ID`) when configured. The tool result shows both in [`Provenance`].

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ledger::{AttemptLedger, WorkflowId};

/// Who acts, from least to most privileged: viewer < developer < admin. Spelled in lowercase in
/// tool arguments, in the `/check` context (`actor_role`) and in `STAGE0_ACTOR_ROLE`, as the
/// original's `actorRole` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum ActorRole {
    /// `admin`: the most privileged role.
    Admin,
    /// `developer`.
    Developer,
    /// `viewer`: the least privileged role, and the default.
    Viewer,
}

/// Whether an action has been approved by a human. Spelled in lowercase in tool arguments
/// (`approvalStatus`) and in the `/check` context (`approval_status`), as in the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum ApprovalStatus {
    /// `approved`: a human approved this call (never on the agent's word alone).
    Approved,
    /// `pending`: approval asked for, not given.
    Pending,
    /// `none`: no approval asked for.
    None,
}

impl ActorRole {
    /// The wire spelling, as in the input schema and the Stage0 context.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorRole::Admin => "admin",
            ActorRole::Developer => "developer",
            ActorRole::Viewer => "viewer",
        }
    }

    /// The lower of two roles in the order viewer < developer < admin.
    pub fn lower(self, other: ActorRole) -> ActorRole {
        let rank = |role: ActorRole| match role {
            ActorRole::Viewer => 0,
            ActorRole::Developer => 1,
            ActorRole::Admin => 2,
        };
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for ActorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role named in text that is not `viewer`, `developer` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `viewer`, `developer` or `admin`, got `{0}`")]
pub struct UnknownRole(String);

impl FromStr for ActorRole {
    type Err = UnknownRole;

    /// Reads `viewer`, `developer` or `admin` (as in `STAGE0_ACTOR_ROLE`), ignoring case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "viewer" => Ok(ActorRole::Viewer),
            "developer" => Ok(ActorRole::Developer),
            "admin" => Ok(ActorRole::Admin),
            _ => Err(UnknownRole(text.to_owned())),
        }
    }
}

impl ApprovalStatus {
    /// The wire spelling, as in the input schema and the Stage0 context.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::None => "none",
        }
    }
}

/// An argument of a tool call that the agent asserts and the server must vouch for.
///
/// A tool lists its claims in [`ToolIntent::claims`](crate::guard::ToolIntent::claims), pointing
/// into its own arguments; the guard overwrites each with the effective value before it builds
/// the intent, so the goal, constraints, context and the tool body all see the vouched value.
#[derive(Debug)]
pub enum Claim<'a> {
    /// The number of earlier attempts at `workflow_id` (in canonical form, as the ledger counts
    /// it); at least what the server has seen.
    RetryCount {
        /// The workflow the attempts are counted for (`workflowId` of `retry-workflow`), in
        /// canonical form.
        workflow_id: &'a WorkflowId,
        /// The claimed number of earlier attempts, overwritten with the effective one.
        count: &'a mut u64,
    },
    /// The acting role; at most the role the operator configured.
    ActorRole(&'a mut ActorRole),
    /// The approval of the call; never `approved` on the agent's word.
    ApprovalStatus(&'a mut ApprovalStatus),
}

/// What whoever runs the server configured about the principal the agent acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// `STAGE0_ACTOR_ROLE` (default `viewer`): the highest role any call can act with.
    pub actor_role: ActorRole,
    /// `STAGE0_ACTOR_ID`: who the agent acts for, forwarded as `actor_id` and offered as the
    /// approver's name; `None` when unset.
    pub actor_id: Option<String>,
}

impl Default for Operator {
    /// A viewer with no id: the least privilege, for a server nobody configured.
    fn default() -> Self {
        Operator {
            actor_role: ActorRole::Viewer,
            actor_id: None,
        }
    }
}

impl Operator {
    /// Replaces every claim with the value the server vouches for and says where each came from.
    ///
    /// Counts one attempt in `ledger` per retry claim, so call it once per tool call.
    pub fn vouch(&self, claims: Vec<Claim<'_>>, ledger: &AttemptLedger) -> Provenance {
        self.vouch_counting(claims, ledger, true)
    }

    /// As [`vouch`](Operator::vouch), for the continuation of a call whose attempt was already
    /// counted (the MRTR retry of a deferred call): `observed` is the attempts seen before the
    /// deferred call, as it saw them, and nothing is counted (`workflow_key` stays unset).
    pub fn vouch_again(&self, claims: Vec<Claim<'_>>, ledger: &AttemptLedger) -> Provenance {
        self.vouch_counting(claims, ledger, false)
    }

    /// The attempt ledger's keys of the workflows whose retries `claims` claim to count, as
    /// [`vouch`](Operator::vouch) would count them for this operator.
    pub fn retry_keys(&self, claims: &[Claim<'_>]) -> Vec<[u8; 32]> {
        claims
            .iter()
            .filter_map(|claim| match claim {
                Claim::RetryCount { workflow_id, .. } => Some(AttemptLedger::key_for(
                    self.actor_id.as_deref(),
                    workflow_id,
                )),
                _ => None,
            })
            .collect()
    }

    /// The principal this operator configured: its actor id and role ceiling.
    pub fn principal(&self) -> Principal {
        Principal {
            actor_id: self.actor_id.clone(),
            actor_role: self.actor_role,
        }
    }

    fn vouch_counting(
        &self,
        claims: Vec<Claim<'_>>,
        ledger: &AttemptLedger,
        counting: bool,
    ) -> Provenance {
        let mut provenance = Provenance {
            actor_id: self.actor_id.clone(),
            ..Provenance::default()
        };
        for claim in claims {
            match claim {
                Claim::RetryCount { workflow_id, count } => {
                    let key = AttemptLedger::key_for(self.actor_id.as_deref(), workflow_id);
                    let observed = if counting {
                        provenance.workflow_key = Some(key);
                        ledger.observe_key(self.actor_id.as_deref(), key)
                    } else {
                        // The deferred call counted its own attempt; what it saw was one less
                        // (or more, if calls came in between: over-counting is the safe side).
                        ledger
                            .seen_key(self.actor_id.as_deref(), key)
                            .saturating_sub(1)
                    };
                    let claimed = *count;
                    *count = claimed.max(observed);
                    provenance.retry_count = Some(RetrySource {
                        effective: *count,
                        claimed,
                        observed,
                    });
                }
                Claim::ActorRole(role) => {
                    let claimed = *role;
                    *role = claimed.lower(self.actor_role);
                    provenance.actor_role = Some(RoleSource {
                        effective: *role,
                        claimed,
                        configured: self.actor_role,
                    });
                }
                Claim::ApprovalStatus(status) => {
                    let claimed = *status;
                    if claimed == ApprovalStatus::Approved {
                        *status = ApprovalStatus::Pending;
                    }
                    provenance.approval_status = Some(ApprovalSource {
                        effective: *status,
                        claimed,
                    });
                }
            }
        }
        provenance
    }
}

/// Who a call acts for: the actor id (`STAGE0_ACTOR_ID`, when set) and the role in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `STAGE0_ACTOR_ID`, when set.
    pub actor_id: Option<String>,
    /// The role the call acts with.
    pub actor_role: ActorRole,
}

/// Where the authorization context of a call came from: the `provenance` of a tool result.
///
/// Each part is present only when the tool made that claim; `actor_id` only when configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Provenance {
    /// `STAGE0_ACTOR_ID`, set by the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// The role sent as `actor_role`, the agent's claim, and the operator's ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_role: Option<RoleSource>,
    /// The status sent as `approval_status` and the agent's claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_status: Option<ApprovalSource>,
    /// The count sent as `retry_count`, the agent's claim, and the attempts the server had seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<RetrySource>,
    /// The attempt ledger's key of the workflow whose retry this call counted; recorded in the
    /// audit log, not shown in results.
    #[serde(skip)]
    pub workflow_key: Option<[u8; 32]>,
}

/// The effective role and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RoleSource {
    /// The lower of `claimed` and `configured`; sent as `actor_role`.
    pub effective: ActorRole,
    /// What the tool arguments said (a missing optional role is `viewer`).
    pub claimed: ActorRole,
    /// `STAGE0_ACTOR_ROLE`.
    pub configured: ActorRole,
}

/// The effective approval status and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ApprovalSource {
    /// Sent as `approval_status`: `approved` only after a human approved this call.
    pub effective: ApprovalStatus,
    /// What the tool arguments said.
    pub claimed: ApprovalStatus,
}

/// The effective retry count and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RetrySource {
    /// The larger of `claimed` and `observed`; sent as `retry_count`.
    pub effective: u64,
    /// What the tool arguments said.
    pub claimed: u64,
    /// Attempts at this workflow the server had seen before this call.
    pub observed: u64,
}

impl Provenance {
    /// One sentence per claim the server did not take as given, for the result's text.
    pub fn overrides(&self) -> Vec<String> {
        let mut overrides = Vec::new();
        if let Some(retry) = self.retry_count.filter(|r| r.effective != r.claimed) {
            overrides.push(format!(
                "retry_count {} was used, not the claimed {}: the server has seen {} earlier \
                 attempts at this workflow.",
                retry.effective, retry.claimed, retry.observed
            ));
        }
        if let Some(role) = self.actor_role.filter(|r| r.effective != r.claimed) {
            overrides.push(format!(
                "actor_role {} was used, not the claimed {}: this server allows at most {} \
                 (STAGE0_ACTOR_ROLE).",
                role.effective, role.claimed, role.configured
            ));
        }
        if let Some(approval) = self
            .approval_status
            .filter(|a| a.claimed == ApprovalStatus::Approved && a.effective != a.claimed)
        {
            overrides.push(format!(
                "approval_status {} was used, not the claimed approved: only a human's answer \
                 can approve a call.",
                approval.effective.as_str()
            ));
        }
        overrides
    }

    /// Adds the claims and `actor_id` to an intent's context, next to the effective values the
    /// tool already put there (`claimed_retry_count`, `claimed_actor_role`,
    /// `claimed_approval_status`, `actor_id`).
    pub fn annotate(&self, context: &mut Map<String, Value>) {
        if let Some(actor_id) = &self.actor_id {
            context.insert("actor_id".to_owned(), actor_id.as_str().into());
        }
        if let Some(role) = self.actor_role {
            context.insert(
                "claimed_actor_role".to_owned(),
                role.claimed.as_str().into(),
            );
        }
        if let Some(approval) = self.approval_status {
            context.insert(
                "claimed_approval_status".to_owned(),
                approval.claimed.as_str().into(),
            );
        }
        if let Some(retry) = self.retry_count {
            context.insert("claimed_retry_count".to_owned(), retry.claimed.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [ActorRole; 3] = [ActorRole::Viewer, ActorRole::Developer, ActorRole::Admin];

    #[test]
    fn a_claim_can_lower_the_role_but_never_raise_it_above_the_operators() {
        for (c, configured) in ROLES.into_iter().enumerate() {
            for (a, claimed) in ROLES.into_iter().enumerate() {
                let operator = Operator {
                    actor_role: configured,
                    actor_id: None,
                };
                let mut role = claimed;
                let provenance =
                    operator.vouch(vec![Claim::ActorRole(&mut role)], &AttemptLedger::default());
                assert_eq!(
                    role,
                    ROLES[c.min(a)],
                    "configured {configured}, claimed {claimed}"
                );
                assert_eq!(
                    provenance.actor_role,
                    Some(RoleSource {
                        effective: role,
                        claimed,
                        configured
                    })
                );
            }
        }
    }

    #[test]
    fn a_claimed_approval_is_pending_until_a_human_approves() {
        for (claimed, effective) in [
            (ApprovalStatus::Approved, ApprovalStatus::Pending),
            (ApprovalStatus::Pending, ApprovalStatus::Pending),
            (ApprovalStatus::None, ApprovalStatus::None),
        ] {
            let mut status = claimed;
            let provenance = Operator::default().vouch(
                vec![Claim::ApprovalStatus(&mut status)],
                &AttemptLedger::default(),
            );
            assert_eq!(status, effective);
            let mut context = Map::new();
            provenance.annotate(&mut context);
            assert_eq!(context["claimed_approval_status"], claimed.as_str());
        }
    }

    #[test]
    fn the_retry_count_is_the_larger_of_the_claim_and_what_the_server_saw() {
        let ledger = AttemptLedger::default();
        let operator = Operator::default();
        let etl = WorkflowId::new("etl").unwrap();
        let mut sent = Vec::new();
        for claimed in [0, 0, 7, 0] {
            let mut count = claimed;
            operator.vouch(
                vec![Claim::RetryCount {
                    workflow_id: &etl,
                    count: &mut count,
                }],
                &ledger,
            );
            sent.push(count);
        }
        assert_eq!(sent, [0, 1, 7, 3]);
    }

    #[test]
    fn roles_are_read_from_configuration_text() {
        assert_eq!("Developer".parse(), Ok(ActorRole::Developer));
        assert_eq!(
            "root".parse::<ActorRole>().unwrap_err().to_string(),
            "expected `viewer`, `developer` or `admin`, got `root`"
        );
    }
}
