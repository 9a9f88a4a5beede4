//! `/_mock/…` control endpoints (never recorded, no credentials).

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};

use crate::Shared;
use crate::body::MockBody;
use crate::reply::Resp;
use crate::text::to_json;

pub(crate) fn handle(shared: &Shared, method: &Method, path: &str) -> Resp {
    match (method, path) {
        (&Method::GET, "/_mock/requests") => json(StatusCode::OK, to_json(&shared.requests())),
        (&Method::POST, "/_mock/reset") => {
            shared.reset();
            json(StatusCode::OK, b"{\"ok\":true}".to_vec())
        }
        (&Method::GET, "/_mock/stats") => json(StatusCode::OK, to_json(&shared.stats())),
        _ => json(
            StatusCode::NOT_FOUND,
            to_json(&serde_json::json!({
                "error": format!(
                    "unknown control endpoint {method} {path} \
                     (GET /_mock/requests, POST /_mock/reset, GET /_mock/stats)"
                )
            })),
        ),
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
