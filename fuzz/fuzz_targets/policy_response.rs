//! Fuzz target: the Stage0 `/check` response parser over arbitrary bytes.
//!
//! Whatever the bytes, [`PolicyResponse::from_body`] must not panic, must refuse anything that is
//! not a JSON object, must give a non-empty reason and request id, and must read `ALLOW` only from
//! a well-formed `ALLOW`: a JSON object whose `verdict` is the string `ALLOW` in any letter case.
//! Everything else has to come out as `DENY` or `DEFER`, because only an `ALLOW` runs a tool body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stage0_guard::policy::wire::{PolicyResponse, Verdict};
use serde_json::Value;

const SENT: &str = "fuzz-sent-request-id";

fuzz_target!(|body: &[u8]| {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let object = json.as_ref().and_then(Value::as_object);
    let well_formed_allow = object
        .and_then(|object| object.get("verdict"))
        .and_then(Value::as_str)
        .is_some_and(|verdict| verdict.eq_ignore_ascii_case("ALLOW"));

    match PolicyResponse::from_body(body, SENT) {
        Ok(response) => {
            assert!(object.is_some(), "a body that is no JSON object parsed");
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
