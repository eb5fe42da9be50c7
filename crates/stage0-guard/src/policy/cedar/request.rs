//! From a tool call to a Cedar request: the principal, action, resource and context of the
//! request model (the `cedar` module docs and docs/cedar.md give it as a table).
//!
//! The inputs are split by who vouches for them: [`Call`] is what the agent asked for (the tool,
//! its arguments after the server replaced the claims, the intent the tool built from them), and
//! [`Facts`] is what only the server knows (who acts and with which role, the retry counts, a
//! human's approval, the clock, the recent calls). Nothing here reads a clock or the
//! environment: the guard fills [`Facts`], so a decision is a function of its inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::Context;
use cedar_policy_core::ast::{
    Context as CedarContext, ExtensionFunction, PartialValue, Value as CedarValue,
};
use serde_json::{Map, Number, Value};
use smol_str::SmolStr;

use super::recent_calls::RecentCallCounts;
use crate::claims::{ActorRole, ApprovalStatus, Operator, Provenance};
use crate::policy::wire::Intent;

/// The principal id of a call when no `STAGE0_ACTOR_ID` is configured.
pub const ANONYMOUS: &str = "anonymous";

/// What the agent asked for: the tool, its arguments and the intent built from them.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The MCP tool name, e.g. `deploy-changes`: the action and resource id.
    pub tool: &'a str,
    /// The tool's arguments as the tool read them, after the server replaced the claims it
    /// vouches for (the tool's argument struct, serialised): the context's `arguments`. Their
    /// shape must be the action's `arguments` record in the schema, or the call is denied with
    /// `POLICY_ERROR`.
    pub arguments: &'a Map<String, Value>,
    /// The execution intent the tool built from those arguments.
    pub intent: &'a Intent,
}

/// What the server vouches for about a call; never taken from the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Who the agent acts for (`STAGE0_ACTOR_ID`); the principal is
    /// `Stage0::Actor::"anonymous"` when `None`.
    pub actor_id: Option<String>,
    /// The effective role: the vouched role when the tool claims one, the operator's otherwise.
    pub role: ActorRole,
    /// The retry count the intent carries: for `retry-workflow` the larger of the claim and the
    /// attempts the server saw; 0 for tools without one.
    pub retry_count: u64,
    /// The retry count the agent claimed (equal to `retry_count` when nothing was vouched for).
    pub claimed_retry_count: u64,
    /// `approved` only after a human approved this call (with `approved_by`); `pending` when the
    /// agent claimed an approval the server did not take; `none` otherwise.
    pub approval_status: ApprovalStatus,
    /// Who approved; read only when `approval_status` is `approved`.
    pub approved_by: Option<String>,
    /// The server's clock at the decision.
    pub now: SystemTime,
    /// This principal's calls before this one ([`super::RecentCalls::observe`]).
    pub recent_calls: RecentCallCounts,
}

impl Facts {
    /// The facts of a call, from what the guard has when it decides: the `operator`'s
    /// configuration, the `provenance` of the vouched claims, and the `intent` (whose context
    /// carries the retry count a tool sends and a human's approval once given, see
    /// `HumanApproval::annotate`), plus the clock and the recent calls.
    ///
    /// The retry count is the vouched one when the tool claims one; otherwise the intent's
    /// `retry_count` read as the simulator reads it (a finite number from 0, rounded down;
    /// anything else is 0). The role is the vouched one when the tool claims one, the operator's
    /// otherwise. The approval is `approved` when the intent's context says so with a non-blank
    /// `approved_by`, else the vouched status of the tool's claim, else `none`.
    pub fn vouched(
        operator: &Operator,
        provenance: &Provenance,
        intent: &Intent,
        now: SystemTime,
        recent_calls: RecentCallCounts,
    ) -> Self {
        let (retry_count, claimed_retry_count) = match provenance.retry_count {
            Some(retry) => (retry.effective, retry.claimed),
            None => {
                let count = whole_count(intent.context.get("retry_count"));
                (count, count)
            }
        };
        let approved_by = (intent
            .context
            .get("approval_status")
            .and_then(Value::as_str)
            == Some("approved"))
        .then(|| intent.context.get("approved_by").and_then(Value::as_str))
        .flatten()
        .filter(|by| !by.trim().is_empty())
        .map(str::to_owned);
        let approval_status = match (&approved_by, provenance.approval_status) {
            (Some(_), _) => ApprovalStatus::Approved,
            (None, Some(source)) if source.effective != ApprovalStatus::Approved => {
                source.effective
            }
            (None, Some(_)) => ApprovalStatus::Pending,
            (None, None) => ApprovalStatus::None,
        };
        Facts {
            actor_id: provenance
                .actor_id
                .clone()
                .or_else(|| operator.actor_id.clone()),
            role: provenance
                .actor_role
                .map_or(operator.actor_role, |role| role.effective),
            retry_count,
            claimed_retry_count,
            approval_status,
            approved_by,
            now,
            recent_calls,
        }
    }

