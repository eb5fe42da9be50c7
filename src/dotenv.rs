//! `./.env`: settings a file in the working folder may add under the operator's environment.
//!
//! Why these rules: an MCP client starts the server in some folder (a cloned repository, the
//! project the agent works on), and whoever can drop a `.env` there — the repository's author, or
//! the agent itself through any file-writing tool — is not the operator who wrote the client's
//! `env` block. Exported into the process as it used to be, such a file could raise
//! `STAGE0_ACTOR_ROLE` to admin, turn the audit log and approvals off, point `STAGE0_BASE_URL` at
//! its own host (which then received the operator's API key and answered `ALLOW`), or set
//! `HTTPS_PROXY` and `SSL_CERT_FILE` and intercept TLS. So the file is read, never exported, and
//! layered under the real environment ([`DotEnv::lookup`]):
//!
//! - only the server's own `STAGE0_*` settings are taken; any other name (a proxy, TLS roots,
//!   `RUST_LOG`, `PATH`…) is ignored, and so is an unknown `STAGE0_*` name;
//! - a variable set in the environment always wins, even set to an empty value;
//! - the file cannot weaken what the environment gives: `STAGE0_ACTOR_ROLE` only `viewer` (the
//!   ceiling when the environment sets none); `off` is refused for `STAGE0_AUDIT_LOG`,
//!   `STAGE0_AUDIT_SYNC` and `STAGE0_APPROVALS`, and `STAGE0_APPROVALS` altogether when the
//!   environment sets `STAGE0_OAUTH_ISSUER` (over HTTP with OAuth approvals are off by default,
//!   since the calling client would approve its own call); `STAGE0_MAX_CALLS_IN_FLIGHT` no
//!   higher than its default; `STAGE0_BASE_URL` only when no API key comes
//!   from the environment (the key then comes from the same file, or there is none); and it
//!   never names a Cedar policy ([`ENVIRONMENT_ONLY`]), which would decide every call;
//! - a value must be written literally: one that `$VAR` substitution or a `\` escape changed is
//!   refused, because substitution reads the process environment and would copy the operator's
//!   key into a setting the file controls (the actor id, the audit log's path); so is one holding
//!   a control character (a newline, an escape sequence);
//! - a blank value is the same as none, and the first of repeated names is used, as dotenvy
//!   does;
//! - a malformed line makes the whole file ignored (fail safe: half a file is a configuration
//!   nobody wrote), with one warning naming the line by number and never showing its text, which
//!   may hold a key. A missing file is silent; an unreadable one, or one over [`MAX_BYTES`], is a
//!   warning without its contents.
//!
//! Each setting taken from the file and each refusal is a [`Note`] for the start-up log; no note
//! shows the API key, and a base URL is shown without its userinfo.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use stage0_guard::claims::ActorRole;
use stage0_guard::config::redact_userinfo;
use stage0_guard::escape::escaped;
use stage0_guard::transport::DEFAULT_MAX_CALLS_IN_FLIGHT;

/// The variables of [`Config::from_lookup`](stage0_guard::config::Config::from_lookup): the only names
/// `.env` may set.
pub const SETTINGS: [&str; 12] = [
    "STAGE0_API_KEY",
    "STAGE0_BASE_URL",
    "STAGE0_TIMEOUT_MS",
    "STAGE0_DEBUG",
    "STAGE0_ACTOR_ROLE",
    "STAGE0_ACTOR_ID",
    "STAGE0_APPROVALS",
    "STAGE0_APPROVAL_TIMEOUT_S",
    "STAGE0_AUDIT_LOG",
    "STAGE0_AUDIT_SYNC",
    "STAGE0_MAX_CALLS_IN_FLIGHT",
    // `warn` is the default whatever .env says, so the file can only make it stricter.
    "STAGE0_UNENFORCED_GUARDRAILS",
];

/// Settings `.env` may never set, only the environment: a Cedar policy (and its schema) decides
/// every call, the HTTP mode's listener and OAuth settings decide who may call at all, and the
/// database keeps the shared attempt ledger and audit chain, so a planted file naming one would
/// choose who authorises the agent, or who counts its retries.
pub const ENVIRONMENT_ONLY: [&str; 10] = [
    "STAGE0_POLICY",
    "STAGE0_POLICY_SCHEMA",
    "STAGE0_POLICY_SHADOW",
    "STAGE0_HTTP_LISTEN",
    "STAGE0_PUBLIC_URL",
    "STAGE0_OAUTH_ISSUER",
    "STAGE0_OAUTH_JWKS_URL",
    "STAGE0_OAUTH_ROLE_CLAIM",
    "STAGE0_HTTP_TOKEN_FILE",
    "STAGE0_DATABASE_URL",
];

