//! `Cluster`: a balancer and N servers started as real processes on free loopback ports,
//! with their own database, keys and log files; stopped (and their logs shown, if the
//! test failed) when dropped.

use crate::database::TestDb;
use crate::raw::RawConn;
use crate::wait::wait_for;
use fastchat_client::{balancer_status, Client, ClientConfig};
use fastchat_common::ticket::{generate_ticket_keys, TicketSigner};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of servers.
    pub servers: usize,
    /// Balancer strategy.
    pub strategy: String,
    /// Extra flags for every server.
    pub server_args: Vec<String>,
    /// The PostgreSQL instance to make the cluster's database on (superuser URL);
    /// `None`: the shared test instance.
    pub postgres: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            servers: 2,
            strategy: "round-robin".into(),
            server_args: Vec::new(),
            postgres: None,
        }
    }
}

/// One server process.
pub struct ServerProcess {
    /// Its name (`server-1` ...).
    pub name: String,
    /// Its client address.
    pub addr: String,
    child: Option<Child>,
}

/// A running cluster.
pub struct Cluster {
    /// The cluster's database (dropped after the processes stop).
    pub db: TestDb,
    dir: tempfile::TempDir,
    /// The balancer's address.
    pub balancer: String,
    balancer_child: Option<Child>,
    /// The servers, in order.
    pub servers: Vec<ServerProcess>,
    options: ClusterOptions,
}

/// Time allowed for a cluster to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the release binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FASTCHAT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/release/fastchat-loadtest -> target/release;
    // target/release/deps/integration-HASH -> target/release
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe directory");
    if dir.join("fastchat-server").exists() {
        return dir.to_path_buf();
    }
    dir.parent().expect("target directory").to_path_buf()
}

/// Path of one of the project's binaries.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build with `cargo build --release --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (bound and released), never one this process handed out
/// before: a port released here is free again until the server it is meant for binds
/// it, and the kernel had given the same port to the next server of a cluster, which
/// then could not listen.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no port left that this process has not handed out already")
}

/// Makes the cluster CA in `DIR/tls` (once) and a certificate for `name`, with the
/// same command `run_cluster.sh` uses.
fn make_certificates(dir: &Path, name: &str) {
    make_pki(&dir.join("tls"), &[name]);
}

/// Makes a CA in `tls_dir` (once) and certificates for `names`, with
/// `fastchat-balancer tls` (what `run_cluster.sh` runs).
pub fn make_pki(tls_dir: &Path, names: &[&str]) {
    let status = Command::new(bin("fastchat-balancer"))
        .args(["--log-level", "warn", "tls", "--dir"])
        .arg(tls_dir)
        .args(names)
        .stdin(Stdio::null())
        .status()
        .expect("run fastchat-balancer tls");
    assert!(status.success(), "fastchat-balancer tls failed");
}

impl Cluster {
    /// Starts `servers` servers with the default options.
    pub fn start(servers: usize) -> Cluster {
        Cluster::start_with(ClusterOptions {
            servers,
            ..Default::default()
        })
    }

