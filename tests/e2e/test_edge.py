"""The edge through a real Envoy, driven as an attacker would: header spellings, slow and idle
clients, too many headers, method overrides, early uploads (HTTP/1.1 and h2c), look-alike
paths, big bodies (and an allowed upload within a body limit invited at once), and an
unreachable ext_authz. Every answer Envoy makes for us is a JSON denial."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)

from sidecar.echo import EchoServer
from sidecar_shared.contract import AUTHZ_TRANSPORTS
from tests.support import http, stack, tokens, wait
from tests.support.catalog_edges import LOOKALIKES
from tests.support.catalogs import sample_data, write_json
from tests.support.ports import free_port
from tests.support.upstreams import Upstream

TIMEOUT_MS = 1000  # request-headers and idle timeouts for this test's Envoy
# The `capped` service's max_request_body_bytes: well above the listener's per-connection
# buffer (32 KiB), which holds what arrives while ext_authz decides.
CAP = 256 * 1024

# Every decision, through both of Envoy's ways of calling ext_authz.
pytestmark = pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)


@pytest.fixture
def uploads() -> Iterator[Upstream]:
    """The `uploads` service's upstream: it records every request that reaches it."""
    upstream = Upstream("uploads").start()
    yield upstream
    upstream.stop()


@pytest.fixture
def edge_catalog(tmp_path: Path, echo: Callable[[str], EchoServer], uploads: Upstream) -> Path:
    """The sample catalog on echo upstreams; the public `status` service takes at most 1 KiB.
    A protected `uploads` service without a body limit sits on the recording `uploads`; a
    protected `capped` service on an echo upstream takes at most `CAP` bytes."""
    data = sample_data()
    for svc in data["services"]:
        svc["internal_url"] = f"http://127.0.0.1:{echo(svc['service_name']).port}"
        for tenant in svc.get("tenant_upstreams", {}):
            svc["tenant_upstreams"][tenant] = f"http://127.0.0.1:{echo(tenant).port}"
        if svc["service_name"] == "status":
            svc["max_request_body_bytes"] = CAP
    data["services"].append(
        {
            "service_name": "uploads",
            "base_path": "/uploads",
            "internal_url": uploads.url,
            "timeout_ms": 5000,
            "rbac_required": False,
        }
    )
    data["services"].append(
        {
            "service_name": "capped",
            "base_path": "/capped",
            "internal_url": f"http://127.0.0.1:{echo('capped').port}",
            "timeout_ms": 5000,
            "rbac_required": False,
            "max_request_body_bytes": CAP,
        }
    )
    path = tmp_path / "catalog" / "service_catalog.json"
    path.parent.mkdir()
    write_json(path, data)
    return path


@pytest.fixture
def edge(
    edge_catalog: Path, authz: stack.Authz, tmp_path: Path, transport: str
) -> Iterator[stack.Envoy]:
    xds = stack.start_xds(
        edge_catalog,
        tmp_path,
        transport=transport,
        args=[
            *("--request-headers-timeout-ms", str(TIMEOUT_MS)),
            *("--idle-timeout-ms", str(TIMEOUT_MS)),
        ],
    )
    proxy = stack.start_envoy(xds, tmp_path, authz=authz)
    try:
        wait.wait_until(
            lambda: (
                (r := http.try_get(proxy.url + "/orders/1", tokens.bearer())) is not None
                and r.status == 200
            ),
            timeout=20,
            what="routing through ext_authz",
        )
        yield proxy
    finally:
        proxy.proc.stop()
        xds.proc.stop()


def call(envoy: stack.Envoy, path: str, headers: dict[str, str] | None = None) -> http.Response:
    return http.http("GET", envoy.url + path, headers)


def assert_json_denial(resp: http.Response, status: int) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error", "message", "request_id"}, body