/// A larger `.env` is ignored whole; a few settings take a few hundred bytes.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The settings `.env` adds under the environment, and what the start-up log says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DotEnv {
    /// The settings taken from the file; none of them is set in the environment.
    settings: BTreeMap<String, String>,
    notes: Vec<Note>,
}

/// One line for the start-up log about `.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// How loud it is.
    pub level: Level,
    /// Names the variable and why; never a key, never a malformed line's text.
    pub message: String,
}

/// How loud a [`Note`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A setting taken from the file, or one the environment already sets.
    Info,
    /// The whole file, or a name in it, ignored or refused.
    Warn,
}

/// A variable of the process environment: `None` when unset; set but not UTF-8 reads as empty,
/// which the configuration treats as unset (and which still keeps `.env` from setting it).
pub fn environment(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.into_string().unwrap_or_default())
}

impl DotEnv {
    /// Reads the file at `path` and layers it under `environment` (see the module documentation).
    /// Exports nothing.
    pub fn read(path: &Path, environment: impl Fn(&str) -> Option<String>) -> DotEnv {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return DotEnv::default(),
            Err(error) => return DotEnv::ignored(format!("cannot open it ({error})")),
        };
        let mut text = String::new();
        if let Err(error) = file.take(MAX_BYTES + 1).read_to_string(&mut text) {
            return DotEnv::ignored(format!("cannot read it ({error})"));
        }
        if text.len() as u64 > MAX_BYTES {
            return DotEnv::ignored(format!("it is larger than {MAX_BYTES} bytes"));
        }
        DotEnv::parse(&text, environment)
    }

    /// Layers the `.env` text `text` under `environment`.
    pub fn parse(text: &str, environment: impl Fn(&str) -> Option<String>) -> DotEnv {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let entries = match entries(text) {
            Ok(entries) => entries,
            Err(line) => {
                return DotEnv::ignored(format!(
                    "line {line} is malformed (its text is not shown: it may hold a key)"
                ));
            }
        };
        let mut dotenv = DotEnv::default();
        let mut seen = BTreeSet::new();
        let mut not_ours = BTreeSet::new();
        // The environment's key, when it has one, must go to the environment's base URL.
        let key_from_environment =
            environment("STAGE0_API_KEY").is_some_and(|key| !key.trim().is_empty());
        // With OAuth, approvals over HTTP are the caller's own: only the environment turns them on.
        let oauth_from_environment =
            environment("STAGE0_OAUTH_ISSUER").is_some_and(|issuer| !issuer.trim().is_empty());
        for (name, value) in entries {
            if !seen.insert(name.clone()) {
                dotenv.warn(format!("{name} is set again: the first is used"));
                continue;
            }
            if !name.starts_with("STAGE0_") {
                not_ours.insert(name);
                continue;
            }
            if ENVIRONMENT_ONLY.contains(&name.as_str()) {
                dotenv.warn(format!(
                    "refusing {name}: it decides who may call or who authorises a call, so only \
                     the environment may set it"
                ));
                continue;
            }
            if !SETTINGS.contains(&name.as_str()) {
                dotenv.warn(format!("ignoring {name}: not a setting of this server"));
                continue;
            }
            if value.trim().is_empty() {
                continue; // the same as unset
            }
            if environment(&name).is_some() {
                dotenv.info(format!("{name} is not used: the environment sets it"));
                continue;
            }
            // The value of one that is not literal is not shown: it may hold a substituted secret.
            if !text.contains(value.as_str()) || value.contains(char::is_control) {
                dotenv.warn(format!(
                    "refusing {name}: its value is not written literally ($ substitution, a \\ \
                     escape or a control character)"
                ));
                continue;
            }
            let shown = shown(&name, &value);
            match refusal(&name, &value, key_from_environment, oauth_from_environment) {
                Some(why) => dotenv.warn(format!("refusing {name}{shown}: {why}")),
                None => {
                    dotenv.info(format!("using {name}{shown}"));
                    dotenv.settings.insert(name, value);
                }
            }
        }
        if !not_ours.is_empty() {
            let names: Vec<_> = not_ours.into_iter().collect();
            dotenv.warn(format!(
                "ignoring {}: .env may only set STAGE0_* settings",
                names.join(", ")
            ));
        }
        dotenv
    }

    /// The lookup for [`Config::from_lookup`](stage0_guard::config::Config::from_lookup): `environment`
    /// first, then the settings taken from the file.
    pub fn lookup<'a>(
        &'a self,
        environment: impl Fn(&str) -> Option<String> + 'a,
    ) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| environment(name).or_else(|| self.settings.get(name).cloned())
    }

    /// The names of the settings taken from the file, in alphabetical order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.settings.keys().map(String::as_str)
    }

    /// What the start-up log should say about the file, in file order (with the names outside
    /// `STAGE0_*` last).
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Nothing taken, and one warning saying why.
    fn ignored(why: String) -> DotEnv {
        let mut dotenv = DotEnv::default();
        dotenv.warn(format!("ignoring the whole file: {why}"));
        dotenv
    }

    fn info(&mut self, message: String) {
        self.note(Level::Info, message);
    }

    fn warn(&mut self, message: String) {
        self.note(Level::Warn, message);
    }

    fn note(&mut self, level: Level, message: String) {
        self.notes.push(Note {
            level,
            message: format!(".env: {message}"),
        });
    }
}

