//! The live policy decision point: `POST {STAGE0_BASE_URL}/check` over HTTPS.
//!
//! Every failure is a verdict, never an error: a status other than 2xx, a network error, a body
//! over [`MAX_BODY_BYTES`], a body that is not a JSON object, or no complete answer within the
//! deadline all come back as `DENY` / `ERROR` with a reason that says what happened (fail closed).
//! One `reqwest::Client`, and so one connection pool, serves every call. Redirects are not
//! followed, so the `x-api-key` header is only ever sent to the configured host.

use std::error::Error as _;
use std::time::Duration;

use reqwest::{Client, StatusCode, Url, redirect};
use serde_json::Value;
use uuid::Uuid;

use super::wire::{CheckBody, Intent, PolicyResponse, error_message};
use crate::config::{ApiKey, Config};

/// The largest `/check` response body read, in bytes (1 MiB); a larger one is `DENY` / `ERROR`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

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
    #[error("response body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("{0}")]
    NotAnObject(&'static str),
}

impl HttpPolicyClient {
    /// A client for `config.base_url` that sends `api_key` and gives up after `config.timeout`.
    ///
    /// # Errors
    ///
    /// The `reqwest` error when the HTTP client cannot be built (no TLS roots, for instance).
    pub fn new(config: &Config, api_key: ApiKey) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .user_agent(concat!("mcp-server-stage0/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect::Policy::none())
            .build()?;
        let base = config.base_url.as_str().trim_end_matches('/');
        let check_url = Url::parse(&format!("{base}/check")).expect("a valid base URL plus a path");
        Ok(HttpPolicyClient {
            client,
            check_url,
            api_key,
            timeout: config.timeout,
        })
    }

    /// Asks Stage0 for a verdict on `intent`, within the configured deadline.
    ///
    /// Never fails: any problem is a `DENY` / `ERROR` verdict carrying the `X-Request-Id` sent.
    pub async fn check(&self, intent: &Intent) -> PolicyResponse {
        let request_id = Uuid::new_v4().to_string();
        match tokio::time::timeout(self.timeout, self.exchange(intent, &request_id)).await {
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

    async fn exchange(
        &self,
        intent: &Intent,
        request_id: &str,
    ) -> Result<PolicyResponse, ExchangeError> {
        let body = serde_json::to_vec(&CheckBody { intent, pro: false })
            .expect("an intent always serialises");
        let mut response = self
            .client
            .post(self.check_url.clone())
            .header("Content-Type", "application/json")
            .header("x-api-key", self.api_key.expose())
            .header("X-Request-Id", request_id)
            .body(body)
            .send()
            .await?;

        let status = response.status();
        let body = read_capped(&mut response).await;
        if !status.is_success() {
            let message = body.ok().as_deref().and_then(error_message);
            return Ok(PolicyResponse::fail_closed(
                message.unwrap_or_else(|| http_status(status)),
                request_id.to_owned(),
            ));
        }
        let body = body?;
        let value: Value = serde_json::from_slice(&body).map_err(ExchangeError::NotJson)?;
        PolicyResponse::from_json(&value, request_id).map_err(ExchangeError::NotAnObject)
    }
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
