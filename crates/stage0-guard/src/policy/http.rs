//! The live policy decision point: `POST {STAGE0_BASE_URL}/check` over HTTPS (`docs/contract.md`
//! §3).
//!
//! Every failure is a verdict, never an error: a status other than `200 OK` (another 2xx too: a
//! verdict is only read from a 200), a network error, a body over [`MAX_BODY_BYTES`], a body that
//! is not a JSON object or repeats a key, a verdict and decision that disagree (`wire.rs`), or no
//! complete answer within the deadline all come back as `DENY` / `ERROR` with a reason that says
//! what happened (fail closed).
//! One `reqwest::Client`, and so one connection pool, serves every call. Redirects are not
//! followed, so the `x-api-key` header is only ever sent to the configured host.
//!
//! # One retry for a transient failure
//!
//! A check whose first request fails *transiently* is sent once more; everything else fails
//! closed at once. Transient means: the connection could not be made (refused, reset while
//! connecting, TLS handshake failed), or the authority answered `429 Too Many Requests` or
//! `503 Service Unavailable`, both of which say "not now" rather than "no". A `500`, any other
//! status, a bad body and running out of time are not retried: they are answers, or the deadline
//! is spent.
//!
//! Retrying `/check` is safe because a check is a read-only decision: asking Stage0 twice has no
//! side effect at the authority and cannot run a tool body twice (the body runs after the one
//! verdict this function returns, or not at all). The retry carries the same `X-Request-Id` as the
//! first request, so the authority can tell it is the same check and de-duplicate its records.
//!
//! The retry must fit inside the same deadline (`STAGE0_TIMEOUT_MS`, measured from the start of
//! the check, not per request). It is sent only when, after waiting what the authority asked for,
//! at least [`MIN_RETRY_BUDGET`] of the deadline is left for the second exchange:
//!
//! - no `Retry-After` (and every connection error): retry at once;
//! - `Retry-After: <seconds>`: wait that long, if the wait plus [`MIN_RETRY_BUDGET`] fits;
//! - `Retry-After` that cannot be honoured inside the deadline, or that is not a whole number of
//!   seconds (an HTTP date, garbage): no retry, fail closed at once. Retrying earlier than the
//!   authority asked would only add load it asked us to spare, and waiting past the deadline
//!   would break the promise that every check ends within `STAGE0_TIMEOUT_MS`.
//!
//! The second attempt's outcome is final, whatever it is: there is never a second retry.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{Client, StatusCode, Url, redirect};
use tokio::time::Instant;
use uuid::Uuid;

use super::wire::{BodyError, CheckBody, Intent, PolicyResponse, error_message};

/// The largest `/check` response body read, in bytes (1 MiB); a larger one is `DENY` / `ERROR`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The least time (50 ms) that must be left of the deadline, after any `Retry-After` wait, for a
/// transient failure to be retried. Less than that is too little for a second exchange with a
/// remote authority to have a fair chance, so the check fails closed at once instead.
pub const MIN_RETRY_BUDGET: Duration = Duration::from_millis(50);

/// A Stage0 API key, sent in the `x-api-key` header. Its `Debug` never shows it; only
/// [`ApiKey::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; the caller has checked it is not empty.
    pub fn new(key: String) -> Self {
        ApiKey(key)
    }

    /// The key itself, for the `x-api-key` header and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A client of the Stage0 `/check` API.
#[derive(Debug, Clone)]
pub struct HttpPolicyClient {
    client: Client,
    check_url: Url,
    api_key: ApiKey,
    timeout: Duration,
}

