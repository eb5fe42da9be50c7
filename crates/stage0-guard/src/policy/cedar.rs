//! A local policy decision point: policies written in Cedar, validated against a schema, decided
//! in process.
//!
//! A team writes its own rules as data (`policies/team-example.cedar`); `policies/simulator.cedar`
//! is the simulator's five rules in the same form. [`CedarPolicy::load`] parses the policies,
//! checks the annotations this module reads and validates everything against the schema in
//! strict mode, or returns every problem with its file, line and column ([`LoadError`]).
//! [`CedarPolicy::decide`] answers one tool call with the same [`PolicyResponse`] the simulator
//! and Stage0 give, plus the ids of the policies that determined it. Like the simulator it is a
//! pure function of its inputs: the guard supplies the facts only the server knows ([`Facts`],
//! with the clock and the [`RecentCalls`] counts).
//!
//! # The request model
//!
//! Fixed, because operators write policies against it (docs/cedar.md has it with examples, and
//! `policies/stage0.cedarschema` declares it). Every name is in the namespace `Stage0`.
//!
//! | part | value |
//! |---|---|
//! | principal | `Stage0::Actor::"<actor id>"` (`STAGE0_ACTOR_ID`, or `anonymous`), attribute `role`: the effective role, `"viewer"`, `"developer"` or `"admin"` |
//! | action | `Stage0::Action::"<tool name>"`, in the group `Stage0::Action::"execute"` (tools with a body) or `Stage0::Action::"report"` (`check-authorization`) |
//! | resource | `Stage0::Tool::"<tool name>"` |
//! | `context.goal` | String: the intent's goal |
//! | `context.goal_length` | Long: the goal's length in UTF-16 code units, as the simulator counts |
//! | `context.goal_lower` | String: the goal lower-cased (Unicode) |
//! | `context.side_effects`, `success_criteria`, `constraints`, `tools` | Set of String: the intent's lists |
//! | `context.retry_count` | Long: the retry count the server vouches for (the larger of the claim and the attempts it saw; 0 for tools without one) |
//! | `context.claimed_retry_count` | Long: the agent's claim |
//! | `context.actor_role` | String: the effective role, as `principal.role` |
//! | `context.approval_status` | String: `"none"`, `"pending"` (an approval the agent claimed) or `"approved"` (a human approved this call) |
//! | `context.approved_by` | String, only when `approved`: who approved |
//! | `context.arguments` | the tool's arguments as a typed record (the action's `arguments` type in the schema), after the server replaced the claims it vouches for |
//! | `context.now` | datetime: the server's UTC clock at the decision |
//! | `context.hour_utc` | Long: 0–23 |
//! | `context.weekday_utc` | Long: 1 = Monday … 7 = Sunday |
//! | `context.recent_calls` | `{ tool_last_minute, tool_last_hour, all_last_minute }` (Long each): this principal's checked calls before this one, whatever their verdict |
//!
//! Counts above `i64::MAX` (Cedar's largest Long) are `i64::MAX`, in the context and in the
//! arguments.
//!
//! # From Cedar's answer to a verdict
//!
//! - `ALLOW` (`GO`) when a `permit` applies and no `forbid` does;
//! - `DEFER` (`DEFER`) when the `forbid` policies that apply all carry `@verdict("DEFER")` and a
//!   `permit` applies (so a human's approval can lift the deferral);
//! - `DENY` (`NO_GO`) when any other `forbid` applies, and with issue `NO_PERMIT` when no `permit`
//!   applies (deferring forbids or not);
//! - `DENY` (`ERROR`) with issue `POLICY_ERROR` when any policy fails to evaluate (naming it:
//!   Cedar would skip it, this module never does) or the request does not fit the schema.
//!
//! The determining policies' annotations fill the rest: `@id` is the issue code, the policy id
//! and the code in front of `reason`; `@reason` the reason text; `@severity` (`HIGH`, `MEDIUM`,
//! `LOW`) the severity (`HIGH` for a denying `forbid` without one, `MEDIUM` for a
//! deferring one); `@risk_score` (0–100) the risk score, the highest wins, and `high_risk` is
//! `true` from 60; `@questions` the questions for the human, one per line. A policy without `@id`
//! is named `<file name>:<line>`. `policy_version` is `cedar:` and the first 12 hex digits of the
//! SHA-256 of the policy text (the files' bytes, in file name order).
//!
//! # Speed
//!
//! A decision is Cedar's evaluation plus building the request (`cargo bench --bench cedar`,
//! docs/cedar.md has the figures). Building is kept small: the context is made of Cedar's values
//! directly (`request.rs` says why), Cedar's check of a request against the schema runs once per
//! tool and shape of arguments, and the principal's entity is kept for the last principals.

