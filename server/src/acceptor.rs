//! Accept loops: one thread per listener, one reader thread per accepted connection.
//! Stopping sets the state's flag and connects once to wake the blocked `accept`.

use crate::state::ServerState;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

/// Stack size of connection threads: they parse JSON and little else.
pub const CONN_STACK: usize = 256 * 1024;

/// Accepts until the server stops, handing each connection to `serve` on its own thread.
pub fn spawn_acceptor(
    state: Arc<ServerState>,
    listener: TcpListener,
    kind: &'static str,
    serve: fn(Arc<ServerState>, TcpStream),
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("accept-{kind}"))
        .spawn(move || {
            for stream in listener.incoming() {
                if state.is_stopping() {
                    break;
                }
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("accept ({kind}): {e}");
                        // Out of descriptors or similar: do not spin.
                        thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                };
                let state = state.clone();
                let spawned = thread::Builder::new()
                    .name(format!("{kind}-r"))
                    .stack_size(CONN_STACK)
                    .spawn(move || serve(state, stream));
                if let Err(e) = spawned {
                    log::error!("cannot start a connection thread: {e}");
                }
            }
        })
}

/// Wakes an acceptor blocked in `accept` (call after setting the stop flag).
pub fn wake(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1));
}
