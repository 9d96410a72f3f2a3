"""The decision suite (`test_authz.py`, the `ext_authz` engine over both transports) on the
other engines: its test functions run again through Envoys whose xDS server says
`--decision native` or `--decision auto`, with RS256 tokens of the same claims (an HS secret
is never compiled into Envoy) and the JWKS both servers read.

The catalogs: on `native`, the sample's with no tenant upstreams (a route with them stays with
ext_authz even on native), so every route the suite calls is decided by Envoy's filters. On
`auto`, the sample's with catalog's limit removed: orders (a limit, tenant upstreams) and
status (a limit) stay with ext_authz, catalog is native, in one Envoy. The tests that take
`xds` get a fresh server on that mixed catalog for either engine (native: orders is ext_authz's
for its tenant upstreams, catalog and status are Envoy's). One stack per engine serves every
test that leaves no state behind.

Where a test's premise does not exist on an engine, a counterpart asserts what a user sees
there instead (the differences are docs/engines.md's):

| test_authz.py (less `test_`)                                                 | native | auto |
|------------------------------------------------------------------------------|--------|------|
| the_upstream_sees_identity_headers_and_the_untouched_token                   | run    | run  |
| spoofed_identity_headers_never_reach_a_protected_upstream                    | run    | run  |
| spoofed_identity_headers_never_reach_a_public_upstream                       | run    | run  |
| a_client_tenant_header_that_differs_from_the_token_is_forbidden              | run    | run  |
| no_token_is_401_with_rfc6750_header_and_json_body                            | run    | run  |
| an_expired_token_is_401                                                      | run    | run  |
| a_tenant_scoped_service_needs_a_tenant                                       | run    | run  |
| a_tenant_with_its_own_upstream_is_routed_there                               | run(a) | run  |
| a_role_without_the_permission_is_403_and_audited                             | (b)    | run  |
| envoy_fails_closed_with_503_when_ext_authz_is_down_and_recovers              | (c)    | run  |
| every_decision_is_one_audit_line_without_secrets                             | (d)    | run  |
| a_client_sending_the_policy_header_changes_no_decision                       | (e)    | run  |
| the_clients_trace_id_reaches_the_audit_line                                  | (f)    | run  |
| a_fresh_valid_token_from_an_address_whose_failure_budget_is_spent_is_allowed | (g)    | run  |
| a_burst_of_60_denials_is_all_in_the_audit_within_a_second                    | (h)    | run  |
| denials_past_the_audit_cap_are_counted_in_a_summary_within_a_second          | (h)    | run  |

(a) in `test_a_route_with_tenant_upstreams_stays_with_ext_authz_on_native`
(b) `test_a_native_403_is_envoys_access_log_line`
(c) `test_with_ext_authz_down_native_routes_answer_and_its_routes_fail_closed`
(d) `test_every_native_decision_is_one_access_log_line_without_secrets`
(e) `test_a_client_sending_the_policy_header_changes_no_native_decision`
(f) `test_the_clients_trace_id_reaches_envoys_access_log_line_when_envoy_traces` (with
    Envoy's tracing off its line has no trace id, unlike ext_authz's audit line)
(g) `test_a_native_route_has_no_failed_auth_budget`
(h) `test_every_native_denial_of_a_burst_is_its_own_access_log_line_uncapped` (Envoy
    writes its log out every second as we run it, so within seconds, not within one)
and `test_each_route_is_decided_by_its_engine` on both: Envoy's counters say who decided.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from sidecar_shared.contract import POLICY_HEADER, RoutePolicy, encode
from tests.e2e import test_authz as suite
from tests.support import engines, otlp, stack, tokens, wait
from tests.support.catalogs import write_sample_catalog
from tests.support.ports import free_port

ENGINES = ("native", "auto")
on_native = pytest.mark.parametrize("engine", ["native"])
on_auto = pytest.mark.parametrize("engine", ["auto"])


def _no_tenant_upstreams(data: dict[str, Any]) -> None:
    for svc in data["services"]:
        svc.pop("tenant_upstreams", None)


def _catalog_unlimited(data: dict[str, Any]) -> None:
    next(s for s in data["services"] if s["service_name"] == "catalog")["rate_limit"] = None


def _edit(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


CATALOG_EDIT = {"native": _no_tenant_upstreams, "auto": _catalog_unlimited}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return engines.keys_env(tmp_path_factory.mktemp("keys"))


@pytest.fixture(autouse=True)
def rs256(monkeypatch: pytest.MonkeyPatch, keys: dict[str, str]) -> None:
    """The suite's tokens are RS256, and every server a test starts reads the JWKS."""
    monkeypatch.setattr(tokens, "token", engines.rs256_token)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)


@dataclass
class Shared:
    xds: stack.XdsServer
    authz: stack.Authz
    envoy: stack.Envoy


