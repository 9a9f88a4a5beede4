"""Errors: each SDK must raise its own exception class, with the status and
the error body shape of its API family."""

from __future__ import annotations

import re

import anthropic
import httpx
import openai
import pytest

from apx_harness import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY
from conftest import WRONG_ANTHROPIC_KEY, WRONG_OPENAI_KEY

USER = [{"role": "user", "content": "hi"}]


def scenario(name: str) -> dict[str, str]:
    return {"x-mock-scenario": name}


def openai_error(exc: openai.APIStatusError) -> dict:
    """The `error` object of an OpenAI-shaped error response, checked for shape."""
    body = exc.response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    return error


def anthropic_error(exc: anthropic.APIStatusError) -> dict:
    """The `error` object of an Anthropic-shaped error response, checked for shape."""
    body = exc.response.json()
    assert body["type"] == "error", body
    error = body["error"]
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def raw_client(gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=10.0, trust_env=False)


# --- requests the gateway refuses itself -------------------------------------


def test_unknown_model_openai(oai, mock):
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-unknown", messages=USER)
    assert info.value.status_code == 404
    error = openai_error(info.value)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "gpt-unknown" in error["message"]
    assert mock.requests() == []


def test_unknown_model_anthropic(claude, mock):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="claude-unknown", max_tokens=8, messages=USER)
    assert info.value.status_code == 404
    error = anthropic_error(info.value)
    assert error["type"] == "not_found_error"
    assert "claude-unknown" in error["message"]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="claude-unknown", messages=USER)
    assert mock.requests() == []


@pytest.mark.parametrize(
    "body",
    [b'{"model": "gpt-test", "messages": [', b"not json at all", b""],
    ids=["truncated", "garbage", "empty"],
)
def test_malformed_json_openai(gateway, client_key, mock, body):
    with raw_client(gateway) as client:
        response = client.post(
            "/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {client_key}", "content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert isinstance(error["message"], str) and error["message"]
    assert mock.requests() == []


def test_malformed_json_anthropic(gateway, client_key, mock):
    with raw_client(gateway) as client:
        response = client.post(
            "/v1/messages",
            content=b'{"model": "claude-test", "max_tokens": 5,',
            headers={
                "x-api-key": client_key,
                "anthropic-version": "2023-06-01",
                "content-type": "application/json",
            },
        )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert mock.requests() == []


def test_malformed_json_through_the_sdk_http_client(oai, client_key, mock):
    # The SDK's own HTTP client, with a body the SDK would never produce.
    response = oai._client.post(
        f"{oai.base_url}chat/completions",
        content=b"{]",
        headers={"authorization": f"Bearer {client_key}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert mock.requests() == []


def test_malformed_json_raises_bad_request_in_both_sdks(oai, claude, mock):
    json_header = {"headers": {"Content-Type": "application/json"}}
    with pytest.raises(openai.BadRequestError) as info:
        oai.post("/chat/completions", content=b'{"model": "gpt-test",', cast_to=object, options=json_header)
    assert info.value.status_code == 400
    assert openai_error(info.value)["code"] == "invalid_json"
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.post("/v1/messages", content=b"[1, 2", cast_to=object, options=json_header)
    assert info.value.status_code == 400
    assert anthropic_error(info.value)["type"] == "invalid_request_error"
    assert mock.requests() == []


def test_missing_model_openai(oai, mock):
    with pytest.raises(openai.BadRequestError) as info:
        oai.post("/chat/completions", body={"messages": USER}, cast_to=object)
    assert info.value.status_code == 400
    error = openai_error(info.value)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "missing_model"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="", messages=USER)
    assert mock.requests() == []


def test_missing_model_anthropic(claude, mock):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.post("/v1/messages", body={"max_tokens": 8, "messages": USER}, cast_to=object)
    assert info.value.status_code == 400
    assert anthropic_error(info.value)["type"] == "invalid_request_error"
    assert mock.requests() == []


def test_model_of_the_other_api_family(oai, claude, mock):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="claude-test", messages=USER)
    assert openai_error(info.value)["code"] == "unsupported_endpoint_for_model"
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="gpt-test", max_tokens=8, messages=USER)
    assert anthropic_error(info.value)["type"] == "invalid_request_error"
    assert mock.requests() == []


