//! What `serde_json::Value` forgets, for the JSON that decides verdicts.
//!
//! `serde_json` reads an object with a repeated key as if only the last one were there, so
//! `{"verdict":"DENY","verdict":"ALLOW"}` is an `ALLOW` to it, and another reader, keeping the
//! first, could have seen a `DENY`. RFC 8259 §4 leaves such an object's meaning to each reader,
//! and I-JSON (RFC 7493 §2.3) forbids it. Where a repeated key could change what the server does,
//! it reads the bytes with [`first_duplicate_key`] before it trusts the `Value`, and refuses an
//! object that repeats a key: a Stage0 answer (fail closed, `policy/wire.rs`) and a tool call's
//! arguments (an invalid argument, `transport.rs`).
//!
//! It also forgets digits on the way out: RFC 8785 (JSON Canonicalization Scheme), which the
//! audit log hashes, writes every number as an IEEE double, so `9007199254740993` becomes
//! `9007199254740992` and two different calls share one `arguments_sha256`. [`canonical`] is RFC
//! 8785 except for that: an integer is written with all its digits. For every integer within
//! ±2^53, and every document without integers beyond it, the bytes are exactly RFC 8785's.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A key that an object holds twice: the second one, where it is in the document.
///
/// As an extension of a `tools/call` request (rmcp's `Extensions`, which only the server side
/// can set), it says that the call's arguments repeated this key, with `pointer` relative to the
/// arguments; the guard then refuses the call as an invalid argument (`transport.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The repeated key, unescaped.
    pub key: String,
    /// The JSON Pointer (RFC 6901) of the second occurrence, e.g. `/params/arguments/topic`.
    pub pointer: String,
}

impl DuplicateKey {
    /// This key relative to a `tools/call`'s arguments, when it repeats inside
    /// `params.arguments` (its pointer without `/params/arguments`): what the guard refuses as an
    /// invalid argument of the call. `None` for a key anywhere else, which makes the request
    /// unroutable for sure. Both transports read a request this way (`transport.rs`,
    /// `http_server.rs`).
    pub fn within_arguments(&self) -> Option<DuplicateKey> {
        let inside = self.pointer.strip_prefix("/params/arguments/")?;
        Some(DuplicateKey {
            key: self.key.clone(),
            pointer: format!("/{inside}"),
        })
    }
}

impl fmt::Display for DuplicateKey {
    /// `` `topic` (at `/params/arguments/topic`) ``, with any control character escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` (at `{}`)",
            self.key.escape_debug(),
            self.pointer.escape_debug()
        )
    }
}

/// The first key, in document order, that repeats an earlier key of the same object anywhere in
/// the JSON text `json`; `None` when every object's keys are distinct. Keys are compared after
/// unescaping, so `"a"` and `"\u0061"` are the same key, as they are to `serde_json`.
///
/// # Errors
///
/// The `serde_json` error when `json` is not one JSON value (or nests deeper than `serde_json`'s
/// limit of 128): the caller reads it with `serde_json` too and refuses it for the same reason.
pub fn first_duplicate_key(json: &[u8]) -> Result<Option<DuplicateKey>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let mut path = Vec::new();
    let mut found = None;
    Scan {
        path: &mut path,
        found: &mut found,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(found)
}

/// Where a value is: under a key of an object or at an index of an array.
enum Segment<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

/// Walks one JSON value, noting the first repeated key in `found`; `path` is where the value is.
/// Keys are borrowed from the JSON text unless they hold escapes: the scan reads every line
/// from the client, so it allocates nothing per key or per item (BENCHMARKS.md).
struct Scan<'a, 'de> {
    path: &'a mut Vec<Segment<'de>>,
    found: &'a mut Option<DuplicateKey>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut index = 0_usize;
        loop {
            if self.found.is_some() {
                // Found already: the rest only has to be read through.
                while items.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(());
            }
            self.path.push(Segment::Index(index));
            let more = items.next_element_seed(Scan {
                path: self.path,
                found: self.found,
            })?;
            self.path.pop();
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        let mut keys = SeenKeys::default();
        while let Some(key) = members.next_key_seed(KeySeed)? {
            if self.found.is_some() {
                members.next_value::<IgnoredAny>()?;
                continue;
            }
            if !keys.insert(key.clone()) {
                *self.found = Some(DuplicateKey {
                    key: key.clone().into_owned(),
                    pointer: pointer(self.path, &key),
                });
            }
            self.path.push(Segment::Key(key));
            members.next_value_seed(Scan {
                path: self.path,
                found: self.found,
            })?;
            self.path.pop();
        }
        Ok(())
    }
}

