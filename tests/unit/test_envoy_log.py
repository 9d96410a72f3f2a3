"""`sidecar up` passes Envoy's log through unchanged except Envoy's cache_v2 work-in-progress
warnings."""

from __future__ import annotations

import io
import os

from sidecar.envoy_log import EnvoyLogFilter, dropped

WIP = (
    b"[2026-12-06 06:13:56.186][690][warning][misc] [source/common/protobuf/"
    b"message_validator_impl.cc:39] message 'envoy.extensions.filters.http.cache_v2.v3."
    b"CacheV2Config' is contained in proto file 'envoy/extensions/filters/http/cache_v2/v3/"
    b"cache.proto' marked as work-in-progress. API features marked as work-in-progress are not"
    b" considered stable.\n"
)
OTHER_WIP = WIP.replace(b".cache_v2.", b".other_feature.").replace(b"/cache_v2/", b"/other/")
PLAIN = b"[2026-12-06 06:13:56.190][690][info][main] starting main dispatch loop\n"


def test_only_the_cache_v2_warning_is_dropped() -> None:
    assert dropped(WIP)
    assert not dropped(OTHER_WIP)
    assert not dropped(PLAIN)


def test_the_filter_copies_every_other_line_in_order() -> None:
    sink = io.BytesIO()
    log = EnvoyLogFilter(sink)
    for line in (PLAIN, WIP, OTHER_WIP, WIP, PLAIN):
        os.write(log.fd, line)
    log.close()
    assert sink.getvalue() == PLAIN + OTHER_WIP + PLAIN
