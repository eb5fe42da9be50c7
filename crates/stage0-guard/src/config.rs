//! The server's configuration, read once at start from the environment.
//!
//! Library code never reads `std::env`: [`Config::from_lookup`] takes a lookup function, so tests
//! pass a map and the binary passes the environment, with what `./.env` may add under it (the
//! server crate's `src/dotenv.rs`, which this library does not use). Variables and defaults follow
//! `docs/contract.md` §5.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::approval::state::{self, KeyError, StateKey};
use crate::approval::{Approvals, DEFAULT_APPROVAL_TIMEOUT_S};
use crate::audit::database::DatabaseUrl;
use crate::audit::{self, AuditConfig, AuditLog};
use crate::claims::{ActorRole, Operator};
use crate::escape::escaped;
use crate::guard::{Guard, UnenforcedGuardrails};
use crate::http_server::HttpConfig;
use crate::oauth::OAuthConfig;
use crate::policy::PolicyClient;
use crate::policy::cedar::LoadError;
use crate::policy::http::{ApiKey, HttpPolicyClient};
use crate::policy::local::{LocalPolicy, PolicyFiles};

/// The Stage0 API used when `STAGE0_BASE_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.signalpulse.org";

/// The whole-request bound of one `/check` when `STAGE0_TIMEOUT_MS` is not set, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// Everything the server reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `STAGE0_API_KEY`; `None` (unset or empty) selects the simulator.
    pub api_key: Option<ApiKey>,
    /// `STAGE0_BASE_URL`, an `http` or `https` URL without query or fragment; `/check` is appended
    /// to its path.
    pub base_url: Url,
    /// `STAGE0_TIMEOUT_MS`: the bound on one whole `/check` exchange.
    pub timeout: Duration,
    /// `STAGE0_DEBUG=true` (or `1`): log at debug level unless `RUST_LOG` says otherwise.
    pub debug: bool,
    /// `STAGE0_ACTOR_ROLE` (default `viewer`) and `STAGE0_ACTOR_ID` (optional): the principal
    /// the agent acts for, set by whoever configures the server, never by tool arguments.
    pub operator: Operator,
    /// `STAGE0_APPROVALS` (`on` | `off`, default `on`; over HTTP with OAuth, default `off`: see
    /// [`Config::serving_http`]) and `STAGE0_APPROVAL_TIMEOUT_S` (whole seconds from 1, default
    /// 300): whether and how long to ask a human about a `DEFER`.
    pub approvals: Approvals,
    /// Whether `STAGE0_APPROVALS` was set (to `on` or `off`) rather than left to its default.
    pub approvals_set: bool,
    /// `STAGE0_AUDIT_LOG` and `STAGE0_AUDIT_SYNC`: where and how durably to keep the audit log.
    pub audit: AuditConfig,
    /// `STAGE0_REQUEST_STATE_KEY` (hex or base64, at least 32 bytes): the key that seals MRTR
    /// approval states, so that servers sharing it accept each other's states and a restart
    /// keeps them; `None` (the default) for a random key per process. Never shown by `Debug`.
    pub request_state_key: Option<StateKey>,
    /// `STAGE0_UNENFORCED_GUARDRAILS` (`warn` | `deny`, default `warn`): what to do with an
    /// `ALLOW` carrying a guardrail the tool's body does not enforce.
    pub unenforced_guardrails: UnenforcedGuardrails,
    /// `STAGE0_MAX_CALLS_IN_FLIGHT` (a whole number from 1, default
    /// [`DEFAULT_MAX_CALLS_IN_FLIGHT`](crate::transport::DEFAULT_MAX_CALLS_IN_FLIGHT)): how many
    /// requests the stdio transport takes at once; one more is refused at once
    /// ([`Guard::with_max_calls_in_flight`]).
    pub max_calls_in_flight: usize,
    /// `STAGE0_POLICY` (a `.cedar` file or a folder of them) and `STAGE0_POLICY_SCHEMA` (a Cedar
    /// schema; the shipped one when unset): the local Cedar policy, which selects the `cedar`
    /// policy decision point (`cedar+stage0` with an API key).
    pub policy_files: Option<PolicyFiles>,
    /// `STAGE0_POLICY_SHADOW`: a candidate Cedar policy decided beside the enforcing one on every
    /// call and never enforced (validated against the same schema). Needs `STAGE0_POLICY`.
    pub shadow_policy_files: Option<PolicyFiles>,
    /// The HTTP mode's settings (`STAGE0_HTTP_*`, `STAGE0_PUBLIC_URL`, `STAGE0_OAUTH_*`); only
    /// `mcp-server-stage0 http` uses them.
    pub http: HttpConfig,
}

/// The address the HTTP mode listens on when `STAGE0_HTTP_LISTEN` is not set.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// The role claim of a bearer token when `STAGE0_OAUTH_ROLE_CLAIM` is not set.
pub const DEFAULT_ROLE_CLAIM: &str = "stage0_role";

/// Requests at once over HTTP, in total, when `STAGE0_HTTP_MAX_CALLS_IN_FLIGHT` is not set.
pub const DEFAULT_HTTP_MAX_CALLS_IN_FLIGHT: usize = 64;

/// Requests at once over HTTP per principal, when `STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL` is not
/// set.
pub const DEFAULT_HTTP_MAX_CALLS_PER_PRINCIPAL: usize = 16;

