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
//! The header must not carry `crit` (this server understands no JWS extension, RFC 7515
//! §4.1.11), and its `typ`, when present, must be an access token's: `at+jwt` (RFC 9068 §2.1) or
//! `JWT`, with or without `application/`, in any case.
//!
//! The issuer and the JWKS URL are `https`, or plain `http` on a loopback host only
//! ([`secure_transport`]; the configuration refuses any other). The JWKS is found through the
//! issuer's metadata (`/.well-known/oauth-authorization-server`, then
//! `/.well-known/openid-configuration`) unless `STAGE0_OAUTH_JWKS_URL` names it; the metadata is
//! used only when its `issuer` is identical to the one configured (RFC 8414 §3.3) and its
//! `jwks_uri` follows the same rule as the issuer.
//!
//! Keys are cached. The set is fetched again once it is [`KEYS_REFRESH_AFTER`] old, or when a
//! token names a key id it does not hold, so a key the issuer withdraws stops validating tokens
//! within that time; while fetching fails, the last set serves until it is [`KEYS_MAX_AGE`] old.
//! Whatever the tokens, one fetch is made at a time (the requests that need it share it) and at
//! most once a [`REFETCH_INTERVAL`], failed or not, so neither made-up key ids nor an issuer that
//! is down can turn the server into a load on the issuer. Without keys (the issuer unreachable)
//! every token is refused ([`TokenError::KeysUnavailable`]): the server never serves a request
//! it could not check.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use reqwest::Url;
use serde_json::Value;

use crate::claims::{ActorRole, Operator};
use crate::escape::escaped;

/// The most clock skew accepted on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 60;

