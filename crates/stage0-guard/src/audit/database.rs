//! The audit chain and the attempt ledger in PostgreSQL (`STAGE0_DATABASE_URL`), shared by every
//! replica of a server (`docs/deployment.md`).
//!
//! One database holds one chain: table `stage0_audit`, one row per record, whose `line` is the
//! record exactly as the file log would hold it (the same canonical JSON and hashes, `chain.rs`),
//! so `audit verify` checks an export of it with the same code. Each replica's writer thread
//! takes batches from the group-commit loop (`batch.rs`) and commits each in one transaction: it
//! takes the chain's lock (`pg_advisory_xact_lock`), reads the head and checks its line, seals the
//! batch after it, inserts the rows and counts the attempts, then commits with
//! `synchronous_commit = on`, before any caller hears "written". Replicas so append one after
//! another to one contiguous chain.
//!
//! The attempt ledger is table `stage0_ledger`, one row per (principal, workflow) key. A call
//! reads its count before the policy decision point is asked ([`DatabaseLedger`]); the decision
//! record says what it saw (`provenance.retry_count.observed`), and the transaction that inserts
//! it checks that the row still holds exactly that many and counts one more. A record whose count
//! moved meanwhile (the same workflow called at once through another replica) is not written and
//! its call is denied: no decision is ever taken on a count lower than the ledger's, and the count
//! and the records never disagree. An approval record is refused the same way when its
//! `nonce_sha256` is in the chain already (a `requestState` answered through another replica).
//!
//! Failures: a batch that cannot be committed is refused, and its calls are denied
//! (`AUDIT_UNAVAILABLE`); the next batch connects again, so calls succeed again by themselves once
//! the database is back. A record nobody waits for (an `outcome`) is kept and written with a
//! later batch. A commit whose answer was lost (the connection dropped during `COMMIT`) is
//! resolved by reading the chain back once connected again, under the chain's lock (so after the
//! lost transaction has ended either way): the batch was written exactly when the row of its last
//! `seq` holds its hash. Every wait on the database is bounded by [`DATABASE_WAIT`]; a question
//! the database does not answer in time is a batch not written.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement, Transaction};

use super::batch::Appender;
use super::chain::{self, GENESIS};
use super::{LEDGER_CONFLICT, STATE_ALREADY_ANSWERED, Unavailable};
use crate::escape::escaped;

/// How long any one step with the database may take before it counts as unreachable: connecting,
/// one batch's transaction up to its `COMMIT`, the `COMMIT` itself, one ledger read: 5 s.
pub const DATABASE_WAIT: Duration = Duration::from_secs(5);

/// The most records nobody waits for that a writer keeps while the database is unreachable;
/// past it, the oldest are dropped, and the number dropped is logged.
const MAX_KEPT: usize = 65_536;

/// The key of the advisory lock that serialises appends to the chain (and every ledger write).
const CHAIN_LOCK: i64 = 0x5354_4147_4530_0001;

/// The key of the advisory lock under which replicas apply migrations one at a time.
const MIGRATION_LOCK: i64 = 0x5354_4147_4530_0002;

/// The schema, one migration a version, applied in order at start ([`migrate`]).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE stage0_audit (
        seq bigint PRIMARY KEY CHECK (seq > 0),
        hash text NOT NULL,
        nonce_sha256 text UNIQUE,
        line text NOT NULL
    );
    COMMENT ON TABLE stage0_audit IS
        'mcp-server-stage0 audit chain: one sealed record per row (line), verify with audit verify --database';
    CREATE TABLE stage0_ledger (
        key bytea PRIMARY KEY CHECK (octet_length(key) = 32),
        attempts bigint NOT NULL CHECK (attempts >= 0),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON TABLE stage0_ledger IS
        'mcp-server-stage0 attempt ledger: attempts per SHA-256 of (principal, workflow)';",
)];