/// How many keys of an object [`SeenKeys`] searches one by one before it hashes the rest.
const FEW_KEYS: usize = 16;

/// The keys of one object read so far. Most objects have a few keys, which a list finds sooner
/// than a hash set hashes them; past [`FEW_KEYS`] a hash set keeps a huge object's scan linear.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> SeenKeys<'de> {
    /// Adds `key`; `false` when it was there already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if self.few.contains(&key) {
            return false;
        }
        if self.few.len() < FEW_KEYS {
            self.few.push(key);
            true
        } else {
            self.many.insert(key)
        }
    }
}

/// Reads a key, borrowed from the JSON text when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

/// The JSON Pointer (RFC 6901) of the member `key` of the object at `path`: each segment after a
/// `/`, with `~` as `~0` and `/` as `~1`.
fn pointer(path: &[Segment<'_>], key: &str) -> String {
    let escaped = |key: &str| key.replace('~', "~0").replace('/', "~1");
    let mut pointer = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => pointer.push_str(&format!("/{}", escaped(key))),
            Segment::Index(index) => pointer.push_str(&format!("/{index}")),
        }
    }
    pointer + "/" + &escaped(key)
}

/// `value` as canonical JSON: RFC 8785 (keys sorted by their UTF-16 code units, no white space,
/// strings escaped as RFC 8785 §3.2.2.2 says, floating-point numbers as ECMAScript writes a
/// double), except that an integer (any `u64` or `i64` `serde_json` holds) is written with all
/// its digits instead of as the nearest double.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(value, &mut out);
    out
}

/// [`canonical`] of the object `object`, without wrapping it in a [`Value`].
pub fn canonical_object(object: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_object(object, &mut out);
    out
}

/// `value`'s canonical JSON, appended to `out`.
fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(object) => write_object(object, out),
    }
}

/// An integer with all its digits; any other number as RFC 8785 writes a double.
fn write_number(number: &serde_json::Number, out: &mut Vec<u8>) {
    if number.is_u64() || number.is_i64() {
        // `serde_json` writes a `Number` holding an integer with exactly its digits (`itoa`).
        serde_json::to_writer(&mut *out, number).expect("writing to a Vec cannot fail");
    } else {
        // A `Number` holds only finite doubles, which RFC 8785 always writes.
        let double = number.as_f64().unwrap_or_default();
        serde_json_canonicalizer::to_writer(&double, out).expect("a finite double canonicalises");
    }
}

fn write_object(object: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut members: Vec<(&str, &Value)> = object
        .iter()
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    sort_members(&mut members);
    out.push(b'{');
    write_members(&members, out);
    out.push(b'}');
}

/// Sorts an object's members (distinct keys) into RFC 8785's order: by the keys' UTF-16 code
/// units. For ASCII keys (nearly every key) that is the order of their bytes, which is cheaper to
/// compare.
pub(crate) fn sort_members(members: &mut [(&str, &Value)]) {
    if members.iter().all(|(key, _)| key.is_ascii()) {
        members.sort_unstable_by_key(|&(key, _)| key);
    } else {
        members.sort_unstable_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    }
}

/// `members`, in the order given, as the inside of a canonical JSON object (`"key":value`
/// separated by commas, no braces), appended to `out`.
pub(crate) fn write_members(members: &[(&str, &Value)], out: &mut Vec<u8>) {
    for (index, (key, value)) in members.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(value, out);
    }
}

