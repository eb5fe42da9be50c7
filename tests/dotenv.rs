//! A `.env` in the folder the server starts in is not the operator (issue 18, item 1).
//!
//! Whoever can write a file there (a cloned repository, the agent through a file-writing tool)
//! plants a `.env`; the operator's settings are in the environment. Each test drives the built
//! binary in such a folder and checks that the file only adds what it may: no role above viewer,
//! no audit log, fsync or approvals turned off, no base URL for the operator's key, no proxy, no
//! copy of the operator's key through `$` substitution; that a malformed line is named by number,
//! never shown; that the start-up log names what came from the file; and that `audit verify` and
//! `audit show` name the file they read. Everything listens on 127.0.0.1; nothing sleeps.
//! The layering rules themselves are unit-tested in `src/dotenv.rs`.

mod common;
mod fake_stage0;

use std::net::{TcpListener, ToSocketAddrs as _};
use std::path::{Path, PathBuf};

use common::{BIN, SECRET_KEY, Session, audit_records, bounded, command, live_env};
use fake_stage0::{FakeStage0, Reply};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A fresh working folder holding a `.env` with `contents`.
fn folder_with_dotenv(contents: &str) -> TempDir {
    let dir = TempDir::new().expect("a temporary working directory");
    std::fs::write(dir.path().join(".env"), contents).expect("the .env is written");
    dir
}

/// The server started in `dir` with `env` (and its audit log in `dir`, see [`command`]).
async fn start_in(dir: &Path, env: &[(&str, &str)]) -> Session {
    Session::spawn(command(dir, env), ()).await
}

/// A Stage0 on 127.0.0.1 that allows everything.
async fn allowing_stage0() -> FakeStage0 {
    FakeStage0::start(|received| {
        Reply::json(
            200,
            &json!({
                "verdict": "ALLOW", "decision": "GO", "reason": "fake allows",
                "request_id": received.request_id, "policy_version": "fake-1"
            }),
        )
    })
    .await
}

/// A port on 127.0.0.1 that never answers and tells whether anything connected to it: the
/// planted authority or proxy. A connection completes in the kernel's backlog before the client
/// sends anything, so once a call has returned, any connection it made is there to count.
struct Tripwire {
    listener: TcpListener,
}

impl Tripwire {
    fn new() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        Tripwire { listener }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().expect("an address"))
    }

    /// How many connections arrived so far.
    fn connections(&self) -> usize {
        let mut count = 0;
        while self.listener.accept().is_ok() {
            count += 1;
        }
        count
    }
}

/// A `research-topic` call, which every fake here allows and the simulator allows too.
fn research() -> Value {
    json!({"topic": "rust error handling"})
}

#[tokio::test]
async fn a_planted_admin_role_is_refused_and_calls_act_as_viewer() {
    let dir = folder_with_dotenv("STAGE0_ACTOR_ROLE=admin\n");
    let session = start_in(dir.path(), &[]).await;
    let outcome = session
        .call(
            "deploy-changes",
            json!({"serviceName": "api", "environment": "production", "changes": "v2",
                   "actorRole": "admin"}),
        )
        .await;
    assert_eq!(
        outcome.structured["provenance"]["actor_role"],
        json!({"effective": "viewer", "claimed": "admin", "configured": "viewer"}),
        "{outcome:#?}"
    );
    assert_eq!(outcome.structured["executed"], false);
    let stderr = session.stop().await;
    assert!(stderr.contains("refusing STAGE0_ACTOR_ROLE"), "{stderr}");
    assert!(stderr.contains("actor_role=viewer"), "{stderr}");
}

#[tokio::test]
async fn planted_off_switches_leave_the_audit_log_fsync_and_approvals_on() {
    let dir =
        folder_with_dotenv("STAGE0_AUDIT_LOG=off\nSTAGE0_AUDIT_SYNC=off\nSTAGE0_APPROVALS=off\n");
    // The environment does not name a log, so the per-user default is where it must go.
    let home = dir.path().join("home");
    let state = dir.path().join("state");
    let mut server = command(
        dir.path(),
        &[
            ("HOME", home.to_str().expect("UTF-8")),
            ("XDG_STATE_HOME", state.to_str().expect("UTF-8")),
        ],
    );
    server.env_remove("STAGE0_AUDIT_LOG");
    let session = Session::spawn(server, ()).await;
    // The sixth attempt is deferred; a client without elicitation cannot be asked, but the
    // server tries (`unsupported`), where approvals off would not (`disabled`).
    let retry = json!({"workflowId": "nightly-etl", "retryCount": 5});
    let outcome = session.call("retry-workflow", retry).await;
    assert_eq!(outcome.field("verdict"), "DEFER", "{outcome:#?}");
    assert_eq!(
        outcome.structured["approval"]["outcome"], "unsupported",
        "{outcome:#?}"
    );
    let stderr = session.stop().await;
    for name in ["STAGE0_AUDIT_LOG", "STAGE0_AUDIT_SYNC", "STAGE0_APPROVALS"] {
        assert!(stderr.contains(&format!("refusing {name}")), "{stderr}");
    }
    assert!(stderr.contains("audit_sync=true"), "{stderr}");
    let log = state.join("mcp-server-stage0").join("audit.jsonl");
    let records = audit_records(&log);
    assert!(
        records
            .iter()
            .any(|record| record.get("tool") == Some(&json!("retry-workflow"))),
        "{records:?}"
    );
}

