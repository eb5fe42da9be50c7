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
//!    the operator of the environment, as over stdio.
//! 2. **Bounded work.** At most [`HttpConfig::max_calls_in_flight`] requests at once,
//!    [`HttpConfig::max_calls_per_principal`] per principal, and [`HttpConfig::max_bytes_in_flight`]
//!    bytes of request bodies (by `Content-Length`; a body without one counts as the largest, so
//!    memory follows the bytes, not just the count); one more is refused at once with `429` and
//!    `Retry-After: 1`, never queued. A body is at most [`MAX_BODY_BYTES`], and a request that
//!    takes longer than [`HttpConfig::request_timeout`] is answered `408`.
//! 3. **DNS rebinding.** The `Host` must be a loopback name or the host of `STAGE0_PUBLIC_URL`;
//!    a browser's `Origin`, when sent, must be that URL's origin (or a loopback one).
//!
//! The protected resource metadata (RFC 9728) is served at
//! `/.well-known/oauth-protected-resource/mcp` and at the root form. Stopping (SIGTERM in the
//! binary) refuses new requests (`503`), lets those in flight finish (within the request
//! deadline), then ends rmcp's sessions and streams and closes the audit log.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use http::{HeaderValue, StatusCode, header};
use reqwest::Url;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::claims::Operator;
use crate::escape::escaped;
use crate::oauth::{OAuthConfig, TokenError, TokenValidator};
use crate::server::GuardedServer;

/// The largest request body taken, in bytes (4 MiB, as over stdio).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

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
    /// `STAGE0_HTTP_MAX_CALLS_IN_FLIGHT`: requests at once, in total.
    pub max_calls_in_flight: usize,
    /// `STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL`: requests at once per principal.
    pub max_calls_per_principal: usize,
    /// `STAGE0_HTTP_MAX_BYTES_IN_FLIGHT`: bytes of request bodies at once, in total.
    pub max_bytes_in_flight: usize,
    /// `STAGE0_HTTP_REQUEST_TIMEOUT_S`: the deadline of one request, past which it is answered
    /// `408` and its work dropped (a body that has started runs to its end).
    pub request_timeout: Duration,
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
    /// The HTTP client for the issuer's keys could not be built.
    #[error("the HTTP client for the authorization server cannot be built: {0}")]
    Client(#[from] reqwest::Error),
    /// The address could not be bound, or serving failed.
    #[error("cannot serve HTTP on {0}: {1}")]
    Io(SocketAddr, std::io::Error),
}

/// What every `/mcp` request passes through: the token check and the in-flight bounds.
#[derive(Debug)]
struct Gate {
    validator: Option<TokenValidator>,
    /// `WWW-Authenticate` of a `401`.
    challenge: Option<HeaderValue>,
    in_flight: Mutex<InFlight>,
    /// Woken when the last request in flight is answered.
    drained: Notify,
    max_in_flight: usize,
    max_per_principal: usize,
    max_bytes: usize,
}

/// The requests being served now.
#[derive(Debug, Default)]
struct InFlight {
    calls: usize,
    bytes: usize,
    per_principal: HashMap<String, usize>,
    /// Set when the server stops: new requests are refused (`503`) while those in flight finish.
    closing: bool,
}

/// Why a request was not let in.
enum Refusal {
    /// A bound is reached: `429`.
    Busy,
    /// The server is stopping: `503`.
    Stopping,
}

