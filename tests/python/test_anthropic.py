"""The Messages API through the gateway with the official Anthropic SDK."""

from __future__ import annotations

import asyncio

import anthropic
import httpx

from apx_harness import assert_upstream_credentials, mock_reply, words

HELLO = [{"role": "user", "content": "hello claude"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_messages_create_with_api_key(claude, mock, client_key, second_key):
    message = claude.messages.create(model="claude-test", max_tokens=64, messages=HELLO)
    expected = mock_reply("claude-test", "hello claude")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-test"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == expected
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 2
    assert message.usage.output_tokens == words(expected)

    [rec] = mock.requests()
    assert rec.method == "POST"
    assert rec.path == "/v1/messages"
    assert rec.json()["max_tokens"] == 64
    assert rec.header_values("anthropic-version") == [claude.default_headers["anthropic-version"]]
    assert_upstream_credentials(rec, "anthropic", [client_key, second_key])


def test_messages_create_with_auth_token(make_anthropic, mock, client_key):
    client = make_anthropic(auth_token=client_key)
    message = client.messages.create(model="claude-test", max_tokens=64, messages=HELLO)
    assert message.content[0].text == mock_reply("claude-test", "hello claude")
    [rec] = mock.requests()
    # The bearer token is replaced by the upstream's x-api-key.
    assert_upstream_credentials(rec, "anthropic", [client_key])


def test_explicit_anthropic_version_is_forwarded(claude, mock):
    claude.messages.create(
        model="claude-test",
        max_tokens=8,
        messages=HELLO,
        extra_headers={"anthropic-version": "2023-06-01"},
    )
    [rec] = mock.requests()
    assert rec.header_values("anthropic-version") == ["2023-06-01"]


def test_beta_headers_and_query_are_forwarded(claude, mock, client_key):
    message = claude.beta.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=HELLO,
        betas=["fake-feature-2025-01-01", "other-feature-2025-02-02"],
        extra_query={"beta": "true"},
    )
    assert message.content[0].text == mock_reply("claude-test", "hello claude")
    [rec] = mock.requests()
    assert rec.path == "/v1/messages?beta=true"
    assert rec.header_values("anthropic-beta") == [
        "fake-feature-2025-01-01,other-feature-2025-02-02"
    ]
    assert_upstream_credentials(rec, "anthropic", [client_key])


def test_model_rename_and_unknown_fields(claude, mock):
    vendor = {"route": "eu", "weights": [0.5, 0.25], "flag": True}
    message = claude.messages.create(
        model="claude-renamed",
        max_tokens=32,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
        metadata={"user_id": "user-42"},
        extra_body={"x_vendor": vendor},
    )
    assert message.model == "claude-upstream-name"
    assert message.content[0].text == mock_reply("claude-upstream-name", "second question")
    # system (3) + messages (2 + 2 + 2) words.
    assert message.usage.input_tokens == 9
    body = mock.requests()[0].json()
    assert body["model"] == "claude-upstream-name"
    assert body["x_vendor"] == vendor
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["system"] == "You are terse."


def test_messages_stream_final_message(claude, mock):
    with claude.messages.stream(model="claude-test", max_tokens=64, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    expected = mock_reply("claude-test", "hello claude")
    assert "".join(pieces) == expected
    assert len(pieces) == words(expected)
    assert final.content[0].type == "text"
    assert final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 2
    assert final.usage.output_tokens == words(expected)
    assert mock.requests()[0].json()["stream"] is True
    assert mock.stats()["completed_streams"] == 1


def test_messages_raw_stream_events(claude, mock):
    stream = claude.messages.create(
        model="claude-renamed", max_tokens=64, messages=HELLO, stream=True
    )
    events = list(stream)
    expected = mock_reply("claude-upstream-name", "hello claude")
    n = words(expected)
    assert [e.type for e in events] == (
        ["message_start", "content_block_start"]
        + ["content_block_delta"] * n
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    assert events[0].message.model == "claude-upstream-name"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == expected
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == n


def test_tool_use(claude, mock):
    message = claude.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER_TOOL],
    )
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Calling tool"
    tool_use = message.content[1]
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"echo": "Weather in Rome?"}
    assert tool_use.id.startswith("toolu_")
    assert mock.requests()[0].json()["tools"] == [WEATHER_TOOL]


def test_tool_use_stream(claude, mock):
    with claude.messages.stream(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Lima?"}],
        tools=[WEATHER_TOOL],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Calling tool"
    assert final.content[1].name == "get_weather"
    assert final.content[1].input == {"echo": "Weather in Lima?"}


def test_count_tokens(claude, mock, client_key):
    result = claude.messages.count_tokens(
        model="claude-renamed",
        system="count these too",
        messages=[{"role": "user", "content": "one two three four"}],
    )
    assert result.input_tokens == 7
    [rec] = mock.requests()
    assert rec.path == "/v1/messages/count_tokens"
    assert rec.json()["model"] == "claude-upstream-name"
    assert_upstream_credentials(rec, "anthropic", [client_key])


def test_async_client_stream(gateway, client_key, mock):
    async def run() -> tuple[str, str]:
        async with anthropic.AsyncAnthropic(
            base_url=gateway.anthropic_base_url, api_key=client_key, max_retries=0, timeout=10.0
        ) as client:
            async with client.messages.stream(
                model="claude-test",
                max_tokens=64,
                messages=[{"role": "user", "content": "async hello"}],
            ) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                final = await stream.get_final_message()
        return text, final.content[0].text

    text, final_text = asyncio.run(run())
    assert text == mock_reply("claude-test", "async hello")
    assert final_text == text


def test_raw_body_and_repeated_beta_headers_forwarded(gateway, client_key, mock):
    body = (
        b'{"max_tokens":16,  "model" : "claude-renamed","messages":[{"role":"user",'
        b'"content":"caf\\u00e9"}], "x_vendor":{"model":"claude-renamed","n":1.50}}'
    )
    with httpx.Client(base_url=gateway.url, timeout=10.0, trust_env=False) as client:
        response = client.post(
            "/v1/messages",
            content=body,
            headers=[
                ("x-api-key", client_key),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "first-2025-01-01"),
                ("anthropic-beta", "second-2025-01-01"),
                ("content-type", "application/json"),
            ],
        )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == mock_reply("claude-upstream-name", "café")
    [rec] = mock.requests()
    assert rec.body.encode() == body.replace(
        b'"model" : "claude-renamed"', b'"model" : "claude-upstream-name"', 1
    )
    assert rec.header_values("anthropic-beta") == ["first-2025-01-01", "second-2025-01-01"]
    assert rec.header_values("anthropic-version") == ["2023-06-01"]


def test_models_list_with_auth_token(make_anthropic, client_key, mock):
    client = make_anthropic(auth_token=client_key)
    page = client.models.list()
    assert [m.id for m in page.data] == ["gpt-test", "gpt-renamed", "claude-test", "claude-renamed"]
    assert page.last_id == "claude-renamed"
