//! A PostgreSQL server of the tests' (and benchmarks') own: Debian's
//! `postgresql` binaries, `initdb` and `pg_ctl` on a temporary directory,
//! as a non-root user (PostgreSQL refuses root), on a free port. `.ci/test`
//! installs the package when it is missing; `PM_TEST_PG_BIN` names another
//! directory of binaries.

// Not every user of this module uses all of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// The user the server runs as when the tests run as root: `nobody`.
const UNPRIVILEGED: u32 = 65534;

pub struct Postgres {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
    options: String,
}

/// The newest `/usr/lib/postgresql/N/bin` (Debian's layout).
fn binaries() -> PathBuf {
    if let Ok(bin) = std::env::var("PM_TEST_PG_BIN") {
        return bin.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql (Debian's `postgresql`; `.ci/test` installs it)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
        .1
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl Postgres {
    /// A new server, started and accepting connections. `durable`: with
    /// fsync, as production runs it (for benchmarks); without, tests run
    /// faster and lose nothing they look at.
    pub fn start(durable: bool) -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = is_root();
        let home = dir.path().join("pg");
        std::fs::create_dir(&home).expect("pg dir");
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            std::os::unix::fs::chown(&home, Some(UNPRIVILEGED), Some(UNPRIVILEGED))
                .expect("chown the server's directory");
        }
        let bin = binaries();
        let data = home.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .current_dir(&home);
        let out = as_server_user(&mut initdb, root)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50{}",
            home.display(),
            if durable {
                ""
            } else {
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            }
        );
        let server = Postgres {
            log: home.join("server.log"),
            _dir: dir,
            bin,
            data,
            port,
            options,
        };
        server.start_again();
        server
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(self.bin.join("pg_ctl"));
        command.arg("-D").arg(&self.data).args(args);
        as_server_user(&mut command, is_root())
            .current_dir(self.data.parent().expect("home"))
            .output()
            .expect("pg_ctl runs")
    }

    /// Starts the server (again) on the same directory and port; returns
    /// once it accepts connections.
    pub fn start_again(&self) {
        let log = self.log.display().to_string();
        let out = self.pg_ctl(&["-w", "-t", "60", "-l", &log, "-o", &self.options, "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stops the server (fast: open connections are cut); returns once it
    /// is down.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["-w", "-m", "fast", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect to PostgreSQL")
    }
}

fn as_server_user(command: &mut Command, root: bool) -> &mut Command {
    if root {
        command.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
    }
    command
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}
