//! Which headers cross the gateway, in each direction.
//!
//! Towards the upstream: the client's headers minus hop-by-hop headers and
//! minus every credential the client sent (the provider then adds its own,
//! once). Towards the client: the upstream's headers minus hop-by-hop headers
//! and minus what would reveal the upstream account.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Hop-by-hop headers (RFC 9110 section 7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Credentials a client may send to the gateway; none of them goes upstream.
const CLIENT_CREDENTIALS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Upstream response headers that identify the gateway's upstream account or
/// set state meant for the gateway, not for its clients.
const UPSTREAM_PRIVATE: [HeaderName; 4] = [
    header::SET_COOKIE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("anthropic-organization-id"),
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Prepares the client's request headers for the upstream, in place.
pub fn for_upstream(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    for name in &CLIENT_CREDENTIALS {
        headers.remove(name);
    }
    // The upstream URI decides the host; the body length is set anew.
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
}

/// Prepares the upstream's response headers for the client, in place.
pub fn for_client(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    for name in &UPSTREAM_PRIVATE {
        headers.remove(name);
    }
}

/// Rate-limit and request-id headers worth keeping on an error the gateway
/// rewrites, so clients can back off and report the upstream request.
pub fn keep_on_error(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == "retry-after"
        || name == "retry-after-ms"
        || name == "x-request-id"
        || name == "request-id"
        || name == "x-should-retry"
        || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_and_hop_by_hop_never_go_upstream() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer apx-client"),
            ("x-api-key", "apx-client"),
            ("api-key", "apx-client"),
            ("cookie", "session=1"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "gateway:8080"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024-04-04"),
            ("x-custom", "kept"),
        ] {
            headers.append(HeaderName::from_static(name), value.parse().unwrap());
        }
        for_upstream(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["anthropic-beta", "anthropic-version", "x-custom"]);
    }

    #[test]
    fn upstream_account_headers_never_reach_the_client() {
        let mut headers = HeaderMap::new();
        headers.insert("openai-organization", "acme".parse().unwrap());
        headers.insert("set-cookie", "__cf_bm=1".parse().unwrap());
        headers.insert("content-encoding", "gzip".parse().unwrap());
        headers.insert("x-request-id", "req_1".parse().unwrap());
        for_client(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-encoding", "x-request-id"]);
    }
}
