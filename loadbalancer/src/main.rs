//! `fastchat-balancer`: tells each client which live server to use, with a signed
//! ticket; `fastchat-balancer keygen` and `tls` make the cluster's keys and certificates.

mod keygen;
mod strategy;

use clap::{Parser, Subcommand};
use fastchat_common::frame::{read_frame, write_frame, FrameError, MAX_CLIENT_FRAME};
use fastchat_common::protocol::balancer::{BalancerReply, BalancerRequest, ServerStatus};
use fastchat_common::protocol::{now_millis, PROTOCOL_VERSION};
use fastchat_common::ticket::TicketSigner;
use fastchat_common::tls::{self, TlsIdentity};
use fastchat_common::ErrorCode;
use openssl::ssl::SslAcceptor;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use strategy::{Candidate, Strategy};

/// The FastChat load balancer.
#[derive(Debug, Parser)]
#[command(name = "fastchat-balancer", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// PostgreSQL URL.
    #[arg(long, env = "FASTCHAT_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Folder with the cluster CA and the balancer's certificate (`ca.pem`,
    /// `balancer.pem`, `balancer.key`), as the `tls` subcommand writes them.
    #[arg(long, env = "FASTCHAT_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// The ticket signing key (PEM), made by `keygen`.
    #[arg(long)]
    ticket_key: Option<PathBuf>,
    /// How to choose a server: round-robin, least-connections, random, power-of-two,
    /// weighted.
    #[arg(long, default_value = "round-robin")]
    strategy: String,
    /// Log level.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the cluster's keys in DIR (kept when present): the ticket key pair.
    Keygen {
        /// Where to write the keys.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make the cluster CA in DIR (kept when present) and a certificate for each NAME
    /// that has none (`balancer`, `server-1`, ...).
    Tls {
        /// Where to write the CA and the certificates.
        #[arg(long)]
        dir: PathBuf,
        /// Process names to certify.
        names: Vec<String>,
    },
}

