//! Accepting client connections: HTTP/1.1 and HTTP/2 on one port, connection
//! limits, slow-client timeouts and graceful shutdown.

mod handler;
pub mod health;
mod key_reload;
pub mod models;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::logging::{ConnContext, ListenerInfo};
use crate::state::Gateway;
use std::os::fd::AsRawFd;

/// Why the gateway could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up TLS for upstream connections: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot install the signal handler: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the built-in echo provider")]
    LocalProvider(#[source] std::io::Error),
    #[error("cannot start request logging")]
    Logging(#[from] crate::logging::LoggingError),
    #[error("cannot use the key store")]
    KeyStore(#[from] crate::store::StoreError),
}

/// Binds the configured address and serves until SIGTERM or SIGINT, then
/// shuts down gracefully.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let shutdown = shutdown_signal().map_err(ServeError::Signals)?;
    serve(config, listener, shutdown).await
}

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    })
}

/// Serves on an already bound listener until `shutdown` resolves; then stops
/// accepting and lets requests in flight finish, up to `limits.shutdown_grace`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener_info = listener.local_addr().ok().map(|addr| ListenerInfo {
        fd: u32::try_from(listener.as_raw_fd()).unwrap_or(0),
        port: addr.port(),
    });
    let mut gateway = Gateway::new(&config, listener_info)?;
    if let Ok(addr) = listener.local_addr() {
        gateway.listen = addr;
    }
    let gateway = Arc::new(gateway);
    key_reload::start(
        &gateway,
        config.key_store_path(),
        crate::state::config_keys(&config).collect(),
    )?;
    let limits = &config.limits;
    let http = connection_builder(&config);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let capture = gateway.logging.active();
    tracing::info!(mode = capture.name(), reason = %capture.reason, "request capture");
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            models = config.models.len(),
            keys = gateway.keys.len(),
            state_dir = %config.state_dir.display(),
            "apx gateway listening"
        );
    }
    if gateway.keys.is_empty() {
        tracing::warn!("no gateway keys configured: every API call will be refused with 401");
    }

    tokio::pin!(shutdown);
    loop {
        // Wait for a free connection slot before accepting: beyond the limit,
        // new connections queue in the kernel backlog instead of using memory.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without it keep-alive responses wait on the client's delayed ACK.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let gateway = gateway.clone();
        let local_port = stream.local_addr().map_or(0, |a| a.port());
        // Requests are numbered per connection, as the kernel programs number
        // them, so the two halves of a record can be joined.
        let next_seq = Arc::new(AtomicU32::new(0));
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            let conn = ConnContext {
                peer,
                local_port,
                seq: next_seq.fetch_add(1, Ordering::Relaxed),
            };
            async move { Ok::<_, Infallible>(handler::handle(gateway, request, conn).await) }
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    let grace = limits.shutdown_grace.0;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "stopped accepting; waiting for requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
    // Everything acknowledged so far reaches the log store before exit.
    gateway.logging.stop(Duration::from_secs(10));
    Ok(())
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.client_header_timeout.0)
        // Requests whose head exceeds this get 431; validated to be >= 8 KiB.
        .max_buf_size(usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes.0).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}