    /// The principal's entity id: the actor id, or [`ANONYMOUS`].
    pub fn principal_id(&self) -> &str {
        self.actor_id.as_deref().unwrap_or(ANONYMOUS)
    }

    /// `approved_by` when this is a human approval: `approved` with a non-blank name.
    pub(super) fn approver(&self) -> Option<&str> {
        match self.approval_status {
            ApprovalStatus::Approved => self
                .approved_by
                .as_deref()
                .filter(|by| !by.trim().is_empty()),
            _ => None,
        }
    }

    /// The `approval_status` the policies see: an approval without an approver's name is
    /// `pending`, since only a human's named answer approves a call (`approval.rs`).
    fn approval_status_text(&self) -> &'static str {
        match (self.approval_status, self.approver()) {
            (ApprovalStatus::Approved, None) => ApprovalStatus::Pending.as_str(),
            (status, _) => status.as_str(),
        }
    }
}

/// `retry_count` as the simulator reads it: a finite number from 0, rounded down; else 0.
fn whole_count(value: Option<&Value>) -> u64 {
    let Some(Value::Number(number)) = value else {
        return 0;
    };
    number.as_u64().unwrap_or_else(|| {
        number
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            // `as` saturates: 1e300 is u64::MAX.
            .map_or(0, |n| n as u64)
    })
}

/// A count as a Cedar `Long`: counts above `i64::MAX` are `i64::MAX`.
fn long(count: u64) -> CedarValue {
    CedarValue::from(i64::try_from(count).unwrap_or(i64::MAX))
}

fn string_set(items: &[String]) -> CedarValue {
    CedarValue::set(
        items.iter().map(|item| CedarValue::from(item.as_str())),
        None,
    )
}

/// The context of the request for `call` with `facts`, and the shape of its arguments (see
/// [`argument`]). The schema types the context when the request is made.
///
/// The context is built from Cedar's values directly (`cedar_policy_core`), not from
/// `RestrictedExpression`s as `cedar_policy::Context::from_pairs` wants: those are expressions
/// Cedar evaluates into the same values, and `RestrictedExpression::new_datetime` parses the name
/// `datetime` with the policy grammar on every call. Together that was 40 % of a decision. The
/// `datetime` constructor (`datetime`) is looked up once, at load.
///
/// # Errors
///
/// A sentence saying which argument has no Cedar value (see [`argument`]), or what Cedar said
/// about the clock.
pub(super) fn context(
    call: &Call<'_>,
    facts: &Facts,
    datetime: &ExtensionFunction,
) -> Result<(Context, String), String> {
    let intent = call.intent;
    let clock = UtcClock::at(facts.now);
    let mut shape = String::new();
    let arguments = fields(call.arguments, &mut shape)?;
    let now = match datetime.call(&[CedarValue::from(clock.rfc3339)]) {
        Ok(PartialValue::Value(now)) => now,
        Ok(PartialValue::Residual(_)) => return Err("the clock has no datetime value".to_owned()),
        Err(error) => return Err(format!("the clock: {error}")),
    };
    let recent_calls = CedarValue::record(
        [
            (
                "tool_last_minute",
                long(facts.recent_calls.tool_last_minute),
            ),
            ("tool_last_hour", long(facts.recent_calls.tool_last_hour)),
            ("all_last_minute", long(facts.recent_calls.all_last_minute)),
        ],
        None,
    );
    let mut pairs: BTreeMap<SmolStr, CedarValue> = BTreeMap::from([
        ("goal".into(), intent.goal.as_str().into()),
        (
            "goal_length".into(),
            long(intent.goal.encode_utf16().count() as u64),
        ),
        ("goal_lower".into(), intent.goal.to_lowercase().into()),
        ("side_effects".into(), string_set(&intent.side_effects)),
        (
            "success_criteria".into(),
            string_set(&intent.success_criteria),
        ),
        ("constraints".into(), string_set(&intent.constraints)),
        ("tools".into(), string_set(&intent.tools)),
        ("retry_count".into(), long(facts.retry_count)),
        (
            "claimed_retry_count".into(),
            long(facts.claimed_retry_count),
        ),
        ("actor_role".into(), facts.role.as_str().into()),
        (
            "approval_status".into(),
            facts.approval_status_text().into(),
        ),
        ("arguments".into(), arguments),
        ("now".into(), now),
        ("hour_utc".into(), long(clock.hour)),
        ("weekday_utc".into(), long(clock.weekday)),
        ("recent_calls".into(), recent_calls),
    ]);
    if let Some(by) = facts.approver() {
        pairs.insert("approved_by".into(), by.into());
    }
    let context = Context::from(CedarContext::Value(Arc::new(pairs)));
    Ok((context, shape))
}

