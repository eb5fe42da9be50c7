//! A throw-away PostgreSQL cluster for the integration tests: `initdb` into a fresh temporary
//! folder under `/tmp`, a server on a free port of 127.0.0.1 with its socket in that folder, trust
//! authentication for the `postgres` user, the default `postgres` database and nothing else.
//! Dropping a [`Postgres`] stops its server and removes the folder. Clusters started by parallel
//! tests share nothing: each has its own folder, port and socket.
//!
//! The server binaries are found by [`pg_bin_dir`]; when there are none the test fails and says
//! what to install, it is never skipped. PostgreSQL refuses to run as root, so under root every
//! server command runs as the `postgres` user (`runuser`, or `su` without it). Every wait is
//! bounded by [`PG_BOUND`] (`pg_ctl -w -t`); nothing sleeps.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

/// The longest `pg_ctl` waits for a server to start or stop, and (with a margin, so `pg_ctl`
/// reports its own timeout first) the longest any command of this module may run.
/// Generous because several clusters may start at once on two cores shared with builds.
pub const PG_BOUND: Duration = Duration::from_secs(60);

/// Where the binaries are looked for after `STAGE0_PG_BIN` and `PATH` (and before them,
/// `/usr/lib/postgresql/<version>/bin`, the Debian and Ubuntu layout).
const FALLBACK_BIN_DIRS: [&str; 3] = [
    "/usr/local/pgsql/bin",
    "/opt/homebrew/bin",
    "/usr/local/bin",
];

/// How many free ports [`Postgres::start`] tries when another process takes the one it picked
/// between picking it and the server binding it.
const PORT_ATTEMPTS: usize = 3;

/// A running (or, after [`Postgres::stop`], stopped) throw-away cluster.
pub struct Postgres {
    /// Holds the data folder (`data`), the server log and the server's Unix socket.
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    /// The user the server commands run as (`postgres` under root), `None` for the current one.
    run_as: Option<String>,
}

