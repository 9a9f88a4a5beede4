//! Keeps the running gateway's key ring in step with the key store, so keys
//! created or revoked with `apx keys` take effect within a fifth of a second, no restart.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::auth::GatewayKey;
use crate::state::Gateway;
use crate::store::keys::KeyStore;

const POLL_EVERY: Duration = Duration::from_millis(200);

/// Loads the store's keys into the ring now, then watches for changes on a
/// background thread (SQLite calls block) until the gateway is dropped.
pub fn start(
    gateway: &Arc<Gateway>,
    store_path: PathBuf,
    config_keys: Vec<GatewayKey>,
) -> Result<(), crate::store::StoreError> {
    let store = KeyStore::open(&store_path)?;
    let load = move |store: &KeyStore| -> Result<Vec<GatewayKey>, crate::store::StoreError> {
        let mut keys = config_keys.clone();
        keys.extend(store.active()?);
        Ok(keys)
    };
    gateway.keys.replace(load(&store)?);
    let mut seen = store.data_version()?;
    let weak: Weak<Gateway> = Arc::downgrade(gateway);
    std::thread::Builder::new()
        .name("apx-key-reload".into())
        .spawn(move || {
            let mut ticks: u32 = 0;
            loop {
                std::thread::sleep(POLL_EVERY);
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                ticks = ticks.wrapping_add(1);
                let version = match store.data_version() {
                    Ok(version) => version,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot check the key store");
                        continue;
                    }
                };
                // Reload on change, and once a minute anyway for expiries.
                if version == seen && ticks % 300 != 0 {
                    continue;
                }
                seen = version;
                match load(&store) {
                    Ok(keys) => {
                        let count = keys.len();
                        gateway.keys.replace(keys);
                        gateway
                            .stats
                            .key_reloads
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(keys = count, "key ring reloaded");
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot reload keys; keeping the current ones")
                    }
                }
            }
        })
        .map_err(crate::store::StoreError::Thread)?;
    Ok(())
}
