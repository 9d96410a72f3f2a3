"""The `sidecar` command: the composition root that runs the xDS server, ext_authz and Envoy."""
