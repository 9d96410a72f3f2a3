"""Catalog file contents → a snapshot checked for consistency, rebuilding only what changed.

`SnapshotBuilder` is the reloader's build step and `sidecar validate`'s. It remembers, by the
content of each service's JSON (`catalog.service_key`), what the service became:
- its validated model (`catalog.parse_catalog_cached`; the checks that span services, cheap,
  run on every build);
- its clusters and endpoints, packed, with their versions: they depend on the service alone
  (and the builder's options);
- its routes, serialized: they depend on the service, on the catalog's other top-level fields
  (the roles the policy is compiled from), on whether any service is cacheable (the cache
  filter's per-route switch) and on the longer base paths under the service's (its look-alike
  guards), so those are part of their key.
The route configuration (one resource holding every route) is assembled from the routes'
bytes into the skeleton the translator builds for a catalog without services; the listener is
built again each time (a few small messages, with the other resources no one service owns).

A build from scratch and an incremental one give byte-identical resources and versions, both
equal to translating the whole catalog in one pass (`tests/support/translation.py`; a property
test drives random edit sequences through all three). What the builder remembers is what the
last successful build used, nothing more.

A build allocates millions of short-lived, acyclic objects; the cyclic garbage collector would
scan the growing heap again and again (measured with 10,000 services: a third of the time), so
it is paused while a build runs.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from sidecar_shared.bounded import BoundedMap
from sidecar_shared.errors import SettingsError
from xds_server import access_tests, typeurls
from xds_server.catalog import (
    Catalog,
    CatalogError,
    Problem,
    ServiceCache,
    decode_json,
    parse_catalog_cached,
    service_key,
)
from xds_server.engines import jwks_document
from xds_server.explain import Explainer
from xds_server.resources.common import ROUTE_CONFIG_NAME, Options
from xds_server.resources.routes import (
    add_service_routes,
    needs_cache_filter,
    paths_under,
    route_configuration,
    routing_order,
    sorted_prefixes,
)
from xds_server.resources.tls import secrets
from xds_server.snapshot import Refs, Resource, Snapshot, references, route_references
from xds_server.translate import catalog_wide, service_resources

# (the service's JSON, the catalog's other fields, any service cacheable, paths under it)
_RouteKey = tuple[bytes, bytes, bool, tuple[str, ...]]


@dataclass(frozen=True)
class _Clusters:
    clusters: tuple[Resource, ...]
    endpoints: tuple[Resource, ...]


@dataclass(frozen=True)
class _Routes:
    serialized: bytes  # as the routes field of a virtual host
    refs: Refs  # the clusters they name


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class SnapshotBuilder:
    """Follows `reload.Build`: (file contents, source name) → (snapshot, services); raises
    CatalogError. Calls must not overlap."""

    def __init__(
        self, options: Options, write_secrets: Callable[[dict[str, Secret]], None] | None = None
    ) -> None:
        """`write_secrets`: called with the secrets each snapshot refers to, before it is
        returned (`sds_files.SdsWriter`); None: not written (validate, render)."""
        self._options = options
        self._write_secrets = write_secrets
        self._jwks_raw: bytes | None = None  # the JWKS file the options' document came from
        self._services: ServiceCache = {}
        self._clusters: dict[bytes, _Clusters] = {}
        self._routes: dict[_RouteKey, _Routes] = {}
        # the last route configuration, with what it was assembled from
        self._config: tuple[bytes, list[_Routes], Resource] | None = None
        self._explainer: Explainer | None = None  # made when a catalog has access tests
        # the catalogs of the last snapshots built, by version (the admin API explains with them)
        self._catalogs: BoundedMap[str, Catalog] = BoundedMap(8)

    def catalog_of(self, version: str) -> Catalog | None:
        """The catalog a snapshot this builder made (one of the last few) was built from."""
        return self._catalogs.get(version)

    def _read_jwks(self, source: str) -> None:
        """The native engine's JWKS, read again into the options this build uses (parsed,
        `engines.jwks_document`, only when its bytes changed); raises CatalogError naming the
        file when it is not a usable JWKS."""
        engines = self._options.authz.engines
        keys = engines.compiled_keys
        if keys is None:
            return
        try:
            raw = Path(keys.jwks).read_bytes()
            if raw == self._jwks_raw:
                return
            document = jwks_document(raw, keys.jwks)
        except OSError as err:
            why = f"cannot read the JWKS {keys.jwks}: {err.strerror or err}"
            raise CatalogError([Problem("SIDECAR_JWKS", why)], source) from None
        except SettingsError as err:
            raise CatalogError([Problem("SIDECAR_JWKS", str(err))], source) from None
        fresh = replace(engines, keys=replace(keys, document=document))
        self._options = replace(self._options, authz=replace(self._options.authz, engines=fresh))
        self._jwks_raw = raw

    def __call__(self, raw: bytes, source: str) -> tuple[Snapshot, int]:
        self._read_jwks(source)
        with _gc_paused():
            snapshot, catalog = self._decode_and_build(raw, source)
        problems = snapshot.consistent()
        if problems:
            raise CatalogError([Problem("", p) for p in problems], source)
        if catalog.tests:  # the catalog's access tests (after the build: they need its routes)
            if self._explainer is None:
                self._explainer = Explainer()
            failed = access_tests.failures(catalog, self._explainer)
            if failed:
                raise CatalogError(failed, source)
        self._catalogs[snapshot.version] = catalog
        return snapshot, len(catalog.services)

    def _decode_and_build(self, raw: bytes, source: str) -> tuple[Snapshot, Catalog]:
        """(The decoded JSON is let go before the collector resumes: it would scan it.)"""
        data = decode_json(raw, source)
        catalog, keys = parse_catalog_cached(data, source, self._services)
        assert isinstance(data, dict)  # parse_catalog_cached raised otherwise
        # Everything but the services (and the access tests, which make no resource): what
        # routes depend on besides their service.
        rest = service_key({k: v for k, v in data.items() if k not in ("services", "tests")})
        return self._build(catalog, keys, rest), catalog

    def _build(self, catalog: Catalog, keys: list[bytes], rest: bytes) -> Snapshot:
        key_of = {id(svc): key for svc, key in zip(catalog.services, keys, strict=True)}
        clusters: dict[bytes, _Clusters] = {}
        for svc in catalog.services:
            key = key_of[id(svc)]
            made = self._clusters.get(key)
            if made is None:
                cs, es = service_resources(svc, self._options)
                made = _Clusters(
                    tuple(Resource.of(n, m) for n, m in cs),
                    tuple(Resource.of(n, m) for n, m in es),
                )
            clusters[key] = made
        self._clusters = clusters

        with_cache = needs_cache_filter(catalog)
        prefixes = sorted_prefixes(catalog.services)
        routes: dict[_RouteKey, _Routes] = {}
        chunks = []
        for svc in routing_order(catalog.services):
            under = paths_under(prefixes, svc)
            route_key = (key_of[id(svc)], rest, with_cache, under)
            chunk = self._routes.get(route_key)
            if chunk is None:
                host = route_components_pb2.VirtualHost()
                add_service_routes(
                    host.routes,
                    catalog,
                    svc,
                    with_cache=with_cache,
                    under=under,
                    authz=self._options.authz,
                )
                chunk = _Routes(
                    host.SerializeToString(deterministic=True), route_references(host.routes)
                )
            routes[route_key] = chunk
            chunks.append(chunk)
        self._routes = routes
        wide_clusters, listeners = catalog_wide(catalog, self._options)
        if self._write_secrets is not None:
            self._write_secrets(secrets(catalog, self._options.listener_tls))
        return Snapshot.of(
            {
                typeurls.CLUSTER: [r for c in clusters.values() for r in c.clusters]
                + [Resource.of(n, m) for n, m in wide_clusters],
                typeurls.ENDPOINT: [r for c in clusters.values() for r in c.endpoints],
                typeurls.LISTENER: [Resource.of(n, m) for n, m in listeners],
                typeurls.ROUTE: [self._route_config(catalog, rest, chunks)],
            }
        )

    def _route_config(self, catalog: Catalog, rest: bytes, chunks: list[_Routes]) -> Resource:
        """The route configuration: the last one when neither the catalog's other fields nor
        any route changed (the same bytes in the same order)."""
        last = self._config
        if (
            last is not None
            and last[0] == rest
            and len(last[1]) == len(chunks)
            and all(a.serialized == b.serialized for a, b in zip(last[1], chunks, strict=True))
        ):
            return last[2]
        config = route_configuration(
            catalog.model_copy(update={"services": []}), self._options.authz
        )
        refs = references(config) + tuple(r for c in chunks for r in c.refs)
        # Serialized repeated fields concatenate: merging the routes' bytes appends them.
        config.virtual_hosts[0].MergeFromString(b"".join(c.serialized for c in chunks))
        made = Resource.of(ROUTE_CONFIG_NAME, config, refs)
        self._config = (rest, chunks, made)
        return made
