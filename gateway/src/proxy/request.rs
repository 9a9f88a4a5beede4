//! Reading a client's request body within the limits, and the little the
//! gateway must understand of it: the model, and whether it streams.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::errors::GatewayError;

/// Reads the whole request body, refusing more than `max_bytes` (413) or a
/// body slower than `deadline` (408).
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max_bytes: u64,
    deadline: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes) {
        return Err(GatewayError::BodyTooLarge { limit: max_bytes });
    }
    let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(GatewayError::BodyTimeout(deadline)),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::BodyTooLarge { limit: max_bytes })
        }
        Ok(Err(err)) => Err(GatewayError::BodyRead(err.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The fields the gateway reads; every other field passes through untouched.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(default)]
    stream_options: Present,
}

/// Whether a member was there at all, `null` included (an `Option` field
/// reads `null` as absent).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Present, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Present(true))
    }
}

/// What the gateway learned from a request body.
#[derive(Debug)]
pub struct RequestSummary<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// The client sent `stream_options` itself (any value, even `null`).
    pub has_stream_options: bool,
    /// Byte range of the `model` value (with its quotes) in the body.
    model_span: (usize, usize),
}

/// Validates the body as a JSON object and finds `model` and `stream`.
pub fn summarize(body: &[u8]) -> Result<RequestSummary<'_>, GatewayError> {
    let fields: Fields = serde_json::from_slice(body).map_err(|err| {
        if err.is_data() {
            GatewayError::InvalidRequest(format!(
                "the request body must be a JSON object with a `model` field ({err})"
            ))
        } else {
            GatewayError::InvalidJson(err.to_string())
        }
    })?;
    let raw_model = fields.model.ok_or(GatewayError::MissingModel)?;
    let model: Cow<str> = serde_json::from_str(raw_model.get())
        .map_err(|_| GatewayError::InvalidRequest("`model` must be a string".into()))?;
    if model.is_empty() {
        return Err(GatewayError::MissingModel);
    }
    let stream = match fields.stream.map(RawValue::get) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(GatewayError::InvalidRequest(
                "`stream` must be true or false".into(),
            ));
        }
    };
    // The raw value borrows from `body`, so its offset is a pointer difference.
    let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
    Ok(RequestSummary {
        model,
        stream,
        // Even `null`: a second member of the same name would be ambiguous.
        has_stream_options: fields.stream_options.0,
        model_span: (start, start + raw_model.get().len()),
    })
}

/// Returns the body with its top-level `model` replaced by `upstream_model`,
/// leaving every other byte as the client sent it.
pub fn rename_model(body: &Bytes, summary: &RequestSummary<'_>, upstream_model: &str) -> Bytes {
    let (start, end) = summary.model_span;
    // Serializing a &str to JSON cannot fail.
    let quoted = serde_json::to_string(upstream_model).unwrap_or_default();
    let mut out = BytesMut::with_capacity(body.len() - (end - start) + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end..]);
    out.freeze()
}

/// The member the gateway adds to a streamed OpenAI-format request that did
/// not ask for usage itself.
const STREAM_USAGE_MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// Returns the body with `"stream_options":{"include_usage":true}` as its
/// first member; every other byte stays as sent. Only for bodies without
/// `stream_options`, which `summarize` has checked are JSON objects with a
/// `model` (so there is a member after the one added, and the comma is right).
pub fn ask_for_stream_usage(body: &Bytes) -> Bytes {
    let Some(open) = body.iter().position(|b| *b == b'{') else {
        return body.clone();
    };
    let mut out = BytesMut::with_capacity(body.len() + STREAM_USAGE_MEMBER.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(STREAM_USAGE_MEMBER);
    out.extend_from_slice(&body[open + 1..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_stream() {
        let body = br#"{"messages":[{"model":"inner"}],"model":"gpt-4o","stream":true,"x":1}"#;
        let summary = summarize(body).unwrap();
        assert_eq!(summary.model, "gpt-4o");
        assert!(summary.stream);
        let escaped = br#"{"model":"a\"b","stream":null}"#;
        let summary = summarize(escaped).unwrap();
        assert_eq!(summary.model, "a\"b");
        assert!(!summary.stream);
    }

    #[test]
    fn rejects_bad_bodies_precisely() {
        assert!(matches!(
            summarize(b"{nope"),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(matches!(summarize(b""), Err(GatewayError::InvalidJson(_))));
        assert!(matches!(
            summarize(b"[1,2]"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(summarize(b"{}"), Err(GatewayError::MissingModel)));
        assert!(matches!(
            summarize(br#"{"model":""}"#),
            Err(GatewayError::MissingModel)
        ));
        assert!(matches!(
            summarize(br#"{"model":4}"#),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            summarize(br#"{"model":"m","stream":"yes"}"#),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            summarize(br#"{"model":"m"} x"#),
            Err(GatewayError::InvalidJson(_))
        ));
    }

    #[test]
    fn asks_for_usage_as_first_member() {
        let body = Bytes::from_static(b" {\"model\":\"m\",\"stream\":true}");
        let summary = summarize(&body).unwrap();
        assert!(!summary.has_stream_options);
        let asked = ask_for_stream_usage(&body);
        assert_eq!(
            &asked[..],
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        let own = summarize(br#"{"model":"m","stream_options":{"include_usage":false}}"#);
        assert!(own.unwrap().has_stream_options);
        let null = summarize(br#"{"model":"m","stream_options":null}"#);
        assert!(null.unwrap().has_stream_options);
    }

    #[test]
    fn renames_only_the_model_value() {
        let body = Bytes::from_static(
            br#"{ "model" : "alias", "messages": [], "extra": {"model": "alias"} }"#,
        );
        let summary = summarize(&body).unwrap();
        let renamed = rename_model(&body, &summary, "real-\"model\"");
        assert_eq!(
            &renamed[..],
            br#"{ "model" : "real-\"model\"", "messages": [], "extra": {"model": "alias"} }"#
        );
    }
}
