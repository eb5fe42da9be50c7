//! `mcp-server-stage0 audit verify|show|export`: an operator's reading of the audit log, a file
//! or the chain in PostgreSQL (`docs/audit-log.md`, `docs/deployment.md`).
//!
//! `verify` checks the hash chain with the library's one verifier (exit 1: it does not verify);
//! `show` prints records readably; `export` writes a database's chain to stdout as JSON Lines,
//! the file log's format, which `audit verify FILE` accepts. `verify` and `show` of a database
//! read one consistent snapshot of its chain into a private temporary file first, then run the
//! same code as for a file. A database is named by `--database URL`, or by `--database` alone for
//! `STAGE0_DATABASE_URL` (which keeps a password off the command line).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use stage0_guard::audit::database::{self, DatabaseUrl};
use stage0_guard::audit::show::{self, Selection};
use stage0_guard::audit::verify;
use stage0_guard::config::Config;
use stage0_guard::escape::escaped;

use crate::dotenv::{self, DotEnv};

/// Which log to read.
pub enum Source {
    /// A file; `None` for the one the server would write.
    File(Option<PathBuf>),
    /// A database: the URL given, or `None` for `STAGE0_DATABASE_URL`.
    Database(Option<String>),
}

impl Source {
    /// The source a command's `PATH` and `--database [URL]` name (an empty URL is `--database`
    /// alone).
    pub fn new(path: Option<PathBuf>, database: Option<String>) -> anyhow::Result<Source> {
        Ok(match (path, database) {
            (Some(_), Some(_)) => anyhow::bail!("give a log file or `--database`, not both"),
            (path, None) => Source::File(path),
            (None, Some(url)) => Source::Database(Some(url).filter(|url| !url.is_empty())),
        })
    }
}

/// `audit verify`: exit 0 when the chain holds, 1 when it does not.
pub fn verify(source: Source) -> anyhow::Result<ExitCode> {
    let (path, shown, _snapshot) = readable(source)?;
    let verified = verify::verify_file(&path)
        .with_context(|| format!("cannot read the audit log `{shown}`"))?;
    Ok(match verified {
        Ok(verified) => {
            println!(
                "ok: {shown}: {} records, {} torn line(s) recovered, {} unfinished call(s) \
                 named, {} call(s) without an outcome yet, last hash {}",
                verified.records,
                verified.recoveries,
                verified.unfinished,
                verified.open,
                verified.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(broken) => {
            println!("BROKEN at {shown}: {}", escaped(&broken));
            ExitCode::from(1)
        }
    })
}

/// `audit show`: the selected records, readably; where they come from goes to stderr.
pub fn show(source: Source, selection: &Selection) -> anyhow::Result<ExitCode> {
    let (path, shown, _snapshot) = readable(source)?;
    eprintln!("reading the audit log {shown}");
    match show::show(&path, selection, &mut std::io::stdout().lock()) {
        // `audit show | head` closes the pipe early; that is not a failure.
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context(format!("cannot read the audit log `{shown}`")))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `audit export`: the database's chain on stdout, one record a line, oldest first; how many
/// records goes to stderr.
pub fn export(database: Option<String>) -> anyhow::Result<ExitCode> {
    let url = database_url(database)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let read = read_chain(&url, |line| writeln!(out, "{line}"));
    match read.and_then(|read| Ok((read, out.flush()?))) {
        Ok((records, ())) => {
            eprintln!("exported {records} records from {}", url.shown());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        Err(error) => Err(error),
    }
}

/// The file to read for `source`, how to name it, and the temporary snapshot of a database that
/// must live as long as the file is read.
fn readable(source: Source) -> anyhow::Result<(PathBuf, String, Option<tempfile::NamedTempFile>)> {
    match source {
        Source::File(path) => {
            let path = match path {
                Some(path) => path,
                None => configured_log()?,
            };
            // Always say which file was read: the default may come from a `.env` in this folder.
            let path = std::path::absolute(&path).unwrap_or(path);
            let shown = escaped(path.display()).to_string();
            Ok((path, shown, None))
        }
        Source::Database(database) => {
            let url = database_url(database)?;
            // Created 0600 by tempfile: the records hold goals and actor ids.
            let snapshot = tempfile::NamedTempFile::new()
                .context("cannot create a temporary file for the chain")?;
            let mut out = std::io::BufWriter::new(snapshot.as_file());
            read_chain(&url, |line| writeln!(out, "{line}"))?;
            out.flush()
                .context("cannot write the chain's temporary copy")?;
            drop(out);
            Ok((
                snapshot.path().to_owned(),
                format!("database {}", url.shown()),
                Some(snapshot),
            ))
        }
    }
}

/// Reads the chain at `url`, handing each line to `each`; returns how many it read.
fn read_chain(
    url: &DatabaseUrl,
    each: impl FnMut(&str) -> std::io::Result<()>,
) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime to read the database")?;
    runtime
        .block_on(database::read_chain(url, each))
        .with_context(|| format!("cannot read the audit chain in {}", url.shown()))
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The database `--database` names, or `STAGE0_DATABASE_URL` from the environment (only: as
/// for the server, a `.env` cannot name it).
fn database_url(given: Option<String>) -> anyhow::Result<DatabaseUrl> {
    let url = match given {
        Some(url) => url,
        None => std::env::var("STAGE0_DATABASE_URL")
            .context("`--database` names no URL and STAGE0_DATABASE_URL is not set")?,
    };
    Ok(url.parse()?)
}

/// The log the server would write: `STAGE0_AUDIT_LOG` (from the environment, or ./.env under
/// it), else the per-user default. What ./.env set or was refused goes to stderr.
fn configured_log() -> anyhow::Result<PathBuf> {
    let dotenv = DotEnv::read(Path::new(".env"), dotenv::environment);
    for note in dotenv.notes() {
        eprintln!("mcp-server-stage0: {note}");
    }
    let audit = Config::from_lookup(dotenv.lookup(dotenv::environment))?.audit;
    if audit.database.is_some() {
        anyhow::bail!("the audit log is in a database (STAGE0_DATABASE_URL): add `--database`");
    }
    audit
        .path
        .context("auditing is off (`STAGE0_AUDIT_LOG=off`): give the log's PATH")
}
