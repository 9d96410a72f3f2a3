"""One warning, in a user's words, the first time a served catalog uses an Envoy feature that
Envoy marks work in progress: today the HTTP cache of `cacheable` services (Envoy 1.40's
`cache_v2` filter). Envoy itself prints a long warning about it twice at each start; this says
once what it means for whoever wrote the catalog. `sidecar up` drops Envoy's two lines
(sidecar.envoy_log); an Envoy run elsewhere still prints them.
"""

from __future__ import annotations

import logging

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server import typeurls
from xds_server.snapshot import Snapshot

CACHE_V2_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config"

CACHE_WARNING = (
    "a service is cacheable: Envoy's HTTP cache (its cache_v2 filter) is marked work in progress"
    " by Envoy, so it is outside Envoy's security threat model and its configuration may change"
    " with an Envoy upgrade. We only store responses the upstream marks public (Cache-Control:"
    " public or s-maxage) and check every request before the cache; set cacheable to false if"
    " your policy forbids work-in-progress Envoy features (docs/operations.md)"
)


def uses_wip_cache(snapshot: Snapshot) -> bool:
    """True when a listener's HTTP connection manager has the cache_v2 filter."""
    for resource in snapshot.resources.get(typeurls.LISTENER, {}).values():
        listener = listener_pb2.Listener()
        resource.packed.Unpack(listener)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                if network_filter.typed_config.Unpack(manager) and any(
                    f.typed_config.type_url == CACHE_V2_TYPE for f in manager.http_filters
                ):
                    return True
    return False


class WipNotice:
    """Call `loaded` with every snapshot served; it warns on the first that uses the cache, and
    never again in this process."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._warned = False

    def loaded(self, snapshot: Snapshot) -> None:
        if not self._warned and uses_wip_cache(snapshot):
            self._warned = True
            self._log.warning(CACHE_WARNING, extra={"fields": {"envoy_feature": "cache_v2"}})
