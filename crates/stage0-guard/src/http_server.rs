//! MCP over streamable HTTP at `/mcp`, every call authorized as the bearer token's principal.
//!
//! rmcp's streamable HTTP service serves the [`GuardedServer`]: sessions and SSE for clients at
//! 2025-11-25, stateless requests at 2026-07-28. In front of it, for every request to `/mcp`:
//!
//! 1. **Who is calling.** With OAuth (`STAGE0_OAUTH_ISSUER`), the bearer token is checked
//!    ([`TokenValidator`]); a missing or invalid one is `401` with
//!    `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728), keys that cannot be fetched
//!    `503`, and nothing is checked or run. The principal the token vouches for goes into the
//!    request's extensions, where the guard finds it (its `sub` is the actor id, its role claim
//!    the role ceiling). Without OAuth the server listens on loopback only, and every caller is
//!    the operator of the environment, as over stdio; with [`HttpConfig::token_file`], only a
//!    caller that sends the secret in that file as its bearer token.
//! 2. **Bounded work** (`admission.rs`). At most [`HttpConfig::max_calls_in_flight`]
//!    requests at once, [`HttpConfig::max_calls_per_principal`] per principal, and
//!    [`HttpConfig::max_bytes_in_flight`] bytes of request bodies (by `Content-Length`; a body
//!    without one counts as the largest); one more is refused at once with `429` and
//!    `Retry-After: 1`, never queued. A `tools/call` holds its place until the call has ended, at
//!    both revisions, and ends at [`HttpConfig::request_timeout`] (approval wait included), when
//!    its client drops the response stream, or when its session is deleted. A body is at most
//!    [`MAX_BODY_BYTES`] and must arrive within [`HttpConfig::body_timeout`]; connections are
//!    bounded too, and each must send its headers within [`HttpConfig::read_timeout`]
//!    (`listener.rs`).
//! 3. **Sessions** (`sessions.rs`). A 2025-11-25 session belongs to the principal that opened
//!    it: anyone else naming it gets `404`. Sessions are bounded in total and per principal
//!    (`429` over the bound), and end after [`HttpConfig::session_idle_timeout`] without traffic.
//! 4. **One reading of the body.** A body that repeats a key is read by the same rule as over
//!    stdio ([`json::first_duplicate_key`]): a `tools/call` whose arguments repeat one is an
//!    invalid argument, any other request is `400` with JSON-RPC `-32600`, and a response (an
//!    answer to an elicitation) becomes an error for its id, so what waited for it fails closed.
//! 5. **DNS rebinding.** The `Host` must be a loopback name or the host of `STAGE0_PUBLIC_URL`;
//!    a browser's `Origin`, when sent, must be that URL's origin (or a loopback one).
//!
//! The protected resource metadata (RFC 9728) is served at
//! `/.well-known/oauth-protected-resource/mcp` and at the root form. Stopping (SIGTERM in the
//! binary) refuses new requests (`503`), lets the calls in flight finish (by their deadline at
//! the latest), then ends rmcp's sessions and streams and closes the audit log.

mod listener;
mod sessions;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderValue, Method, StatusCode, header};
use reqwest::Url;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::admission::{Admissions, CallBounds, Place, Refusal};
use crate::claims::Operator;
use crate::escape::escaped;
use crate::json::{self, DuplicateKey};
use crate::oauth::{OAuthConfig, TokenError, TokenValidator};
use crate::server::GuardedServer;
use sessions::{Access, Sessions};

pub use listener::MAX_HEADER_BYTES;

/// The largest request body taken, in bytes (4 MiB, as over stdio).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

/// The header naming a 2025-11-25 session.
const SESSION_HEADER: &str = "mcp-session-id";

