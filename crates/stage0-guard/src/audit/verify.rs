//! `audit verify`: checks a whole audit log, line by line, and names the first bad record.
//!
//! A log verifies when every line is a sealed record in canonical form whose `hash` matches its
//! content (`chain.rs`), `seq` counts 1, 2, 3, … without a gap, and every `prev` is the `hash` of
//! the record before (64 zeros for the first). The one exception is the mark a crash leaves: a
//! line that is not a record (or not a whole one) is accepted when the very next record is a
//! `recovery` record naming exactly its byte offset, length and SHA-256; the chain then goes on
//! from the last whole record before it. A last line without its newline is a torn write that no
//! recovery record names yet: starting the server once records it.
//!
//! A call whose `decision` has no `outcome` is the other mark a crash leaves (the outcome is not
//! waited for, so a crash can lose it even after the result was returned): an `unfinished` record
//! must name exactly the calls that have a decision and no outcome before it (and after the
//! previous `unfinished` record), in the order of their first decision. The calls still without
//! an outcome at the end of the log are counted, not refused: a running server is in the middle
//! of them, or a stopped one was killed and no start has named them yet.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::chain::{self, CheckedLine, GENESIS};

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// How many records the chain holds (torn lines are not records).
    pub records: u64,
    /// The `hash` of the last record; [`GENESIS`] for an empty log.
    pub last_hash: String,
    /// How many torn lines `recovery` records name.
    pub recoveries: u64,
    /// How many calls `unfinished` records name: a crash left them without an outcome.
    pub unfinished: u64,
    /// How many calls have a decision and no outcome at the end of the log, and no `unfinished`
    /// record naming them: in flight, or left by a crash that no start has named yet.
    pub open: u64,
}

/// The first bad record of a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {why}", seq.map(|seq| format!(" (seq {seq})")).unwrap_or_default())]
pub struct Break {
    /// 1-based line number in the file.
    pub line: u64,
    /// The record's `seq`, when the line has one.
    pub seq: Option<u64>,
    /// What is wrong, in a few words.
    pub why: String,
}

/// Verifies the log at `path`, reading it once, one line at a time.
///
/// # Errors
///
/// `Ok(Err(Break))` for a log that does not verify; `Err` when the file cannot be read.
pub fn verify_file(path: &Path) -> io::Result<Result<Verified, Break>> {
    verify(BufReader::new(File::open(path)?))
}

/// Verifies a whole log read from `log`; memory holds two lines at a time.
///
/// # Errors
///
/// `Ok(Err(Break))` naming the first bad record; `Err` when `log` cannot be read.
pub fn verify(log: impl BufRead) -> io::Result<Result<Verified, Break>> {
    let mut lines = Lines {
        reader: log,
        offset: 0,
        number: 0,
    };
    let mut verified = Verified {
        records: 0,
        last_hash: GENESIS.to_owned(),
        recoveries: 0,
        unfinished: 0,
        open: 0,
    };
    let mut calls = OpenCalls::default();
    let mut seq = 0;
    let mut current = lines.next()?;
    while let Some(line) = current.take() {
        let next = lines.next()?;
        if let Some(recovery) = next
            .as_ref()
            .and_then(|next| next.checked.as_ref().ok())
            .filter(|next| names(next, &line))
        {
            // A torn line and the recovery record naming it: the chain skips the torn line.
            if let Err(broken) = check_link(line.number + 1, recovery, seq, &verified.last_hash) {
                return Ok(Err(broken));
            }
            seq = recovery.seq;
            verified.last_hash = recovery.hash.clone();
            verified.records += 1;
            verified.recoveries += 1;
            current = lines.next()?;
            continue;
        }
        if let Err(broken) = check_line(&line, seq, &verified.last_hash) {
            return Ok(Err(broken));
        }
        let record = line.checked.expect("a line that checked out");
        match calls.follow(&record) {
            Ok(named) => verified.unfinished += named,
            Err(why) => {
                return Ok(Err(Break {
                    line: line.number,
                    seq: Some(record.seq),
                    why,
                }));
            }
        }
        seq = record.seq;
        verified.last_hash = record.hash;
        verified.records += 1;
        current = next;
    }
    verified.open = calls.first_decision.len() as u64;
    Ok(Ok(verified))
}

