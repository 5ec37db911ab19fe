//! A PostgreSQL cluster of the test's own (initdb in a temporary folder, its own port), so a test can stop,
//! restart and promote it without touching the shared server. Run as root, the cluster runs as `postgres`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private cluster; stopped (immediately) when dropped.
pub struct PrivatePg {
    /// Its data folder.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _tmp: tempfile::TempDir,
}

/// The folder of the newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server programs in /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

/// A temporary folder `postgres` owns, and the data folder to create in it.
fn data_folder() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(tmp.path())
        .status();
    let dir = tmp.path().join("data");
    (tmp, dir)
}

/// Runs a PostgreSQL program as `postgres` (through runuser when the test runs as root).
fn run_pg(program: &str, args: &[&str]) {
    let path = bin_dir().join(program);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    let out = cmd.args(args).output().expect("run a PostgreSQL program");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    /// A new cluster, started, with trust authentication for `postgres` on 127.0.0.1.
    pub fn start() -> Self {
        let (tmp, dir) = data_folder();
        run_pg(
            "initdb",
            &[
                "-D",
                dir.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        Self::started(dir, tmp)
    }

    /// The cluster in `dir` (inside `tmp`), started on a free port.
    fn started(dir: PathBuf, tmp: tempfile::TempDir) -> Self {
        let pg = Self {
            dir,
            port: crate::helpers::free_port(),
            _tmp: tmp,
        };
        pg.up();
        pg
    }

    /// The URL of database `postgres` on it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            self.socket_dir().display()
        );
        let log = self.dir.with_file_name("server.log");
        run_pg(
            "pg_ctl",
            &[
                "-D",
                self.data(),
                "-o",
                &options,
                "-l",
                log.to_str().expect("utf-8 path"),
                "-w",
                "start",
            ],
        );
    }

    /// A streaming standby of `primary` (a base backup with its replication settings), started.
    pub fn standby_of(primary: &PrivatePg) -> Self {
        let (tmp, dir) = data_folder();
        run_pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                dir.to_str().expect("utf-8 path"),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        Self::started(dir, tmp)
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        run_pg("pg_ctl", &["-D", self.data(), "-w", "promote"]);
    }

    /// Stops the server the way a failover or a restart does (`fast`: every session is cut at once).
    pub fn down(&self) {
        run_pg("pg_ctl", &["-D", self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn socket_dir(&self) -> &Path {
        self.dir.parent().expect("the temporary folder")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let path = bin_dir().join("pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&path)
            .args(["-D", self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = Command::new(&path)
            .args(["-D", self.data(), "-m", "immediate", "stop"])
            .output();
    }
}