/// Bytes of request bodies at once over HTTP when `STAGE0_HTTP_MAX_BYTES_IN_FLIGHT` is not set:
/// 64 MiB, sixteen of the largest calls.
pub const DEFAULT_HTTP_MAX_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// The deadline of one HTTP request when `STAGE0_HTTP_REQUEST_TIMEOUT_S` is not set, in seconds:
/// longer than the default wait for a human's approval (300 s).
pub const DEFAULT_HTTP_REQUEST_TIMEOUT_S: usize = 360;

/// How long an HTTP client may take to send a request's headers, and how long a connection may
/// idle between requests, when `STAGE0_HTTP_READ_TIMEOUT_S` is not set, in seconds.
pub const DEFAULT_HTTP_READ_TIMEOUT_S: usize = 30;

/// How long an HTTP client may take to send a request's body once its headers are in, when
/// `STAGE0_HTTP_BODY_TIMEOUT_S` is not set, in seconds: a 4 MiB body at 70 KiB/s.
pub const DEFAULT_HTTP_BODY_TIMEOUT_S: usize = 60;

/// Connections served at once over HTTP when `STAGE0_HTTP_MAX_CONNECTIONS` is not set: half of
/// the 1,024 file descriptors a process commonly has.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 512;

/// Open 2025-11-25 sessions in total when `STAGE0_HTTP_MAX_SESSIONS` is not set (each holds a
/// worker of some 72 KiB: 1,024 of them about 72 MiB).
pub const DEFAULT_HTTP_MAX_SESSIONS: usize = 1024;

/// Open 2025-11-25 sessions per principal when `STAGE0_HTTP_MAX_SESSIONS_PER_PRINCIPAL` is not
/// set.
pub const DEFAULT_HTTP_MAX_SESSIONS_PER_PRINCIPAL: usize = 16;

/// The shortest life of a 2025-11-25 session without traffic: 2 minutes (rmcp's default is 5).
pub const HTTP_SESSION_IDLE: Duration = Duration::from_secs(120);

/// Why [`Config::policy`] or [`Config::guard`] could not set up the policy decision point.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTP client for Stage0 could not be built.
    #[error("the HTTP client for Stage0 cannot be built: {0}")]
    Http(#[from] reqwest::Error),
    /// The Cedar policy or schema is invalid or unreadable; carries every diagnostic.
    #[error("the Cedar policy cannot be used: {0}")]
    Policy(#[from] LoadError),
    /// The thread that writes the audit database, or its runtime, could not be started.
    #[error("the audit database writer cannot be started: {0}")]
    AuditWriter(#[source] std::io::Error),
}

/// Why the configuration cannot be used; the server refuses to start with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `STAGE0_TIMEOUT_MS` is not a whole number of milliseconds from 1; carries the value.
    #[error("`STAGE0_TIMEOUT_MS` must be a whole number of milliseconds from 1, got `{0}`")]
    InvalidTimeout(String),
    /// `STAGE0_BASE_URL` is not an `http` or `https` URL with a host and without query or
    /// fragment; carries the value, with any userinfo redacted ([`redact_userinfo`]).
    #[error("`STAGE0_BASE_URL` must be an http or https URL without query or fragment, got `{0}`")]
    InvalidBaseUrl(String),
    /// `STAGE0_ACTOR_ROLE` is not `viewer`, `developer` or `admin` (in any case); carries the
    /// value.
    #[error("`STAGE0_ACTOR_ROLE` must be `viewer`, `developer` or `admin`, got `{0}`")]
    InvalidActorRole(String),
    /// `STAGE0_APPROVALS` is not `on` or `off`; carries the value.
    #[error("`STAGE0_APPROVALS` must be `on` or `off`, got `{0}`")]
    InvalidApprovals(String),
    /// `STAGE0_APPROVAL_TIMEOUT_S` is not a whole number of seconds from 1; carries the value.
    #[error("`STAGE0_APPROVAL_TIMEOUT_S` must be a whole number of seconds from 1, got `{0}`")]
    InvalidApprovalTimeout(String),
    /// `STAGE0_AUDIT_SYNC` is not `on` or `off`; carries the value.
    #[error("`STAGE0_AUDIT_SYNC` must be `on` or `off`, got `{0}`")]
    InvalidAuditSync(String),
    /// `STAGE0_DATABASE_URL` cannot be used.
    #[error("`STAGE0_DATABASE_URL`: {0}")]
    InvalidDatabaseUrl(audit::database::InvalidDatabaseUrl),
    /// `STAGE0_DATABASE_URL` is set beside a variable that only applies to the file log.
    #[error(
        "`STAGE0_DATABASE_URL` puts the audit log in PostgreSQL, so `{0}` cannot be set beside it \
         (the database commits every record synchronously)"
    )]
    FileLogVariableWithDatabase(&'static str),
    /// The value of `STAGE0_MAX_CALLS_IN_FLIGHT`, which is not a whole number from 1.
    #[error("`STAGE0_MAX_CALLS_IN_FLIGHT` must be a whole number of calls from 1, got `{0}`")]
    InvalidMaxCallsInFlight(String),
    /// `STAGE0_AUDIT_LOG` is not set and the platform has no per-user folder for the default log
    /// ([`audit::default_path`] is `None`).
    #[error(
        "`STAGE0_AUDIT_LOG` is not set and this user has no home folder for the default audit \
         log; set it to a file path, or to `off`"
    )]
    NoAuditLogPath,
    /// `STAGE0_UNENFORCED_GUARDRAILS` is not `warn` or `deny`; carries the value.
    #[error("`STAGE0_UNENFORCED_GUARDRAILS` must be `warn` or `deny`, got `{0}`")]
    InvalidUnenforcedGuardrails(String),
    /// `STAGE0_POLICY_SHADOW` or `STAGE0_POLICY_SCHEMA` is set without `STAGE0_POLICY`; carries
    /// the variable's name.
    #[error("`{0}` needs `STAGE0_POLICY`: there is no enforcing Cedar policy to put it beside")]
    PolicyVariableWithoutPolicy(&'static str),
    /// An HTTP-mode variable is unusable; carries the variable's name and value.
    #[error("`{0}` is unusable: {1}")]
    InvalidHttpSetting(&'static str, String),
    /// `STAGE0_OAUTH_ISSUER` or `STAGE0_OAUTH_JWKS_URL` is a URL whose keys anyone on the path
    /// could replace: plain `http` to a host other than loopback
    /// ([`secure_transport`](crate::oauth::secure_transport)); carries the variable's name and
    /// value.
    #[error("`{0}` must be an https URL (plain http only to a loopback host), got `{1}`")]
    InsecureOAuthUrl(&'static str, String),
    /// `STAGE0_REQUEST_STATE_KEY` is not hex or base64 of at least 32 bytes; the value is never
    /// shown.
    #[error("`STAGE0_REQUEST_STATE_KEY` is unusable (its value is not shown): {0}")]
    InvalidRequestStateKey(KeyError),
    /// `STAGE0_REQUEST_STATE_KEY` is set while `STAGE0_AUDIT_LOG=off` (and no
    /// `STAGE0_DATABASE_URL`): the spent nonces that keep a state single-use are remembered
    /// across restarts and servers only through the audit log, so without one a state the key
    /// opens could be answered again after a restart, or through another server.
    #[error(
        "`STAGE0_REQUEST_STATE_KEY` needs an audit log, but `STAGE0_AUDIT_LOG` is `off`: the \
         log is where spent approval states are remembered, so without it a state could be \
         answered again after a restart or through another server holding the key; keep the \
         audit log on (or set `STAGE0_DATABASE_URL`), or unset the key"
    )]
    RequestStateKeyWithoutAuditLog,
}

