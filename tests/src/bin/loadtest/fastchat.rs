//! The FastChat side of a run: the cluster (one of its own, or the one at `--balancer`),
//! its users (signed up, or logged in again when they exist), and the endpoints through
//! which the traffic scenarios drive real clients.

use crate::traffic::{Answer, Endpoint, SinkSlot};
use fastchat_client::{Client, ClientConfig, ErrorCode, Event, EventHandler, OkResult};
use fastchat_tests::{Cluster, ClusterOptions, PrivatePostgres};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The cluster a run uses.
pub struct Target {
    /// How clients reach it.
    pub config: ClientConfig,
    /// The servers' pids, when known (for memory figures).
    pub server_pids: Vec<u32>,
    /// A cluster this run started: stopped when dropped.
    _own: Option<(PrivatePostgres, Cluster)>,
}

impl Target {
    /// The cluster at `balancer` (its pids from `data_dir/run/server-*.pid` when given),
    /// or else a new one of `servers` servers with a PostgreSQL of its own.
    pub fn open(
        balancer: Option<&str>,
        ca: Option<&Path>,
        data_dir: Option<&Path>,
        servers: usize,
    ) -> Result<Target, String> {
        if let Some(balancer) = balancer {
            let ca = ca.ok_or("--balancer needs --ca")?;
            let config =
                ClientConfig::with_ca_file(balancer.to_string(), ca).map_err(|e| e.to_string())?;
            let server_pids = data_dir.map(read_server_pids).unwrap_or_default();
            return Ok(Target {
                config,
                server_pids,
                _own: None,
            });
        }
        eprintln!("starting a cluster of {servers} servers");
        let postgres = PrivatePostgres::start();
        let cluster = Cluster::start_with(ClusterOptions {
            servers,
            postgres: Some(postgres.url.clone()),
            ..Default::default()
        });
        let config = cluster.config();
        let server_pids = (0..servers).filter_map(|i| cluster.server_pid(i)).collect();
        Ok(Target {
            config,
            server_pids,
            _own: Some((postgres, cluster)),
        })
    }
}

impl Target {
    /// A memory figure (`VmRSS:`, `VmHWM:`) of every server whose pid is known, KiB.
    pub fn servers_memory(&self, field: &str) -> Vec<u64> {
        self.server_pids
            .iter()
            .filter_map(|&pid| memory_kib(pid, field))
            .collect()
    }
}

/// The pids in `DIR/run/server-*.pid` (as `run_cluster.sh` writes them).
fn read_server_pids(data_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("run")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("server-") && name.ends_with(".pid")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| s.lines().next()?.trim().parse().ok())
        .collect()
}

/// The password of a load-test user.
pub fn password_of(name: &str) -> String {
    format!("{name}-load-test")
}

/// Connects `names.len()` clients and signs each user up, or logs it in when it exists
/// already (`--users` reuses them across runs), `workers` at a time. With `homes`, each
/// user's `HOME` is `homes/NAME`: its private key is cached there, so that logging in
/// again skips opening the backup (an scrypt), and files arrive there. Client `i` hands
/// its events to `handlers[i]` when there is one (otherwise they queue on
/// [`Client::events`]).
pub fn log_in_all(
    config: &ClientConfig,
    names: &[String],
    homes: Option<&Path>,
    workers: usize,
    handlers: &[EventHandler],
) -> Result<Vec<Client>, String> {
    let slots: Vec<Mutex<Option<Client>>> = names.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let done = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= names.len() || failure.lock().is_some() {
                    return;
                }
                let mut config = match homes {
                    Some(homes) => config.clone().with_home(homes.join(&names[i])),
                    None => config.clone(),
                };
                if let Some(handler) = handlers.get(i) {
                    let handler = handler.clone();
                    config = config.with_event_handler(move |event| handler(event));
                }
                match log_in_one(&config, &names[i]) {
                    Ok(client) => *slots[i].lock() = Some(client),
                    Err(e) => {
                        *failure.lock() = Some(e);
                        return;
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(100) || n == names.len() {
                    eprint!("\rlogged in {n}/{}   ", names.len());
                }
            });
        }
    });
    eprintln!();
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    Ok(slots
        .into_iter()
        .map(|s| s.into_inner().expect("every slot filled"))
        .collect())
}

/// One client, signed up (an RSA key pair) or, if the name is taken, logged in.
pub fn log_in_one(config: &ClientConfig, name: &str) -> Result<Client, String> {
    let mut last = String::new();
    // The balancer may hand out a server that is still starting: a few tries.
    for _ in 0..3 {
        let client = match Client::connect(config) {
            Ok(c) => c,
            Err(e) => {
                last = format!("connect: {e}");
                thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let password = password_of(name);
        // A user whose key is cached in its HOME exists: log in at once. (A sign-up
        // makes an RSA key pair before the server can say the name is taken.)
        if config
            .home
            .as_ref()
            .is_some_and(|home| home.join("keys").join(format!("{name}.key")).exists())
        {
            return client
                .login(name, &password)
                .map(|_| client)
                .map_err(|e| format!("login {name}: {e}"));
        }
        return match client.signup(name, &password) {
            Ok(_) => Ok(client),
            Err(e) if e.code == ErrorCode::NameTaken => client
                .login(name, &password)
                .map(|_| client)
                .map_err(|e| format!("login {name}: {e}")),
            Err(e) => Err(format!("signup {name}: {e}")),
        };
    }
    Err(last)
}

/// Refusals seen by the inboxes (`undecryptable` ...), counted as errors.
pub type Problems = Arc<Mutex<HashMap<String, u64>>>;

/// A FastChat client as the traffic scenarios drive it: targets are users (`dm`) or
/// groups (`group`), by index.
pub struct FastChatEndpoint {
    pub client: Client,
    /// The names targets stand for.
    pub targets: Arc<Vec<String>>,
    /// Whether targets are groups.
    pub groups: bool,
    /// Where [`event_handler`] hands this client's texts.
    pub sinks: Arc<SinkSlot>,
}

/// The event handler of a traffic client: texts go to `sinks` (on the client's reader
/// thread), refusals are counted in `problems`.
pub fn event_handler(sinks: Arc<SinkSlot>, problems: Problems) -> EventHandler {
    Arc::new(move |event| match event {
        Event::Message { text, .. } | Event::GroupMessage { text, .. } => sinks.deliver(&text),
        Event::Undecryptable { error, .. } => {
            *problems
                .lock()
                .entry(error.code.as_str().into())
                .or_default() += 1;
        }
        _ => {}
    })
}

impl Endpoint for FastChatEndpoint {
    fn send(&self, target: usize, text: &str) -> Answer {
        let (_, handle) = if self.groups {
            self.client.send_group_text(&self.targets[target], text)
        } else {
            self.client.send_text(&self.targets[target], text)
        };
        Box::new(move |timeout| match handle.wait(timeout) {
            Ok(Some(OkResult::Sent { .. })) => Ok(()),
            Ok(_) => Err("unexpected_reply".into()),
            Err(e) => Err(e.code.as_str().to_string()),
        })
    }

    fn sinks(&self) -> &SinkSlot {
        &self.sinks
    }
}

/// Resident memory of a process, KiB (`VmRSS`, or `VmHWM` for the peak).
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