pub mod load;
pub mod recent_calls;
pub mod request;
pub mod response;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
};
use cedar_policy_core::ast::{ExtensionFunction, Name};
use cedar_policy_core::extensions::Extensions;
use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::claims::ActorRole;
use crate::policy::wire::PolicyResponse;
use load::{Loaded, PolicyMeta};
use response::Stamp;

pub use load::{Diagnostic, LoadError, Position, Source};
pub use recent_calls::{RecentCallCounts, RecentCalls};
pub use request::{ANONYMOUS, Call, Facts};
pub use response::{HIGH_RISK_FROM, NO_PERMIT, POLICY_ERROR};

/// The shipped schema (`policies/stage0.cedarschema`), used unless another is named.
pub const SCHEMA: &str = include_str!("../../policies/stage0.cedarschema");

/// The name diagnostics give the shipped schema.
pub const SCHEMA_PATH: &str = "policies/stage0.cedarschema";

/// A loaded, validated Cedar policy set and its schema: the `cedar` policy decision point.
///
/// Its policies never change once loaded: share it behind an `Arc` and swap in a newly loaded
/// one to reload, so that calls in flight finish on the policy set they started with. It keeps
/// two bounded caches of work that does not depend on a call's values: the argument shapes that
/// passed the schema check ([`CHECKED_SHAPES`]) and the entities of the last principals
/// ([`PRINCIPALS`]).
#[derive(Debug)]
pub struct CedarPolicy {
    schema: Schema,
    policies: PolicySet,
    permits: PolicySet,
    /// The annotations of each policy, by id.
    meta: HashMap<PolicyId, PolicyMeta>,
    /// The action entities the schema declares (tools and their groups).
    actions: Entities,
    version: String,
    authorizer: Authorizer,
    actor_type: EntityTypeName,
    action_type: EntityTypeName,
    tool_type: EntityTypeName,
    /// Cedar's `datetime` constructor, looked up once (see `request::context`).
    datetime: &'static ExtensionFunction,
    /// Tool name and argument shape of the requests that passed the schema check.
    checked_shapes: RwLock<HashSet<String>>,
    /// The entities of the last principals seen, by id and role.
    principals: Mutex<LruCache<(String, &'static str), Arc<Entities>>>,
}

/// A decision and the policies that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The verdict, as the simulator and Stage0 give one.
    pub response: PolicyResponse,
    /// The ids of the determining policies, in policy-set order: the `permit`s of an `ALLOW`,
    /// the `forbid`s of a `DENY` or `DEFER`, the policies that failed for a `POLICY_ERROR`;
    /// empty for `NO_PERMIT` and for a request that does not fit the schema.
    pub determining: Vec<String>,
}

impl CedarPolicy {
    /// Loads the policy file or folder of `.cedar` files at `policy_path` (files in name order)
    /// and validates it against the schema at `schema_path`, or the shipped [`SCHEMA`] when
    /// `None`.
    ///
    /// # Errors
    ///
    /// [`LoadError`] when a file cannot be read, a folder has no `.cedar` file, or the schema or
    /// the policies are invalid; the last two carry every [`Diagnostic`] found.
    pub fn load(policy_path: &Path, schema_path: Option<&Path>) -> Result<Self, LoadError> {
        let schema = match schema_path {
            Some(path) => Source::read(path)?,
            None => Source::new(SCHEMA_PATH, SCHEMA),
        };
        CedarPolicy::from_sources(&Source::read_policies(policy_path)?, &schema)
    }