/// A JSON argument as a Cedar value: a string, a boolean, a whole number (a `Long`; above
/// `i64::MAX`, as a `u64` retry count can be, it is `i64::MAX`; `5.0` is 5), an array (a `Set`)
/// or an object (a record; a `null` field is left out, as a `None` argument serialises).
///
/// Appends the value's shape to `shape`: its Cedar type as far as the schema check is concerned
/// (`s`, `b`, `l`, a set of the distinct element shapes, a record of length-prefixed names and
/// shapes). Two values of one shape pass or fail the schema's type check alike, which is what
/// lets [`super::CedarPolicy`] check each shape once.
///
/// # Errors
///
/// A sentence for a value Cedar has no type for: a fraction, a number out of range, a `null`
/// in an array.
fn argument(value: &Value, shape: &mut String) -> Result<CedarValue, String> {
    Ok(match value {
        Value::String(text) => {
            shape.push('s');
            text.as_str().into()
        }
        Value::Bool(b) => {
            shape.push('b');
            (*b).into()
        }
        Value::Number(number) => {
            shape.push('l');
            whole_long(number)?.into()
        }
        Value::Array(items) => {
            let mut shapes = BTreeSet::new();
            let mut elements = Vec::with_capacity(items.len());
            for item in items {
                let mut item_shape = String::new();
                elements.push(argument(item, &mut item_shape)?);
                shapes.insert(item_shape);
            }
            shape.push('[');
            for item_shape in shapes {
                shape.push_str(&item_shape);
                shape.push(',');
            }
            shape.push(']');
            CedarValue::set(elements, None)
        }
        Value::Object(map) => fields(map, shape)?,
        Value::Null => return Err("`null` has no Cedar value".to_owned()),
    })
}

/// A JSON object as a Cedar record (see [`argument`]).
fn fields(map: &Map<String, Value>, shape: &mut String) -> Result<CedarValue, String> {
    shape.push('{');
    let mut fields = Vec::with_capacity(map.len());
    for (name, value) in map {
        if !value.is_null() {
            shape.push_str(&name.len().to_string());
            shape.push(':');
            shape.push_str(name);
            let value = argument(value, shape).map_err(|why| format!("`{name}`: {why}"))?;
            fields.push((name.as_str(), value));
        }
    }
    shape.push('}');
    Ok(CedarValue::record(fields, None))
}

/// A JSON number as a Cedar `Long` (see [`argument`]).
fn whole_long(number: &Number) -> Result<i64, String> {
    if let Some(n) = number.as_i64() {
        return Ok(n);
    }
    if number.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(format!("{number} is not a whole number Cedar can hold")),
    }
}

