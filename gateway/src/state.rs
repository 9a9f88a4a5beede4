//! Everything a request handler shares: built once from the config at start.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Semaphore;

use crate::auth::{GatewayKey, KeyRing};
use crate::config::{Config, Limits};
use crate::proxy::upstream::UpstreamClient;
use crate::routing::RouteTable;
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
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Gateway, rustls::Error> {
        let routes = RouteTable::from_config(config);
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
        })
    }
}

/// Keys listed in the config file itself.
pub fn config_keys(config: &Config) -> impl Iterator<Item = GatewayKey> + '_ {
    config.keys.iter().map(|key| GatewayKey {
        id: format!("config:{}", key.name).into(),
        name: key.name.as_str().into(),
        hash: key.hash,
        expires_at: None,
    })
}
