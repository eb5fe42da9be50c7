//! The live policy client against a fake Stage0 on 127.0.0.1 (`docs/contract.md` §3).
//!
//! Every failure must come back as `DENY` / `ERROR` with a reason that says what happened and the
//! `X-Request-Id` that was sent. No test reaches the internet.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use stage0_guard::config::Config;
use stage0_guard::policy::http::{HttpPolicyClient, MAX_BODY_BYTES};
use stage0_guard::policy::wire::{Decision, Intent, PolicyResponse, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-http-client-5a4b";

fn client(base_url: &str, timeout_ms: u64) -> HttpPolicyClient {
    let config = Config::from_lookup(|name| match name {
        "STAGE0_API_KEY" => Some(KEY.to_owned()),
        "STAGE0_BASE_URL" => Some(base_url.to_owned()),
        "STAGE0_TIMEOUT_MS" => Some(timeout_ms.to_string()),
        _ => None,
    })
    .unwrap();
    HttpPolicyClient::new(
        &config.base_url,
        config.timeout,
        config.api_key.clone().unwrap(),
    )
    .unwrap()
}

fn intent(goal: &str) -> Intent {
    let mut context = Map::new();
    context.insert("environment".to_owned(), json!("staging"));
    Intent {
        goal: goal.to_owned(),
        success_criteria: vec!["Deployment completes successfully".to_owned()],
        constraints: vec!["max_retries: 5".to_owned()],
        tools: vec!["shell".to_owned()],
        side_effects: vec!["deploy".to_owned()],
        context,
    }
}

async fn answer(template: ResponseTemplate) -> (MockServer, PolicyResponse) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/check"))
        .respond_with(template)
        .mount(&server)
        .await;
    let response = client(&server.uri(), 5000)
        .check(&intent("Deploy api to staging"))
        .await;
    (server, response)
}

/// The `X-Request-Id` of the one request `server` received.
async fn sent_request_id(server: &MockServer) -> String {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    requests[0]
        .headers
        .get("X-Request-Id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn assert_fail_closed(response: &PolicyResponse, reason_contains: &str) {
    assert_eq!(response.verdict, Verdict::Deny, "{response:?}");
    assert_eq!(response.decision, Decision::Error, "{response:?}");
    assert!(
        response.reason.contains(reason_contains),
        "reason: {}",
        response.reason
    );
    assert!(!response.reason.contains(KEY));
}

#[tokio::test]
async fn an_allow_passes_through_with_the_exact_request_body_and_headers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/check"))
        .and(header("x-api-key", KEY))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "verdict": "ALLOW", "decision": "GO", "reason": "ok", "request_id": "stage0-id",
            "policy_version": "v9", "risk_score": 10, "high_risk": false
        })))
        .mount(&server)
        .await;

    let response = client(&server.uri(), 5000)
        .check(&intent("Deploy api to staging"))
        .await;

    assert_eq!(response.verdict, Verdict::Allow);
    assert_eq!(response.decision, Decision::Go);
    assert_eq!(response.policy_version, "v9");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request_id = requests[0]
        .headers
        .get("X-Request-Id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    // The check is named by the id sent; Stage0's own id for it is kept beside it.
    assert_eq!(response.request_id, request_id);
    assert_eq!(response.stage0_request_id.as_deref(), Some("stage0-id"));
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "goal": "Deploy api to staging",
            "success_criteria": ["Deployment completes successfully"],
            "constraints": ["max_retries: 5"],
            "tools": ["shell"],
            "side_effects": ["deploy"],
            "context": {"environment": "staging"},
            "pro": false
        })
    );
}

#[tokio::test]
async fn a_base_url_with_a_path_keeps_it() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/check"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"verdict": "ALLOW", "decision": "GO"})),
        )
        .mount(&server)
        .await;
    let response = client(&format!("{}/v1/", server.uri()), 5000)
        .check(&intent("x"))
        .await;
    assert_eq!(response.verdict, Verdict::Allow);
}

#[tokio::test]
async fn each_call_sends_a_fresh_request_id() {
    let server = MockServer::start().await;
    Mock::given(path("/check"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"verdict": "DENY"})))
        .mount(&server)
        .await;
    let client = client(&server.uri(), 5000);
    let first = client.check(&intent("a")).await.request_id;
    let second = client.check(&intent("b")).await.request_id;
    assert_ne!(first, second);
}