    /// [`load`](CedarPolicy::load) from texts in memory: `policies` in the order given.
    ///
    /// # Errors
    ///
    /// [`LoadError::Schema`] or [`LoadError::Policies`] with every [`Diagnostic`] found.
    pub fn from_sources(policies: &[Source], schema: &Source) -> Result<Self, LoadError> {
        let schema_error = |message: String| LoadError::Schema {
            diagnostics: vec![Diagnostic {
                path: schema.path.clone(),
                position: None,
                message,
            }],
        };
        let Loaded {
            schema,
            policies: set,
            permits,
            meta,
        } = load::load(policies, schema)?;
        let type_name = |name| EntityTypeName::from_str(name).expect("a valid entity type name");
        let (actor_type, action_type, tool_type) = (
            type_name("Stage0::Actor"),
            type_name("Stage0::Action"),
            type_name("Stage0::Tool"),
        );
        for needed in [&actor_type, &tool_type] {
            if !schema.entity_types().any(|declared| declared == needed) {
                return Err(schema_error(format!(
                    "the schema does not declare the entity type `{needed}` of the request model"
                )));
            }
        }
        let actions = schema
            .action_entities()
            .map_err(|error| schema_error(error.to_string()))?;
        Ok(CedarPolicy {
            schema,
            policies: set,
            permits,
            meta: meta
                .into_iter()
                .map(|meta| (PolicyId::new(&meta.id), meta))
                .collect(),
            actions,
            version: policy_version(policies),
            authorizer: Authorizer::new(),
            actor_type,
            action_type,
            tool_type,
            datetime: Extensions::all_available()
                .func(&Name::parse_unqualified_name("datetime").expect("a valid name"))
                .expect("the `datetime` feature of cedar-policy is on"),
            checked_shapes: RwLock::new(HashSet::new()),
            principals: Mutex::new(LruCache::new(
                NonZeroUsize::new(PRINCIPALS).expect("not zero"),
            )),
        })
    }

    /// `cedar:` and the first 12 hex digits of the SHA-256 of the policy text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The ids of every policy, in policy-set order.
    pub fn policy_ids(&self) -> Vec<&str> {
        let mut metas: Vec<&PolicyMeta> = self.meta.values().collect();
        metas.sort_by_key(|meta| meta.order);
        metas.into_iter().map(|meta| meta.id.as_str()).collect()
    }

    /// Decides `call` with `facts`; `request_id` is copied into the verdict. Never fails: a
    /// policy that cannot be evaluated and a request that does not fit the schema are `DENY`
    /// verdicts with `POLICY_ERROR`.
    pub fn decide(&self, call: &Call<'_>, facts: &Facts, request_id: String) -> Evaluation {
        let stamp = Stamp {
            policy_version: &self.version,
            request_id,
        };
        let (request, entities) = match self.request(call, facts) {
            Ok(built) => built,
            Err(error) => {
                return Evaluation {
                    response: response::request_error(stamp, call.tool, &error),
                    determining: Vec::new(),
                };
            }
        };
        let answer = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);

