"""Session fixtures: the mock upstream, the gateways (one per config) and SDK
clients pointed at them.

Binaries default to target/debug/apx and target/debug/apx-mock-upstream under
the repository root; APX_BIN and APX_MOCK_BIN override them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import anthropic
import openai
import pytest

from apx_harness import (
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    Gateway,
    HarnessError,
    MockUpstream,
    ModelSpec,
    ProviderSpec,
    binary_path,
    dead_processes,
    free_port,
    new_client_key,
)

# Generous for a local mock, short enough that a hang fails fast.
SDK_TIMEOUT = 10.0

# Models of the default gateway, in config order.
DEFAULT_MODELS = [
    ModelSpec("gpt-test", "mock-openai"),
    ModelSpec("gpt-renamed", "mock-openai", "gpt-upstream-name"),
    ModelSpec("claude-test", "mock-anthropic"),
    ModelSpec("claude-renamed", "mock-anthropic", "claude-upstream-name"),
]

# Limits every gateway of the suite shares: short, so failures show quickly,
# and a short shutdown grace so teardown does not wait on open streams.
BASE_LIMITS = {
    "connect_timeout": "2s",
    "first_byte_timeout": "5s",
    "idle_timeout": "5s",
    "shutdown_grace": "1s",
}

# Request capture of the gateways under test. User space by default: loading
# the eBPF programs takes seconds per gateway and the suite is about the HTTP
# contract. APX_TEST_CAPTURE=auto|ebpf|userspace|off runs it with another mode.
CAPTURE = os.environ.get("APX_TEST_CAPTURE", "userspace")

# What the gateway's environment holds; the configs only say ${NAME}.
GATEWAY_ENV = {
    "MOCK_OPENAI_KEY": UPSTREAM_OPENAI_KEY,
    "MOCK_ANTHROPIC_KEY": UPSTREAM_ANTHROPIC_KEY,
}


@pytest.fixture(autouse=True)
def processes_alive():
    """Fails a test at once, with the process's stderr, when the mock or a
    gateway died (crashed, or was killed from outside) before it."""
    dead = dead_processes()
    if dead:
        pytest.fail("\n\n".join(dead), pytrace=False)
    yield


@pytest.fixture(scope="session")
def binaries() -> tuple[Path, Path]:
    try:
        return (
            binary_path("APX_BIN", "target/debug/apx"),
            binary_path("APX_MOCK_BIN", "target/debug/apx-mock-upstream"),
        )
    except HarnessError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("apx")


@pytest.fixture(scope="session")
def client_key() -> str:
    return new_client_key()


@pytest.fixture(scope="session")
def second_key() -> str:
    return new_client_key()


@pytest.fixture(scope="session")
def mock_upstream(binaries, workdir) -> Iterator[MockUpstream]:
    try:
        mock = MockUpstream(binaries[1], workdir / "mock-upstream.stderr.log")
    except HarnessError as err:
        pytest.fail(str(err), pytrace=False)
    yield mock
    mock.stop()


@pytest.fixture
def mock(mock_upstream: MockUpstream) -> MockUpstream:
    """The mock upstream with no recorded requests and zeroed counters."""
    mock_upstream.reset()
    return mock_upstream


def mock_providers(mock: MockUpstream, openai_key: str, anthropic_key: str) -> list[ProviderSpec]:
    return [
        ProviderSpec("mock-openai", "openai", mock.openai_base_url, openai_key),
        ProviderSpec("mock-anthropic", "anthropic", mock.anthropic_base_url, anthropic_key),
    ]


def start_gateway(binaries, workdir, name, providers, models, keys, limits) -> Gateway:
    try:
        return Gateway(
            binaries[0],
            workdir,
            name,
            providers=providers,
            models=models,
            keys=keys,
            limits={**BASE_LIMITS, **limits},
            env=GATEWAY_ENV,
            capture=CAPTURE,
        )
    except HarnessError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def gateway(binaries, workdir, mock_upstream, client_key, second_key) -> Iterator[Gateway]:
    """The gateway most tests use: both providers, four models, two keys."""
    gw = start_gateway(
        binaries,
        workdir,
        "default",
        mock_providers(mock_upstream, "${MOCK_OPENAI_KEY}", "${MOCK_ANTHROPIC_KEY}"),
        DEFAULT_MODELS,
        {"ci": client_key, "second": second_key},
        {},
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def timeout_gateway(binaries, workdir, mock_upstream, client_key) -> Iterator[Gateway]:
    """Short first-byte (1 s) and idle (2 s) timeouts."""
    gw = start_gateway(
        binaries,
        workdir,
        "timeouts",
        mock_providers(mock_upstream, "${MOCK_OPENAI_KEY}", "${MOCK_ANTHROPIC_KEY}"),
        DEFAULT_MODELS,
        {"ci": client_key},
        {"first_byte_timeout": "1s", "idle_timeout": "2s"},
    )
    yield gw
    gw.stop()


LIMITS_MAX_BODY = 64 * 1024
LIMITS_MAX_STREAMS = 2


@pytest.fixture(scope="session")
def limits_gateway(binaries, workdir, mock_upstream, client_key) -> Iterator[Gateway]:
    """A 64 KiB request body limit and at most 2 concurrent streams."""
    gw = start_gateway(
        binaries,
        workdir,
        "limits",
        mock_providers(mock_upstream, "${MOCK_OPENAI_KEY}", "${MOCK_ANTHROPIC_KEY}"),
        DEFAULT_MODELS,
        {"ci": client_key},
        {"max_request_body": "64KiB", "max_concurrent_streams": LIMITS_MAX_STREAMS},
    )
    yield gw
    gw.stop()


WRONG_OPENAI_KEY = "sk-wrong-openai-upstream-key-0123456789"
WRONG_ANTHROPIC_KEY = "sk-ant-wrong-upstream-key-0123456789"


@pytest.fixture(scope="session")
def badkey_gateway(binaries, workdir, mock_upstream, client_key) -> Iterator[Gateway]:
    """Providers whose upstream credential the mock rejects, and one whose
    upstream is not listening at all."""
    dead_port = free_port()
    providers = [
        ProviderSpec("wrong-openai", "openai", mock_upstream.openai_base_url, WRONG_OPENAI_KEY),
        ProviderSpec(
            "wrong-anthropic", "anthropic", mock_upstream.anthropic_base_url, WRONG_ANTHROPIC_KEY
        ),
        ProviderSpec("dead-openai", "openai", f"http://127.0.0.1:{dead_port}/v1", "sk-unused"),
    ]
    models = [
        ModelSpec("gpt-badkey", "wrong-openai"),
        ModelSpec("claude-badkey", "wrong-anthropic"),
        ModelSpec("gpt-dead", "dead-openai"),
    ]
    gw = start_gateway(
        binaries, workdir, "badkey", providers, models, {"ci": client_key}, {}
    )
    yield gw
    gw.stop()


OpenAIFactory = Callable[..., openai.OpenAI]
AnthropicFactory = Callable[..., anthropic.Anthropic]


@pytest.fixture
def make_openai(gateway, client_key) -> Iterator[OpenAIFactory]:
    """Builds OpenAI SDK clients (closed after the test); no retries."""
    made: list = []

    def make(gw: Gateway | None = None, key: str | None = None, **kwargs) -> openai.OpenAI:
        gw = gw or gateway
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", SDK_TIMEOUT)
        client = openai.OpenAI(base_url=gw.openai_base_url, api_key=key or client_key, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def make_anthropic(gateway, client_key) -> Iterator[AnthropicFactory]:
    """Builds Anthropic SDK clients (closed after the test); no retries.
    Pass auth_token=... to send the key as a bearer token instead of x-api-key."""
    made: list = []

    def make(gw: Gateway | None = None, key: str | None = None, **kwargs) -> anthropic.Anthropic:
        gw = gw or gateway
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", SDK_TIMEOUT)
        if "auth_token" not in kwargs:
            kwargs["api_key"] = key or client_key
        client = anthropic.Anthropic(base_url=gw.anthropic_base_url, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def oai(make_openai) -> openai.OpenAI:
    """An OpenAI SDK client for the default gateway with the CI key."""
    return make_openai()


@pytest.fixture
def claude(make_anthropic) -> anthropic.Anthropic:
    """An Anthropic SDK client for the default gateway with the CI key (x-api-key)."""
    return make_anthropic()
