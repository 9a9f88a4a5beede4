#!/usr/bin/env python3
"""End-to-end check of the apx capture programs (needs root, tracefs, bpf).

Starts an HTTP/1.1 server (a keep-alive Python server by default, or
`--hyper PATH` for the example hyper server), attaches apx-capture-probe to
it, drives scenarios over loopback, and checks the JSON lines:

  basic        GET with Authorization/x-api-key/Cookie/MCP headers + 1 extra header
  split        one request written in 3 pieces with sleeps (split inside a
               header name and inside the bearer token)
  pipelined    GET + HEAD + POST(body) in one send on one connection
  chunked      POST with a chunked body, then a GET on the same connection
  garbage      TLS-looking bytes → not_http record
  notline      "hello world\\r\\n" → not_http
  h2           HTTP/2 prior-knowledge preface → not_http + h2
  vanish       half a request, then RST → partial + peer_eof/read_error
  bighdr       20 KB header value + 400-byte path → truncated flags, still parsed
  continue     Expect: 100-continue → interim 100 + final 200 on one response record
  words        header values (1..140 bytes) and targets (2..281) of many lengths
               and alignments, some with a tab or non-ASCII bytes: captured
               values, paths and credential fingerprints (SipHash computed
               here) exact whatever the mix of the parser's 8-byte and 1-byte paths
  sse          SSE-like chunked response: many small chunks written with writev
               (up to 60 iovecs per call: Python os.writev; hyper: head + 16
               chunks = 49 iovecs, then bursts of 8 and single chunks with
               pauses), then a second request on the same connection
  (hyper only) chunked/slow responses: status + end timestamps

Exit 0 if every check passes; prints 'N passed, M failed'.
"""
import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "sk-apx-test-0123456789abcdef"  # common::TEST_TOKEN
TEST_FP = "75cfa234b78427ba"  # common::TEST_FP (key = TEST_KEY)
API_KEY = "sk-ant-other-key-42"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _reply(self, body=b"ok\n", status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/sse":
            return self._sse()
        if self.path.startswith("/raw-"):
            return self._raw(int(self.path[5:]))
        if self.path in ("/chunk-lines", "/chunk-lines-bad"):
            return self._chunk_lines(self.path.endswith("bad"))
        self._reply()

    def _sse(self):
        # Chunked, one writev per group of events, 3 iovecs per chunk (size
        # line, data, CRLF) like hyper: groups of 20 = 60 iovecs in one call.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        fd = self.connection.fileno()
        i = 0
        for group in SSE_GROUPS:
            iov = []
            for _ in range(group):
                data = sse_event(i)
                iov += [b"%x\r\n" % len(data), data, b"\r\n"]
                i += 1
            os.writev(fd, iov)
            time.sleep(0.01)
        os.writev(fd, [b"0\r\n\r\n"])

    def _chunk_lines(self, bad):
        # Chunk-size lines of every shape, each in its own iovec: plain,
        # with an extension, upper case, leading zeros (7 digits), a line
        # split across two iovecs; `bad`: a size line that is not hex.
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        fd = self.connection.fileno()
        iov = [b"5\r\n", b"hello", b"\r\n", b"5;ext=1\r\n", b"there", b"\r\n", b"1A\r\n", b"x" * 26, b"\r\n",
               b"0000006\r\n", b"world!", b"\r\n", b"1", b"0\r\n", b"y" * 16, b"\r\n"]
        if bad:
            iov += [b"zz\r\n", b"junk", b"\r\n"]
        os.writev(fd, iov + [b"0\r\n\r\n"])
        if bad:
            self.close_connection = True

    def _raw(self, i):
        # A response written as raw bytes (status line and Content-Length
        # shapes the word paths take or leave), all in one write.
        self.wfile.write(RAW_RESPONSES[i][0])
        self.wfile.flush()
        if RAW_RESPONSES[i][1] is None:
            self.close_connection = True

    def do_HEAD(self):
        self._reply()

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            total = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self._reply(f"got {total}\n".encode())


SSE_GROUPS = [1, 20, 5, 1, 1, 12, 1]  # events per writev (10 ms apart)


def sse_event(i):
    return b'event: delta\ndata: {"i":%d,"text":"tok%d"}\n\n' % (i, i)


def serve(port):
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def conn(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(3)
    return s


def recv_all(s, until_close=False, want=None, timeout=1.0):
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
            if want is not None and data.count(b"HTTP/1.") >= want and data.endswith((b"\n", b"ok\n")):
                # enough responses (bodies are short)
                time.sleep(0.05)
                s.settimeout(0.2)
    except socket.timeout:
        pass
    return data


def scenario_basic(port, hyper):
    s = conn(port)
    s.sendall(
        (
            "GET /v1/messages?x=1 HTTP/1.1\r\nHost: gw.local\r\nUser-Agent: e2e/1.0\r\n"
            f"Authorization: Bearer {TOKEN}\r\nx-api-key: {API_KEY}\r\nCookie: session=abc; other=1\r\n"
            "X-Request-Id: req-basic-1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
            "anthropic-version: 2023-06-01\r\nMcp-Session-Id: sess-9\r\nMcp-Method: tools/call\r\nMcp-Name: search\r\n"
            "X-Tenant: acme\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    recv_all(s)
    s.close()


def scenario_split(port, hyper):
    s = conn(port)
    s.sendall(b"GET /split HTTP/1.1\r\nHost: split.local\r\nX-Requ")
    time.sleep(0.15)
    s.sendall(f"est-Id: req-split\r\nAuthorization: Bearer {TOKEN[:10]}".encode())
    time.sleep(0.15)
    s.sendall(f"{TOKEN[10:]}\r\nConnection: close\r\n\r\n".encode())
    recv_all(s)
    s.close()


def scenario_pipelined(port, hyper):
    s = conn(port)
    body = b"0123456789" * 5
    s.sendall(
        b"GET /p1 HTTP/1.1\r\nHost: pipe\r\nX-Request-Id: p1\r\n\r\n"
        b"HEAD /p2 HTTP/1.1\r\nHost: pipe\r\nX-Request-Id: p2\r\n\r\n"
        b"POST /p3 HTTP/1.1\r\nHost: pipe\r\nX-Request-Id: p3\r\nContent-Type: text/plain\r\nContent-Length: 50\r\nConnection: close\r\n\r\n"
        + body
    )
    recv_all(s)
    s.close()


def scenario_chunked(port, hyper):
    s = conn(port)
    s.sendall(
        b"POST /chunk HTTP/1.1\r\nHost: c\r\nX-Request-Id: ch1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    )
    time.sleep(0.2)
    s.sendall(b"GET /after-chunk HTTP/1.1\r\nHost: c\r\nX-Request-Id: ch2\r\nConnection: close\r\n\r\n")
    recv_all(s)
    s.close()


def scenario_garbage(port, hyper):
    s = conn(port)
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
    recv_all(s, timeout=0.5)
    s.close()


def scenario_notline(port, hyper):
    s = conn(port)
    s.sendall(b"hello world\r\n\r\n")
    recv_all(s, timeout=0.5)
    s.close()


def scenario_h2(port, hyper):
    s = conn(port)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    recv_all(s, timeout=0.5)
    s.close()


def scenario_vanish(port, hyper):
    s = conn(port)
    s.sendall(b"POST /vanish HTTP/1.1\r\nHost: v\r\nX-Request-Id: gone\r\nAuthorization: Bearer half-a-tok")
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST


def scenario_bighdr(port, hyper):
    s = conn(port)
    path = "/big/" + "a" * 400
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: big\r\nUser-Agent: {'U' * 20000}\r\nX-Request-Id: big1\r\nConnection: close\r\n\r\n".encode()
    )
    recv_all(s)
    s.close()


def scenario_continue(port, hyper):
    s = conn(port)
    s.sendall(b"POST /cont HTTP/1.1\r\nHost: c\r\nX-Request-Id: cont1\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
    s.settimeout(2)
    first = s.recv(4096)
    s.sendall(b"hello world")
    recv_all(s)
    s.close()


def recv_until(s, marker, timeout=3.0):
    s.settimeout(timeout)
    data = b""
    try:
        while marker not in data:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except socket.timeout:
        pass
    return data


# Bytes a scenario's client received, by request id, for the checks.
RECEIVED = {}

TEST_KEY = b"apx-fp-test-key!"  # common::TEST_KEY, the probe's default key
WORD_LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 23, 24, 25, 63, 64, 65, 116, 117, 118, 123, 124, 125, 131, 140]


def siphash24(key, data):
    mask = (1 << 64) - 1
    rotl = lambda x, b: ((x << b) | (x >> (64 - b))) & mask
    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rnd():
        v[0] = (v[0] + v[1]) & mask; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & mask; v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & mask; v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & mask; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)

    full = len(data) // 8 * 8
    for i in range(0, full, 8):
        m = struct.unpack("<Q", data[i:i + 8])[0]
        v[3] ^= m; rnd(); rnd(); v[0] ^= m
    b = (len(data) & 0xFF) << 56
    for i, c in enumerate(data[full:]):
        b |= c << (8 * i)
    v[3] ^= b; rnd(); rnd(); v[0] ^= b
    v[2] ^= 0xFF
    for _ in range(4):
        rnd()
    return "%016x" % (v[0] ^ v[1] ^ v[2] ^ v[3])


def word_values(n):
    """Values of length n for the words scenario: (tenant, cookie, token)."""
    tenant = "".join("abcdefghijklmnopqrstuvwxyz0123456789-_."[(i * 7 + n) % 39] for i in range(n))
    cookie = bytes((0x21 + (i * 13 + n) % 0x5E) if i % 11 != 5 else 0xC3 for i in range(n))
    if n > 10:
        cookie = cookie[:3] + b"\t" + cookie[4:]  # a tab: the byte path inside a value
    token = ("tok%d-" % n + "Z9y8X7w6" * 20)[:n]
    path = "/" + ("w%d/" % n + "abc.def~" * 40)[: 2 * n]
    return tenant, cookie, token, path


def scenario_words(port, hyper):
    s = conn(port)
    for n in WORD_LENGTHS:
        tenant, cookie, token, path = word_values(n)
        s.sendall(
            b"GET %s HTTP/1.1\r\nHost: w\r\nX-Request-Id: words-%d\r\nX-Tenant: %s\r\nCookie: %s\r\nAuthorization: Bearer %s\r\n\r\n"
            % (path.encode(), n, tenant.encode(), cookie, token.encode())
        )
        recv_until(s, b"ok\n" if not hyper else b"ok\n", timeout=1.0)
    s.close()


# Authorization values whose scheme the word path takes (`Bearer ` in any
# case, then the token or more spaces) or leaves to the byte path, with the
# scheme, token and token length each must give.
SCHEMES = [
    (b"BEARER " + TOKEN.encode(), "bearer", TOKEN.encode()),
    (b"Bearer  " + TOKEN.encode(), "bearer", TOKEN.encode()),
    (b"bearer x", "bearer", b"x"),
    (b"Bearer y\tz", "bearer", b"y\tz"),
    (b"Basic dXNlcjpwYXNz", "basic", b"dXNlcjpwYXNz"),
    (b"Bearerx " + TOKEN.encode(), "other", TOKEN.encode()),
    (b"Bearer", "none", b"Bearer"),
]


def scenario_schemes(port, hyper):
    s = conn(port)
    for i, (value, _, _) in enumerate(SCHEMES):
        s.sendall(b"GET /scheme HTTP/1.1\r\nHost: a\r\nX-Request-Id: scheme-%d\r\nAuthorization: %s\r\n\r\n" % (i, value))
        recv_until(s, b"ok\n", timeout=1.0)
    s.close()


# Raw responses: bytes, then (status, Content-Length) the record must show,
# or None for a malformed one (sent last, the connection closes).
RAW_RESPONSES = [
    (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", (200, 2)),
    (b"HTTP/1.1 404 Not Found\r\ncontent-length:  5 \r\n\r\nnope!", (404, 5)),
    (b"HTTP/1.1 201 A reason phrase longer than a word\r\nContent-Length: 00000010\r\n\r\n0123456789", (201, 10)),
    (b"HTTP/1.0 503 Busy\r\nRetry-After: 1\r\nContent-Length: 1234567\r\nX: y\r\n\r\n", None),
]


def scenario_raw_responses(port, hyper):
    if hyper:
        return
    s = conn(port)
    for i, (raw, want) in enumerate(RAW_RESPONSES):
        s.sendall(b"GET /raw-%d HTTP/1.1\r\nHost: r\r\nX-Request-Id: raw-%d\r\n\r\n" % (i, i))
        if want is None:
            recv_all(s)
        else:
            recv_until(s, raw[-2:], timeout=1.0)
    s.close()


# Request Content-Length values (as sent) and their bodies.
LENGTHS = [b"5", b"  12 ", b"0000007", b"123456", b"0"]


def length_request(i, value):
    body = b"b" * int(value)
    return b"POST /len HTTP/1.1\r\nHost: l\r\nX-Request-Id: len-%d\r\nContent-Length: %s\r\n\r\n%s" % (i, value, body)


def scenario_lengths(port, hyper):
    s = conn(port)
    for i, value in enumerate(LENGTHS):
        s.sendall(length_request(i, value))
        recv_until(s, b"\n", timeout=2.0)
        time.sleep(0.02)
    s.close()


def scenario_sse(port, hyper):
    s = conn(port)
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: s\r\nX-Request-Id: sse1\r\nAccept: text/event-stream\r\n\r\n")
    got = recv_until(s, b"\r\n0\r\n\r\n")
    RECEIVED["sse1"] = got
    s.sendall(b"GET /after-sse HTTP/1.1\r\nHost: s\r\nX-Request-Id: sse2\r\nConnection: close\r\n\r\n")
    recv_all(s)
    s.close()


def scenario_chunk_lines(port, hyper):
    if hyper:
        return
    s = conn(port)
    s.sendall(b"GET /chunk-lines HTTP/1.1\r\nHost: s\r\nX-Request-Id: cl1\r\n\r\n")
    RECEIVED["cl1"] = recv_until(s, b"\r\n0\r\n\r\n")
    s.sendall(b"GET /after-chunk-lines HTTP/1.1\r\nHost: s\r\nX-Request-Id: cl2\r\n\r\n")
    recv_until(s, b"ok\n")
    s.sendall(b"GET /chunk-lines-bad HTTP/1.1\r\nHost: s\r\nX-Request-Id: cl3\r\nConnection: close\r\n\r\n")
    recv_all(s)
    s.close()


def scenario_hyper_bodies(port, hyper):
    s = conn(port)
    s.sendall(b"GET /chunked HTTP/1.1\r\nHost: h\r\nX-Request-Id: hc\r\n\r\n")
    time.sleep(0.3)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Request-Id: hs\r\nConnection: close\r\n\r\n")
    recv_all(s, timeout=1.0)
    s.close()


SCENARIOS = [
    scenario_basic,
    scenario_split,
    scenario_pipelined,
    scenario_chunked,
    scenario_garbage,
    scenario_notline,
    scenario_h2,
    scenario_vanish,
    scenario_bighdr,
    scenario_continue,
    scenario_words,
    scenario_schemes,
    scenario_lengths,
    scenario_sse,
    scenario_chunk_lines,
    scenario_raw_responses,
]


class Checker:
    def __init__(self):
        self.ok = 0
        self.bad = 0

    def check(self, name, cond, detail=""):
        if cond:
            self.ok += 1
            print(f"  ok   {name}")
        else:
            self.bad += 1
            print(f"  FAIL {name} {detail}")


def by_rid(lines, rid):
    return [l for l in lines if l.get("request", {}).get("headers", {}).get("x-request-id") == rid]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "target/release/apx-capture-probe"))
    ap.add_argument("--hyper", help="path of the hyper_server example binary (default: Python server)")
    ap.add_argument("--port", type=int, default=38419)
    ap.add_argument("--out", default="/tmp/apx-e2e.jsonl")
    ap.add_argument("--layer", default="auto", choices=["auto", "sockets", "syscalls"], help="hook layer the probe attaches")
    a = ap.parse_args()

    if a.hyper:
        server = subprocess.Popen([a.hyper, f"127.0.0.1:{a.port}"], stderr=subprocess.DEVNULL)
    else:
        server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(a.port)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", a.port), timeout=0.2).close()
            break
        except OSError:
            if server.poll() is not None:
                sys.exit(f"the test server exited with {server.returncode} (port {a.port} taken?)")
            time.sleep(0.1)
    else:
        sys.exit(f"the test server did not listen on port {a.port} within 10 s")
    # A connection accepted before the programs are attached: the socket
    # layer learns it at its first read after attach (peer and ports read
    # from the socket itself); the syscall layer never sees it.
    early = conn(a.port)
    time.sleep(0.2)
    out = open(a.out, "w")
    err = open(a.out + ".stderr", "w")
    probe = subprocess.Popen(
        [a.probe, "--pid", str(server.pid), "--header", "X-Tenant", "--known-key", f"gw-key-1={TOKEN}", "--duration", "60", "--layer", a.layer],
        stdout=out,
        stderr=err,
    )
    # Wait for "attached".
    deadline = time.time() + 30
    while time.time() < deadline and "attached" not in open(a.out + ".stderr").read():
        if probe.poll() is not None:
            print(open(a.out + ".stderr").read())
            server.kill()
            sys.exit("probe failed to start")
        time.sleep(0.1)
    early.sendall(b"GET /early HTTP/1.1\r\nHost: early.local\r\nX-Request-Id: req-early\r\nConnection: close\r\n\r\n")
    recv_all(early)
    early_port = early.getsockname()[1]
    early.close()
    # Every other scenario opens its own connections.
    scen = SCENARIOS + ([scenario_hyper_bodies] if a.hyper else [])
    for f in scen:
        f(a.port, bool(a.hyper))
        time.sleep(0.1)
    time.sleep(0.7)
    probe.send_signal(signal.SIGINT)
    probe.wait(timeout=10)
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
    out.close()
    err.close()
    raw = open(a.out).read()
    lines = [json.loads(l) for l in raw.splitlines() if l.strip()]
    stats = [json.loads(l) for l in open(a.out + ".stderr").read().splitlines() if l.startswith("{")]
    print(f"{len(lines)} exchange lines; probe: {stats}")

    c = Checker()
    c.check("no clear token anywhere in the output", TOKEN not in raw and API_KEY not in raw and "session=abc" not in raw)
    c.check("no ring buffer drops", stats and stats[-1].get("ringbuf_drops") == 0, str(stats[-1:]))

    b = by_rid(lines, "req-basic-1")
    c.check("basic: one record", len(b) == 1, str(len(b)))
    if b:
        q, r = b[0]["request"], b[0].get("response", {})
        h = q["headers"]
        c.check("basic: request line", (q["method"], q["path"], q["version"]) == ("GET", "/v1/messages?x=1", "HTTP/1.1"), str(q))
        c.check("basic: status 200", r.get("status") == 200, str(r))
        c.check("basic: peer/local port", q["peer"] == "127.0.0.1" and q["local_port"] == a.port and q["peer_port"] > 0, str(q))
        c.check(
            "basic: headers",
            h.get("host") == "gw.local"
            and h.get("user-agent") == "e2e/1.0"
            and h.get("anthropic-version") == "2023-06-01"
            and h.get("mcp-session-id") == "sess-9"
            and h.get("mcp-method") == "tools/call"
            and h.get("mcp-name") == "search"
            and h.get("traceparent", "").startswith("00-0af7")
            and h.get("extra0") == "acme",
            str(h),
        )
        cr = q["credentials"]
        c.check("basic: authorization fingerprint = shared test vector", cr.get("authorization", {}).get("fp") == TEST_FP, str(cr))
        c.check("basic: key id resolved", cr.get("authorization", {}).get("key_id") == "gw-key-1")
        c.check("basic: scheme bearer", cr.get("authorization", {}).get("scheme") == "bearer")
        c.check("basic: x-api-key + cookie present", cr.get("x-api-key", {}).get("present") and cr.get("cookie", {}).get("present"), str(cr))
        ts = (q["ts_first_ns"], r.get("ts_first_ns", 0), r.get("ts_end_ns", 0))
        c.check("basic: timestamps ordered", 0 < ts[0] <= ts[1] <= ts[2], str(ts))

    e = by_rid(lines, "req-early")
    if a.layer == "sockets":
        c.check("early connection: one record", len(e) == 1, str(len(e)))
        if e:
            q = e[0]["request"]
            c.check(
                "early connection: learnt at its first read (peer, ports, seq 0, 200)",
                (q["peer"], q["peer_port"], q["local_port"], e[0]["seq"], e[0].get("response", {}).get("status"))
                == ("127.0.0.1", early_port, a.port, 0, 200),
                str(e[0]),
            )
    else:
        c.check("early connection: not seen by the syscall layer", len(e) == 0, str(len(e)))

    sp = by_rid(lines, "req-split")
    c.check("split: one record", len(sp) == 1, str(len(sp)))
    if sp:
        q = sp[0]["request"]
        c.check("split: fingerprint across 3 writes", q["credentials"].get("authorization", {}).get("fp") == TEST_FP, str(q["credentials"]))
        c.check("split: complete, 200", "partial" not in q["flags"] and sp[0].get("response", {}).get("status") == 200)
        c.check("split: first byte before headers end (>=250ms)", q["ts_headers_ns"] - q["ts_first_ns"] >= 250_000_000, str(q["ts_headers_ns"] - q["ts_first_ns"]))

    p = [by_rid(lines, f"p{i}") for i in (1, 2, 3)]
    c.check("pipelined: 3 records", all(len(x) == 1 for x in p), str([len(x) for x in p]))
    if all(len(x) == 1 for x in p):
        c.check("pipelined: same connection, seq 0,1,2", len({x[0]["conn_id"] for x in p}) == 1 and [x[0]["seq"] for x in p] == [0, 1, 2])
        c.check("pipelined: methods", [x[0]["request"]["method"] for x in p] == ["GET", "HEAD", "POST"])
        c.check("pipelined: all answered 200", [x[0].get("response", {}).get("status") for x in p] == [200, 200, 200])
        c.check("pipelined: POST body counted", p[2][0]["request"]["bytes"] - p[2][0]["request"]["header_bytes"] == 50)
        c.check("pipelined: HEAD flagged", "head" in p[1][0]["request"]["flags"])

    ch1, ch2 = by_rid(lines, "ch1"), by_rid(lines, "ch2")
    c.check("chunked request: record + the next request on the same conn", len(ch1) == 1 and len(ch2) == 1)
    if ch1 and ch2:
        c.check("chunked request: flags + body bytes", "chunked" in ch1[0]["request"]["flags"] and ch1[0]["request"]["bytes"] > ch1[0]["request"]["header_bytes"])
        c.check("chunked request: next parsed after terminator", ch2[0]["request"]["path"] == "/after-chunk" and ch2[0]["seq"] == 1)

    def flagged(flag, pred=lambda l: True):
        return [l for l in lines if flag in l.get("request", {}).get("flags", []) and pred(l)]

    c.check("garbage: not_http record", any(l["request"]["method"] == "" for l in flagged("not_http")), str(flagged("not_http")))
    c.check("not-an-http-line: not_http record", any(l["request"]["method"] == "" and l["request"]["bytes"] >= 1 for l in flagged("not_http")))
    c.check("h2 preface: flagged h2", len(flagged("h2")) == 1, str(flagged("h2")))
    v = by_rid(lines, "gone")
    c.check("vanish: partial record", len(v) == 1 and "partial" in v[0]["request"]["flags"], str(v))
    if v:
        f = v[0]["request"]["flags"]
        c.check("vanish: peer_eof or read_error + closed", ("peer_eof" in f or "read_error" in f) and "closed" in f, str(f))
        c.check("vanish: partial credential still only a fingerprint", "half-a-tok" not in raw and v[0]["request"]["credentials"].get("authorization", {}).get("present"))
    bg = by_rid(lines, "big1")
    c.check("big header: parsed", len(bg) == 1, str(len(bg)))
    if bg:
        q = bg[0]["request"]
        c.check("big header: path truncated, real length kept", "path_truncated" in q["flags"] and q["path_len"] == 405 and len(q["path"]) == 256)
        c.check("big header: value truncated, status seen", "value_truncated" in q["flags"] and len(q["headers"]["user-agent"]) == 124 and bg[0].get("response", {}).get("status") in (200, 431, 400))

    ct = by_rid(lines, "cont1")
    c.check("100-continue: one record, interim counted, final 200", len(ct) == 1 and ct[0].get("response", {}).get("interim") == 1 and ct[0]["response"]["status"] == 200 and "interim" in ct[0]["response"]["flags"], str(ct))

    bad_words = []
    for n in WORD_LENGTHS:
        tenant, cookie, token, path = word_values(n)
        w = by_rid(lines, f"words-{n}")
        if len(w) != 1:
            bad_words.append((n, "records", len(w)))
            continue
        q = w[0]["request"]
        cr = q["credentials"]
        if q["headers"].get("extra0") != tenant[:124]:
            bad_words.append((n, "x-tenant", q["headers"].get("extra0")))
        if q["path"] != path[:256] or q["path_len"] != len(path) or ("path_truncated" in q["flags"]) != (len(path) > 256):
            bad_words.append((n, "path", q["path"], q["path_len"]))
        if ("value_truncated" in q["flags"]) != (n > 124):
            bad_words.append((n, "value_truncated", q["flags"]))
        if cr.get("cookie", {}).get("fp") != siphash24(TEST_KEY, cookie) or cr["cookie"].get("token_len") != n:
            bad_words.append((n, "cookie", cr.get("cookie")))
        if cr.get("authorization", {}).get("fp") != siphash24(TEST_KEY, token.encode()) or cr["authorization"].get("token_len") != n:
            bad_words.append((n, "authorization", cr.get("authorization")))
    c.check(f"words: {len(WORD_LENGTHS)} value lengths, captured values + fingerprints exact", not bad_words, str(bad_words))

    bad_schemes = []
    for i, (value, scheme, token) in enumerate(SCHEMES):
        rec = by_rid(lines, f"scheme-{i}")
        au = rec[0]["request"]["credentials"].get("authorization", {}) if len(rec) == 1 else {}
        if (au.get("scheme"), au.get("fp"), au.get("token_len")) != (scheme, siphash24(TEST_KEY, token), len(token)):
            bad_schemes.append((value, au))
    c.check(f"authorization schemes: {len(SCHEMES)} values, scheme + token fingerprint + length exact", not bad_schemes, str(bad_schemes))

    bad_lengths = []
    for i, value in enumerate(LENGTHS):
        rec = by_rid(lines, f"len-{i}")
        q = rec[0]["request"] if len(rec) == 1 else {}
        got = (q.get("content_length"), q.get("headers", {}).get("content-length", "").strip(), q.get("bytes"), q.get("flags"))
        if got != (int(value), value.decode().strip(), len(length_request(i, value)), []):
            bad_lengths.append((value, got))
    c.check(f"request lengths: {len(LENGTHS)} Content-Length values, kept value + length + bytes exact", not bad_lengths, str(bad_lengths))

    se, se2 = by_rid(lines, "sse1"), by_rid(lines, "sse2")
    c.check("sse: one record", len(se) == 1, str(len(se)))
    if se:
        r = se[0].get("response", {})
        f = r.get("flags", [])
        got = RECEIVED.get("sse1", b"")
        c.check("sse: 200, chunked, complete (no partial/parse_budget)", r.get("status") == 200 and "chunked" in f and "partial" not in f and "parse_budget" not in f, str(r))
        c.check("sse: response bytes = bytes the client received", len(got) > 1000 and r.get("bytes") == len(got), f"{r.get('bytes')} vs {len(got)}")
        c.check("sse: end after the last pause (>= 60 ms after first byte)", r.get("ts_end_ns", 0) - r.get("ts_first_ns", 0) >= 60_000_000, str(r))
    c.check(
        "sse: next request on the connection parsed (seq 1, 200)",
        len(se2) == 1 and se2[0]["seq"] == 1 and se2[0].get("response", {}).get("status") == 200 and "partial" not in se2[0]["response"].get("flags", []),
        str(se2),
    )

    if not a.hyper:
        bad_raw = []
        for i, (raw, want) in enumerate(RAW_RESPONSES):
            rec = by_rid(lines, f"raw-{i}")
            r = rec[0].get("response", {}) if len(rec) == 1 else {}
            flags = r.get("flags", [])
            if want is None:
                # Headers complete, body cut short by the close: partial, with its length.
                ok = r.get("status") == 503 and r.get("content_length") == 1234567 and "partial" in flags
            else:
                ok = (r.get("status"), r.get("content_length")) == want and r.get("bytes") == len(raw) and rec[0]["seq"] == i and not {"partial", "malformed"} & set(flags)
            if not ok:
                bad_raw.append((raw[:40], rec))
        c.check(f"raw responses: {len(RAW_RESPONSES)} status lines / Content-Length shapes exact", not bad_raw, str(bad_raw))
        cl1, cl2, cl3 = by_rid(lines, "cl1"), by_rid(lines, "cl2"), by_rid(lines, "cl3")
        got = RECEIVED.get("cl1", b"")
        r = cl1[0].get("response", {}) if len(cl1) == 1 else {}
        c.check(
            "chunk lines (extension, upper case, leading zeros, split): complete, bytes = bytes received",
            r.get("status") == 200 and "chunked" in r.get("flags", []) and "partial" not in r.get("flags", []) and "malformed" not in r.get("flags", []) and r.get("bytes") == len(got),
            f"{cl1} vs {len(got)} bytes",
        )
        c.check(
            "chunk lines: next request on the connection parsed (seq 1, 200, complete)",
            len(cl2) == 1 and cl2[0]["seq"] == 1 and cl2[0].get("response", {}).get("status") == 200 and "partial" not in cl2[0]["response"].get("flags", []),
            str(cl2),
        )
        r3 = cl3[0].get("response", {}) if len(cl3) == 1 else {}
        c.check("chunk lines: a size line that is not hex flags the response malformed", "malformed" in r3.get("flags", []), str(cl3))

    if a.hyper:
        hc, hs = by_rid(lines, "hc"), by_rid(lines, "hs")
        c.check("hyper chunked response: ended by terminator", len(hc) == 1 and "chunked" in hc[0].get("response", {}).get("flags", []) and hc[0]["response"]["status"] == 200)
        if hs:
            r = hs[0].get("response", {})
            c.check("hyper slow response: end - first >= 140ms", r.get("ts_end_ns", 0) - r.get("ts_first_ns", 0) >= 140_000_000, str(r))
        else:
            c.check("hyper slow response: present", False)

    print(f"{c.ok} passed, {c.bad} failed")
    sys.exit(1 if c.bad else 0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main()