/// Why `.env` may not set `name` to `value` (a literal, non-blank value), if it may not;
/// `key_from_environment` and `oauth_from_environment` say whether the environment sets
/// `STAGE0_API_KEY` and `STAGE0_OAUTH_ISSUER`.
fn refusal(
    name: &str,
    value: &str,
    key_from_environment: bool,
    oauth_from_environment: bool,
) -> Option<&'static str> {
    match name {
        "STAGE0_ACTOR_ROLE" if !matches!(value.trim().parse(), Ok(ActorRole::Viewer)) => {
            Some("it may only lower the role to viewer, never raise it")
        }
        "STAGE0_AUDIT_LOG" if value.trim() == "off" => Some("it may not turn the audit log off"),
        "STAGE0_AUDIT_SYNC" if value.trim() == "off" => Some("it may not turn fsync off"),
        "STAGE0_APPROVALS" if value.trim() == "off" => Some("it may not turn approvals off"),
        "STAGE0_APPROVALS" if oauth_from_environment => Some(
            "with STAGE0_OAUTH_ISSUER set, an approval over HTTP is the calling client's own, so \
             only the environment may turn approvals on",
        ),
        "STAGE0_MAX_CALLS_IN_FLIGHT"
            if value
                .trim()
                .parse::<usize>()
                .is_ok_and(|calls| calls > DEFAULT_MAX_CALLS_IN_FLIGHT) =>
        {
            Some("it may only lower the limit of calls in flight, never raise it above the default")
        }
        "STAGE0_BASE_URL" if key_from_environment => {
            Some("the API key comes from the environment, and .env may not choose where it is sent")
        }
        _ => None,
    }
}

/// How a note shows the value of `name`: never the key, a base URL without userinfo.
fn shown(name: &str, value: &str) -> String {
    match name {
        "STAGE0_API_KEY" => " (value not shown)".to_owned(),
        "STAGE0_BASE_URL" => format!("={:?}", redact_userinfo(value)),
        _ => format!("={value:?}"),
    }
}

/// The `(name, value)` entries of `text` in file order, or the number of the first malformed
/// line. dotenvy's error holds the line's text, which may hold a key, so it is dropped; the line
/// is found by counting the bytes dotenvy has read.
fn entries(text: &str) -> Result<Vec<(String, String)>, usize> {
    let read = Cell::new(0);
    let reader = OneByteAtATime {
        rest: text.as_bytes(),
        read: &read,
    };
    let mut entries = Vec::new();
    let mut end_of_last_entry = 0;
    for entry in dotenvy::from_read_iter(reader) {
        match entry {
            Ok(entry) => {
                entries.push(entry);
                end_of_last_entry = read.get();
            }
            Err(_) => return Err(line_of_next_entry(text, end_of_last_entry)),
        }
    }
    Ok(entries)
}

