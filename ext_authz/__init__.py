"""External authorization for Envoy: JWT, RBAC, tenant scope, rate limits."""
