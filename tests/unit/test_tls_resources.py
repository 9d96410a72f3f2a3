"""TLS without Envoy: the PEM checks, the catalog's `tls` field (its errors carry JSON paths and
name the file), the listener's and clusters' TLS messages, the SDS files, the settings."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from sidecar_shared.errors import SettingsError
from tests.support.mtls import Ca, Issued
from xds_server import pem, settings
from xds_server.catalog import CatalogError, json_schema, parse_catalog
from xds_server.resources.clusters import cluster
from xds_server.resources.common import Options
from xds_server.resources.listener import listener
from xds_server.resources.tls import DEFAULT_CIPHERS, ListenerTls, sds_file, secrets
from xds_server.sds_files import SdsWriter


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return Ca(tmp_path / "pki")


@pytest.fixture
def client(ca: Ca) -> Issued:
    return ca.client("envoy")


def test_a_good_pair_and_ca_have_no_problems(ca: Ca, client: Issued) -> None:
    assert pem.pair_problems(client.cert_file, client.key_file) == []
    assert pem.ca_problems(ca.ca_file) == []


def test_each_problem_names_its_file(ca: Ca, client: Issued, tmp_path: Path) -> None:
    other = ca.client("other")
    expired = ca.issue("old", client=True, expired=True)
    missing = tmp_path / "missing.pem"
    assert pem.pair_problems(client.cert_file, other.key_file) == [
        ("key", f"{other.key_file}: the key does not match the certificate in {client.cert_file}")
    ]
    ((which, message),) = pem.pair_problems(expired.cert_file, expired.key_file)
    assert which == "cert" and message.startswith(f"{expired.cert_file}: the certificate expired")
    ((which, message),) = pem.pair_problems(missing, client.key_file)
    assert which == "cert" and message.startswith(f"{missing}: cannot be read")
    assert pem.pair_problems(client.cert_file, client.cert_file) == [
        ("key", f"{client.cert_file}: not an unencrypted PEM private key")
    ]
    assert pem.ca_problems(client.key_file) == [f"{client.key_file}: not a PEM certificate"]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    assert "expired" in pem.ca_problems(ca.ca_file, clock=lambda: later)[0]
    earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    assert (
        "not valid before"
        in pem.pair_problems(client.cert_file, client.key_file, clock=lambda: earlier)[0][1]
    )


def svc(tls: dict[str, Any], url: str = "https://10.0.0.1:8443") -> dict[str, Any]:
    return {"service_name": "s", "base_path": "/s", "internal_url": url, "tls": tls}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog({"services": [data]})
    return [str(p) for p in caught.value.problems]


def test_the_catalog_field_is_checked_with_json_paths(ca: Ca, client: Issued) -> None:
    good = {
        "ca_file": str(ca.ca_file),
        "cert_file": str(client.cert_file),
        "key_file": str(client.key_file),
    }
    assert parse_catalog({"services": [svc(good)]}).services[0].tls is not None
    assert problems(svc({**good, "ca_file": "ca.pem"})) == [
        "services[0].tls.ca_file: must be an absolute path (Envoy reads it, from its own directory)"
    ]
    assert problems(svc({"ca_file": str(ca.ca_file), "cert_file": str(client.cert_file)})) == [
        "services[0].tls: cert_file and key_file go together"
    ]
    assert "verify needs ca_file" in problems(svc({"verify": True}))[0]
    assert problems(svc({**good, "sni": "not a name"}))[0].startswith("services[0].tls.sni: ")
    assert problems(svc({**good, "verfy": False})) == [
        "services[0].tls.verfy: unknown field (check its spelling)"
    ]
    assert problems(svc(good, url="http://10.0.0.1:80")) == [
        "services[0].tls: applies to https:// URLs, and the service has none"
    ]
    other_key = ca.client("other").key_file
    assert problems(svc({**good, "key_file": str(other_key)})) == [
        f"services[0].tls.key_file: {other_key}: the key does not match the certificate in "
        f"{client.cert_file}"
    ]


def test_file_problems_are_found_again_when_the_catalog_did_not_change(
    ca: Ca, client: Issued
) -> None:
    data = {"services": [svc({"ca_file": str(ca.ca_file)})]}
    parse_catalog(data)
    ca.ca_file.write_text("no longer a certificate")
    with pytest.raises(CatalogError, match=r"services\[0\]\.tls\.ca_file: .*not a PEM"):
        parse_catalog(data)


def test_the_listener_speaks_tls_only_when_configured(tmp_path: Path) -> None:
    catalog = parse_catalog({"services": []})
    plain = listener(catalog, Options())
    assert not plain.filter_chains[0].HasField("transport_socket")
    tls = ListenerTls("/c/cert.pem", "/c/key.pem", "/c/ca.pem")
    made = listener(catalog, Options(listener_tls=tls, sds_dir="/run/sds"))
    context = downstream(made)
    common = context.common_tls_context
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    assert common.tls_params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_2
    assert tuple(common.tls_params.cipher_suites) == DEFAULT_CIPHERS
    assert context.require_client_certificate.value
    (cert,) = common.tls_certificate_sds_secret_configs
    source = cert.sds_config.path_config_source
    assert (source.path, source.watched_directory.path) == (
        f"/run/sds/{cert.name}.json",
        "/run/sds",
    )
    assert common.validation_context_sds_secret_config.name != cert.name
    no_ca = downstream(listener(catalog, Options(listener_tls=ListenerTls("/c/c", "/c/k"))))
    assert not no_ca.require_client_certificate.value
    assert not no_ca.common_tls_context.HasField("validation_context_sds_secret_config")


def downstream(made: listener_pb2.Listener) -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    assert made.filter_chains[0].transport_socket.typed_config.Unpack(context)
    return context


def upstream_context(data: dict[str, Any]) -> tls_pb2.UpstreamTlsContext:
    service = parse_catalog({"services": [data]}).services[0]
    made = cluster(service, service.upstreams, sds_dir="/run/sds")
    context = tls_pb2.UpstreamTlsContext()
    assert made.transport_socket.typed_config.Unpack(context)
    return context


def test_a_cluster_presents_the_client_certificate_and_verifies_ca_and_name(
    ca: Ca, client: Issued
) -> None:
    files = {
        "ca_file": str(ca.ca_file),
        "cert_file": str(client.cert_file),
        "key_file": str(client.key_file),
    }
    context = upstream_context(svc(files))
    common = context.common_tls_context
    assert context.sni == "10.0.0.1"
    assert len(common.tls_certificate_sds_secret_configs) == 1
    combined = common.combined_validation_context
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    # An IP upstream without `sni`: its certificate must name the IP address.
    assert (san.san_type, san.matcher.exact) == (
        common_pb2.SubjectAltNameMatcher.IP_ADDRESS,
        "10.0.0.1",
    )
    named = upstream_context(svc({**files, "sni": "orders.internal"}))
    (san,) = (
        named.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    )
    assert (named.sni, san.san_type, san.matcher.exact) == (
        "orders.internal",
        common_pb2.SubjectAltNameMatcher.DNS,
        "orders.internal",
    )
    unverified = upstream_context(svc({"verify": False}))
    assert not unverified.common_tls_context.HasField("combined_validation_context")
    # Without `tls`, an https upstream is as it was: SNI, no verification, no certificate.
    legacy = upstream_context(
        {"service_name": "s", "base_path": "/s", "internal_url": "https://h:1"}
    )
    assert legacy == tls_pb2.UpstreamTlsContext(sni="h")


def test_sds_files_name_the_pem_files_and_are_written_once(
    tmp_path: Path, ca: Ca, client: Issued
) -> None:
    catalog = parse_catalog(
        {
            "services": [
                svc(
                    {
                        "ca_file": str(ca.ca_file),
                        "cert_file": str(client.cert_file),
                        "key_file": str(client.key_file),
                    }
                )
            ]
        }
    )
    found = secrets(catalog, ListenerTls("/l/cert.pem", "/l/key.pem"))
    assert len(found) == 3
    listener_cert = next(s for n, s in found.items() if "listener-cert" in n)
    doc = json.loads(sds_file(listener_cert))
    (resource,) = doc["resources"]
    assert resource["@type"].endswith("tls.v3.Secret")
    assert resource["tlsCertificate"] == {
        "certificateChain": {"filename": "/l/cert.pem"},
        "privateKey": {"filename": "/l/key.pem"},
    }
    # Paths only: no key material is in the files (or anywhere in Envoy's config).
    assert all(b"PRIVATE KEY" not in sds_file(s) for s in found.values())
    sds = tmp_path / "sds"
    write = SdsWriter(str(sds))
    write(found)
    written = {p.name: p.stat().st_mtime_ns for p in sds.iterdir()}
    assert sorted(written) == sorted(f"{n}.json" for n in found)
    assert (sds.stat().st_mode & 0o777) == 0o700
    write(found)
    assert {p.name: p.stat().st_mtime_ns for p in sds.iterdir()} == written


def test_the_settings_check_the_files_and_ciphers(ca: Ca, tmp_path: Path) -> None:
    server = ca.server()
    base = ["--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file)]
    conf = settings.parse([*base, "--tls-sds-dir", str(tmp_path / "sds")], environ={})
    assert conf.translate.listener_tls == ListenerTls(str(server.cert_file), str(server.key_file))
    assert conf.translate.sds_dir == str(tmp_path / "sds")
    from_env = settings.parse(
        [],
        environ={
            "SIDECAR_TLS_CERT": str(server.cert_file),
            "SIDECAR_TLS_KEY": str(server.key_file),
        },
    )
    assert from_env.translate.listener_tls is not None
    assert settings.parse([], environ={}).translate.listener_tls is None
    with pytest.raises(SettingsError, match="--tls-ciphers: 'RC4-MD5X'"):
        settings.parse([*base, "--tls-ciphers", "RC4-MD5X"], environ={})
    with pytest.raises(SettingsError, match=r"--tls-client-ca: .*not a PEM certificate"):
        settings.parse([*base, "--tls-client-ca", str(server.key_file)], environ={})
    with pytest.raises(SettingsError, match="go together"):
        settings.parse(["--tls-key", str(server.key_file)], environ={})


def test_the_json_schema_agrees_on_the_field_s_shape(ca: Ca, client: Issued) -> None:
    """What a schema can say of `tls` (its files aside), it says as `validate` does."""
    schema = jsonschema.Draft202012Validator(json_schema())
    files = {"cert_file": str(client.cert_file), "key_file": str(client.key_file)}
    shapes: list[dict[str, Any]] = [
        {"ca_file": str(ca.ca_file)},
        {"ca_file": str(ca.ca_file), **files},
        {"verify": False},
        {"verify": False, **files, "sni": "a.b"},
        {"verify": True},
        {},
        {"ca_file": "relative.pem"},
        {"ca_file": str(ca.ca_file), "cert_file": str(client.cert_file)},
        {"verify": False, "key_file": str(client.key_file)},
        {"verify": False, "sni": "a b"},
        {"verify": False, "sni": "-a"},
        {"verify": "yes"},
        {"verify": False, "other": 1},
    ]
    for tls in shapes:
        data = {"services": [svc(tls)]}
        schema_ok = not any(schema.iter_errors(data))
        try:
            parse_catalog(data)
            validate_ok = True
        except CatalogError:
            validate_ok = False
        assert schema_ok == validate_ok, tls


def test_the_redirect_needs_https_and_a_port_of_its_own(ca: Ca) -> None:
    server = ca.server()
    base = ["--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file)]
    conf = settings.parse([*base, "--listener-port", "8443", "--http-redirect", "8080"], environ={})
    assert conf.translate.http_redirect_port == 8080
    with pytest.raises(SettingsError, match="needs --tls-cert"):
        settings.parse(["--http-redirect", "8080"], environ={})
    with pytest.raises(SettingsError, match="other than --listener-port"):
        settings.parse([*base, "--listener-port", "8443", "--http-redirect", "8443"], environ={})
