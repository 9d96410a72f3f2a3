"""The operator API's messages (`sidecar.admin.v1`), generated from protos/ by
`python protos/generate.py` and committed (a test keeps them current). Do not edit them."""

ADMIN_SERVICE = "sidecar.admin.v1.Admin"