/// A PostgreSQL connection URL (`STAGE0_DATABASE_URL`, `postgres://user:password@host:port/db`
/// or the `key=value` form), parsed once. Its `Debug` and [`shown`](DatabaseUrl::shown) never
/// include the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    shown: Arc<str>,
}

/// Why a database URL (`STAGE0_DATABASE_URL`, `audit … --database URL`) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDatabaseUrl {
    /// It is not a connection string the driver reads (the text is not repeated: it may hold a
    /// password).
    #[error(
        "the database URL is not a PostgreSQL connection URL \
         (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
    )]
    Unreadable,
    /// It asks for TLS (`sslmode=require`), which this server does not offer.
    #[error(
        "the database URL asks for TLS (`sslmode=require`), which this server does not speak: \
         reach PostgreSQL over a private network or a Unix socket (docs/deployment.md)"
    )]
    TlsRequired,
    /// It names no host.
    #[error("the database URL names no host")]
    NoHost,
}

impl FromStr for DatabaseUrl {
    type Err = InvalidDatabaseUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|_| InvalidDatabaseUrl::Unreadable)?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(InvalidDatabaseUrl::TlsRequired);
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => return Err(InvalidDatabaseUrl::NoHost),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or("")
        );
        // Every session commits synchronously whatever the server's default, gives up on a lock
        // it waited DATABASE_WAIT for, and is ended by the server if it sits in a transaction
        // (a replica that stopped mid-batch) instead of holding the chain's lock forever.
        let options = format!(
            "{} -c synchronous_commit=on -c lock_timeout={wait} -c statement_timeout={wait} \
             -c idle_in_transaction_session_timeout={idle}",
            config.get_options().unwrap_or(""),
            wait = DATABASE_WAIT.as_millis(),
            idle = (DATABASE_WAIT * 6).as_millis(),
        );
        config
            .options(options.trim_start())
            .application_name("mcp-server-stage0")
            .connect_timeout(DATABASE_WAIT);
        Ok(DatabaseUrl {
            config,
            shown: shown.into(),
        })
    }
}

impl DatabaseUrl {
    /// The URL without its password: `postgres://USER@HOST:PORT/DATABASE`, for logs.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects, on the current Tokio runtime, which drives the connection.
    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %escaped(&error), "database connection ended");
            }
        });
        Ok(client)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.shown).finish()
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown
    }
}

impl Eq for DatabaseUrl {}

/// Why the database could not be used: the driver's error (which never holds the password), a
/// wait past [`DATABASE_WAIT`], or a chain whose head does not check out.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The driver's error, shown with its causes (PostgreSQL's own message, or the operating
    /// system's), which the driver keeps apart from its text.
    #[error("database: {}", with_causes(.0))]
    Driver(tokio_postgres::Error),
    /// No answer within [`DATABASE_WAIT`].
    #[error("database: no answer within {} s", DATABASE_WAIT.as_secs())]
    TimedOut,
    /// The last row of `stage0_audit` is not the sealed record its `seq` and `hash` say.
    #[error(
        "the audit chain in the database does not check out at its head (seq {seq}): {why}; run \
         `mcp-server-stage0 audit verify --database URL`"
    )]
    BrokenHead {
        /// The `seq` column of the last row.
        seq: i64,
        /// What is wrong with it.
        why: String,
    },
}

/// `error`'s text followed by each of its causes': `db error: ERROR: permission denied …`.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        let more = next.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = next.source();
    }
    text
}

impl From<tokio_postgres::Error> for DatabaseError {
    fn from(error: tokio_postgres::Error) -> Self {
        DatabaseError::Driver(error)
    }
}

