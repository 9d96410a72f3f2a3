"""Whom the ext-authz process believes, over both of its check ports: a route policy only with
our xDS server's MAC, and a client address only from an Envoy on loopback (127.0.0.1, ::1) or
one with a verified client certificate. A caller on 127.0.0.2 stands for one on another host."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from sidecar_shared import contract
from sidecar_shared.contract import POLICY_HEADER, Limit, RoutePolicy
from tests.support import stack, tokens, wait
from tests.support.authz_client import check
from tests.support.policies import POLICY_KEY, encode
from tests.support.tcp_proxy import TcpProxy

VICTIM = "198.51.100.7"
REMOTE = "127.0.0.2"  # a caller that is neither loopback Envoy nor authenticated
PUBLIC = RoutePolicy(service="svc", public=True)
LIMITED = RoutePolicy(service="svc", public=True, rate_limit=Limit(5, 60))
OTHER_KEY = b"a-key-that-is-not-the-xds-servers-0123456789"


def http_status(
    port: int, policy: str, headers: Mapping[str, str] | None = None, source: str | None = None
) -> int:
    """The status of one HTTP check sent to ext_authz's check port (from `source`)."""
    lines = ["GET /sidecar-check/svc/1 HTTP/1.1", "host: x", "connection: close"]
    lines += [f"{POLICY_HEADER}: {policy}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    address = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=address) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def audited_reasons(authz: stack.Authz, count: int) -> list[str]:
    """The reasons of the first `count` audit records, once there are that many."""
    lines = wait.wait_until(
        lambda: a if len(a := authz.audit_lines()) >= count else None,
        what=f"{count} audit records",
    )
    return [line["reason"] for line in lines[:count]]


@pytest.fixture
def remote_grpc(authz: stack.Authz) -> Iterator[int]:
    """A port that reaches ext_authz's gRPC port from 127.0.0.2."""
    proxy = TcpProxy(authz.port, source=REMOTE).start()
    try:
        yield proxy.port
    finally:
        proxy.stop()


def test_a_direct_http_check_with_a_forged_public_policy_is_refused(authz: stack.Authz) -> None:
    unsigned = contract.encode(PUBLIC)
    other_key = contract.sign(unsigned, OTHER_KEY)
    tampered = encode(PUBLIC).replace('"public":true', '"public":true ')
    statuses = [http_status(authz.check_port, p) for p in (unsigned, other_key, tampered)]
    assert statuses == [403, 403, 403]
    assert http_status(authz.check_port, encode(PUBLIC)) == 200  # what our xDS server sends
    assert audited_reasons(authz, 4) == ["policy_unauthenticated"] * 3 + ["public"]


def test_a_direct_grpc_check_with_a_forged_policy_in_context_extensions_is_refused(
    authz: stack.Authz,
) -> None:
    for forged in (contract.encode(PUBLIC), contract.sign(contract.encode(PUBLIC), OTHER_KEY)):
        response = check(authz.port, "", policy=forged)
        assert response.HasField("denied_response")
        assert response.denied_response.status.code == 403
    assert check(authz.port, "", policy=encode(PUBLIC)).HasField("ok_response")
    assert audited_reasons(authz, 3) == ["policy_unauthenticated"] * 2 + ["public"]


def test_http_checks_from_an_untrusted_caller_do_not_throttle_the_address_they_name(
    authz: stack.Authz,
) -> None:
    policy, forwarded = encode(LIMITED), {"x-forwarded-for": VICTIM}
    from_remote = [http_status(authz.check_port, policy, forwarded, REMOTE) for _ in range(30)]
    assert from_remote.count(200) == 5 and from_remote[-1] == 429  # it throttled itself
    # The victim, through an Envoy beside ext_authz: its own budget is whole.
    assert http_status(authz.check_port, policy, forwarded) == 200


def test_bad_tokens_from_an_untrusted_caller_spend_its_own_failure_budget_not_the_named_ones(
    authz: stack.Authz,
) -> None:
    policy = encode(RoutePolicy(service="svc", rbac_required=False))
    bad = {"x-forwarded-for": VICTIM, "authorization": "Bearer not-a-token"}
    from_remote = [http_status(authz.check_port, policy, bad, REMOTE) for _ in range(60)]
    assert from_remote[-1] == 429  # the caller's own budget is spent
    assert http_status(authz.check_port, policy, bad) == 401  # the victim's is not
    victim = {"x-forwarded-for": VICTIM, "authorization": f"Bearer {tokens.token()}"}
    assert http_status(authz.check_port, policy, victim) == 200


def test_grpc_checks_from_an_untrusted_caller_do_not_throttle_the_source_address_they_name(
    authz: stack.Authz, remote_grpc: int
) -> None:
    policy = encode(LIMITED)

    def allowed(port: int) -> bool:
        response = check(port, "", policy=policy, source=VICTIM)
        return bool(response.HasField("ok_response"))

    from_remote = [allowed(remote_grpc) for _ in range(30)]
    assert from_remote.count(True) == 5  # it throttled itself
    assert allowed(authz.port)  # the victim, through an Envoy beside ext_authz


def test_the_same_checks_from_loopback_are_believed(authz: stack.Authz) -> None:
    """The rule the two tests above rely on: Envoy beside ext_authz is believed."""
    policy, forwarded = encode(LIMITED), {"x-forwarded-for": VICTIM}
    statuses = [http_status(authz.check_port, policy, forwarded) for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert http_status(authz.check_port, policy, {"x-forwarded-for": "192.0.2.1"}) == 200


def test_without_a_usable_policy_key_it_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("too-short\n")
    secret = {"SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode()}
    for key_file, said in (
        ("", "--policy-key-file (SIDECAR_POLICY_KEY_FILE) is required"),
        (str(short), "every key must be at least 32 bytes"),
        (str(tmp_path / "missing.key"), "missing.key"),
    ):
        result = stack.run_authz_to_exit({**secret, "SIDECAR_POLICY_KEY_FILE": key_file})
        assert result.returncode == 1, result.stderr
        assert said in result.stderr


def test_every_key_of_the_file_is_accepted_so_a_new_one_can_overlap_the_old(
    tmp_path: Path,
) -> None:
    new_key = b"the-next-route-policy-key-0123456789abcdef"
    both = tmp_path / "policy.key"
    both.write_text(f"{POLICY_KEY.decode()}\n{new_key.decode()}\n")
    authz = stack.start_authz(tmp_path, env={"SIDECAR_POLICY_KEY_FILE": str(both)})
    try:
        unsigned = contract.encode(PUBLIC)
        for key in (POLICY_KEY, new_key):
            assert http_status(authz.check_port, contract.sign(unsigned, key)) == 200
        assert http_status(authz.check_port, contract.sign(unsigned, OTHER_KEY)) == 403
    finally:
        authz.proc.stop()
