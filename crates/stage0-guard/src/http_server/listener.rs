//! The TCP side of the HTTP mode: how many connections, and how long a client may take to speak.
//!
//! Each connection is served by hyper's HTTP/1.1 server with a timer, so a client that does not
//! send a request's headers within the read timeout (a half-sent request, or a keep-alive
//! connection left idle) is disconnected, and with a read buffer of [`MAX_HEADER_BYTES`]. At most
//! so many connections are served at once: past that, new ones wait in the kernel's backlog until
//! one closes, so a client holding many connections open can delay others by the read timeout at
//! most, never shut them out. Every connection has `TCP_NODELAY` set (an answer goes out as soon
//! as it is written, not after the client's delayed ACK).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The largest read buffer of a connection, in bytes: a request line and headers longer than this
/// are refused (`431`). 32 KiB holds any bearer token a real authorization server issues.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener`, at most `max_connections` connections at once, each given
/// `read_timeout` to send each request's headers, until `stop` completes; then lets each
/// connection finish the request it is serving (within `read_timeout`) and returns.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    read_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors, say: give the connections in flight a moment to close.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(read_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {read_timeout:?} at the stop");
    }
}