@pytest.fixture(scope="module")
def stacks(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]
) -> Iterator[Callable[[str], Shared]]:
    """One stack per engine, started when a test first asks for it, for the module's tests
    that leave no state behind."""
    started: dict[str, Shared] = {}
    procs: list[stack.Proc] = []
    upstreams: list[EchoServer] = []

    def echo(name: str) -> EchoServer:
        upstreams.append(EchoServer(name, port=free_port()).start())
        return upstreams[-1]

    def get(engine: str) -> Shared:
        if engine not in started:
            workdir = tmp_path_factory.mktemp(engine)
            catalog = _edit(write_sample_catalog(workdir, echo), CATALOG_EDIT[engine])
            xds = stack.start_xds(
                catalog,
                workdir,
                env={**keys, "SIDECAR_DECISION": engine},
                args=stack.VETO_UNAUTHENTICATED,
            )
            procs.append(xds.proc)
            # auto's orders is ext_authz's: no budget to spend there (the budget test has its own)
            no_budget = ["--failed-auth-budget", "0"] if engine == "auto" else []
            authz = stack.start_authz(workdir, env=keys, args=no_budget)
            procs.append(authz.proc)
            envoy = stack.start_envoy(xds, workdir, authz=authz)
            procs.append(envoy.proc)
            started[engine] = Shared(xds, authz, envoy)
        return started[engine]

    yield get
    for proc in reversed(procs):
        proc.stop()
    for upstream in upstreams:
        upstream.stop()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def envoy(stacks: Callable[[str], Shared], engine: str) -> stack.Envoy:
    return stacks(engine).envoy


@pytest.fixture
def authz(stacks: Callable[[str], Shared], engine: str) -> stack.Authz:
    return stacks(engine).authz


@pytest.fixture
def xds(
    engine: str, sample_catalog: Path, tmp_path: Path, keys: dict[str, str]
) -> Iterator[stack.XdsServer]:
    """A server of its own on the mixed catalog (for tests that edit it or start their own
    ext_authz): orders with ext_authz, catalog native, status native only on native."""
    server = stack.start_xds(
        _edit(sample_catalog, _catalog_unlimited),
        tmp_path,
        env={**keys, "SIDECAR_DECISION": engine},
        args=stack.VETO_UNAUTHENTICATED,
    )
    yield server
    server.proc.stop()


def on(engine: str, test: Callable[..., None]) -> Callable[..., None]:
    """The suite's `test`, run on `engine` only."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        test(*args, **kwargs)

    marked: Callable[..., None] = pytest.mark.parametrize("engine", [engine])(run)
    return marked


# On both engines, unchanged.
test_the_upstream_sees_identity_headers_and_the_untouched_token = (
    suite.test_the_upstream_sees_identity_headers_and_the_untouched_token
)
test_spoofed_identity_headers_never_reach_a_protected_upstream = (
    suite.test_spoofed_identity_headers_never_reach_a_protected_upstream
)
test_spoofed_identity_headers_never_reach_a_public_upstream = (
    suite.test_spoofed_identity_headers_never_reach_a_public_upstream
)
test_a_client_tenant_header_that_differs_from_the_token_is_forbidden = (
    suite.test_a_client_tenant_header_that_differs_from_the_token_is_forbidden
)
test_no_token_is_401_with_rfc6750_header_and_json_body = (
    suite.test_no_token_is_401_with_rfc6750_header_and_json_body
)
test_an_expired_token_is_401 = suite.test_an_expired_token_is_401
test_a_tenant_scoped_service_needs_a_tenant = suite.test_a_tenant_scoped_service_needs_a_tenant

# On auto, unchanged: the routes they call (orders) are ext_authz's there.
test_a_tenant_with_its_own_upstream_is_routed_there = on(
    "auto", suite.test_a_tenant_with_its_own_upstream_is_routed_there
)
test_a_role_without_the_permission_is_403_and_audited = on(
    "auto", suite.test_a_role_without_the_permission_is_403_and_audited
)
test_envoy_fails_closed_with_503_when_ext_authz_is_down_and_recovers = on(
    "auto", suite.test_envoy_fails_closed_with_503_when_ext_authz_is_down_and_recovers
)
test_every_decision_is_one_audit_line_without_secrets = on(
    "auto", suite.test_every_decision_is_one_audit_line_without_secrets
)
test_a_client_sending_the_policy_header_changes_no_decision = on(
    "auto", suite.test_a_client_sending_the_policy_header_changes_no_decision
)
test_the_clients_trace_id_reaches_the_audit_line = on(
    "auto", suite.test_the_clients_trace_id_reaches_the_audit_line
)
test_a_burst_of_60_denials_is_all_in_the_audit_within_a_second = on(
    "auto", suite.test_a_burst_of_60_denials_is_all_in_the_audit_within_a_second
)
test_denials_past_the_audit_cap_are_counted_in_a_summary_within_a_second = on(
    "auto", suite.test_denials_past_the_audit_cap_are_counted_in_a_summary_within_a_second
)


@on_auto
def test_a_fresh_valid_token_from_an_address_whose_failure_budget_is_spent_is_allowed(
    stacks: Callable[[str], Shared], engine: str, tmp_path: Path
) -> None:
    """The suite's, through an ext_authz of its own with the budget (the shared one has none)
    and an Envoy on auto's server."""
    authz = stack.start_authz(tmp_path, name="authz-budget")
    with stack.stopping(authz.proc):
        envoy = stack.start_envoy(stacks(engine).xds, tmp_path, node_id="envoy-budget", authz=authz)
        with stack.stopping(envoy.proc):
            suite.test_a_fresh_valid_token_from_an_address_whose_failure_budget_is_spent_is_allowed(
                envoy, authz
            )


