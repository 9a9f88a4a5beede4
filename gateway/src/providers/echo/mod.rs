//! The built-in `echo` provider: answers locally, so a fresh install with no
//! provider credential still gives a streamed answer. It is a real upstream
//! on a loopback port, so its calls take the full gateway path (key check,
//! routing, forwarding, streaming, logging) like any other provider's.

mod server;

use std::net::SocketAddr;

use http::{HeaderMap, Uri};

use super::{EndpointTable, Provider, ProviderKind};
use crate::api::Endpoint;
use crate::config::{ProviderConfig, Secret};

pub use server::{ECHO_PREFIX, WORD_DELAY};

pub struct EchoProvider {
    name: String,
    endpoints: EndpointTable,
    host: (String, u16),
}

impl EchoProvider {
    /// Starts the echo upstream on a loopback port. Must run inside a tokio runtime.
    pub fn start(config: &ProviderConfig) -> std::io::Result<EchoProvider> {
        let addr: SocketAddr = server::spawn()?;
        // A loopback socket address always forms a valid URI.
        let base: Uri = format!("http://{addr}")
            .parse()
            .map_err(|_| std::io::Error::other("echo address is not a URI"))?;
        let endpoints = EndpointTable::new(
            &base,
            &[
                (Endpoint::ChatCompletions, "/v1/chat/completions"),
                (Endpoint::Messages, "/v1/messages"),
            ],
        );
        Ok(EchoProvider {
            name: config.name.clone(),
            endpoints,
            host: (addr.ip().to_string(), addr.port()),
        })
    }
}

impl Provider for EchoProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Echo
    }

    fn endpoint_uri(&self, endpoint: Endpoint) -> Option<&Uri> {
        self.endpoints.get(endpoint)
    }

    fn authorize(&self, _headers: &mut HeaderMap) {}

    fn credential(&self) -> Option<&Secret> {
        None
    }

    fn host(&self) -> (&str, u16) {
        (&self.host.0, self.host.1)
    }
}
