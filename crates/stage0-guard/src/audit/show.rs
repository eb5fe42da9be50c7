//! `audit show`: an audit log's records, one readable paragraph each.
//!
//! `--request-id ID` keeps every record of the tool calls that `ID` took part in (a call's
//! records share its `call_id`), so a deferred call shows its `DEFER`, the human's answer, the
//! second verdict and the outcome together. `--last N` keeps the last `N` records of what is
//! left. Lines that are not records are shown as such, never skipped.
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
    /// Only the calls whose records include this `request_id` (or `deferred_request_id`).
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
            for_each_record(path, |_, record| {
                if let Some(record) = record
                    && (text(&record, "request_id") == id
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
    for_each_record(path, |number, record| {
        let shown = match (&calls, &record) {
            (None, _) => true,
            (Some(calls), Some(record)) => calls.contains(text(record, "call_id")),
            (Some(_), None) => false,
        };
        if !shown {
            return Ok(());
        }
        let mut paragraph_text = String::new();
        match &record {
            Some(record) => paragraph(&mut paragraph_text, record),
            None => {
                let _ = writeln!(
                    paragraph_text,
                    "line {number}: not an audit record (run `audit verify`)"
                );
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

/// Calls `each` with the number and the record (`None` when it is not JSON) of every line.
fn for_each_record(
    path: &Path,
    mut each: impl FnMut(u64, Option<Map<String, Value>>) -> io::Result<()>,
) -> io::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        if !bytes.is_empty() {
            each(number, serde_json::from_slice(bytes).ok())?;
        }
    }
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
            details.push(("goal", field("goal")));
            details.push(("reason", field("reason")));
            if let Some(Value::Array(issues)) = record.get("issues")
                && !issues.is_empty()
            {
                let codes: Vec<_> = issues.iter().filter_map(Value::as_str).collect();
                details.push(("issues", escaped(codes.join(", ")).to_string()));
            }
            details.push(("context", number("context")));
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
        "recovery" => {
            let _ = write!(
                out,
                "torn line of {} bytes at byte {} kept",
                number("torn_length"),
                number("torn_offset")
            );
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
