"""Which nodes the xDS server takes for proxyless gRPC clients (`xds_server.proxyless`)."""

from __future__ import annotations

import pytest

from xds_server.proxyless import is_proxyless_grpc


@pytest.mark.parametrize("agent", ["gRPC C-core linux Python", "gRPC Go", "gRPC Java"])
def test_grpc_libraries_are_proxyless(agent: str) -> None:
    assert is_proxyless_grpc(agent)


@pytest.mark.parametrize("agent", ["envoy", "", "grpc-health-probe", "gRPCish"])
def test_envoy_and_others_are_not(agent: str) -> None:
    assert not is_proxyless_grpc(agent)