/// How the HTTP mode listens and whom it serves (`STAGE0_HTTP_*`, `STAGE0_PUBLIC_URL`,
/// `STAGE0_OAUTH_*`; [`Config::http`](crate::config::Config::http)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `STAGE0_HTTP_LISTEN` (or `--listen`): the address to listen on.
    pub listen: SocketAddr,
    /// `STAGE0_PUBLIC_URL`: the URL clients reach this server at (its `/mcp` is the resource the
    /// tokens must name); `None` for a loopback server without OAuth.
    pub public_url: Option<Url>,
    /// The OAuth 2.1 resource server's settings; `None` for no authentication (loopback only).
    pub oauth: Option<OAuthConfig>,
    /// `STAGE0_HTTP_TOKEN_FILE`: without OAuth, a file holding the bearer secret every caller
    /// must send (the operator's local clients); the file must be readable by its owner only.
    pub token_file: Option<PathBuf>,
    /// `STAGE0_HTTP_MAX_CALLS_IN_FLIGHT`: requests (and tool calls) at once, in total.
    pub max_calls_in_flight: usize,
    /// `STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL`: requests (and tool calls) at once per principal.
    pub max_calls_per_principal: usize,
    /// `STAGE0_HTTP_MAX_BYTES_IN_FLIGHT`: bytes of request bodies at once, in total.
    pub max_bytes_in_flight: usize,
    /// `STAGE0_HTTP_REQUEST_TIMEOUT_S`: the deadline of one request and of one tool call, its
    /// approval wait included: past it a request is answered `408` and a call is ended (a body
    /// that has started runs to its end).
    pub request_timeout: Duration,
    /// `STAGE0_HTTP_READ_TIMEOUT_S`: how long a client may take to send a request's headers, and
    /// how long a connection may stay idle between requests.
    pub read_timeout: Duration,
    /// `STAGE0_HTTP_BODY_TIMEOUT_S`: how long a client may take to send a request's body once its
    /// headers are in; past it the answer is `408` and the body's bytes are given back.
    pub body_timeout: Duration,
    /// `STAGE0_HTTP_MAX_CONNECTIONS`: connections served at once.
    pub max_connections: usize,
    /// `STAGE0_HTTP_MAX_SESSIONS`: open 2025-11-25 sessions, in total.
    pub max_sessions: usize,
    /// `STAGE0_HTTP_MAX_SESSIONS_PER_PRINCIPAL`: open 2025-11-25 sessions per principal.
    pub max_sessions_per_principal: usize,
    /// How long a 2025-11-25 session lives without traffic: 2 minutes, or the approval timeout
    /// and 30 s when that is longer, so a human's answer still finds its session.
    pub session_idle_timeout: Duration,
}

/// Why [`GuardedServer::serve_http`] could not serve.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No OAuth issuer, and an address other than loopback: anyone who can reach it would act as
    /// the operator.
    #[error(
        "refusing to listen on {0} without authentication: set STAGE0_OAUTH_ISSUER (and \
         STAGE0_PUBLIC_URL), or listen on a loopback address such as 127.0.0.1"
    )]
    UnauthenticatedNonLoopback(SocketAddr),
    /// OAuth is configured without `STAGE0_PUBLIC_URL`, the audience tokens must name.
    #[error("STAGE0_OAUTH_ISSUER needs STAGE0_PUBLIC_URL: the resource every token must be for")]
    NoPublicUrl,
    /// `STAGE0_HTTP_TOKEN_FILE` beside `STAGE0_OAUTH_ISSUER`: a caller is either the principal of
    /// an OAuth token or the operator, never both.
    #[error("STAGE0_HTTP_TOKEN_FILE is for use without STAGE0_OAUTH_ISSUER: set one of them")]
    TokenFileWithOAuth,
    /// `STAGE0_HTTP_TOKEN_FILE` cannot be read, is empty, or others may read or write it.
    #[error("STAGE0_HTTP_TOKEN_FILE {0}: {1}")]
    TokenFile(PathBuf, String),
    /// The HTTP client for the issuer's keys could not be built.
    #[error("the HTTP client for the authorization server cannot be built: {0}")]
    Client(#[from] reqwest::Error),
    /// The address could not be bound, or serving failed.
    #[error("cannot serve HTTP on {0}: {1}")]
    Io(SocketAddr, std::io::Error),
}

