//! `TestDb`: a database of its own for one test, dropped afterwards.

use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh database on the test PostgreSQL instance; dropped with the value.
pub struct TestDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn with_dbname(url: &str, db: &str) -> String {
    // postgres://user:pw@host:port/dbname?params
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..path_start])
}

impl TestDb {
    /// Creates `fastchat_test_<pid>_<n>` on the instance named by
    /// `FASTCHAT_TEST_DATABASE_URL`.
    pub fn create() -> TestDb {
        let admin_url = std::env::var("FASTCHAT_TEST_DATABASE_URL")
            .expect("FASTCHAT_TEST_DATABASE_URL is not set: run the suite with ./scripts/test.sh");
        TestDb::create_on(&admin_url)
    }

    /// Creates a fresh database on the instance at `admin_url`.
    pub fn create_on(admin_url: &str) -> TestDb {
        let admin_url = admin_url.to_string();
        let name = format!(
            "fastchat_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("cannot connect to the test database server");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .and_then(|_| admin.batch_execute(&format!("CREATE DATABASE {name}")))
            .expect("cannot create a test database");
        let url = with_dbname(&admin_url, &name);
        TestDb {
            admin_url,
            name,
            url,
        }
    }

    /// A new connection to this database.
    pub fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A PostgreSQL instance of a test's own (scripts/postgres.sh, in a temporary folder),
/// for tests that stop and start the database; stopped when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// Its superuser URL.
    pub url: String,
}

fn postgres_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("run scripts/postgres.sh");
    assert!(out.status.success(), "scripts/postgres.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl PrivatePostgres {
    /// Initializes and starts an instance on a free port.
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let url = postgres_script(&[
            "start",
            &dir.path().display().to_string(),
            &port.to_string(),
        ]);
        PrivatePostgres { dir, port, url }
    }

    /// Stops the instance (fast shutdown: connections are cut).
    pub fn stop(&self) {
        postgres_script(&["stop", &self.dir.path().display().to_string()]);
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        postgres_script(&[
            "start",
            &self.dir.path().display().to_string(),
            &self.port.to_string(),
        ]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/postgres.sh"
            ))
            .args(["stop", &self.dir.path().display().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_dbname("postgres://u:p@127.0.0.1:5432/fastchat", "x"),
            "postgres://u:p@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_dbname("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
