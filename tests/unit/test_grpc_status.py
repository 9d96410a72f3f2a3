"""The gRPC status a gRPC client gets for each denial (`ext_authz.grpc_status`)."""

from __future__ import annotations

import pytest

from ext_authz.grpc_status import denial_headers

GRPC = {"content-type": "application/grpc+proto"}


@pytest.mark.parametrize("status", [429, 431])
def test_limits_are_resource_exhausted_for_grpc_calls(status: int) -> None:
    assert denial_headers(status, GRPC) == (("grpc-status", "8"),)


@pytest.mark.parametrize("status", [401, 403, 500])
def test_envoy_maps_the_other_denials_itself(status: int) -> None:
    assert denial_headers(status, GRPC) == ()


def test_an_http_client_never_gets_a_grpc_status() -> None:
    assert denial_headers(429, {"content-type": "application/json"}) == ()
    assert denial_headers(429, {}) == ()
