//! The HTTP mode as an OAuth 2.1 resource server: the built binary serves `/mcp` on 127.0.0.1,
//! and a test authorization server, also on 127.0.0.1, publishes keys this test generated (its
//! metadata and JWKS served over HTTP). Tokens are signed with those keys and checked by the
//! server for real: nothing is stubbed.
//!
//! Each request here is a stateless 2026-07-28 `tools/call` (no session), written as raw
//! JSON-RPC over HTTP, so that every refusal is seen as the HTTP status it is.

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{AUDIT_LOG, STAND_IN, bounded};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A signing key of the test issuer, with its public JWK.
struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

/// A fresh Ed25519 key (EdDSA).
fn ed25519(kid: &'static str) -> SigningKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    SigningKey {
        kid,
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    }
}

/// A fresh P-256 key (ES256).
fn p256(kid: &'static str) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref(); // 0x04 || x || y
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    );
    SigningKey {
        kid,
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"}),
    }
}

/// The test authorization server: RFC 8414 metadata naming its JWKS, and the JWKS of `keys`.
async fn issuer(keys: &[&SigningKey]) -> MockServer {
    common::http::serving_keys(keys.iter().map(|key| key.jwk.clone()).collect()).await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` with `role`, issued by `iss` for `aud`, valid now.
fn claims(iss: &str, aud: &str, sub: &str, role: &str) -> Value {
    json!({"iss": iss, "aud": aud, "sub": sub, "stage0_role": role,
           "iat": now(), "nbf": now() - 5, "exp": now() + 600})
}

/// `claims` signed with `key` (its `kid` in the header).
fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// The server binary in HTTP mode on a free port of 127.0.0.1 (`tests/common/http.rs`), with
/// the bound on one call.
struct HttpServer {
    inner: common::http::HttpServer,
    /// The bound on one call ([`common::BOUND`] unless a test needs longer).
    bound: std::time::Duration,
}

impl std::ops::Deref for HttpServer {
    type Target = common::http::HttpServer;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for HttpServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl HttpServer {
    /// Starts the server with `env` and waits (bounded) for it to listen.
    async fn start(env: &[(&str, &str)]) -> HttpServer {
        HttpServer {
            inner: common::http::HttpServer::start(env).await,
            bound: common::BOUND,
        }
    }

    /// A stateless 2026-07-28 `tools/call` of `tool` with `arguments`, with `token` as bearer:
    /// the HTTP status, the `WWW-Authenticate` header and the JSON-RPC answer (if any).
    async fn call(&self, token: Option<&str>, tool: &str, arguments: Value) -> Answer {
        self.call_declaring(token, tool, arguments, json!({})).await
    }

    /// [`call`](HttpServer::call) from a client that declares `capabilities` in the request's
    /// `_meta`.
    async fn call_declaring(
        &self,
        token: Option<&str>,
        tool: &str,
        arguments: Value,
        capabilities: Value,
    ) -> Answer {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "http-oauth-test", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": capabilities
            }}
        });
        let mut request = reqwest::Client::new()
            .post(format!("{}/mcp", self.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", tool)
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = tokio::time::timeout(self.bound, request.send())
            .await
            .unwrap_or_else(|_| panic!("an HTTP call took longer than {:?}", self.bound))
            .unwrap();
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap().to_owned());
        let text = tokio::time::timeout(self.bound, response.text())
            .await
            .unwrap_or_else(|_| panic!("the HTTP answer took longer than {:?}", self.bound))
            .unwrap();
        // A JSON body, or an SSE stream whose `data:` lines carry the answer.
        let json = serde_json::from_str(&text).ok().or_else(|| {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .find(|message| message.get("id").is_some())
        });
        Answer {
            status,
            challenge,
            json,
        }
    }

    /// Every record of the server's audit log.
    fn records(&self) -> Vec<Value> {
        let log = std::fs::read_to_string(self.dir.path().join(AUDIT_LOG)).unwrap_or_default();
        log.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// What one HTTP call got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    json: Option<Value>,
}

impl Answer {
    /// The `structuredContent` of a tool result.
    fn report(&self) -> &Value {
        &self.json.as_ref().expect("a JSON-RPC answer")["result"]["structuredContent"]
    }
}

/// The server's environment for OAuth with `issuer` (and its public URL, the tokens' audience).
fn oauth_env<'a>(issuer: &'a str, public: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("STAGE0_OAUTH_ISSUER", issuer),
        ("STAGE0_PUBLIC_URL", public),
        ("STAGE0_APPROVALS", "off"),
    ]
}

const PUBLIC: &str = "https://stage0.example.test";
const AUDIENCE: &str = "https://stage0.example.test/mcp";

#[tokio::test]
async fn a_valid_token_acts_as_its_subject_with_its_role_as_the_ceiling() {
    let key = ed25519("k1");
    let issuer = issuer(&[&key]).await;
    let iss = issuer.uri();
    let server = HttpServer::start(&oauth_env(&iss, PUBLIC)).await;

    let alice = sign(&key, &claims(&iss, AUDIENCE, "alice", "developer"));
    let bob = sign(&key, &claims(&iss, AUDIENCE, "bob", "viewer"));
    let deploy = json!({"serviceName": "api", "environment": "staging", "changes": "v2",
                        "actorRole": "admin"});
    let as_alice = server
        .call(Some(&alice), "deploy-changes", deploy.clone())
        .await;
    let as_bob = server.call(Some(&bob), "deploy-changes", deploy).await;
    assert_eq!(as_alice.status, 200, "{as_alice:?}");
    let role = |answer: &Answer| answer.report()["provenance"]["actor_role"].clone();
    assert_eq!(role(&as_alice)["configured"], "developer");
    assert_eq!(role(&as_alice)["effective"], "developer");
    assert_eq!(role(&as_bob)["effective"], "viewer");
    assert_eq!(as_alice.report()["provenance"]["actor_id"], "alice");
    assert_eq!(as_bob.report()["provenance"]["actor_id"], "bob");

    // The retry ledger is kept per principal: alice's retries are not bob's.
    let retry = json!({"workflowId": "nightly", "retryCount": 0});
    for _ in 0..5 {
        server
            .call(Some(&alice), "retry-workflow", retry.clone())
            .await;
    }
    let alices_sixth = server
        .call(Some(&alice), "retry-workflow", retry.clone())
        .await;
    let bobs_first = server.call(Some(&bob), "retry-workflow", retry).await;
    assert_eq!(alices_sixth.report()["verdict"], "DEFER");
    assert_eq!(bobs_first.report()["verdict"], "ALLOW");
    assert_eq!(
        bobs_first.report()["provenance"]["retry_count"]["observed"],
        0
    );
}

#[tokio::test]
async fn every_bad_token_is_401_and_nothing_is_checked_or_run() {
    let (key, other) = (p256("k1"), p256("k1"));
    let issuer = issuer(&[&key]).await;
    let iss = issuer.uri();
    let server = HttpServer::start(&oauth_env(&iss, PUBLIC)).await;
    let good = claims(&iss, AUDIENCE, "alice", "admin");
    let with = |changes: &[(&str, Value)]| {
        let mut claims = good.clone();
        for (name, value) in changes {
            claims[*name] = value.clone();
        }
        claims
    };
    let header_and_payload = |alg: &str| {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "k1"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(good.to_string());
        format!("{header}.{payload}")
    };
    let hs256_with_the_public_key = {
        let public = key.jwk.to_string();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(public.as_bytes())).unwrap()
    };
    let with_header = |change: fn(&mut Header)| {
        let mut header = Header::new(key.alg);
        header.kid = Some("k1".to_owned());
        change(&mut header);
        jsonwebtoken::encode(&header, &good, &key.encoding).unwrap()
    };
    let unknown_kid = {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k-unknown".to_owned());
        jsonwebtoken::encode(&header, &good, &key.encoding).unwrap()
    };
    let refused: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not a JWT", Some("not-a-jwt".to_owned())),
        (
            "expired",
            Some(sign(&key, &with(&[("exp", json!(now() - 120))]))),
        ),
        (
            "not yet valid",
            Some(sign(&key, &with(&[("nbf", json!(now() + 120))]))),
        ),
        (
            "wrong issuer",
            Some(sign(&key, &with(&[("iss", json!("https://evil.test"))]))),
        ),
        (
            "wrong audience",
            Some(sign(
                &key,
                &with(&[("aud", json!("https://other.test/mcp"))]),
            )),
        ),
        ("bad signature", Some(sign(&other, &good))),
        ("alg none", Some(format!("{}.", header_and_payload("none")))),
        ("HS256 with the public key", Some(hs256_with_the_public_key)),
        ("unknown kid", Some(unknown_kid)),
        (
            "a logout token",
            Some(with_header(|h| h.typ = Some("logout+jwt".to_owned()))),
        ),
        (
            "an ID token's typ",
            Some(with_header(|h| h.typ = Some("id_token+jwt".to_owned()))),
        ),
        (
            "a crit header",
            Some(with_header(|h| h.crit = Some(vec!["exp".to_owned()]))),
        ),
    ];
    for (case, token) in &refused {
        let answer = server
            .call(token.as_deref(), "research-topic", json!({"topic": "x"}))
            .await;
        assert_eq!(answer.status, 401, "{case}: {answer:?}");
        let challenge = answer.challenge.unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer resource_metadata=\"https://stage0.example.test/.well-known/oauth-protected-resource/mcp\""),
            "{case}: {challenge}"
        );
        assert!(!format!("{:?}", answer.json).contains(STAND_IN), "{case}");
    }
    assert!(
        server.records().is_empty(),
        "nothing was checked: {:?}",
        server.records()
    );

    // The protected resource metadata names the issuer and the resource.
    let url = format!("{}/.well-known/oauth-protected-resource/mcp", server.base);
    let metadata = bounded("the metadata", async {
        reqwest::get(url).await?.text().await
    })
    .await
    .unwrap();
    let metadata: Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(metadata["resource"], AUDIENCE);
    assert_eq!(metadata["authorization_servers"], json!([iss]));
}

#[tokio::test]
async fn an_access_tokens_typ_is_accepted_in_any_spelling() {
    let key = ed25519("k1");
    let issuer = issuer(&[&key]).await;
    let iss = issuer.uri();
    let server = HttpServer::start(&oauth_env(&iss, PUBLIC)).await;
    for typ in [
        None,
        Some("at+jwt"),
        Some("application/AT+JWT"),
        Some("jwt"),
    ] {
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.to_owned());
        header.typ = typ.map(str::to_owned);
        let claims = claims(&iss, AUDIENCE, "alice", "viewer");
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
        let answer = server
            .call(Some(&token), "research-topic", json!({"topic": "x"}))
            .await;
        assert_eq!(answer.status, 200, "typ {typ:?}: {answer:?}");
    }
}

/// How many times `issuer` was asked for `path`.
async fn requests_for(issuer: &MockServer, path: &str) -> usize {
    let received = issuer.received_requests().await.unwrap_or_default();
    received.iter().filter(|r| r.url.path() == path).count()
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_not_used() {
    let key = ed25519("k1");
    let issuer = bounded("the test issuer to start", MockServer::start()).await;
    let iss = issuer.uri();
    // RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": "https://evil.test",
            "jwks_uri": format!("{iss}/jwks"),
        })))
        .mount(&issuer)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [key.jwk]})))
        .mount(&issuer)
        .await;
    let server = HttpServer::start(&oauth_env(&iss, PUBLIC)).await;
    let token = sign(&key, &claims(&iss, AUDIENCE, "alice", "admin"));
    let answer = server
        .call(Some(&token), "research-topic", json!({"topic": "x"}))
        .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(requests_for(&issuer, "/jwks").await, 0);
    assert!(server.records().is_empty());
}

#[tokio::test]
async fn while_the_issuers_keys_fail_many_requests_make_one_fetch() {
    let key = ed25519("k1");
    let issuer = bounded("the test issuer to start", MockServer::start()).await;
    let iss = issuer.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/jwks"),
        })))
        .mount(&issuer)
        .await;
    // A JWKS that is slow to fail, so the first requests arrive while its fetch is in flight.
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(500).set_delay(std::time::Duration::from_millis(500)))
        .mount(&issuer)
        .await;
    let server = std::sync::Arc::new(HttpServer::start(&oauth_env(&iss, PUBLIC)).await);
    let token = sign(&key, &claims(&iss, AUDIENCE, "alice", "admin"));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (server, token) = (std::sync::Arc::clone(&server), token.clone());
        calls.spawn(async move {
            server
                .call(Some(&token), "research-topic", json!({"topic": "x"}))
                .await
        });
    }
    let answers = bounded("the 8 calls", calls.join_all()).await;
    let later = server
        .call(Some(&token), "research-topic", json!({"topic": "x"}))
        .await;
    for answer in answers.iter().chain([&later]) {
        assert_eq!(answer.status, 503, "{answer:?}");
    }
    assert_eq!(
        requests_for(&issuer, "/jwks").await,
        1,
        "one fetch for 9 requests"
    );
    assert_eq!(
        requests_for(&issuer, "/.well-known/oauth-authorization-server").await,
        1
    );
}

#[tokio::test]
async fn without_the_issuers_keys_every_call_is_refused() {
    let key = ed25519("k1");
    let down = common::refused_base_url();
    let server = HttpServer::start(&oauth_env(&down, PUBLIC)).await;
    let token = sign(&key, &claims(&down, AUDIENCE, "alice", "admin"));
    let answer = server
        .call(Some(&token), "research-topic", json!({"topic": "x"}))
        .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(server.records().is_empty());
}

#[tokio::test]
async fn without_oauth_the_server_refuses_a_non_loopback_address() {
    let dir = TempDir::new().unwrap();
    let mut command = common::command(dir.path(), &[]);
    command.args(["http", "--listen", "0.0.0.0:0"]);
    let output = bounded("the server to refuse", command.output())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without authentication") && stderr.contains("STAGE0_OAUTH_ISSUER"),
        "{stderr}"
    );
}

#[tokio::test]
async fn on_loopback_without_oauth_every_caller_is_the_operator() {
    let server = HttpServer::start(&[
        ("STAGE0_ACTOR_ID", "ops"),
        ("STAGE0_ACTOR_ROLE", "developer"),
    ])
    .await;
    let answer = server
        .call(None, "research-topic", json!({"topic": "Rust"}))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.report()["verdict"], "ALLOW");
    assert_eq!(answer.report()["provenance"]["actor_id"], "ops");
    assert!(Path::new(&server.dir.path().join(AUDIT_LOG)).exists());
}

#[tokio::test]
async fn sixty_four_concurrent_clients_are_each_answered_exactly_once() {
    let key = ed25519("k1");
    let issuer = issuer(&[&key]).await;
    let iss = issuer.uri();
    let mut env = oauth_env(&iss, PUBLIC);
    env.push(("STAGE0_AUDIT_LOG", "off"));
    let server = std::sync::Arc::new(HttpServer::start(&env).await);
    let mut calls = tokio::task::JoinSet::new();
    for client in 0..64 {
        let server = std::sync::Arc::clone(&server);
        // Four principals, so the per-principal bound (16) is met but not exceeded.
        let token = sign(
            &key,
            &claims(&iss, AUDIENCE, &format!("agent-{}", client % 4), "viewer"),
        );
        calls.spawn(async move {
            let topic = format!("topic {client}");
            let answer = server
                .call(Some(&token), "research-topic", json!({"topic": topic}))
                .await;
            (client, topic, answer)
        });
    }
    let mut answered = 0;
    while let Some(joined) = bounded("the 64 calls", calls.join_next()).await {
        let (client, topic, answer) = joined.unwrap();
        match answer.status {
            200 => {
                assert_eq!(answer.report()["verdict"], "ALLOW", "client {client}");
                let output = answer.report()["output"].as_str().unwrap();
                assert!(
                    output.contains(&topic),
                    "client {client} got another's answer"
                );
            }
            429 => {} // refused at once, never queued: an answer too
            other => panic!("client {client}: status {other}: {answer:?}"),
        }
        answered += 1;
    }
    assert_eq!(answered, 64);
}

#[tokio::test]
async fn a_call_over_the_principals_bound_is_refused_at_once_with_429() {
    // A Stage0 that takes its time, so that the first call is still in flight.
    let slow = slow_stage0(3).await;
    let key = ed25519("k1");
    let issuer = issuer(&[&key]).await;
    let (iss, stage0) = (issuer.uri(), slow.uri());
    let mut env = oauth_env(&iss, PUBLIC);
    env.extend([
        ("STAGE0_API_KEY", common::SECRET_KEY),
        ("STAGE0_BASE_URL", stage0.as_str()),
        ("STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL", "1"),
    ]);
    let server = std::sync::Arc::new(HttpServer::start(&env).await);
    let token = sign(&key, &claims(&iss, AUDIENCE, "alice", "viewer"));
    let first = tokio::spawn({
        let (server, token) = (std::sync::Arc::clone(&server), token.clone());
        async move {
            server
                .call(Some(&token), "research-topic", json!({"topic": "a"}))
                .await
        }
    });
    // The first call is in flight once the fake Stage0 has its check.
    until_checked(&slow).await;
    let second = server
        .call(Some(&token), "research-topic", json!({"topic": "b"}))
        .await;
    assert_eq!(second.status, 429, "{second:?}");
    let other = sign(&key, &claims(&iss, AUDIENCE, "bob", "viewer"));
    let bobs = tokio::spawn({
        let server = std::sync::Arc::clone(&server);
        async move {
            server
                .call(Some(&other), "research-topic", json!({"topic": "c"}))
                .await
        }
    });
    assert_eq!(bounded("the first call", first).await.unwrap().status, 200);
    assert_eq!(
        bounded("bob's call", bobs).await.unwrap().status,
        200,
        "another principal is not held back"
    );
}

/// The bound on the HTTP server's peak resident memory while 64 clients each send a 3.9 MiB call
/// at once (docs/http.md, "Bounded work"), in MiB: the default 64 MiB of bodies in flight let
/// about sixteen in at a time, each taking some 25 MiB of the debug build's memory while its JSON
/// is read, checked and answered; without the bound on bytes, all 64 took 1.2 GiB.
const PEAK_RSS_BOUND_MIB: u64 = 640;

/// How long the 64 large calls may take together.
const LARGE_CALLS_BOUND: std::time::Duration = std::time::Duration::from_secs(300);

#[tokio::test]
async fn sixty_four_clients_sending_four_megabyte_calls_stay_under_the_memory_bound() {
    let mut server = HttpServer::start(&[
        ("STAGE0_AUDIT_LOG", "off"),
        ("STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL", "64"),
    ])
    .await;
    server.bound = LARGE_CALLS_BOUND;
    let server = std::sync::Arc::new(server);
    let topic = "x".repeat(3_900_000);
    let mut calls = tokio::task::JoinSet::new();
    for client in 0..64 {
        let (server, topic) = (std::sync::Arc::clone(&server), topic.clone());
        calls.spawn(async move {
            let answer = server
                .call(None, "research-topic", json!({"topic": topic}))
                .await;
            (client, answer.status)
        });
    }
    let mut statuses = Vec::new();
    // 250 MB of JSON in and out through a debug build: a longer bound than one call's.
    let all = async {
        while let Some(joined) = calls.join_next().await {
            statuses.push(joined.unwrap());
        }
    };
    let started = std::time::Instant::now();
    tokio::time::timeout(LARGE_CALLS_BOUND, all)
        .await
        .expect("the 64 large calls are answered within the bound");
    println!("64 large calls answered in {:?}", started.elapsed());
    assert_eq!(statuses.len(), 64, "every call is answered");
    for (client, status) in &statuses {
        assert!(
            matches!(status, 200 | 429),
            "client {client}: status {status}"
        );
    }
    let served = statuses.iter().filter(|(_, status)| *status == 200).count();
    assert!(served >= 1, "some large calls are served, not all refused");
    let pid = server.child.id().expect("the server is running");
    let peak_mib = common::memory::status_kib(pid, "VmHWM") / 1024;
    println!("peak RSS with 64 calls of 3.9 MiB sent at once ({served} served): {peak_mib} MiB");
    assert!(peak_mib < PEAK_RSS_BOUND_MIB, "peak RSS {peak_mib} MiB");
}

#[tokio::test]
async fn sigterm_lets_the_call_in_flight_finish_and_closes_the_audit_log() {
    // A Stage0 that takes its time, so that a call is in flight when the signal comes.
    let slow = slow_stage0(2).await;
    let stage0 = slow.uri();
    let server = std::sync::Arc::new(
        HttpServer::start(&[
            ("STAGE0_API_KEY", common::SECRET_KEY),
            ("STAGE0_BASE_URL", stage0.as_str()),
        ])
        .await,
    );
    let in_flight = tokio::spawn({
        let server = std::sync::Arc::clone(&server);
        async move {
            server
                .call(None, "research-topic", json!({"topic": "Rust"}))
                .await
        }
    });
    until_checked(&slow).await;
    let pid = server
        .child
        .id()
        .expect("the server is running")
        .to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(term.expect("kill runs").success());

    let answer = bounded("the call in flight", in_flight).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.report()["executed"], true);
    let mut server = std::sync::Arc::into_inner(server).expect("the only handle");
    let status = bounded("the server to exit", server.child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let kinds: Vec<Value> = server.records().iter().map(|r| r["kind"].clone()).collect();
    assert_eq!(kinds, [json!("decision"), json!("outcome")]);
}

/// Returns once `stage0` has received a check (within [`common::BOUND`]): the call that sent it
/// is then in flight.
async fn until_checked(stage0: &MockServer) {
    bounded("a check to reach Stage0", async {
        while stage0
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// A fake Stage0 that allows every call after `seconds`.
async fn slow_stage0(seconds: u64) -> MockServer {
    let slow = bounded("the fake Stage0 to start", MockServer::start()).await;
    Mock::given(method("POST"))
        .and(path("/check"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"verdict": "ALLOW", "decision": "GO", "reason": "ok"}))
                .set_delay(std::time::Duration::from_secs(seconds)),
        )
        .mount(&slow)
        .await;
    slow
}

#[tokio::test]
async fn a_request_past_its_deadline_is_answered_408_and_nothing_runs() {
    let slow = slow_stage0(5).await;
    let stage0 = slow.uri();
    let server = HttpServer::start(&[
        ("STAGE0_API_KEY", common::SECRET_KEY),
        ("STAGE0_BASE_URL", stage0.as_str()),
        ("STAGE0_TIMEOUT_MS", "10000"),
        ("STAGE0_HTTP_REQUEST_TIMEOUT_S", "1"),
    ])
    .await;
    let answer = server
        .call(None, "research-topic", json!({"topic": "Rust"}))
        .await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(!format!("{:?}", answer.json).contains(STAND_IN));
    let executed = server.records().iter().any(|r| r["executed"] == true);
    assert!(!executed, "{:?}", server.records());
}

#[tokio::test]
async fn with_oauth_a_defer_is_final_unless_approvals_are_turned_on() {
    let key = ed25519("k1");
    let issuer = issuer(&[&key]).await;
    let iss = issuer.uri();
    let alice = sign(&key, &claims(&iss, AUDIENCE, "alice", "developer"));
    let sixth = json!({"workflowId": "nightly", "retryCount": 5});
    let form = json!({"elicitation": {"form": {}}});
    let oauth = [
        ("STAGE0_OAUTH_ISSUER", iss.as_str()),
        ("STAGE0_PUBLIC_URL", PUBLIC),
    ];

    // By default the client that would answer is the caller itself: nobody is asked.
    let server = HttpServer::start(&oauth).await;
    let answer = server
        .call_declaring(Some(&alice), "retry-workflow", sixth.clone(), form.clone())
        .await;
    let result = &answer.json.as_ref().expect("a JSON-RPC answer")["result"];
    assert!(result.get("requestState").is_none(), "{answer:?}");
    assert_eq!(answer.report()["verdict"], "DEFER", "{answer:?}");
    assert_eq!(answer.report()["executed"], false);
    assert_eq!(answer.report()["approval"]["outcome"], "disabled");

    // Turned on in the environment, the DEFER is put to the client as before.
    let server = HttpServer::start(&[oauth[0], oauth[1], ("STAGE0_APPROVALS", "on")]).await;
    let answer = server
        .call_declaring(Some(&alice), "retry-workflow", sixth, form)
        .await;
    let result = &answer.json.as_ref().expect("a JSON-RPC answer")["result"];
    assert_eq!(result["resultType"], "input_required", "{answer:?}");
    assert!(result["requestState"].is_string(), "{answer:?}");
}
