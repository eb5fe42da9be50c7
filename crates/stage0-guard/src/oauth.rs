//! The OAuth 2.1 resource server of the HTTP mode: who a request acts for, from its bearer token.
//!
//! A token is a JWT the authorization server (`STAGE0_OAUTH_ISSUER`) signed. It is accepted only
//! when its signature verifies against one of the issuer's published keys (its JWKS), with an
//! asymmetric algorithm (RS256, ES256 or EdDSA: never `none`, never an HMAC, whose "key" would
//! be the public key anyone can read), and when `iss` is the issuer, `aud` names this server
//! (`STAGE0_PUBLIC_URL`, RFC 8707), and `exp` / `nbf` hold with at most [`LEEWAY_S`] seconds of
//! clock skew. Its `sub` becomes the call's actor id and its role claim (`STAGE0_OAUTH_ROLE_CLAIM`)
//! the call's role ceiling ([`Operator`]): a tool argument can still only lower it.
//!
//! The JWKS is found through the issuer's metadata (`/.well-known/oauth-authorization-server`,
//! then `/.well-known/openid-configuration`) unless `STAGE0_OAUTH_JWKS_URL` names it. Keys are
//! cached; a token naming a key id the cache does not hold fetches the JWKS again, at most once a
//! [`REFETCH_INTERVAL`], so a stream of made-up key ids cannot turn the server into a load on the
//! issuer. Without keys (the issuer unreachable) every token is refused
//! ([`TokenError::KeysUnavailable`]): the server never serves a request it could not check.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::claims::{ActorRole, Operator};
use crate::escape::escaped;

/// The most clock skew accepted on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 60;

/// The shortest time between two fetches of the JWKS for a key id it did not hold.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The bound on one request to the authorization server (metadata or JWKS).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The algorithms a token may be signed with: asymmetric only.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Where the tokens come from and whom they must be for (`STAGE0_OAUTH_*`, `STAGE0_PUBLIC_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// `STAGE0_OAUTH_ISSUER`: the authorization server, exactly as tokens name it in `iss`.
    pub issuer: String,
    /// `STAGE0_OAUTH_JWKS_URL`: its key set, when not found through its metadata.
    pub jwks_url: Option<Url>,
    /// `STAGE0_PUBLIC_URL` followed by `/mcp`: this server's resource URL, which every token must
    /// name in `aud`.
    pub audience: String,
    /// `STAGE0_OAUTH_ROLE_CLAIM` (default `stage0_role`): the claim holding the role, a string
    /// or an array of strings.
    pub role_claim: String,
}

/// Why a request's token was refused; the HTTP answer is `401` ([`TokenError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer …` header.
    #[error("no bearer token")]
    Missing,
    /// The token is not a JWT this server accepts (its header, its algorithm); carries why.
    #[error("the token is not acceptable: {0}")]
    Unacceptable(String),
    /// The token names a key the issuer does not publish.
    #[error("the token's signing key is not one of the issuer's")]
    UnknownKey,
    /// The signature or a claim (`iss`, `aud`, `exp`, `nbf`, `sub`) does not hold; carries which.
    #[error("the token is invalid: {0}")]
    Invalid(String),
    /// The issuer's keys could not be fetched, so no token can be checked; carries why.
    #[error("the authorization server's keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// The HTTP status of the refusal: `503` when the keys are unavailable, `401` otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            TokenError::KeysUnavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// The cached key set and when it was last fetched.
#[derive(Debug, Default)]
struct Keys {
    jwks_url: Option<Url>,
    /// The usable keys of the last key set fetched, each with its `kid`, decoded once.
    set: Option<Vec<(Option<String>, DecodingKey)>>,
    fetched_at: Option<Instant>,
}

/// Checks bearer tokens against the issuer's keys. Share it behind an `Arc`.
#[derive(Debug)]
pub struct TokenValidator {
    config: OAuthConfig,
    http: reqwest::Client,
    keys: Mutex<Keys>,
}

impl TokenValidator {
    /// A validator for `config`; the issuer's keys are fetched when the first token arrives.
    ///
    /// # Errors
    ///
    /// The `reqwest` error when the HTTP client cannot be built.
    pub fn new(config: OAuthConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(TokenValidator {
            keys: Mutex::new(Keys {
                jwks_url: config.jwks_url.clone(),
                ..Keys::default()
            }),
            config,
            http,
        })
    }

    /// What tokens must be for: the configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Checks `token` and returns the principal it vouches for: `sub` as the actor id, the
    /// highest valid role of the role claim as the role ceiling (`viewer` when there is none).
    ///
    /// # Errors
    ///
    /// [`TokenError`] saying why the token is refused.
    pub async fn validate(&self, token: &str) -> Result<Operator, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenError::Unacceptable(error.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Unacceptable(format!(
                "algorithm {:?}: only RS256, ES256 and EdDSA are accepted",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|error| TokenError::Invalid(error.to_string()))?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| !sub.trim().is_empty())
            .ok_or_else(|| TokenError::Invalid("`sub` is not a non-empty string".to_owned()))?;
        Ok(Operator {
            actor_role: highest_role(claims.get(&self.config.role_claim)),
            actor_id: Some(subject.to_owned()),
        })
    }