/// The calls with a decision and no outcome so far, each with the `seq` of its first decision.
#[derive(Default)]
struct OpenCalls {
    first_decision: HashMap<String, u64>,
}

impl OpenCalls {
    /// Follows `record`: a decision opens its call, an outcome ends it, and an `unfinished`
    /// record must name every open call, in the order of their first decision, and ends them.
    /// Returns how many calls an `unfinished` record named.
    fn follow(&mut self, record: &CheckedLine) -> Result<u64, String> {
        let text = |name| record.record.get(name).and_then(Value::as_str);
        match text("kind") {
            Some("decision") => {
                let call = text("call_id").unwrap_or_default().to_owned();
                self.first_decision.entry(call).or_insert(record.seq);
            }
            Some("outcome") => {
                self.first_decision
                    .remove(text("call_id").unwrap_or_default());
            }
            Some("unfinished") => {
                let mut open: Vec<(&String, &u64)> = self.first_decision.iter().collect();
                open.sort_unstable_by_key(|&(_, seq)| seq);
                let named: Vec<&str> = match record.record.get("call_ids") {
                    Some(Value::Array(calls)) => calls.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                if !open
                    .iter()
                    .map(|(call, _)| call.as_str())
                    .eq(named.iter().copied())
                {
                    return Err(format!(
                        "an unfinished record that names {} call(s) where {} had a decision and \
                         no outcome",
                        named.len(),
                        open.len()
                    ));
                }
                self.first_decision.clear();
                return Ok(named.len() as u64);
            }
            _ => {}
        }
        Ok(0)
    }
}

/// Checks that `line` is a whole, sealed, non-recovery record following the record numbered `seq`
/// whose hash is `hash`.
fn check_line(line: &Line, seq: u64, hash: &str) -> Result<(), Break> {
    if !line.whole {
        return Err(Break {
            line: line.number,
            seq: None,
            why: format!(
                "the last line is a torn write ({} bytes at byte {}) that no recovery record \
                 names yet; starting the server once records it",
                line.bytes.len(),
                line.offset
            ),
        });
    }
    let record = line.checked.as_ref().map_err(|problem| Break {
        line: line.number,
        seq: seq_of(&line.bytes),
        why: problem.to_string(),
    })?;
    if record.record.get("kind").and_then(Value::as_str) == Some("recovery") {
        return Err(Break {
            line: line.number,
            seq: Some(record.seq),
            why: "a recovery record that does not name the torn line just before it".into(),
        });
    }
    check_link(line.number, record, seq, hash)
}

/// One line of the log: its number and where it starts, its bytes (without the newline), whether
/// it had its newline, and what checking it found.
struct Line {
    number: u64,
    offset: u64,
    bytes: Vec<u8>,
    whole: bool,
    checked: Result<CheckedLine, chain::LineProblem>,
}

/// The lines of a log, in order.
struct Lines<R> {
    reader: R,
    offset: u64,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> io::Result<Option<Line>> {
        let mut bytes = Vec::new();
        let read = self.reader.read_until(b'\n', &mut bytes)? as u64;
        if read == 0 {
            return Ok(None);
        }
        let whole = bytes.last() == Some(&b'\n');
        if whole {
            bytes.pop();
        }
        self.number += 1;
        let line = Line {
            number: self.number,
            offset: self.offset,
            checked: chain::check(&bytes),
            bytes,
            whole,
        };
        self.offset += read;
        Ok(Some(line))
    }
}

/// Whether `record` is a `recovery` record naming exactly `torn`: its offset, length and SHA-256.
fn names(record: &CheckedLine, torn: &Line) -> bool {
    let field = |name: &str| record.record.get(name);
    record.record.get("kind").and_then(Value::as_str) == Some("recovery")
        && field("torn_offset").and_then(Value::as_u64) == Some(torn.offset)
        && field("torn_length").and_then(Value::as_u64) == Some(torn.bytes.len() as u64)
        && field("torn_sha256").and_then(Value::as_str)
            == Some(chain::sha256_hex(&torn.bytes).as_str())
}

/// Checks that `record` follows the record numbered `seq` whose hash is `hash`.
fn check_link(line: u64, record: &CheckedLine, seq: u64, hash: &str) -> Result<(), Break> {
    let why = if record.seq != seq + 1 {
        format!("seq {} where {} was expected", record.seq, seq + 1)
    } else if record.prev != hash {
        format!("`prev` is not the hash of the record before (seq {seq})")
    } else {
        return Ok(());
    };
    Err(Break {
        line,
        seq: Some(record.seq),
        why,
    })
}

/// The `seq` of a line that is JSON but failed a check, for the report.
fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(line)
        .ok()?
        .get("seq")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A log of `n` records, as the writer seals them, and the byte offset where each line starts.
    fn log(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        let mut prev = GENESIS.to_owned();
        for seq in 1..=n {
            let Value::Object(record) = json!({"kind": "outcome", "tool": "research-topic",
                "status": "ok", "goal": format!("Research é {seq}"), "duration_ms": 0.25})
            else {
                unreachable!()
            };
            let sealed = chain::seal(record, seq, format!("2026-11-30T17:00:0{seq}Z"), &prev);
            starts.push(bytes.len());
            bytes.extend_from_slice(&sealed.line);
            bytes.push(b'\n');
            prev = sealed.hash;
        }
        (bytes, starts)
    }