#[tokio::test]
async fn an_answer_that_echoes_the_request_id_sent_has_no_second_id() {
    let server = MockServer::start().await;
    Mock::given(path("/check"))
        .respond_with(|request: &wiremock::Request| {
            let sent = request
                .headers
                .get("X-Request-Id")
                .unwrap()
                .to_str()
                .unwrap();
            ResponseTemplate::new(200)
                .set_body_json(json!({"verdict": "ALLOW", "decision": "GO", "request_id": sent}))
        })
        .mount(&server)
        .await;
    let response = client(&server.uri(), 5000).check(&intent("x")).await;
    assert_eq!(response.verdict, Verdict::Allow);
    assert_eq!(response.request_id, sent_request_id(&server).await);
    assert_eq!(response.stage0_request_id, None);
}

#[tokio::test]
async fn a_2xx_status_other_than_200_is_denied_whatever_its_body_says() {
    for status in [201, 202, 203, 206, 226] {
        let allow = json!({"verdict": "ALLOW", "decision": "GO", "reason": "fine"});
        let (server, response) = answer(ResponseTemplate::new(status).set_body_json(allow)).await;
        assert_fail_closed(
            &response,
            &format!("HTTP {status} is not 200 OK, the only status a verdict is read from"),
        );
        assert_eq!(response.request_id, sent_request_id(&server).await);
    }
    let (_server, response) = answer(ResponseTemplate::new(204)).await;
    assert_fail_closed(&response, "HTTP 204 is not 200 OK");
}

#[tokio::test]
async fn a_body_that_repeats_a_key_is_denied_whichever_value_comes_last() {
    for body in [
        r#"{"verdict":"DENY","verdict":"ALLOW","decision":"GO"}"#,
        r#"{"verdict":"ALLOW","decision":"NO_GO","decision":"GO"}"#,
        r#"{"verdict":"ALLOW","decision":"GO","issues":[{"code":"A","code":"B"}]}"#,
    ] {
        let (server, response) = answer(
            ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "application/json"),
        )
        .await;
        assert_fail_closed(&response, "response body repeats the key `");
        assert_eq!(response.request_id, sent_request_id(&server).await);
    }
}

#[tokio::test]
async fn an_allow_whose_decision_is_not_go_is_denied_with_a_reason_naming_both() {
    for (decision, shown) in [
        (json!("NO_GO"), "`NO_GO`"),
        (json!("ERROR"), "`ERROR`"),
        (json!("DEFER"), "`DEFER`"),
        (json!(null), "null"),
    ] {
        let (_server, response) = answer(
            ResponseTemplate::new(200)
                .set_body_json(json!({"verdict": "ALLOW", "decision": decision, "reason": "ok"})),
        )
        .await;
        assert_fail_closed(
            &response,
            &format!("verdict `ALLOW` with decision {shown}: the two disagree"),
        );
    }
    let (_server, response) =
        answer(ResponseTemplate::new(200).set_body_json(json!({"verdict": "ALLOW"}))).await;
    assert_fail_closed(&response, "verdict `ALLOW` with decision (missing)");
}

#[tokio::test]
async fn a_500_is_denied_with_the_status_and_the_request_id_sent() {
    let (server, response) = answer(ResponseTemplate::new(500)).await;
    assert_fail_closed(&response, "HTTP 500");
    assert_eq!(response.request_id, sent_request_id(&server).await);
}

#[tokio::test]
async fn a_401_is_denied_with_the_message_of_its_body() {
    let (_server, response) =
        answer(ResponseTemplate::new(401).set_body_json(json!({"message": "invalid API key"})))
            .await;
    assert_fail_closed(&response, "invalid API key");
}