    /// The decoding key with id `kid` (or, without one, the only key usable with `alg`),
    /// fetching the key set when it is not cached, or again when `kid` is new to it and the last
    /// fetch is at least [`REFETCH_INTERVAL`] old.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        let mut keys = self.keys.lock().await;
        let stale = keys
            .fetched_at
            .is_none_or(|at| at.elapsed() >= REFETCH_INTERVAL);
        if keys.set.is_none() || (find(&keys, kid, alg).is_none() && stale) {
            match self.fetch(&mut keys).await {
                Ok(()) => {}
                Err(why) if keys.set.is_none() => return Err(TokenError::KeysUnavailable(why)),
                Err(why) => tracing::warn!(why = %escaped(&why), "JWKS refetch failed"),
            }
        }
        find(&keys, kid, alg).cloned().ok_or(TokenError::UnknownKey)
    }

    /// Fetches the key set (finding its URL first when needed) into `keys`.
    async fn fetch(&self, keys: &mut Keys) -> Result<(), String> {
        // A failed attempt counts: the next waits its turn.
        keys.fetched_at = Some(Instant::now());
        let url = match &keys.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.discover().await?;
                keys.jwks_url = Some(url.clone());
                url
            }
        };
        let set: JwkSet = self.get_json(&url).await?;
        let mut usable = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => usable.push((jwk.common.key_id.clone(), key)),
                Err(error) => tracing::warn!(kid = ?jwk.common.key_id, %error, "JWKS key skipped"),
            }
        }
        tracing::info!(keys = usable.len(), jwks_url = %url, "issuer keys fetched");
        keys.set = Some(usable);
        Ok(())
    }

    /// The `jwks_uri` of the issuer's metadata: RFC 8414 first, then OpenID Connect Discovery.
    async fn discover(&self) -> Result<Url, String> {
        let issuer = self.config.issuer.trim_end_matches('/');
        let mut problems = Vec::new();
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let url = Url::parse(&format!("{issuer}{path}")).map_err(|e| e.to_string())?;
            match self.get_json::<Value>(&url).await {
                Ok(metadata) => match metadata.get("jwks_uri").and_then(Value::as_str) {
                    Some(jwks) => return Url::parse(jwks).map_err(|e| e.to_string()),
                    None => problems.push(format!("{url}: no `jwks_uri`")),
                },
                Err(why) => problems.push(why),
            }
        }
        Err(problems.join("; "))
    }

    /// GETs `url` and reads its body as JSON.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &Url) -> Result<T, String> {
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: status {}", response.status()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        serde_json::from_slice(&body).map_err(|error| format!("{url}: {error}"))
    }
}

/// The key of `keys` with id `kid`, or without a `kid` the only one whose family fits `alg`.
fn find<'k>(keys: &'k Keys, kid: Option<&str>, alg: Algorithm) -> Option<&'k DecodingKey> {
    let set = keys.set.as_ref()?;
    let mut fitting = set.iter().filter(|(id, key)| match kid {
        Some(kid) => id.as_deref() == Some(kid),
        None => key.family() == alg.family(),
    });
    let (_, only) = fitting.next()?;
    fitting.next().is_none().then_some(only)
}

/// The highest valid role in a role claim (a string or an array of strings); `viewer` when the
/// claim is missing or holds no valid role.
fn highest_role(claim: Option<&Value>) -> ActorRole {
    let roles: Vec<&str> = match claim {
        Some(Value::String(role)) => vec![role],
        Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    roles
        .into_iter()
        .filter_map(|role| role.parse::<ActorRole>().ok())
        .max_by_key(|role| rank(*role))
        .unwrap_or(ActorRole::Viewer)
}

/// The order of roles: viewer < developer < admin.
fn rank(role: ActorRole) -> u8 {
    match role {
        ActorRole::Viewer => 0,
        ActorRole::Developer => 1,
        ActorRole::Admin => 2,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_highest_valid_role_wins_and_nothing_valid_is_a_viewer() {
        assert_eq!(
            highest_role(Some(&json!("developer"))),
            ActorRole::Developer
        );
        assert_eq!(
            highest_role(Some(&json!(["viewer", "admin", "developer"]))),
            ActorRole::Admin
        );
        assert_eq!(highest_role(Some(&json!(["root", 7]))), ActorRole::Viewer);
        assert_eq!(
            highest_role(Some(&json!({"role": "admin"}))),
            ActorRole::Viewer
        );
        assert_eq!(highest_role(None), ActorRole::Viewer);
    }
}