#[tokio::test]
async fn the_environments_base_url_keeps_the_call_and_the_key() {
    let fake = allowing_stage0().await;
    let decoy = Tripwire::new();
    let dir = folder_with_dotenv(&format!("STAGE0_BASE_URL={}\n", decoy.url()));
    let session = start_in(dir.path(), &live_env(fake.base_url(), "5000")).await;
    let outcome = session.call("research-topic", research()).await;
    assert_eq!(outcome.field("verdict"), "ALLOW", "{outcome:#?}");
    assert_eq!(fake.exchanges().len(), 1);
    let stderr = session.stop().await;
    assert_eq!(decoy.connections(), 0, "the planted base URL was called");
    assert!(
        stderr.contains("STAGE0_BASE_URL is not used: the environment sets it"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_planted_base_url_cannot_take_the_environments_key() {
    // The operator set a key and no base URL: the key goes to the default URL, not the file's.
    // No call is made (the default URL is on the internet); the start-up log says where calls
    // would go, and `src/dotenv.rs` tests the configuration itself.
    let decoy = Tripwire::new();
    let dir = folder_with_dotenv(&format!("STAGE0_BASE_URL={}\n", decoy.url()));
    let session = start_in(dir.path(), &[("STAGE0_API_KEY", SECRET_KEY)]).await;
    let stderr = session.stop().await;
    assert!(stderr.contains("refusing STAGE0_BASE_URL"), "{stderr}");
    assert!(
        stderr.contains("base_url=https://api.signalpulse.org/ "),
        "{stderr}"
    );
    assert_eq!(decoy.connections(), 0);
}

#[tokio::test]
async fn planted_proxy_variables_never_reach_the_http_client() {
    let fake = allowing_stage0().await;
    let proxy = Tripwire::new();
    let url = proxy.url();
    let dir = folder_with_dotenv(&format!(
        "HTTP_PROXY={url}\nHTTPS_PROXY={url}\nALL_PROXY={url}\n\
         http_proxy={url}\nhttps_proxy={url}\nall_proxy={url}\n"
    ));
    let session = start_in(dir.path(), &live_env(fake.base_url(), "5000")).await;
    let outcome = session.call("research-topic", research()).await;
    assert_eq!(outcome.field("verdict"), "ALLOW", "{outcome:#?}");
    assert_eq!(fake.exchanges().len(), 1);
    let stderr = session.stop().await;
    assert_eq!(proxy.connections(), 0, "the planted proxy was used");
    assert!(
        stderr.contains(
            "ignoring ALL_PROXY, HTTPS_PROXY, HTTP_PROXY, all_proxy, http_proxy, https_proxy: \
             .env may only set STAGE0_* settings"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_planted_substitution_cannot_copy_the_operators_key() {
    let fake = allowing_stage0().await;
    let dir = folder_with_dotenv("STAGE0_ACTOR_ID=${STAGE0_API_KEY}\n");
    let session = start_in(dir.path(), &live_env(fake.base_url(), "5000")).await;
    let outcome = session.call("research-topic", research()).await;
    assert_eq!(outcome.field("verdict"), "ALLOW", "{outcome:#?}");
    assert!(!outcome.raw.contains(SECRET_KEY), "{}", outcome.raw);
    assert_eq!(outcome.structured["provenance"].get("actor_id"), None);
    let stderr = session.stop().await;
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
    assert!(stderr.contains("refusing STAGE0_ACTOR_ID"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join(common::AUDIT_LOG)).expect("the audit log");
    assert!(!log.contains(SECRET_KEY));
}

#[tokio::test]
async fn a_malformed_line_is_named_by_number_and_never_echoed() {
    const PLANTED_KEY: &str = "sk-planted-SECRET-4242";
    let dir = folder_with_dotenv(&format!(
        "STAGE0_ACTOR_ID=planted-id\n# the key, mistyped:\nSTAGE0_API_KEY {PLANTED_KEY}\n"
    ));
    let session = start_in(dir.path(), &[]).await;
    let outcome = session.call("research-topic", research()).await;
    // The whole file is ignored: not even the well-formed line before is used.
    assert_eq!(outcome.structured["provenance"].get("actor_id"), None);
    assert_eq!(outcome.field("mode"), "simulator");
    let stderr = session.stop().await;
    assert!(
        stderr.contains(".env: ignoring the whole file: line 3 is malformed"),
        "{stderr}"
    );
    assert!(!stderr.contains(PLANTED_KEY), "{stderr}");
    assert!(!stderr.contains("planted-id"), "{stderr}");
}

#[tokio::test]
async fn the_start_up_log_names_each_setting_from_dotenv_and_no_secret() {
    const FILE_KEY: &str = "sk-from-dotenv-SECRET";
    // Nothing listens there: the call fails closed, and its error must not show the userinfo.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        listener.local_addr().expect("an address").port()
    };
    let dir = folder_with_dotenv(&format!(
        "STAGE0_API_KEY={FILE_KEY}\nSTAGE0_BASE_URL=http://ops:pw-SECRET@127.0.0.1:{port}\n\
         STAGE0_TIMEOUT_MS=2000\nSTAGE0_ACTOR_ID=dana\n"
    ));
    let session = start_in(dir.path(), &[]).await;
    let outcome = session.call("research-topic", research()).await;
    assert_eq!(outcome.field("verdict"), "DENY", "{outcome:#?}");
    assert_eq!(outcome.field("mode"), "stage0");
    let stderr = session.stop().await;
    for note in [
        ".env: using STAGE0_API_KEY (value not shown)",
        &format!(".env: using STAGE0_BASE_URL=\"http://<redacted>@127.0.0.1:{port}/\""),
        ".env: using STAGE0_TIMEOUT_MS=\"2000\"",
        ".env: using STAGE0_ACTOR_ID=\"dana\"",
        "from_dotenv=STAGE0_ACTOR_ID,STAGE0_API_KEY,STAGE0_BASE_URL,STAGE0_TIMEOUT_MS",
        &format!("base_url=http://<redacted>@127.0.0.1:{port}/ "),
    ] {
        assert!(stderr.contains(note), "{note} not in {stderr}");
    }
    for secret in [FILE_KEY, "pw-SECRET"] {
        assert!(!stderr.contains(secret), "{secret} in {stderr}");
        assert!(!outcome.raw.contains(secret), "{secret} in {}", outcome.raw);
    }
}

/// `mcp-server-stage0 audit ARGS` run in `dir` with only `HOME` set: exit code, stdout, stderr.
async fn audit_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = bounded(
        "the audit command",
        tokio::process::Command::new(BIN)
            .arg("audit")
            .args(args)
            .env_clear()
            .env("HOME", dir.join("home"))
            .current_dir(dir)
            .output(),
    )
    .await
    .expect("the audit command runs");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

#[tokio::test]
async fn audit_verify_and_show_name_the_file_a_planted_dotenv_chose() {
    let dir = folder_with_dotenv("STAGE0_AUDIT_LOG=decoy.jsonl\n");
    std::fs::write(dir.path().join("decoy.jsonl"), "").expect("the decoy is written");
    // The child sees its working folder with symbolic links resolved.
    let decoy: PathBuf = dir
        .path()
        .canonicalize()
        .expect("a canonical folder")
        .join("decoy.jsonl");
    let decoy = decoy.to_str().expect("UTF-8");

    let (code, stdout, stderr) = audit_in(dir.path(), &["verify"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!("ok: {decoy}: 0 records, ")),
        "{stdout}"
    );
    assert!(
        stderr.contains(".env: using STAGE0_AUDIT_LOG=\"decoy.jsonl\""),
        "{stderr}"
    );

    let (code, stdout, stderr) = audit_in(dir.path(), &["show"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!("reading the audit log {decoy}")),
        "{stderr}"
    );

    // A log that does not verify is named by its absolute path too.
    std::fs::write(dir.path().join("decoy.jsonl"), "not a record\n").expect("a broken decoy");
    let (code, stdout, _) = audit_in(dir.path(), &["verify", "decoy.jsonl"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!("BROKEN at {decoy}: line 1")),
        "{stdout}"
    );
}

#[test]
fn the_tripwire_counts_connections() {
    // The proxy and base URL tests rely on it: a connection that was made is counted.
    let tripwire = Tripwire::new();
    let address = tripwire
        .url()
        .trim_start_matches("http://")
        .to_socket_addrs()
        .expect("an address")
        .next()
        .expect("one address");
    let _first = std::net::TcpStream::connect(address).expect("a connection");
    let _second = std::net::TcpStream::connect(address).expect("a connection");
    assert_eq!(tripwire.connections(), 2);
    assert_eq!(tripwire.connections(), 0);
}