async fn bounded<T, E: Into<DatabaseError>>(
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, DatabaseError> {
    match tokio::time::timeout(DATABASE_WAIT, step).await {
        Ok(done) => done.map_err(Into::into),
        Err(_) => Err(DatabaseError::TimedOut),
    }
}

/// Brings the schema up to date: creates what is missing, one migration a version, each in the
/// same transaction as its version's row, under an advisory lock, so replicas starting at once
/// apply each exactly once.
async fn migrate(client: &mut Client) -> Result<(), DatabaseError> {
    // Up to date: nothing to create, so no lock and no right to CREATE needed.
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    let exists: bool = client
        .query_one("SELECT to_regclass('stage0_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if exists {
        let applied: Option<i32> = client
            .query_one("SELECT max(version) FROM stage0_migrations", &[])
            .await?
            .get(0);
        // A newer release may have migrated further: this one needs only what it knows.
        if applied >= Some(latest) {
            return Ok(());
        }
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS stage0_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: HashSet<i32> = tx
        .query("SELECT version FROM stage0_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO stage0_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "database migration applied");
        }
    }
    tx.commit().await?;
    Ok(())
}

/// How many turns [`DatabaseLedger::turns`] spreads the workflows over: two workflows whose keys
/// share their first byte take turns too, which costs a wait, never a wrong count.
const TURNS: usize = 256;

/// Reads the attempt counts of the ledger for the calls of one replica, and makes the calls of
/// one workflow through it take turns.
#[derive(Debug)]
pub struct DatabaseLedger {
    url: DatabaseUrl,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    turns: Vec<Arc<tokio::sync::Mutex<()>>>,
}

/// A call's turn at its workflows: while it is held, no other call through this replica reads or
/// counts them. Dropping it ends the turn.
pub type Turn = tokio::sync::OwnedMutexGuard<()>;

impl DatabaseLedger {
    /// A reader of the ledger at `url`; it connects when first used, on the runtime using it.
    pub fn new(url: DatabaseUrl) -> Self {
        DatabaseLedger {
            url,
            client: tokio::sync::Mutex::new(None),
            turns: (0..TURNS).map(|_| Arc::default()).collect(),
        }
    }

    /// Waits for this call's turn at each of `keys` (taken in one order, so two calls never wait
    /// for each other), at most [`DATABASE_WAIT`] for each; a turn not had by then is gone
    /// without. A call holds its turns from reading the counts until its decision record
    /// is committed: the calls of one workflow through one replica are then counted one after
    /// another, and only a call through another replica can find the count moved
    /// ([`LEDGER_CONFLICT`]).
    pub async fn turns(&self, keys: &[[u8; 32]]) -> Vec<Turn> {
        let mut indexes: Vec<usize> = keys.iter().map(|key| usize::from(key[0])).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut turns = Vec::with_capacity(indexes.len());
        for index in indexes {
            let turn = Arc::clone(&self.turns[index]).lock_owned();
            match tokio::time::timeout(DATABASE_WAIT, turn).await {
                Ok(turn) => turns.push(turn),
                // Going on without the turn risks a LEDGER_CONFLICT, never a wrong count.
                Err(_) => tracing::warn!(
                    "waited {DATABASE_WAIT:?} for a turn at a workflow: going on without it"
                ),
            }
        }
        turns
    }

    /// The attempts counted for each of `keys` (0 for a key without a row), read within
    /// [`DATABASE_WAIT`].
    ///
    /// # Errors
    ///
    /// [`DatabaseError`] when the database cannot be reached or read; the next read connects
    /// again.
    pub async fn attempts(&self, keys: &[[u8; 32]]) -> Result<Vec<u64>, DatabaseError> {
        let client = self.client().await?;
        let read: Vec<&[u8]> = keys.iter().map(<[u8; 32]>::as_slice).collect();
        let rows = bounded(client.query(
            "SELECT key, attempts FROM stage0_ledger WHERE key = ANY($1)",
            &[&read],
        ))
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                *self.client.lock().await = None;
                return Err(error);
            }
        };
        let counted: HashMap<Vec<u8>, i64> = rows
            .iter()
            .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, i64>(1)))
            .collect();
        Ok(keys
            .iter()
            .map(|key| counted.get(key.as_slice()).map_or(0, |n| *n as u64))
            .collect())
    }

    async fn client(&self) -> Result<Arc<Client>, DatabaseError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref().filter(|client| !client.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let connected = Arc::new(bounded(self.url.connect()).await?);
        *client = Some(Arc::clone(&connected));
        Ok(connected)
    }
}

