"""Who the admin API and CSDS answer (`admin.caller`), and CSDS's view of a proxy that NACKed;
`sidecar explain` prints a readable, escaped table and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2

from sidecar import cli
from sidecar.explain import table
from sidecar_shared.tls import ServerTls
from tests.support.catalogs import SAMPLE
from tests.support.snapshots import snap
from tests.support.tokens import TEST_SECRET, token
from xds_server import typeurls
from xds_server.admin import caller, peer_host
from xds_server.csds import client_config
from xds_server.proxies import ProxyStatus

MTLS = ServerTls(Path("c.pem"), Path("k.pem"), Path("ca.pem"))
TLS_ONLY = ServerTls(Path("c.pem"), Path("k.pem"))


class Peer:
    def __init__(self, peer: str, sans: tuple[str, ...] = ()) -> None:
        self._peer = peer
        self._auth = {"x509_subject_alternative_name": [s.encode() for s in sans]} if sans else {}

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self._auth

    async def abort(self, code: object, details: str) -> None:
        raise AssertionError("not called here")


@pytest.mark.parametrize(
    ("peer", "server", "who"),
    [
        (Peer("ipv4:127.0.0.1:5000"), None, "loopback"),
        (Peer("ipv6:[::1]:5000"), None, "loopback"),
        (Peer("ipv4:127.0.0.1:5000"), TLS_ONLY, "loopback"),
        (Peer("ipv4:192.0.2.2:5000"), None, None),
        (Peer("ipv4:10.0.0.1:5000"), TLS_ONLY, None),
        (Peer("unix:/tmp/s"), None, None),
        # Under mTLS a caller is its certificate, wherever it comes from.
        (Peer("ipv4:127.0.0.1:5000"), MTLS, None),
        (Peer("ipv4:10.0.0.1:5000", ("operator",)), MTLS, "operator"),
    ],
)
def test_the_admin_api_answers_loopback_without_mtls_or_a_verified_certificate(
    peer: Peer, server: ServerTls | None, who: str | None
) -> None:
    assert caller(peer, server) == who


def test_peer_hosts() -> None:
    assert peer_host("ipv4:127.0.0.1:1") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:1") == "::1"
    assert peer_host("unix:/x") == ""


def test_csds_shows_a_nack_with_envoy_s_error_per_resource() -> None:
    snapshot = snap("a", "b")
    proxy = ProxyStatus(1, node_id="edge-1")
    cds = proxy.of(typeurls.CLUSTER)
    current = snapshot.versions[typeurls.CLUSTER]
    cds.sent_version, cds.acked_version = current, "old"
    cds.nacked_version, cds.error = current, "bad cluster"
    config = client_config(proxy, snapshot)
    clusters = [c for c in config.generic_xds_configs if c.type_url == typeurls.CLUSTER]
    assert {c.name for c in clusters} == set(snapshot.resources[typeurls.CLUSTER])
    for c in clusters:
        assert c.config_status == csds_pb2.ERROR
        assert c.client_status == config_dump_shared_pb2.ClientResourceStatus.NACKED
        assert (c.version_info, c.error_state.details) == ("old", "bad cluster")
    others = [c for c in config.generic_xds_configs if c.type_url != typeurls.CLUSTER]
    assert all(c.config_status == csds_pb2.NOT_SENT for c in others)


def test_remote_text_is_escaped_in_the_table() -> None:
    data = {
        "route": "orders\x1b[2J",
        "service": "orders",
        "steps": [{"name": "token", "verdict": "fail", "detail": "bad\nline\u202e"}],
        "status": 401,
        "reason": "expired",
        "message": "the token expired\r",
    }
    text = table("GET", "/x", data)
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert "orders\\x1b[2J" in text
    assert "bad\\x0aline\\u202e" in text


def test_sidecar_explain_verifies_a_token_with_ext_authz_s_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_JWT_SECRET", TEST_SECRET.decode())
    tok = token(sub="u1", roles=["customer"], tenant="acme")
    code = cli.main(["explain", "--catalog", str(SAMPLE), "--token", tok, "DELETE", "/orders/1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "role     fail" in out
    assert "decision 403 role_not_allowed" in out
    code = cli.main(
        ["explain", "--catalog", str(SAMPLE), "--token", tok, "--json", "GET", "/orders/1"]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (data["status"], data["route"], data["reason"]) == (200, "orders", "ok")


def test_sidecar_explain_without_a_key_for_a_token_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SIDECAR_JWT_SECRET", "SIDECAR_JWT_SECRET_FILE", "SIDECAR_JWKS"):
        monkeypatch.delenv(name, raising=False)
    code = cli.main(["explain", "--catalog", str(SAMPLE), "--token", "a.b.c", "GET", "/orders"])
    assert code == 2
    assert "cannot verify --token" in capsys.readouterr().err
