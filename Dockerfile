# The control plane and ext_authz (and the `sidecar` command, used for health probes and the
# demo upstream). One image; the command chooses the process:
#   docker run IMAGE xds-server   |   docker run IMAGE ext-authz
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY sidecar_shared ./sidecar_shared
COPY xds_server ./xds_server
COPY ext_authz ./ext_authz
COPY sidecar ./sidecar
# A plain install: the OTLP exporters load whichever copy of opentelemetry-proto's modules pip
# left on disk (sidecar_shared/otlp_proto).
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 sidecar
USER 10001

# Every port binds 127.0.0.1 unless SIDECAR_XDS_HOST / SIDECAR_AUTHZ_HOST say otherwise: run the
# containers in Envoy's network namespace (a pod, compose's `pod`), or bind the container's
# address with mTLS on (docs/security.md). Probes, on loopback: readiness
# `sidecar probe http://127.0.0.1:18080/ready` (xDS) or `...:9192/ready` (ext_authz), liveness
# the same with `--alive`.
CMD ["xds-server"]