/// The number (from 1) of the first line at or after byte `from` that dotenvy does not skip as
/// blank or a comment: where the entry after one ending at `from` starts.
fn line_of_next_entry(text: &str, from: usize) -> usize {
    let before = text[..from].matches('\n').count();
    let skipped = text[from..]
        .lines()
        .take_while(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with('#')
        })
        .count();
    before + skipped + 1
}

/// A reader that hands out one byte per `read`, so that the `BufReader` inside dotenvy never
/// reads ahead: after each entry, `read` is where that entry's last line ends.
struct OneByteAtATime<'a> {
    rest: &'a [u8],
    read: &'a Cell<usize>,
}

impl Read for OneByteAtATime<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (Some((byte, rest)), Some(slot)) = (self.rest.split_first(), buf.first_mut()) else {
            return Ok(0);
        };
        *slot = *byte;
        self.rest = rest;
        self.read.set(self.read.get() + 1);
        Ok(1)
    }
}

impl Note {
    /// Logs the note at its level, escaped (`stage0_guard::escape`): a name or an error in it
    /// comes from the file.
    pub fn log(&self) {
        match self.level {
            Level::Info => tracing::info!("{}", escaped(&self.message)),
            Level::Warn => tracing::warn!("{}", escaped(&self.message)),
        }
    }
}

