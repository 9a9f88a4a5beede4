//! One request, from its request line to its response: recognise the
//! endpoint, then answer locally (health, models) or forward upstream.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Body, Incoming};

use super::health;
use crate::api::{ApiFlavor, Endpoint, NoEndpoint, flavor_of_unmatched};
use crate::auth;
use crate::errors::GatewayError;
use crate::logging::{ConnContext, GatewayFacts};
use crate::proxy::{self, ResponseBody};
use crate::state::Gateway;

pub async fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
    conn: ConnContext,
) -> Response<ResponseBody> {
    let _in_flight = gateway.stats.begin();
    let ticket = gateway.logging.begin(&request, &conn);
    let mut facts = GatewayFacts::default();
    let mut response = respond(&gateway, request, &mut facts).await;
    if let Some(mut ticket) = ticket {
        ticket.absorb(facts);
        ticket.on_response_head(response.status().as_u16(), response.headers());
        response.body_mut().attach_log(ticket);
    }
    response
}

/// Recognise the endpoint, then answer locally or forward upstream.
async fn respond(
    gateway: &Gateway,
    request: Request<Incoming>,
    facts: &mut GatewayFacts,
) -> Response<ResponseBody> {
    // An HTTP/1 request whose body is left unread (answered before it was
    // read) leaves the connection unusable: say so with `Connection: close`
    // instead of letting the client's next request on it fail.
    let unread_body_closes =
        request.version() <= http::Version::HTTP_11 && !request.body().is_end_stream();
    let endpoint = match Endpoint::recognize(request.method(), request.uri().path()) {
        Ok(endpoint) => endpoint,
        Err(reason) => {
            let flavor = flavor_of_unmatched(request.uri().path(), request.headers());
            let path = request.uri().path().to_string();
            let err = match reason {
                NoEndpoint::UnknownPath => GatewayError::UnknownEndpoint {
                    method: request.method().to_string(),
                    path,
                },
                NoEndpoint::WrongMethod(allowed) => {
                    GatewayError::MethodNotAllowed { path, allowed }
                }
            };
            let mut response = error_response(&err, flavor);
            if unread_body_closes {
                close_connection(&mut response);
            }
            return response;
        }
    };
    let flavor = match endpoint {
        // Model listings serve both families; Anthropic SDKs always say so.
        Endpoint::ListModels | Endpoint::GetModel => flavor_of_unmatched("", request.headers()),
        _ => endpoint.flavor(),
    };
    let result = match endpoint {
        Endpoint::Healthz => Ok(json_response(health::live())),
        Endpoint::Readyz => Ok(json_response(health::ready(gateway).await)),
        Endpoint::Status => Ok(json_response(health::status(gateway))),
        Endpoint::ListModels => list_models(gateway, &request, flavor),
        Endpoint::GetModel => get_model(gateway, &request, flavor),
        _ => proxy::forward(gateway, endpoint, request, facts).await,
    };
    result.unwrap_or_else(|err| {
        facts.error = Some(err.code());
        let mut response = error_response(&err, flavor);
        if unread_body_closes && err.leaves_body_unread() {
            close_connection(&mut response);
        }
        response
    })
}

fn close_connection(response: &mut Response<ResponseBody>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

fn list_models(
    gateway: &Gateway,
    request: &Request<Incoming>,
    flavor: ApiFlavor,
) -> Result<Response<ResponseBody>, GatewayError> {
    auth::authenticate(&gateway.keys, request.headers())?;
    Ok(json_response((StatusCode::OK, gateway.models.list(flavor))))
}

fn get_model(
    gateway: &Gateway,
    request: &Request<Incoming>,
    flavor: ApiFlavor,
) -> Result<Response<ResponseBody>, GatewayError> {
    auth::authenticate(&gateway.keys, request.headers())?;
    let path = request.uri().path().trim_end_matches('/');
    let raw_id = path.strip_prefix("/v1/models/").unwrap_or_default();
    let id = percent_decode(raw_id);
    let route = gateway
        .routes
        .get(&id)
        .ok_or_else(|| GatewayError::ModelNotFound(id.clone()))?;
    Ok(json_response((
        StatusCode::OK,
        gateway.models.one(route, flavor),
    )))
}

/// Model ids may contain `/` or `:`, which clients percent-encode.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response((status, body): (StatusCode, Bytes)) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error as the caller's SDK expects it.
pub fn error_response(err: &GatewayError, flavor: ApiFlavor) -> Response<ResponseBody> {
    if err.status().is_server_error() {
        tracing::warn!(status = err.status().as_u16(), error = %err, "request failed");
    } else {
        tracing::debug!(status = err.status().as_u16(), error = %err, "request refused");
    }
    let mut response = json_response((err.status(), err.body(flavor)));
    let headers = response.headers_mut();
    match err {
        GatewayError::TooManyStreams(_) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        GatewayError::MethodNotAllowed { allowed, .. } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        GatewayError::Unauthenticated(_) => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_model_ids() {
        assert_eq!(percent_decode("org%2Fmodel%3A1"), "org/model:1");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
    }
}