/// What every `/mcp` request passes through: who is calling, the bounds, the sessions' owners.
#[derive(Debug)]
struct Gate {
    validator: Option<TokenValidator>,
    /// The SHA-256 of `STAGE0_HTTP_TOKEN_FILE`'s secret, when there is one.
    local_token: Option<[u8; 32]>,
    /// `WWW-Authenticate` of a `401`.
    challenge: Option<HeaderValue>,
    admissions: Arc<Admissions>,
    sessions: Sessions,
    request_timeout: Duration,
    body_timeout: Duration,
}

impl GuardedServer {
    /// Serves MCP over streamable HTTP at `/mcp` as `config` says, until `stop` completes; then
    /// stops accepting, lets the calls in flight finish and closes the audit log.
    ///
    /// # Errors
    ///
    /// [`HttpError`] when the configuration is refused (no authentication off loopback, OAuth
    /// without a public URL, an unusable token file), or the address cannot be bound.
    pub async fn serve_http(
        self,
        config: HttpConfig,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        if config.oauth.is_none() && !config.listen.ip().is_loopback() {
            return Err(HttpError::UnauthenticatedNonLoopback(config.listen));
        }
        let resource_metadata = match (&config.oauth, &config.public_url) {
            (Some(_), None) => return Err(HttpError::NoPublicUrl),
            (Some(_), Some(public)) => Some(metadata_url(public)),
            (None, _) => None,
        };
        let local_token = match (&config.token_file, &config.oauth) {
            (Some(_), Some(_)) => return Err(HttpError::TokenFileWithOAuth),
            (Some(path), None) => Some(read_token_file(path)?),
            (None, _) => None,
        };
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(config.session_idle_timeout);
        let manager = Arc::new(sessions);
        let gate = Arc::new(Gate {
            validator: config.oauth.clone().map(TokenValidator::new).transpose()?,
            local_token,
            challenge: resource_metadata.as_ref().and_then(|url| {
                HeaderValue::from_str(&format!("Bearer resource_metadata=\"{url}\"")).ok()
            }),
            admissions: Arc::new(Admissions::new(
                config.max_calls_in_flight,
                config.max_calls_per_principal,
                config.max_bytes_in_flight,
            )),
            sessions: Sessions::new(
                Arc::clone(&manager),
                config.max_sessions,
                config.max_sessions_per_principal,
            ),
            request_timeout: config.request_timeout,
            body_timeout: config.body_timeout,
        });

        let shutdown = CancellationToken::new();
        let guard = Arc::clone(self.guard());
        let server = self.clone();
        let service = StreamableHttpService::new(
            move || Ok(server.clone()),
            manager,
            rmcp_config(&config, shutdown.child_token()),
        );
        let mut router = Router::new()
            .nest_service(MCP_PATH, service)
            .layer(middleware::from_fn_with_state(Arc::clone(&gate), authorize))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                config.request_timeout,
            ));
        if let (Some(oauth), Some(public)) = (&config.oauth, &config.public_url) {
            let document = json!({
                "resource": resource_url(public),
                "authorization_servers": [oauth.issuer],
                "bearer_methods_supported": ["header"],
            });
            let metadata = get(move || {
                let document = document.clone();
                async move { Json(document) }
            });
            router = router
                .route("/.well-known/oauth-protected-resource", metadata.clone())
                .route("/.well-known/oauth-protected-resource/mcp", metadata);
        }

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| HttpError::Io(config.listen, error))?;
        let bound = listener
            .local_addr()
            .map_err(|error| HttpError::Io(config.listen, error))?;
        tracing::info!(
            listen = %bound,
            oauth = config.oauth.is_some(),
            token_file = config.token_file.is_some(),
            "serving MCP over streamable HTTP at {MCP_PATH}"
        );
        let admissions = Arc::clone(&gate.admissions);
        let drain_bound = config.request_timeout + config.read_timeout;
        let stopping = async move {
            stop.await;
            tracing::info!("stopping: new calls are refused; calls in flight finish");
            if tokio::time::timeout(drain_bound, admissions.drain())
                .await
                .is_err()
            {
                tracing::warn!("stopping with calls still in flight after {drain_bound:?}");
            }
            // Only now are rmcp's sessions and streams ended.
            shutdown.cancel();
        };
        listener::serve(
            listener,
            router,
            config.max_connections,
            config.read_timeout,
            stopping,
        )
        .await;
        if let Some(log) = guard.audit() {
            log.close();
        }
        Ok(())
    }
}

