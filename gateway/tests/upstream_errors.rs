//! Upstream errors keep their status and useful headers, arrive in the body
//! shape of the API that was called, and never carry an upstream secret.

mod common;

use common::*;

#[tokio::test]
async fn rate_limits_keep_status_and_retry_after() {
    let gw = TestGateway::start("").await;
    let openai = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[("x-mock-scenario", "status:429")],
    )
    .await;
    assert_eq!(openai.status, 429);
    assert_eq!(openai.headers["retry-after"], "7");
    assert_eq!(openai.headers["content-type"], "application/json");
    assert!(openai.json()["error"]["message"].is_string());

    let anthropic = post(
        &gw,
        "/v1/messages",
        &message("claude-test", true),
        &[("x-mock-scenario", "status:429")],
    )
    .await;
    assert_eq!(anthropic.status, 429);
    assert_eq!(anthropic.headers["retry-after"], "7");
    assert_eq!(anthropic.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn server_errors_and_overload_keep_their_status() {
    let gw = TestGateway::start("").await;
    let openai = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[("x-mock-scenario", "status:500")],
    )
    .await;
    assert_eq!(openai.status, 500);
    assert!(openai.json()["error"]["type"].is_string());
    let overloaded = post(
        &gw,
        "/v1/messages",
        &message("claude-test", false),
        &[("x-mock-scenario", "status:529")],
    )
    .await;
    assert_eq!(overloaded.status.as_u16(), 529);
    assert_eq!(overloaded.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn non_json_upstream_errors_are_rewrapped_in_the_called_shape() {
    let gw = TestGateway::start("").await;
    let openai = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[("x-mock-scenario", "html-error:502")],
    )
    .await;
    assert_eq!(openai.status, 502);
    assert_eq!(openai.json()["error"]["type"], "server_error");
    assert!(
        openai.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("502")
    );

    let anthropic = post(
        &gw,
        "/v1/messages",
        &message("claude-test", false),
        &[("x-mock-scenario", "html-error:503")],
    )
    .await;
    assert_eq!(anthropic.status, 503);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "api_error");
}

#[tokio::test]
async fn gzip_error_bodies_are_decoded_and_passed_on() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[
            ("x-mock-scenario", "status:400,gzip"),
            ("accept-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(response.headers.get("content-encoding").is_none());
    assert!(response.json()["error"]["message"].is_string());
}

#[tokio::test]
async fn upstream_rejecting_the_gateway_credential_is_a_502_that_leaks_nothing() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-wrong-key", false),
        &[],
    )
    .await;
    assert_eq!(response.status, 502);
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("rejected the gateway's own credential"),
        "{message}"
    );
    let everything = format!("{:?}{}", response.headers, response.text());
    assert!(!everything.contains("sk-wrong"), "{everything}");
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-unreachable", true),
        &[],
    )
    .await;
    assert_eq!(response.status, 502);
    assert_eq!(response.json()["error"]["code"], "upstream_unreachable");
}
