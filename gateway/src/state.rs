//! Everything a request handler shares: built once from the config at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::Semaphore;

use crate::auth::{GatewayKey, KeyRing};
use crate::config::{Config, Limits};
use crate::logging::{ListenerInfo, Logging};
use crate::proxy::upstream::UpstreamClient;
use crate::routing::RouteTable;
use crate::server::ServeError;
use crate::server::models::ModelListing;

pub struct Gateway {
    pub limits: Limits,
    pub keys: KeyRing,
    pub routes: RouteTable,
    pub upstream: UpstreamClient,
    /// One permit per streaming response in flight.
    pub streams: Arc<Semaphore>,
    pub models: ModelListing,
    pub started: SystemTime,
    pub listen: std::net::SocketAddr,
    pub stats: Stats,
    pub logging: Logging,
}

/// Request counters for `apx status`.
#[derive(Default)]
pub struct Stats {
    pub requests_total: AtomicU64,
    pub requests_in_flight: AtomicU64,
    /// Times the key ring was reloaded from the key store; `apx keys` watches
    /// it to confirm a change reached the running gateway.
    pub key_reloads: AtomicU64,
}

/// Counts a request as in flight until dropped.
pub struct InFlight<'a>(&'a Stats);

impl Stats {
    pub fn begin(&self) -> InFlight<'_> {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gateway {
    pub fn new(config: &Config, listener: Option<ListenerInfo>) -> Result<Gateway, ServeError> {
        let routes = RouteTable::from_config(config).map_err(ServeError::LocalProvider)?;
        let started = SystemTime::now();
        let keys = KeyRing::new(config_keys(config));
        Ok(Gateway {
            limits: config.limits.clone(),
            keys,
            models: ModelListing::new(&routes, started),
            routes,
            upstream: UpstreamClient::new(config.limits.connect_timeout.0)?,
            streams: Arc::new(Semaphore::new(config.limits.max_concurrent_streams)),
            started,
            listen: config.listen,
            stats: Stats::default(),
            logging: Logging::start(config, listener)?,
        })
    }
}

/// Keys listed in the config file itself.
pub fn config_keys(config: &Config) -> impl Iterator<Item = GatewayKey> + '_ {
    config.keys.iter().map(|key| GatewayKey {
        id: crate::intern::intern(&format!("config:{}", key.name)),
        name: crate::intern::intern(&key.name),
        hash: key.hash,
        expires_at: None,
    })
}