/// rmcp's settings: the body cap, the hosts and origins taken (DNS rebinding), the stop token.
fn rmcp_config(config: &HttpConfig, stop: CancellationToken) -> StreamableHttpServerConfig {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut origins = vec![
        "http://localhost:*".to_owned(),
        "http://127.0.0.1:*".to_owned(),
    ];
    if let Some(public) = &config.public_url {
        if let Some(host) = public.host_str() {
            hosts.push(host.to_owned());
        }
        origins.push(public.origin().ascii_serialization());
    }
    StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_cancellation_token(stop)
}

/// `STAGE0_PUBLIC_URL` with `/mcp`: the resource tokens are for.
pub fn resource_url(public: &Url) -> String {
    format!("{}{MCP_PATH}", public.as_str().trim_end_matches('/'))
}

/// Where the protected resource metadata of `/mcp` is (RFC 9728, the path-suffixed form).
fn metadata_url(public: &Url) -> String {
    let base = public.as_str().trim_end_matches('/');
    format!("{base}/.well-known/oauth-protected-resource{MCP_PATH}")
}

/// The SHA-256 of the secret in `path` (its content without surrounding white space), refused
/// when others may read or write the file.
fn read_token_file(path: &std::path::Path) -> Result<[u8; 32], HttpError> {
    let refuse = |why: String| HttpError::TokenFile(path.to_owned(), why);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|error| refuse(error.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "its mode is {:04o}: make it readable by its owner only (chmod 600)",
                mode & 0o7777
            )));
        }
    }
    let secret = std::fs::read_to_string(path).map_err(|error| refuse(error.to_string()))?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(refuse("it holds no secret".to_owned()));
    }
    Ok(Sha256::digest(secret.as_bytes()).into())
}

/// The middleware of `/mcp`: who is calling, the bounds, the sessions' owners and one reading of
/// the body; the principal goes into the request's extensions for the guard, and a `tools/call`
/// takes its [`CallBounds`] along.
async fn authorize(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let operator = match gate.caller(request.headers()).await {
        Ok(operator) => operator,
        Err(refused) => return refused,
    };
    let principal = operator
        .as_ref()
        .and_then(|operator| operator.actor_id.clone())
        .unwrap_or_default();
    // A body counts by its `Content-Length`, as the largest without one; GET and DELETE send none.
    let bytes = match *request.method() {
        Method::POST => request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
            .map_or(MAX_BODY_BYTES, |length| length.min(MAX_BODY_BYTES)),
        _ => 0,
    };
    let mut place = match gate.admissions.admit(bytes) {
        Ok(place) => place,
        Err(refusal) => {
            // The body is read and dropped (within its deadline), never kept: answered before
            // it is read, a client still sending could lose the answer to the closed connection.
            let body = request.into_body();
            let _ = tokio::time::timeout(gate.body_timeout, discard(body)).await;
            return refused(refusal, &principal);
        }
    };
    let (mut parts, body) = request.into_parts();
    if let Some(operator) = operator {
        parts.extensions.insert::<Operator>(operator);
    }
    let session = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|id| id.to_str().ok())
        .map(str::to_owned);
    let session_end = match session
        .as_deref()
        .map(|id| gate.sessions.access(id, &principal))
    {
        Some(Access::Foreign) => {
            tracing::warn!(principal = %escaped(&principal), "HTTP request refused: another principal's session");
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
        Some(Access::Owner(end)) => Some(end),
        Some(Access::Unknown) | None => None,
    };
    if parts.method == Method::DELETE {
        let response = next.run(Request::from_parts(parts, body)).await;
        if let Some(id) = session.filter(|_| response.status().is_success()) {
            gate.sessions.end(&id);
        }
        return response;
    }
    if parts.method != Method::POST {
        if let Err(refusal) = place.request_of(&principal) {
            return refused(refusal, &principal);
        }
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = match read_body(body, gate.body_timeout).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let message = Envelope::of(&body);
    if message.is_request()
        && let Err(refusal) = place.request_of(&principal)
    {
        return refused(refusal, &principal);
    }
    let body = match repeated_key(&body, &message) {
        Reading::Single => body,
        Reading::Arguments(duplicate) => {
            parts.extensions.insert(duplicate);
            body
        }
        Reading::Refused(response) => return response,
        Reading::Replaced(replaced) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            replaced
        }
    };
    let opening = if message.is("initialize") && session.is_none() {
        match gate.sessions.open(&principal).await {
            Some(opening) => Some(opening),
            None => {
                tracing::warn!(principal = %escaped(&principal), "HTTP session refused: too many open");
                return too_many("too many sessions open: close one, or retry later");
            }
        }
    } else {
        None
    };
    if message.is("tools/call") {
        let end = session_end.map_or_else(CancellationToken::new, |end| end.child_token());
        let deadline = Instant::now() + gate.request_timeout;
        let place = Arc::new(place);
        let bounds = CallBounds::new(Arc::clone(&place), deadline, end.clone());
        parts.extensions.insert(bounds);
        let response = next.run(Request::from_parts(parts, Body::from(body))).await;
        // A client that drops the response stream has gone away: its call ends. The stream holds
        // the place too, so a stopping server waits until the answer is written.
        return response.map(|body| {
            Body::new(EndsWhenDropped {
                body,
                _end: end.drop_guard(),
                _place: place,
            })
        });
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if let Some(opening) = opening
        && let Some(id) = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|id| id.to_str().ok())
    {
        opening.opened(id);
    }
    drop(place);
    response
}