def test_unknown_endpoint_and_wrong_method(gateway, client_key, mock):
    headers = {"authorization": f"Bearer {client_key}"}
    with raw_client(gateway) as client:
        unknown = client.get("/v1/does-not-exist", headers=headers)
        wrong_method = client.get("/v1/chat/completions", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert mock.requests() == []


# --- upstream errors keep their status ---------------------------------------


def test_upstream_429_openai(oai, mock):
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, extra_headers=scenario("status:429")
        )
    exc = info.value
    assert exc.status_code == 429
    assert exc.response.headers["retry-after"] == "7"
    assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert exc.response.headers["x-ratelimit-reset-requests"] == "7s"
    assert re.fullmatch(r"req_[0-9a-f]{32}", exc.response.headers["x-request-id"])
    error = openai_error(exc)
    assert error["type"] == "rate_limit_exceeded"
    assert error["message"] == (
        "Rate limit reached for requests per min (RPM): Limit 60, Used 60, Requested 1. "
        "Please try again in 7s."
    )
    assert len(mock.requests()) == 1  # max_retries=0: no retry


def test_upstream_429_anthropic(claude, mock):
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("status:429")
        )
    exc = info.value
    assert exc.status_code == 429
    assert exc.response.headers["retry-after"] == "7"
    assert exc.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert re.fullmatch(r"req_011C[0-9A-Za-z]{22}", exc.request_id or "")
    error = anthropic_error(exc)
    assert error["type"] == "rate_limit_error"
    assert error["message"] == "Number of request tokens has exceeded your per-minute rate limit"


@pytest.mark.parametrize("endpoint", ["embeddings", "responses", "completions", "responses-stream"])
def test_upstream_statuses_on_every_openai_endpoint(oai, mock, endpoint):
    calls = {
        "embeddings": lambda h: oai.embeddings.create(model="gpt-test", input="x", extra_headers=h),
        "responses": lambda h: oai.responses.create(model="gpt-test", input="x", extra_headers=h),
        "completions": lambda h: oai.completions.create(model="gpt-test", prompt="x", extra_headers=h),
        "responses-stream": lambda h: oai.responses.create(
            model="gpt-test", input="x", stream=True, extra_headers=h
        ),
    }
    with pytest.raises(openai.RateLimitError) as info:
        calls[endpoint](scenario("status:429"))
    assert info.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.InternalServerError) as info:
        calls[endpoint](scenario("status:503"))
    assert info.value.status_code == 503
    assert openai_error(info.value)["message"] == (
        "The engine is currently overloaded, please try again later."
    )


def test_upstream_status_on_count_tokens(claude, mock):
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.count_tokens(
            model="claude-test", messages=USER, extra_headers=scenario("status:429")
        )
    assert info.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.count_tokens(
            model="claude-test", messages=USER, extra_headers=scenario("status:529")
        )


def test_upstream_500_openai(oai, mock):
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, extra_headers=scenario("status:500")
        )
    assert info.value.status_code == 500
    error = openai_error(info.value)
    assert error["type"] == "server_error"
    assert error["message"] == (
        "The server had an error while processing your request. Sorry about that!"
    )


def test_upstream_500_anthropic(claude, mock):
    with pytest.raises(anthropic.InternalServerError) as info:
        claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("status:500")
        )
    assert info.value.status_code == 500
    error = anthropic_error(info.value)
    assert error["type"] == "api_error"
    assert error["message"] == "Internal server error"


def test_upstream_529_anthropic_is_overloaded(claude, mock):
    with pytest.raises(anthropic.OverloadedError) as info:
        claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("status:529")
        )
    # anthropic 2.10 maps 529 to OverloadedError, an InternalServerError subclass.
    assert isinstance(info.value, anthropic.InternalServerError)
    assert info.value.status_code == 529
    error = anthropic_error(info.value)
    assert error["type"] == "overloaded_error"
    assert error["message"] == "Overloaded"


