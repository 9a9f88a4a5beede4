"""Client keys: where the gateway reads them, what it answers without a
valid one, and that they never travel upstream."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from apx_harness import (
    RawConnection,
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    assert_upstream_credentials,
    mock_reply,
    new_client_key,
)

USER = [{"role": "user", "content": "hi"}]
CHAT_BODY = {"model": "gpt-test", "messages": USER}
MESSAGES_BODY = {"model": "claude-test", "max_tokens": 8, "messages": USER}


def raw_client(gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=10.0, trust_env=False)


# --- refused ----------------------------------------------------------------


def test_wrong_key_openai(make_openai, mock):
    client = make_openai(key=new_client_key())
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-test", messages=USER)
    exc = info.value
    assert exc.status_code == 401
    assert exc.response.headers["www-authenticate"] == "Bearer"
    error = exc.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert isinstance(error["message"], str) and error["message"]
    assert mock.requests() == []


def test_missing_key_openai_sdk(oai, mock):
    # The SDK drops its Authorization header when told to omit it.
    with pytest.raises(openai.AuthenticationError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, extra_headers={"Authorization": openai.Omit()}
        )
    assert info.value.status_code == 401
    assert "authorization" not in info.value.request.headers
    assert info.value.response.json()["error"]["code"] == "invalid_api_key"
    assert mock.requests() == []


def test_missing_key_openai(gateway, mock):
    with raw_client(gateway) as client:
        response = client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert mock.requests() == []


def test_wrong_key_anthropic_api_key(make_anthropic, mock):
    client = make_anthropic(key=new_client_key())
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(**MESSAGES_BODY)
    assert info.value.status_code == 401
    body = info.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert mock.requests() == []


def test_wrong_key_anthropic_auth_token(make_anthropic, mock):
    client = make_anthropic(auth_token=new_client_key())
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(**MESSAGES_BODY)
    assert info.value.response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.count_tokens(model="claude-test", messages=USER)
    assert mock.requests() == []


def test_missing_key_anthropic(gateway, mock):
    with raw_client(gateway) as client:
        response = client.post(
            "/v1/messages", json=MESSAGES_BODY, headers={"anthropic-version": "2023-06-01"}
        )
    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert mock.requests() == []


def test_every_api_endpoint_needs_a_key(make_openai, make_anthropic, mock):
    bad = make_openai(key=new_client_key())
    calls = [
        lambda: bad.models.list(),
        lambda: bad.models.retrieve("gpt-test"),
        lambda: bad.embeddings.create(model="gpt-test", input="x"),
        lambda: bad.responses.create(model="gpt-test", input="x"),
        lambda: bad.completions.create(model="gpt-test", prompt="x"),
        lambda: bad.chat.completions.create(model="gpt-test", messages=USER, stream=True),
        # An unknown model is still a 401, not a 404: nothing is revealed.
        lambda: bad.chat.completions.create(model="gpt-unknown", messages=USER),
    ]
    for call in calls:
        with pytest.raises(openai.AuthenticationError):
            call()
    bad_claude = make_anthropic(key=new_client_key())
    with pytest.raises(anthropic.AuthenticationError):
        bad_claude.models.list()
    with pytest.raises(anthropic.AuthenticationError):
        bad_claude.messages.stream(**MESSAGES_BODY).__enter__()
    assert mock.requests() == []


def test_keep_alive_survives_a_401_sent_before_the_body(gateway, client_key, mock):
    """The gateway answers 401 before reading the body. If it then closes the
    connection it must say `Connection: close`; otherwise clients (httpx
    sends the head and the body in separate writes) reuse a connection that
    is about to close, and their next request fails with "server
    disconnected"."""
    body = json.dumps(CHAT_BODY).encode()
    refused_head, refused_body = RawConnection.request(
        "/v1/chat/completions", {"Authorization": f"Bearer {new_client_key()}"}, body
    )
    with RawConnection(gateway.port) as conn:
        conn.send(refused_head)
        status, headers, _ = conn.read_response()
        assert status == 401
        if headers.get("connection", "").lower() == "close":
            return
        try:
            conn.send(refused_body)  # the rest of the request, as a client still sends it
            time.sleep(0.2)
            accepted = RawConnection.request(
                "/v1/chat/completions", {"Authorization": f"Bearer {client_key}"}, body
            )
            conn.send(b"".join(accepted))
            status, _, reply = conn.read_response()
        except OSError as err:
            pytest.fail(
                "the gateway closed the keep-alive connection after a 401 sent before the "
                f"request body, without `Connection: close` ({err!r})"
            )
    assert status == 200, reply
    assert json.loads(reply)["choices"][0]["message"]["content"] == mock_reply("gpt-test", "hi")


