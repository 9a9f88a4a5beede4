//! `/healthz` (the process answers) and `/readyz` (config loaded and every
//! upstream host resolvable).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use crate::state::Gateway;

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn live() -> (StatusCode, Bytes) {
    (StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
}

/// Process status: what `apx status` shows.
pub fn status(gateway: &Gateway) -> (StatusCode, Bytes) {
    use std::sync::atomic::Ordering;
    let uptime = gateway.started.elapsed().unwrap_or_default();
    let streams_active = gateway
        .limits
        .max_concurrent_streams
        .saturating_sub(gateway.streams.available_permits());
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_secs": uptime.as_secs(),
        "listen": gateway.listen.to_string(),
        "capture_mode": gateway.logging.active().name(),
        "capture_reason": gateway.logging.active().reason,
        "log_records_written": gateway.logging.written(),
        "log_records_dropped": gateway.logging.drops(),
        "requests_total": gateway.stats.requests_total.load(Ordering::Relaxed),
        // This status request itself is not counted as in flight.
        "requests_in_flight": gateway.stats.requests_in_flight.load(Ordering::Relaxed).saturating_sub(1),
        "streams_active": streams_active,
        "models": gateway.routes.iter().count(),
        "keys": gateway.keys.len(),
        "key_reloads": gateway.stats.key_reloads.load(Ordering::Relaxed),
    });
    (StatusCode::OK, Bytes::from(body.to_string()))
}

pub async fn ready(gateway: &Gateway) -> (StatusCode, Bytes) {
    let mut upstreams = Vec::new();
    let mut all_ok = true;
    for provider in gateway.routes.providers() {
        let (host, port) = provider.host();
        let lookup = tokio::net::lookup_host((host, port));
        let resolved = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next().is_some(),
            _ => false,
        };
        all_ok &= resolved;
        upstreams.push(json!({
            "provider": provider.name(),
            "host": host,
            "resolvable": resolved,
        }));
    }
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if all_ok { "ready" } else { "not_ready" },
        "config": "loaded",
        "capture_mode": gateway.logging.active().name(),
        "capture_reason": gateway.logging.active().reason,
        "models": gateway.routes.iter().count(),
        "keys": gateway.keys.len(),
        "upstreams": upstreams,
    });
    (status, Bytes::from(body.to_string()))
}
