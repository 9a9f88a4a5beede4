"""Process management for the SDK compatibility suite.

Starts `apx-mock-upstream` and `apx serve` as child processes, writes gateway
configs, reads the mock's recorded requests and counters, and stops
everything again. Kept apart from conftest.py so test modules can import the
helpers and constants directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]

# The credentials the mock upstream requires by default.
UPSTREAM_OPENAI_KEY = "sk-upstream-openai-test"
UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream-test"

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# Loopback traffic must never go through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    for _host in ("127.0.0.1", "localhost"):
        if _host not in _hosts:
            _hosts.append(_host)
    os.environ[_var] = ",".join(_hosts)


class HarnessError(RuntimeError):
    """A process of the suite could not be started."""


# Every process the suite started and has not stopped, to notice one dying.
RUNNING: list["MockUpstream | Gateway"] = []


def dead_processes() -> list[str]:
    """What each started process that exited on its own said, if any did."""
    reports = []
    for owner in RUNNING:
        status = owner.proc.poll() if owner.proc is not None else None
        if status is not None:
            how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
            reports.append(
                f"{owner.describe()} is no longer running ({how}); stderr:\n"
                + owner.stderr_text()[-4000:]
            )
    return reports


def binary_path(env_var: str, default_relative: str) -> Path:
    """The binary named by `env_var`, else `default_relative` under the repo."""
    configured = os.environ.get(env_var)
    path = Path(configured) if configured else REPO_ROOT / default_relative
    if not path.is_file() or not os.access(path, os.X_OK):
        raise HarnessError(
            f"{path} is missing or not executable. Build it first with "
            f"`cargo build` (from {REPO_ROOT}), or point {env_var} at the binary."
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_client_key() -> str:
    """A random key in the shape `apx keys create` prints."""
    return "apx-test-" + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


@dataclass
class Recorded:
    """One request as the mock upstream received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: str

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def everything(self) -> str:
        """Every header line and the body, to search for a secret."""
        lines = [f"{n}: {v}" for n, v in self.headers]
        return "\n".join(lines) + "\n\n" + self.body