def test_health_endpoints_need_no_key(gateway):
    with raw_client(gateway) as client:
        healthz = client.get("/healthz")
        readyz = client.get("/readyz")
    assert healthz.status_code == 200
    assert healthz.json() == {"status": "ok"}
    assert readyz.status_code == 200
    assert readyz.headers["content-type"] == "application/json"
    ready = readyz.json()
    assert ready["status"] == "ready"
    assert ready["models"] == 4
    assert {u["provider"] for u in ready["upstreams"]} == {"mock-openai", "mock-anthropic"}
    assert all(u["resolvable"] is True for u in ready["upstreams"])


# --- accepted, and never forwarded ---------------------------------------------


def test_key_accepted_in_either_header_on_any_endpoint(gateway, client_key, mock):
    with raw_client(gateway) as client:
        as_x_api_key = client.post("/v1/chat/completions", json=CHAT_BODY, headers={"x-api-key": client_key})
        lower_bearer = client.post(
            "/v1/messages",
            json=MESSAGES_BODY,
            headers={"authorization": f"bearer {client_key}", "anthropic-version": "2023-06-01"},
        )
    assert as_x_api_key.status_code == 200, as_x_api_key.text
    assert as_x_api_key.json()["choices"][0]["message"]["content"] == mock_reply("gpt-test", "hi")
    assert lower_bearer.status_code == 200, lower_bearer.text
    openai_rec, anthropic_rec = mock.requests()
    assert_upstream_credentials(openai_rec, "openai", [client_key])
    assert_upstream_credentials(anthropic_rec, "anthropic", [client_key])


def test_other_client_credentials_are_not_forwarded(gateway, client_key, mock):
    with raw_client(gateway) as client:
        response = client.post(
            "/v1/chat/completions",
            json=CHAT_BODY,
            headers={
                "authorization": f"Bearer {client_key}",
                "api-key": "azure-style-secret",
                "cookie": "session=cookie-secret",
                "proxy-authorization": "Basic cHJveHktc2VjcmV0",
                "x-harmless": "kept",
            },
        )
    assert response.status_code == 200, response.text
    [rec] = mock.requests()
    assert rec.header_values("x-harmless") == ["kept"]
    for secret in ("azure-style-secret", "cookie-secret", "cHJveHktc2VjcmV0"):
        assert secret not in rec.everything()
    assert_upstream_credentials(rec, "openai", [client_key])


def test_client_key_never_reaches_the_upstream(make_openai, make_anthropic, client_key, second_key, mock):
    keys = [client_key, second_key]
    oai = make_openai()
    oai.chat.completions.create(model="gpt-test", messages=USER)
    list(oai.chat.completions.create(model="gpt-renamed", messages=USER, stream=True))
    oai.embeddings.create(model="gpt-test", input="x")
    oai.responses.create(model="gpt-test", input="x")
    list(oai.responses.create(model="gpt-test", input="x", stream=True))
    oai.completions.create(model="gpt-test", prompt="x")
    for claude in (make_anthropic(), make_anthropic(auth_token=second_key)):
        claude.messages.create(**MESSAGES_BODY)
        with claude.messages.stream(**MESSAGES_BODY) as stream:
            stream.get_final_message()
        claude.messages.count_tokens(model="claude-renamed", messages=USER)

    records = mock.requests()
    assert [r.path for r in records] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/responses",
        "/v1/completions",
    ] + ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"] * 2
    for rec in records[:6]:
        assert_upstream_credentials(rec, "openai", keys)
        assert UPSTREAM_ANTHROPIC_KEY not in rec.everything()
    for rec in records[6:]:
        assert_upstream_credentials(rec, "anthropic", keys)
        assert UPSTREAM_OPENAI_KEY not in rec.everything()
