//! What `serde_json::Value` forgets, for the JSON that decides verdicts.
//!
//! `serde_json` reads an object with a repeated key as if only the last one were there, so
//! `{"verdict":"DENY","verdict":"ALLOW"}` is an `ALLOW` to it, and another reader, keeping the
//! first, could have seen a `DENY`. RFC 8259 §4 leaves such an object's meaning to each reader,
//! and I-JSON (RFC 7493 §2.3) forbids it. Where a repeated key could change what the server does,
//! it reads the bytes with [`first_duplicate_key`] before it trusts the `Value`, and refuses an
//! object that repeats a key: a Stage0 answer (fail closed, `policy/wire.rs`) and a tool call's
//! arguments (an invalid argument, `transport.rs`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A key that an object holds twice: the second one, where it is in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The repeated key, unescaped.
    pub key: String,
    /// The JSON Pointer (RFC 6901) of the second occurrence, e.g. `/params/arguments/topic`.
    pub pointer: String,
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

/// Walks one JSON value, noting the first repeated key in `found`; `path` is where the value is.
struct Scan<'a> {
    path: &'a mut Vec<String>,
    found: &'a mut Option<DuplicateKey>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
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
            self.path.push(index.to_string());
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
        let mut keys = HashSet::new();
        while let Some(key) = members.next_key::<String>()? {
            if self.found.is_some() {
                members.next_value::<IgnoredAny>()?;
                continue;
            }
            self.path.push(key);
            let key = self.path.last().expect("just pushed");
            if !keys.insert(key.clone()) {
                *self.found = Some(DuplicateKey {
                    key: key.clone(),
                    pointer: pointer(self.path),
                });
            }
            members.next_value_seed(Scan {
                path: self.path,
                found: self.found,
            })?;
            self.path.pop();
        }
        Ok(())
    }
}

/// The JSON Pointer (RFC 6901) of `path`: each segment after a `/`, with `~` as `~0` and `/` as
/// `~1`.
fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
        .collect()
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
}