/// `url` with its userinfo (`user:password@`) replaced by `<redacted>@`, for logs and errors.
///
/// A URL with an authority is read as a URL; any other text (it may not parse, or parse as a
/// scheme and a path, as `user:password@host` does) loses everything before its last `@`, after
/// the `://` if there is one.
pub fn redact_userinfo(url: &str) -> Cow<'_, str> {
    if let Ok(mut parsed) = Url::parse(url)
        && parsed.has_authority()
    {
        if parsed.username().is_empty() && parsed.password().is_none() {
            return Cow::Borrowed(url);
        }
        if parsed.set_username("").is_ok() && parsed.set_password(None).is_ok() {
            let cleared = parsed.to_string();
            if let Some((scheme, rest)) = cleared.split_once("://") {
                return Cow::Owned(format!("{scheme}://<redacted>@{rest}"));
            }
        }
    }
    let start = url.find("://").map_or(0, |at| at + 3);
    match url[start..].rfind('@') {
        Some(at) => Cow::Owned(format!("{}<redacted>{}", &url[..start], &url[start + at..])),
        None => Cow::Borrowed(url),
    }
}

impl Config {
    /// Reads the configuration through `lookup` (a variable name → its value, if set).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the variable when `STAGE0_TIMEOUT_MS`, `STAGE0_BASE_URL`,
    /// `STAGE0_ACTOR_ROLE`, `STAGE0_APPROVALS`, `STAGE0_APPROVAL_TIMEOUT_S`, `STAGE0_AUDIT_SYNC`
    /// or `STAGE0_MAX_CALLS_IN_FLIGHT` is set to something unusable, or when `STAGE0_AUDIT_LOG`
    /// is not set and there is no default folder for it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let base = set("STAGE0_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let base_url = Url::parse(&base)
            .ok()
            .filter(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.has_host()
                    && url.query().is_none()
                    && url.fragment().is_none()
            })
            .ok_or_else(|| ConfigError::InvalidBaseUrl(redact_userinfo(&base).into_owned()))?;

        let timeout_ms = match set("STAGE0_TIMEOUT_MS") {
            None => DEFAULT_TIMEOUT_MS,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms >= 1)
                .ok_or(ConfigError::InvalidTimeout(raw))?,
        };

        let actor_role = match set("STAGE0_ACTOR_ROLE") {
            None => ActorRole::Viewer,
            Some(raw) => raw
                .parse::<ActorRole>()
                .map_err(|_| ConfigError::InvalidActorRole(raw))?,
        };

        let approval_timeout_s = match set("STAGE0_APPROVAL_TIMEOUT_S") {
            None => DEFAULT_APPROVAL_TIMEOUT_S,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= 1)
                .ok_or(ConfigError::InvalidApprovalTimeout(raw))?,
        };
        let approvals = match set("STAGE0_APPROVALS").as_deref() {
            None | Some("on") => Approvals::Ask {
                timeout: Duration::from_secs(approval_timeout_s),
            },
            Some("off") => Approvals::Off,
            Some(other) => return Err(ConfigError::InvalidApprovals(other.to_owned())),
        };

        let database = set("STAGE0_DATABASE_URL")
            .map(|url| url.parse::<DatabaseUrl>())
            .transpose()
            .map_err(ConfigError::InvalidDatabaseUrl)?;
        let path = match set("STAGE0_AUDIT_LOG") {
            Some(_) if database.is_some() => {
                return Err(ConfigError::FileLogVariableWithDatabase("STAGE0_AUDIT_LOG"));
            }
            Some(off) if off == "off" => None,
            Some(path) => Some(PathBuf::from(path)),
            None if database.is_some() => None,
            None => Some(audit::default_path().ok_or(ConfigError::NoAuditLogPath)?),
        };
        let max_calls_in_flight = match set("STAGE0_MAX_CALLS_IN_FLIGHT") {
            None => crate::transport::DEFAULT_MAX_CALLS_IN_FLIGHT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|calls| *calls >= 1)
                .ok_or(ConfigError::InvalidMaxCallsInFlight(raw))?,
        };
        if database.is_some() && set("STAGE0_AUDIT_SYNC").is_some() {
            return Err(ConfigError::FileLogVariableWithDatabase(
                "STAGE0_AUDIT_SYNC",
            ));
        }
        let sync = match set("STAGE0_AUDIT_SYNC").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => return Err(ConfigError::InvalidAuditSync(other.to_owned())),
        };

        let schema = set("STAGE0_POLICY_SCHEMA").map(PathBuf::from);
        let policy_files = set("STAGE0_POLICY").map(|policies| PolicyFiles {
            policies: PathBuf::from(policies),
            schema: schema.clone(),
        });
        let shadow_policy_files = set("STAGE0_POLICY_SHADOW").map(|policies| PolicyFiles {
            policies: PathBuf::from(policies),
            schema: schema.clone(),
        });
        if policy_files.is_none() {
            if shadow_policy_files.is_some() {
                return Err(ConfigError::PolicyVariableWithoutPolicy(
                    "STAGE0_POLICY_SHADOW",
                ));
            }
            if schema.is_some() {
                return Err(ConfigError::PolicyVariableWithoutPolicy(
                    "STAGE0_POLICY_SCHEMA",
                ));
            }
        }

        let http = http_config(&set, Duration::from_secs(approval_timeout_s))?;
        let request_state_key = set(state::KEY_ENV)
            .map(|key| StateKey::parse(&key))
            .transpose()
            .map_err(ConfigError::InvalidRequestStateKey)?;
        if request_state_key.is_some() && path.is_none() && database.is_none() {
            return Err(ConfigError::RequestStateKeyWithoutAuditLog);
        }

        Ok(Config {
            http,
            policy_files,
            shadow_policy_files,
            api_key: set("STAGE0_API_KEY").map(ApiKey::new),
            base_url,
            timeout: Duration::from_millis(timeout_ms),
            debug: set("STAGE0_DEBUG").is_some_and(|v| v == "true" || v == "1"),
            operator: Operator {
                actor_role,
                actor_id: set("STAGE0_ACTOR_ID"),
            },
            approvals,
            approvals_set: set("STAGE0_APPROVALS").is_some(),
            audit: AuditConfig {
                path,
                sync,
                database,
            },
            unenforced_guardrails: match set("STAGE0_UNENFORCED_GUARDRAILS").as_deref() {
                None | Some("warn") => UnenforcedGuardrails::Warn,
                Some("deny") => UnenforcedGuardrails::Deny,
                Some(other) => {
                    return Err(ConfigError::InvalidUnenforcedGuardrails(other.to_owned()));
                }
            },
            request_state_key,
            max_calls_in_flight,
        })
    }
}