impl Gate {
    /// Who is calling: the principal of a valid OAuth token, or `None` for the operator (with
    /// the local secret when there is one); otherwise the refusal to answer.
    async fn caller(&self, headers: &http::HeaderMap) -> Result<Option<Operator>, Response> {
        if let Some(validator) = &self.validator {
            let Some(token) = bearer(headers) else {
                return Err(self.refuse(&TokenError::Missing));
            };
            return match validator.validate(token).await {
                Ok(operator) => Ok(Some(operator)),
                Err(error) => Err(self.refuse(&error)),
            };
        }
        if let Some(expected) = &self.local_token {
            let sent = bearer(headers).map(|token| <[u8; 32]>::from(Sha256::digest(token)));
            if sent.as_ref() != Some(expected) {
                tracing::warn!(
                    "HTTP request refused: not the bearer secret of STAGE0_HTTP_TOKEN_FILE"
                );
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "the bearer secret of STAGE0_HTTP_TOKEN_FILE is missing or wrong",
                )
                    .into_response());
            }
        }
        Ok(None)
    }

    /// The `401` (or `503`) of a refused token, with the challenge that names the metadata.
    fn refuse(&self, error: &TokenError) -> Response {
        tracing::warn!(why = %escaped(error), "HTTP request refused: bearer token");
        let mut response = (error.status(), error.to_string()).into_response();
        if let Some(challenge) = &self.challenge {
            let value = match error {
                TokenError::Missing | TokenError::KeysUnavailable(_) => challenge.clone(),
                _ => HeaderValue::from_str(&format!(
                    "{}, error=\"invalid_token\"",
                    challenge.to_str().unwrap_or_default()
                ))
                .unwrap_or_else(|_| challenge.clone()),
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Reads `body` whole, at most [`MAX_BODY_BYTES`] within `deadline`; otherwise the answer that
/// says why not (`413`, `408`).
async fn read_body(body: Body, deadline: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {MAX_BODY_BYTES} bytes, or was cut off"),
        )
            .into_response()),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ),
        )
            .into_response()),
    }
}