#[tokio::test]
async fn a_429_with_detail_is_denied_with_the_detail() {
    let (_server, response) =
        answer(ResponseTemplate::new(429).set_body_json(json!({"detail": "rate limited"}))).await;
    assert_fail_closed(&response, "rate limited");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_denied() {
    let (server, response) =
        answer(ResponseTemplate::new(200).set_body_string("<html>ALLOW</html>")).await;
    assert_fail_closed(&response, "Stage0 API error: response body is not JSON");
    assert_eq!(response.request_id, sent_request_id(&server).await);
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_is_denied() {
    let (_server, response) =
        answer(ResponseTemplate::new(200).set_body_json(json!(["ALLOW"]))).await;
    assert_fail_closed(
        &response,
        "Stage0 API error: response body is not a JSON object",
    );
}

#[tokio::test]
async fn wrong_typed_optional_fields_are_dropped_and_the_verdict_kept() {
    let (_server, response) = answer(ResponseTemplate::new(200).set_body_json(json!({
        "verdict": "ALLOW", "decision": "GO", "risk_score": "low", "high_risk": "no",
        "issues": {"code": 1}, "defer_questions": "why?"
    })))
    .await;
    assert_eq!(response.verdict, Verdict::Allow);
    assert_eq!(response.risk_score, None);
    assert_eq!(response.high_risk, None);
    assert!(response.issues.is_empty());
    assert!(response.defer_questions.is_empty());
}

#[tokio::test]
async fn an_unknown_verdict_is_denied() {
    let (_server, response) = answer(
        ResponseTemplate::new(200).set_body_json(json!({"verdict": "PROBABLY", "decision": "GO"})),
    )
    .await;
    assert_eq!(response.verdict, Verdict::Deny);
}

#[tokio::test]
async fn a_missing_verdict_is_denied() {
    let (_server, response) =
        answer(ResponseTemplate::new(200).set_body_json(json!({"decision": "GO", "reason": "?"})))
            .await;
    assert_eq!(response.verdict, Verdict::Deny);
}

#[tokio::test]
async fn a_body_over_the_cap_is_denied() {
    let padding = "x".repeat(MAX_BODY_BYTES);
    let (_server, response) = answer(
        ResponseTemplate::new(200)
            .set_body_json(json!({"verdict": "ALLOW", "decision": "GO", "pad": padding})),
    )
    .await;
    assert_fail_closed(&response, "larger than 1048576 bytes");
}

#[tokio::test]
async fn an_error_status_with_a_body_over_the_cap_is_denied_with_the_status() {
    let (_server, response) =
        answer(ResponseTemplate::new(502).set_body_string("x".repeat(MAX_BODY_BYTES + 1))).await;
    assert_fail_closed(&response, "HTTP 502");
}

#[tokio::test]
async fn a_body_just_under_the_cap_is_read() {
    let padding = "x".repeat(MAX_BODY_BYTES - 100);
    let (_server, response) = answer(
        ResponseTemplate::new(200)
            .set_body_json(json!({"verdict": "ALLOW", "decision": "GO", "pad": padding})),
    )
    .await;
    assert_eq!(response.verdict, Verdict::Allow);
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_is_denied_without_a_content_length() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_request(&mut BufReader::new(&mut socket)).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 64 * 1024];
        // Twice the cap, then the end; the client must stop reading long before.
        for _ in 0..(2 * MAX_BODY_BYTES / chunk.len()) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if socket.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
    });
    let response = client(&base, 5000).check(&intent("x")).await;
    assert_fail_closed(&response, "larger than 1048576 bytes");
}

#[tokio::test]
async fn a_hung_stage0_is_denied_within_the_deadline() {
    let server = MockServer::start().await;
    Mock::given(path("/check"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"verdict": "ALLOW", "decision": "GO"}))
                .set_delay(Duration::from_secs(60)),
        )
        .mount(&server)
        .await;
    let client = client(&server.uri(), 300);
    let bound = Duration::from_millis(300) + Duration::from_secs(1);
    let response = tokio::time::timeout(bound, client.check(&intent("x")))
        .await
        .expect("answered within the deadline plus one second");
    assert_fail_closed(&response, "no complete answer within 300 ms");
}

#[tokio::test]
async fn a_hung_call_does_not_hold_up_other_calls() {
    let server = MockServer::start().await;
    Mock::given(body_partial_json(json!({"goal": "slow"})))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&server)
        .await;
    Mock::given(body_partial_json(json!({"goal": "fast"})))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"verdict": "ALLOW", "decision": "GO"})),
        )
        .mount(&server)
        .await;
    let client = client(&server.uri(), 1500);
    let (slow_intent, fast_intent) = (intent("slow"), intent("fast"));
    let slow = client.check(&slow_intent);
    let fast = client.check(&fast_intent);
    tokio::pin!(slow);
    // The fast call must finish while the slow one is still waiting on its deadline.
    tokio::select! {
        response = &mut slow => panic!("the hung call finished first: {response:?}"),
        response = fast => assert_eq!(response.verdict, Verdict::Allow),
    }
    assert_fail_closed(&slow.await, "no complete answer within 1500 ms");
}