    fn verify(log: &[u8]) -> Result<Verified, Break> {
        super::verify(log).expect("reading bytes cannot fail")
    }

    fn lines(log: &[u8]) -> Vec<Vec<u8>> {
        log.split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// The next record after `log`'s last, sealed: a recovery record naming `torn`.
    fn recovery(seq: u64, prev: &str, offset: usize, torn: &[u8]) -> Vec<u8> {
        let Value::Object(record) = json!({"kind": "recovery", "torn_offset": offset,
            "torn_length": torn.len(), "torn_sha256": chain::sha256_hex(torn)})
        else {
            unreachable!()
        };
        let mut line = chain::seal(record, seq, "2026-11-30T18:00:00Z".to_owned(), prev).line;
        line.push(b'\n');
        line
    }

    #[test]
    fn a_sealed_log_verifies_with_its_count_and_last_hash() {
        let (bytes, _) = log(4);
        let verified = verify(&bytes).unwrap();
        assert_eq!(verified.records, 4);
        let last = chain::check(lines(&bytes)[3].strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(verified.last_hash, last.hash);
        assert_eq!(verify(b"").unwrap().last_hash, GENESIS);
    }

    #[test]
    fn changing_any_single_byte_names_the_line_that_holds_it() {
        let (bytes, starts) = log(4);
        for position in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[position] ^= 0x01;
            let line = starts.iter().filter(|&&start| start <= position).count() as u64;
            let broken = verify(&edited).expect_err("an edited log does not verify");
            assert_eq!(broken.line, line, "byte {position}: {broken}");
        }
    }

    #[test]
    fn a_deleted_or_moved_line_breaks_the_chain_at_the_first_out_of_place_record() {
        let (bytes, _) = log(5);
        let original = lines(&bytes);
        for deleted in 0..4_u64 {
            let mut edited = original.clone();
            edited.remove(deleted as usize);
            let broken = verify(&edited.concat()).unwrap_err();
            assert_eq!((broken.line, broken.seq), (deleted + 1, Some(deleted + 2)));
            assert!(broken.why.contains("where"), "{broken}");
        }
        for first in 0..4_u64 {
            let mut edited = original.clone();
            edited.swap(first as usize, first as usize + 1);
            let broken = verify(&edited.concat()).unwrap_err();
            assert_eq!((broken.line, broken.seq), (first + 1, Some(first + 2)));
        }
    }

    #[test]
    fn a_forged_record_appended_without_the_right_prev_is_named() {
        let (bytes, _) = log(3);
        let first = chain::check(lines(&bytes)[0].strip_suffix(b"\n").unwrap()).unwrap();
        // Right seq, sealed correctly, but chained to the first record instead of the last.
        let mut forged = chain::seal(first.record, 4, "t".to_owned(), &first.hash).line;
        forged.push(b'\n');
        let broken = verify(&[bytes, forged].concat()).unwrap_err();
        assert_eq!((broken.line, broken.seq), (4, Some(4)));
        assert!(broken.why.contains("`prev`"), "{broken}");
    }

    #[test]
    fn a_torn_line_is_accepted_only_with_the_recovery_record_that_names_it() {
        let (mut bytes, _) = log(2);
        let last_hash = verify(&bytes).unwrap().last_hash;
        let torn = br#"{"kind":"deci"#.to_vec();
        let offset = bytes.len();
        bytes.extend_from_slice(&torn);
        let broken = verify(&bytes).unwrap_err();
        assert_eq!(broken.line, 3);
        assert!(broken.why.contains("torn write"), "{broken}");

        bytes.push(b'\n');
        let with_recovery = [bytes.clone(), recovery(3, &last_hash, offset, &torn)].concat();
        let verified = verify(&with_recovery).unwrap();
        assert_eq!((verified.records, verified.recoveries), (3, 1));

        // The torn bytes are covered too: changing one breaks the recovery's `torn_sha256`.
        let mut edited = with_recovery.clone();
        edited[offset + 3] ^= 0x01;
        assert_eq!(verify(&edited).unwrap_err().line, 3);
        // A recovery naming some other bytes does not excuse the line before it.
        let elsewhere = [bytes, recovery(3, &last_hash, offset - 1, &torn)].concat();
        assert_eq!(verify(&elsewhere).unwrap_err().line, 3);
    }

    #[test]
    fn a_recovery_record_with_no_torn_line_before_it_is_refused() {
        let (bytes, _) = log(2);
        let last_hash = verify(&bytes).unwrap().last_hash;
        let stray = recovery(3, &last_hash, 0, b"");
        let broken = verify(&[bytes, stray].concat()).unwrap_err();
        assert_eq!((broken.line, broken.seq), (3, Some(3)));
    }

    /// A sealed log of `records` (JSON objects) in order.
    fn sealed(records: &[Value]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut prev = GENESIS.to_owned();
        for (seq, record) in (1..).zip(records) {
            let Value::Object(record) = record.clone() else {
                unreachable!()
            };
            let sealed = chain::seal(record, seq, "2026-11-30T17:00:00Z".to_owned(), &prev);
            bytes.extend_from_slice(&sealed.line);
            bytes.push(b'\n');
            prev = sealed.hash;
        }
        bytes
    }

    fn decision(call: &str) -> Value {
        json!({"kind": "decision", "call_id": call})
    }

    fn outcome(call: &str) -> Value {
        json!({"kind": "outcome", "call_id": call})
    }

    fn unfinished(calls: &[&str]) -> Value {
        json!({"kind": "unfinished", "call_ids": calls})
    }

    #[test]
    fn calls_without_an_outcome_are_counted_and_accepted_when_named_exactly() {
        let crashed = [decision("a"), decision("b"), outcome("a"), decision("c")];
        let open = verify(&sealed(&crashed)).unwrap();
        assert_eq!((open.open, open.unfinished), (2, 0));

        let named = [&crashed[..], &[unfinished(&["b", "c"]), decision("d")]].concat();
        let verified = verify(&sealed(&named)).unwrap();
        assert_eq!((verified.open, verified.unfinished), (1, 2));
        // Another server's outcome of a call named while it still ran is accepted.
        let late = [&named[..], &[outcome("b")]].concat();
        assert_eq!(verify(&sealed(&late)).unwrap().unfinished, 2);
    }

    #[test]
    fn an_unfinished_record_that_does_not_name_exactly_the_open_calls_is_refused() {
        let crashed = [decision("a"), decision("b"), outcome("a"), decision("c")];
        for wrong in [
            unfinished(&["b"]),
            unfinished(&["c", "b"]),
            unfinished(&["a", "b", "c"]),
            unfinished(&["b", "c", "x"]),
            unfinished(&[]),
        ] {
            let shown = wrong.to_string();
            let mut log = crashed.to_vec();
            log.push(wrong);
            let broken = verify(&sealed(&log)).unwrap_err();
            assert_eq!((broken.line, broken.seq), (5, Some(5)), "{shown}");
            assert!(broken.why.contains("unfinished"), "{broken}");
        }
        // Nor one where nothing was left open.
        let stray = [decision("a"), outcome("a"), unfinished(&["a"])];
        assert_eq!(verify(&sealed(&stray)).unwrap_err().line, 3);
    }
}
