//! The hash chain: how a record is sealed into one line and how a line is checked.
//!
//! A record is a JSON object. Sealing gives it `seq`, `ts` and `prev` (the `hash` of the record
//! before it, [`GENESIS`] for the first), then `hash` = SHA-256 (lowercase hex) of the record's
//! canonical JSON without `hash`, and writes the whole record, `hash` included, as one line of
//! canonical JSON. Canonical JSON is the JSON Canonicalization Scheme of RFC 8785 (sorted keys, no
//! whitespace, one spelling per number and string), with one exception (`json.rs`): an integer
//! keeps all its digits, where RFC 8785 would round one past 2^53 to the nearest double and so
//! record a retry count of 9007199254740993 as 9007199254740992. A record without such an
//! integer, which is nearly every record, is plain RFC 8785, so anyone can recompute its hash with
//! any RFC 8785 library; and a line that is not in canonical form has been edited.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::json;

/// The `prev` of the first record of a log: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `object` as canonical JSON bytes: RFC 8785, with integers written whole (see the module
/// documentation).
pub fn canonical(object: &Map<String, Value>) -> Vec<u8> {
    json::canonical_object(object)
}

/// SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut digits = [0; 64];
    sha256_hex_into(bytes, &mut digits);
    String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
}

/// SHA-256 of `bytes`, as 64 lowercase hex digits written to `digits`.
fn sha256_hex_into(bytes: &[u8], digits: &mut [u8]) {
    hex::encode_to_slice(Sha256::digest(bytes), digits).expect("64 digits hold 32 bytes");
}

/// A sealed record: its line (canonical JSON, no newline) and its `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The record, `hash` included, as RFC 8785 canonical JSON (UTF-8, no newline).
    pub line: Vec<u8>,
    /// SHA-256 of the canonical record without `hash`, as 64 lowercase hex digits.
    pub hash: String,
}

/// Seals `record` as number `seq`, written at `ts` (RFC 3339 UTC, microseconds), after the
/// record whose hash is `prev`. Any `seq`, `ts`, `prev` or `hash` already in `record` is replaced.
pub fn seal(record: Map<String, Value>, seq: u64, ts: String, prev: &str) -> Sealed {
    let mut line = Vec::with_capacity(1024);
    let hash = seal_into(&mut line, &record, seq, ts, prev);
    Sealed { line, hash }
}

/// The fields sealing sets: any of them already in a record is replaced.
const CHAIN_KEYS: [&str; 4] = ["hash", "prev", "seq", "ts"];