/// The HTTP mode's settings, read through `set` (a variable's trimmed, non-empty value), for
/// approvals that wait at most `approval_timeout` for a human.
fn http_config(
    set: &impl Fn(&str) -> Option<String>,
    approval_timeout: Duration,
) -> Result<HttpConfig, ConfigError> {
    let invalid = |name: &'static str, value: String| ConfigError::InvalidHttpSetting(name, value);
    // A whole number from 1 (a count, a number of seconds).
    let count = |name: &'static str, default: usize| match set(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid(name, raw)),
    };
    let url = |name: &'static str| {
        set(name)
            .map(|raw| {
                Url::parse(&raw)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                    .ok_or_else(|| invalid(name, redact_userinfo(&raw).into_owned()))
            })
            .transpose()
    };
    let listen = set("STAGE0_HTTP_LISTEN").unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
    let listen = listen
        .parse()
        .map_err(|_| invalid("STAGE0_HTTP_LISTEN", listen.clone()))?;
    // The issuer's metadata and keys decide who may call: https, or http to loopback only.
    let oauth_url = |name: &'static str| match url(name)? {
        Some(url) if !crate::oauth::secure_transport(&url) => Err(ConfigError::InsecureOAuthUrl(
            name,
            redact_userinfo(&set(name).unwrap_or_default()).into_owned(),
        )),
        checked => Ok(checked),
    };
    let public_url = url("STAGE0_PUBLIC_URL")?;
    let jwks_url = oauth_url("STAGE0_OAUTH_JWKS_URL")?;
    oauth_url("STAGE0_OAUTH_ISSUER")?;
    let oauth = set("STAGE0_OAUTH_ISSUER").map(|issuer| OAuthConfig {
        issuer,
        jwks_url,
        audience: public_url
            .as_ref()
            .map(crate::http_server::resource_url)
            .unwrap_or_default(),
        role_claim: set("STAGE0_OAUTH_ROLE_CLAIM").unwrap_or_else(|| DEFAULT_ROLE_CLAIM.to_owned()),
    });
    Ok(HttpConfig {
        listen,
        public_url,
        oauth,
        max_calls_in_flight: count(
            "STAGE0_HTTP_MAX_CALLS_IN_FLIGHT",
            DEFAULT_HTTP_MAX_CALLS_IN_FLIGHT,
        )?,
        max_calls_per_principal: count(
            "STAGE0_HTTP_MAX_CALLS_PER_PRINCIPAL",
            DEFAULT_HTTP_MAX_CALLS_PER_PRINCIPAL,
        )?,
        max_bytes_in_flight: count(
            "STAGE0_HTTP_MAX_BYTES_IN_FLIGHT",
            DEFAULT_HTTP_MAX_BYTES_IN_FLIGHT,
        )?,
        request_timeout: Duration::from_secs(count(
            "STAGE0_HTTP_REQUEST_TIMEOUT_S",
            DEFAULT_HTTP_REQUEST_TIMEOUT_S,
        )? as u64),
        read_timeout: Duration::from_secs(count(
            "STAGE0_HTTP_READ_TIMEOUT_S",
            DEFAULT_HTTP_READ_TIMEOUT_S,
        )? as u64),
        body_timeout: Duration::from_secs(count(
            "STAGE0_HTTP_BODY_TIMEOUT_S",
            DEFAULT_HTTP_BODY_TIMEOUT_S,
        )? as u64),
        max_connections: count("STAGE0_HTTP_MAX_CONNECTIONS", DEFAULT_HTTP_MAX_CONNECTIONS)?,
        max_sessions: count("STAGE0_HTTP_MAX_SESSIONS", DEFAULT_HTTP_MAX_SESSIONS)?,
        max_sessions_per_principal: count(
            "STAGE0_HTTP_MAX_SESSIONS_PER_PRINCIPAL",
            DEFAULT_HTTP_MAX_SESSIONS_PER_PRINCIPAL,
        )?,
        session_idle_timeout: HTTP_SESSION_IDLE.max(approval_timeout + Duration::from_secs(30)),
        token_file: set("STAGE0_HTTP_TOKEN_FILE").map(PathBuf::from),
    })
}