/// `text` as a JSON string. `serde_json` escapes exactly what RFC 8785 does: `"`, `\`, and the
/// controls U+0000 to U+001F, as `\b`, `\t`, `\n`, `\f`, `\r` or `\u00xx` in lowercase hex.
fn write_string(text: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(json: &str) -> Option<String> {
        first_duplicate_key(json.as_bytes())
            .expect("valid JSON")
            .map(|found| found.pointer)
    }

    #[test]
    fn a_repeated_key_is_found_at_any_depth_and_named_by_its_pointer() {
        for (json, expected) in [
            (r#"{"verdict":"DENY","verdict":"ALLOW"}"#, Some("/verdict")),
            (r#"{"a":{"b":1,"b":2}}"#, Some("/a/b")),
            (r#"{"a":[{"x":1},{"y":1,"y":2}]}"#, Some("/a/1/y")),
            (r#"[{"k":1,"k":1}]"#, Some("/0/k")),
            (r#"{"a/b~":{"c":0,"c":0}}"#, Some("/a~1b~0/c")),
            (r#"{"a":1,"\u0061":2}"#, Some("/a")),
            (r#"{"a":{"x":1},"b":{"x":1}}"#, None),
            (r#"{"a":1,"A":2,"a ":3}"#, None),
            (r#"[1,"two",null,true,{"a":[]}]"#, None),
            ("7", None),
        ] {
            assert_eq!(duplicate(json).as_deref(), expected, "{json}");
        }
    }

    #[test]
    fn a_repeated_key_is_found_in_an_object_of_any_size() {
        // Keys k0..k99, then one more: the first keys are searched one by one, the later ones
        // hashed, and a repeat is found among either, escaped or not.
        let object = |last: &str| {
            let keys: Vec<String> = (0..100).map(|n| format!(r#""k{n}":{n}"#)).collect();
            format!("{{{},{last}}}", keys.join(","))
        };
        for (last, expected) in [
            (r#""k3":0"#, Some("/k3")),
            (r#""k97":0"#, Some("/k97")),
            (r#""k\u0039\u0039":0"#, Some("/k99")),
            (r#""k100":0"#, None),
        ] {
            assert_eq!(duplicate(&object(last)).as_deref(), expected, "{last}");
        }
    }

    #[test]
    fn the_first_repeated_key_in_document_order_is_reported() {
        let found = first_duplicate_key(br#"{"a":{"b":1,"b":2},"a":0,"c":1,"c":2}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            found,
            DuplicateKey {
                key: "b".to_owned(),
                pointer: "/a/b".to_owned()
            }
        );
        assert_eq!(found.to_string(), "`b` (at `/a/b`)");
    }

    #[test]
    fn text_that_is_not_one_json_value_is_an_error() {
        for json in ["", "{", r#"{"a":1} {"a":2}"#, "[1,]", &"[".repeat(200)] {
            assert!(first_duplicate_key(json.as_bytes()).is_err(), "{json}");
        }
    }

    #[test]
    fn a_key_with_control_characters_is_shown_escaped() {
        let found = first_duplicate_key(b"{\"a\\nb\":1,\"a\\nb\":2}")
            .unwrap()
            .unwrap();
        assert_eq!(found.key, "a\nb");
        assert_eq!(found.to_string(), "`a\\nb` (at `/a\\nb`)");
    }

    fn jcs(value: &Value) -> Vec<u8> {
        serde_json_canonicalizer::to_vec(value).expect("RFC 8785")
    }

    #[test]
    fn without_integers_past_2_pow_53_the_canonical_form_is_rfc_8785() {
        let controls: String = (0_u8..0x20).map(char::from).collect();
        for value in [
            serde_json::json!({"b": 1, "a": [true, false, null], "c": {"z": "", "y": -3}}),
            serde_json::json!({"\u{e9}": 1, "z": 2, "\u{1f980}": 3, "\u{ff5e}": 4, "a": 5}),
            serde_json::json!([
                1.5,
                -0.0,
                1e-7,
                1e21,
                123456789.125,
                5.0,
                9_007_199_254_740_992_u64
            ]),
            serde_json::json!([-9_007_199_254_740_992_i64, 0, -1, 100]),
            serde_json::json!(format!("{controls} \u{7f} \u{2028} \" \\ / é 🦀")),
            serde_json::json!({controls.clone(): controls}),
            serde_json::json!({}),
            serde_json::json!([]),
        ] {
            assert_eq!(
                String::from_utf8(canonical(&value)).unwrap(),
                String::from_utf8(jcs(&value)).unwrap(),
                "{value}"
            );
        }
    }

    #[test]
    fn an_integer_past_2_pow_53_keeps_all_its_digits() {
        for (value, written) in [
            (
                serde_json::json!(9_007_199_254_740_993_u64),
                "9007199254740993",
            ),
            (serde_json::json!(u64::MAX), "18446744073709551615"),
            (serde_json::json!(i64::MIN), "-9223372036854775808"),
        ] {
            assert_eq!(canonical(&value), written.as_bytes());
            assert_ne!(jcs(&value), written.as_bytes(), "RFC 8785 rounds {written}");
        }
        let apart = |n: u64| canonical(&serde_json::json!({"retryCount": n, "workflowId": "etl"}));
        assert_ne!(apart(9_007_199_254_740_992), apart(9_007_199_254_740_993));
        assert_eq!(
            apart(9_007_199_254_740_993),
            br#"{"retryCount":9007199254740993,"workflowId":"etl"}"#
        );
    }

    #[test]
    fn the_canonical_form_reads_back_to_itself() {
        let value = serde_json::json!({"n": u64::MAX, "m": i64::MIN, "f": 0.1, "s": "\u{0}"});
        let once = canonical(&value);
        let again: Value = serde_json::from_slice(&once).unwrap();
        assert_eq!(canonical(&again), once);
        let Value::Object(object) = value else {
            unreachable!()
        };
        assert_eq!(canonical_object(&object), once);
    }
}
