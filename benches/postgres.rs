//! Replicas on one PostgreSQL (issue 16): `cargo bench --bench postgres` (`-- --quick` for a smoke
//! run of a few seconds).
//!
//! The release server binary is driven over stdio by the lean line client of the other stdio
//! benches (`common/line_client.rs`), in simulator mode, with `research-topic` calls (two audit
//! records each: the `decision`, committed before the body runs, and the `outcome`, which rides on
//! a later batch). The database is a throw-away cluster of the test suite
//! (`tests/common/postgres.rs`: `initdb` in a fresh folder under `/tmp`, `fsync = on`). The
//! harness prints the file system that folder is on, and refuses a `tmpfs`, where a commit's WAL
//! flush costs nothing and the figures would mean nothing.
//! Configurations, each in fresh server processes:
//!
//! - the file log with fsync (the default), one server, 1 and 64 calls in flight: the reference;
//! - `STAGE0_DATABASE_URL`, one replica, 1 call in flight (sequential) and 64;
//! - `STAGE0_DATABASE_URL`, two replicas (two server processes on the same database, each with its
//!   own client) at once, 32 calls in flight each (64 in all) and 64 each.
//!
//! For each: calls/s (all replicas' calls over the wall time of the measured part), p50 / p99 of
//! the sequential calls, the servers' CPU per call (all threads of every replica,
//! `/proc/<pid>/task/*/schedstat`) and, with PostgreSQL, the cluster's CPU per call (the
//! postmaster and all its children: the replicas' backends, the WAL writer, autovacuum) and:
//!
//! - **commits**: the write transactions in the measured part, from the snapshot's `xmax` (the
//!   next transaction id, read without taking one) before and after it: every batch a replica
//!   commits inserts rows and so takes one id, and the harness's own reads take none. (An
//!   autovacuum `ANALYZE` takes one too; at most one or two a minute.)
//! - **records per commit**: the rows `stage0_audit` gained over those commits, and **decisions
//!   per commit** the same for rows whose line is a `"kind":"decision"` record. The measured part
//!   starts and ends with the chain holding exactly two rows per call made so far (the harness
//!   waits for the last outcomes, which linger up to 5 ms for a batch to ride on).
//! - **commits per WAL sync**: over each configuration's whole life (start-up and warm-up
//!   included), its write transactions over the `wal_sync` count of `pg_stat_wal`, read once the
//!   replicas have stopped and their backends are gone (a backend reports its counts as it exits;
//!   while it runs they may be up to 10 s late).
//!
//! After each configuration the harness checks that the log (or the chain) grew by exactly two
//! records per call, or fails. Right before each configuration it measures the disk's own floor
//! in the folder of the file logs, on the cluster's disk too (one record-sized line appended and
//! `fdatasync`'d, p50 / p99): on a shared VM it moves tenfold within minutes.
//! Each configuration runs for about [`Budget::seconds`] after a warm-up that sets its call
//! count, as in `benches/audit.rs`. Every wait is bounded: a watchdog ends the whole run.
//!
//! It prints a table and writes the figures as JSON to `target/bench-postgres.json`.

#[path = "common/line_client.rs"]
mod line_client;
#[path = "common/measure.rs"]
mod measure;

// The bench uses the cluster's start, URL, data folder and `psql`; not its stop and restart.
#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use line_client::{RESEARCH_TOPIC, Server, cpu_ns, load_average, server_binary, watchdog};
use measure::{Budget, count_lines, filesystem, fsync_floor, micros, p50_p99};
use postgres::Postgres;

/// The whole run is aborted after this long: a hung server must not hang the bench forever.
const WATCHDOG: Duration = Duration::from_secs(15 * 60);

/// The longest the harness waits for the chain to hold the rows it expects, or for the stopped
/// replicas' backends to be gone.
const SETTLE: Duration = Duration::from_secs(30);

/// The `application_name` the server's connections carry (`database.rs`).
const APPLICATION: &str = "mcp-server-stage0";