/// The writer of one replica: commits batches to the chain in the database, on a runtime of its
/// own (it runs on the writer thread, `batch.rs`).
pub(super) struct DatabaseWriter {
    runtime: Runtime,
    chain: Chain,
}

struct Chain {
    url: DatabaseUrl,
    client: Option<Connection>,
    /// Records nobody waits for whose batch failed, oldest first: written before the next batch.
    kept: Vec<Map<String, Value>>,
    /// A batch whose `COMMIT` answer was lost and could not be read back: the `seq` and `hash` of
    /// its last record, and its records nobody waits for, written again only if the chain does
    /// not hold it.
    unsettled: Option<Unsettled>,
    /// The head after this writer's last commit: for the log at close.
    head: (u64, String),
}

/// The writer's connection, with the statements of a batch prepared once for it.
struct Connection {
    client: Client,
    statements: Statements,
}

/// The statements of a batch (`append`), prepared when the writer connects: a batch then costs
/// one round trip for each step, not two (parse, then run).
struct Statements {
    lock: Statement,
    head: Statement,
    counts: Statement,
    nonces: Statement,
    insert: Statement,
    count: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let (lock, head, counts, nonces, insert, count) = tokio::try_join!(
            client.prepare("SELECT pg_advisory_xact_lock($1)"),
            client.prepare(HEAD),
            client.prepare("SELECT key, attempts FROM stage0_ledger WHERE key = ANY($1)"),
            client.prepare("SELECT nonce_sha256 FROM stage0_audit WHERE nonce_sha256 = ANY($1)"),
            client.prepare(
                "INSERT INTO stage0_audit (seq, hash, nonce_sha256, line)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[])"
            ),
            client.prepare(
                "INSERT INTO stage0_ledger (key, attempts)
                 SELECT * FROM unnest($1::bytea[], $2::int8[])
                 ON CONFLICT (key) DO UPDATE SET attempts = excluded.attempts, updated_at = now()"
            ),
        )?;
        Ok(Statements {
            lock,
            head,
            counts,
            nonces,
            insert,
            count,
        })
    }
}

/// The parameters of one statement (held in a variable while statements run side by side).
type Parameters<'a, const N: usize> = [&'a (dyn ToSql + Sync); N];

/// The chain's last record.
const HEAD: &str = "SELECT seq, hash, line FROM stage0_audit ORDER BY seq DESC LIMIT 1";

/// A batch whose `COMMIT` answer was lost and could not be read back.
struct Unsettled {
    /// The `seq` and `hash` of its last record.
    head: (u64, String),
    /// Its records nobody waits for.
    records: Vec<Map<String, Value>>,
}

impl DatabaseWriter {
    /// A writer for the chain at `url`, with the runtime it will run on. Nothing is connected
    /// yet: [`connect`](DatabaseWriter::connect) does that, on the writer thread.
    ///
    /// # Errors
    ///
    /// The operating system's error when the writer's runtime cannot be built.
    pub(super) fn new(url: DatabaseUrl) -> io::Result<DatabaseWriter> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let chain = Chain {
            url,
            client: None,
            kept: Vec::new(),
            unsettled: None,
            head: (0, GENESIS.to_owned()),
        };
        Ok(DatabaseWriter { runtime, chain })
    }

    /// Connects, migrates the schema and reads the chain's head, and logs the head, or that the
    /// database cannot be reached now (each batch then tries again).
    pub(super) fn connect(&mut self) {
        let chain = &mut self.chain;
        let head = self.runtime.block_on(async {
            let connection = chain.take_connection().await?;
            let read = bounded(
                connection
                    .client
                    .query_opt(&connection.statements.head, &[]),
            )
            .await;
            chain.client = Some(connection);
            head(read?)
        });
        match head {
            Ok((seq, hash)) => {
                tracing::info!(database = %chain.url.shown(), seq, hash = %hash, "audit database open");
                chain.head = (seq, hash);
            }
            Err(error) => {
                chain.client = None;
                tracing::error!(
                    database = %chain.url.shown(),
                    error = %escaped(&error),
                    "the audit database cannot be used now: every tool call is denied until it can"
                );
            }
        }
    }
}