#[tokio::test]
async fn a_refused_connection_is_denied() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let response = client(&format!("http://127.0.0.1:{port}"), 5000)
        .check(&intent("x"))
        .await;
    assert_fail_closed(&response, "Stage0 API error: ");
    assert!(uuid::Uuid::parse_str(&response.request_id).is_ok());
}

#[tokio::test]
async fn a_redirect_is_denied_and_not_followed_so_the_key_stays_home() {
    let elsewhere = MockServer::start().await;
    Mock::given(path("/check"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"verdict": "ALLOW", "decision": "GO"})),
        )
        .mount(&elsewhere)
        .await;
    let (_server, response) = answer(
        ResponseTemplate::new(307).insert_header("location", format!("{}/check", elsewhere.uri())),
    )
    .await;
    assert_fail_closed(&response, "HTTP 307");
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut reader = BufReader::new(&mut socket);
                while read_request(&mut reader).await {
                    let body = r#"{"verdict":"ALLOW","decision":"GO"}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let client = client(&base, 5000);
    for _ in 0..20 {
        assert_eq!(client.check(&intent("x")).await.verdict, Verdict::Allow);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// Reads one HTTP/1.1 request (head and `content-length` body); `false` at end of stream.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(reader: &mut BufReader<R>) -> bool {
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).await.is_ok()
}

// ---------------------------------------------------------------------------------------------
// One retry for a transient failure (connection error, 429, 503), inside the same deadline
// ---------------------------------------------------------------------------------------------

fn allow() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"verdict": "ALLOW", "decision": "GO"}))
}

/// A fake Stage0 that answers `first` once and `then` from then on.
async fn answers_first_then(first: ResponseTemplate, then: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/check"))
        .respond_with(first)
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/check"))
        .respond_with(then)
        .mount(&server)
        .await;
    server
}

/// The `X-Request-Id` of every request `server` received, in order.
async fn sent_request_ids(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|request| {
            let id = request.headers.get("X-Request-Id").unwrap();
            id.to_str().unwrap().to_owned()
        })
        .collect()
}

/// Runs one check against `base` with `timeout_ms`, failing the test unless it is answered
/// within the deadline plus one second (a bound on the wait, not a measurement of speed).
async fn check_within_deadline(base: &str, timeout_ms: u64) -> PolicyResponse {
    let bound = Duration::from_millis(timeout_ms) + Duration::from_secs(1);
    tokio::time::timeout(bound, client(base, timeout_ms).check(&intent("x")))
        .await
        .expect("answered within the deadline plus one second")
}

#[tokio::test]
async fn a_503_or_429_is_retried_once_with_the_same_request_id_and_the_retry_answers() {
    for status in [503, 429] {
        let server = answers_first_then(ResponseTemplate::new(status), allow()).await;
        let response = check_within_deadline(&server.uri(), 5000).await;
        assert_eq!(response.verdict, Verdict::Allow, "{status}: {response:?}");
        let ids = sent_request_ids(&server).await;
        assert_eq!(ids.len(), 2, "{status}: one retry");
        assert_eq!(
            ids[0], ids[1],
            "{status}: the retry carries the same X-Request-Id"
        );
        assert_eq!(response.request_id, ids[0]);
    }
}

#[tokio::test]
async fn a_persistent_503_or_429_is_retried_once_and_never_twice() {
    for status in [503, 429] {
        let server = answers_first_then(
            ResponseTemplate::new(status).set_body_json(json!({"error": "first"})),
            ResponseTemplate::new(status).set_body_json(json!({"error": "second"})),
        )
        .await;
        let response = check_within_deadline(&server.uri(), 5000).await;
        assert_fail_closed(&response, "second");
        let ids = sent_request_ids(&server).await;
        assert_eq!(ids.len(), 2, "{status}: exactly one retry");
        assert_eq!(response.request_id, ids[0]);
    }
}

