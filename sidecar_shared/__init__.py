"""What the xDS server, ext_authz and the `sidecar` command share, owned by none of them.

The ground floor of the project: it imports nothing else of ours. `contract` is the policy
contract between the servers (standard library only); `defaults` holds every port and timeout;
`flags` reads command-line flags and `SIDECAR_*` variables; `jsonlog` writes JSON log lines;
`ops_http` serves `/metrics`, `/ready` and `/status`; `health` sets gRPC health; `supervise`
finds Envoy and keeps child processes running; `bounded` is the one bounded map; `errors`
holds `SettingsError`, which start-up code raises instead of exiting.
"""
