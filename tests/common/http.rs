//! The HTTP mode from outside: the server binary listening on 127.0.0.1, a test OAuth issuer
//! with a key generated here (tokens signed with it are checked by the server for real), and a
//! client that speaks raw JSON-RPC over HTTP at either revision: stateless 2026-07-28 requests,
//! or a 2025-11-25 session whose SSE streams are read event by event.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::Notify;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{bounded, command};

/// The public URL the OAuth servers here are configured with (the tokens' audience is its `/mcp`).
pub const PUBLIC: &str = "https://stage0.example.test";

/// A test authorization server on 127.0.0.1: RFC 8414 metadata naming its JWKS, and the JWKS
/// of one Ed25519 key generated for it.
pub struct Issuer {
    pub server: MockServer,
    encoding: EncodingKey,
}

impl Issuer {
    pub async fn start() -> Issuer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"});
        let server = serving_keys(vec![jwk]).await;
        Issuer {
            server,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        }
    }

    /// A valid token of `sub` with `role`, for [`PUBLIC`]'s `/mcp`.
    pub fn token(&self, sub: &str, role: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({"iss": self.server.uri(), "aud": format!("{PUBLIC}/mcp"),
            "sub": sub, "stage0_role": role, "iat": now, "nbf": now - 5, "exp": now + 600});
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    /// The server's environment for OAuth with this issuer.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STAGE0_OAUTH_ISSUER", self.server.uri()),
            ("STAGE0_PUBLIC_URL", PUBLIC.to_owned()),
        ]
    }
}

/// A test authorization server on 127.0.0.1 publishing `jwks`: RFC 8414 metadata naming its
/// issuer (its own URL) and its key set at `/jwks`.
pub async fn serving_keys(jwks: Vec<Value>) -> MockServer {
    let server = bounded("the test issuer to start", MockServer::start()).await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": server.uri(),
            "jwks_uri": format!("{}/jwks", server.uri()),
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "keys": jwks })))
        .mount(&server)
        .await;
    server
}

/// What the server has written to stderr so far, and a wake-up for each new line.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    added: Notify,
}

/// The server binary in HTTP mode on a free port of 127.0.0.1.
pub struct HttpServer {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub dir: TempDir,
    log: Arc<Log>,
}

impl HttpServer {
    /// Starts the server with `env` and waits (bounded) for the line that says where it listens.
    pub async fn start(env: &[(&str, &str)]) -> HttpServer {
        let dir = TempDir::new().unwrap();
        let mut child = command(dir.path(), env)
            .args(["http", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listen = bounded("the server to listen", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("listen=") {
                    let rest = &line[at + "listen=".len()..];
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("the server exited before listening");
        })
        .await;
        let log = Arc::new(Log::default());
        let kept = Arc::clone(&log);
        // Keep reading stderr, so the server never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lines.lock().unwrap().push(line);
                kept.added.notify_waiters();
            }
        });
        HttpServer {
            child,
            base: format!("http://{listen}"),
            dir,
            log,
        }
    }

    /// The `host:port` the server listens on.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Waits (bounded) until `count` lines of stderr contain `text`.
    pub async fn until_logged(&self, text: &str, count: usize) {
        bounded(&format!("{count} log lines with `{text}`"), async {
            loop {
                let added = self.log.added.notified();
                let seen = {
                    let lines = self.log.lines.lock().unwrap();
                    lines.iter().filter(|line| line.contains(text)).count()
                };
                if seen >= count {
                    return;
                }
                added.await;
            }
        })
        .await;
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// A POST of `message` to `/mcp` with `token` as bearer, in `session` when given
    /// (2025-11-25), or as a stateless 2026-07-28 request (its `_meta` added).
    pub async fn post(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        message: &Value,
    ) -> reqwest::Response {
        let mut message = message.clone();
        if session.is_none() && message.get("method").is_some() {
            message["params"]["_meta"] = stateless_meta();
        }
        self.post_raw(token, session, &message.to_string()).await
    }

    /// A POST of the text `body` to `/mcp`, as [`post`](HttpServer::post) but sent as it is.
    pub async fn post_raw(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}/mcp", self.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned());
        request = match session {
            Some(id) => request
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", "2025-11-25"),
            None => {
                // The standard headers a stateless request carries (SEP-2243), from its body.
                let message: Value = serde_json::from_str(body).unwrap_or_default();
                request = request.header("mcp-protocol-version", "2026-07-28");
                if let Some(method) = message["method"].as_str() {
                    request = request.header("mcp-method", method);
                }
                match message["params"]["name"].as_str() {
                    Some(name) => request.header("mcp-name", name),
                    None => request,
                }
            }
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        bounded("an HTTP request", request.send()).await.unwrap()
    }

    /// A DELETE of `session` with `token` as bearer: its HTTP status.
    pub async fn delete(&self, token: Option<&str>, session: &str) -> u16 {
        let mut request = reqwest::Client::new()
            .delete(format!("{}/mcp", self.base))
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = bounded("an HTTP DELETE", request.send()).await.unwrap();
        response.status().as_u16()
    }

    /// Opens a 2025-11-25 session as `token`'s principal, declaring form elicitation: its id, or
    /// the HTTP status that refused it.
    pub async fn open_session(&self, token: Option<&str>) -> Result<String, u16> {
        let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {"form": {}}},
            "clientInfo": {"name": "http-test", "version": "1"}}});
        let mut request = reqwest::Client::new()
            .post(format!("{}/mcp", self.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(initialize.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = bounded("initialize", request.send()).await.unwrap();
        if !response.status().is_success() {
            return Err(response.status().as_u16());
        }
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut stream = Events::of(response);
        stream.next_with_id().await;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let answer = self.post(token, Some(&id), &initialized).await;
        assert_eq!(
            answer.status(),
            202,
            "notifications/initialized is accepted"
        );
        Ok(id)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A `tools/call` request of `tool` with `arguments`, with JSON-RPC id `id`.
pub fn tool_call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

/// The `_meta` a stateless 2026-07-28 request carries instead of a session.
pub fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "http-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// The JSON-RPC messages of an SSE response (or the one message of a JSON response), read as
/// they arrive.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    pub fn of(response: reqwest::Response) -> Events {
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next message that has an `id` (a request to the client, or the response), or `None`
    /// when the stream ends first; bounded.
    pub async fn next_with_id(&mut self) -> Option<Value> {
        bounded("an SSE message", async {
            loop {
                while let Some(end) = self.buffer.find('\n') {
                    let line: String = self.buffer.drain(..=end).collect();
                    if let Some(data) = line.trim_end().strip_prefix("data:")
                        && let Ok(message) = serde_json::from_str::<Value>(data.trim())
                        && message.get("id").is_some()
                    {
                        return Some(message);
                    }
                }
                match self.response.chunk().await {
                    Ok(Some(chunk)) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    Ok(None) | Err(_) => {
                        // A JSON body has no `data:` lines: the whole buffer is the message.
                        let rest = std::mem::take(&mut self.buffer);
                        return serde_json::from_str(rest.trim()).ok();
                    }
                }
            }
        })
        .await
    }
}