impl Postgres {
    /// Initialises a cluster in a fresh temporary folder and starts it on a free port of
    /// 127.0.0.1, returning once it accepts connections.
    ///
    /// # Panics
    ///
    /// When no server binaries are found, `initdb` fails, or the server does not start within
    /// [`PG_BOUND`] (the message holds the tail of the server log).
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        let run_as = run_as();
        let dir = tempfile::Builder::new()
            .prefix("stage0-pg-")
            .tempdir_in("/tmp")
            .expect("a temporary folder under /tmp");
        if let Some(user) = &run_as {
            chown(dir.path(), user);
        }
        let mut postgres = Postgres {
            dir,
            port: 0,
            bin,
            run_as,
        };
        postgres.initdb();
        for attempt in 1..=PORT_ATTEMPTS {
            postgres.set_port(free_port());
            match postgres.pg_ctl_start() {
                Ok(()) => return postgres,
                Err(_) if attempt < PORT_ATTEMPTS && postgres.port_was_taken() => continue,
                Err(error) => panic!("{error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The connection URL: user `postgres`, database `postgres`, no password.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data folder (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server the clean way (`pg_ctl stop -m fast`), waiting until it is gone; the
    /// cluster stays on disk for [`Postgres::start_again`].
    pub fn stop(&self) {
        let output = self.pg_ctl(&["stop", "-m", "fast"]);
        if !output.status.success() {
            panic!(
                "pg_ctl stop failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            );
        }
    }

    /// Starts the stopped server again, on the same port and data folder.
    pub fn start_again(&self) {
        if let Err(error) = self.pg_ctl_start() {
            panic!("{error}");
        }
    }

    /// Runs `sql` with `psql` against the cluster and returns its stdout: unaligned, tuples only,
    /// no `.psqlrc`, stopping at the first error; one line per row (`select 1` gives `"1\n"`).
    ///
    /// # Panics
    ///
    /// When `psql` fails (its stderr is in the message).
    pub fn psql(&self, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let psql = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let mut command = Command::new(&psql);
        command
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .arg("-c")
            .arg(sql);
        let output = run(command, "psql").unwrap_or_else(|error| panic!("{error}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            panic!(
                "psql failed ({}) on {sql:?}: {}{stdout}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        stdout
    }

    /// `initdb` into `data`: user `postgres`, trust authentication, UTF-8, the C locale.
    fn initdb(&self) {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-instructions");
        let output = run(command, "initdb").unwrap_or_else(|error| panic!("{error}"));
        if !output.status.success() {
            panic!(
                "initdb failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Appends the cluster's settings to `postgresql.conf` (a later line wins over an earlier
    /// one, so a retry with another port only appends again).
    fn set_port(&mut self, port: u16) {
        self.port = port;
        let sockets = self.dir.path().to_str().expect("a UTF-8 temporary path");
        let settings = format!(
            "\n# tests/common/postgres.rs\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nfsync = on\n",
            sockets.replace('\'', "''")
        );
        OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .expect("postgresql.conf is writable");
    }

    /// `pg_ctl start`, waiting until the server accepts connections; the error holds the tail
    /// of the server log.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.dir.path().join("server.log");
        let output = self.pg_ctl(&[OsStr::new("start"), OsStr::new("-l"), log.as_os_str()]);
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "the PostgreSQL server did not start on 127.0.0.1:{} ({}): {}{}{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            ))
        }
    }

    /// Whether the server log says the port was in use.
    fn port_was_taken(&self) -> bool {
        fs::read_to_string(self.dir.path().join("server.log"))
            .is_ok_and(|log| log.contains("Address already in use"))
    }

    /// `pg_ctl <args> -D data -w -t PG_BOUND`, run to its end (or failed after [`PG_BOUND`] and
    /// a margin); a command that cannot run at all is a failed output, not a panic, so
    /// [`Drop`] can ignore it.
    fn pg_ctl<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut command = self.server_command("pg_ctl");
        command.args(args).arg("-D").arg(self.data_dir()).args([
            "-w",
            "-t",
            &PG_BOUND.as_secs().to_string(),
        ]);
        run(command, "pg_ctl").unwrap_or_else(|error| Output {
            status: failed_status(),
            stdout: Vec::new(),
            stderr: error.into_bytes(),
        })
    }

    /// The server program `name` of the bin folder, run as [`Postgres::run_as`], in the
    /// cluster's folder (so the working directory is one the server user may enter).
    fn server_command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let runuser = which("runuser").or_else(|| {
            ["/usr/sbin/runuser", "/sbin/runuser"]
                .map(PathBuf::from)
                .into_iter()
                .find(|path| path.is_file())
        });
        let mut command = match (&self.run_as, runuser) {
            (None, _) => Command::new(program),
            (Some(user), Some(runuser)) => {
                let mut command = Command::new(runuser);
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            (Some(user), None) => {
                // `su` runs one shell command line; the program and its arguments follow the
                // user (after `--`, so `su` reads none of them) and the shell execs them as
                // "$0" "$@", so nothing needs quoting.
                let mut command = Command::new("su");
                command
                    .args(["-s", "/bin/sh", "-c", "exec \"$0\" \"$@\"", "--", user])
                    .arg(program);
                command
            }
        };
        command.current_dir(self.dir.path());
        command
    }

    /// The last lines of the server log, for failure messages.
    fn log_tail(&self) -> String {
        let path = self.dir.path().join("server.log");
        match fs::read_to_string(&path) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("\n--- the end of {} ---\n{tail}", path.display())
            }
            Err(error) => format!("\n(no server log at {}: {error})", path.display()),
        }
    }
}

impl Drop for Postgres {
    /// Stops the server at once (`pg_ctl stop -m immediate`, no error when it is not running),
    /// then the folder is removed.
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

/// The folder of the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`): `STAGE0_PG_BIN`
/// when set, else the first folder on `PATH` holding `initdb`, else the highest version's
/// `/usr/lib/postgresql/<version>/bin`, else `/usr/local/pgsql/bin`, `/opt/homebrew/bin` or
/// `/usr/local/bin`.
///
/// # Panics
///
/// When there is none, or `STAGE0_PG_BIN` names a folder without them; the message says what to
/// install.
pub fn pg_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(find_pg_bin_dir).clone()
}

fn find_pg_bin_dir() -> PathBuf {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    if let Some(dir) = std::env::var_os("STAGE0_PG_BIN").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            has_server(&dir),
            "STAGE0_PG_BIN={} holds no initdb, pg_ctl and postgres; point it at the bin folder \
             of a PostgreSQL server installation",
            dir.display()
        );
        return dir;
    }
    let on_path = which("initdb").and_then(|initdb| initdb.parent().map(Path::to_path_buf));
    let debian = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = version_key(entry.file_name().to_str()?)?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .max()
        .map(|(_, dir)| dir);
    on_path
        .into_iter()
        .chain(debian)
        .chain(FALLBACK_BIN_DIRS.iter().map(PathBuf::from))
        .find(|dir| has_server(dir))
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in STAGE0_PG_BIN, on \
                 PATH, in /usr/lib/postgresql/*/bin or in {FALLBACK_BIN_DIRS:?}: install them \
                 (`apt-get install postgresql` on Debian or Ubuntu, `brew install postgresql` on \
                 macOS) or set STAGE0_PG_BIN to their folder"
            )
        })
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; `None` for a name that is not a version.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The first file called `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The user the server commands must run as: `postgres` when this process is root (PostgreSQL
/// refuses to run as root), else `None`.
///
/// # Panics
///
/// Under root, when there is no `postgres` user.
fn run_as() -> Option<String> {
    static USER: OnceLock<Option<String>> = OnceLock::new();
    USER.get_or_init(|| {
        if id(&["-u"]) != "0" {
            return None;
        }
        let known = Command::new("id")
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            known,
            "the tests run as root and PostgreSQL refuses to, but there is no `postgres` user to \
             run it as: create one (`useradd --system --user-group postgres`; installing the \
             postgresql package does) or run the tests as another user"
        );
        Some("postgres".to_owned())
    })
    .clone()
}

/// Gives `path` to `user` (and its primary group).
fn chown(path: &Path, user: &str) {
    let number = |flag| {
        id(&[flag, user])
            .parse::<u32>()
            .unwrap_or_else(|error| panic!("`id {flag} {user}` is not a number: {error}"))
    };
    std::os::unix::fs::chown(path, Some(number("-u")), Some(number("-g")))
        .unwrap_or_else(|error| panic!("chown {user} {}: {error}", path.display()));
}

/// The output of `id <args>`, trimmed.
fn id(args: &[&str]) -> String {
    let output = Command::new("id")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("`id` cannot run: {error}"));
    assert!(
        output.status.success(),
        "`id {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs `command` to its end without `PG*` variables (the caller's `PGPORT` or `PGDATA` must not
/// steer it), capturing its output; an error when it cannot start or takes longer than
/// [`PG_BOUND`] and a margin.
fn run(mut command: Command, what: &str) -> Result<Output, String> {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("{what} cannot run: {error}"))?;
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    let limit = PG_BOUND + Duration::from_secs(15);
    match receiver.recv_timeout(limit) {
        Ok(output) => output.map_err(|error| format!("{what}: {error}")),
        Err(_) => Err(format!(
            "{what} (pid {pid}) did not finish within {limit:?}"
        )),
    }
}

/// The exit status of a command that could not run.
fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(1 << 8)
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("a bound address").port()
}