impl Config {
    /// The configuration as `mcp-server-stage0 http` serves it. With OAuth
    /// ([`HttpConfig::oauth`], `STAGE0_OAUTH_ISSUER`), a `DEFER` is not put to the client unless
    /// `STAGE0_APPROVALS=on` says so: over HTTP the client that answers the approval form is the
    /// caller whose call was deferred, with the caller's own token, so its answer is
    /// self-approval, not a human's review (`docs/http.md`). So there approvals are off unless
    /// the operator turned them on; any other configuration is returned as it is.
    pub fn serving_http(self) -> Self {
        if self.http.oauth.is_some() && !self.approvals_set {
            Config {
                approvals: Approvals::Off,
                ..self
            }
        } else {
            self
        }
    }

    /// The policy decision point this configuration selects: the local Cedar policy when
    /// [`policy_files`](Config::policy_files) names one (loaded and validated now, with its
    /// shadow), then Stage0 too when there is an API key; otherwise Stage0 at
    /// [`base_url`](Config::base_url) when there is an API key, the simulator when not. There is
    /// no fallback from one to another.
    ///
    /// # Errors
    ///
    /// [`SetupError::Policy`] with Cedar's diagnostics when a policy or the schema is invalid;
    /// [`SetupError::Http`] when the HTTP client for Stage0 cannot be built.
    pub fn policy(&self) -> Result<PolicyClient, SetupError> {
        let stage0 = match &self.api_key {
            Some(key) => Some(HttpPolicyClient::new(
                &self.base_url,
                self.timeout,
                key.clone(),
            )?),
            None => None,
        };
        let Some(files) = &self.policy_files else {
            return Ok(stage0.map_or(PolicyClient::Simulator, PolicyClient::Live));
        };
        let local = std::sync::Arc::new(LocalPolicy::load(
            files.clone(),
            self.shadow_policy_files.clone(),
        )?);
        Ok(match stage0 {
            Some(stage0) => PolicyClient::CedarThenStage0(local, stage0),
            None => PolicyClient::Cedar(local),
        })
    }