/// [`seal`], appending the line (no newline) to `out` instead of returning it; returns the
/// record's `hash`.
///
/// The canonical record without `hash` is written once, hashed, and `hash` is then put in at its
/// sorted place: the keys that sort before it stay before it, the others move up. (Canonicalising
/// twice, once without and once with `hash`, was most of the audit writer's CPU: BENCHMARKS.md.)
pub(crate) fn seal_into(
    out: &mut Vec<u8>,
    record: &Map<String, Value>,
    seq: u64,
    ts: String,
    prev: &str,
) -> String {
    let (seq, ts, prev) = (Value::from(seq), Value::from(ts), Value::from(prev));
    let mut members: Vec<(&str, &Value)> = Vec::with_capacity(record.len() + 3);
    members.extend(
        record
            .iter()
            .map(|(key, value)| (key.as_str(), value))
            .filter(|(key, _)| !CHAIN_KEYS.contains(key)),
    );
    members.extend([("prev", &prev), ("seq", &seq), ("ts", &ts)]);
    json::sort_members(&mut members);
    // Against the ASCII key `hash`, the byte order compared here and RFC 8785's UTF-16 order
    // agree for any key. `prev` sorts after `hash`, so a member always follows `hash`.
    let before_hash = members.partition_point(|(key, _)| *key < "hash");
    let start = out.len();
    out.push(b'{');
    json::write_members(&members[..before_hash], out);
    if before_hash > 0 {
        out.push(b',');
    }
    let hash_at = out.len();
    json::write_members(&members[before_hash..], out);
    out.push(b'}');
    // `"hash":"…",` with the 64 hex digits written in place of the dashes.
    let mut member =
        *br#""hash":"----------------------------------------------------------------","#;
    let digits = &mut member[br#""hash":""#.len()..][..64];
    sha256_hex_into(&out[start..], digits);
    let hash = String::from_utf8(digits.to_vec()).expect("hex digits are ASCII");
    out.splice(hash_at..hash_at, member);
    hash
}

/// Why a line is not a sealed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// The line is not a JSON object; carries `serde_json`'s message.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// The line is a JSON object, but not written as RFC 8785 canonical JSON: it was edited.
    #[error("not in canonical form (RFC 8785): the line was edited")]
    NotCanonical,
    /// `hash` is missing or not a string, `seq` not a whole number or `prev` not a string.
    #[error("`{0}` is missing or has the wrong type")]
    MissingField(&'static str),
    /// `hash` is not the SHA-256 of the canonical record without `hash`.
    #[error("`hash` does not match the record's content")]
    HashMismatch,
}

/// A line that checked out: its fields, with the three the chain links by.
#[derive(Debug, Clone)]
pub struct CheckedLine {
    /// The record's place in the chain, counting from 1.
    pub seq: u64,
    /// The `hash` of the record before it ([`GENESIS`] for the first).
    pub prev: String,
    /// The record's own `hash` (64 lowercase hex digits), which matched its content.
    pub hash: String,
    /// Every field of the record but `hash` (`seq`, `ts` and `prev` included).
    pub record: Map<String, Value>,
}

/// Checks one line (without its newline): a JSON object in canonical form whose `hash` is the
/// SHA-256 of its canonical JSON without `hash`, with a whole-number `seq` and a string `prev`.
///
/// # Errors
///
/// The first [`LineProblem`] found, in the order of the variants.
pub fn check(line: &[u8]) -> Result<CheckedLine, LineProblem> {
    let mut record: Map<String, Value> =
        serde_json::from_slice(line).map_err(|error| LineProblem::NotJson(error.to_string()))?;
    if canonical(&record) != line {
        return Err(LineProblem::NotCanonical);
    }
    let Some(Value::String(hash)) = record.remove("hash") else {
        return Err(LineProblem::MissingField("hash"));
    };
    if sha256_hex(&canonical(&record)) != hash {
        return Err(LineProblem::HashMismatch);
    }
    let seq = record
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or(LineProblem::MissingField("seq"))?;
    let prev = record
        .get("prev")
        .and_then(Value::as_str)
        .ok_or(LineProblem::MissingField("prev"))?
        .to_owned();
    Ok(CheckedLine {
        seq,
        prev,
        hash,
        record,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_canonical_record_without_it() {
        let sealed = seal(
            record(json!({"kind": "decision", "goal": "Ship é", "n": 1.5})),
            1,
            "2026-11-30T17:45:00.000001Z".to_owned(),
            GENESIS,
        );
        // The canonical form, as RFC 8785 writes it: keys sorted, no whitespace.
        let unsealed = format!(
            r#"{{"goal":"Ship é","kind":"decision","n":1.5,"prev":"{GENESIS}","seq":1,"ts":"2026-11-30T17:45:00.000001Z"}}"#
        );
        assert_eq!(sealed.hash, sha256_hex(unsealed.as_bytes()));
        let checked = check(&sealed.line).expect("a sealed line checks out");
        assert_eq!((checked.seq, checked.hash), (1, sealed.hash));
    }

    #[test]
    fn an_integer_past_2_pow_53_is_sealed_with_all_its_digits() {
        let sealed = seal(
            record(json!({"retry_count": 9_007_199_254_740_993_u64})),
            1,
            "t".to_owned(),
            GENESIS,
        );
        let line = String::from_utf8(sealed.line.clone()).unwrap();
        assert!(
            line.contains(r#""retry_count":9007199254740993,"#),
            "{line}"
        );
        let checked = check(&sealed.line).expect("the line checks out");
        assert_eq!(checked.record["retry_count"], 9_007_199_254_740_993_u64);
    }

    #[test]
    fn a_line_rfc_8785_wrote_with_a_rounded_integer_still_checks_out() {
        // Logs written before integers were kept whole: RFC 8785 had written the nearest double.
        for rounded in [
            "9007199254740992",
            "18446744073709552000",
            "12345678901234567000",
        ] {
            let mut record = record(json!({"kind": "decision", "prev": GENESIS, "seq": 1}));
            record.insert("n".to_owned(), serde_json::from_str(rounded).unwrap());
            let old = serde_json_canonicalizer::to_vec(&record).unwrap();
            assert_eq!(canonical(&record), old, "{rounded}");
        }
    }

    #[test]
    fn records_with_any_numbers_and_text_check_out_after_the_round_trip() {
        for value in [
            json!(u64::MAX),
            json!(9_007_199_254_740_993_u64),
            json!(-0.0),
            json!(1e-7),
            json!(123456789.125),
            json!("tab\t nul\u{0} line\u{2028} emoji 🦀 quote\" backslash\\"),
        ] {
            let sealed = seal(
                record(json!({ "value": value })),
                1,
                "t".to_owned(),
                GENESIS,
            );
            let checked = check(&sealed.line);
            assert!(checked.is_ok(), "{value}: {checked:?}");
        }
    }

    #[test]
    fn the_line_is_the_canonical_record_whatever_keys_sort_around_hash() {
        for keys in [
            &[][..],
            &["a"],
            &["z"],
            &["has", "hash_", "hasi", "ha\u{e9}"],
        ] {
            let fields: Map<String, Value> =
                keys.iter().map(|k| ((*k).to_owned(), 1.into())).collect();
            let sealed = seal(fields, 2, "t".to_owned(), GENESIS);
            let mut whole: Map<String, Value> = serde_json::from_slice(&sealed.line).unwrap();
            assert_eq!(canonical(&whole), sealed.line, "{keys:?}");
            whole.remove("hash");
            assert_eq!(sha256_hex(&canonical(&whole)), sealed.hash, "{keys:?}");
        }
    }

    /// Sealing as it was defined and done before `seal_into`: the record with its chain fields,
    /// canonicalised without `hash` to get the hash, then again with it to get the line. The
    /// canonical form here is `serde_json_canonicalizer`'s RFC 8785, not this crate's: the
    /// records below keep their integers within ±2^53, where the two agree (`json.rs`).
    fn seal_as_defined(mut record: Map<String, Value>, seq: u64, ts: &str, prev: &str) -> Sealed {
        let jcs = |record: &Map<String, Value>| serde_json_canonicalizer::to_vec(record).unwrap();
        record.insert("seq".to_owned(), seq.into());
        record.insert("ts".to_owned(), ts.into());
        record.insert("prev".to_owned(), prev.into());
        record.remove("hash");
        let hash = hex::encode(Sha256::digest(jcs(&record)));
        record.insert("hash".to_owned(), hash.clone().into());
        Sealed {
            line: jcs(&record),
            hash,
        }
    }

    /// Keys that sort right around `hash` and the chain fields, or that RFC 8785 orders by
    /// UTF-16 code units differently from their bytes (U+FF5E against U+1F980), or any text.
    fn key() -> impl Strategy<Value = String> {
        const TRICKY: [&str; 15] = [
            "",
            "a",
            "h",
            "has",
            "hash",
            "hash_",
            "hasi",
            "ha\u{e9}",
            "prev",
            "seq",
            "ts",
            "z",
            "\u{ff5e}",
            "\u{1f980}",
            "\u{e000}",
        ];
        prop_oneof![
            proptest::sample::select(&TRICKY[..]).prop_map(str::to_owned),
            any::<String>(),
        ]
    }

    /// Any JSON value whose integers are within ±2^53 (see [`seal_as_defined`]).
    fn value() -> impl Strategy<Value = Value> {
        const EXACT: i64 = 1 << 53;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-EXACT..=EXACT).prop_map(Value::from),
            any::<f64>()
                .prop_filter("a finite number", |n| n.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::vec((key(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn sealing_writes_what_the_definition_does_for_any_record(
            members in proptest::collection::vec((key(), value()), 0..12),
            seq in any::<u64>().prop_map(|n| n >> 11),
            ts in any::<String>(),
            prev in "[0-9a-f]{64}",
        ) {
            let record: Map<String, Value> = members.into_iter().collect();
            let expected = seal_as_defined(record.clone(), seq, &ts, &prev);
            prop_assert_eq!(seal(record, seq, ts, &prev), expected);
        }
    }

    #[test]
    fn sha256_hex_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_edited_line_is_found_whatever_the_edit() {
        let sealed = seal(record(json!({"goal": "a"})), 7, "t".to_owned(), GENESIS);
        let line = String::from_utf8(sealed.line).unwrap();
        let reformatted = line.replace(r#""goal":"a""#, r#""goal": "a""#);
        assert_eq!(
            check(reformatted.as_bytes()).unwrap_err(),
            LineProblem::NotCanonical
        );
        let changed = line.replace(r#""goal":"a""#, r#""goal":"b""#);
        assert_eq!(
            check(changed.as_bytes()).unwrap_err(),
            LineProblem::HashMismatch
        );
        assert!(matches!(
            check(&line.as_bytes()[1..]).unwrap_err(),
            LineProblem::NotJson(_)
        ));
    }
}