/// How old the cached key set may be before the next token fetches it again (10 minutes): the
/// longest a key the issuer has withdrawn keeps validating tokens while the issuer answers.
pub const KEYS_REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long after it was fetched a key set serves at most (1 hour) while fetching it again
/// fails; past that, every token is refused with [`TokenError::KeysUnavailable`] until a fetch
/// succeeds.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The shortest time between two attempts to fetch the JWKS, whether the last one failed or not
/// (1 minute).
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The bound on one request to the authorization server (metadata or JWKS).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The algorithms a token may be signed with: asymmetric only.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Where the tokens come from and whom they must be for (`STAGE0_OAUTH_*`, `STAGE0_PUBLIC_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// `STAGE0_OAUTH_ISSUER`: the authorization server, exactly as tokens name it in `iss`; an
    /// `https` URL, or `http` on a loopback host ([`secure_transport`]).
    pub issuer: String,
    /// `STAGE0_OAUTH_JWKS_URL`: its key set, when not found through its metadata; `https`, or
    /// `http` on a loopback host.
    pub jwks_url: Option<Url>,
    /// `STAGE0_PUBLIC_URL` followed by `/mcp`: this server's resource URL, which every token must
    /// name in `aud`.
    pub audience: String,
    /// `STAGE0_OAUTH_ROLE_CLAIM` (default `stage0_role`): the claim holding the role, a string
    /// or an array of strings.
    pub role_claim: String,
}

/// Whether the issuer's metadata or keys may be fetched from `url`: over `https`, or over plain
/// `http` only from a loopback host (`localhost`, 127.0.0.0/8, `::1`), where no network lies
/// between the two servers. Anywhere else, whoever is on the path could serve their own keys.
pub fn secure_transport(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let loopback = || match url.domain() {
        Some(name) => name == "localhost",
        // An address: `127.0.0.1`, or `[::1]` in its brackets.
        None => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
    };
    match url.scheme() {
        "https" => true,
        "http" => loopback(),
        _ => false,
    }
}

/// Why a request's token was refused; the HTTP answer is `401` ([`TokenError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer …` header.
    #[error("no bearer token")]
    Missing,
    /// The token is not a JWT this server accepts (its header: its algorithm, `typ`, `crit`);
    /// carries why.
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

/// The usable keys of a key set, each with its `kid`, decoded once.
type KeyList = Vec<(Option<String>, DecodingKey)>;

/// What is known of the issuer's keys: the last set fetched, and the last attempt.
#[derive(Debug, Default)]
struct Cache {
    /// The JWKS URL: configured, or found in the metadata by the first successful fetch.
    jwks_url: Option<Url>,
    /// The last key set fetched, and when.
    set: Option<(Instant, KeyList)>,
    /// When a fetch was last tried, whether it failed or not.
    tried_at: Option<Instant>,
    /// Why the last fetch failed; `None` once one succeeds.
    failure: Option<String>,
}

impl Cache {
    /// The last key set and its age at `now`, unless it is [`KEYS_MAX_AGE`] old.
    fn set(&self, now: Instant) -> Option<(Duration, &KeyList)> {
        let (fetched_at, keys) = self.set.as_ref()?;
        let age = now.saturating_duration_since(*fetched_at);
        (age < KEYS_MAX_AGE).then_some((age, keys))
    }

    /// The key for a token with `kid` and `alg`, from the key set usable at `now`.
    fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        now: Instant,
    ) -> Result<DecodingKey, TokenError> {
        let Some((_, keys)) = self.set(now) else {
            return Err(TokenError::KeysUnavailable(
                self.failure.clone().unwrap_or_else(|| {
                    format!(
                        "no key set fetched in the last {}",
                        humantime::format_duration(KEYS_MAX_AGE)
                    )
                }),
            ));
        };
        find(keys, kid, alg).cloned().ok_or(TokenError::UnknownKey)
    }

    /// Whether a token with `kid` and `alg` should fetch the key set at `now`: there is none
    /// (usable), it is [`KEYS_REFRESH_AFTER`] old or lacks the key, and the last attempt is at
    /// least [`REFETCH_INTERVAL`] old.
    fn fetch_due(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> bool {
        let wanted = self
            .set(now)
            .is_none_or(|(age, keys)| age >= KEYS_REFRESH_AFTER || find(keys, kid, alg).is_none());
        wanted
            && self
                .tried_at
                .is_none_or(|at| now.saturating_duration_since(at) >= REFETCH_INTERVAL)
    }
}

/// Checks bearer tokens against the issuer's keys. Share it behind an `Arc`.
#[derive(Debug)]
pub struct TokenValidator {
    config: OAuthConfig,
    http: reqwest::Client,
    /// Locked only to read or update, never across a fetch.
    cache: Mutex<Cache>,
    /// Held for the length of a fetch: one at a time, and the requests waiting for keys share it.
    fetching: tokio::sync::Mutex<()>,
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
            cache: Mutex::new(Cache {
                jwks_url: config.jwks_url.clone(),
                ..Cache::default()
            }),
            fetching: tokio::sync::Mutex::new(()),
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
        self.validate_at(token, Instant::now()).await
    }

    /// [`TokenValidator::validate`], with the key set's age taken at `now` (the tests look
    /// ahead with it).
    async fn validate_at(&self, token: &str, now: Instant) -> Result<Operator, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenError::Unacceptable(error.to_string()))?;
        acceptable(&header).map_err(TokenError::Unacceptable)?;
        let key = self.key(header.kid.as_deref(), header.alg, now).await?;
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
    /// fetching the key set first when [`Cache::fetch_due`] says so.
    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        now: Instant,
    ) -> Result<DecodingKey, TokenError> {
        let (cached, due) = {
            let cache = self.cache();
            (cache.key(kid, alg, now), cache.fetch_due(kid, alg, now))
        };
        if !due {
            return cached;
        }
        // A token whose key is cached does not wait for a refresh another request is making; one
        // without waits for the fetch in flight, then reads what it brought.
        let _fetching = match &cached {
            Ok(_) => match self.fetching.try_lock() {
                Ok(fetching) => fetching,
                Err(_) => return cached,
            },
            Err(_) => self.fetching.lock().await,
        };
        let due = self.cache().fetch_due(kid, alg, now);
        if due {
            self.fetch(now).await;
        }
        self.cache().key(kid, alg, now)
    }

    /// The cache, locked (a panic while it was held left it whole: each update is one step).
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches the key set (finding its URL first when needed) into the cache, as tried at
    /// `now`; on success it replaces the last set whole, so a key no longer published is gone.
    async fn fetch(&self, now: Instant) {
        let url = self.cache().jwks_url.clone();
        let fetched = self.fetch_set(url).await;
        let mut cache = self.cache();
        cache.tried_at = Some(now);
        match fetched {
            Ok((url, keys)) => {
                tracing::info!(keys = keys.len(), jwks_url = %url, "issuer keys fetched");
                cache.jwks_url = Some(url);
                cache.set = Some((now, keys));
                cache.failure = None;
            }
            Err(why) => {
                tracing::warn!(why = %escaped(&why), "JWKS fetch failed");
                cache.failure = Some(why);
            }
        }
    }

    /// The key set at `url`, or at the `jwks_uri` of the issuer's metadata without one; with
    /// the URL it came from.
    async fn fetch_set(&self, url: Option<Url>) -> Result<(Url, KeyList), String> {
        let url = match url {
            Some(url) => url,
            None => self.discover().await?,
        };
        let set: JwkSet = self.get_json(&url).await?;
        let mut usable = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => usable.push((jwk.common.key_id.clone(), key)),
                Err(error) => tracing::warn!(kid = ?jwk.common.key_id, %error, "JWKS key skipped"),
            }
        }
        Ok((url, usable))
    }

    /// The `jwks_uri` of the issuer's metadata ([`jwks_uri`]): RFC 8414 first, then OpenID
    /// Connect Discovery.
    async fn discover(&self) -> Result<Url, String> {
        let issuer = &self.config.issuer;
        let mut problems = Vec::new();
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let url = Url::parse(&format!("{}{path}", issuer.trim_end_matches('/')))
                .map_err(|e| e.to_string())?;
            match self.get_json::<Value>(&url).await {
                Ok(metadata) => match jwks_uri(&metadata, issuer) {
                    Ok(jwks) => return Ok(jwks),
                    Err(why) => problems.push(format!("{url}: {why}")),
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

/// Whether a token's header is one this server accepts: an asymmetric algorithm, no `crit`
/// (RFC 7515 §4.1.11: every extension it names must be understood, and this server understands
/// none), and a `typ`, when present, of an access token: `at+jwt` (RFC 9068 §2.1) or `JWT`
/// (RFC 7519 §5.1), compared without case and with `application/` optional (RFC 7515 §4.1.9).
/// Refuses a logout token (`logout+jwt`), a security event (`secevent+jwt`) or any other JWT
/// the issuer types as something else. Carries why not.
fn acceptable(header: &Header) -> Result<(), String> {
    if !ALGORITHMS.contains(&header.alg) {
        return Err(format!(
            "algorithm {:?}: only RS256, ES256 and EdDSA are accepted",
            header.alg
        ));
    }
    if header.crit.is_some() {
        return Err("a `crit` header: this server understands no JWS extension".to_owned());
    }
    if let Some(typ) = &header.typ {
        let lower = typ.to_ascii_lowercase();
        let media = lower.strip_prefix("application/").unwrap_or(&lower);
        if media != "at+jwt" && media != "jwt" {
            return Err(format!(
                "`typ` {typ:?} is not an access token's (`at+jwt` or `JWT`)"
            ));
        }
    }
    Ok(())
}

/// The `jwks_uri` of the issuer's `metadata`, once the metadata is the issuer's: its `issuer` is
/// identical to `issuer` (RFC 8414 §3.3, OpenID Connect Discovery §4.3), and the URI may carry
/// keys ([`secure_transport`]). Carries why not.
fn jwks_uri(metadata: &Value, issuer: &str) -> Result<Url, String> {
    let named = metadata.get("issuer").and_then(Value::as_str);
    if named != Some(issuer) {
        return Err(format!(
            "the metadata's `issuer` is {named:?}, not {issuer:?} (RFC 8414 §3.3)"
        ));
    }
    let jwks = metadata
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("no `jwks_uri`")?;
    let url = Url::parse(jwks).map_err(|error| format!("`jwks_uri`: {error}"))?;
    if !secure_transport(&url) {
        return Err(format!(
            "`jwks_uri` {url} is neither https nor on a loopback host"
        ));
    }
    Ok(url)
}

/// The key of `keys` with id `kid`, or without a `kid` the only one whose family fits `alg`.
fn find<'k>(keys: &'k KeyList, kid: Option<&str>, alg: Algorithm) -> Option<&'k DecodingKey> {
    let mut fitting = keys.iter().filter(|(id, key)| match kid {
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Json};
    use axum::routing::get;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    /// The bound on anything a test waits for.
    const BOUND: Duration = Duration::from_secs(20);

    /// An Ed25519 signing key of the test issuer, with its public JWK.
    struct TestKey {
        kid: &'static str,
        encoding: EncodingKey,
        jwk: Value,
    }

    /// The key of RFC 8032 §7.1 with `seed` and `public` (hex), as `kid`.
    fn test_key(kid: &'static str, seed: &str, public: &str) -> TestKey {
        // PKCS#8 v1 of an Ed25519 seed: a fixed prefix, then the 32 bytes.
        let pkcs8 = hex::decode(format!("302e020100300506032b657004220420{seed}")).unwrap();
        let x = URL_SAFE_NO_PAD.encode(hex::decode(public).unwrap());
        TestKey {
            kid,
            encoding: EncodingKey::from_ed_der(&pkcs8),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA"}),
        }
    }

    /// RFC 8032 §7.1, TEST 1.
    fn k1() -> TestKey {
        test_key(
            "k1",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        )
    }

    /// RFC 8032 §7.1, TEST 2.
    fn k2() -> TestKey {
        test_key(
            "k2",
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        )
    }

    /// A test authorization server on 127.0.0.1: RFC 8414 metadata, and a JWKS that publishes
    /// what the test sets (`None`: it answers 500), counts its fetches, and waits while the
    /// test holds `hold` for writing.
    struct Issuer {
        url: String,
        published: Arc<Mutex<Option<Value>>>,
        fetches: Arc<AtomicUsize>,
        hold: Arc<tokio::sync::RwLock<()>>,
    }

    impl Issuer {
        async fn start() -> Issuer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let issuer = Issuer {
                url: url.clone(),
                published: Arc::default(),
                fetches: Arc::default(),
                hold: Arc::default(),
            };
            let metadata = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
            let (published, fetches, hold) = (
                Arc::clone(&issuer.published),
                Arc::clone(&issuer.fetches),
                Arc::clone(&issuer.hold),
            );
            let jwks = move || {
                let (published, fetches, hold) = (
                    Arc::clone(&published),
                    Arc::clone(&fetches),
                    Arc::clone(&hold),
                );
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let _held = hold.read().await;
                    let set = published.lock().unwrap().clone();
                    match set {
                        Some(set) => Json(set).into_response(),
                        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            };
            let router = axum::Router::new()
                .route(
                    "/.well-known/oauth-authorization-server",
                    get(move || async move { Json(metadata) }),
                )
                .route("/jwks", get(jwks));
            tokio::spawn(async move { axum::serve(listener, router).await });
            issuer
        }

        /// Publishes `keys` from now on (`None`: the JWKS answers 500).
        fn publish(&self, keys: Option<&[&TestKey]>) {
            let set =
                keys.map(|keys| json!({"keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>()}));
            *self.published.lock().unwrap() = set;
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        /// A validator for this issuer's tokens.
        fn validator(&self) -> TokenValidator {
            TokenValidator::new(OAuthConfig {
                issuer: self.url.clone(),
                jwks_url: None,
                audience: AUDIENCE.to_owned(),
                role_claim: "stage0_role".to_owned(),
            })
            .unwrap()
        }

        /// A token for `alice` signed with `key`, valid for ten minutes.
        fn token(&self, key: &TestKey) -> String {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = json!({"iss": self.url, "aud": AUDIENCE, "sub": "alice",
                                "stage0_role": "developer", "exp": now + 600});
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(key.kid.to_owned());
            jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
        }
    }

    const AUDIENCE: &str = "https://stage0.example.test/mcp";

    /// `validator.validate_at(token, at)`, bounded.
    async fn validate(
        validator: &TokenValidator,
        token: &str,
        at: Instant,
    ) -> Result<Operator, TokenError> {
        tokio::time::timeout(BOUND, validator.validate_at(token, at))
            .await
            .expect("a token is checked within the bound")
    }

    #[tokio::test]
    async fn a_key_the_issuer_withdraws_stops_validating_at_the_next_refresh() {
        let (k1, k2) = (k1(), k2());
        let issuer = Issuer::start().await;
        issuer.publish(Some(&[&k1]));
        let validator = issuer.validator();
        let (old, new) = (issuer.token(&k1), issuer.token(&k2));
        let t0 = Instant::now();
        assert!(validate(&validator, &old, t0).await.is_ok());
        assert_eq!(issuer.fetches(), 1);

        // The issuer rotates: k1 is withdrawn. Until the set is due, the cache serves it.
        issuer.publish(Some(&[&k2]));
        let almost = t0 + KEYS_REFRESH_AFTER - Duration::from_secs(1);
        assert!(validate(&validator, &old, almost).await.is_ok());
        assert_eq!(issuer.fetches(), 1, "a cached set is not fetched again");

        let due = t0 + KEYS_REFRESH_AFTER;
        assert_eq!(
            validate(&validator, &old, due).await.unwrap_err(),
            TokenError::UnknownKey
        );
        assert_eq!(issuer.fetches(), 2);
        assert!(validate(&validator, &new, due).await.is_ok());
        assert_eq!(issuer.fetches(), 2, "the new key came with the refresh");
    }

    #[tokio::test]
    async fn while_fetching_fails_the_last_set_serves_until_it_is_an_hour_old() {
        let key = k1();
        let issuer = Issuer::start().await;
        issuer.publish(Some(&[&key]));
        let validator = issuer.validator();
        let token = issuer.token(&key);
        let t0 = Instant::now();
        assert!(validate(&validator, &token, t0).await.is_ok());

        issuer.publish(None);
        let due = t0 + KEYS_REFRESH_AFTER;
        assert!(validate(&validator, &token, due).await.is_ok());
        assert_eq!(issuer.fetches(), 2, "the refresh was tried");
        let soon = due + REFETCH_INTERVAL - Duration::from_secs(1);
        assert!(validate(&validator, &token, soon).await.is_ok());
        assert_eq!(issuer.fetches(), 2, "a failed fetch waits its turn too");

        let too_old = t0 + KEYS_MAX_AGE;
        match validate(&validator, &token, too_old).await {
            Err(TokenError::KeysUnavailable(why)) => assert!(why.contains("500"), "{why}"),
            other => panic!("a set an hour old still served: {other:?}"),
        }
        assert_eq!(issuer.fetches(), 3);
    }

    #[tokio::test]
    async fn without_keys_many_tokens_make_one_fetch_a_minute() {
        let key = k1();
        let issuer = Issuer::start().await;
        let validator = Arc::new(issuer.validator());
        let token = issuer.token(&key);
        let t0 = Instant::now();
        // Eight tokens at once while the issuer's JWKS fails: they share one fetch.
        let mut checks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (validator, token) = (Arc::clone(&validator), token.clone());
            checks.spawn(async move { validate(&validator, &token, t0).await });
        }
        for checked in checks.join_all().await {
            assert!(
                matches!(checked, Err(TokenError::KeysUnavailable(_))),
                "{checked:?}"
            );
        }
        assert_eq!(issuer.fetches(), 1);
        let soon = t0 + REFETCH_INTERVAL - Duration::from_secs(1);
        assert!(validate(&validator, &token, soon).await.is_err());
        assert_eq!(
            issuer.fetches(),
            1,
            "a failed fetch counts against the bound"
        );

        // A minute on, the issuer is back and the next token fetches its keys.
        issuer.publish(Some(&[&key]));
        let later = t0 + REFETCH_INTERVAL;
        assert!(validate(&validator, &token, later).await.is_ok());
        assert_eq!(issuer.fetches(), 2);
    }

    #[tokio::test]
    async fn a_refresh_in_flight_does_not_hold_back_a_token_whose_key_is_cached() {
        let key = k1();
        let issuer = Issuer::start().await;
        issuer.publish(Some(&[&key]));
        let validator = Arc::new(issuer.validator());
        let token = issuer.token(&key);
        let t0 = Instant::now();
        assert!(validate(&validator, &token, t0).await.is_ok());

        // The issuer stalls; a token at the refresh time starts the refresh and waits for it.
        let stalled = issuer.hold.write().await;
        let due = t0 + KEYS_REFRESH_AFTER;
        let refreshing = tokio::spawn({
            let (validator, token) = (Arc::clone(&validator), token.clone());
            async move { validate(&validator, &token, due).await }
        });
        tokio::time::timeout(BOUND, async {
            while issuer.fetches() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the refresh reaches the issuer");

        // Another token with the same key is answered from the cache meanwhile (the refresh
        // stays in flight until the issuer answers, or for the fetch's 5 s bound).
        assert!(validate(&validator, &token, due).await.is_ok());
        assert!(!refreshing.is_finished(), "the refresh is still in flight");
        drop(stalled);
        assert!(refreshing.await.unwrap().is_ok());
        assert_eq!(issuer.fetches(), 2, "one refresh for both");
    }

    #[test]
    fn the_metadata_is_used_only_when_it_is_the_issuers_and_its_keys_are_secure() {
        const ISSUER: &str = "https://auth.example.test";
        let metadata =
            |issuer: Value, jwks_uri: &str| json!({"issuer": issuer, "jwks_uri": jwks_uri});
        for (issuer, jwks) in [
            (json!(ISSUER), "https://keys.example.test/jwks"),
            (json!(ISSUER), "http://127.0.0.1:9000/jwks"),
        ] {
            let url = jwks_uri(&metadata(issuer, jwks), ISSUER).unwrap();
            assert_eq!(url.as_str(), jwks);
        }
        for (issuer, jwks, why) in [
            (
                json!("https://evil.test"),
                "https://keys.example.test/jwks",
                "RFC 8414",
            ),
            (
                json!("https://auth.example.test/"),
                "https://keys.example.test/jwks",
                "RFC 8414",
            ),
            (Value::Null, "https://keys.example.test/jwks", "RFC 8414"),
            (
                json!(ISSUER),
                "http://keys.example.test/jwks",
                "neither https",
            ),
        ] {
            let error = jwks_uri(&metadata(issuer.clone(), jwks), ISSUER).unwrap_err();
            assert!(error.contains(why), "{issuer} {jwks}: {error}");
        }
    }

    #[test]
    fn only_an_access_tokens_typ_and_no_crit_are_accepted() {
        let with = |typ: Option<&str>, crit: Option<Vec<String>>| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.typ = typ.map(str::to_owned);
            header.crit = crit;
            acceptable(&header)
        };
        for typ in [
            None,
            Some("JWT"),
            Some("at+jwt"),
            Some("application/AT+JWT"),
            Some("jwt"),
        ] {
            assert_eq!(with(typ, None), Ok(()), "{typ:?}");
        }
        for typ in [
            "logout+jwt",
            "application/logout+jwt",
            "secevent+jwt",
            "JWS",
            "",
        ] {
            assert!(with(Some(typ), None).is_err(), "{typ}");
        }
        assert!(with(None, Some(vec!["exp".to_owned()])).is_err());
        assert!(with(None, Some(Vec::new())).is_err());
    }

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
