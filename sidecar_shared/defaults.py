"""Every default port, address and timeout, written once. Settings modules, the bootstrap and
`sidecar up` read them from here; the README documents the same values."""

from __future__ import annotations

from typing import Final

CATALOG: Final = "service_catalog.json"

# Envoy
LISTENER_ADDRESS: Final = "0.0.0.0"
LISTENER_PORT: Final = 10000
ENVOY_ADMIN_ADDRESS: Final = "127.0.0.1"
ENVOY_ADMIN_PORT: Final = 9901
NODE_ID: Final = "sidecar-envoy"
NODE_CLUSTER: Final = "sidecar"
ENVOY_LOG_LEVEL: Final = "warning"
MAX_DOWNSTREAM_CONNECTIONS: Final = 50_000
# Re-opening the ADS stream: Envoy's own back-off grows to 30 s.
ADS_RETRY_BASE_MS: Final = 50
ADS_RETRY_MAX_MS: Final = 1_000

# xDS server
XDS_HOST: Final = "0.0.0.0"
XDS_PORT: Final = 18000
XDS_HTTP_HOST: Final = "127.0.0.1"
XDS_HTTP_PORT: Final = 18080
RELOAD_DEBOUNCE_MS: Final = 20
ROLLBACK_ON_NACK: Final = True
# What Envoy speaks to the xDS server (the bootstrap's ads_config.api_type); the server serves
# both at once.
XDS_PROTOCOLS: Final = ("sotw", "delta")
XDS_PROTOCOL: Final = "sotw"

# ext_authz, and how Envoy calls it
AUTHZ_HOST: Final = "0.0.0.0"
AUTHZ_PORT: Final = 9191
AUTHZ_HTTP_HOST: Final = "127.0.0.1"
AUTHZ_HTTP_PORT: Final = 9192
AUTHZ_WORKERS: Final = 4
AUTHZ_TIMEOUT_MS: Final = 200
AUTHZ_FAILURE_STATUS: Final = 503
JWT_LEEWAY_S: Final = 30.0
JWKS_REFRESH_MIN_S: Final = 5.0
KEY_REFRESH_S: Final = 30.0
TOKEN_CACHE_SIZE: Final = 10_000
REDIS_URL: Final = "redis://127.0.0.1:6379/0"
REDIS_TIMEOUT_MS: Final = 5
REDIS_KEY_PREFIX: Final = "sidecar:rl:"

# sidecar up
STARTUP_TIMEOUT_S: Final = 30.0
RESTART_BACKOFF_BASE_S: Final = 0.1
RESTART_BACKOFF_MAX_S: Final = 10.0
