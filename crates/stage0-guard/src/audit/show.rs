//! `audit show`: an audit log's records, one readable paragraph each.
//!
//! `--request-id ID` keeps every record of the tool calls that `ID` took part in (a call's
//! records share its `call_id`), so a deferred call shows its `DEFER`, the human's answer, the
//! second verdict and the outcome together, and the `unfinished` record naming the call if a
//! crash left it without an outcome. `--last N` keeps the last `N` records of what is
//! left. Lines that are not records are shown as such, never skipped, and so are torn lines: a
//! last line without its newline, or a line the next record (a `recovery` record) names by offset,
//! length and SHA-256. A torn line is shown by its place and length only, never parsed, even when
//! it holds a whole record: whoever appended it, a crash or anyone who can write the file, it is
//! not part of the chain.
//!
//! Every value comes from the file, which anyone who can write it may have edited, and most of it
//! from the agent, the client or the policy decision point in the first place (a goal, a reason,
//! an approver's name): each is shown escaped ([`escaped`]), so no record can put a control
//! character, an escape sequence or a bidirectional override on the terminal.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde_json::{Map, Value};

use crate::escape::escaped;

/// Which records to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only the calls whose records include this `request_id` (or `stage0_request_id`, or
    /// `deferred_request_id`).
    pub request_id: Option<String>,
    /// Only the last this many of the records selected.
    pub last: Option<usize>,
}

/// Writes the selected records of the log at `path` to `out`, as text for a terminal. Reads the
/// file one line at a time (twice with `--request-id`); memory holds at most `--last` records.
///
/// # Errors
///
/// When the file cannot be read or `out` written.
pub fn show(path: &Path, selection: &Selection, out: &mut impl Write) -> io::Result<()> {
    let calls: Option<HashSet<String>> = match &selection.request_id {
        None => None,
        Some(id) => {
            let mut calls = HashSet::new();
            for_each_record(path, |_, line| {
                if let Line::Record(record) = line
                    && (text(&record, "request_id") == id
                        || text(&record, "stage0_request_id") == id
                        || text(&record, "deferred_request_id") == id)
                {
                    calls.insert(text(&record, "call_id").to_owned());
                }
                Ok(())
            })?;
            Some(calls)
        }
    };
    let mut kept = VecDeque::new();
    for_each_record(path, |number, line| {
        let shown = match (&calls, &line) {
            (None, _) => true,
            (Some(calls), Line::Record(record)) => {
                calls.contains(text(record, "call_id"))
                    || call_ids(record).any(|call| calls.contains(call))
            }
            (Some(_), _) => false,
        };
        if !shown {
            return Ok(());
        }
        let mut paragraph_text = String::new();
        match &line {
            Line::Record(record) => paragraph(&mut paragraph_text, record),
            Line::NotRecord => {
                let _ = writeln!(
                    paragraph_text,
                    "line {number}: not an audit record (run `audit verify`)"
                );
            }
            Line::Torn {
                offset,
                length,
                named_by,
            } => {
                let _ = write!(
                    paragraph_text,
                    "line {number}: torn line of {length} bytes at byte {offset}, not a record: "
                );
                let _ = match named_by {
                    Some(seq) => writeln!(paragraph_text, "kept by recovery record #{seq}"),
                    None => writeln!(
                        paragraph_text,
                        "no recovery record names it (the next server start records it)"
                    ),
                };
            }
        }
        match selection.last {
            None => out.write_all(paragraph_text.as_bytes()),
            Some(last) => {
                kept.push_back(paragraph_text);
                if kept.len() > last {
                    kept.pop_front();
                }
                Ok(())
            }
        }
    })?;
    for paragraph_text in kept {
        out.write_all(paragraph_text.as_bytes())?;
    }
    Ok(())
}

/// What one line of the log is, for showing.
enum Line {
    /// A JSON object: a record (`audit verify` says whether its chain holds).
    Record(Map<String, Value>),
    /// Not JSON, and not a torn line either.
    NotRecord,
    /// A torn line, at byte `offset`, `length` bytes long (without its newline), named by the
    /// recovery record `named_by` (`None`: the last line, without its newline).
    Torn {
        offset: u64,
        length: u64,
        named_by: Option<u64>,
    },
}

/// Calls `each` with the number and what it is of every non-empty line, looking one line ahead
/// for the recovery record that names a torn line.
fn for_each_record(
    path: &Path,
    mut each: impl FnMut(u64, Line) -> io::Result<()>,
) -> io::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut read_line = |offset: u64| -> io::Result<Option<(Vec<u8>, bool, u64)>> {
        let mut bytes = Vec::new();
        let read = reader.read_until(b'\n', &mut bytes)? as u64;
        if read == 0 {
            return Ok(None);
        }
        let whole = bytes.pop_if(|last| *last == b'\n').is_some();
        Ok(Some((bytes, whole, offset + read)))
    };
    let mut number = 0;
    let mut offset = 0;
    let mut next = read_line(offset)?;
    while let Some((bytes, whole, end)) = next.take() {
        number += 1;
        next = read_line(end)?;
        let record = serde_json::from_slice::<Map<String, Value>>(&bytes).ok();
        let named_by = next.as_ref().and_then(|(next, _, _)| {
            let next = serde_json::from_slice::<Map<String, Value>>(next).ok()?;
            let field = |name: &str| next.get(name);
            let names = text(&next, "kind") == "recovery"
                && field("torn_offset").and_then(Value::as_u64) == Some(offset)
                && field("torn_length").and_then(Value::as_u64) == Some(bytes.len() as u64)
                && text(&next, "torn_sha256") == super::chain::sha256_hex(&bytes);
            names
                .then(|| field("seq").and_then(Value::as_u64))
                .flatten()
        });
        let line = if !whole || named_by.is_some() {
            Line::Torn {
                offset,
                length: bytes.len() as u64,
                named_by,
            }
        } else {
            record.map_or(Line::NotRecord, Line::Record)
        };
        if !bytes.is_empty() || !whole {
            each(number, line)?;
        }
        offset = end;
    }
    Ok(())
}