# Counterparts on native.


def _line(envoy: stack.Envoy, request_id: str) -> dict[str, Any]:
    return wait.wait_until(
        lambda: engines.access_line(envoy, request_id), what=f"the access-log line {request_id}"
    )


@on_native
def test_a_route_with_tenant_upstreams_stays_with_ext_authz_on_native(
    xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path
) -> None:
    envoy = stack.start_envoy(xds, tmp_path, authz=authz)
    with stack.stopping(envoy.proc):
        suite.test_a_tenant_with_its_own_upstream_is_routed_there(envoy)
        assert engines.counters(envoy, "ext_authz.ok") > 0
        assert engines.counters(envoy, "rbac") == 0


@on_native
def test_a_native_403_is_envoys_access_log_line(envoy: stack.Envoy) -> None:
    suite.ready(envoy)
    tok = tokens.token(sub="bob", roles=["customer"], tenant="globex")
    assert suite.call(envoy, "/orders/1", tokens.bearer(tok), method="POST").status == 200
    resp = suite.call(envoy, "/orders/1", tokens.bearer(tok), method="DELETE")
    assert resp.status == 403
    body = resp.json()
    assert body["error"] == "forbidden" and body["request_id"]
    assert resp.headers["content-type"] == "application/json"
    line = _line(envoy, body["request_id"])
    assert line["status"] == 403 and line["details"].startswith("rbac_access_denied")
    assert (line["user"], line["tenant"], line["method"]) == ("bob", "globex", "DELETE")
    assert tok not in envoy.proc.output()


@on_native
def test_with_ext_authz_down_native_routes_answer_and_its_routes_fail_closed(
    xds: stack.XdsServer, tmp_path: Path
) -> None:
    """On the mixed catalog: orders (tenant upstreams) is ext_authz's even on native, catalog
    is Envoy's. With ext_authz stopped, Envoy's routes answer as before; ext_authz's fail
    closed; both recover."""
    authz = stack.start_authz(tmp_path, name="authz-1")
    envoy = stack.start_envoy(xds, tmp_path, authz=authz)
    with stack.stopping(envoy.proc):
        suite.ready(envoy)
        authz.proc.stop()
        wait.wait_until(
            lambda: suite.call(envoy, "/orders/1", tokens.bearer()).status == 503, what="503"
        )
        allowed = suite.call(envoy, "/catalog/1", tokens.bearer(sub="carol"))
        assert allowed.status == 200
        assert allowed.json()["headers"]["x-user-id"] == "carol"
        assert suite.call(envoy, "/catalog/1").status == 401
        public = suite.call(envoy, "/status/x", {**suite.SPOOFED, "x-tenant-id": "acme"})
        assert public.status == 200
        for name in [*suite.SPOOFED, "x-tenant-id"]:
            assert name not in public.json()["headers"], name
        again = stack.start_authz(
            tmp_path, name="authz-2", port=authz.port, check_port=authz.check_port
        )
        with stack.stopping(again.proc):
            suite.ready(envoy)


@on_native
def test_every_native_decision_is_one_access_log_line_without_secrets(
    envoy: stack.Envoy,
) -> None:
    suite.ready(envoy)
    tok = tokens.token(sub="carol", tenant="globex")
    resp = suite.call(envoy, "/orders/1?api_key=hunter2", tokens.bearer(tok))
    assert resp.status == 200
    request_id = resp.json()["headers"]["x-request-id"]
    line = _line(envoy, request_id)
    assert set(line) >= {"time", "request_id", "user", "tenant", "method", "path", "status"}
    assert (line["user"], line["tenant"], line["status"]) == ("carol", "globex", 200)
    assert (line["method"], line["path"]) == ("GET", "/orders/1")
    assert [a["request_id"] for a in engines.access_log(envoy)].count(request_id) == 1
    output = envoy.proc.output()
    assert tok not in output and "hunter2" not in output