impl fmt::Display for Note {
    /// The message, escaped (`stage0_guard::escape`), after `warning: ` for a warning: for stderr
    /// when no logging is set up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.level == Level::Warn {
            f.write_str("warning: ")?;
        }
        write!(f, "{}", escaped(&self.message))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use stage0_guard::approval::Approvals;
    use stage0_guard::config::Config;

    /// `text` layered under an environment holding `vars`: the configuration and the notes.
    fn layered(text: &str, vars: &[(&str, &str)]) -> (Config, DotEnv) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let environment = |name: &str| vars.get(name).cloned();
        let dotenv = DotEnv::parse(text, environment);
        let config = Config::from_lookup(dotenv.lookup(environment)).expect("a usable config");
        (config, dotenv)
    }

    /// Every note's message, one per line.
    fn notes(dotenv: &DotEnv) -> String {
        let lines: Vec<String> = dotenv.notes().iter().map(Note::to_string).collect();
        lines.join("\n")
    }

    /// Whether some warning mentions every one of `words`.
    fn warns(dotenv: &DotEnv, words: &[&str]) -> bool {
        dotenv.notes().iter().any(|note| {
            note.level == Level::Warn && words.iter().all(|word| note.message.contains(word))
        })
    }

    #[test]
    fn a_policy_the_http_listener_oauth_or_a_database_is_never_taken_from_the_file() {
        let (config, dotenv) = layered(
            "STAGE0_POLICY=/tmp/permit-all.cedar\nSTAGE0_POLICY_SCHEMA=/tmp/s.cedarschema\n\
             STAGE0_POLICY_SHADOW=/tmp/c.cedar\nSTAGE0_HTTP_LISTEN=0.0.0.0:80\n\
             STAGE0_PUBLIC_URL=https://evil.test\nSTAGE0_OAUTH_ISSUER=https://evil.test\n\
             STAGE0_OAUTH_JWKS_URL=https://evil.test/jwks\nSTAGE0_OAUTH_ROLE_CLAIM=groups\n\
             STAGE0_DATABASE_URL=postgres://evil.test/ledger\nSTAGE0_HTTP_TOKEN_FILE=/tmp/t\n",
            &[],
        );
        assert_eq!(config.audit.database, None);
        assert_eq!(config.http.token_file, None);
        assert_eq!(config.policy_files, None);
        assert_eq!(config.shadow_policy_files, None);
        assert_eq!(config.http.oauth, None);
        assert_eq!(config.http.public_url, None);
        assert!(config.http.listen.ip().is_loopback());
        for name in ENVIRONMENT_ONLY {
            assert!(
                warns(&dotenv, &["refusing", name, "only the environment"]),
                "{}",
                notes(&dotenv)
            );
        }
    }

    #[test]
    fn stage0_settings_are_taken_and_named() {
        let (config, dotenv) = layered(
            "# a comment\n\nSTAGE0_TIMEOUT_MS=250\nexport STAGE0_ACTOR_ID='dana'\n\
             STAGE0_DEBUG=\"true\"\nSTAGE0_ACTOR_ROLE=Viewer\nSTAGE0_APPROVALS=on\n",
            &[],
        );
        assert_eq!(config.timeout.as_millis(), 250);
        assert_eq!(config.operator.actor_id.as_deref(), Some("dana"));
        assert!(config.debug);
        assert_eq!(
            dotenv.names().collect::<Vec<_>>(),
            [
                "STAGE0_ACTOR_ID",
                "STAGE0_ACTOR_ROLE",
                "STAGE0_APPROVALS",
                "STAGE0_DEBUG",
                "STAGE0_TIMEOUT_MS"
            ]
        );
        assert_eq!(
            notes(&dotenv),
            ".env: using STAGE0_TIMEOUT_MS=\"250\"\n\
             .env: using STAGE0_ACTOR_ID=\"dana\"\n\
             .env: using STAGE0_DEBUG=\"true\"\n\
             .env: using STAGE0_ACTOR_ROLE=\"Viewer\"\n\
             .env: using STAGE0_APPROVALS=\"on\""
        );
    }

    #[test]
    fn other_names_are_ignored_and_named_without_their_values() {
        let (_, dotenv) = layered(
            "HTTPS_PROXY=http://127.0.0.1:9/\nSSL_CERT_FILE=/tmp/evil.pem\nRUST_LOG=trace\n\
             PATH=/tmp/bin\nSTAGE0_ROLE=admin\n",
            &[],
        );
        assert_eq!(dotenv.names().count(), 0);
        assert!(warns(
            &dotenv,
            &["HTTPS_PROXY, PATH, RUST_LOG, SSL_CERT_FILE", "STAGE0_*"]
        ));
        assert!(warns(&dotenv, &["STAGE0_ROLE", "not a setting"]));
        let notes = notes(&dotenv);
        for value in ["127.0.0.1", "evil.pem", "trace", "/tmp/bin", "admin"] {
            assert!(!notes.contains(value), "{notes}");
        }
        // Nothing is exported either.
        let _ = DotEnv::parse("DOTENV_RS_UNIT_TEST=1\nSTAGE0_ACTOR_ID=x\n", |_| None);
        assert!(std::env::var_os("DOTENV_RS_UNIT_TEST").is_none());
        assert!(std::env::var_os("STAGE0_ACTOR_ID").is_none_or(|id| id != "x"));
    }

    #[test]
    fn the_environment_always_wins_even_when_empty() {
        let (config, dotenv) = layered(
            "STAGE0_TIMEOUT_MS=250\nSTAGE0_ACTOR_ID=mallory\n",
            &[("STAGE0_TIMEOUT_MS", "900"), ("STAGE0_ACTOR_ID", "")],
        );
        assert_eq!(config.timeout.as_millis(), 900);
        assert_eq!(config.operator.actor_id, None);
        assert_eq!(dotenv.names().count(), 0);
        assert!(notes(&dotenv).contains("STAGE0_ACTOR_ID is not used: the environment sets it"));
    }

    #[test]
    fn the_role_can_only_be_viewer() {
        for role in ["admin", "developer", "ADMIN", "root"] {
            let (config, dotenv) = layered(&format!("STAGE0_ACTOR_ROLE={role}\n"), &[]);
            assert_eq!(config.operator.actor_role, ActorRole::Viewer, "{role}");
            let refusal = format!("refusing STAGE0_ACTOR_ROLE={role:?}: it may only lower");
            assert!(warns(&dotenv, &[&refusal]), "{}", notes(&dotenv));
        }
        // The environment's own choice stands.
        let (config, _) = layered(
            "STAGE0_ACTOR_ROLE=viewer\n",
            &[("STAGE0_ACTOR_ROLE", "admin")],
        );
        assert_eq!(config.operator.actor_role, ActorRole::Admin);
    }

    #[test]
    fn the_audit_log_fsync_and_approvals_cannot_be_turned_off() {
        let (config, dotenv) = layered(
            "STAGE0_AUDIT_LOG=off\nSTAGE0_AUDIT_SYNC=' off'\nSTAGE0_APPROVALS=\"off\"\n",
            &[("STAGE0_AUDIT_LOG", "/var/log/stage0.jsonl")],
        );
        assert_eq!(
            config.audit.path.as_deref(),
            Some(Path::new("/var/log/stage0.jsonl"))
        );
        assert!(config.audit.sync);
        assert!(matches!(config.approvals, Approvals::Ask { .. }));
        assert!(warns(&dotenv, &["refusing STAGE0_AUDIT_SYNC", "fsync"]));
        assert!(warns(&dotenv, &["refusing STAGE0_APPROVALS", "approvals"]));
        // With the environment silent, `off` is refused too and the default log stays.
        let (config, dotenv) = layered("STAGE0_AUDIT_LOG=off\n", &[]);
        assert_eq!(config.audit.path, stage0_guard::audit::default_path());
        assert!(warns(&dotenv, &["refusing STAGE0_AUDIT_LOG", "audit log"]));
        // Another path is a setting like any other, and named.
        let (config, dotenv) = layered("STAGE0_AUDIT_LOG=decoy.jsonl\n", &[]);
        assert_eq!(config.audit.path.as_deref(), Some(Path::new("decoy.jsonl")));
        assert!(notes(&dotenv).contains("using STAGE0_AUDIT_LOG=\"decoy.jsonl\""));
    }

    #[test]
    fn with_oauth_in_the_environment_the_file_cannot_turn_approvals_on() {
        let oauth = [
            ("STAGE0_OAUTH_ISSUER", "https://auth.example.test"),
            ("STAGE0_PUBLIC_URL", "https://stage0.example.test"),
        ];
        let (config, dotenv) = layered("STAGE0_APPROVALS=on\n", &oauth);
        assert!(!config.approvals_set, "{}", notes(&dotenv));
        assert_eq!(config.serving_http().approvals, Approvals::Off);
        assert!(
            warns(
                &dotenv,
                &["refusing STAGE0_APPROVALS=\"on\"", "STAGE0_OAUTH_ISSUER"]
            ),
            "{}",
            notes(&dotenv)
        );
        // Without OAuth, `on` is the default the file may repeat.
        let (config, dotenv) = layered("STAGE0_APPROVALS=on\n", &[]);
        assert!(config.approvals_set);
        assert!(notes(&dotenv).contains("using STAGE0_APPROVALS=\"on\""));
    }

    #[test]
    fn the_base_url_moves_only_a_key_from_the_same_file() {
        let planted = "STAGE0_BASE_URL=http://127.0.0.1:9/\n";
        // The operator's key, no base URL in the environment: the default URL stays.
        let (config, dotenv) = layered(planted, &[("STAGE0_API_KEY", "sk-operator")]);
        assert_eq!(
            config.base_url.as_str(),
            stage0_guard::config::DEFAULT_BASE_URL.to_owned() + "/"
        );
        assert_eq!(config.api_key.unwrap().expose(), "sk-operator");
        assert!(warns(&dotenv, &["refusing STAGE0_BASE_URL", "API key"]));
        // The operator's key and base URL: both stay.
        let (config, _) = layered(
            planted,
            &[
                ("STAGE0_API_KEY", "sk-operator"),
                ("STAGE0_BASE_URL", "https://stage0.example.test"),
            ],
        );
        assert_eq!(config.base_url.as_str(), "https://stage0.example.test/");
        // A key and a base URL from the file go together; the key is never shown.
        let (config, dotenv) = layered(
            "STAGE0_API_KEY=sk-from-file\nSTAGE0_BASE_URL=http://user:pw@127.0.0.1:9/v1\n",
            &[],
        );
        assert_eq!(config.api_key.unwrap().expose(), "sk-from-file");
        assert_eq!(config.base_url.as_str(), "http://user:pw@127.0.0.1:9/v1");
        let notes = notes(&dotenv);
        assert!(
            notes.contains("using STAGE0_API_KEY (value not shown)"),
            "{notes}"
        );
        assert!(notes.contains("using STAGE0_BASE_URL=\"http://<redacted>@127.0.0.1:9/v1\""));
        assert!(
            !notes.contains("sk-from-file") && !notes.contains("pw"),
            "{notes}"
        );
        // No key anywhere (the simulator): the base URL is harmless and taken.
        let (config, _) = layered(planted, &[]);
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9/");
        // An empty key in the environment is no key.
        let (config, _) = layered(planted, &[("STAGE0_API_KEY", " ")]);
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9/");
    }

    #[test]
    fn substituted_escaped_and_multi_line_values_are_refused() {
        // dotenvy substitutes from the real process environment; PATH stands for a secret in it.
        let secret = std::env::var("PATH").expect("PATH is set for the tests");
        for text in [
            "STAGE0_ACTOR_ID=$PATH\n",
            "STAGE0_ACTOR_ID=\"id-${PATH}\"\n",
            "STAGE0_AUDIT_LOG=/tmp/${PATH}.jsonl\n",
            "STAGE0_ACTOR_ID=\"two\\nlines\"\n",
            "STAGE0_ACTOR_ID=\"two\nlines\"\n",
            "STAGE0_ACTOR_ID='tab\tx'\n",
        ] {
            let (config, dotenv) = layered(text, &[]);
            assert_eq!(config.operator.actor_id, None, "{text}");
            assert_eq!(
                config.audit.path,
                stage0_guard::audit::default_path(),
                "{text}"
            );
            assert!(
                warns(&dotenv, &["refusing", "literally"]),
                "{text}: {dotenv:?}"
            );
            assert!(!notes(&dotenv).contains(&secret), "{text}");
        }
        // `$` inside single quotes is literal, and taken.
        let (config, _) = layered("STAGE0_ACTOR_ID='a$PATH'\n", &[]);
        assert_eq!(config.operator.actor_id.as_deref(), Some("a$PATH"));
    }

    #[test]
    fn a_malformed_line_is_named_by_number_and_the_whole_file_ignored() {
        for (text, line) in [
            ("STAGE0_ACTOR_ID=dana\nSTAGE0_API_KEY sk-SECRET\n", 2),
            ("# comment\n\n  # indented\nSTAGE0_API_KEY=\"sk-SECRET\n", 4),
            (
                "STAGE0_ACTOR_ID=\"multi\nline\"\n\n# c\nSTAGE0_TIMEOUT_MS=1\n   \nsk-SECRET=1 2\n",
                7,
            ),
            ("STAGE0_TIMEOUT_MS=1 # ok\n-sk-SECRET\nSTAGE0_DEBUG=1\n", 2),
            ("\u{feff}STAGE0_API_KEY=sk-SECRET\\q", 1),
        ] {
            let (config, dotenv) = layered(text, &[]);
            assert_eq!(dotenv.names().count(), 0, "{text}");
            assert_eq!(config.operator.actor_id, None, "{text}");
            assert_eq!(
                notes(&dotenv),
                format!(
                    "warning: .env: ignoring the whole file: line {line} is malformed (its \
                     text is not shown: it may hold a key)"
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn the_example_file_is_taken_without_a_warning() {
        let example = include_str!("../.env.example");
        for vars in [&[][..], &[("STAGE0_API_KEY", "sk-operator")][..]] {
            let (_, dotenv) = layered(example, vars);
            assert!(!warns(&dotenv, &[""]), "{}", notes(&dotenv));
        }
    }

    #[test]
    fn repeated_names_keep_the_first() {
        let (config, dotenv) = layered("STAGE0_ACTOR_ID=first\nSTAGE0_ACTOR_ID=second\n", &[]);
        assert_eq!(config.operator.actor_id.as_deref(), Some("first"));
        assert!(warns(&dotenv, &["STAGE0_ACTOR_ID is set again"]));
    }

    #[test]
    fn a_missing_file_is_silent_and_an_unreadable_one_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let missing = DotEnv::read(&dir.path().join(".env"), |_| None);
        assert_eq!(missing, DotEnv::default());
        // A folder cannot be read as a file.
        let unreadable = DotEnv::read(dir.path(), |_| None);
        assert!(warns(
            &unreadable,
            &["ignoring the whole file", "cannot read"]
        ));
        let large = dir.path().join("large.env");
        std::fs::write(&large, "#".repeat(MAX_BYTES as usize + 1)).unwrap();
        assert!(warns(
            &DotEnv::read(&large, |_| None),
            &["ignoring the whole file", "larger"]
        ));
        let binary = dir.path().join("binary.env");
        std::fs::write(&binary, b"STAGE0_API_KEY=sk-\xff\xfeSECRET\n").unwrap();
        let not_utf8 = DotEnv::read(&binary, |_| None);
        assert!(warns(&not_utf8, &["ignoring the whole file"]));
        assert!(!notes(&not_utf8).contains("SECRET"));
    }
}
