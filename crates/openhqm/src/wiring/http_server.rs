//! The HTTP/1.1 server under the API and the passthrough ingress: hyper
//! driven directly rather than through `axum::serve`, because that one
//! offers no timer and so no deadline for a client to send its request
//! head. Without one, clients that connect and send nothing (or a byte a
//! minute) hold a socket and a task each until the process runs out of file
//! descriptors.

use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long connections get to finish their requests once shutdown began.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` until the stop signal, then lets in-flight requests
/// finish for up to [`CONNECTION_GRACE`]: waiting callers are answered at
/// once when the signal comes, so only a client still sending its request
/// is cut off, and its connection is closed before this returns (the
/// storage is closed after, and must see no more writes).
///
/// A client gets `read_timeout` to send each request head; an idle
/// keep-alive connection is closed after it too (the body's deadline is the
/// handlers', see `ApiConfig::read_timeout`).
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            // Reaps finished connections, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        // Small responses must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            // A client that went away or timed out: nothing to act on.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // A client sending a request slowly, or never finishing it, must not
    // hold the process past its grace.
    if tokio::time::timeout(CONNECTION_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open {CONNECTION_GRACE:?} after shutdown began are closed (a client sending a request slowly?)"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// Accept errors are per connection (the peer reset before we took it) or
/// the process is out of file descriptors; for the latter, back off instead
/// of spinning on a listener that stays readable.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Binds `address`, saying which settings name it when that fails.
pub(crate) async fn bind(address: &str, keys: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({keys})"))
}
