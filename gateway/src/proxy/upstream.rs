//! The connection pool to upstreams, and sending one request through it with
//! the connect and first-byte timeouts.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::errors::GatewayError;

/// Shared keep-alive pool for every upstream (HTTP/1.1, and HTTP/2 where TLS
/// negotiates it).
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl UpstreamClient {
    /// Fails only if the TLS library rejects its own default settings.
    pub fn new(connect_timeout: Duration) -> Result<UpstreamClient, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Without it every keep-alive request waits on a delayed ACK (~40 ms).
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(https);
        Ok(UpstreamClient { client })
    }

    /// Sends a request and waits for the response head. The caller bounds
    /// the wait (one deadline covers the head and the first body byte).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        provider: &str,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, GatewayError> {
        self.client
            .request(request)
            .await
            .map_err(|err| classify(err, provider, connect_timeout))
    }
}

/// Names the failure without leaking anything secret (errors carry no headers).
fn classify(
    err: hyper_util::client::legacy::Error,
    provider: &str,
    connect_timeout: Duration,
) -> GatewayError {
    let mut source = err.source();
    let mut reason = err.to_string();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return GatewayError::UpstreamTimeout {
                    provider: provider.to_string(),
                    phase: "connecting",
                    after: connect_timeout,
                };
            }
        }
        reason = format!("{reason}: {cause}");
        source = cause.source();
    }
    if err.is_connect() {
        GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            reason,
        }
    } else {
        GatewayError::UpstreamBroken {
            provider: provider.to_string(),
            reason,
        }
    }
}