impl Appender for DatabaseWriter {
    fn commit(
        &mut self,
        records: Vec<Map<String, Value>>,
        awaited: &[bool],
    ) -> Vec<Result<u64, Unavailable>> {
        let mut kept = std::mem::take(&mut self.chain.kept);
        // A batch whose commit could not be read back is settled first, so that its records are
        // written again only if the chain does not hold them.
        if let Some(unsettled) = self.chain.unsettled.take() {
            let head = &unsettled.head;
            match self.runtime.block_on(self.chain.holds(head)) {
                Ok(true) => self.chain.head = unsettled.head,
                Ok(false) => {
                    kept.splice(0..0, unsettled.records);
                }
                Err(error) => {
                    self.chain.unsettled = Some(unsettled);
                    return self.refuse(kept, records, awaited, &error);
                }
            }
        }
        let from = kept.len();
        let mut batch: Vec<Map<String, Value>> = kept.into_iter().chain(records).collect();
        match self.runtime.block_on(self.chain.commit(&batch)) {
            Ok(mut written) => written.split_off(from),
            Err(Failure::NotWritten(error)) => {
                let records = batch.split_off(from);
                self.refuse(batch, records, awaited, &error)
            }
            Err(Failure::Unknown(error, head)) => {
                let records = batch.split_off(from);
                let mut unawaited = batch;
                unawaited.extend(unawaited_only(records, awaited));
                tracing::error!(
                    database = %self.chain.url.shown(),
                    error = %escaped(&error),
                    seq = head.0,
                    "a commit whose answer was lost could not be read back: its calls are denied; \
                     the next batch reads it back first"
                );
                self.chain.unsettled = Some(Unsettled {
                    head,
                    records: unawaited,
                });
                vec![Err(Unavailable::new(error.to_string())); awaited.len()]
            }
        }
    }

    fn closed(&mut self) {
        let (seq, hash) = &self.chain.head;
        tracing::info!(
            database = %self.chain.url.shown(),
            seq,
            hash = %hash,
            "audit database closed (seq and hash: the chain's head after this replica's last commit)"
        );
        let unwritten = self.chain.kept.len()
            + self
                .chain
                .unsettled
                .as_ref()
                .map_or(0, |batch| batch.records.len());
        if unwritten > 0 {
            tracing::error!(
                records = unwritten,
                "outcome records never reached the database (it was unreachable until the end)"
            );
        }
    }
}

impl DatabaseWriter {
    /// Refuses a batch that was not written: logs why, keeps what nobody waits for (the records
    /// `kept` before it, then those of `records` with `awaited` false, at most [`MAX_KEPT`], the
    /// oldest dropped first) and answers every caller with the error.
    fn refuse(
        &mut self,
        mut kept: Vec<Map<String, Value>>,
        records: Vec<Map<String, Value>>,
        awaited: &[bool],
        error: &DatabaseError,
    ) -> Vec<Result<u64, Unavailable>> {
        tracing::error!(
            database = %self.chain.url.shown(),
            error = %escaped(error),
            records = kept.len() + records.len(),
            "audit records not written to the database: their calls are denied"
        );
        kept.extend(unawaited_only(records, awaited));
        if kept.len() > MAX_KEPT {
            let dropped = kept.len() - MAX_KEPT;
            kept.drain(..dropped);
            tracing::error!(
                records = dropped,
                "outcome records dropped: the database was unreachable for too long"
            );
        }
        self.chain.kept = kept;
        vec![Err(Unavailable::new(error.to_string())); awaited.len()]
    }
}

