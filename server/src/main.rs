//! `fastchat-server`: starts the server, runs until SIGINT/SIGTERM, then drains.

mod acceptor;
mod clients;
mod config;
mod conn;
mod friends;
mod group_cache;
mod groups;
mod heartbeat;
mod inflight;
mod keys;
mod mesh;
mod notify;
mod passwords;
mod presence;
mod refused;
mod reply;
mod resume;
mod router;
mod session;
mod session_handle;
mod state;
mod store;
mod tls;

use clap::Parser;
use config::Config;
use fastchat_common::ticket::TicketVerifier;
use state::ServerState;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long start-up waits for the database (it may be starting too).
const DB_WAIT: Duration = Duration::from_secs(30);
/// How long a stopping server waits for its clients to go.
const DRAIN_WAIT: Duration = Duration::from_secs(3);
/// Threads pushing stored messages to sessions.
const FETCHERS: usize = 2;

/// Allocations from this size up get their own mapping, returned to the system when
/// freed. Without a fixed threshold glibc raises it after the first large free, and the
/// 16 MiB that each scrypt (login, signup) allocates stays resident in every malloc
/// arena that ever ran one: hundreds of MiB after a wave of logins. Not lower: a
/// writer's sealed batch (up to about 300 KiB) must come from the heap, not a fresh
/// mapping each time (page faults took a tenth of a file transfer's CPU at 256 KiB).
const MMAP_THRESHOLD: i32 = 1024 * 1024;

/// Free memory at the top of a malloc arena up to this much stays with the arena.
/// glibc's default, 128 KiB, gave back (`madvise`) and faulted in again, zeroed, the
/// pages of a file chunk's frames (about 88 KiB each, several per chunk) over and over:
/// a file transfer carried 52 MB/s against 60 with 4 MiB (three rounds of three runs).
/// Bounded by the arenas' number (eight per core).
const TRIM_THRESHOLD: i32 = 4 * 1024 * 1024;

fn main() -> ExitCode {
    // SAFETY: mallopt only sets a malloc parameter; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
    let config = Config::parse();
    let _ = simplelog::TermLogger::init(
        config.log_level,
        simplelog::ConfigBuilder::new()
            .set_thread_level(log::LevelFilter::Off)
            .set_target_level(log::LevelFilter::Off)
            .build(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let name = config.name.clone();
    if !fastchat_common::names::is_valid_name(&name) {
        return Err(format!("bad server name {name:?}").into());
    }
    let pem = std::fs::read(&config.ticket_pubkey)
        .map_err(|e| format!("cannot read {}: {e}", config.ticket_pubkey.display()))?;
    let tickets = TicketVerifier::from_pem(&pem)?;
    let tls = tls::ServerTls::load(&config.tls_dir, &name)?;

    let pool = fastchat_sql::pool(
        &config.database_url,
        config.db_pool,
        Duration::from_secs(5),
        Duration::from_secs(config.db_statement_timeout),
    )?;
    migrate_when_ready(&config.database_url)?;

    let client_listener = TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let peer_listener = TcpListener::bind(&config.peer_listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.peer_listen))?;
    let client_addr = client_listener.local_addr()?;
    let peer_addr = peer_listener.local_addr()?;

    let incarnation = {
        let mut db = pool.get()?;
        let cleared = fastchat_sql::clear_server_presence(&mut db, &name)?;
        if cleared > 0 {
            log::info!("{cleared} users of an earlier run marked offline");
        }
        fastchat_sql::register_server(
            &mut db,
            &name,
            &client_addr.to_string(),
            &peer_addr.to_string(),
        )?
    };

    let (store_tx, store_rx) = crossbeam_channel::unbounded();
    let (fetch_tx, fetch_rx) = crossbeam_channel::unbounded();
    // At most one request per cached group at a time (the cache's claim); a full queue
    // drops requests rather than holding up a sender.
    let (refresh_tx, refresh_rx) = crossbeam_channel::bounded(1024);
    let state = Arc::new(ServerState {
        config,
        incarnation,
        pool,
        router: Default::default(),
        inflight: inflight::InFlight::new(incarnation),
        store: store_tx,
        fetch: fetch_tx,
        tickets,
        tls,
        stopping: AtomicBool::new(false),
        next_conn_id: AtomicU64::new(0),
        clients: Default::default(),
        known_users: Default::default(),
        group_cache: Default::default(),
        group_refresh: refresh_tx,
        orphaned: Default::default(),
        fences: Default::default(),
        live_servers: Default::default(),
        presence: Default::default(),
    });

    let weak = Arc::downgrade(&state);
    let store_thread = thread::Builder::new()
        .name("pending-store".into())
        .spawn(move || store::run_store(weak, store_rx))?;
    for i in 0..FETCHERS {
        let weak = Arc::downgrade(&state);
        let rx = fetch_rx.clone();
        thread::Builder::new()
            .name(format!("fetcher-{i}"))
            .spawn(move || store::run_fetcher(weak, rx))?;
    }
    {
        let weak = Arc::downgrade(&state);
        thread::Builder::new()
            .name("group-refresh".into())
            .spawn(move || groups::run_refresher(weak, refresh_rx))?;
    }
    {
        let state = state.clone();
        thread::Builder::new()
            .name("maintenance".into())
            .spawn(move || heartbeat::run_maintenance(state))?;
    }
    let peer_acceptor =
        acceptor::spawn_acceptor(state.clone(), peer_listener, "peer", mesh::accept_peer)?;
    let client_acceptor = acceptor::spawn_acceptor(
        state.clone(),
        client_listener,
        "client",
        session::serve_client,
    )?;
    log::info!(
        "{name} (incarnation {incarnation}) serving clients on {client_addr}, peers on {peer_addr}"
    );

    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    let _ = stop_rx.recv();
    log::info!("stopping: draining clients");
    shutdown(&state, client_addr, peer_addr);
    let _ = client_acceptor.join();
    let _ = peer_acceptor.join();
    drop(store_thread);
    log::info!("{name} stopped");
    Ok(())
}

fn migrate_when_ready(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + DB_WAIT;
    loop {
        match fastchat_sql::connect(url).and_then(|mut c| fastchat_sql::migrate(&mut c)) {
            Ok(n) => {
                if n > 0 {
                    log::info!("applied {n} migrations");
                }
                return Ok(());
            }
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                log::info!("waiting for the database: {e}");
                thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Drains: no new clients, every client told to reconnect elsewhere, messages in flight
/// stored, and the server's rows removed. Bounded in time.
fn shutdown(
    state: &Arc<ServerState>,
    client_addr: std::net::SocketAddr,
    peer_addr: std::net::SocketAddr,
) {
    state.stopping.store(true, Ordering::SeqCst);
    if let Ok(mut db) = state.pool.get() {
        let _ = fastchat_sql::mark_draining(&mut db, state.name());
    }
    acceptor::wake(client_addr);
    acceptor::wake(peer_addr);
    for session in state.router.local_sessions() {
        session.send_reconnect("server shutting down");
    }
    let deadline = Instant::now() + DRAIN_WAIT;
    while !state.router.local_sessions().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    state.inflight.store_all(state.store_queue());
    state.flush_store(Duration::from_secs(5));
    if let Ok(mut db) = state.pool.get() {
        let _ = fastchat_sql::clear_server_presence(&mut db, state.name());
        let _ = fastchat_sql::remove_server(&mut db, state.name(), state.incarnation);
    }
}