#[tokio::test]
async fn other_failures_fail_closed_at_once_without_a_retry() {
    let cases = [
        (ResponseTemplate::new(500), "HTTP 500"),
        (ResponseTemplate::new(400), "HTTP 400"),
        (ResponseTemplate::new(502), "HTTP 502"),
        (ResponseTemplate::new(504), "HTTP 504"),
        (ResponseTemplate::new(401), "HTTP 401"),
        (
            ResponseTemplate::new(200).set_body_string("garbage"),
            "response body is not JSON",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!(["ALLOW"])),
            "not a JSON object",
        ),
    ];
    for (first, reason) in cases {
        // A retry would be allowed: the test would see it and the ALLOW.
        let server = answers_first_then(first, allow()).await;
        let response = check_within_deadline(&server.uri(), 5000).await;
        assert_fail_closed(&response, reason);
        assert_eq!(
            sent_request_ids(&server).await.len(),
            1,
            "{reason}: no retry"
        );
    }
}

#[tokio::test]
async fn a_timeout_is_not_retried() {
    let server = answers_first_then(allow().set_delay(Duration::from_secs(60)), allow()).await;
    let response = check_within_deadline(&server.uri(), 300).await;
    assert_fail_closed(&response, "no complete answer within 300 ms");
    assert_eq!(sent_request_ids(&server).await.len(), 1);
}

#[tokio::test]
async fn a_retry_after_that_fits_the_deadline_is_waited_for_and_retried() {
    let first = ResponseTemplate::new(503).insert_header("retry-after", "1");
    let server = answers_first_then(first, allow()).await;
    let response = check_within_deadline(&server.uri(), 5000).await;
    assert_eq!(response.verdict, Verdict::Allow, "{response:?}");
    let ids = sent_request_ids(&server).await;
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_or_unreadable_fails_closed_at_once() {
    let cases = [
        (429, "5"),
        (503, "2"),
        (503, "18446744073709551615"),
        (503, "99999999999999999999999"),
        (429, "Wed, 21 Oct 2026 07:28:00 GMT"),
        (503, "soon"),
        (503, "-1"),
    ];
    for (status, retry_after) in cases {
        let first = ResponseTemplate::new(status)
            .insert_header("retry-after", retry_after)
            .set_body_json(json!({"detail": "busy"}));
        let server = answers_first_then(first, allow()).await;
        // Bounded by 1 s + 1 s: waiting out any of these Retry-After values would not fit.
        let response = check_within_deadline(&server.uri(), 1000).await;
        assert_fail_closed(&response, "busy");
        assert_eq!(
            sent_request_ids(&server).await.len(),
            1,
            "{status} Retry-After: {retry_after}"
        );
    }
}

#[tokio::test]
async fn a_transient_failure_too_close_to_the_deadline_is_not_retried() {
    // The 503 arrives with less than MIN_RETRY_BUDGET (50 ms) of the 400 ms deadline left. A
    // retry would reach the fake (and be counted) well before the deadline ends the check.
    let first = ResponseTemplate::new(503).set_delay(Duration::from_millis(370));
    let server = answers_first_then(first.clone(), first).await;
    let response = check_within_deadline(&server.uri(), 400).await;
    assert_eq!(response.verdict, Verdict::Deny);
    assert_eq!(sent_request_ids(&server).await.len(), 1);
}

/// A fake that accepts TCP connections, counts them and closes each at once: to an `https`
/// client every attempt is a failed connection (the TLS handshake cannot complete).
async fn closing_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (base, connections)
}

#[tokio::test]
async fn a_failed_connection_is_retried_once_and_never_twice() {
    let (base, connections) = closing_listener().await;
    let response = check_within_deadline(&base, 5000).await;
    assert_fail_closed(&response, "Stage0 API error: ");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// Log lines written while `future` runs on this thread (a `#[tokio::test]` runtime).
async fn logs_of<F: std::future::Future>(future: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let output = {
        let _default = tracing::subscriber::set_default(subscriber);
        future.await
    };
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (output, logs)
}

#[tokio::test]
async fn a_refused_connection_is_retried_once_at_once() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let (response, logs) = logs_of(check_within_deadline(&base, 5000)).await;
    assert_fail_closed(&response, "Connection refused");
    assert_eq!(
        logs.matches("retrying once").count(),
        1,
        "one retry, logged with the request id:\n{logs}"
    );
    assert!(logs.contains(&response.request_id), "{logs}");
}