/// Where the servers keep the audit log.
#[derive(Clone, Copy, PartialEq)]
enum Store {
    /// The file log, with fsync: the default.
    File,
    /// `STAGE0_DATABASE_URL`.
    Postgres,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::File => "file",
            Store::Postgres => "postgres",
        }
    }
}

/// One configuration: where the log goes, how many server processes, how many calls in flight
/// on each.
#[derive(Clone, Copy)]
struct Config {
    store: Store,
    replicas: usize,
    in_flight: usize,
}

impl Config {
    fn key(self) -> String {
        format!("{}_{}x{}", self.store.name(), self.replicas, self.in_flight)
    }
}

const CONFIGS: [Config; 6] = [
    Config {
        store: Store::File,
        replicas: 1,
        in_flight: 1,
    },
    Config {
        store: Store::File,
        replicas: 1,
        in_flight: 64,
    },
    Config {
        store: Store::Postgres,
        replicas: 1,
        in_flight: 1,
    },
    Config {
        store: Store::Postgres,
        replicas: 1,
        in_flight: 64,
    },
    Config {
        store: Store::Postgres,
        replicas: 2,
        in_flight: 32,
    },
    Config {
        store: Store::Postgres,
        replicas: 2,
        in_flight: 64,
    },
];

/// What the database says at one moment.
#[derive(Clone, Copy, Debug)]
struct Probe {
    /// The snapshot's `xmax`: the next transaction id.
    next_xid: u64,
    rows: u64,
    decisions: u64,
    /// `pg_stat_wal.wal_sync` (as reported so far).
    wal_syncs: u64,
}

/// What the database counted over one configuration.
struct Commits {
    /// Write transactions in the measured part.
    commits: u64,
    records: u64,
    decisions: u64,
    /// Write transactions and WAL syncs over the configuration's whole life.
    life_commits: u64,
    life_wal_syncs: u64,
    /// The cluster's CPU time over the measured part.
    cpu: Duration,
}

/// What one configuration measured.
struct Row {
    config: Config,
    /// Measured calls, all replicas.
    calls: usize,
    calls_per_s: f64,
    /// p50 and p99 of the sequential calls.
    latency: Option<(Duration, Duration)>,
    /// The servers' CPU time per call, all replicas.
    cpu_per_call: Duration,
    database: Option<Commits>,
    /// The disk's floor right before: p50 and p99 of one record appended and `fdatasync`'d.
    floor: (Duration, Duration),
}

fn main() {
    // `cargo bench` passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|arg| arg == "--quick");
    let budget = Budget::new(quick);
    watchdog("postgres", WATCHDOG);
    let binary = server_binary();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let scratch = tempfile::Builder::new()
        .prefix("bench-postgres-")
        .tempdir_in(&target)
        .expect("a temporary folder under target/");
    let load_before = load_average();
    let pg = Postgres::start();
    let data = pg.data_dir();
    let data_filesystem = filesystem(&data);
    assert!(
        !data_filesystem.starts_with("tmpfs"),
        "the cluster's data folder {} is on a tmpfs ({data_filesystem}), where a commit's WAL \
         flush costs nothing: tests/common/postgres.rs puts its clusters under /tmp",
        data.display()
    );
    prepare(&binary, &pg, scratch.path());

    let rows: Vec<Row> = CONFIGS
        .into_iter()
        .map(|config| measure(&binary, config, &budget, scratch.path(), &pg))
        .collect();
    let load_after = load_average();
    let version = pg.psql("SHOW server_version").trim().to_owned();
    drop(pg);

    println!("\nserver {}", binary.display());
    println!(
        "PostgreSQL {version}, data in {} ({data_filesystem}); file logs in {} ({})",
        data.display(),
        scratch.path().display(),
        filesystem(scratch.path())
    );
    println!("load average before {load_before}, after {load_after}\n");
    print_table(&rows);

    let mut figures = BTreeMap::new();
    figures.insert("server".to_owned(), json!(binary.display().to_string()));
    figures.insert("postgres_version".to_owned(), json!(version));
    figures.insert(
        "mode".to_owned(),
        json!(if quick { "quick" } else { "full" }),
    );
    figures.insert("load_before".to_owned(), json!(load_before));
    figures.insert("load_after".to_owned(), json!(load_after));
    for row in &rows {
        let key = row.config.key();
        let mut add = |name: &str, value: Value| {
            figures.insert(format!("{key}_{name}"), value);
        };
        add("fsync_floor_p50_us", json!(micros(row.floor.0)));
        add("fsync_floor_p99_us", json!(micros(row.floor.1)));
        add("calls", json!(row.calls));
        add("calls_per_s", json!(row.calls_per_s.round()));
        add("cpu_per_call_us", json!(micros(row.cpu_per_call)));
        if let Some((p50, p99)) = row.latency {
            add("p50_us", json!(micros(p50)));
            add("p99_us", json!(micros(p99)));
        }
        if let Some(database) = &row.database {
            add("commits", json!(database.commits));
            add(
                "records_per_commit",
                json!(round2(database.records_per_commit())),
            );
            add(
                "decisions_per_commit",
                json!(round2(database.decisions_per_commit())),
            );
            add(
                "commits_per_wal_sync",
                json!(round2(database.commits_per_wal_sync())),
            );
            add(
                "postgres_cpu_per_call_us",
                json!(micros(database.cpu / row.calls as u32)),
            );
        }
    }
    let path = target.join("bench-postgres.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&figures).expect("JSON") + "\n",
    )
    .expect("target/bench-postgres.json is writable");
    println!("\nfigures written to {}", path.display());
}