/// A request's places in the in-flight counts, given back when it is answered.
struct Admitted<'a> {
    gate: &'a Gate,
    principal: String,
    bytes: usize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.gate.lock();
        in_flight.calls -= 1;
        in_flight.bytes -= self.bytes;
        if let Some(count) = in_flight.per_principal.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                in_flight.per_principal.remove(&self.principal);
            }
        }
        if in_flight.calls == 0 {
            self.gate.drained.notify_waiters();
        }
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a request of `principal` with a body of `bytes`, or says why not. A
    /// request is always let in when nothing else is in flight, however large its body (it is at
    /// most [`MAX_BODY_BYTES`] anyway).
    fn admit(&self, principal: &str, bytes: usize) -> Result<Admitted<'_>, Refusal> {
        let mut in_flight = self.lock();
        if in_flight.closing {
            return Err(Refusal::Stopping);
        }
        let mine = in_flight.per_principal.get(principal).copied().unwrap_or(0);
        let too_many_bytes = in_flight.calls > 0 && in_flight.bytes + bytes > self.max_bytes;
        if in_flight.calls >= self.max_in_flight || mine >= self.max_per_principal || too_many_bytes
        {
            return Err(Refusal::Busy);
        }
        in_flight.calls += 1;
        in_flight.bytes += bytes;
        in_flight
            .per_principal
            .insert(principal.to_owned(), mine + 1);
        Ok(Admitted {
            gate: self,
            principal: principal.to_owned(),
            bytes,
        })
    }

    /// Refuses new requests and waits, at most `bound`, until those in flight are answered.
    async fn drain(&self, bound: Duration) {
        self.lock().closing = true;
        let drained = async {
            loop {
                let notified = self.drained.notified();
                if self.lock().calls == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(bound, drained).await.is_err() {
            tracing::warn!("stopping with calls still in flight after {bound:?}");
        }
    }
}

impl GuardedServer {
    /// Serves MCP over streamable HTTP at `/mcp` as `config` says, until `stop` completes; then
    /// stops accepting, lets requests in flight finish and closes the audit log.
    ///
    /// # Errors
    ///
    /// [`HttpError`] when the configuration is refused (no authentication off loopback, OAuth
    /// without a public URL), or the address cannot be bound.
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
        let gate = Arc::new(Gate {
            validator: config.oauth.clone().map(TokenValidator::new).transpose()?,
            challenge: resource_metadata.as_ref().and_then(|url| {
                HeaderValue::from_str(&format!("Bearer resource_metadata=\"{url}\"")).ok()
            }),
            in_flight: Mutex::new(InFlight::default()),
            drained: Notify::new(),
            max_in_flight: config.max_calls_in_flight.max(1),
            max_per_principal: config.max_calls_per_principal.max(1),
            max_bytes: config.max_bytes_in_flight.max(1),
        });

        let shutdown = CancellationToken::new();
        let guard = Arc::clone(self.guard());
        let server = self.clone();
        let service = StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::new(LocalSessionManager::default()),
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

        let draining = Arc::clone(&gate);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| HttpError::Io(config.listen, error))?;
        let bound = listener
            .local_addr()
            .map_err(|error| HttpError::Io(config.listen, error))?;
        tracing::info!(
            listen = %bound,
            oauth = config.oauth.is_some(),
            "serving MCP over streamable HTTP at {MCP_PATH}"
        );
        // Answers go out as soon as they are written: without TCP_NODELAY, a small answer can
        // wait for the client's delayed ACK (40 ms) under Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::warn!(%error, "TCP_NODELAY not set");
            }
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                stop.await;
                tracing::info!("stopping: new calls are refused; calls in flight finish");
                draining.drain(config.request_timeout).await;
                // Only now are rmcp's sessions and streams ended.
                shutdown.cancel();
            })
            .await
            .map_err(|error| HttpError::Io(bound, error));
        if let Some(log) = guard.audit() {
            log.close();
        }
        served
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

/// The middleware of `/mcp`: the token check (with OAuth), then the in-flight bounds; the
/// principal goes into the request's extensions for the guard.
async fn authorize(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let operator = match &gate.validator {
        None => None,
        Some(validator) => match bearer(&request) {
            None => return refuse(&gate, &TokenError::Missing),
            Some(token) => match validator.validate(token).await {
                Ok(operator) => Some(operator),
                Err(error) => return refuse(&gate, &error),
            },
        },
    };
    let principal = operator
        .as_ref()
        .and_then(|operator| operator.actor_id.clone())
        .unwrap_or_default();
    let bytes = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
        .map_or(MAX_BODY_BYTES, |length| length.min(MAX_BODY_BYTES));
    let _admitted = match gate.admit(&principal, bytes) {
        Ok(admitted) => admitted,
        Err(Refusal::Stopping) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping").into_response();
        }
        Err(Refusal::Busy) => {
            tracing::warn!(principal = %escaped(&principal), "HTTP request refused: too many in flight");
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                "too many calls in flight: retry later",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    if let Some(operator) = operator {
        request.extensions_mut().insert::<Operator>(operator);
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The `401` (or `503`) of a refused token, with the challenge that names the metadata.
fn refuse(gate: &Gate, error: &TokenError) -> Response {
    tracing::warn!(why = %escaped(error), "HTTP request refused: bearer token");
    let mut response = (error.status(), error.to_string()).into_response();
    if let Some(challenge) = &gate.challenge {
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
