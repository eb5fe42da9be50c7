//! What one tenant, a holder of another's session id, or a slow client can do to the HTTP mode
//! (issue 23): the built binary on 127.0.0.1, tokens from a test issuer checked for real, and a
//! raw JSON-RPC client at both revisions (`tests/common/http.rs`).
//!
//! A call that waits is a `retry-workflow` the simulator defers (five retries claimed), put to the
//! human through `elicitation/create` on the call's SSE stream: the test sees that request, so it
//! knows the call is in flight, and leaves it unanswered for as long as the test needs.

mod common;

use common::bounded;
use common::http::{Events, HttpServer, Issuer, stateless_meta, tool_call};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A call the simulator defers: the server asks the human and waits.
fn deferred(id: u64) -> Value {
    tool_call(
        id,
        "retry-workflow",
        json!({"workflowId": format!("w{id}"), "retryCount": 5}),
    )
}

/// An OAuth server with approvals on (asked over the session's stream) and `extra` settings.
async fn oauth_server(issuer: &Issuer, extra: &[(&str, &str)]) -> HttpServer {
    let mut env: Vec<(&str, String)> = issuer.env();
    env.push(("STAGE0_APPROVALS", "on".to_owned()));
    env.extend(
        extra
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
    HttpServer::start(&env).await
}

/// Sends a deferred call in `session` and returns its stream once the server has asked the
/// human (the call is then in flight), with the question.
async fn waiting_call(server: &HttpServer, token: &str, session: &str, id: u64) -> (Events, Value) {
    let response = server.post(Some(token), Some(session), &deferred(id)).await;
    assert_eq!(response.status(), 200, "call {id} is taken");
    let mut events = Events::of(response);
    let question = events
        .next_with_id()
        .await
        .expect("the server asks the human");
    assert_eq!(question["method"], "elicitation/create", "{question:#}");
    (events, question)
}

/// The `structuredContent` of a JSON-RPC answer to a tool call.
fn report(answer: &Value) -> &Value {
    &answer["result"]["structuredContent"]
}

#[tokio::test]
async fn at_2025_11_25_a_call_holds_its_place_until_it_ends() {
    let issuer = Issuer::start().await;
    let server = oauth_server(
        &issuer,
        &[
            ("STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL", "2"),
            ("STAGE0_HTTP_MAX_CALLS_IN_FLIGHT", "3"),
        ],
    )
    .await;
    let (alice, bob) = (
        issuer.token("alice", "viewer"),
        issuer.token("bob", "viewer"),
    );
    let alices = server.open_session(Some(&alice)).await.unwrap();
    let bobs = server.open_session(Some(&bob)).await.unwrap();
    let (_first, _) = waiting_call(&server, &alice, &alices, 1).await;
    let (_second, _) = waiting_call(&server, &alice, &alices, 2).await;
    // Her SSE answers went out long ago; her two calls still hold her two places.
    let third = server.post(Some(&alice), Some(&alices), &deferred(3)).await;
    assert_eq!(third.status(), 429, "Alice's third call is over her bound");
    assert_eq!(third.headers()["retry-after"], "1");
    let (_bobs_first, _) = waiting_call(&server, &bob, &bobs, 4).await;
    let over = server.post(Some(&bob), Some(&bobs), &deferred(5)).await;
    assert_eq!(
        over.status(),
        429,
        "three calls in flight is the total bound"
    );
    // A stateless 2026-07-28 call counts against the same bounds.
    let stateless = server.post(Some(&bob), None, &deferred(6)).await;
    assert_eq!(stateless.status(), 429);
}

#[tokio::test]
async fn at_2025_11_25_a_call_ends_at_its_deadline_approval_wait_included() {
    let issuer = Issuer::start().await;
    let server = oauth_server(&issuer, &[("STAGE0_HTTP_REQUEST_TIMEOUT_S", "2")]).await;
    let alice = issuer.token("alice", "viewer");
    let session = server.open_session(Some(&alice)).await.unwrap();
    // The human has 300 s to answer; the call's deadline is 2 s.
    let (mut events, _) = waiting_call(&server, &alice, &session, 1).await;
    let answer = events.next_with_id().await.expect("the call is answered");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["result"]["isError"], true, "{answer:#}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("nothing ran"), "{text}");
    server
        .until_logged("a tool call was ended: it passed its deadline", 1)
        .await;
}

#[tokio::test]
async fn a_call_ends_when_its_client_drops_the_stream_or_deletes_the_session() {
    let issuer = Issuer::start().await;
    let server = oauth_server(&issuer, &[("STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL", "1")]).await;
    let alice = issuer.token("alice", "viewer");
    let session = server.open_session(Some(&alice)).await.unwrap();
    let (events, _) = waiting_call(&server, &alice, &session, 1).await;
    drop(events);
    server
        .until_logged("a tool call was ended: its client went away", 1)
        .await;
    // Its place was given back: the next call is taken, and deleting the session ends it too.
    let (_events, _) = waiting_call(&server, &alice, &session, 2).await;
    assert_eq!(server.delete(Some(&alice), &session).await, 202);
    server
        .until_logged("a tool call was ended: its client went away", 2)
        .await;
    let after = server.open_session(Some(&alice)).await.unwrap();
    let (_events, _) = waiting_call(&server, &alice, &after, 3).await;
}

#[tokio::test]
async fn a_session_answers_only_the_principal_that_opened_it() {
    let issuer = Issuer::start().await;
    let server = oauth_server(&issuer, &[]).await;
    let (alice, bob) = (
        issuer.token("alice", "viewer"),
        issuer.token("bob", "admin"),
    );
    let session = server.open_session(Some(&alice)).await.unwrap();
    let (mut events, question) = waiting_call(&server, &alice, &session, 1).await;
    // Bob, with his own valid token and Alice's session id, approves her call.
    let approval = json!({"jsonrpc": "2.0", "id": question["id"], "result": {
        "action": "accept", "content": {"approve": true, "name": "bob", "reason": "mine now"}}});
    let answered = server.post(Some(&bob), Some(&session), &approval).await;
    assert_eq!(
        answered.status(),
        404,
        "Bob is told the session does not exist"
    );
    let listed = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    let listed = server.post(Some(&bob), Some(&session), &listed).await;
    assert_eq!(listed.status(), 404);
    assert_eq!(server.delete(Some(&bob), &session).await, 404);
    // Alice declines: her call stays deferred, and nothing names Bob.
    let decline = json!({"jsonrpc": "2.0", "id": question["id"], "result": {"action": "decline"}});
    let declined = server.post(Some(&alice), Some(&session), &decline).await;
    assert_eq!(declined.status(), 202);
    let answer = events.next_with_id().await.expect("the call is answered");
    assert_eq!(report(&answer)["executed"], false, "{answer:#}");
    assert_eq!(report(&answer)["verdict"], "DEFER");
    assert!(!answer.to_string().contains("bob"), "{answer:#}");
}

#[tokio::test]
async fn sessions_are_bounded_per_principal_and_in_total() {
    let issuer = Issuer::start().await;
    let server = oauth_server(
        &issuer,
        &[
            ("STAGE0_HTTP_MAX_SESSIONS_PER_PRINCIPAL", "2"),
            ("STAGE0_HTTP_MAX_SESSIONS", "3"),
        ],
    )
    .await;
    let (alice, bob) = (
        issuer.token("alice", "viewer"),
        issuer.token("bob", "viewer"),
    );
    let first = server.open_session(Some(&alice)).await.unwrap();
    server.open_session(Some(&alice)).await.unwrap();
    assert_eq!(server.open_session(Some(&alice)).await, Err(429));
    server.open_session(Some(&bob)).await.unwrap();
    assert_eq!(
        server.open_session(Some(&bob)).await,
        Err(429),
        "3 in total"
    );
    // A deleted session gives its place back.
    assert_eq!(server.delete(Some(&alice), &first).await, 202);
    server.open_session(Some(&alice)).await.unwrap();
}

#[tokio::test]
async fn over_http_a_repeated_argument_key_is_refused_as_over_stdio() {
    let server = HttpServer::start(&[]).await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"research-topic","arguments":{"topic":"quiet","topic":"loud"}}}"#;
    let mut events = Events::of(server.post_raw(None, None, &with_meta(call)).await);
    let answer = events.next_with_id().await.expect("an answer");
    assert_eq!(answer["result"]["isError"], true, "{answer:#}");
    assert!(
        answer["result"].get("structuredContent").is_none(),
        "nothing was checked: {answer:#}"
    );
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.ends_with("the arguments repeat the key `topic` (at `/topic`): a key may appear only once in an object"),
        "{text}"
    );
    let routed = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"research-topic","name":"publish-content","arguments":{"topic":"x"}}}"#;
    let refused = server.post_raw(None, None, &with_meta(routed)).await;
    assert_eq!(refused.status(), 400);
    let refused: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(refused["error"]["code"], -32600, "{refused:#}");
    assert_eq!(refused["id"], 2);
}