/// The server's clock as the context shows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UtcClock {
    /// `YYYY-MM-DDThh:mm:ss.sssZ`, which Cedar's `datetime` reads.
    pub rfc3339: String,
    /// 0–23.
    pub hour: u64,
    /// 1 = Monday … 7 = Sunday (ISO 8601).
    pub weekday: u64,
}

impl UtcClock {
    /// `now` in UTC; a clock before 1970 reads as 1970-01-01, after 9999 as 9999-12-31.
    pub fn at(now: SystemTime) -> Self {
        /// 9999-12-31T23:59:59Z, the last second Cedar's `datetime` format can write.
        const LAST_SECOND: u64 = 253_402_300_799;
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (seconds, millis) = if since_epoch.as_secs() > LAST_SECOND {
            (LAST_SECOND, 999)
        } else {
            (since_epoch.as_secs(), since_epoch.subsec_millis())
        };
        let days = seconds / 86_400;
        let second_of_day = seconds % 86_400;
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (
            second_of_day / 3600,
            second_of_day % 3600 / 60,
            second_of_day % 60,
        );
        UtcClock {
            rfc3339: format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
            ),
            hour,
            // 1970-01-01 was a Thursday (4).
            weekday: (days + 3) % 7 + 1,
        }
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days from 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn clock(seconds: u64) -> UtcClock {
        UtcClock::at(UNIX_EPOCH + Duration::from_secs(seconds))
    }