impl Commits {
    fn records_per_commit(&self) -> f64 {
        self.records as f64 / self.commits as f64
    }

    fn decisions_per_commit(&self) -> f64 {
        self.decisions as f64 / self.commits as f64
    }

    fn commits_per_wal_sync(&self) -> f64 {
        self.life_commits as f64 / self.life_wal_syncs as f64
    }
}

/// The environment of a server for `store`: its log at `log`, or the database at `url`.
fn server_env<'a>(store: Store, log: &'a str, url: &'a str) -> Vec<(&'a str, &'a str)> {
    match store {
        Store::File => vec![("STAGE0_AUDIT_LOG", log), ("STAGE0_AUDIT_SYNC", "on")],
        // The line client sets `STAGE0_AUDIT_LOG=off`, which may not stand beside a database;
        // an empty value is the same as none.
        Store::Postgres => vec![("STAGE0_DATABASE_URL", url), ("STAGE0_AUDIT_LOG", "")],
    }
}

/// One server on the database, one call, stopped: the schema is in place (the probes read its
/// tables) and the cluster has served a replica once before anything is measured.
fn prepare(binary: &Path, pg: &Postgres, dir: &Path) {
    let url = pg.url();
    let mut server = Server::spawn(binary, &server_env(Store::Postgres, "", &url), dir);
    server.initialize();
    server.call_checked(1, RESEARCH_TOPIC);
    server.stop();
    wait_for_backends_gone(pg);
    let probe = probe(pg);
    assert_eq!(probe.rows, 2, "one call, two rows: {probe:?}");
    assert_eq!(probe.decisions, 1, "one call, one decision: {probe:?}");
}