/// The records of `records` that nobody waits for (`awaited` false), in order.
fn unawaited_only(
    records: Vec<Map<String, Value>>,
    awaited: &[bool],
) -> impl Iterator<Item = Map<String, Value>> + '_ {
    records
        .into_iter()
        .zip(awaited)
        .filter(|(_, awaited)| !**awaited)
        .map(|(record, _)| record)
}

/// Why a batch was not committed.
enum Failure {
    /// It was not written.
    NotWritten(DatabaseError),
    /// Its `COMMIT`'s answer was lost and the chain could not be read back: it may have been
    /// written, exactly when the row of its last record (`seq`, `hash`) holds that hash.
    Unknown(DatabaseError, (u64, String)),
}

impl From<DatabaseError> for Failure {
    fn from(error: DatabaseError) -> Self {
        Failure::NotWritten(error)
    }
}

impl Chain {
    /// The connection, taken out to be used (and put back when it is still good); opened, and
    /// the schema migrated, if there is none.
    async fn take_connection(&mut self) -> Result<Connection, DatabaseError> {
        match self.client.take().filter(|open| !open.client.is_closed()) {
            Some(connection) => Ok(connection),
            None => {
                let mut client = bounded(self.url.connect()).await?;
                bounded(migrate(&mut client)).await?;
                let statements = bounded(Statements::prepare(&client)).await?;
                Ok(Connection { client, statements })
            }
        }
    }

    /// Commits `batch` in one transaction. Returns, for each record, its `seq` or why it was
    /// refused (a count or a nonce the chain had moved past).
    async fn commit(
        &mut self,
        batch: &[Map<String, Value>],
    ) -> Result<Vec<Result<u64, Unavailable>>, Failure> {
        let Connection {
            mut client,
            statements,
        } = self.take_connection().await?;
        let tx = bounded(client.transaction()).await?;
        let (written, head) = bounded(append(&tx, &statements, batch)).await?;
        if let Err(error) = bounded(tx.commit()).await {
            drop(client);
            // The COMMIT may have been applied before its answer was lost: the chain says.
            match self.holds(&head).await {
                Ok(true) => {}
                Ok(false) => return Err(Failure::NotWritten(error)),
                Err(unread) => return Err(Failure::Unknown(unread, head)),
            }
        } else {
            self.client = Some(Connection { client, statements });
        }
        self.head = head;
        Ok(written)
    }

    /// Whether the chain holds the record `head` names, read once connected again under the
    /// chain's lock: the transaction whose answer was lost held that lock until it committed or
    /// rolled back, so once this read has it, the answer is final.
    async fn holds(&mut self, head: &(u64, String)) -> Result<bool, DatabaseError> {
        let mut connection = self.take_connection().await?;
        let tx = bounded(connection.client.transaction()).await?;
        let read = bounded(async {
            tx.execute(&connection.statements.lock, &[&CHAIN_LOCK])
                .await?;
            tx.query_opt(
                "SELECT hash FROM stage0_audit WHERE seq = $1",
                &[&(head.0 as i64)],
            )
            .await
        })
        .await?;
        bounded(tx.commit()).await?;
        self.client = Some(connection);
        let found = read.is_some_and(|row| row.get::<_, String>(0) == head.1);
        if found {
            tracing::warn!(
                seq = head.0,
                "a commit whose answer was lost was found in the chain"
            );
        }
        Ok(found)
    }
}