/// Reads `body` to its end, keeping nothing.
async fn discard(mut body: Body) {
    use http_body::Body as _;
    while let Some(Ok(_)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {}
}

/// The answer to a request the bounds refused.
fn refused(refusal: Refusal, principal: &str) -> Response {
    match refusal {
        Refusal::Stopping => {
            (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping").into_response()
        }
        Refusal::Busy => {
            tracing::warn!(principal = %escaped(principal), "HTTP request refused: too many in flight");
            too_many("too many calls in flight: retry later")
        }
    }
}

/// `429` with `Retry-After: 1`.
fn too_many(why: &'static str) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, why).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// What the middleware reads of a JSON-RPC message: its id and method (`None` for a body that
/// is not one message, which rmcp refuses).
#[derive(Debug, Default, Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
}

impl Envelope {
    fn of(body: &[u8]) -> Envelope {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// A request (it has an id) of `method`.
    fn is(&self, method: &str) -> bool {
        self.is_request() && self.method.as_deref() == Some(method)
    }

    /// A request: a method and an id. A body that is no JSON-RPC message counts as one too,
    /// since it is answered.
    fn is_request(&self) -> bool {
        self.method.is_some() == self.id.is_some()
    }
}

/// What a body that may repeat a key becomes.
enum Reading {
    /// No key is repeated (or the body is no JSON, for rmcp to refuse).
    Single,
    /// A `tools/call` whose arguments repeat this key: an invalid argument for the guard.
    Arguments(DuplicateKey),
    /// Any other message that repeats a key: refused with this answer.
    Refused(Response),
    /// A response that repeats a key, replaced by an error response for its id.
    Replaced(Bytes),
}

/// Reads `body` (whose id and method are `message`) by stdio's rule for repeated keys
/// (`transport.rs`).
fn repeated_key(body: &[u8], message: &Envelope) -> Reading {
    let Ok(Some(duplicate)) = json::first_duplicate_key(body) else {
        return Reading::Single;
    };
    if message.is("tools/call")
        && let Some(within) = duplicate.within_arguments()
    {
        return Reading::Arguments(within);
    }
    let why =
        format!("the message repeats the key {duplicate}: a key may appear only once in an object");
    match (&message.id, &message.method) {
        (Some(id), None) => {
            let error = json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": { "code": -32600, "message": format!("the client's response repeats the key {duplicate}") },
            });
            Reading::Replaced(Bytes::from(error.to_string()))
        }
        (Some(id), Some(_)) => {
            let error = json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": { "code": -32600, "message": why },
            });
            Reading::Refused((StatusCode::BAD_REQUEST, Json(error)).into_response())
        }
        (None, _) => Reading::Refused((StatusCode::BAD_REQUEST, why).into_response()),
    }
}

/// A response body that ends its call when dropped: written to its end, or left by a client that
/// went away.
struct EndsWhenDropped {
    body: Body,
    _end: DropGuard,
    _place: Arc<Place>,
}

impl http_body::Body for EndsWhenDropped {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(body: &str) -> Reading {
        repeated_key(body.as_bytes(), &Envelope::of(body.as_bytes()))
    }

    #[test]
    fn a_body_that_repeats_a_key_is_read_as_over_stdio() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"research-topic","arguments":{"topic":"a","topic":"b"}}}"#;
        let Reading::Arguments(duplicate) = reading(call) else {
            panic!("a repeated argument is an invalid argument for the guard");
        };
        assert_eq!(duplicate.key, "topic");
        assert_eq!(duplicate.pointer, "/topic");
        let name = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b","arguments":{}}}"#;
        assert!(
            matches!(reading(name), Reading::Refused(r) if r.status() == StatusCode::BAD_REQUEST)
        );
        let answer =
            r#"{"jsonrpc":"2.0","id":"e1","result":{"action":"accept","action":"decline"}}"#;
        let Reading::Replaced(replaced) = reading(answer) else {
            panic!("a response that repeats a key becomes an error for its id");
        };
        let replaced: Value = serde_json::from_slice(&replaced).unwrap();
        assert_eq!(replaced["id"], "e1");
        assert_eq!(replaced["error"]["code"], -32600);
        let single = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1}}}"#;
        assert!(matches!(reading(single), Reading::Single));
    }
}