def test_identity_headers_spelled_with_underscores_are_refused(edge: stack.Envoy) -> None:
    for path, headers in (
        ("/status/x", {"x_user_id": "root"}),
        ("/status/x", {"x_user_roles": "admin", "x_tenant_id": "b"}),
        ("/orders/1", {**tokens.bearer(), "x_user_id": "root"}),
        ("/orders/1", {**tokens.bearer(), "X_User_Id": "root"}),
    ):
        assert_json_denial(call(edge, path, headers), 400)


def _raw(envoy: stack.Envoy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", envoy.listener_port), timeout=15)
    return sock


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reading and discarding what it sends)."""
    started = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def test_a_slowloris_client_is_closed_within_the_header_timeout(edge: stack.Envoy) -> None:
    sock = _raw(edge)
    with sock:
        sock.sendall(b"GET /status/x HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        elapsed = _closed_after(sock)
    assert elapsed < TIMEOUT_MS / 1000 + 5


def test_an_idle_connection_is_closed_within_the_idle_timeout(edge: stack.Envoy) -> None:
    sock = _raw(edge)
    with sock:
        sock.sendall(b"GET /status/x HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        elapsed = _closed_after(sock)
    # Envoy closes an idle HTTP/1 connection after the timeout plus its drain (5 s) and
    # delayed close (1 s); before this setting it never did.
    assert elapsed < TIMEOUT_MS / 1000 + 6 + 5


def test_too_many_headers_is_431_never_500(edge: stack.Envoy) -> None:
    token = tokens.bearer()
    for extra in range(80, 101, 2):
        headers = {f"x-h{i}": "v" for i in range(extra)}
        for path, auth in (("/orders/1", token), ("/status/x", {})):
            resp = call(edge, path, {**headers, **auth})
            assert resp.status in (200, 431), (path, extra, resp.status, resp.body)
            if resp.status == 431:
                assert_json_denial(resp, 431)


def test_method_override_headers_never_reach_the_upstream(edge: stack.Envoy) -> None:
    reader = tokens.bearer(roles=["customer"], tenant="globex")
    sneaky = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE"}
    resp = call(edge, "/orders/1", {**reader, **sneaky, "X-Method-Override": "DELETE"})
    assert resp.status == 200
    seen = resp.json()["headers"]
    for name in ("x-http-method-override", "x-http-method", "x-method-override"):
        assert name not in seen


def test_a_denied_request_is_never_invited_to_upload_its_body(edge: stack.Envoy) -> None:
    sock = _raw(edge)
    with sock:
        sock.sendall(
            b"POST /orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
            b"Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n"
        )
        first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 401"), first[:200]


@dataclass
class H2Upload:
    """What an HTTP/2 client that honours `expect: 100-continue` saw: the interim statuses
    before the final answer, the final answer, and whether it was invited to send its body."""

    interim: list[int] = field(default_factory=list)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent_body: bool = False


def _decoded(headers: Iterable[tuple[bytes, bytes]] | None) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers or ()}


def h2_upload(
    envoy: stack.Envoy,
    path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    declare_length: bool = True,
    expect: bool = True,
) -> H2Upload:
    """POST `body` to `path` over h2c (prior knowledge) with `expect: 100-continue`, as a
    client that sends the body only after a 100 and stops at the final answer (sending no more
    of its body). The body goes in DATA frames as Envoy's flow-control windows allow. Without
    `declare_length` no content-length is added (`headers` may hold one); without `expect` the
    body follows the headers at once. No answer (or no 100) within the socket's timeout (15 s)
    fails the test."""
    out = H2Upload()
    conn = H2Connection(H2Configuration(client_side=True))
    unsent = b""  # what the windows have not let through yet
    done = False

    def send_more() -> None:
        nonlocal unsent
        while unsent and out.status is None and not done:
            size = min(len(unsent), conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if size == 0:
                return  # until a WINDOW_UPDATE
            conn.send_data(1, unsent[:size], end_stream=size == len(unsent))
            unsent = unsent[size:]

    def send_body() -> None:
        nonlocal unsent
        out.sent_body = True
        if not body:
            conn.end_stream(1)
        unsent = body
        send_more()

    with socket.create_connection(("127.0.0.1", envoy.listener_port), timeout=15) as sock:
        conn.initiate_connection()
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", path),
            ("content-type", "application/octet-stream"),
            *([("content-length", str(len(body)))] if declare_length else []),
            *([("expect", "100-continue")] if expect else []),
            *headers.items(),
        ]
        conn.send_headers(1, request)
        if not expect:
            send_body()
        sock.sendall(conn.data_to_send())
        while not done:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no answer (or no 100 Continue) within the socket's timeout: {out}")
            assert data, f"connection closed before the answer ended: {out}"
            for event in conn.receive_data(data):
                if isinstance(event, InformationalResponseReceived):
                    out.interim.append(int(_decoded(event.headers)[":status"]))
                    if out.interim[-1] == 100 and out.status is None and not out.sent_body:
                        send_body()
                elif isinstance(event, ResponseReceived):
                    out.headers = _decoded(event.headers)
                    out.status = int(out.headers[":status"])
                elif isinstance(event, DataReceived):
                    out.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, WindowUpdated):
                    send_more()
                elif isinstance(event, StreamEnded | StreamReset):
                    done = True
            sock.sendall(conn.data_to_send())
    return out


def test_a_denied_h2_request_is_never_invited_to_upload_its_body(
    edge: stack.Envoy, uploads: Upstream
) -> None:
    body = b"x" * 16_000
    forged = tokens.bearer(secret=b"not-the-secret-but-long-enough-for-hs256!!")
    for auth in ({}, tokens.bearer("not-a-token"), tokens.bearer(ttl_s=-3600), forged):
        seen = h2_upload(edge, "/uploads/denied", auth, body)
        assert seen.status == 401, seen
        assert seen.interim == [], seen  # no 100 Continue before the denial
        assert not seen.sent_body
        assert seen.headers["content-type"] == "application/json"
        assert set(json.loads(seen.body)) == {"error", "message", "request_id"}
    # An allowed request after the denials reaches the upstream (which records a request
    # before answering it); the denied ones never did.
    barrier = http.http("GET", edge.url + "/uploads/barrier", tokens.bearer())
    assert barrier.status == 200, barrier.body
    assert [(s.method, s.path) for s in uploads.seen()] == [("GET", "/uploads/barrier")]


def test_an_allowed_h2_request_is_invited_then_answered(
    edge: stack.Envoy, uploads: Upstream
) -> None:
    body = b"x" * 16_000
    seen = h2_upload(edge, "/uploads/allowed", tokens.bearer(), body)
    assert seen.interim == [100], seen
    assert seen.sent_body
    assert seen.status == 200, seen
    # The upstream answers only once it has read the whole declared body.
    assert json.loads(seen.body)["headers"]["content-length"] == str(len(body))
    [request] = uploads.seen()
    assert (request.method, request.path) == ("POST", "/uploads/allowed")
    # The 100 is the upstream's, which Envoy forwarded only after ext_authz allowed the request.
    assert request.headers["expect"] == "100-continue"


@pytest.mark.parametrize("path", LOOKALIKES)
def test_a_look_alike_of_a_longer_service_is_refused(edge: stack.Envoy, path: str) -> None:
    admin = tokens.bearer(roles=["admin"], tenant="globex")
    resp = call(edge, path, admin)
    if resp.status == 200:  # routed to the longer service itself is fine too
        assert resp.json()["service"] == "admin", resp.json()
    else:
        assert_json_denial(resp, 400)


def test_paths_that_merely_start_alike_still_reach_the_shorter_service(edge: stack.Envoy) -> None:
    admin = tokens.bearer(roles=["admin"], tenant="globex")
    for path in ("/orders/administrators", "/orders/1;x", "/orders/admins.json"):
        resp = call(edge, path, admin)
        assert resp.status == 200, (path, resp.body)
        assert resp.json()["service"] == "orders"


def test_a_body_above_the_services_limit_is_413(edge: stack.Envoy) -> None:
    ok = http.http("POST", edge.url + "/status/x", {}, b"x" * CAP)
    assert ok.status == 200
    assert ok.json()["body_bytes"] == CAP
    assert_json_denial(http.http("POST", edge.url + "/status/x", {}, b"x" * (CAP + 1)), 413)


class _Responses:
    """HTTP/1.1 responses read off a raw socket, one head (interim or final) at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffered = b""

    def _more(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"nothing within the socket's timeout after {self.buffered!r}")
        assert chunk, f"connection closed after {self.buffered!r}"
        self.buffered += chunk

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffered:
            self._more()
        head, _, self.buffered = self.buffered.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def body(self, headers: dict[str, str]) -> bytes:
        length = int(headers["content-length"])
        while len(self.buffered) < length:
            self._more()
        out, self.buffered = self.buffered[:length], self.buffered[length:]
        return out