    /// The guard this configuration describes: the one setup path of the server binary, its
    /// demos and any server built on this crate. It asks [`policy`](Config::policy), vouches
    /// for claims with [`operator`](Config::operator), asks a human as
    /// [`approvals`](Config::approvals) says, and records in the audit log at `audit.path`
    /// (made absolute, since a client may start the server in any folder).
    ///
    /// An audit log that cannot be opened does not fail the setup: the error is logged and the
    /// guard denies every call (`DENY` / `AUDIT_UNAVAILABLE`), so the client sees why. That is
    /// failing closed, and the same for every server built here.
    ///
    /// # Errors
    ///
    /// [`SetupError`] as for [`policy`](Config::policy): an invalid Cedar policy stops the
    /// setup, with its diagnostics.
    pub fn guard(&self) -> Result<Guard, SetupError> {
        let mut guard = Guard::new(self.policy()?, self.operator.clone(), self.approvals)
            .with_max_calls_in_flight(self.max_calls_in_flight)
            .with_unenforced_guardrails(self.unenforced_guardrails);
        if let Some(key) = &self.request_state_key {
            // The server cannot see who else holds the key, nor where they record.
            tracing::warn!(
                "STAGE0_REQUEST_STATE_KEY is set: every server holding this key must record in \
                 this same audit log (this file, or this database), or an approval state one of \
                 them spent can be answered again through another"
            );
            guard = guard.with_state_key(key.clone());
        }
        Ok(match (&self.audit.database, &self.audit.path) {
            (Some(url), _) => guard.with_audit(open_audit_database(url)?),
            (None, Some(path)) => guard.with_audit(open_audit_log(path, self.audit.sync)),
            (None, None) => guard,
        })
    }
}

/// Opens the audit chain and attempt ledger in the database at `url`. A database that cannot be
/// reached now does not stop the server: its calls are denied until it can be.
fn open_audit_database(url: &DatabaseUrl) -> Result<AuditLog, SetupError> {
    AuditLog::open_database(url.clone()).map_err(SetupError::AuditWriter)
}

