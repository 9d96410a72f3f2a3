"""Private by default: every port of ours binds loopback unless a flag says otherwise; the TLS
settings of each server go together; a port others can reach without a client certificate is
named in a warning; the bootstrap presents Envoy's client certificate when given one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ext_authz import app as authz_app
from ext_authz import settings as authz_settings
from sidecar import cli
from sidecar.bootstrap import XDS_CLUSTER, BootstrapOptions, ClientTls, render
from sidecar_shared import tls
from sidecar_shared.contract import AUTHZ_CLUSTER
from sidecar_shared.errors import SettingsError
from xds_server import app as xds_app
from xds_server import settings as xds_settings

pytestmark = pytest.mark.unit


def test_every_server_port_binds_loopback_by_default() -> None:
    xds = xds_settings.parse([], {})
    authz = authz_settings.parse([], {})
    for host in (xds.host, xds.http_host, authz.host, authz.http_host):
        assert tls.is_loopback(host), host
    assert xds.tls is None and authz.tls is None
    assert xds_app.exposure_warnings(xds) == []
    assert authz_app.exposure_warnings(authz) == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("", False),
        ("[::]", False),
        ("10.0.0.5", False),
        ("xds-server", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert tls.is_loopback(host) is loopback


def test_tls_flags_and_variables_of_each_server() -> None:
    xds = xds_settings.parse(
        ["--xds-tls-cert", "c.pem", "--xds-tls-key", "k.pem"],
        {"SIDECAR_XDS_TLS_CLIENT_CA": "ca.pem"},
    )
    assert xds.tls == tls.ServerTls(Path("c.pem"), Path("k.pem"), Path("ca.pem"))
    authz = authz_settings.parse(
        [],
        {"SIDECAR_AUTHZ_TLS_CERT": "a.pem", "SIDECAR_AUTHZ_TLS_KEY": "ak.pem"},
    )
    assert authz.tls == tls.ServerTls(Path("a.pem"), Path("ak.pem"), None)
    assert not authz.tls.authenticates_clients


@pytest.mark.parametrize(
    "argv",
    [["--xds-tls-cert", "c.pem"], ["--xds-tls-key", "k.pem"], ["--xds-tls-client-ca", "ca.pem"]],
)
def test_tls_settings_that_do_not_go_together_are_refused(argv: list[str]) -> None:
    with pytest.raises(SettingsError, match="--xds-tls-cert and --xds-tls-key go together"):
        xds_settings.parse(argv, {})


def test_a_port_others_can_reach_without_a_client_certificate_is_warned_about() -> None:
    plain = xds_settings.parse(["--xds-host", "0.0.0.0"], {})
    (warning,) = xds_app.exposure_warnings(plain)
    assert "the xDS port listens on 0.0.0.0:18000" in warning
    assert "--xds-tls-client-ca" in warning and "route policy" in warning
    server_only = xds_settings.parse(
        ["--xds-host", "0.0.0.0", "--xds-tls-cert", "c", "--xds-tls-key", "k"], {}
    )
    assert len(xds_app.exposure_warnings(server_only)) == 1  # TLS alone authenticates no client
    mutual = xds_settings.parse(
        ["--xds-host", "0.0.0.0", "--xds-tls-cert", "c", "--xds-tls-key", "k"],
        {"SIDECAR_XDS_TLS_CLIENT_CA": "ca"},
    )
    assert xds_app.exposure_warnings(mutual) == []
    ops = xds_settings.parse(["--xds-http-host", "0.0.0.0"], {})
    (warning,) = xds_app.exposure_warnings(ops)
    assert "the xDS status port listens on 0.0.0.0:18080" in warning


def test_ext_authz_warns_for_each_check_port_and_the_ops_port() -> None:
    exposed = authz_settings.parse(["--authz-host", "0.0.0.0", "--authz-http-host", "0.0.0.0"], {})
    warnings = authz_app.exposure_warnings(exposed)
    assert [w.split(" listens")[0] for w in warnings] == [
        "the ext_authz gRPC port",
        "the ext_authz HTTP check port",
        "the ext_authz ops port",
    ]
    mutual = authz_settings.parse(
        ["--authz-host", "0.0.0.0"],
        {
            "SIDECAR_AUTHZ_TLS_CERT": "c",
            "SIDECAR_AUTHZ_TLS_KEY": "k",
            "SIDECAR_AUTHZ_TLS_CLIENT_CA": "ca",
        },
    )
    assert authz_app.exposure_warnings(mutual) == []


def _cluster(options: BootstrapOptions, name: str) -> dict[str, Any]:
    clusters: list[dict[str, Any]] = render(options)["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == name]
    return cluster


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_bootstrap_presents_envoys_client_certificate_to_both_servers(
    transport: str,
) -> None:
    client = ClientTls("/tls/envoy.pem", "/tls/envoy-key.pem", "/tls/ca.pem")
    options = BootstrapOptions(xds_host="xds.internal", authz_transport=transport, tls=client)
    for name, host in ((XDS_CLUSTER, "xds.internal"), (AUTHZ_CLUSTER, "127.0.0.1")):
        socket = _cluster(options, name)["transport_socket"]
        context = socket["typed_config"]["common_tls_context"]
        assert context["tls_certificates"] == [
            {
                "certificate_chain": {"filename": "/tls/envoy.pem"},
                "private_key": {"filename": "/tls/envoy-key.pem"},
            }
        ]
        validation = context["validation_context"]
        assert validation["trusted_ca"] == {"filename": "/tls/ca.pem"}
        (san,) = validation["match_typed_subject_alt_names"]
        assert san["matcher"] == {"exact": host}
        assert san["san_type"] == ("DNS" if host == "xds.internal" else "IP_ADDRESS")
    assert "transport_socket" not in _cluster(BootstrapOptions(), XDS_CLUSTER)


def test_sidecar_bootstrap_takes_the_client_certificate_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bootstrap", "--envoy-tls-cert", "c", "--envoy-tls-key", "k", "--envoy-tls-ca", "ca"]
    assert cli.main(argv) == 0
    assert '"transport_socket"' in capsys.readouterr().out
    assert cli.main(["bootstrap", "--envoy-tls-cert", "c"]) == 2
    assert "go together" in capsys.readouterr().err
