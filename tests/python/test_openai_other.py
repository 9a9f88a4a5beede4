"""Embeddings, models, the Responses API and legacy completions through the
gateway with the official OpenAI SDK (plus the Anthropic model listing)."""

from __future__ import annotations

import json
import math
import struct

import openai
import pytest

from apx_harness import assert_upstream_credentials, mock_reply, words

CONFIGURED_MODELS = ["gpt-test", "gpt-renamed", "claude-test", "claude-renamed"]


def as_f32(values) -> list[float]:
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]


# --- embeddings -------------------------------------------------------------


def test_embeddings_float(oai, mock, client_key):
    result = oai.embeddings.create(model="gpt-test", input="hello world", encoding_format="float")
    assert result.object == "list"
    assert result.model == "gpt-test"
    [item] = result.data
    assert item.index == 0
    assert item.object == "embedding"
    assert len(item.embedding) == 8  # the mock's default dimensions
    assert math.isclose(sum(x * x for x in item.embedding), 1.0, abs_tol=1e-5)
    assert result.usage.prompt_tokens == 2
    assert result.usage.total_tokens == 2
    [rec] = mock.requests()
    assert rec.path == "/v1/embeddings"
    assert rec.json()["encoding_format"] == "float"
    assert_upstream_credentials(rec, "openai", [client_key])


def test_embeddings_base64_default_matches_float(oai, mock):
    as_float = oai.embeddings.create(model="gpt-test", input="hello world", encoding_format="float")
    default = oai.embeddings.create(model="gpt-test", input="hello world")
    # The SDK asks for base64 by default and decodes it to floats itself.
    assert mock.requests()[1].json()["encoding_format"] == "base64"
    assert len(default.data[0].embedding) == 8
    assert as_f32(default.data[0].embedding) == as_f32(as_float.data[0].embedding)


def test_embeddings_dimensions_and_batches(oai, mock):
    texts = ["one", "two words", "three little words"]
    result = oai.embeddings.create(model="gpt-renamed", input=texts, dimensions=16)
    assert [item.index for item in result.data] == [0, 1, 2]
    assert [len(item.embedding) for item in result.data] == [16, 16, 16]
    assert result.model == "gpt-upstream-name"
    assert result.usage.prompt_tokens == 6
    body = mock.requests()[0].json()
    assert body["dimensions"] == 16
    assert body["input"] == texts
    assert body["model"] == "gpt-upstream-name"
    # Different texts, different vectors.
    assert len({tuple(item.embedding) for item in result.data}) == 3


# --- models -----------------------------------------------------------------


def test_models_list_is_exactly_the_configured_models(oai, mock):
    page = oai.models.list()
    assert [m.id for m in page.data] == CONFIGURED_MODELS
    assert [m.owned_by for m in page.data] == [
        "mock-openai",
        "mock-openai",
        "mock-anthropic",
        "mock-anthropic",
    ]
    assert {m.object for m in page.data} == {"model"}
    # Served by the gateway itself: the upstream's own list is not consulted.
    assert mock.requests() == []


def test_models_retrieve(oai, mock):
    model = oai.models.retrieve("gpt-test")
    assert model.id == "gpt-test"
    assert model.object == "model"
    assert model.owned_by == "mock-openai"
    renamed = oai.models.retrieve("claude-renamed")
    assert renamed.id == "claude-renamed"
    assert renamed.owned_by == "mock-anthropic"
    assert mock.requests() == []


def test_models_retrieve_unknown(oai, mock):
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gpt-nope")
    assert info.value.status_code == 404
    error = info.value.response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "gpt-nope" in error["message"]
    assert mock.requests() == []


def test_anthropic_models_list(claude, mock):
    page = claude.models.list()
    assert [m.id for m in page.data] == CONFIGURED_MODELS
    assert [m.display_name for m in page.data] == CONFIGURED_MODELS
    assert {m.type for m in page.data} == {"model"}
    assert page.has_more is False
    assert page.first_id == "gpt-test"
    assert page.last_id == "claude-renamed"
    model = claude.models.retrieve("claude-test")
    assert model.id == "claude-test"
    assert model.type == "model"
    assert mock.requests() == []


# --- Responses API ----------------------------------------------------------


def test_responses_create(oai, mock, client_key):
    response = oai.responses.create(
        model="gpt-test", input="tell me something", instructions="be brief"
    )
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-test"
    expected = mock_reply("gpt-test", "tell me something")
    assert response.output_text == expected
    assert response.usage.input_tokens == 5
    assert response.usage.output_tokens == words(expected)
    [rec] = mock.requests()
    assert rec.path == "/v1/responses"
    assert rec.json()["instructions"] == "be brief"
    assert_upstream_credentials(rec, "openai", [client_key])


def test_responses_stream_events(oai, mock):
    stream = oai.responses.create(model="gpt-renamed", input="stream it", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    expected = mock_reply("gpt-upstream-name", "stream it")
    n = words(expected)
    assert types == (
        ["response.created", "response.in_progress", "response.output_item.added",
         "response.content_part.added"]
        + ["response.output_text.delta"] * n
        + ["response.output_text.done", "response.content_part.done",
           "response.output_item.done", "response.completed"]
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == expected
    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.output_text == expected
    assert completed.usage.output_tokens == n


def test_responses_stream_helper(oai, mock):
    with oai.responses.stream(model="gpt-test", input="helper") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == mock_reply("gpt-test", "helper")
    assert final.output_text == text


def test_responses_function_call(oai, mock):
    tool = {
        "type": "function",
        "name": "lookup",
        "description": "Look something up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    response = oai.responses.create(model="gpt-test", input="find cats", tools=[tool])
    [item] = response.output
    assert item.type == "function_call"
    assert item.name == "lookup"
    assert json.loads(item.arguments) == {"echo": "find cats"}

    stream = oai.responses.create(model="gpt-test", input="find dogs", tools=[tool], stream=True)
    events = list(stream)
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"echo": "find dogs"}
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].name == "lookup"


# --- legacy completions -----------------------------------------------------


def test_completions_create(oai, mock):
    completion = oai.completions.create(model="gpt-test", prompt="Say this", max_tokens=16)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == mock_reply("gpt-test", "Say this")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 2
    assert mock.requests()[0].path == "/v1/completions"


def test_completions_stream(oai, mock):
    stream = oai.completions.create(
        model="gpt-renamed",
        prompt="Stream this",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    expected = mock_reply("gpt-upstream-name", "Stream this")
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == words(expected)


def test_completions_stream_without_usage_gets_none(oai, mock):
    """The gateway asks for usage for its log; the client, which did not,
    gets the stream without the usage chunk."""
    stream = oai.completions.create(model="gpt-renamed", prompt="Stream this", stream=True)
    chunks = list(stream)
    expected = mock_reply("gpt-upstream-name", "Stream this")
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert all(c.choices and c.usage is None for c in chunks)
    assert mock.requests()[0].json()["stream_options"] == {"include_usage": True}