/// `body` (a `tools/call` ending in `}}}`) with the stateless `_meta` in its `params`, keeping
/// its repeated keys.
fn with_meta(body: &str) -> String {
    let body = body
        .strip_suffix("}}")
        .expect("a request ending with its params");
    format!("{body},\"_meta\":{}}}}}", stateless_meta())
}

/// Reads from `tcp` until the server closes it; bounded.
async fn until_closed(tcp: &mut TcpStream) {
    bounded("the server to close the connection", async {
        let mut buffer = [0u8; 1024];
        while let Ok(read) = tcp.read(&mut buffer).await {
            if read == 0 {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_a_real_client_is_served() {
    let server = HttpServer::start(&[
        ("STAGE0_HTTP_MAX_CONNECTIONS", "4"),
        ("STAGE0_HTTP_READ_TIMEOUT_S", "1"),
        ("STAGE0_HTTP_BODY_TIMEOUT_S", "1"),
    ])
    .await;
    // Four half-sent requests take every connection.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(server.address()).await.unwrap();
        tcp.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // A real client still gets in once they are dropped for their silence.
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let mut events = Events::of(server.post(None, None, &list).await);
    let answer = events.next_with_id().await.expect("tools/list is answered");
    assert!(answer["result"]["tools"].is_array(), "{answer:#}");
    for tcp in &mut slow {
        until_closed(tcp).await;
    }
    // A body that stops short of its Content-Length is answered 408.
    let mut tcp = TcpStream::connect(server.address()).await.unwrap();
    tcp.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{\"jsonrpc\"",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    bounded("the 408", tcp.read_to_string(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(server.address()).await.unwrap();
    idle.write_all(b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    until_closed(&mut idle).await;
}

#[tokio::test]
async fn sigterm_waits_for_the_calls_in_flight_not_their_exchanges() {
    let issuer = Issuer::start().await;
    let server = oauth_server(&issuer, &[("STAGE0_HTTP_REQUEST_TIMEOUT_S", "3")]).await;
    let alice = issuer.token("alice", "viewer");
    let session = server.open_session(Some(&alice)).await.unwrap();
    let (mut events, _) = waiting_call(&server, &alice, &session, 1).await;
    let pid = server.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // The call is answered (at its deadline) before the server ends its streams.
    let answer = events.next_with_id().await;
    let answer =
        answer.unwrap_or_else(|| panic!("no answer before the stop:\n{}", server.stderr()));
    assert_eq!(answer["id"], 1, "{answer:#}");
    assert_eq!(
        report(&answer)["executed"],
        Value::Null,
        "ended before a verdict: {answer:#}"
    );
}

#[tokio::test]
async fn a_local_bearer_secret_is_required_when_configured() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-local-token\n").unwrap();
    set_mode(&file, 0o600);
    let path = file.to_str().unwrap();
    let server = HttpServer::start(&[("STAGE0_HTTP_TOKEN_FILE", path)]).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    assert_eq!(server.post(None, None, &list).await.status(), 401);
    assert_eq!(server.post(Some("guess"), None, &list).await.status(), 401);
    assert_eq!(
        server
            .post(Some("s3cret-local-token"), None, &list)
            .await
            .status(),
        200
    );
    assert!(!server.stderr().contains("s3cret-local-token"));
    // A secret others may read is refused at start.
    set_mode(&file, 0o644);
    let refused = common::command(dir.path(), &[("STAGE0_HTTP_TOKEN_FILE", path)])
        .args(["http", "--listen", "127.0.0.1:0"])
        .output();
    let refused = bounded("the refusal", refused).await.unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("STAGE0_HTTP_TOKEN_FILE") && said.contains("0644"),
        "{said}"
    );
    assert!(!said.contains("s3cret-local-token"), "{said}");
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