@on_native
def test_a_client_sending_the_policy_header_changes_no_native_decision(
    envoy: stack.Envoy,
) -> None:
    suite.ready(envoy)
    forged = {POLICY_HEADER: encode(RoutePolicy(service="orders", public=True))}
    assert suite.call(envoy, "/orders/1", forged).status == 401
    customer = tokens.bearer(roles=["customer"], tenant="globex")
    assert suite.call(envoy, "/orders/1", {**customer, **forged}, method="DELETE").status == 403
    allowed = suite.call(envoy, "/orders/1", {**customer, **forged})
    assert allowed.status == 200
    seen = allowed.json()["headers"]
    assert seen["x-user-id"] == "alice"
    assert POLICY_HEADER not in seen
    line = _line(envoy, seen["x-request-id"])
    assert (line["user"], line["status"]) == ("alice", 200)


def test_the_clients_trace_id_reaches_envoys_access_log_line_when_envoy_traces(
    sample_catalog: Path, tmp_path: Path, keys: dict[str, str]
) -> None:
    """With tracing on (`OTEL_EXPORTER_OTLP_ENDPOINT`) Envoy continues the client's trace,
    and its line for a native decision names it."""
    receiver = otlp.OtlpReceiver(otlp.HTTP).start()
    env = {**keys, **receiver.env, "SIDECAR_DECISION": "native"}
    catalog = _edit(sample_catalog, _no_tenant_upstreams)
    xds = stack.start_xds(catalog, tmp_path, env=env, args=stack.VETO_UNAUTHENTICATED)
    envoy = stack.start_envoy(xds, tmp_path)  # no ext_authz at all
    with stack.stopping(envoy.proc, xds.proc):
        suite.ready(envoy)
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        traceparent = f"00-{trace}-00f067aa0ba902b7-01"
        resp = suite.call(envoy, "/orders/1", {**tokens.bearer(), "traceparent": traceparent})
        assert resp.status == 200
        line = _line(envoy, resp.json()["headers"]["x-request-id"])
        assert (line["trace_id"], line["user"]) == (trace, "alice")
    receiver.stop()


@on_native
def test_a_native_route_has_no_failed_auth_budget(envoy: stack.Envoy) -> None:
    """Every bad token is a 401, however many an address sends (docs/engines.md); good
    tokens from the same address pass as ever."""
    suite.ready(envoy)
    statuses = {
        suite.call(envoy, "/orders/1", {"authorization": f"Bearer bad.{i}.x"}).status
        for i in range(61)
    }
    assert statuses == {401}
    for n in range(5):
        fresh = tokens.token(sub=f"new-session-{n}", roles=["customer"], tenant="globex")
        assert suite.call(envoy, "/orders/1", tokens.bearer(fresh)).status == 200


@on_native
def test_every_native_denial_of_a_burst_is_its_own_access_log_line_uncapped(
    envoy: stack.Envoy,
) -> None:
    """60 denials: 60 access-log lines, each naming jwt_authn's reason; never sampled, capped
    or summarised; written out within seconds, as Envoy runs them (`commands.envoy` has it
    flush its log every second, not every ten), with no flush asked for."""
    suite.ready(envoy)
    ids = []
    for i in range(60):
        resp = suite.call(envoy, "/orders/1", {"authorization": f"Bearer burst.{i}.x"})
        assert resp.status == 401
        ids.append(resp.json()["request_id"])

    def written() -> list[dict[str, Any]]:
        out = engines.access_log(envoy, flush=False)
        return [a for a in out if a.get("request_id") in ids]

    wait.wait_until(lambda: len(written()) >= 60, timeout=3, what="60 access-log lines")
    lines = written()
    assert sorted(a["request_id"] for a in lines) == sorted(ids)  # one each
    assert all(a["status"] == 401 and a["authn_failure"] for a in lines)


def test_each_route_is_decided_by_its_engine(engine: str, envoy: stack.Envoy) -> None:
    """The answers above are the engine's: native decided orders and catalog in Envoy, never
    asking ext_authz; auto decided catalog in Envoy and orders with ext_authz."""
    suite.ready(envoy)
    for path in ("/orders/1", "/catalog/1"):
        before = {c: engines.counters(envoy, c) for c in ("ext_authz.ok", "rbac.allowed")}
        assert suite.call(envoy, path, tokens.bearer()).status == 200
        after = {c: engines.counters(envoy, c) - n for c, n in before.items()}
        native = engine == "native" or path == "/catalog/1"
        assert after == {"ext_authz.ok": 0 if native else 1, "rbac.allowed": int(native)}
    if engine == "native":
        assert engines.counters(envoy, "ext_authz") == 0
