"""TLS in Envoy's config: the listener's HTTPS (its certificate, and the CA a client certificate
must chain to) and a service's TLS to its upstreams (the CA that verifies them, the client
certificate presented). Pure: the catalog and options in, messages and file contents out.

Certificates reach Envoy through SDS from files Envoy watches itself (docs/tls.md). Each secret
is a small SDS file, `<sds_dir>/<secret name>.json`, naming the PEM files by path: no key
material is in it, in the xDS stream or in our memory. The listener and clusters refer to a
secret by that file (`path_config_source`); Envoy reads the PEM files and watches their
directories, and loads them again when an entry there is renamed into place (write-and-rename
of a file, or the swap of a symlink to a directory holding both, as Kubernetes mounts
secrets): a new certificate serves new handshakes with no restart and no dropped connection.
Secret names are digests of the paths, so the same catalog and settings give the same
resources (and versions) on every replica, and an SDS file never changes content once written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import json_format

from xds_server.catalog import Catalog, Service, UpstreamTls

# TLS 1.2's suites (TLS 1.3 has its own, all of them modern, which Envoy does not let us
# choose): forward secrecy (ECDHE) and AEAD ciphers only, ECDSA and RSA certificates alike.
# Mozilla's "intermediate" list.
DEFAULT_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
LISTENER_ALPN: tuple[str, ...] = ("h2", "http/1.1")
TLS_SOCKET = "envoy.transport_sockets.tls"
SDS_RESOURCE_TYPE = "type.googleapis.com/" + secret_pb2.Secret.DESCRIPTOR.full_name
# Where the xDS server writes the SDS files (`--tls-sds-dir`): Envoy must read them at the same
# path, so it is on Envoy's host (`sidecar up`, a pod sharing a volume).
DEFAULT_SDS_DIR = f"{tempfile.gettempdir()}/sidecar-sds-{os.getuid()}"


@dataclass(frozen=True)
class ListenerTls:
    """HTTPS on the listener: the certificate chain and key (PEM paths on Envoy's host), and
    the CA a client's certificate must chain to (None: none asked for)."""

    cert: str
    key: str
    client_ca: str | None = None
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS


def _name(kind: str, *paths: str) -> str:
    digest = hashlib.sha256("\0".join(paths).encode()).hexdigest()[:16]
    return f"sidecar-{kind}-{digest}"


def certificate_secret(kind: str, cert: str, key: str) -> secret_pb2.Secret:
    out = secret_pb2.Secret(name=_name(kind, cert, key))
    out.tls_certificate.certificate_chain.filename = cert
    out.tls_certificate.private_key.filename = key
    return out


def ca_secret(kind: str, ca: str) -> secret_pb2.Secret:
    out = secret_pb2.Secret(name=_name(kind, ca))
    out.validation_context.trusted_ca.filename = ca
    return out


def sds_file(secret: secret_pb2.Secret) -> bytes:
    """The SDS file Envoy reads for `secret` (a DiscoveryResponse holding it, as JSON)."""
    resource = {"@type": SDS_RESOURCE_TYPE, **json_format.MessageToDict(secret)}
    return json.dumps({"resources": [resource]}, sort_keys=True).encode()


def sds_config(secret: secret_pb2.Secret, sds_dir: str) -> secret_pb2.SdsSecretConfig:
    """Where Envoy finds `secret`: its SDS file, read again when one is renamed into
    `sds_dir` (as `sds_files.SdsWriter` writes them)."""
    out = secret_pb2.SdsSecretConfig(name=secret.name)
    source = out.sds_config.path_config_source
    source.path = f"{sds_dir.rstrip('/')}/{secret.name}.json"
    source.watched_directory.path = sds_dir
    out.sds_config.resource_api_version = config_source_pb2.ApiVersion.V3
    return out


def listener_secrets(tls: ListenerTls) -> list[secret_pb2.Secret]:
    out = [certificate_secret("listener-cert", tls.cert, tls.key)]
    if tls.client_ca is not None:
        out.append(ca_secret("listener-client-ca", tls.client_ca))
    return out


def upstream_secrets(tls: UpstreamTls) -> list[secret_pb2.Secret]:
    out = []
    if tls.cert_file is not None and tls.key_file is not None:
        out.append(certificate_secret("upstream-cert", tls.cert_file, tls.key_file))
    if tls.verify and tls.ca_file is not None:
        out.append(ca_secret("upstream-ca", tls.ca_file))
    return out


def secrets(catalog: Catalog, listener: ListenerTls | None) -> dict[str, secret_pb2.Secret]:
    """Every secret the resources of `catalog` (and the listener's TLS) refer to, by name."""
    found = listener_secrets(listener) if listener is not None else []
    for svc in catalog.services:
        if svc.tls is not None:
            found += upstream_secrets(svc.tls)
    return {s.name: s for s in found}


def _tls_params(params: common_pb2.TlsParameters, ciphers: Sequence[str]) -> None:
    params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    params.cipher_suites.extend(ciphers)


def downstream_tls(tls: ListenerTls, sds_dir: str) -> base_pb2.TransportSocket:
    """The listener's transport socket: TLS 1.2 at least, `tls.ciphers` for TLS 1.2, ALPN h2
    then http/1.1, the certificate (and client CA) through SDS. With a client CA, a client
    without a certificate it signed is refused at the handshake."""
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    _tls_params(common.tls_params, tls.ciphers)
    common.alpn_protocols.extend(LISTENER_ALPN)
    cert, *ca = listener_secrets(tls)
    common.tls_certificate_sds_secret_configs.append(sds_config(cert, sds_dir))
    if ca:
        common.validation_context_sds_secret_config.CopyFrom(sds_config(ca[0], sds_dir))
        context.require_client_certificate.value = True
    return _socket(context)


def upstream_tls(
    svc: Service, host: str, is_ip: bool, h2: bool, sds_dir: str
) -> base_pb2.TransportSocket:
    """A cluster's TLS to its upstreams at `host`. Without the service's `tls`, as before it
    existed: SNI `host`, no verification. With it: SNI its `sni` (else `host`), the client
    certificate through SDS when it names one, and with `verify` the upstream's certificate
    must chain to `ca_file` and name the SNI (or the IP address of an IP upstream without
    `sni`)."""
    tls = svc.tls
    context = tls_pb2.UpstreamTlsContext(sni=host if tls is None or tls.sni is None else tls.sni)
    common = context.common_tls_context
    if h2:
        common.alpn_protocols.append("h2")
    if tls is not None:
        common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
        for secret in upstream_secrets(tls):
            if secret.HasField("tls_certificate"):
                common.tls_certificate_sds_secret_configs.append(sds_config(secret, sds_dir))
            else:
                combined = common.combined_validation_context
                combined.validation_context_sds_secret_config.CopyFrom(sds_config(secret, sds_dir))
                san = combined.default_validation_context.match_typed_subject_alt_names.add()
                by_ip = tls.sni is None and is_ip
                san.san_type = (
                    common_pb2.SubjectAltNameMatcher.IP_ADDRESS
                    if by_ip
                    else common_pb2.SubjectAltNameMatcher.DNS
                )
                san.matcher.CopyFrom(string_pb2.StringMatcher(exact=host if by_ip else context.sni))
    return _socket(context)


def _socket(
    context: tls_pb2.DownstreamTlsContext | tls_pb2.UpstreamTlsContext,
) -> base_pb2.TransportSocket:
    out = base_pb2.TransportSocket(name=TLS_SOCKET)
    out.typed_config.type_url = f"type.googleapis.com/{context.DESCRIPTOR.full_name}"
    out.typed_config.value = context.SerializeToString(deterministic=True)
    return out
