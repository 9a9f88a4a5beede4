"""Chat completions through the gateway with the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from apx_harness import assert_upstream_credentials, mock_reply, words

USER = [{"role": "user", "content": "hi there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_chat_completion_text(oai, mock, client_key, second_key):
    completion = oai.chat.completions.create(model="gpt-test", messages=USER)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello from gpt-test! You said: hi there"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == 9

    [rec] = mock.requests()
    assert rec.method == "POST"
    assert rec.path == "/v1/chat/completions"
    assert rec.json()["model"] == "gpt-test"
    assert rec.json()["messages"] == USER
    assert_upstream_credentials(rec, "openai", [client_key, second_key])


def test_chat_completion_unicode_round_trip(oai, mock):
    text = "héllo wörld ✓ 你好 \"quoted\" \\ back"
    completion = oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": text}]
    )
    assert completion.choices[0].message.content == mock_reply("gpt-test", text)
    assert mock.requests()[0].json()["messages"][0]["content"] == text


def test_second_key_is_accepted(make_openai, mock, second_key, client_key):
    client = make_openai(key=second_key)
    completion = client.chat.completions.create(model="gpt-test", messages=USER)
    assert completion.choices[0].message.content == mock_reply("gpt-test", "hi there")
    [rec] = mock.requests()
    assert_upstream_credentials(rec, "openai", [client_key, second_key])


def test_upstream_model_rename(oai, mock):
    completion = oai.chat.completions.create(model="gpt-renamed", messages=USER)
    # The mock answers as the model it was asked for: the upstream name.
    assert completion.choices[0].message.content == mock_reply("gpt-upstream-name", "hi there")
    [rec] = mock.requests()
    body = rec.json()
    assert body["model"] == "gpt-upstream-name"
    assert body["messages"] == USER
    assert "gpt-renamed" not in rec.body


def test_unknown_body_fields_pass_through(oai, mock):
    vendor = {"trace": [1, 2, 3], "label": "é", "nested": {"deep": None}}
    oai.chat.completions.create(
        model="gpt-renamed",
        messages=USER,
        temperature=0.25,
        extra_body={"x_vendor_options": vendor, "logit_bias": {"50256": -100}},
    )
    [rec] = mock.requests()
    body = rec.json()
    assert body["x_vendor_options"] == vendor
    assert body["logit_bias"] == {"50256": -100}
    assert body["temperature"] == 0.25
    assert body["model"] == "gpt-upstream-name"


def _raw_post(gateway, key, path, content: bytes, headers=None):
    all_headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    all_headers.update(headers or {})
    with httpx.Client(base_url=gateway.url, timeout=10.0, trust_env=False) as client:
        return client.post(path, content=content, headers=all_headers)


def test_body_is_forwarded_byte_for_byte(gateway, mock, client_key):
    # Odd whitespace, key order, number spellings and escapes must survive.
    body = (
        b'{ "messages" : [ {"role":"user","content":"caf\\u00e9  \\"x\\""} ],\n'
        b'  "x_vendor": {"keep": [1, 2.50, 1e3, "\\u00e9"], "model": "inner"},'
        b'\t"temperature": 0.70 ,  "model":"gpt-test" }'
    )
    response = _raw_post(gateway, client_key, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    [rec] = mock.requests()
    assert rec.body.encode() == body


def test_renamed_body_changes_only_the_model_value(gateway, mock, client_key):
    body = (
        b'{ "model" :  "gpt-renamed" , "messages" : [ {"role":"user","content":"hi"} ],'
        b' "x_vendor": {"model": "gpt-renamed", "n": 1.000} }'
    )
    response = _raw_post(gateway, client_key, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == mock_reply(
        "gpt-upstream-name", "hi"
    )
    [rec] = mock.requests()
    assert rec.body.encode() == body.replace(b'"gpt-renamed" ,', b'"gpt-upstream-name" ,', 1)


def test_custom_headers_and_query_are_forwarded(oai, mock):
    oai.chat.completions.create(
        model="gpt-test",
        messages=USER,
        extra_headers={"x-trace-id": "trace-123", "OpenAI-Beta": "assistants=v2"},
        extra_query={"api-version": "2024-10-21"},
    )
    [rec] = mock.requests()
    assert rec.path == "/v1/chat/completions?api-version=2024-10-21"
    assert rec.header_values("x-trace-id") == ["trace-123"]
    assert rec.header_values("openai-beta") == ["assistants=v2"]


def test_upstream_request_id_reaches_the_client(oai, mock):
    raw = oai.chat.completions.with_raw_response.create(model="gpt-test", messages=USER)
    assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers["x-request-id"])
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parse().choices[0].message.content == mock_reply("gpt-test", "hi there")


def test_chat_tool_call(oai, mock):
    completion = oai.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"echo": "Weather in Paris?"}
    assert mock.requests()[0].json()["tools"] == [WEATHER_TOOL]


def test_chat_stream_text(oai, mock):
    stream = oai.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    chunks = list(stream)

    expected = mock_reply("gpt-test", "hi there")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    # Role chunk, one chunk per word, the finish chunk.
    assert len(chunks) == 1 + words(expected) + 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert mock.stats()["completed_streams"] == 1
    # The gateway asked the upstream for usage (for its log) and kept the
    # extra usage chunk from this client, which did not ask for it.
    assert mock.requests()[0].json()["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_chat_stream_include_usage(oai, mock):
    stream = oai.chat.completions.create(
        model="gpt-test",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 2
    assert usage_chunk.usage.completion_tokens == 7
    assert usage_chunk.usage.total_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_reply("gpt-test", "hi there")
    assert mock.requests()[0].json()["stream_options"] == {"include_usage": True}


def test_chat_stream_tool_call(oai, mock):
    stream = oai.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    names, arguments, ids, finish = [], "", set(), None
    for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                names.append(call.function.name)
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        finish = choice.finish_reason or finish
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert json.loads(arguments) == {"echo": "Weather in Oslo?"}
    assert finish == "tool_calls"


def test_chat_stream_helper_final_completion(oai, mock):
    with oai.chat.completions.stream(model="gpt-renamed", messages=USER) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    expected = mock_reply("gpt-upstream-name", "hi there")
    assert "".join(deltas) == expected
    assert final.choices[0].message.content == expected
    assert final.choices[0].finish_reason == "stop"


def test_async_client_stream(gateway, client_key, mock):
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=gateway.openai_base_url, api_key=client_key, max_retries=0, timeout=10.0
        ) as client:
            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "user", "content": "async please"}],
                stream=True,
            )
            return [c.choices[0].delta.content or "" async for c in stream if c.choices]

    pieces = asyncio.run(run())
    assert "".join(pieces) == mock_reply("gpt-test", "async please")


def test_parallel_requests_do_not_mix(oai, mock):
    prompts = [f"request number {i}" for i in range(24)]

    def ask(prompt: str) -> str:
        model = "gpt-test" if prompt.endswith(("0", "2", "4", "6", "8")) else "gpt-renamed"
        completion = oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}]
        )
        return completion.choices[0].message.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, prompts))
    for prompt, answer in zip(prompts, answers):
        model = "gpt-test" if prompt[-1] in "02468" else "gpt-upstream-name"
        assert answer == mock_reply(model, prompt)
    assert len(mock.requests()) == len(prompts)
