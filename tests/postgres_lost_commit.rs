//! A `COMMIT` whose answer is lost (`docs/deployment.md`): the replica must find out from the
//! chain whether its batch was written, never guess.
//!
//! The replica reaches a throw-away PostgreSQL cluster through a TCP relay on 127.0.0.1 that, once
//! armed, cuts the connection at the next `COMMIT`: either after PostgreSQL has it (the answer is
//! swallowed, so the transaction committed but the replica never hears so) or before (the
//! transaction is rolled back). In the first case the call goes on and runs, its decision once in
//! the chain; in the second it is `DENY` / `AUDIT_UNAVAILABLE`, runs nothing, and the chain holds
//! no decision for it. The next call succeeds either way. When the chain cannot be read back
//! either (the relay refuses new connections for a while), the call is denied, and the batch is
//! settled before the next one: its records are in the chain once, never twice. Every wait is
//! bounded.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::postgres::Postgres;
use common::{STAND_IN, Session, bounded};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The simple-query message `tokio-postgres` sends to commit: `Q`, its length (4 + 7), `COMMIT\0`.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// What the batch's `INSERT` carries when it holds a `decision` record: an armed cut waits for it,
/// so that it meets a call's own `COMMIT`, not that of an `outcome` record riding alone.
const DECISION: &[u8] = br#""kind":"decision""#;

/// Where the relay cuts the next `COMMIT`.
#[derive(Clone, Copy)]
enum Cut {
    /// PostgreSQL gets it; its answer is dropped and the client's connection closed.
    AfterPostgresHasIt,
    /// PostgreSQL never gets it: both connections are closed.
    BeforePostgresHasIt,
}

/// A TCP relay from a port of 127.0.0.1 to PostgreSQL's, armed with at most one [`Cut`], which
/// can also refuse new connections for a while.
struct Relay {
    port: u16,
    armed: Arc<Mutex<Option<Cut>>>,
    refusing: Arc<AtomicBool>,
}

impl Relay {
    async fn start(postgres_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let armed = Arc::new(Mutex::new(None));
        let refusing = Arc::new(AtomicBool::new(false));
        let (shared, refuse) = (Arc::clone(&armed), Arc::clone(&refusing));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue;
                }
                let server = TcpStream::connect(("127.0.0.1", postgres_port))
                    .await
                    .expect("PostgreSQL accepts");
                tokio::spawn(relay(client, server, Arc::clone(&shared)));
            }
        });
        Relay {
            port,
            armed,
            refusing,
        }
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }

    fn refuse_new_connections(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }
}

