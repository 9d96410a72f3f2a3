"""Builders of Envoy resources from the catalog, one module per kind; `xds_server.translate`
assembles them."""