        let mut failed: Vec<(&PolicyMeta, String)> = answer
            .diagnostics()
            .errors()
            .map(|error| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(error) = error;
                (&self.meta[error.policy_id()], error.inner().to_string())
            })
            .collect();
        if !failed.is_empty() {
            failed.sort_by_key(|(meta, _)| meta.order);
            let failed: Vec<(String, String)> = failed
                .into_iter()
                .map(|(meta, error)| (meta.id.clone(), error))
                .collect();
            return Evaluation {
                determining: failed.iter().map(|(id, _)| id.clone()).collect(),
                response: response::policy_error(stamp, &failed),
            };
        }

        let mut determining: Vec<&PolicyMeta> = answer
            .diagnostics()
            .reason()
            .map(|id| &self.meta[id])
            .collect();
        determining.sort_by_key(|meta| meta.order);
        let response = match answer.decision() {
            CedarDecision::Allow => response::allow(stamp, &determining),
            CedarDecision::Deny if determining.is_empty() => response::no_permit(stamp, call.tool),
            CedarDecision::Deny if determining.iter().all(|forbid| forbid.defer) => {
                // Deferring is only worth a human's time if a permit would then allow the call.
                let permitted = self
                    .authorizer
                    .is_authorized(&request, &self.permits, &entities)
                    .decision();
                if permitted == CedarDecision::Allow {
                    response::forbidden(stamp, &determining)
                } else {
                    determining.clear();
                    response::no_permit(stamp, call.tool)
                }
            }
            CedarDecision::Deny => response::forbidden(stamp, &determining),
        };
        Evaluation {
            response,
            determining: determining.iter().map(|meta| meta.id.clone()).collect(),
        }
    }

    /// The Cedar request of `call` and the entities it needs (the principal and the schema's
    /// actions), or why it does not fit the schema.
    ///
    /// Cedar's check of a request against the schema costs about as much as the decision; it
    /// depends only on the action, the shape of the arguments and whether `approved_by` is
    /// there (every other part of the request has the same types in every call), so each is
    /// checked once and remembered ([`CHECKED_SHAPES`] at most; past that, every call is
    /// checked).
    fn request(&self, call: &Call<'_>, facts: &Facts) -> Result<(Request, Arc<Entities>), String> {
        let uid = |kind: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
        };
        let principal = uid(&self.actor_type, facts.principal_id());
        let action = uid(&self.action_type, call.tool);
        let resource = uid(&self.tool_type, call.tool);
        let (context, shape) = request::context(call, facts, self.datetime)?;
        // `approved_by` is the one other part of the context that may be absent.
        let approved = if facts.approver().is_some() { "+" } else { "-" };
        let key = format!("{}:{}{approved}{shape}", call.tool.len(), call.tool);
        let checked = read(&self.checked_shapes).contains(&key);
        let unchecked = (!checked).then(|| context.clone());
        let request = Request::new(
            principal.clone(),
            action.clone(),
            resource,
            context,
            (!checked).then_some(&self.schema),
        )
        .map_err(|error| match unchecked {
            Some(context) => self
                .why_unfit(context, &action)
                .unwrap_or(error.to_string()),
            None => error.to_string(),
        })?;
        if !checked {
            let mut shapes = write(&self.checked_shapes);
            if shapes.len() < CHECKED_SHAPES {
                shapes.insert(key);
            }
        }
        Ok((
            request,
            self.entities(facts.principal_id(), principal, facts.role)?,
        ))
    }

    /// Which part of `context` does not fit the schema for `action`: Cedar's check of a whole
    /// request only says that the context does not, reading it as JSON against the schema says
    /// where. `None` when that finds nothing more.
    fn why_unfit(&self, context: Context, action: &EntityUid) -> Option<String> {
        let json = context.to_json_value().ok()?;
        Context::from_json_value(json, Some((&self.schema, action)))
            .err()
            .map(|error| error.to_string())
    }

    /// The principal with its role and the schema's actions; kept for the last
    /// [`PRINCIPALS`] principals, since adding an entity recomputes the whole hierarchy.
    fn entities(
        &self,
        id: &str,
        principal: EntityUid,
        role: ActorRole,
    ) -> Result<Arc<Entities>, String> {
        let key = (id.to_owned(), role.as_str());
        if let Some(entities) = lock(&self.principals).get(&key) {
            return Ok(Arc::clone(entities));
        }
        let actor = Entity::new(
            principal,
            HashMap::from([(
                "role".to_owned(),
                RestrictedExpression::new_string(role.as_str().to_owned()),
            )]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let entities = Arc::new(
            self.actions
                .clone()
                .add_entities([actor], Some(&self.schema))
                .map_err(|e| e.to_string())?,
        );
        lock(&self.principals).put(key, Arc::clone(&entities));
        Ok(entities)
    }
}

/// How many (action, argument shape) pairs a policy set remembers as fitting the schema; the six
/// tools have a handful each.
pub const CHECKED_SHAPES: usize = 1024;

/// How many principals' entities a policy set keeps built.
pub const PRINCIPALS: usize = 64;

// A poisoned lock still holds a correct cache: entries are inserted whole.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `cedar:` and the first 12 hex digits of the SHA-256 of the policies' texts, concatenated in
/// the order given (file name order when read from a folder).
pub fn policy_version(policies: &[Source]) -> String {
    let mut hash = Sha256::new();
    for source in policies {
        hash.update(source.text.as_bytes());
    }
    let digest = hex::encode(hash.finalize());
    format!("cedar:{}", &digest[..12])
}