    /// Starts a cluster and waits until every server is live and fully meshed.
    pub fn start_with(options: ClusterOptions) -> Cluster {
        let db = match &options.postgres {
            Some(url) => TestDb::create_on(url),
            None => TestDb::create(),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        make_certificates(dir.path(), "balancer");
        let (private, public) = generate_ticket_keys().expect("ticket keys");
        std::fs::write(dir.path().join("ticket.key"), private).expect("write key");
        std::fs::write(dir.path().join("ticket.pub"), public).expect("write key");
        let balancer = format!("127.0.0.1:{}", free_port());
        let mut cluster = Cluster {
            db,
            dir,
            balancer: balancer.clone(),
            balancer_child: None,
            servers: Vec::new(),
            options: options.clone(),
        };
        cluster.balancer_child = Some(cluster.spawn(
            "balancer",
            "fastchat-balancer",
            &[
                "--listen",
                &balancer,
                "--ticket-key",
                &cluster.path("ticket.key"),
                "--tls-dir",
                &cluster.path("tls"),
                "--strategy",
                &options.strategy,
            ],
        ));
        for _ in 0..options.servers {
            cluster.add_server_process();
        }
        cluster.wait_meshed(options.servers);
        cluster
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn spawn(&self, log_name: &str, binary: &str, args: &[&str]) -> Child {
        let log = File::create(self.dir.path().join(format!("{log_name}.log"))).expect("log file");
        Command::new(bin(binary))
            .args(args)
            .env("FASTCHAT_DATABASE_URL", &self.db.url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"))
    }

    fn add_server_process(&mut self) -> String {
        let name = format!("server-{}", self.servers.len() + 1);
        make_certificates(self.dir.path(), &name);
        let tls = self.tls_dir();
        self.spawn_server(&name, &tls)
    }

    /// Starts a server named `name` whose certificates come from `tls_dir` (which may
    /// hold another CA's: a process that is not a cluster member). It is stopped with
    /// the cluster; nothing waits for it to join.
    pub fn spawn_server(&mut self, name: &str, tls_dir: &Path) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--tls-dir".to_string(),
            tls_dir.display().to_string(),
            "--name".into(),
            name.to_string(),
            "--listen".into(),
            addr.clone(),
            "--ticket-pubkey".into(),
            self.path("ticket.pub"),
        ];
        args.extend(self.options.server_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self.spawn(name, "fastchat-server", &args);
        self.servers.push(ServerProcess {
            name: name.to_string(),
            addr,
            child: Some(child),
        });
        name.to_string()
    }

    /// Starts one more server into the running cluster and waits until it is meshed.
    pub fn add_server(&mut self) -> String {
        let name = self.add_server_process();
        let live = self.servers.iter().filter(|s| s.child.is_some()).count();
        self.wait_meshed(live);
        name
    }

    /// Waits until the balancer lists `n` live servers, each with `n - 1` mesh links.
    pub fn wait_meshed(&self, n: usize) {
        let config = self.config();
        wait_for(&format!("{n} meshed servers"), START_TIMEOUT, || {
            let (servers, _) = balancer_status(&config).ok()?;
            (servers.len() == n && servers.iter().all(|s| s.peers as usize == n - 1)).then_some(())
        });
    }

    /// The balancer's ticket signing key file.
    pub fn ticket_key_path(&self) -> PathBuf {
        self.dir.path().join("ticket.key")
    }

    /// The folder of the cluster's CA, certificates and keys (`make_pki` adds to it).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// The cluster CA's certificate file.
    pub fn ca(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    /// How a client reaches this cluster (its balancer, trusting its CA).
    pub fn config(&self) -> ClientConfig {
        ClientConfig::with_ca_file(self.balancer.clone(), &self.ca()).expect("cluster CA")
    }

    /// A hand-driven TLS connection to `addr` (the balancer or a server).
    pub fn raw(&self, addr: &str) -> RawConn {
        RawConn::connect(addr, &self.ca())
    }

    /// A user signed up by hand on server `index` over a `RawConn` (password
    /// "{user}-password"), with keys of its own; it never reads unless asked and never
    /// reconnects, unlike a `Client`.
    pub fn raw_user(&self, user: &str, index: usize) -> RawConn {
        self.raw_user_reading(user, index, false)
    }

    /// [`Cluster::raw_user`], saying in its hello whether it reads binary frames.
    pub fn raw_user_reading(&self, user: &str, index: usize, binary_bodies: bool) -> RawConn {
        use fastchat_common::e2e::{seal_key_backup, UserKeys};
        let password = format!("{user}-password");
        let keys = UserKeys::generate().expect("RSA keys");
        let mut conn = self.raw_hello(index, binary_bodies);
        conn.send_json(&serde_json::json!({
            "req": 1, "type": "signup", "user": user,
            "password": fastchat_common::password::login_secret(user, &password),
            "public_key": keys.public_pem(),
            "key_backup": seal_key_backup(&keys, &password),
        }));
        assert_eq!(conn.recv().expect("signup answered")["type"], "ok");
        conn
    }

    /// A hand-driven connection to server `index` that has said hello (saying whether
    /// it reads binary frames) and not logged in.
    pub fn raw_hello(&self, index: usize, binary_bodies: bool) -> RawConn {
        let server = &self.servers[index];
        let mut conn = self.raw(&server.addr);
        let ticket = self.ticket_signer().sign(&server.name).expect("ticket");
        conn.send_json(&serde_json::json!({
            "req": 0, "type": "hello", "version": 1, "ticket": ticket,
            "binary_bodies": binary_bodies,
        }));
        let answer = conn.recv().expect("hello answered");
        assert_eq!(answer["type"], "ok", "{answer}");
        assert_eq!(answer["result"]["binary_bodies"], true, "{answer}");
        conn
    }

    /// A client connected through the balancer (not logged in).
    pub fn client(&self) -> Client {
        let config = self.config();
        wait_for("a connection through the balancer", START_TIMEOUT, || {
            Client::connect(&config).ok()
        })
    }

    /// A client that the balancer placed on `server` (connects until it is so placed).
    pub fn client_on(&self, server: &str) -> Client {
        placed_on(&self.config(), server)
    }

    /// A client on `server` keeping its keys, history and downloads in `home`.
    pub fn client_with_home(&self, server: &str, home: &Path) -> Client {
        placed_on(&self.config().with_home(home), server)
    }

    /// A client on `server` (or anywhere), signed up and logged in as `user`.
    pub fn user(&self, user: &str, server: Option<&str>) -> Client {
        let client = match server {
            Some(s) => self.client_on(s),
            None => self.client(),
        };
        client
            .signup(user, &format!("{user}-password"))
            .unwrap_or_else(|e| panic!("signup {user}: {e}"));
        client
    }

    /// Flips one byte (20 from the end, inside the ciphertext) of the stored message
    /// whose seq `seq_query` selects, as an attacker with the database would.
    pub fn corrupt_stored(&self, seq_query: &str) {
        let n = self
            .db
            .connect()
            .execute(
                &format!(
                    "UPDATE pending SET body = encode(set_byte(decode(body, 'base64'), \
                         length(decode(body, 'base64')) - 20, \
                         get_byte(decode(body, 'base64'), length(decode(body, 'base64')) - 20) # 1), \
                         'base64') \
                     WHERE seq = ({seq_query})"
                ),
                &[],
            )
            .expect("corrupt a stored message");
        assert_eq!(n, 1, "exactly one stored message to corrupt");
    }

    /// A signer holding the balancer's real key (to make expired or misdirected tickets).
    pub fn ticket_signer(&self) -> TicketSigner {
        let pem = std::fs::read(self.dir.path().join("ticket.key")).expect("ticket key");
        TicketSigner::from_pem(&pem).expect("ticket key loads")
    }

    /// The pid of server `index` (0-based), if running.
    pub fn server_pid(&self, index: usize) -> Option<u32> {
        self.servers[index].child.as_ref().map(Child::id)
    }

    /// The balancer's pid.
    pub fn balancer_pid(&self) -> u32 {
        self.balancer_child
            .as_ref()
            .map(Child::id)
            .expect("balancer running")
    }

    /// Sends `signal` to server `index` and waits (bounded) for it to exit; returns
    /// whether it exited successfully.
    pub fn signal_server(&mut self, index: usize, signal: i32, timeout: Duration) -> bool {
        let mut child = self.servers[index].child.take().expect("server running");
        signal_and_wait(&mut child, signal, timeout)
    }

    /// Sends `signal` to the balancer and waits (bounded) for it to exit.
    pub fn signal_balancer(&mut self, signal: i32, timeout: Duration) -> bool {
        let mut child = self.balancer_child.take().expect("balancer running");
        signal_and_wait(&mut child, signal, timeout)
    }

    /// The text of a process's log (`balancer`, `server-1` ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Rows in the pending table (stored, unacknowledged messages).
    pub fn pending_count(&self) -> i64 {
        let mut db = self.db.connect();
        db.query_one("SELECT count(*) FROM pending", &[])
            .expect("count pending")
            .get(0)
    }
}

/// Connects with `config` until the balancer places the client on `server`.
fn placed_on(config: &ClientConfig, server: &str) -> Client {
    let what = format!("a connection placed on {server}");
    wait_for(&what, START_TIMEOUT, || {
        Client::connect(config)
            .ok()
            .filter(|c| c.server() == server)
    })
}

/// Sends `signal` and waits for the exit; SIGKILL after `timeout`. Returns whether the
/// process exited with status 0 (or, for SIGKILL, died) within the timeout.
pub fn signal_and_wait(child: &mut Child, signal: i32, timeout: Duration) -> bool {
    // SAFETY: kill(2) with a pid of a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success() || signal == libc::SIGKILL,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut children: Vec<Child> = self
            .servers
            .iter_mut()
            .filter_map(|s| s.child.take())
            .collect();
        children.extend(self.balancer_child.take());
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut names = vec!["balancer".to_string()];
            names.extend(self.servers.iter().map(|s| s.name.clone()));
            for name in names {
                let log = self.log(&name);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("----- {name}.log (last lines) -----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
