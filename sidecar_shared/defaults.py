"""Every default port, address and timeout, written once. Settings modules, the bootstrap and
`sidecar up` read them from here; the README documents the ports, docs/ the rest."""

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
ENVOY_ADMIN: Final = f"{ENVOY_ADMIN_ADDRESS}:{ENVOY_ADMIN_PORT}"
MAX_DOWNSTREAM_CONNECTIONS: Final = 50_000
# Re-opening the ADS stream: Envoy's own back-off grows to 30 s.
ADS_RETRY_BASE_MS: Final = 50
ADS_RETRY_MAX_MS: Final = 1_000

# xDS server
XDS_HOST: Final = "127.0.0.1"  # private by default (docs/security.md)
XDS_PORT: Final = 18000
XDS_HTTP_HOST: Final = "127.0.0.1"
XDS_HTTP_PORT: Final = 18080
RELOAD_DEBOUNCE_MS: Final = 20
# The catalog's watch is checked this often: the directories re-chosen if one was replaced or a
# symlink on the way points elsewhere, the file's identity compared, a failed watch retried.
CATALOG_RECHECK_S: Final = 1.0
# The Envoys' region, then the failover order ("eu-west,eu-central"); empty: no preference.
REGION: Final = ""
ROLLBACK_ON_NACK: Final = True
# What Envoy speaks to the xDS server (the bootstrap's ads_config.api_type); the server serves
# both at once.
XDS_PROTOCOLS: Final = ("sotw", "delta")
XDS_PROTOCOL: Final = "sotw"

# ext_authz, and how Envoy calls it
AUTHZ_HOST: Final = "127.0.0.1"  # private by default (docs/security.md)
AUTHZ_PORT: Final = 9191  # gRPC: Check and health
AUTHZ_HTTP_CHECK_PORT: Final = 9193  # Envoy's HTTP ext_authz protocol
AUTHZ_TRANSPORT: Final = "http"  # which of the two Envoy calls (xDS server and bootstrap)
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
# Opening a connection (TCP, and the TLS handshake with rediss://) gets longer than a command,
# and stays under ext_authz's own timeout so that the failure policy still answers in time.
REDIS_CONNECT_TIMEOUT_MS: Final = 50
REDIS_KEY_PREFIX: Final = "sidecar:rl:"

# sidecar up
STARTUP_TIMEOUT_S: Final = 30.0
RESTART_BACKOFF_BASE_S: Final = 0.1
RESTART_BACKOFF_MAX_S: Final = 10.0
# Stopping: Envoy drains the requests in flight for up to this long (under Kubernetes' default
# 30 s termination grace, with room for the servers' own grace after it).
DRAIN_TIMEOUT_S: Final = 15.0
DRAIN_QUIET_S: Final = 1.0  # no request in flight this long: the drain is over
SERVER_STOP_GRACE_S: Final = 5.0  # each child, after the drain, before SIGKILL

# Envoy's edge: the values of Envoy's "Configuring Envoy as an edge proxy" page, or stricter
# (docs/security.md says why each one is what it is).
EDGE_REQUEST_HEADERS_TIMEOUT_MS: Final = 10_000  # slowloris: the whole header block in 10 s
EDGE_STREAM_IDLE_TIMEOUT_MS: Final = 300_000  # a stream that moves no byte for 5 min
EDGE_REQUEST_TIMEOUT_MS: Final = 300_000  # a whole request (body included) in 5 min
EDGE_IDLE_TIMEOUT_MS: Final = 300_000  # a connection with no stream for 5 min (page: 1 h)
EDGE_H2_MAX_CONCURRENT_STREAMS: Final = 100
EDGE_H2_STREAM_WINDOW_BYTES: Final = 65_536
EDGE_H2_CONNECTION_WINDOW_BYTES: Final = 1_048_576
EDGE_CONNECTION_BUFFER_BYTES: Final = 32_768
EDGE_MAX_REQUEST_HEADERS: Final = 100  # Envoy's own; ext_authz keeps room for its headers
EDGE_UNDERSCORE_HEADERS: Final = "reject"  # x_user_id would reach a CGI upstream as X-User-Id
ENVOY_MAX_HEAP_BYTES: Final = 2 * 1024**3
ENVOY_HEAP_SHRINK_AT: Final = 0.95
ENVOY_HEAP_STOP_ACCEPTING_AT: Final = 0.98

# ext_authz under attack
FAILED_AUTH_BUDGET: Final = 50  # failed authentications per client address ...
FAILED_AUTH_WINDOW_S: Final = 10  # ... per this many seconds, then 429 for what fails
FAILED_AUTH_COSTLY_PER_S: Final = 100  # failed asymmetric signature checks/s, over budget
NEGATIVE_CACHE_SIZE: Final = 10_000  # recently refused tokens remembered
AUDIT_DENIALS_PER_SECOND: Final = 1000  # denial lines a second, all clients together
AUDIT_SUMMARY_AFTER_S: Final = 0.5  # a suppressed denial is in a summary line within this
PROXY_HINT_CHECKS: Final = 1000  # checks looked at before saying a proxy may be in front
AUDIT_MAX_FIELD_CHARS: Final = 256  # longer audit fields are cut

# Observability
ACCESS_LOG: Final = "-"  # Envoy's JSON access log: "-" stdout, "off", or a file path
ENVOY_TRACE_SAMPLING_PERCENT: Final = 1.0  # of requests without a sampled traceparent
