//! A minimal HTTP/1.1 client for talking to the local gateway (plain HTTP on
//! loopback), with the one-line errors the CLI promises: the gateway is
//! down, the key is refused, the model is unknown.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::exit::{self, Failure};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub key: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr, key: Option<String>) -> Client {
        Client { addr, key }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends one request on a new connection. A gateway that cannot be
    /// reached is a [`Failure`] with exit code 3.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return Err(self.down(&reason(&err)).into()),
                Err(_) => return Err(self.down("no answer within 3s").into()),
            };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| self.down(&err.to_string()))?;
        tokio::spawn(async move {
            // The connection ends with the response; errors surface there.
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(
                http::header::USER_AGENT,
                concat!("apx-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(key) = &self.key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map(Bytes::from).unwrap_or_default();
        let request = request.body(Full::new(body))?;
        sender
            .send_request(request)
            .await
            .map_err(|err| self.down(&format!("the connection failed: {err}")).into())
    }

    /// GET `path` and read the whole body as JSON (`Value::Null` when it is
    /// not JSON).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.send(Method::GET, path, &[], None).await?;
        let status = response.status();
        let body = read_body(response).await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    fn down(&self, reason: &str) -> Failure {
        Failure::new(
            exit::NOT_RUNNING,
            format!("the gateway is not reachable at {} ({reason})", self.url()),
        )
        .hint("start it with `apx start`; `apx status` shows what is running")
    }
}

fn reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        _ => err.to_string(),
    }
}

pub async fn read_body(response: Response<Incoming>) -> anyhow::Result<Bytes> {
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(|err| anyhow::anyhow!("the gateway's answer broke off: {err}"))?
        .to_bytes())
}

/// The message of an error body in either API family's shape.
pub fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    match error {
        Value::String(text) => Some(text.clone()),
        _ => error
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Turns an error answer of the gateway into the CLI's one-line failure:
/// exit 4 for a refused key, exit 5 for anything else.
pub fn answer_failure(status: StatusCode, body: &[u8], models: &[String]) -> Failure {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = error_message(&json).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body).trim().to_string();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        }
    });
    let code = json
        .get("error")
        .and_then(|e| e.get("code").or_else(|| e.get("type")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Failure::new(
            exit::KEY_REFUSED,
            format!("the gateway refused the key: {message}"),
        )
        .hint("set APX_API_KEY to a key from `apx keys create --name NAME`, or re-run `apx init --force`");
    }
    let unknown_model =
        code == "model_not_found" || (status == StatusCode::NOT_FOUND && message.contains("model"));
    if unknown_model {
        let served = if models.is_empty() {
            "none".to_string()
        } else {
            models.join(", ")
        };
        return Failure::new(exit::REQUEST_FAILED, format!("unknown model: {message}")).hint(
            format!("the gateway serves: {served} (`apx models` lists them)"),
        );
    }
    Failure::new(
        exit::REQUEST_FAILED,
        format!("the gateway answered {}: {message}", status.as_u16()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_of_both_families() {
        let openai =
            serde_json::json!({"error": {"message": "bad key", "code": "invalid_api_key"}});
        assert_eq!(error_message(&openai).as_deref(), Some("bad key"));
        let anthropic = serde_json::json!({"type": "error", "error": {"type": "not_found_error", "message": "no model"}});
        assert_eq!(error_message(&anthropic).as_deref(), Some("no model"));
    }

    #[test]
    fn failures_get_the_documented_exit_codes() {
        let refused = answer_failure(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"invalid API key","code":"invalid_api_key"}}"#,
            &[],
        );
        assert_eq!(refused.code, exit::KEY_REFUSED);
        let unknown = answer_failure(
            StatusCode::NOT_FOUND,
            br#"{"error":{"message":"the model `x` does not exist","code":"model_not_found"}}"#,
            &["echo".to_string()],
        );
        assert_eq!(unknown.code, exit::REQUEST_FAILED);
        assert!(unknown.hint.unwrap().contains("echo"));
        let upstream = answer_failure(StatusCode::BAD_GATEWAY, b"", &[]);
        assert_eq!(upstream.message, "the gateway answered 502: Bad Gateway");
    }
}
