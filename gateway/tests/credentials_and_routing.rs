//! Keys are checked and never forwarded; each upstream gets exactly its own
//! credential; routing, renaming and pass-through of everything else.

mod common;

use common::*;

fn count_occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn openai_upstream_gets_its_own_key_once_and_never_the_client_key() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[
            ("x-api-key", CLIENT_KEY),
            ("cookie", "session=abc"),
            ("x-custom-trace", "t-1"),
        ],
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["choices"][0]["message"]["content"],
        "Hello from gpt-test! You said: hello gateway"
    );

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    let upstream = &requests[0];
    assert_eq!(upstream.path, "/v1/chat/completions");
    let auth: Vec<&(String, String)> = upstream
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].1, format!("Bearer {OPENAI_UPSTREAM_KEY}"));
    let everything = format!(
        "{:?}{}",
        upstream.headers,
        String::from_utf8_lossy(&upstream.body)
    );
    assert_eq!(count_occurrences(&everything, OPENAI_UPSTREAM_KEY), 1);
    assert_eq!(count_occurrences(&everything, CLIENT_KEY), 0);
    assert!(upstream.header("x-api-key").is_none());
    assert!(upstream.header("cookie").is_none());
    assert_eq!(upstream.header("x-custom-trace"), Some("t-1"));
}

#[tokio::test]
async fn anthropic_upstream_gets_x_api_key_and_versions() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/messages",
        &message("claude-test", false),
        &[
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024-05-16"),
        ],
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["type"], "message");

    let upstream = &gw.mock.requests()[0];
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.header("x-api-key"), Some(ANTHROPIC_UPSTREAM_KEY));
    assert!(upstream.header("authorization").is_none());
    assert_eq!(upstream.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(upstream.header("anthropic-beta"), Some("tools-2024-05-16"));
    let everything = format!(
        "{:?}{}",
        upstream.headers,
        String::from_utf8_lossy(&upstream.body)
    );
    assert_eq!(count_occurrences(&everything, ANTHROPIC_UPSTREAM_KEY), 1);
    assert_eq!(count_occurrences(&everything, CLIENT_KEY), 0);
}

#[tokio::test]
async fn anthropic_accepts_client_key_in_x_api_key_and_fills_missing_version() {
    let gw = TestGateway::start("").await;
    let headers = [("x-api-key", CLIENT_KEY.to_string())];
    let response = send(
        &gw,
        "POST",
        "/v1/messages",
        &message("claude-test", false),
        &headers,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        gw.mock.requests()[0].header("anthropic-version"),
        Some("2023-06-01")
    );
}

#[tokio::test]
async fn missing_and_wrong_keys_get_401_in_each_family_shape_without_upstream_contact() {
    let gw = TestGateway::start("").await;
    let none = send(
        &gw,
        "POST",
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[],
    )
    .await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["code"], "invalid_api_key");
    assert!(
        none.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization")
    );

    let wrong = [("authorization", "Bearer apx-not-a-key".to_string())];
    let wrong = send(
        &gw,
        "POST",
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &wrong,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["type"], "invalid_request_error");

    let anthropic = [("x-api-key", "apx-not-a-key".to_string())];
    let anthropic = send(
        &gw,
        "POST",
        "/v1/messages",
        &message("claude-test", false),
        &anthropic,
    )
    .await;
    assert_eq!(anthropic.status, 401);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "authentication_error");

    let models = send(&gw, "GET", "/v1/models", "", &[]).await;
    assert_eq!(models.status, 401);
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn unknown_model_is_404_without_contacting_any_upstream() {
    let gw = TestGateway::start("").await;
    let openai = post(&gw, "/v1/chat/completions", &chat("gpt-nope", false), &[]).await;
    assert_eq!(openai.status, 404);
    assert_eq!(openai.json()["error"]["code"], "model_not_found");
    let anthropic = post(&gw, "/v1/messages", &message("claude-nope", false), &[]).await;
    assert_eq!(anthropic.status, 404);
    assert_eq!(anthropic.json()["error"]["type"], "not_found_error");
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn malformed_bodies_are_400_in_the_called_family_shape() {
    let gw = TestGateway::start("").await;
    for (body, code) in [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        (r#"{"messages":[]}"#, "missing_model"),
        (r#"{"model":7}"#, "null"),
    ] {
        let response = post(&gw, "/v1/chat/completions", body, &[]).await;
        assert_eq!(response.status, 400, "{body}");
        assert_eq!(
            response.json()["error"]["code"]
                .to_string()
                .trim_matches('"'),
            code,
            "{body}"
        );
    }
    let anthropic = post(&gw, "/v1/messages", "{not json", &[]).await;
    assert_eq!(anthropic.status, 400);
    assert_eq!(anthropic.json()["error"]["type"], "invalid_request_error");
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn model_family_mismatch_is_a_clear_400() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("claude-test", false),
        &[],
    )
    .await;
    assert_eq!(response.status, 400);
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("/v1/messages"), "{message}");
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn body_passes_through_byte_for_byte_except_a_configured_rename() {
    let gw = TestGateway::start("").await;
    let body = r#"{"model":"gpt-alias",  "messages":[{"role":"user","content":"hi"}],"x_unknown":{"nested":[1,2.50,"é"]},"temperature":0.70}"#;
    let response = post(
        &gw,
        "/v1/chat/completions?api-version=2024-10-21",
        body,
        &[],
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = &gw.mock.requests()[0];
    assert_eq!(upstream.path, "/v1/chat/completions?api-version=2024-10-21");
    let expected = body.replace("\"gpt-alias\"", "\"gpt-upstream-name\"");
    assert_eq!(String::from_utf8(upstream.body.clone()).unwrap(), expected);

    gw.mock.clear();
    let plain =
        r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"x_unknown":true}"#;
    post(&gw, "/v1/chat/completions", plain, &[]).await;
    assert_eq!(gw.mock.requests()[0].body, plain.as_bytes());
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
        ],
    )
    .await;
    assert_eq!(response.status, 200);
    let upstream = &gw.mock.requests()[0];
    assert!(upstream.header("x-secret-hop").is_none());
    assert!(upstream.header("te").is_none());
}