/// Why an exchange with Stage0 produced no usable answer.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{}", describe(.0))]
    Transport(#[from] reqwest::Error),
    #[error("response body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error(transparent)]
    Body(#[from] BodyError),
}

impl HttpPolicyClient {
    /// A client that POSTs to `{base_url}/check` with `api_key` in `x-api-key` and gives up on a
    /// whole check (retry included) after `timeout`.
    ///
    /// # Errors
    ///
    /// The `reqwest` error when the HTTP client cannot be built (no TLS roots, for instance).
    pub fn new(base_url: &Url, timeout: Duration, api_key: ApiKey) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .user_agent(concat!("mcp-server-stage0/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect::Policy::none())
            .build()?;
        let base = base_url.as_str().trim_end_matches('/');
        let check_url = Url::parse(&format!("{base}/check")).expect("a valid base URL plus a path");
        Ok(HttpPolicyClient {
            client,
            check_url,
            api_key,
            timeout,
        })
    }

    /// Asks Stage0 for a verdict on `intent`, within the configured deadline.
    ///
    /// Never fails: any problem is a `DENY` / `ERROR` verdict carrying the `X-Request-Id` sent.
    /// A transient failure is retried once with the same `X-Request-Id` when the retry fits
    /// inside the deadline (see the module documentation).
    pub async fn check(&self, intent: &Intent) -> PolicyResponse {
        let request_id = Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.timeout;
        let decided = self.decide(intent, &request_id, deadline);
        match tokio::time::timeout_at(deadline, decided).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                PolicyResponse::fail_closed(format!("Stage0 API error: {error}"), request_id)
            }
            Err(_) => PolicyResponse::fail_closed(
                format!(
                    "Stage0 API error: no complete answer within {} ms",
                    self.timeout.as_millis()
                ),
                request_id,
            ),
        }
    }

    /// The first attempt's outcome, or the second's when the first failed transiently and a
    /// retry fits before `deadline`.
    async fn decide(
        &self,
        intent: &Intent,
        request_id: &str,
        deadline: Instant,
    ) -> Result<PolicyResponse, ExchangeError> {
        let body = serde_json::to_vec(&CheckBody { intent, pro: false })
            .expect("an intent always serialises");
        let (outcome, retry) = match self.exchange(&body, request_id).await {
            Attempt::Final(outcome) => return outcome,
            Attempt::Transient { outcome, retry } => (outcome, retry),
        };
        let wait = match retry {
            RetryAfter::Now => Duration::ZERO,
            RetryAfter::Wait(wait) => wait,
            RetryAfter::Unreadable => {
                tracing::warn!(
                    request_id,
                    "stage0 transient failure not retried: unreadable Retry-After"
                );
                return outcome;
            }
        };
        // Checked: `Retry-After` may be any number of seconds, up to `u64::MAX`.
        let fits = wait
            .checked_add(MIN_RETRY_BUDGET)
            .and_then(|needed| Instant::now().checked_add(needed))
            .is_some_and(|latest_start| latest_start <= deadline);
        if !fits {
            tracing::warn!(
                request_id,
                wait_ms = wait.as_millis() as u64,
                "stage0 transient failure not retried: the retry does not fit the deadline"
            );
            return outcome;
        }
        tracing::warn!(
            request_id,
            wait_ms = wait.as_millis() as u64,
            "stage0 transient failure, retrying once"
        );
        tokio::time::sleep(wait).await;
        match self.exchange(&body, request_id).await {
            Attempt::Final(outcome) | Attempt::Transient { outcome, .. } => outcome,
        }
    }

    /// One `POST /check` with `body`, classified as final or transient.
    async fn exchange(&self, body: &[u8], request_id: &str) -> Attempt {
        let sent = self
            .client
            .post(self.check_url.clone())
            .header("Content-Type", "application/json")
            .header("x-api-key", self.api_key.expose())
            .header("X-Request-Id", request_id)
            .body(body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                return Attempt::Transient {
                    outcome: Err(error.into()),
                    retry: RetryAfter::Now,
                };
            }
            Err(error) => return Attempt::Final(Err(error.into())),
        };

        let status = response.status();
        if status == StatusCode::OK {
            return Attempt::Final(read_verdict(&mut response, request_id).await);
        }
        if status.is_success() {
            // `201`, `202`, `204`, `206`, ...: none of them is how the API answers a check, so
            // whatever the body says, it is not a verdict.
            return Attempt::Final(Ok(PolicyResponse::fail_closed(
                format!(
                    "Stage0 API error: {} is not 200 OK, the only status a verdict is read from",
                    http_status(status)
                ),
                request_id.to_owned(),
            )));
        }
        let retry = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| retry_after(&response));
        let body = read_capped(&mut response).await;
        let message = body.ok().as_deref().and_then(error_message);
        let outcome = Ok(PolicyResponse::fail_closed(
            message.unwrap_or_else(|| http_status(status)),
            request_id.to_owned(),
        ));
        match retry {
            Some(retry) => Attempt::Transient { outcome, retry },
            None => Attempt::Final(outcome),
        }
    }
}

/// What one request to `/check` came to.
enum Attempt {
    /// An outcome that stands: a verdict, or a failure that a retry would not change.
    Final(Result<PolicyResponse, ExchangeError>),
    /// A failure that may pass (connection error, 429, 503): its outcome stands unless a retry
    /// is sent, `retry` says when one may be.
    Transient {
        outcome: Result<PolicyResponse, ExchangeError>,
        retry: RetryAfter,
    },
}

/// When the authority allows a retry, from its `Retry-After` header (RFC 9110 §10.2.3).
enum RetryAfter {
    /// No header: at once.
    Now,
    /// `Retry-After: <seconds>`.
    Wait(Duration),
    /// An HTTP date or anything else: we cannot tell whether it fits, so no retry.
    Unreadable,
}

fn retry_after(response: &reqwest::Response) -> RetryAfter {
    match response.headers().get(RETRY_AFTER) {
        None => RetryAfter::Now,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map_or(RetryAfter::Unreadable, |seconds| {
                RetryAfter::Wait(Duration::from_secs(seconds))
            }),
    }
}

/// The verdict in a `200 OK` response's body.
async fn read_verdict(
    response: &mut reqwest::Response,
    request_id: &str,
) -> Result<PolicyResponse, ExchangeError> {
    let body = read_capped(response).await?;
    Ok(PolicyResponse::from_body(&body, request_id)?)
}

/// The whole body, or [`ExchangeError::BodyTooLarge`] as soon as it passes [`MAX_BODY_BYTES`].
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, ExchangeError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(ExchangeError::BodyTooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ExchangeError::BodyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn http_status(status: StatusCode) -> String {
    format!("HTTP {}", status.as_u16())
}

/// A `reqwest` error with its causes, which carry the useful part ("Connection refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
