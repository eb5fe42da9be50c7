//! The server's configuration, read once at start from the environment (and `.env`).
//!
//! Library code never reads `std::env`: [`Config::from_lookup`] takes a lookup function, so
//! tests pass a map and the binary passes `std::env::var`. Variables and defaults follow SPEC §5.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

/// The Stage0 API used when `STAGE0_BASE_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.signalpulse.org";

/// The whole-request bound of one `/check` when `STAGE0_TIMEOUT_MS` is not set, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// A Stage0 API key. Its `Debug` and `Display` never show it; only [`ApiKey::expose`] does.
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

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

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
}

/// Why the configuration cannot be used; the server refuses to start with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("`STAGE0_TIMEOUT_MS` must be a whole number of milliseconds from 1, got `{0}`")]
    InvalidTimeout(String),
    #[error("`STAGE0_BASE_URL` must be an http or https URL without query or fragment, got `{0}`")]
    InvalidBaseUrl(String),
}

impl Config {
    /// Reads the configuration through `lookup` (a variable name → its value, if set).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `STAGE0_TIMEOUT_MS` or `STAGE0_BASE_URL` is set to something unusable.
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
            .ok_or_else(|| ConfigError::InvalidBaseUrl(base.clone()))?;

        let timeout_ms = match set("STAGE0_TIMEOUT_MS") {
            None => DEFAULT_TIMEOUT_MS,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms >= 1)
                .ok_or(ConfigError::InvalidTimeout(raw))?,
        };

        Ok(Config {
            api_key: set("STAGE0_API_KEY").map(ApiKey::new),
            base_url,
            timeout: Duration::from_millis(timeout_ms),
            debug: set("STAGE0_DEBUG").is_some_and(|v| v == "true" || v == "1"),
        })
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
        ])
        .unwrap();
        assert_eq!(config.api_key.unwrap().expose(), "sk-test");
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9999/v1");
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert!(config.debug);
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
        ] {
            let error = config(&[(name, value)]).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(name), "{message}");
            assert!(message.contains(value), "{message}");
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