class MockUpstream:
    """The `apx-mock-upstream` binary, listening on a kernel-chosen port."""

    def __init__(self, binary: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        try:
            line = self._read_line(STARTUP_TIMEOUT)
        except Exception:
            self.stop()
            raise
        match = re.fullmatch(r"listening on (127\.0\.0\.1):(\d+)", line.strip())
        if not match:
            self.stop()
            raise HarnessError(f"unexpected first line from the mock upstream: {line!r}")
        self.port = int(match.group(2))
        self.url = f"http://127.0.0.1:{self.port}"
        self._http = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)
        RUNNING.append(self)

    def describe(self) -> str:
        return f"the mock upstream (pid {self.proc.pid}, port {self.port})"

    def stderr_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(
                    f"the mock upstream did not print its address within {timeout}s; "
                    f"stderr:\n{self.log_path.read_text(errors='replace')}"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise HarnessError(
                    f"the mock upstream exited (status {self.proc.wait()}) before listening; "
                    f"stderr:\n{self.log_path.read_text(errors='replace')}"
                )
            data += chunk
        return data.decode(errors="replace").splitlines()[0]

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def requests(self) -> list[Recorded]:
        response = self._http.get("/_mock/requests")
        response.raise_for_status()
        return [
            Recorded(r["method"], r["path"], [tuple(h) for h in r["headers"]], r["body"])
            for r in response.json()
        ]

    def reset(self) -> None:
        self._http.post("/_mock/reset").raise_for_status()

    def stats(self) -> dict[str, int]:
        response = self._http.get("/_mock/stats")
        response.raise_for_status()
        return response.json()

    def wait_for_stats(self, predicate, timeout: float) -> dict[str, int]:
        """Polls the counters until `predicate(stats)` holds; returns the last ones."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats) or time.monotonic() >= deadline:
                return stats
            time.sleep(0.02)

    def stop(self) -> None:
        if self in RUNNING:
            RUNNING.remove(self)
        if getattr(self, "_http", None) is not None:
            self._http.close()
        _stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value)


@dataclass
class ProviderSpec:
    name: str
    kind: str  # "openai" or "anthropic"
    base_url: str
    api_key: str  # written as is; may be a ${ENV} reference


@dataclass
class ModelSpec:
    name: str
    provider: str
    upstream_model: str | None = None


def render_config(
    port: int,
    providers: Iterable[ProviderSpec],
    models: Iterable[ModelSpec],
    keys: dict[str, str],
    limits: dict[str, Any],
    state_dir: Path | None = None,
    capture: str | None = None,
) -> str:
    lines = [f"listen = {toml_string(f'127.0.0.1:{port}')}", "", "[limits]"]
    for name, value in limits.items():
        rendered = toml_string(value) if isinstance(value, str) else str(value)
        lines.append(f"{name} = {rendered}")
    for provider in providers:
        lines += [
            "",
            f"[providers.{provider.name}]",
            f"kind = {toml_string(provider.kind)}",
            f"base_url = {toml_string(provider.base_url)}",
            f"api_key = {toml_string(provider.api_key)}",
        ]
    for model in models:
        lines += ["", "[[models]]", f"name = {toml_string(model.name)}"]
        lines.append(f"provider = {toml_string(model.provider)}")
        if model.upstream_model is not None:
            lines.append(f"upstream_model = {toml_string(model.upstream_model)}")
    for name, key in keys.items():
        lines += ["", "[[keys]]", f"name = {toml_string(name)}", f"hash = {toml_string(key_hash(key))}"]
    if state_dir is not None:
        # Keep the key store of the machine (/var/lib/apx, ~/.local/share/apx) out of the tests.
        lines += ["", "[storage]", f"dir = {toml_string(str(state_dir))}"]
    if capture is not None:
        lines += ["", "[logging]", f"capture = {toml_string(capture)}"]
    return "\n".join(lines) + "\n"


class Gateway:
    """`apx serve` on a free port with a config written into `workdir`."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        name: str,
        providers: list[ProviderSpec],
        models: list[ModelSpec],
        keys: dict[str, str],
        limits: dict[str, Any],
        env: dict[str, str],
        capture: str | None = None,
    ):
        self.binary = binary
        self.workdir = workdir
        self.name = name
        self.providers = providers
        self.models = models
        self.keys = keys
        self.limits = limits
        self.env = env
        self.capture = capture
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.config_path = workdir / f"{name}.toml"
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.state_dir = workdir / f"{name}-state"
        self._start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _start(self) -> None:
        # A port picked by free_port() can be taken by someone else before
        # the gateway binds it; try a few.
        for _attempt in range(3):
            self.port = free_port()
            self.config_path.write_text(
                render_config(
                    self.port,
                    self.providers,
                    self.models,
                    self.keys,
                    self.limits,
                    self.state_dir,
                    self.capture,
                )
            )
            env = dict(os.environ)
            env.update(self.env)
            env.setdefault("RUST_LOG", "info")
            env.setdefault("NO_COLOR", "1")
            with open(self.stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen(
                    [str(self.binary), "serve", "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                )
            if self._wait_healthy():
                RUNNING.append(self)
                return
            status = self.proc.poll()
            log = self.stderr_text()
            if status is not None and "cannot listen" in log:
                continue
            self.stop()
            what = (
                f"exited with status {status} before answering GET /healthz"
                if status is not None
                else f"did not answer GET /healthz with 200 within {STARTUP_TIMEOUT}s"
            )
            raise HarnessError(
                f"gateway `{self.name}` {what}. Config {self.config_path}:\n"
                f"{self.config_path.read_text()}\nstderr:\n{log}"
            )
        raise HarnessError(f"gateway `{self.name}` could not bind a port:\n{self.stderr_text()}")

    def _wait_healthy(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        return False

    def describe(self) -> str:
        pid = self.proc.pid if self.proc is not None else "?"
        return f"gateway `{self.name}` (pid {pid}, port {self.port})"

    def stop(self) -> None:
        if self in RUNNING:
            RUNNING.remove(self)
        if self.proc is not None:
            _stop_process(self.proc)


def assert_upstream_credentials(rec: Recorded, kind: str, client_keys: Iterable[str]) -> None:
    """The request carries the upstream key exactly once, in the one header
    its API reads, and none of the client's keys anywhere."""
    text = rec.everything()
    for key in client_keys:
        assert key not in text, f"client key leaked upstream in {rec.method} {rec.path}"
    if kind == "openai":
        assert rec.header_values("authorization") == [f"Bearer {UPSTREAM_OPENAI_KEY}"]
        assert rec.header_values("x-api-key") == []
        assert text.count(UPSTREAM_OPENAI_KEY) == 1
    elif kind == "anthropic":
        assert rec.header_values("x-api-key") == [UPSTREAM_ANTHROPIC_KEY]
        assert rec.header_values("authorization") == []
        assert text.count(UPSTREAM_ANTHROPIC_KEY) == 1
    else:
        raise ValueError(f"unknown provider kind {kind!r}")


def mock_reply(model: str, user_text: str) -> str:
    """What the mock upstream answers to `user_text` when asked as `model`."""
    return f"Hello from {model}! You said: {user_text}"


def words(text: str) -> int:
    """The mock's token count: whitespace-separated words."""
    return len(text.split())


class RawConnection:
    """One HTTP/1.1 connection driven by hand, to control exactly when each
    byte of a request is sent and which connection a request goes on."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    @staticmethod
    def request(path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, bytes]:
        """The request head (with Content-Length) and body, as bytes."""
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _take_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the next response."""
        status_line = self._take_line().decode()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while line := self._take_line():
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, headers, self._take(int(headers["content-length"]))
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int(self._take_line().split(b";")[0], 16):
                body += self._take(size)
                self._take_line()
            self._take_line()
        return status, headers, body