/// The `seq` and `hash` of the chain's last record, read as `row` ([`HEAD`]), its line checked as
/// `audit verify` checks it (the genesis head for an empty chain).
fn head(row: Option<Row>) -> Result<(u64, String), DatabaseError> {
    let Some(row) = row else {
        return Ok((0, GENESIS.to_owned()));
    };
    let (seq, hash, line): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    let broken = |why: String| DatabaseError::BrokenHead { seq, why };
    let checked = chain::check(line.as_bytes()).map_err(|problem| broken(problem.to_string()))?;
    if checked.seq as i64 != seq || checked.hash != hash {
        return Err(broken(
            "its `seq` or `hash` column differs from its line".to_owned(),
        ));
    }
    Ok((checked.seq, checked.hash))
}

/// Within the open transaction `tx`: takes the chain's lock, reads the head, checks each record
/// of `batch` against the ledger and the spent nonces, seals those that pass after the head and
/// inserts them, and writes the ledger's new counts. Returns what became of each record and the
/// new head.
async fn append(
    tx: &Transaction<'_>,
    statements: &Statements,
    batch: &[Map<String, Value>],
) -> Result<(Vec<Result<u64, Unavailable>>, (u64, String)), DatabaseError> {
    // What each record counts and spends, read from it once.
    let claims: Vec<_> = batch
        .iter()
        .map(|record| (counted(record), nonce(record)))
        .collect();
    let keys: Vec<Vec<u8>> = claims
        .iter()
        .filter_map(|(counted, _)| counted.map(|(key, _)| key.to_vec()))
        .collect();
    let nonces: Vec<&str> = claims.iter().filter_map(|(_, nonce)| *nonce).collect();
    // One round trip: PostgreSQL runs them in order, so the reads see the chain under the lock.
    let (lock, keys_read, nonces_read): (Parameters<1>, Parameters<1>, Parameters<1>) =
        ([&CHAIN_LOCK], [&keys], [&nonces]);
    let (_, head_row, count_rows, nonce_rows) = tokio::try_join!(
        tx.execute(&statements.lock, &lock),
        tx.query_opt(&statements.head, &[]),
        tx.query(&statements.counts, &keys_read),
        tx.query(&statements.nonces, &nonces_read),
    )?;
    let (mut seq, mut hash) = head(head_row)?;
    let mut counts: HashMap<Vec<u8>, i64> = count_rows
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut spent: HashSet<String> = nonce_rows.iter().map(|row| row.get(0)).collect();
    let mut changed: HashSet<Vec<u8>> = HashSet::new();
    let mut rows: (Vec<i64>, Vec<String>, Vec<Option<String>>, Vec<String>) = Default::default();
    let mut written = Vec::with_capacity(batch.len());
    for (record, (counted, nonce)) in batch.iter().zip(claims) {
        if let Some((key, observed)) = counted {
            let count = counts.entry(key.to_vec()).or_insert(0);
            if *count as u64 != observed {
                written.push(Err(Unavailable::refused(
                    LEDGER_CONFLICT,
                    format!(
                        "the attempt ledger counts {count} earlier attempts at this workflow, and \
                         this call saw {observed}: another call of the same workflow was counted \
                         first (through another replica), or the count could not be read; call \
                         again"
                    ),
                )));
                continue;
            }
            *count += 1;
            changed.insert(key.to_vec());
        }
        let nonce = nonce.map(str::to_owned);
        if let Some(nonce) = &nonce
            && !spent.insert(nonce.clone())
        {
            written.push(Err(Unavailable::refused(
                STATE_ALREADY_ANSWERED,
                "this approval state was answered before (its nonce is in the chain)",
            )));
            continue;
        }
        seq += 1;
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        // Sealed from the borrowed record: the batch keeps its records in case it fails.
        let mut line = Vec::with_capacity(1024);
        hash = chain::seal_into(&mut line, record, seq, ts, &hash);
        rows.0.push(seq as i64);
        rows.1.push(hash.clone());
        rows.2.push(nonce);
        rows.3
            .push(String::from_utf8(line).expect("a sealed line is UTF-8 JSON"));
        written.push(Ok(seq));
    }
    let keys: Vec<Vec<u8>> = changed.into_iter().collect();
    let attempts: Vec<i64> = keys.iter().map(|key| counts[key]).collect();
    // One round trip for both (either may have no rows).
    let inserted: Parameters<4> = [&rows.0, &rows.1, &rows.2, &rows.3];
    let counted: Parameters<2> = [&keys, &attempts];
    tokio::try_join!(
        tx.execute(&statements.insert, &inserted),
        tx.execute(&statements.count, &counted),
    )?;
    Ok((written, (seq, hash)))
}

