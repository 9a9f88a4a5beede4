//! User-space capture: every call gives one record with the header elements,
//! the gateway's facts and token usage, and no credential in clear anywhere
//! in the store.

mod common;

use std::time::Duration;

use apx_gateway::logging::record::CallRecord;
use apx_gateway::store::logs::{LogQuery, LogStore};
use common::*;

const USERSPACE: &str = "[logging]\ncapture = \"userspace\"\nheaders = [\"x-tenant\"]";

async fn records(gw: &TestGateway, expected: usize) -> Vec<CallRecord> {
    let path = gw.state_dir.join("logs.db");
    let mut last = Vec::new();
    for _ in 0..100 {
        if let Ok(store) = LogStore::open(&path) {
            last = store
                .query(&LogQuery {
                    limit: Some(10_000),
                    ..LogQuery::default()
                })
                .unwrap();
            if last.len() >= expected {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

#[tokio::test]
async fn each_call_gives_one_complete_record() {
    let gw = TestGateway::start(USERSPACE).await;
    let n = 20;
    for i in 0..n {
        let stream = i % 2 == 0;
        let response = post(
            &gw,
            "/v1/chat/completions",
            &chat("gpt-alias", stream),
            &[
                ("x-tenant", "acme"),
                ("user-agent", "it-test/1.0"),
                ("x-request-id", &format!("req-{i}")),
            ],
        )
        .await;
        assert_eq!(response.status, 200);
    }
    let records = records(&gw, n).await;
    assert_eq!(records.len(), n);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.method, "POST");
        assert_eq!(record.path, "/v1/chat/completions");
        assert_eq!(record.status, Some(200));
        assert_eq!(record.client_address.as_deref(), Some("127.0.0.1"));
        assert_eq!(record.server_port, Some(gw.addr.port()));
        assert_eq!(
            record.header("x-request-id"),
            Some(format!("req-{i}").as_str())
        );
        assert_eq!(record.header("x-tenant"), Some("acme"));
        assert_eq!(record.header("user-agent"), Some("it-test/1.0"));
        assert_eq!(record.key_name.as_deref(), Some("test"));
        assert_eq!(record.key_id.as_deref(), Some("config:test"));
        assert_eq!(record.model.as_deref(), Some("gpt-alias"));
        assert_eq!(record.upstream_model.as_deref(), Some("gpt-upstream-name"));
        assert_eq!(record.provider.as_deref(), Some("mock-openai"));
        assert_eq!(record.provider_kind.as_deref(), Some("openai"));
        assert_eq!(record.upstream_status, Some(200));
        assert_eq!(record.stream, i % 2 == 0);
        assert!(!record.partial, "{:?}", record.notes);
        assert_eq!(record.capture.map(|c| c.name()), Some("userspace"));
        // "hello gateway" is 2 words in the mock; the reply has 7. Streams
        // have them too: the gateway asked for usage on the client's behalf.
        assert_eq!(
            (record.input_tokens, record.output_tokens),
            (Some(2), Some(7))
        );
        assert!(record.duration_ms.unwrap() > 0.0);
        assert_eq!(record.credentials.len(), 1);
        assert_eq!(record.credentials[0].header, "authorization");
        assert_eq!(record.credentials[0].scheme, "bearer");
        assert_eq!(record.credentials[0].fingerprint.len(), 16);
    }
    // Same key, same fingerprint.
    assert_eq!(
        records[0].credentials[0].fingerprint,
        records[1].credentials[0].fingerprint
    );
}

#[tokio::test]
async fn streamed_usage_and_errors_are_recorded() {
    let gw = TestGateway::start(USERSPACE).await;
    let body = serde_json::json!({
        "model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "one two three"}],
    })
    .to_string();
    post(&gw, "/v1/chat/completions", &body, &[]).await;
    post(&gw, "/v1/messages", &message("claude-test", true), &[]).await;
    post(&gw, "/v1/chat/completions", &chat("nope", false), &[]).await;
    post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &[("x-mock-scenario", "status:429")],
    )
    .await;
    send(&gw, "POST", "/v1/chat/completions", "{}", &[]).await;
    let records = records(&gw, 5).await;
    assert_eq!(records.len(), 5);
    assert_eq!(
        (records[0].input_tokens, records[0].output_tokens),
        (Some(3), Some(8))
    );
    assert_eq!(
        (records[1].input_tokens, records[1].output_tokens),
        (Some(2), Some(7))
    );
    assert!(records[1].first_chunk_ms.is_some());
    assert_eq!(records[2].status, Some(404));
    assert_eq!(records[2].error.as_deref(), Some("model_not_found"));
    assert_eq!(records[2].key_name.as_deref(), Some("test"));
    assert_eq!(records[3].status, Some(429));
    assert_eq!(records[3].upstream_status, Some(429));
    assert_eq!(records[4].status, Some(401));
    assert_eq!(records[4].error.as_deref(), Some("invalid_api_key"));
    assert!(records[4].credentials.is_empty());
}

#[tokio::test]
async fn no_credential_ever_reaches_the_store() {
    let gw = TestGateway::start(USERSPACE).await;
    post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", true),
        &[("cookie", "session=cookie-secret-value")],
    )
    .await;
    let anthropic = [
        ("x-api-key", CLIENT_KEY.to_string()),
        ("api-key", "apx-other-secret-key".to_string()),
    ];
    send(
        &gw,
        "POST",
        "/v1/messages",
        &message("claude-test", false),
        &anthropic,
    )
    .await;
    let bad = [("authorization", "Bearer apx-wrong-but-secret".to_string())];
    send(
        &gw,
        "POST",
        "/v1/chat/completions",
        &chat("gpt-test", false),
        &bad,
    )
    .await;
    let records = records(&gw, 3).await;
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].credentials.len(), 2);
    // Read every byte of the store files, WAL included.
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&gw.state_dir).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&bytes);
    for secret in [
        CLIENT_KEY,
        "cookie-secret-value",
        "apx-other-secret-key",
        "apx-wrong-but-secret",
        OPENAI_UPSTREAM_KEY,
        ANTHROPIC_UPSTREAM_KEY,
    ] {
        assert!(
            !text.contains(secret),
            "{secret} found in the state directory"
        );
    }
}

#[tokio::test]
async fn a_client_leaving_mid_stream_gives_a_partial_record() {
    use http_body_util::BodyExt;
    let gw = TestGateway::start(USERSPACE).await;
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-mock-scenario", "chunk-delay:100,words:50")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat(
            "gpt-test", true,
        ))))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let records = records(&gw, 1).await;
    assert_eq!(records.len(), 1);
    assert!(records[0].partial);
    assert_eq!(records[0].status, Some(200));
}

#[tokio::test]
async fn logging_off_writes_nothing() {
    let gw = TestGateway::start("[logging]\ncapture = \"off\"").await;
    post(&gw, "/v1/chat/completions", &chat("gpt-test", false), &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!gw.state_dir.join("logs.db").exists());
}

#[tokio::test]
async fn shutdown_writes_every_pending_record_before_exit() {
    let mut gw = TestGateway::start(USERSPACE).await;
    for _ in 0..25 {
        post(&gw, "/v1/chat/completions", &chat("gpt-test", false), &[]).await;
    }
    gw.begin_shutdown();
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    // No waiting: the gateway flushed before `serve` returned.
    let store = LogStore::open(&gw.state_dir.join("logs.db")).unwrap();
    assert_eq!(store.count().unwrap(), 25);
}