fn text<'a>(record: &'a Map<String, Value>, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or("")
}

/// A record as a head line (`#seq ts kind tool …`) and indented details, every value escaped.
fn paragraph(out: &mut String, record: &Map<String, Value>) {
    let field = |name: &str| escaped(text(record, name)).to_string();
    let number = |name: &str| {
        record
            .get(name)
            .map(|value| escaped(value).to_string())
            .unwrap_or_default()
    };
    let _ = write!(
        out,
        "#{} {} {:<8} {}",
        number("seq"),
        field("ts"),
        field("kind"),
        field("tool")
    );
    let mut details: Vec<(&str, String)> = Vec::new();
    match text(record, "kind") {
        "decision" => {
            let _ = write!(
                out,
                " {} {} risk {} in {} ms",
                field("verdict"),
                field("decision"),
                number("risk_score"),
                number("check_latency_ms")
            );
            if !field("stage0_request_id").is_empty() {
                details.push(("stage0 request", field("stage0_request_id")));
            }
            details.push(("goal", field("goal")));
            details.push(("reason", field("reason")));
            if let Some(Value::Array(issues)) = record.get("issues")
                && !issues.is_empty()
            {
                let codes: Vec<_> = issues.iter().filter_map(Value::as_str).collect();
                details.push(("issues", escaped(codes.join(", ")).to_string()));
            }
            details.push(("context", number("context")));
            let strings = |value: Option<&Value>| -> String {
                let items = value.and_then(Value::as_array).into_iter().flatten();
                let items: Vec<&str> = items.filter_map(Value::as_str).collect();
                escaped(items.join(", ")).to_string()
            };
            if record.contains_key("determining_policies") {
                details.push(("policies", strings(record.get("determining_policies"))));
            }
            for answer in record
                .get("answers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Value::Object(answer) = answer {
                    let said = |name| escaped(text(answer, name)).to_string();
                    details.push(("answer", format!("{} {}", said("mode"), said("verdict"))));
                }
            }
            if let Some(Value::Object(shadow)) = record.get("shadow") {
                let said = |name| escaped(text(shadow, name)).to_string();
                let policies = strings(shadow.get("determining_policies"));
                let verdict = format!("{} {} {policies}", said("verdict"), said("policy_version"));
                details.push(("shadow", verdict));
            }
            if !field("deferred_request_id").is_empty() {
                details.push(("approves", field("deferred_request_id")));
            }
        }
        "approval" => {
            let _ = write!(out, " {}", field("outcome"));
            if let Some(Value::Object(human)) = record.get("approval") {
                let by = |name| escaped(text(human, name)).to_string();
                details.push(("by", by("approved_by")));
                details.push(("at", by("approved_at")));
                details.push(("reason", by("approval_reason")));
            }
            if !field("detail").is_empty() {
                details.push(("detail", field("detail")));
            }
        }
        "outcome" => {
            let _ = write!(out, " {}", field("status"));
            if record.contains_key("duration_ms") {
                let _ = write!(out, " in {} ms", number("duration_ms"));
            }
            if !field("error").is_empty() {
                details.push(("error", field("error")));
            }
        }
        "policy_reload" => {
            let loaded = record.get("loaded") == Some(&Value::Bool(true));
            let _ = write!(
                out,
                " {} {} -> {}",
                if loaded { "loaded" } else { "refused" },
                field("previous_policy_version"),
                field("policy_version")
            );
            if !field("error").is_empty() {
                details.push(("error", field("error")));
            }
        }
        "recovery" => {
            let _ = write!(
                out,
                "torn line of {} bytes at byte {} kept",
                number("torn_length"),
                number("torn_offset")
            );
        }
        "unfinished" => {
            let _ = write!(
                out,
                "{} call(s) without an outcome",
                call_ids(record).count()
            );
            for call in call_ids(record) {
                details.push(("call", escaped(call).to_string()));
            }
        }
        _ => {}
    }
    out.push('\n');
    if !field("request_id").is_empty() {
        details.insert(0, ("request", field("request_id")));
    }
    if !field("call_id").is_empty() {
        details.push(("call", field("call_id")));
    }
    details.push(("hash", field("hash")));
    for (name, value) in details {
        let _ = writeln!(out, "    {name}: {value}");
    }
}

/// The `call_ids` an `unfinished` record names (none for other records).
fn call_ids(record: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let calls = match record.get("call_ids") {
        Some(Value::Array(calls)) => calls.as_slice(),
        _ => &[],
    };
    calls.iter().filter_map(Value::as_str)
}