/// Runs one configuration in fresh server processes.
fn measure(binary: &Path, config: Config, budget: &Budget, dir: &Path, pg: &Postgres) -> Row {
    let Config {
        store,
        replicas,
        in_flight,
    } = config;
    let floor = fsync_floor(dir, budget.seconds);
    let pipelined = in_flight > 1;
    assert!(
        pipelined || replicas == 1,
        "sequential runs have one replica"
    );
    let log = dir.join(format!("{}.jsonl", config.key()));
    let log_text = log.to_str().expect("a UTF-8 temporary path");
    let url = pg.url();
    let database = store == Store::Postgres;

    let life_before = database.then(|| probe(pg));
    let mut servers: Vec<Server> = (0..replicas)
        .map(|_| Server::spawn(binary, &server_env(store, log_text, &url), dir))
        .collect();
    for server in &mut servers {
        server.initialize();
        server.call_checked(1, RESEARCH_TOPIC);
    }
    let pids: Vec<u32> = servers.iter().map(|server| server.child.id()).collect();

    // The warm-up, which also gives the rate the measured count is chosen from.
    let (warm_up, warm_up_time) = if pipelined {
        let calls = budget.pipelined.0;
        (calls, on_each(&mut servers, 2, calls, in_flight))
    } else {
        budget.warm_up(|n| {
            servers[0].call_timed(2 + n, RESEARCH_TOPIC);
        })
    };
    // Per replica: they run at once, so each gets the whole budget of time.
    let calls = budget.calls(pipelined, warm_up, warm_up_time);
    let first = 2 + warm_up as u64;
    let made_before = replicas * (1 + warm_up);
    let window_before = life_before.map(|life| settle(pg, life.rows + 2 * made_before as u64));

    let cpu_before: u64 = pids.iter().map(|pid| cpu_ns(*pid)).sum();
    let cluster_before = database.then(|| cluster_cpu(pg));
    let (elapsed, latency) = if pipelined {
        (on_each(&mut servers, first, calls, in_flight), None)
    } else {
        let start = Instant::now();
        let mut times: Vec<Duration> = (0..calls as u64)
            .map(|id| servers[0].call_timed(first + id, RESEARCH_TOPIC))
            .collect();
        let elapsed = start.elapsed();
        (elapsed, Some(p50_p99(&mut times)))
    };
    let cpu = pids.iter().map(|pid| cpu_ns(*pid)).sum::<u64>() - cpu_before;
    let cluster = cluster_before.map(|before| cpu_since(&before, &cluster_cpu(pg)));
    let measured = replicas * calls;
    let window_after =
        life_before.map(|life| settle(pg, life.rows + 2 * (made_before + measured) as u64));
    for server in servers {
        server.stop();
    }

    let made = made_before + measured;
    let database = match (life_before, window_before, window_after, cluster) {
        (Some(life_before), Some(before), Some(after), Some(cluster)) => {
            wait_for_backends_gone(pg);
            let life_after = probe(pg);
            assert_eq!(
                life_after.rows - life_before.rows,
                2 * made as u64,
                "{}: two rows per call in stage0_audit",
                config.key()
            );
            assert_eq!(
                life_after.decisions - life_before.decisions,
                made as u64,
                "{}: one decision per call in stage0_audit",
                config.key()
            );
            Some(Commits {
                commits: after.next_xid - before.next_xid,
                records: after.rows - before.rows,
                decisions: after.decisions - before.decisions,
                life_commits: life_after.next_xid - life_before.next_xid,
                life_wal_syncs: life_after.wal_syncs - life_before.wal_syncs,
                cpu: cluster,
            })
        }
        _ => {
            let records = count_lines(&log);
            assert_eq!(records, 2 * made, "{}: two records per call", log.display());
            std::fs::remove_file(&log).expect("the log can be removed");
            None
        }
    };
    Row {
        config,
        calls: measured,
        calls_per_s: measured as f64 / elapsed.as_secs_f64(),
        latency,
        cpu_per_call: Duration::from_nanos(cpu / measured as u64),
        database,
        floor,
    }
}

/// `calls` calls with ids `first..`, `in_flight` at a time, on every server at once, each from
/// its own thread; returns the wall time until the last of them has its last answer.
fn on_each(servers: &mut [Server], first: u64, calls: usize, in_flight: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let clients: Vec<_> = servers
            .iter_mut()
            .map(|server| {
                scope.spawn(move || {
                    server.pipelined(RESEARCH_TOPIC, first, calls, in_flight, |_| {})
                })
            })
            .collect();
        for client in clients {
            client.join().expect("a replica's client finished");
        }
    });
    start.elapsed()
}

/// The database's counters now, in one statement (one snapshot), taking no transaction id.
fn probe(pg: &Postgres) -> Probe {
    let out = pg.psql(
        "SELECT pg_snapshot_xmax(pg_current_snapshot()), \
                (SELECT count(*) FROM stage0_audit), \
                (SELECT count(*) FROM stage0_audit WHERE line LIKE '%\"kind\":\"decision\"%'), \
                (SELECT wal_sync FROM pg_stat_wal)",
    );
    let fields: Vec<u64> = out
        .trim()
        .split('|')
        .map(|field| field.parse().unwrap_or_else(|_| panic!("a count: {out:?}")))
        .collect();
    let [next_xid, rows, decisions, wal_syncs] = fields[..] else {
        panic!("four counts: {out:?}");
    };
    Probe {
        next_xid,
        rows,
        decisions,
        wal_syncs,
    }
}