#[tokio::test]
async fn models_lists_only_configured_models_in_both_shapes() {
    let gw = TestGateway::start("").await;
    let auth = [("authorization", format!("Bearer {CLIENT_KEY}"))];
    let list = send(&gw, "GET", "/v1/models", "", &auth).await;
    assert_eq!(list.status, 200);
    let ids: Vec<String> = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "gpt-test",
            "gpt-alias",
            "claude-test",
            "gpt-wrong-key",
            "gpt-unreachable"
        ]
    );
    assert_eq!(list.json()["object"], "list");

    let one = send(&gw, "GET", "/v1/models/gpt-alias", "", &auth).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "gpt-alias");
    assert_eq!(one.json()["object"], "model");
    let missing = send(&gw, "GET", "/v1/models/gpt-4", "", &auth).await;
    assert_eq!(missing.status, 404);

    let anthropic = [
        ("x-api-key", CLIENT_KEY.to_string()),
        ("anthropic-version", "2023-06-01".to_string()),
    ];
    let list = send(&gw, "GET", "/v1/models", "", &anthropic).await;
    assert_eq!(list.json()["data"][2]["type"], "model");
    assert_eq!(list.json()["first_id"], "gpt-test");
    assert_eq!(list.json()["has_more"], false);
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = TestGateway::start("").await;
    let live = send(&gw, "GET", "/healthz", "", &[]).await;
    assert_eq!(live.status, 200);
    let ready = send(&gw, "GET", "/readyz", "", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(ready.json()["upstreams"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_family_shaped_errors() {
    let gw = TestGateway::start("").await;
    let missing = send(&gw, "POST", "/v1/nothing", "{}", &[]).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]["message"].is_string());
    let method = send(&gw, "GET", "/v1/chat/completions", "", &[]).await;
    assert_eq!(method.status, 405);
    assert_eq!(method.headers["allow"], "POST");
}

#[tokio::test]
async fn keys_created_and_revoked_in_the_store_apply_without_restart() {
    let gw = TestGateway::start("").await;
    let store = apx_gateway::store::keys::KeyStore::open(&gw.state_dir.join("state.db")).unwrap();
    let (_, key) = store.create("live", None).unwrap();
    let auth = [("authorization", format!("Bearer {key}"))];
    assert!(
        reaches_status(&gw, &auth, 200).await,
        "a new key is accepted within 4 s"
    );
    store.revoke("live").unwrap();
    assert!(
        reaches_status(&gw, &auth, 401).await,
        "a revoked key is refused within 4 s"
    );
}

/// Repeats a call until it answers `status`, for at most 4 s.
async fn reaches_status(gw: &TestGateway, auth: &[(&str, String)], status: u16) -> bool {
    for _ in 0..40 {
        let response = send(
            gw,
            "POST",
            "/v1/chat/completions",
            &chat("gpt-test", false),
            auth,
        )
        .await;
        if response.status == status {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    use http_body_util::BodyExt;
    let gw = TestGateway::start("").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(chat(
            "gpt-test", true,
        ))))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    let upstream = &gw.mock.requests()[0];
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {OPENAI_UPSTREAM_KEY}").as_str())
    );
}
