//! Fuzz target: the Stage0 `/check` response parser over arbitrary bytes.
//!
//! Whatever the bytes, [`PolicyResponse::from_body`] must not panic, must refuse anything that is
//! not a JSON object or repeats a key, must give a non-empty reason and request id, and must read
//! `ALLOW` only from a well-formed `ALLOW`: a JSON object that repeats no key, whose `verdict` is
//! the string `ALLOW` and whose `decision` is the string `GO`, each in any letter case. Everything
//! else has to come out as `DENY` or `DEFER`, because only an `ALLOW` runs a tool body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stage0_guard::json::first_duplicate_key;
use stage0_guard::policy::wire::{PolicyResponse, Verdict};
use serde_json::Value;

const SENT: &str = "fuzz-sent-request-id";

fuzz_target!(|body: &[u8]| {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let repeats_a_key = first_duplicate_key(body).is_ok_and(|found| found.is_some());
    let object = json.as_ref().and_then(Value::as_object).filter(|_| !repeats_a_key);
    let member = |name: &str, expected: &str| {
        object
            .and_then(|object| object.get(name))
            .and_then(Value::as_str)
            .is_some_and(|value| value.eq_ignore_ascii_case(expected))
    };
    let well_formed_allow = member("verdict", "ALLOW") && member("decision", "GO");

    match PolicyResponse::from_body(body, SENT) {
        Ok(response) => {
            assert!(object.is_some(), "a body that is no JSON object, or repeats a key, parsed");
            assert_eq!(
                response.verdict == Verdict::Allow,
                well_formed_allow,
                "verdict {:?} from a body that is {}a well-formed ALLOW",
                response.verdict,
                if well_formed_allow { "" } else { "not " },
            );
            assert!(!response.reason.is_empty(), "an empty reason");
            assert!(!response.request_id.is_empty(), "an empty request id");
        }
        Err(_) => assert!(object.is_none(), "a JSON object was refused"),
    }
});
