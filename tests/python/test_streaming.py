"""Streaming behaviour: incremental delivery, failures before and after the
first byte, client disconnects, and compressed upstream responses."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from apx_harness import mock_reply, words

USER = [{"role": "user", "content": "stream please"}]


def scenario(name: str) -> dict[str, str]:
    return {"x-mock-scenario": name}


def no_cancelled(stats) -> bool:
    return stats["cancelled_streams"] == 0


# --- incremental delivery ----------------------------------------------------


def warm_up_chat(oai) -> None:
    """The SDK builds its chunk models on first use; keep that out of the timing."""
    for _ in oai.chat.completions.create(model="gpt-test", messages=USER, stream=True):
        pass


def test_chat_stream_arrives_incrementally(oai, mock):
    warm_up_chat(oai)
    start = time.monotonic()
    stream = oai.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("chunk-delay:300,words:5")
    )
    arrivals, text = [], ""
    for chunk in stream:
        arrivals.append(time.monotonic() - start)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    total = time.monotonic() - start
    assert text == "w1 w2 w3 w4 w5"
    # role, 5 words, finish: 7 chunks paced 300 ms apart by the upstream.
    assert len(arrivals) == 7
    assert arrivals[0] < 0.25, f"first chunk after {arrivals[0]:.3f}s: the stream was buffered"
    assert total > 1.0
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) > 0.15, f"chunks arrived in bursts: {gaps}"


def test_anthropic_stream_arrives_incrementally(claude, mock):
    # The SDK builds its event models on first use; keep that out of the timing.
    with claude.messages.stream(model="claude-test", max_tokens=8, messages=USER) as stream:
        stream.get_final_message()
    start = time.monotonic()
    arrivals, text = [], ""
    with claude.messages.stream(
        model="claude-test",
        max_tokens=64,
        messages=USER,
        extra_headers=scenario("chunk-delay:200,words:3"),
    ) as stream:
        for event in stream:
            arrivals.append(time.monotonic() - start)
            if event.type == "text":
                text += event.text
    total = time.monotonic() - start
    assert text == "w1 w2 w3"
    assert arrivals[0] < 0.25, f"first event after {arrivals[0]:.3f}s: the stream was buffered"
    assert total > 1.0
    assert stream.get_final_message().content[0].text == "w1 w2 w3"


def test_responses_stream_arrives_incrementally(oai, mock):
    # The SDK builds its event models on first use; keep that out of the timing.
    for _ in oai.responses.create(model="gpt-test", input="x", stream=True):
        pass
    start = time.monotonic()
    stream = oai.responses.create(
        model="gpt-test", input="x", stream=True, extra_headers=scenario("chunk-delay:150,words:3")
    )
    arrivals = []
    for event in stream:
        arrivals.append((time.monotonic() - start, event.type))
    assert arrivals[0][1] == "response.created"
    assert arrivals[0][0] < 0.25
    assert arrivals[-1][1] == "response.completed"
    assert arrivals[-1][0] > 1.0


# --- failures before the first byte are HTTP errors --------------------------


def test_stream_status_500_raises_at_create_openai(oai, mock):
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=scenario("status:500")
        )
    assert info.value.status_code == 500
    assert info.value.response.json()["error"]["type"] == "server_error"


def test_stream_status_500_raises_at_create_anthropic(claude, mock):
    with pytest.raises(anthropic.InternalServerError) as info:
        claude.messages.create(
            model="claude-test",
            max_tokens=8,
            messages=USER,
            stream=True,
            extra_headers=scenario("status:500"),
        )
    assert info.value.status_code == 500
    with pytest.raises(anthropic.RateLimitError):
        with claude.messages.stream(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("status:429")
        ):
            pytest.fail("the stream context was entered despite the 429")


def test_empty_stream_raises_at_create_openai(oai, mock):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=scenario("empty-stream")
        )
    assert info.value.status_code == 502
    error = info.value.response.json()["error"]
    assert error["type"] == "server_error"
    assert isinstance(error["message"], str) and error["message"]


def test_empty_stream_raises_at_create_anthropic(claude, mock):
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(
            model="claude-test",
            max_tokens=8,
            messages=USER,
            stream=True,
            extra_headers=scenario("empty-stream"),
        )
    assert info.value.status_code == 502
    body = info.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"


def test_stream_rate_limited_raises_at_create(oai, mock):
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=scenario("status:429")
        )
    assert info.value.response.headers["retry-after"] == "7"


def test_connection_cut_before_the_first_byte_is_a_502(oai, claude, mock):
    # drop-after:0: the upstream sends its head, then cuts the body at once.
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=scenario("drop-after:0")
        )
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["type"] == "server_error"
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, extra_headers=scenario("drop-after:0")
        )
    assert info.value.status_code == 502
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(
            model="claude-test",
            max_tokens=8,
            messages=USER,
            stream=True,
            extra_headers=scenario("drop-after:0"),
        )
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["type"] == "api_error"


def test_stall_before_the_first_byte_is_a_504(make_openai, timeout_gateway, mock):
    client = make_openai(gw=timeout_gateway)
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=scenario("stall-after:0")
        )
    elapsed = time.monotonic() - start
    assert info.value.status_code == 504
    assert 0.9 < elapsed < 2.5
    stats = mock.wait_for_stats(lambda s: s["cancelled_streams"] >= 1, 1.0)
    assert stats["cancelled_streams"] == 1


def test_slow_first_byte_is_a_504_openai(make_openai, timeout_gateway, mock):
    client = make_openai(gw=timeout_gateway)
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, extra_headers=scenario("slow-first-byte:1500")
        )
    elapsed = time.monotonic() - start
    assert info.value.status_code == 504
    assert info.value.response.json()["error"]["type"] == "server_error"
    assert 0.9 < elapsed < 2.5, f"gave up after {elapsed:.2f}s with first_byte_timeout = 1s"
    # Not only streams: a plain request gets the same 504.
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-test", messages=USER, extra_headers=scenario("slow-first-byte:1500")
        )
    assert info.value.status_code == 504


def test_slow_first_byte_is_a_504_anthropic(make_anthropic, timeout_gateway, mock):
    client = make_anthropic(gw=timeout_gateway)
    with pytest.raises(anthropic.GatewayTimeoutError) as info:
        client.messages.create(
            model="claude-test",
            max_tokens=8,
            messages=USER,
            stream=True,
            extra_headers=scenario("slow-first-byte:1500"),
        )
    assert info.value.status_code == 504
    body = info.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "timeout_error"


def test_slow_first_byte_within_the_limit_succeeds(make_openai, timeout_gateway, mock):
    client = make_openai(gw=timeout_gateway)
    stream = client.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("slow-first-byte:300")
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == mock_reply("gpt-test", "stream please")


def test_long_stream_is_complete(oai, claude, mock):
    expected = " ".join(f"w{i}" for i in range(1, 2001))
    stream = oai.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("words:2000")
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    with claude.messages.stream(
        model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("words:2000")
    ) as stream:
        assert stream.get_final_message().content[0].text == expected
    assert mock.stats()["completed_streams"] == 2


# --- failures after the first byte raise while iterating ---------------------


def test_mid_stream_drop_openai_chat(oai, mock):
    stream = oai.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("drop-after:2")
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    # The role chunk and the first word made it; then the injected error event.
    assert len(received) == 2
    assert received[1].choices[0].delta.content == "Hello "
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "server_error"
    assert info.value.message == info.value.body["message"]
    assert info.value.message


def test_mid_stream_drop_openai_responses(oai, mock):
    stream = oai.responses.create(
        model="gpt-test", input="x", stream=True, extra_headers=scenario("drop-after:3")
    )
    types = []
    with pytest.raises(openai.APIError) as info:
        for event in stream:
            types.append(event.type)
    assert types == ["response.created", "response.in_progress", "response.output_item.added"]
    assert info.value.body["type"] == "server_error"


def test_mid_stream_drop_openai_completions(oai, mock):
    stream = oai.completions.create(
        model="gpt-test", prompt="x", stream=True, extra_headers=scenario("drop-after:2")
    )
    texts = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            texts.append(chunk.choices[0].text)
    assert texts == ["Hello ", "from "]


def test_mid_stream_drop_anthropic(claude, mock):
    texts = []
    with pytest.raises(anthropic.APIError) as info:
        with claude.messages.stream(
            model="claude-test", max_tokens=64, messages=USER, extra_headers=scenario("drop-after:5")
        ) as stream:
            for text in stream.text_stream:
                texts.append(text)
    # message_start, block start, ping, two words; then the error event.
    assert texts == ["Hello ", "from "]
    assert isinstance(info.value, anthropic.APIStatusError)
    body = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_mid_stream_stall_openai(make_openai, timeout_gateway, mock):
    client = make_openai(gw=timeout_gateway)
    start = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("stall-after:2")
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    elapsed = time.monotonic() - start
    assert len(received) == 2
    assert info.value.body["type"] == "server_error"
    assert 1.8 < elapsed < 4.0, f"stalled stream ended after {elapsed:.2f}s (idle_timeout = 2s)"
    # The gateway gave up on the upstream request too.
    stats = mock.wait_for_stats(lambda s: s["cancelled_streams"] >= 1, 1.0)
    assert stats["cancelled_streams"] == 1
    assert stats["completed_streams"] == 0


def test_mid_stream_stall_anthropic(make_anthropic, timeout_gateway, mock):
    client = make_anthropic(gw=timeout_gateway)
    start = time.monotonic()
    events = []
    with pytest.raises(anthropic.APIError):
        stream = client.messages.create(
            model="claude-test",
            max_tokens=8,
            messages=USER,
            stream=True,
            extra_headers=scenario("stall-after:4"),
        )
        for event in stream:
            events.append(event.type)
    elapsed = time.monotonic() - start
    # ping is not surfaced by the SDK.
    assert events == ["message_start", "content_block_start", "content_block_delta"]
    assert 1.8 < elapsed < 4.0
    stats = mock.wait_for_stats(lambda s: s["cancelled_streams"] >= 1, 1.0)
    assert stats["cancelled_streams"] == 1


# --- the client goes away ------------------------------------------------------


def test_client_disconnect_cancels_upstream_openai(oai, mock):
    stream = oai.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("chunk-delay:200,words:50")
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    closed_at = time.monotonic()
    stream.close()
    stats = mock.wait_for_stats(lambda s: s["cancelled_streams"] >= 1, 1.0)
    waited = time.monotonic() - closed_at
    assert stats["cancelled_streams"] == 1, f"upstream still streaming {waited:.2f}s after close"
    assert stats["completed_streams"] == 0


def test_client_disconnect_cancels_upstream_anthropic(claude, mock):
    with claude.messages.stream(
        model="claude-test",
        max_tokens=64,
        messages=USER,
        extra_headers=scenario("chunk-delay:200,words:50"),
    ) as stream:
        first = next(iter(stream))
        assert first.type == "message_start"
    stats = mock.wait_for_stats(lambda s: s["cancelled_streams"] >= 1, 1.0)
    assert stats["cancelled_streams"] == 1
    assert stats["completed_streams"] == 0


# --- compressed upstream responses ---------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compressed_chat_completion(oai, mock, encoding):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-test", messages=USER, extra_headers=scenario(encoding)
    )
    assert raw.headers["content-encoding"] == encoding
    assert raw.parse().choices[0].message.content == mock_reply("gpt-test", "stream please")


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compressed_chat_stream(oai, mock, encoding):
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-test",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=scenario(encoding),
    ) as raw:
        assert raw.headers["content-encoding"] == encoding
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_reply("gpt-test", "stream please")
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == words(text)


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_chat_stream_without_usage_is_asked_uncompressed(oai, mock, encoding):
    """To log the tokens of a stream whose client asked no usage, the gateway
    asks for usage and removes that event on the way back: it asks the
    upstream for the stream uncompressed so it can."""
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario(encoding)
    ) as raw:
        assert "content-encoding" not in raw.headers
        chunks = list(raw.parse())
    assert mock.requests()[0].header("accept-encoding") == "identity"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == mock_reply("gpt-test", "stream please")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compressed_anthropic(claude, mock, encoding):
    raw = claude.messages.with_raw_response.create(
        model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario(encoding)
    )
    assert raw.headers["content-encoding"] == encoding
    assert raw.parse().content[0].text == mock_reply("claude-test", "stream please")
    with claude.messages.stream(
        model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario(encoding)
    ) as stream:
        assert stream.response.headers["content-encoding"] == encoding
        text = "".join(stream.text_stream)
    assert text == mock_reply("claude-test", "stream please")


def test_compressed_embeddings(oai, mock):
    result = oai.embeddings.create(
        model="gpt-test", input="zip me", dimensions=12, extra_headers=scenario("gzip")
    )
    assert len(result.data[0].embedding) == 12


def test_compressed_stream_cut_mid_way_raises(oai, mock):
    stream = oai.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, extra_headers=scenario("gzip,drop-after:3")
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    # The connection is aborted (an SSE error event cannot be injected into a
    # compressed body); what was relayed before may or may not all be read.
    assert 1 <= len(received) <= 3
    assert received[0].choices[0].delta.role == "assistant"
