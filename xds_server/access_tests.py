"""The catalog's access tests (its `tests` list): each request, with a token carrying its claims
(or none), must get its `expect` from the decision ext_authz makes for the catalog's routes
(`explain.Explainer`, ext_authz's own core). A failing test is a problem at `tests[i]`, so the
reloader refuses the catalog and `sidecar validate` exits 1, exactly as for a type error.

`expect` is compared with the decision: on a dry-run service, the denial it would make
(`would_deny`), since the tests state the policy meant to be enforced.
"""

from __future__ import annotations

from xds_server.catalog import Catalog, Problem
from xds_server.explain import Explainer, Probe, Trace


def probe_of(catalog: Catalog, i: int) -> Probe:
    test = catalog.tests[i]
    req = test.request
    return Probe(req.method, req.path, req.headers, claims=test.claims)


def failures(catalog: Catalog, explainer: Explainer) -> list[Problem]:
    """A problem for each test of `catalog` whose decision is not its `expect`."""
    problems = []
    for i, test in enumerate(catalog.tests):
        trace = explainer.explain(catalog, probe_of(catalog, i))
        if trace.decided != test.expect:
            problems.append(Problem(f"tests[{i}]", f"{test.name!r}: {_why(test.expect, trace)}"))
    return problems


def _why(expect: int, trace: Trace) -> str:
    failed = next((s for s in trace.steps if s.verdict == "fail"), None)
    where = f" at the {failed.name} step" if failed else ""
    route = f" (route {trace.route})" if trace.route else ""
    return f"expected {expect}, got {trace.decided} {trace.reason}{where}{route}: {trace.message}"
