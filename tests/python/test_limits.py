"""Request body size and concurrent stream limits (the `limits` gateway:
max_request_body = 64KiB, max_concurrent_streams = 2)."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from apx_harness import RawConnection, mock_reply
from conftest import LIMITS_MAX_BODY, LIMITS_MAX_STREAMS

USER = [{"role": "user", "content": "hi"}]
# Streams that stay open for about a second once started.
SLOW = {"x-mock-scenario": "chunk-delay:100,words:8"}


@pytest.fixture
def limited_openai(make_openai, limits_gateway) -> openai.OpenAI:
    return make_openai(gw=limits_gateway)


@pytest.fixture
def limited_claude(make_anthropic, limits_gateway) -> anthropic.Anthropic:
    return make_anthropic(gw=limits_gateway)


# --- request body size -----------------------------------------------------------


def test_body_over_the_limit_is_413_openai(limited_openai, mock):
    big = "x" * LIMITS_MAX_BODY
    with pytest.raises(openai.APIStatusError) as info:
        limited_openai.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": big}]
        )
    assert info.value.status_code == 413
    error = info.value.response.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert mock.requests() == []


def test_body_over_the_limit_is_413_anthropic(limited_claude, mock):
    big = "x" * LIMITS_MAX_BODY
    with pytest.raises(anthropic.APIStatusError) as info:
        limited_claude.messages.create(
            model="claude-test", max_tokens=8, messages=[{"role": "user", "content": big}]
        )
    assert info.value.status_code == 413
    body = info.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "request_too_large"
    assert mock.requests() == []


def test_body_under_the_limit_passes(limited_openai, mock):
    text = "y" * (LIMITS_MAX_BODY - 1024)
    completion = limited_openai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": text}]
    )
    assert completion.choices[0].message.content == mock_reply("gpt-test", text)
    assert len(mock.requests()[0].body) > LIMITS_MAX_BODY - 1024


def test_chunked_body_over_the_limit_is_413(limits_gateway, client_key, mock):
    # No Content-Length: the limit must hold while the body streams in.
    def body():
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(LIMITS_MAX_BODY // 4096 + 2):
            yield b"z" * 4096
        yield b'"}]}'

    with httpx.Client(base_url=limits_gateway.url, timeout=10.0, trust_env=False) as client:
        response = client.post(
            "/v1/chat/completions",
            content=body(),
            headers={"authorization": f"Bearer {client_key}", "content-type": "application/json"},
        )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert mock.requests() == []


def test_keep_alive_survives_a_413_sent_before_the_body(limits_gateway, client_key, mock):
    """As after a 401: a 413 decided from Content-Length alone must either say
    `Connection: close` or leave the connection usable."""
    auth = {"Authorization": f"Bearer {client_key}", "Content-Type": "application/json"}
    big = json.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * LIMITS_MAX_BODY}]}
    ).encode()
    refused_head, refused_body = RawConnection.request("/v1/chat/completions", auth, big)
    with RawConnection(limits_gateway.port) as conn:
        conn.send(refused_head)
        status, headers, _ = conn.read_response()
        assert status == 413
        if headers.get("connection", "").lower() == "close":
            return
        try:
            conn.send(refused_body)
            time.sleep(0.2)
            small = json.dumps({"model": "gpt-test", "messages": USER}).encode()
            conn.send(b"".join(RawConnection.request("/v1/chat/completions", auth, small)))
            status, _, reply = conn.read_response()
        except OSError as err:
            pytest.fail(
                "the gateway closed the keep-alive connection after a 413 sent before the "
                f"request body, without `Connection: close` ({err!r})"
            )
    assert status == 200, reply


# --- concurrent streams ------------------------------------------------------------


def test_stream_over_the_limit_is_503_then_recovers(limited_openai, limited_claude, mock):
    held = [
        limited_openai.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=SLOW
        ),
        limited_claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, stream=True, extra_headers=SLOW
        ),
    ]
    assert len(held) == LIMITS_MAX_STREAMS

    with pytest.raises(openai.APIStatusError) as info:
        limited_openai.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "1"
    error = info.value.response.json()["error"]
    assert error["code"] == "too_many_concurrent_streams"

    with pytest.raises(anthropic.ServiceUnavailableError) as info:
        limited_claude.messages.create(model="claude-test", max_tokens=8, messages=USER, stream=True)
    assert info.value.status_code == 503
    assert info.value.response.json()["error"]["type"] == "overloaded_error"

    # Requests that do not stream are not limited by it.
    completion = limited_openai.chat.completions.create(model="gpt-test", messages=USER)
    assert completion.choices[0].message.content == mock_reply("gpt-test", "hi")

    # Let both streams run to their end.
    text = "".join(c.choices[0].delta.content or "" for c in held[0] if c.choices)
    assert text == "w1 w2 w3 w4 w5 w6 w7 w8"
    events = [e.type for e in held[1]]
    assert events[-1] == "message_stop"

    again = [
        limited_openai.chat.completions.create(model="gpt-test", messages=USER, stream=True)
        for _ in range(LIMITS_MAX_STREAMS)
    ]
    for stream in again:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
            mock_reply("gpt-test", "hi")
        )
    # The refused streams never reached the upstream.
    assert [r.path for r in mock.requests()] == [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/chat/completions",
    ]


def test_stream_slot_is_freed_when_the_client_goes_away(limited_openai, mock):
    held = [
        limited_openai.chat.completions.create(
            model="gpt-test",
            messages=USER,
            stream=True,
            extra_headers={"x-mock-scenario": "chunk-delay:100,words:100"},
        )
        for _ in range(LIMITS_MAX_STREAMS)
    ]
    with pytest.raises(openai.APIStatusError) as info:
        limited_openai.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    assert info.value.status_code == 503
    for stream in held:
        stream.close()
    # The gateway notices the closed connection at its next write upstream
    # data arrives (100 ms apart); allow a second.
    mock.wait_for_stats(lambda s: s["cancelled_streams"] >= LIMITS_MAX_STREAMS, 1.0)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            stream = limited_openai.chat.completions.create(
                model="gpt-test", messages=USER, stream=True
            )
            break
        except openai.APIStatusError as err:
            assert err.status_code == 503
            assert time.monotonic() < deadline, "stream slots still taken 1 s after disconnect"
            time.sleep(0.05)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        mock_reply("gpt-test", "hi")
    )