/// Opens the audit log at `path` (made absolute), or makes the unavailable log that fails every
/// call closed when it cannot be opened.
fn open_audit_log(path: &std::path::Path, sync: bool) -> AuditLog {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match AuditLog::open(&path, sync) {
        Ok((log, opened)) => {
            tracing::info!(
                path = %escaped(path.display()),
                seq = opened.seq,
                hash = %opened.hash,
                recovered_torn_line = ?opened.recovered,
                "audit log open"
            );
            log
        }
        Err(error) => {
            tracing::error!(
                error = %escaped(&error),
                "audit log unavailable: every tool call will be denied"
            );
            AuditLog::unavailable(&path, &error)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_select_the_simulator_with_a_five_second_deadline() {
        let config = config(&[]).unwrap();
        assert!(config.api_key.is_none());
        assert_eq!(config.base_url.as_str(), "https://api.signalpulse.org/");
        assert_eq!(config.timeout, Duration::from_millis(5000));
        assert!(!config.debug);
        assert_eq!(config.operator, Operator::default());
        assert_eq!(
            config.approvals,
            Approvals::Ask {
                timeout: Duration::from_secs(300)
            }
        );
        assert_eq!(config.audit.path, audit::default_path());
        assert!(config.audit.path.unwrap().ends_with("audit.jsonl"));
        assert!(config.audit.sync);
        assert_eq!(config.max_calls_in_flight, 64);
    }

    #[test]
    fn an_empty_api_key_selects_the_simulator() {
        assert!(
            config(&[("STAGE0_API_KEY", "  ")])
                .unwrap()
                .api_key
                .is_none()
        );
    }

    #[test]
    fn every_variable_is_read() {
        let config = config(&[
            ("STAGE0_API_KEY", "sk-test"),
            ("STAGE0_BASE_URL", "http://127.0.0.1:9999/v1"),
            ("STAGE0_TIMEOUT_MS", "250"),
            ("STAGE0_DEBUG", "true"),
            ("STAGE0_ACTOR_ROLE", "developer"),
            ("STAGE0_ACTOR_ID", "alice@example.test"),
            ("STAGE0_APPROVAL_TIMEOUT_S", "30"),
            ("STAGE0_AUDIT_LOG", "/var/log/stage0/audit.jsonl"),
            ("STAGE0_AUDIT_SYNC", "off"),
            ("STAGE0_MAX_CALLS_IN_FLIGHT", "8"),
        ])
        .unwrap();
        assert_eq!(config.max_calls_in_flight, 8);
        assert_eq!(config.api_key.unwrap().expose(), "sk-test");
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9999/v1");
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert!(config.debug);
        assert_eq!(
            config.operator,
            Operator {
                actor_role: ActorRole::Developer,
                actor_id: Some("alice@example.test".to_owned()),
            }
        );
        assert_eq!(
            config.approvals,
            Approvals::Ask {
                timeout: Duration::from_secs(30)
            }
        );
        assert_eq!(
            config.audit,
            AuditConfig {
                path: Some(PathBuf::from("/var/log/stage0/audit.jsonl")),
                sync: false,
                database: None,
            }
        );
    }

    #[test]
    fn a_cedar_policy_and_its_schema_and_shadow_are_read_together() {
        let config = config(&[
            ("STAGE0_POLICY", "/etc/stage0/policies"),
            ("STAGE0_POLICY_SCHEMA", "/etc/stage0/schema.cedarschema"),
            ("STAGE0_POLICY_SHADOW", "/etc/stage0/candidate.cedar"),
        ])
        .unwrap();
        let schema = Some(PathBuf::from("/etc/stage0/schema.cedarschema"));
        assert_eq!(
            config.policy_files,
            Some(PolicyFiles {
                policies: PathBuf::from("/etc/stage0/policies"),
                schema: schema.clone(),
            })
        );
        assert_eq!(
            config.shadow_policy_files,
            Some(PolicyFiles {
                policies: PathBuf::from("/etc/stage0/candidate.cedar"),
                schema,
            })
        );
    }

    #[test]
    fn a_shadow_or_a_schema_without_a_policy_is_refused_by_name() {
        assert_eq!(
            config(&[("STAGE0_POLICY_SHADOW", "candidate.cedar")]).unwrap_err(),
            ConfigError::PolicyVariableWithoutPolicy("STAGE0_POLICY_SHADOW")
        );
        assert_eq!(
            config(&[("STAGE0_POLICY_SCHEMA", "schema.cedarschema")]).unwrap_err(),
            ConfigError::PolicyVariableWithoutPolicy("STAGE0_POLICY_SCHEMA")
        );
    }

    #[test]
    fn a_policy_selects_cedar_and_with_a_key_cedar_then_stage0() {
        let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/simulator.cedar");
        let cedar = config(&[("STAGE0_POLICY", policy)]).unwrap();
        assert_eq!(cedar.policy().unwrap().mode(), crate::policy::Mode::Cedar);
        let layered = config(&[("STAGE0_POLICY", policy), ("STAGE0_API_KEY", "sk-test")]).unwrap();
        assert_eq!(
            layered.policy().unwrap().mode(),
            crate::policy::Mode::CedarStage0
        );
        let missing = config(&[("STAGE0_POLICY", "/nonexistent/policy.cedar")]).unwrap();
        assert!(matches!(missing.policy(), Err(SetupError::Policy(_))));
    }

    #[test]
    fn the_http_settings_have_defaults_and_unusable_ones_are_refused_by_name() {
        let http = config(&[]).unwrap().http;
        assert_eq!(http.listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(http.oauth, None);
        assert_eq!(http.request_timeout, Duration::from_secs(360));
        let oauth = config(&[
            ("STAGE0_OAUTH_ISSUER", "https://auth.example.test"),
            ("STAGE0_PUBLIC_URL", "https://stage0.example.test/"),
        ])
        .unwrap()
        .http
        .oauth
        .unwrap();
        assert_eq!(oauth.audience, "https://stage0.example.test/mcp");
        assert_eq!(oauth.role_claim, DEFAULT_ROLE_CLAIM);
        for (name, value) in [
            ("STAGE0_HTTP_LISTEN", "localhost"),
            ("STAGE0_PUBLIC_URL", "ftp://x"),
            ("STAGE0_HTTP_REQUEST_TIMEOUT_S", "0"),
            ("STAGE0_HTTP_MAX_BYTES_IN_FLIGHT", "lots"),
        ] {
            assert_eq!(
                config(&[(name, value)]).unwrap_err(),
                ConfigError::InvalidHttpSetting(name, value.to_owned())
            );
        }
    }

    #[test]
    fn an_oauth_issuer_or_key_set_over_plain_http_is_refused_off_loopback() {
        for name in ["STAGE0_OAUTH_ISSUER", "STAGE0_OAUTH_JWKS_URL"] {
            let with = |value: &str| {
                config(&[
                    ("STAGE0_OAUTH_ISSUER", "https://auth.example.test"),
                    ("STAGE0_PUBLIC_URL", "https://stage0.example.test"),
                    (name, value),
                ])
            };
            for remote in ["http://auth.example.test", "http://10.0.0.7:8080/jwks"] {
                let error = with(remote).unwrap_err();
                assert_eq!(
                    error,
                    ConfigError::InsecureOAuthUrl(name, remote.to_owned())
                );
                assert!(error.to_string().contains(name), "{error}");
            }
            for accepted in [
                "https://auth.example.test",
                "http://127.0.0.1:9000",
                "http://[::1]:9000/jwks",
                "http://localhost:9000",
            ] {
                assert!(with(accepted).is_ok(), "{name}={accepted}");
            }
            assert_eq!(
                with("auth.example.test").unwrap_err(),
                ConfigError::InvalidHttpSetting(name, "auth.example.test".to_owned())
            );
        }
    }

    #[test]
    fn auditing_can_be_turned_off() {
        assert_eq!(
            config(&[("STAGE0_AUDIT_LOG", "off")]).unwrap().audit.path,
            None
        );
    }

    #[test]
    fn a_database_url_replaces_the_file_log_and_refuses_its_settings() {
        const URL: &str = "postgres://stage0:s3cret@db.internal:5432/audit";
        let audit = config(&[("STAGE0_DATABASE_URL", URL)]).unwrap().audit;
        assert_eq!(audit.path, None);
        assert_eq!(audit.database, Some(URL.parse().unwrap()));
        for (name, value) in [("STAGE0_AUDIT_LOG", "off"), ("STAGE0_AUDIT_SYNC", "on")] {
            assert_eq!(
                config(&[("STAGE0_DATABASE_URL", URL), (name, value)]).err(),
                Some(ConfigError::FileLogVariableWithDatabase(name))
            );
        }
        let Err(refused) = config(&[("STAGE0_DATABASE_URL", "postgres://u:s3cret@h:port/db")])
        else {
            panic!("an unreadable URL is refused");
        };
        assert!(!refused.to_string().contains("s3cret"), "{refused}");
    }

    #[test]
    fn over_http_with_oauth_approvals_are_off_unless_turned_on() {
        let oauth = [
            ("STAGE0_OAUTH_ISSUER", "https://auth.example.test"),
            ("STAGE0_PUBLIC_URL", "https://stage0.example.test/"),
        ];
        let default = config(&oauth).unwrap();
        assert!(matches!(default.approvals, Approvals::Ask { .. }), "stdio");
        assert_eq!(default.serving_http().approvals, Approvals::Off);
        let on = config(&[oauth[0], oauth[1], ("STAGE0_APPROVALS", "on")]).unwrap();
        assert!(matches!(on.serving_http().approvals, Approvals::Ask { .. }));
        let local = config(&[]).unwrap().serving_http();
        assert!(matches!(local.approvals, Approvals::Ask { .. }), "no OAuth");
    }

    #[test]
    fn a_request_state_key_without_an_audit_log_is_refused() {
        let key = ("STAGE0_REQUEST_STATE_KEY", "ab".repeat(32));
        let key = (key.0, key.1.as_str());
        let refused = config(&[key, ("STAGE0_AUDIT_LOG", "off")]).unwrap_err();
        assert_eq!(refused, ConfigError::RequestStateKeyWithoutAuditLog);
        let message = refused.to_string();
        assert!(message.contains("STAGE0_REQUEST_STATE_KEY"), "{message}");
        assert!(message.contains("STAGE0_AUDIT_LOG"), "{message}");
        assert!(!message.contains(key.1), "{message}");
        for kept in [
            ("STAGE0_AUDIT_LOG", "/var/log/stage0/audit.jsonl"),
            (
                "STAGE0_DATABASE_URL",
                "postgres://stage0@db.internal:5432/audit",
            ),
        ] {
            assert!(config(&[key, kept]).unwrap().request_state_key.is_some());
        }
        assert!(
            config(&[key]).unwrap().request_state_key.is_some(),
            "the default log"
        );
    }

    #[test]
    fn approvals_can_be_turned_off() {
        let config = config(&[("STAGE0_APPROVALS", "off")]).unwrap();
        assert_eq!(config.approvals, Approvals::Off);
    }

    #[test]
    fn unusable_values_are_refused_with_the_variable_named() {
        for (name, value) in [
            ("STAGE0_TIMEOUT_MS", "0"),
            ("STAGE0_TIMEOUT_MS", "-5"),
            ("STAGE0_TIMEOUT_MS", "1.5"),
            ("STAGE0_TIMEOUT_MS", "soon"),
            ("STAGE0_BASE_URL", "api.signalpulse.org"),
            ("STAGE0_BASE_URL", "ftp://example.test"),
            ("STAGE0_BASE_URL", "https://example.test/v1?tenant=a"),
            ("STAGE0_ACTOR_ROLE", "root"),
            ("STAGE0_ACTOR_ROLE", "viewer,admin"),
            ("STAGE0_APPROVALS", "maybe"),
            ("STAGE0_APPROVAL_TIMEOUT_S", "0"),
            ("STAGE0_APPROVAL_TIMEOUT_S", "5m"),
            ("STAGE0_AUDIT_SYNC", "sometimes"),
            ("STAGE0_MAX_CALLS_IN_FLIGHT", "0"),
            ("STAGE0_MAX_CALLS_IN_FLIGHT", "many"),
        ] {
            let error = config(&[(name, value)]).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(name), "{message}");
            assert!(message.contains(value), "{message}");
        }
    }

    #[test]
    fn a_base_urls_userinfo_is_never_shown() {
        for (raw, shown) in [
            (
                "https://user:s3cret@example.test/v1",
                "https://<redacted>@example.test/v1",
            ),
            (
                "http://s3cret@127.0.0.1:9",
                "http://<redacted>@127.0.0.1:9/",
            ),
            ("https://example.test/a@b", "https://example.test/a@b"),
            (
                "ftp://user:s3cret@example.test",
                "ftp://<redacted>@example.test/",
            ),
            ("user:s3cret@example.test", "<redacted>@example.test"),
            (
                "https://u:s3cret@example.test/?q=1",
                "https://<redacted>@example.test/?q=1",
            ),
            ("https://u:s3/cret@", "https://<redacted>@"),
        ] {
            assert_eq!(redact_userinfo(raw), shown, "{raw}");
        }
        for refused in [
            "ftp://user:s3cret@example.test",
            "user:s3cret@example.test",
            "https://user:s3cret@example.test/v1?tenant=a",
            "https://user:s3/cret@example.test",
        ] {
            let message = config(&[("STAGE0_BASE_URL", refused)])
                .unwrap_err()
                .to_string();
            assert!(message.contains("STAGE0_BASE_URL"), "{message}");
            assert!(
                !message.contains("s3cret") && !message.contains("cret"),
                "{message}"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_the_api_key() {
        let config = config(&[("STAGE0_API_KEY", "sk-SECRET-1234")]).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("sk-SECRET-1234"), "{printed}");
        assert!(printed.contains("redacted"));
    }
}