def test_upstream_html_502_openai(oai, mock):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=USER, extra_headers=scenario("html-error:502")
        )
    assert info.value.status_code == 502
    assert isinstance(info.value, openai.InternalServerError)
    assert info.value.response.headers["content-type"] == "application/json"
    error = openai_error(info.value)
    assert error["type"] == "server_error"
    assert "502" in error["message"]


def test_upstream_html_502_anthropic(claude, mock):
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("html-error:502")
        )
    assert info.value.status_code == 502
    assert isinstance(info.value, anthropic.InternalServerError)
    assert info.value.response.headers["content-type"] == "application/json"
    error = anthropic_error(info.value)
    assert error["type"] == "api_error"
    assert "502" in error["message"]


def test_upstream_html_503_anthropic(claude, mock):
    with pytest.raises(anthropic.ServiceUnavailableError) as info:
        claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("html-error:503")
        )
    assert info.value.status_code == 503
    assert anthropic_error(info.value)["type"] == "api_error"


def test_upstream_400_passes_through(oai, mock):
    # The mock rejects an embeddings call without `input`; its error is relayed.
    with pytest.raises(openai.BadRequestError) as info:
        oai.post("/embeddings", body={"model": "gpt-test"}, cast_to=object)
    error = openai_error(info.value)
    assert error["code"] == "missing_required_parameter"
    assert error["param"] == "input"
    assert error["message"] == "Missing required parameter: 'input'."


def test_upstream_400_passes_through_anthropic(claude, mock):
    # The mock refuses an unknown scenario with an invalid_request_error.
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="claude-test", max_tokens=8, messages=USER, extra_headers=scenario("bogus")
        )
    error = anthropic_error(info.value)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("unknown x-mock-scenario entry 'bogus'")


# --- the gateway's own upstream credential is wrong --------------------------


def assert_no_upstream_secret(exc) -> None:
    text = exc.response.text + "\n" + "\n".join(
        f"{k}: {v}" for k, v in exc.response.headers.items()
    )
    for secret in (WRONG_OPENAI_KEY, WRONG_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, UPSTREAM_ANTHROPIC_KEY):
        assert secret not in text


def test_upstream_401_openai_is_a_502(make_openai, badkey_gateway, mock):
    client = make_openai(gw=badkey_gateway)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-badkey", messages=USER)
    exc = info.value
    assert not isinstance(exc, openai.AuthenticationError)
    assert exc.status_code == 502
    error = openai_error(exc)
    assert "credential" in error["message"]
    assert "wrong-openai" in error["message"]
    assert_no_upstream_secret(exc)
    # The request did reach the upstream, with the configured (wrong) key.
    [rec] = mock.requests()
    assert rec.header_values("authorization") == [f"Bearer {WRONG_OPENAI_KEY}"]


def test_upstream_401_anthropic_is_a_502(make_anthropic, badkey_gateway, mock):
    client = make_anthropic(gw=badkey_gateway)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-badkey", max_tokens=8, messages=USER)
    exc = info.value
    assert not isinstance(exc, anthropic.AuthenticationError)
    assert exc.status_code == 502
    error = anthropic_error(exc)
    assert "credential" in error["message"]
    assert "wrong-anthropic" in error["message"]
    assert_no_upstream_secret(exc)
    [rec] = mock.requests()
    assert rec.header_values("x-api-key") == [WRONG_ANTHROPIC_KEY]


def test_upstream_401_on_a_stream_is_a_502(make_openai, badkey_gateway, mock):
    client = make_openai(gw=badkey_gateway)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-badkey", messages=USER, stream=True)
    assert info.value.status_code == 502
    assert "credential" in openai_error(info.value)["message"]
    assert_no_upstream_secret(info.value)


def test_unreachable_upstream_is_a_502(make_openai, badkey_gateway):
    client = make_openai(gw=badkey_gateway)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-dead", messages=USER)
    assert info.value.status_code == 502
    error = openai_error(info.value)
    assert error["type"] == "server_error"
    assert "dead-openai" in error["message"]
    assert "sk-unused" not in info.value.response.text