/// How often the balancer re-reads the live servers.
const REFRESH: Duration = Duration::from_millis(250);
/// How long an assignment is remembered: a client that takes longer to say hello is
/// not counted until the next heartbeat after it does. Servers list a ticket for 10 s.
const RECENT_MS: i64 = 5_000;
/// Time a client has for each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Balancer {
    tls: SslAcceptor,
    strategy: Box<dyn Strategy>,
    signer: TicketSigner,
    servers: RwLock<Vec<LiveServer>>,
    /// Per server, the clients we sent to it lately: those whose tickets its last
    /// heartbeat does not list are added to the counts it reported.
    recent: Mutex<HashMap<String, VecDeque<Assignment>>>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = simplelog::TermLogger::init(
        cli.log_level,
        simplelog::ConfigBuilder::new()
            .set_thread_level(log::LevelFilter::Off)
            .set_target_level(log::LevelFilter::Off)
            .build(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let result = match &cli.command {
        Some(Command::Keygen { dir }) => keygen::run(dir),
        Some(Command::Tls { dir, names }) => keygen::tls(dir, names),
        None => serve(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let url = cli
        .database_url
        .as_deref()
        .ok_or("--database-url or FASTCHAT_DATABASE_URL is required")?;
    let key_path = cli.ticket_key.as_ref().ok_or("--ticket-key is required")?;
    let pem =
        std::fs::read(key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let strategy = strategy::by_name(&cli.strategy).ok_or_else(|| {
        format!(
            "unknown strategy {:?}; choose one of {}",
            cli.strategy,
            strategy::STRATEGIES.join(", ")
        )
    })?;
    let tls_dir = cli
        .tls_dir
        .as_ref()
        .ok_or("--tls-dir or FASTCHAT_TLS_DIR is required")?;
    let read = |file: &str| {
        let path = tls_dir.join(file);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let identity = TlsIdentity::from_pem(
        &read("balancer.pem")?,
        &read("balancer.key")?,
        &read("ca.pem")?,
    )?;
    let balancer = Arc::new(Balancer {
        tls: tls::acceptor(&identity, false)?,
        strategy,
        signer: TicketSigner::from_pem(&pem)?,
        servers: RwLock::new(Vec::new()),
        recent: Mutex::new(HashMap::new()),
    });
    // A refresh that fails keeps the last list; one stuck on the database ends in 30 s.
    let pool = fastchat_sql::pool(url, 2, Duration::from_secs(2), Duration::from_secs(30))?;
    {
        let balancer = balancer.clone();
        thread::Builder::new()
            .name("refresh".into())
            .spawn(move || refresh_loop(&balancer, &pool))?;
    }
    let listener = TcpListener::bind(&cli.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    log::info!(
        "balancer on {} ({} strategy)",
        listener.local_addr()?,
        balancer.strategy.name()
    );
    ctrlc::set_handler(|| {
        log::info!("balancer stopping");
        std::process::exit(0);
    })?;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let balancer = balancer.clone();
        let spawned = thread::Builder::new()
            .name("client".into())
            .stack_size(256 * 1024)
            .spawn(move || serve_client(&balancer, stream));
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn refresh_loop(balancer: &Balancer, pool: &fastchat_sql::Pool) {
    let mut was_ok = true;
    loop {
        let result = pool
            .get()
            .map_err(fastchat_sql::StoreError::from)
            .and_then(|mut db| fastchat_sql::live_servers_with_tickets(&mut db));
        match result {
            Ok(rows) => {
                let live: Vec<LiveServer> = rows
                    .into_iter()
                    .filter(|r| !r.draining)
                    .map(LiveServer::from)
                    .collect();
                let names: Vec<&str> = live.iter().map(|s| s.row.name.as_str()).collect();
                let old: Vec<String> = balancer
                    .servers
                    .read()
                    .iter()
                    .map(|s| s.row.name.clone())
                    .collect();
                if old != names {
                    log::info!("live servers: {}", names.join(", "));
                }
                *balancer.servers.write() = live;
                was_ok = true;
            }
            Err(e) => {
                if was_ok {
                    log::warn!("cannot read the live servers (keeping the last list): {e}");
                }
                was_ok = false;
            }
        }
        thread::sleep(REFRESH);
    }
}

/// A live server as the last refresh read it.
struct LiveServer {
    row: fastchat_sql::ServerRow,
    /// `row.recent_tickets`, as a set (made once per refresh, not once per assignment).
    listed: HashSet<String>,
}

impl From<fastchat_sql::ServerRow> for LiveServer {
    fn from(mut row: fastchat_sql::ServerRow) -> LiveServer {
        let listed = std::mem::take(&mut row.recent_tickets)
            .into_iter()
            .collect();
        LiveServer { row, listed }
    }
}

/// A client sent to a server.
struct Assignment {
    /// When (Unix ms, the balancer's clock).
    at: i64,
    /// Its ticket's nonce, which the server lists in its heartbeats once it said hello.
    nonce: String,
}

/// How many of the clients sent to a server lately its last heartbeat did not count:
/// those whose tickets it does not list (`listed`: not arrived by then, or never). One
/// that arrived is in the count, and stays listed longer than it is remembered here, so
/// each client is counted once; one that arrived and left again is in neither.
fn not_yet_counted(sent: &VecDeque<Assignment>, listed: &HashSet<String>) -> usize {
    sent.iter().filter(|a| !listed.contains(&a.nonce)).count()
}

impl Balancer {
    fn assign(&self) -> BalancerReply {
        let now = now_millis();
        // Held from the counts to the new assignment: two clients asking at once must
        // not both see the same counts and go to the same server.
        let mut recent = self.recent.lock();
        let candidates: Vec<Candidate> = self
            .servers
            .read()
            .iter()
            .map(|LiveServer { row, listed }| {
                let fresh = recent.entry(row.name.clone()).or_default();
                while fresh.front().is_some_and(|a| now - a.at > RECENT_MS) {
                    fresh.pop_front();
                }
                let unseen = not_yet_counted(fresh, listed) as f64;
                Candidate {
                    name: row.name.clone(),
                    addr: row.client_addr.clone(),
                    clients: f64::from(row.clients) + unseen,
                    load: f64::from(row.load) + unseen,
                }
            })
            .collect();
        if candidates.is_empty() {
            return error(ErrorCode::NoServer, "no live server; try again shortly");
        }
        let chosen = &candidates[self.strategy.pick(&candidates)];
        match self.signer.sign(&chosen.name) {
            Ok(ticket) => {
                recent
                    .entry(chosen.name.clone())
                    .or_default()
                    .push_back(Assignment {
                        at: now,
                        nonce: ticket.nonce.clone(),
                    });
                BalancerReply::Assigned {
                    server: chosen.name.clone(),
                    addr: chosen.addr.clone(),
                    ticket,
                }
            }
            Err(e) => {
                log::error!("cannot sign a ticket: {e}");
                error(ErrorCode::Internal, "internal error")
            }
        }
    }

    fn status(&self) -> BalancerReply {
        BalancerReply::Status {
            servers: self
                .servers
                .read()
                .iter()
                .map(|LiveServer { row: r, .. }| ServerStatus {
                    name: r.name.clone(),
                    addr: r.client_addr.clone(),
                    clients: r.clients,
                    peers: r.peers,
                    load: r.load,
                })
                .collect(),
            strategy: self.strategy.name().to_string(),
        }
    }
}

fn error(code: ErrorCode, message: &str) -> BalancerReply {
    BalancerReply::Error {
        code,
        message: message.to_string(),
    }
}

fn send(stream: &mut impl Write, reply: &BalancerReply) -> std::io::Result<()> {
    write_frame(
        stream,
        &serde_json::to_vec(reply).expect("wire types serialize"),
    )?;
    stream.flush()
}

/// One client: hello, then any number of `assign`/`status` requests.
fn serve_client(balancer: &Balancer, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let (Ok(raw), Ok(sink)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let (reader, mut writer) = match tls::accept(&balancer.tls, raw, sink) {
        Ok(halves) => halves,
        Err(e) => {
            log::info!("{peer}: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(reader);
    let mut greeted = false;
    loop {
        let body = match read_frame(&mut reader, MAX_CLIENT_FRAME) {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(FrameError::TooLarge { len, max }) => {
                log::warn!("{peer}: frame of {len} bytes (max {max}); closing");
                let _ = send(
                    &mut writer,
                    &error(ErrorCode::BadFrame, &format!("frame exceeds {max} bytes")),
                );
                return;
            }
            Err(e) => {
                log::debug!("{peer}: {e}");
                return;
            }
        };
        let reply = match serde_json::from_slice::<BalancerRequest>(&body) {
            Err(e) => {
                log::info!("{peer}: bad request: {e}");
                let code = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                    ErrorCode::BadRequest
                } else {
                    ErrorCode::BadJson
                };
                let _ = send(
                    &mut writer,
                    &error(code, &format!("unreadable request: {e}")),
                );
                if !greeted {
                    return;
                }
                continue;
            }
            Ok(BalancerRequest::Hello { version }) if version == PROTOCOL_VERSION => {
                greeted = true;
                BalancerReply::Hello {
                    version: PROTOCOL_VERSION,
                }
            }
            Ok(BalancerRequest::Hello { version }) => {
                let _ = send(
                    &mut writer,
                    &error(
                        ErrorCode::BadVersion,
                        &format!("version {version} is not supported"),
                    ),
                );
                return;
            }
            Ok(_) if !greeted => {
                let _ = send(
                    &mut writer,
                    &error(ErrorCode::BadRequest, "say hello first"),
                );
                return;
            }
            Ok(BalancerRequest::Assign) => balancer.assign(),
            Ok(BalancerRequest::Status) => balancer.status(),
        };
        if send(&mut writer, &reply).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(nonces: &[&str]) -> HashSet<String> {
        nonces.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_client_is_added_to_the_count_until_a_heartbeat_lists_its_ticket() {
        // Sent in this order; the timestamps do not matter, only which tickets the
        // server had seen by its heartbeat (the last one sent before it arrived).
        let sent: VecDeque<Assignment> = ["a", "b", "c"]
            .into_iter()
            .enumerate()
            .map(|(i, n)| Assignment {
                at: i as i64,
                nonce: n.into(),
            })
            .collect();
        assert_eq!(not_yet_counted(&sent, &listed(&[])), 3);
        assert_eq!(not_yet_counted(&sent, &listed(&["b"])), 2);
        assert_eq!(not_yet_counted(&sent, &listed(&["x", "c", "a", "b"])), 0);
        assert_eq!(not_yet_counted(&VecDeque::new(), &listed(&["a"])), 0);
    }
}
