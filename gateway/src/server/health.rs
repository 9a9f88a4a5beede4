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
        "models": gateway.routes.iter().count(),
        "keys": gateway.keys.len(),
        "upstreams": upstreams,
    });
    (status, Bytes::from(body.to_string()))
}
