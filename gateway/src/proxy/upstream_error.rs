//! Upstream error responses, passed on with their status and rate-limit
//! headers, in the body shape the client's SDK expects, with nothing secret.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::headers::keep_on_error;
use crate::api::ApiFlavor;
use crate::errors::{GatewayError, error_body, kind_for_status};
use crate::providers::Provider;

/// More than any real error body; the rest is not read.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// Turns an upstream non-2xx response into the client's error response.
pub async fn relay_error(
    response: Response<Incoming>,
    provider: &dyn Provider,
    flavor: ApiFlavor,
    read_timeout: Duration,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    // 401/407 from the upstream means the gateway's own credential is wrong:
    // telling the client "invalid API key" would blame the wrong key.
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        tracing::error!(provider = provider.name(), %status, "upstream rejected the configured credential");
        return Err(GatewayError::UpstreamCredentialRejected {
            provider: provider.name().to_string(),
            status: status.as_u16(),
        });
    }
    let raw = match tokio::time::timeout(read_timeout, Limited::new(body, MAX_ERROR_BODY).collect())
        .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        // A body that fails or stalls still leaves us the status to report.
        _ => Bytes::new(),
    };
    let text = decode(&parts.headers, &raw);
    let text = scrub(text, provider);
    let body = if has_family_shape(flavor, &text) {
        Bytes::from(text)
    } else {
        let excerpt: String = text.trim().chars().take(500).collect();
        let message = if excerpt.is_empty() {
            format!(
                "the upstream provider `{}` answered {status}",
                provider.name()
            )
        } else {
            format!(
                "the upstream provider `{}` answered {status}: {excerpt}",
                provider.name()
            )
        };
        error_body(flavor, kind_for_status(flavor, status), None, &message)
    };

    let mut builder = Response::builder().status(status);
    if let Some(headers) = builder.headers_mut() {
        for (name, value) in parts.headers.iter() {
            if keep_on_error(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    builder
        .body(ResponseBody::full(body))
        .map_err(|err| GatewayError::UpstreamBroken {
            provider: provider.name().to_string(),
            reason: err.to_string(),
        })
}

/// The error body as text, undoing gzip, deflate or br content-encoding.
fn decode(headers: &HeaderMap, raw: &[u8]) -> String {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let limit = MAX_ERROR_BODY as u64;
    let decoded = match encoding.as_str() {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        "br" => brotli_decompressor::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out),
        _ => {
            out.extend_from_slice(raw);
            Ok(out.len())
        }
    };
    if decoded.is_err() {
        out.clear();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the upstream credential wherever it appears.
fn scrub(text: String, provider: &dyn Provider) -> String {
    match provider.credential() {
        Some(secret) if text.contains(secret.expose()) => {
            text.replace(secret.expose(), "[redacted]")
        }
        _ => text,
    }
}

/// Whether a body already is an error of the family's shape, so it can be
/// passed on as the upstream wrote it.
fn has_family_shape(flavor: ApiFlavor, text: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    match flavor {
        ApiFlavor::OpenAi => value
            .get("error")
            .and_then(|e| e.get("message"))
            .is_some_and(|m| m.is_string()),
        ApiFlavor::Anthropic => {
            value.get("type").and_then(|t| t.as_str()) == Some("error")
                && value
                    .get("error")
                    .and_then(|e| e.get("type"))
                    .is_some_and(|t| t.is_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_family_shapes() {
        assert!(has_family_shape(
            ApiFlavor::OpenAi,
            r#"{"error":{"message":"x","type":"y"}}"#
        ));
        assert!(!has_family_shape(
            ApiFlavor::OpenAi,
            r#"{"type":"error","error":{"type":"y"}}"#
        ));
        assert!(has_family_shape(
            ApiFlavor::Anthropic,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
        ));
        assert!(!has_family_shape(ApiFlavor::Anthropic, "<html>502</html>"));
    }

    #[test]
    fn decodes_gzip_bodies() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"{\"error\":{}}").unwrap();
        let gz = encoder.finish().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decode(&headers, &gz), "{\"error\":{}}");
    }
}