    #[test]
    fn the_clock_reads_utc_dates_hours_and_iso_weekdays() {
        assert_eq!(
            clock(0),
            UtcClock {
                rfc3339: "1970-01-01T00:00:00.000Z".to_owned(),
                hour: 0,
                weekday: 4
            }
        );
        // 2026-11-22 was a Sunday; 2024-02-29 a Thursday (a leap day); 2000-03-01 a Wednesday.
        let sunday = clock(1_795_338_600);
        assert_eq!(sunday.rfc3339, "2026-11-22T09:10:00.000Z");
        assert_eq!((sunday.hour, sunday.weekday), (9, 7));
        assert_eq!(clock(1_709_251_199).rfc3339, "2024-02-29T23:59:59.000Z");
        assert_eq!(clock(1_709_251_199).weekday, 4);
        assert_eq!(clock(951_868_800).rfc3339, "2000-03-01T00:00:00.000Z");
        assert_eq!(clock(951_868_800).weekday, 3);
        let millis = UtcClock::at(UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(millis.rfc3339, "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn a_clock_out_of_range_is_clamped() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(UtcClock::at(before).rfc3339, "1970-01-01T00:00:00.000Z");
        assert_eq!(clock(400_000_000_000).rfc3339, "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_retry_count_is_read_as_the_simulator_reads_it() {
        for (value, count) in [
            (json!(7), 7),
            (json!(5.9), 5),
            (json!(-3), 0),
            (json!("9"), 0),
            (json!(null), 0),
            (json!(1e300), u64::MAX),
            (json!(u64::MAX), u64::MAX),
        ] {
            assert_eq!(whole_count(Some(&value)), count, "{value}");
        }
        assert_eq!(whole_count(None), 0);
    }

    fn intent(context: Value) -> Intent {
        Intent {
            goal: "Retry workflow etl (attempt 8)".to_owned(),
            success_criteria: Vec::new(),
            constraints: Vec::new(),
            tools: Vec::new(),
            side_effects: Vec::new(),
            context: context.as_object().expect("an object").clone(),
        }
    }

    fn vouched(provenance: &Provenance, context: Value) -> Facts {
        let operator = Operator {
            actor_role: ActorRole::Developer,
            actor_id: Some("alice".to_owned()),
        };
        Facts::vouched(
            &operator,
            provenance,
            &intent(context),
            UNIX_EPOCH,
            RecentCallCounts::default(),
        )
    }

    #[test]
    fn the_facts_take_the_vouched_retry_count_and_role_over_the_intent() {
        let provenance = Provenance {
            actor_id: Some("alice".to_owned()),
            retry_count: Some(crate::claims::RetrySource {
                effective: 7,
                claimed: 0,
                observed: 7,
            }),
            actor_role: Some(crate::claims::RoleSource {
                effective: ActorRole::Viewer,
                claimed: ActorRole::Viewer,
                configured: ActorRole::Developer,
            }),
            ..Provenance::default()
        };
        let facts = vouched(&provenance, json!({"retry_count": 7}));
        assert_eq!((facts.retry_count, facts.claimed_retry_count), (7, 0));
        assert_eq!(facts.role, ActorRole::Viewer);
        assert_eq!(facts.principal_id(), "alice");

        // Without claims: the intent's own retry count, the operator's role.
        let facts = vouched(&Provenance::default(), json!({"retry_count": 5.5}));
        assert_eq!((facts.retry_count, facts.claimed_retry_count), (5, 5));
        assert_eq!(facts.role, ActorRole::Developer);
        assert_eq!(facts.actor_id.as_deref(), Some("alice"));
    }

    #[test]
    fn the_facts_say_approved_only_for_a_named_human_approval() {
        let claimed = Provenance {
            approval_status: Some(crate::claims::ApprovalSource {
                effective: ApprovalStatus::Pending,
                claimed: ApprovalStatus::Approved,
            }),
            ..Provenance::default()
        };
        let human = json!({"approval_status": "approved", "approved_by": "Bob"});
        let blank = json!({"approval_status": "approved", "approved_by": " "});
        for (provenance, context, status, by) in [
            (
                &Provenance::default(),
                json!({}),
                ApprovalStatus::None,
                None,
            ),
            (&claimed, json!({}), ApprovalStatus::Pending, None),
            (
                &claimed,
                human.clone(),
                ApprovalStatus::Approved,
                Some("Bob"),
            ),
            (
                &Provenance::default(),
                human,
                ApprovalStatus::Approved,
                Some("Bob"),
            ),
            (
                &Provenance::default(),
                blank.clone(),
                ApprovalStatus::None,
                None,
            ),
            (&claimed, blank, ApprovalStatus::Pending, None),
        ] {
            let facts = vouched(provenance, context.clone());
            assert_eq!(facts.approval_status, status, "{context}");
            assert_eq!(facts.approved_by.as_deref(), by, "{context}");
        }
    }

    #[test]
    fn argument_numbers_become_cedar_longs_or_are_refused() {
        let long = |value: Value| match value {
            Value::Number(n) => whole_long(&n),
            _ => unreachable!(),
        };
        assert_eq!(long(json!(u64::MAX)), Ok(i64::MAX));
        assert_eq!(long(json!(5.0)), Ok(5));
        assert_eq!(long(json!(-2)), Ok(-2));
        assert_eq!(
            long(json!(1.5)),
            Err("1.5 is not a whole number Cedar can hold".to_owned())
        );
        let mut shape = String::new();
        assert_eq!(
            argument(&json!({"a": [1, null]}), &mut shape).unwrap_err(),
            "`a`: `null` has no Cedar value"
        );
        let mut shape = String::new();
        assert!(argument(&json!({"a": null, "b": [u64::MAX, 2.0]}), &mut shape).is_ok());
        assert_eq!(shape, "{1:b[l,]}");
    }

    #[test]
    fn values_of_one_cedar_type_have_one_shape_and_names_cannot_collide() {
        let shape = |value: Value| {
            let mut shape = String::new();
            argument(&value, &mut shape).expect("a Cedar value");
            shape
        };
        assert_eq!(
            shape(json!({"goal": "a", "sideEffects": ["x", "y"], "retryCount": 1})),
            shape(json!({"goal": "b", "sideEffects": ["z"], "retryCount": 9}))
        );
        assert_ne!(shape(json!({"n": [1, "a"]})), shape(json!({"n": ["a"]})));
        assert_ne!(shape(json!({"n": []})), shape(json!({"n": ["a"]})));
        assert_ne!(shape(json!({"n": 1})), shape(json!({"n": "1"})));
        assert_ne!(shape(json!({"a": 1, "b": 1})), shape(json!({"a": 1})));
        // A name that looks like a shape is still one name.
        assert_ne!(
            shape(json!({"a": 1, "b": "x"})),
            shape(json!({"a": 1, "1:bs": 1}))
        );
    }
}