def _expect_continue(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: x",
        f"Content-Length: {length}",
        "Content-Type: application/octet-stream",
        "Expect: 100-continue",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_allowed_upload_within_the_body_limit_is_invited_before_its_body(
    edge: stack.Envoy,
) -> None:
    # The client sends its body only after the 100: were the request held until its body
    # arrived (a buffered body limit), no 100 would come and the socket's timeout fails this.
    body = b"x" * CAP  # the limit itself is allowed
    with _raw(edge) as sock:
        sock.sendall(_expect_continue("/capped/h1", len(body), tokens.bearer()))
        answers = _Responses(sock)
        status, _ = answers.head()
        assert status == 100, status
        sock.sendall(body)
        status, headers = answers.head()
        assert status == 200, (status, answers.buffered)
        echoed = json.loads(answers.body(headers))
    assert echoed["service"] == "capped"
    assert echoed["body_bytes"] == len(body)
    # The 100 is the upstream's, which Envoy forwarded only after ext_authz allowed the request.
    assert echoed["headers"]["expect"] == "100-continue"


def test_an_allowed_h2_upload_within_the_body_limit_is_invited_before_its_body(
    edge: stack.Envoy,
) -> None:
    body = b"x" * CAP
    seen = h2_upload(edge, "/capped/h2", tokens.bearer(), body)
    assert seen.interim == [100], seen
    assert seen.sent_body
    assert seen.status == 200, seen
    echoed = json.loads(seen.body)
    assert (echoed["service"], echoed["body_bytes"]) == ("capped", len(body))
    assert echoed["headers"]["expect"] == "100-continue"


def test_a_declared_length_above_the_body_limit_is_413_and_never_invited(
    edge: stack.Envoy,
) -> None:
    too_long = {**tokens.bearer(), "content-length": str(CAP + 1)}
    seen = h2_upload(edge, "/capped/h2", too_long, b"x", declare_length=False)
    assert (seen.status, seen.interim, seen.sent_body) == (413, [], False), seen
    assert json.loads(seen.body)["error"] == "payload_too_large"
    with _raw(edge) as sock:
        sock.sendall(_expect_continue("/capped/h1", CAP + 1, tokens.bearer()))
        answers = _Responses(sock)
        status, headers = answers.head()
        assert status == 413, status
        assert json.loads(answers.body(headers))["error"] == "payload_too_large"


def _chunked_post(envoy: stack.Envoy, path: str, body: bytes) -> http.Response:
    """POST `body` with `Transfer-Encoding: chunked` (no declared length), in 16 KiB chunks."""
    conn = HTTPConnection("127.0.0.1", envoy.listener_port, timeout=15)
    try:
        chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
        conn.request("POST", path, body=chunks, headers=tokens.bearer(), encode_chunked=True)
        resp = conn.getresponse()
        return http.Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def test_a_body_without_a_declared_length_is_held_to_the_limit(edge: stack.Envoy) -> None:
    ok = _chunked_post(edge, "/capped/chunked", b"x" * CAP)
    assert ok.status == 200, ok.body
    assert ok.json()["body_bytes"] == CAP  # buffered whole, then sent with its length
    assert_json_denial(_chunked_post(edge, "/capped/chunked", b"x" * (CAP + 1)), 413)
    # The same over h2 without a content-length (sent without waiting for an invitation).
    bearer = tokens.bearer()
    seen = h2_upload(edge, "/capped/h2", bearer, b"x" * CAP, declare_length=False, expect=False)
    assert seen.status == 200, seen
    assert json.loads(seen.body)["body_bytes"] == CAP
    seen = h2_upload(
        edge, "/capped/h2", bearer, b"x" * (CAP + 1), declare_length=False, expect=False
    )
    assert seen.status == 413, seen
    assert json.loads(seen.body)["error"] == "payload_too_large"


def test_an_h2_body_longer_than_its_declared_length_is_refused(edge: stack.Envoy) -> None:
    # A declared length within the limit skips the buffer: Envoy's codec holds the body to it
    # (the stream is reset; the upstream never answers).
    declared = {**tokens.bearer(), "content-length": "1000"}
    seen = h2_upload(edge, "/capped/h2", declared, b"x" * 16384, declare_length=False)
    assert seen.interim == [100], seen
    assert seen.sent_body
    assert seen.status != 200, seen


def test_an_unreachable_ext_authz_is_503_with_a_json_body(
    edge_catalog: Path, tmp_path: Path, transport: str
) -> None:
    xds = stack.start_xds(edge_catalog, tmp_path, name="xds-alone", transport=transport)
    proxy = stack.start_envoy(xds, tmp_path, node_id="no-authz", authz_port=free_port())
    try:

        def answered() -> http.Response | None:
            resp = http.try_get(proxy.url + "/orders/1", tokens.bearer())
            return resp if resp is not None and resp.status != 404 else None

        resp = wait.wait_until(answered, timeout=20, what="a routed answer")
        assert_json_denial(resp, 503)
        assert resp.json()["error"] == "authz_unavailable"
        assert resp.json()["request_id"]
    finally:
        proxy.proc.stop()
        xds.proc.stop()


def test_local_replies_for_bad_http_are_json(edge: stack.Envoy) -> None:
    sock = _raw(edge)
    with sock:
        sock.sendall(b"GET /status/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert set(json.loads(body)) == {"error", "message", "request_id"}


def _raw_get(envoy: stack.Envoy, path: str, lines: Iterable[tuple[str, str]]) -> http.Response:
    """GET `path` with header `lines` exactly as given (repeated names stay repeated)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in lines)
    with _raw(envoy) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return http.Response(int(status_line.split()[1]), headers, body)


def test_repeated_header_lines_are_counted_as_envoy_counts_them(edge: stack.Envoy) -> None:
    """A header name repeated near the limit is a 431 with a JSON body, never Envoy's empty
    500, and a refused request is not counted against the user's limit."""
    statuses = {}
    for name, extra in itertools.product(("x-dup", "cookie"), range(80, 101)):
        user = f"lines-{name}-{extra}"
        auth = ("authorization", tokens.bearer(sub=user)["authorization"])
        resp = _raw_get(edge, "/orders/1", [auth, *[(name, "v=1")] * extra])
        statuses[name, extra] = resp.status
        assert resp.status in (200, 431), (name, extra, resp.status, resp.body)
        if resp.status != 431:
            continue
        assert_json_denial(resp, 431)
        after = _raw_get(edge, "/orders/1", [auth])
        assert after.status == 200
        # The first request counted for this user: 119 of 120 left (nothing counted before).
        assert after.headers["ratelimit"].startswith('"orders";r=119;'), after.headers
    # Below Envoy's own limit (100 lines), ext_authz is the one that refuses.
    assert statuses["x-dup", 80] == statuses["cookie", 80] == 200
    assert statuses["x-dup", 90] == statuses["cookie", 90] == 431