/// The ledger key a `decision` record counts an attempt for, and how many attempts its call saw
/// before it (`provenance.retry_count.observed`, 0 when absent).
fn counted(record: &Map<String, Value>) -> Option<([u8; 32], u64)> {
    let key = record.get("workflow_sha256")?.as_str()?;
    let mut bytes = [0; 32];
    hex::decode_to_slice(key, &mut bytes).ok()?;
    let observed = record
        .get("provenance")
        .and_then(|provenance| provenance.get("retry_count"))
        .and_then(|retry| retry.get("observed"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some((bytes, observed))
}

/// The spent `requestState` nonce an `approval` record names, if any.
fn nonce(record: &Map<String, Value>) -> Option<&str> {
    record.get("nonce_sha256")?.as_str()
}

/// Reads the whole chain at `url`, oldest first, in one consistent snapshot, handing each line
/// (a sealed record, without its newline) to `each`. Returns how many lines it read.
///
/// # Errors
///
/// [`DatabaseError`] when the database cannot be reached or read; what `each` returns stops the
/// read and is given back as [`ReadError::Out`].
pub async fn read_chain(
    url: &DatabaseUrl,
    mut each: impl FnMut(&str) -> io::Result<()>,
) -> Result<u64, ReadError> {
    let mut client = bounded(url.connect()).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(DatabaseError::from)?;
    // Reading a long chain may take longer than one statement's bound: this transaction only.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(DatabaseError::from)?;
    let portal = tx
        .bind("SELECT line FROM stage0_audit ORDER BY seq", &[])
        .await
        .map_err(DatabaseError::from)?;
    let mut read = 0;
    loop {
        let rows = tx
            .query_portal(&portal, READ_ROWS)
            .await
            .map_err(DatabaseError::from)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            each(row.get(0)).map_err(ReadError::Out)?;
            read += 1;
        }
    }
    Ok(read)
}

/// How many rows [`read_chain`] holds in memory at once.
const READ_ROWS: i32 = 1_000;

/// Why [`read_chain`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database could not be read.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The consumer of the lines failed (for example, stdout was closed).
    #[error("{0}")]
    Out(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_is_shown_and_debugged_without_its_password() {
        let url: DatabaseUrl = "postgres://stage0:hunter2-secret@db.internal:6543/audit"
            .parse()
            .unwrap();
        assert_eq!(url.shown(), "postgres://stage0@db.internal:6543/audit");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn an_unreadable_url_is_refused_without_repeating_it() {
        let refused = "postgres://u:hunter2@host:notaport/db"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert_eq!(refused, InvalidDatabaseUrl::Unreadable);
        assert!(!refused.to_string().contains("hunter2"));
        assert_eq!(
            "postgres://u@host/db?sslmode=require".parse::<DatabaseUrl>(),
            Err(InvalidDatabaseUrl::TlsRequired)
        );
    }

    #[test]
    fn a_decision_counts_its_workflow_with_what_it_saw() {
        let key = "ab".repeat(32);
        let record = serde_json::json!({
            "kind": "decision",
            "workflow_sha256": key,
            "provenance": {"retry_count": {"effective": 9, "claimed": 9, "observed": 4}},
        });
        let Value::Object(record) = record else {
            unreachable!()
        };
        assert_eq!(counted(&record), Some(([0xab; 32], 4)));
        assert_eq!(counted(&Map::new()), None);
    }
}