/// Copies bytes both ways until either side closes, or until the armed cut is done.
async fn relay(client: TcpStream, server: TcpStream, armed: Arc<Mutex<Option<Cut>>>) {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let (mut up, mut down) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    let (mut swallow_answer, mut decided) = (false, false);
    loop {
        tokio::select! {
            read = client_in.read(&mut up) => {
                let Ok(n @ 1..) = read else { return };
                let chunk = &up[..n];
                let holds = |needle: &[u8]| chunk.windows(needle.len()).any(|w| w == needle);
                decided |= holds(DECISION);
                let cut = if decided && holds(COMMIT) {
                    decided = false;
                    armed.lock().unwrap().take()
                } else {
                    None
                };
                match cut {
                    Some(Cut::BeforePostgresHasIt) => return,
                    Some(Cut::AfterPostgresHasIt) => swallow_answer = true,
                    None => {}
                }
                if server_out.write_all(chunk).await.is_err() {
                    return;
                }
            }
            read = server_in.read(&mut down) => {
                let Ok(n @ 1..) = read else { return };
                if swallow_answer || client_out.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A cluster, a relay to it, and a replica on the cluster through the relay.
async fn through_relay() -> (Postgres, Relay, Session) {
    let pg = Postgres::start();
    let relay = Relay::start(pg.port()).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", relay.port);
    let replica = Session::start(&[
        ("STAGE0_DATABASE_URL", url.as_str()),
        ("STAGE0_APPROVALS", "off"),
    ])
    .await;
    (pg, relay, replica)
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_resolved_by_reading_the_chain() {
    let (pg, relay, replica) = through_relay().await;
    let research = |topic: &str| replica.call("research-topic", json!({"topic": topic}));
    let before = research("before").await;
    assert_eq!(before.structured["executed"], true);

    relay.arm(Cut::AfterPostgresHasIt);
    let committed = research("committed, answer lost").await;
    assert_eq!(committed.structured["executed"], true, "{committed:?}");
    assert!(committed.text.contains(STAND_IN));

    relay.arm(Cut::BeforePostgresHasIt);
    let rolled_back = research("rolled back").await;
    assert_eq!(rolled_back.field("verdict"), "DENY", "{rolled_back:?}");
    assert!(rolled_back.raw.contains("AUDIT_UNAVAILABLE"));
    assert!(!rolled_back.text.contains(STAND_IN), "the body ran");

    assert_eq!(research("after").await.structured["executed"], true);
    let stderr = bounded("the replica to stop", replica.stop()).await;
    assert!(
        stderr.contains("a commit whose answer was lost was found in the chain"),
        "{stderr}"
    );

    let decisions = pg.psql(
        "SELECT line::jsonb ->> 'request_id' FROM stage0_audit \
         WHERE line::jsonb ->> 'kind' = 'decision'",
    );
    let decided: Vec<&str> = decisions.lines().collect();
    let count = |outcome: &common::Outcome| {
        let id = outcome.field("request_id");
        decided.iter().filter(|line| **line == id).count()
    };
    assert_eq!(count(&committed), 1, "{decisions}");
    assert_eq!(count(&rolled_back), 0, "{decisions}");
    let seqs = pg.psql("SELECT count(*) = max(seq) FROM stage0_audit");
    assert_eq!(seqs.trim(), "t", "the chain has no gap");
}

#[tokio::test]
async fn a_lost_commit_that_cannot_be_read_back_is_settled_before_the_next_batch() {
    let (pg, relay, replica) = through_relay().await;
    let research = |topic: &str| replica.call("research-topic", json!({"topic": topic}));
    let before = research("before").await;
    assert_eq!(before.structured["executed"], true);

    // The COMMIT lands, its answer is lost, and the chain cannot be read back: denied.
    relay.refuse_new_connections(true);
    relay.arm(Cut::AfterPostgresHasIt);
    let unsettled = research("unsettled").await;
    assert_eq!(unsettled.field("verdict"), "DENY", "{unsettled:?}");
    assert!(unsettled.raw.contains("AUDIT_UNAVAILABLE"));
    assert!(!unsettled.text.contains(STAND_IN), "the body ran");

    relay.refuse_new_connections(false);
    let after = research("after").await;
    assert_eq!(after.structured["executed"], true, "{after:?}");
    let stderr = bounded("the replica to stop", replica.stop()).await;
    assert!(stderr.contains("could not be read back"), "{stderr}");
    assert!(stderr.contains("was found in the chain"), "{stderr}");

    // Every call's outcome once; the denied call's ALLOW is in the chain, its outcome says so.
    for ended in [&before, &unsettled, &after] {
        let id = ended.field("request_id");
        let kinds = pg.psql(&format!(
            "SELECT string_agg(line::jsonb ->> 'kind', ',' ORDER BY seq) FROM stage0_audit \
             WHERE line::jsonb ->> 'request_id' = '{id}'"
        ));
        assert_eq!(kinds.trim(), "decision,outcome", "{id}");
    }
    let executed = pg.psql(&format!(
        "SELECT line::jsonb ->> 'executed' FROM stage0_audit WHERE line::jsonb ->> 'kind' = \
         'outcome' AND line::jsonb ->> 'request_id' = '{}'",
        unsettled.field("request_id")
    ));
    assert_eq!(executed.trim(), "false");
    let seqs = pg.psql("SELECT count(*) = max(seq) FROM stage0_audit");
    assert_eq!(seqs.trim(), "t", "the chain has no gap");
}
