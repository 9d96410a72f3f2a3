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
# xds-protos ships older copies of opentelemetry-proto's modules; put opentelemetry-proto's back
# so the OTLP exporter loads.
RUN pip install --no-cache-dir -c constraints.txt . \
    && pip install --no-cache-dir --force-reinstall --no-deps \
        "opentelemetry-proto==$(python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && python -c 'from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter' \
    && useradd --system --uid 10001 sidecar
USER 10001

# Probes: `sidecar probe 127.0.0.1:18000` (xDS) or `sidecar probe 127.0.0.1:9191` (ext_authz).
CMD ["xds-server"]