/// Waits until `stage0_audit` holds `rows` rows (the last outcomes linger up to 5 ms before they
/// are written) and returns the probe that saw them; fails past [`SETTLE`] or beyond `rows`.
fn settle(pg: &Postgres, rows: u64) -> Probe {
    let start = Instant::now();
    loop {
        let probe = probe(pg);
        assert!(
            probe.rows <= rows,
            "more rows than calls: {probe:?}, {rows}"
        );
        if probe.rows == rows {
            return probe;
        }
        assert!(
            start.elapsed() < SETTLE,
            "stage0_audit still holds {} rows of {rows} after {SETTLE:?}",
            probe.rows
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until no server connection is left (a backend reports its statistics as it exits),
/// failing past [`SETTLE`].
fn wait_for_backends_gone(pg: &Postgres) {
    let start = Instant::now();
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION}'");
    while pg.psql(&sql).trim() != "0" {
        assert!(
            start.elapsed() < SETTLE,
            "the stopped servers' backends are still there after {SETTLE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The CPU time used so far by each process of the cluster (the postmaster and its children), in
/// nanoseconds, by pid.
fn cluster_cpu(pg: &Postgres) -> HashMap<u32, u64> {
    let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .expect("the cluster's postmaster.pid");
    let postmaster: u32 = pid_file
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid on the first line of postmaster.pid");
    let mut cpu = HashMap::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // `pid (comm) state ppid …`; the command may hold spaces and parentheses.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if pid != postmaster && parent != Some(postmaster) {
            continue;
        }
        // A single-threaded process: its own schedstat is all of it.
        if let Some(ns) = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        {
            cpu.insert(pid, ns);
        }
    }
    cpu
}

/// The CPU time used between two [`cluster_cpu`] readings by the processes alive at the second
/// (one that started in between counts whole; one that ended in between is missed).
fn cpu_since(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Duration {
    let ns = after
        .iter()
        .map(|(pid, ns)| ns.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>6} {:>8} {:>7} {:>7} {:>10} {:>7} {:>7} {:>10} {:>10} {:>11}",
        "log",
        "replicas",
        "in flight",
        "disk p50",
        "calls",
        "calls/s",
        "p50 µs",
        "p99 µs",
        "server CPU",
        "PG CPU",
        "commits",
        "rec/commit",
        "dec/commit",
        "commits/WAL",
    );
    println!("{:-<130}", "");
    for row in rows {
        let (p50, p99) = row
            .latency
            .map_or((String::new(), String::new()), |(p50, p99)| {
                (format!("{:.0}", micros(p50)), format!("{:.0}", micros(p99)))
            });
        let database = |figure: &dyn Fn(&Commits) -> String| {
            row.database.as_ref().map_or_else(String::new, figure)
        };
        println!(
            "{:<8} {:>8} {:>9} {:>9.0} {:>6} {:>8.0} {:>7} {:>7} {:>10.1} {:>7} {:>7} {:>10} {:>10} {:>11}",
            row.config.store.name(),
            row.config.replicas,
            row.config.in_flight,
            micros(row.floor.0),
            row.calls,
            row.calls_per_s,
            p50,
            p99,
            micros(row.cpu_per_call),
            database(&|d| format!("{:.1}", micros(d.cpu / row.calls as u32))),
            database(&|d| d.commits.to_string()),
            database(&|d| format!("{:.2}", d.records_per_commit())),
            database(&|d| format!("{:.2}", d.decisions_per_commit())),
            database(&|d| format!("{:.2}", d.commits_per_wal_sync())),
        );
    }
    println!(
        "(in flight: per replica; disk p50: the fdatasync floor right before, µs; CPU: µs per \
         call; commits: write transactions in the measured part; commits/WAL: over the whole \
         run, per pg_stat_wal.wal_sync)"
    );
}
