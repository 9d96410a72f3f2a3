"""`SIDECAR_REDIS_URL`: the forms supported, checked whole at start (standard library only).

- `redis://[user:password@]host[:port][/db][?options]` (`rediss://` for TLS): one server.
- `redis+cluster://[user:password@]host:port[,host:port...][?options]` (`rediss+cluster://`):
  Redis Cluster, through any of the seed nodes listed (the client learns the others).
- `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db][?options]`: the
  master Sentinel names `service`, followed through failovers; the credentials are the
  master's, `sentinel_username` / `sentinel_password` the Sentinels' (when they need any).

Options (anything else is refused, naming it): `client_name`, `health_check_interval`
(seconds), `max_connections`, `socket_keepalive`, `protocol` (2 or 3), `db` (not with
Cluster), and with TLS `ssl_cert_reqs` (none, optional, required), `ssl_ca_certs`,
`ssl_certfile`, `ssl_keyfile`, `ssl_check_hostname`. Timeouts are `SIDECAR_REDIS_TIMEOUT_MS`.

Errors never repeat the password.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from ext_authz.ratelimit.base import BackendConfigError

__all__ = ["RedisTarget", "parse_redis_url"]

Kind = Literal["single", "cluster", "sentinel"]

_SCHEMES: Mapping[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
}
_DEFAULT_PORT = {"single": 6379, "cluster": 6379, "sentinel": 26379}
FORMS = (
    "redis://host:port/db, rediss://host:port/db, redis+cluster://host:port[,host:port...], "
    "rediss+cluster://host:port[,...], redis+sentinel://host:port[,host:port...]/service"
)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a yes/no value")


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _protocol(text: str) -> int:
    value = int(text)
    if value not in (2, 3):
        raise ValueError("must be 2 or 3")
    return value


def _cert_reqs(text: str) -> str:
    if text.lower() not in ("none", "optional", "required"):
        raise ValueError("must be none, optional or required")
    return text.lower()


_COMMON: Mapping[str, Callable[[str], Any]] = {
    "client_name": str,
    "health_check_interval": _positive,
    "max_connections": _positive,
    "socket_keepalive": _bool,
    "protocol": _protocol,
}
_TLS: Mapping[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": _bool,
}
_SENTINEL: Mapping[str, Callable[[str], Any]] = {
    "sentinel_username": str,
    "sentinel_password": str,
}
_HINTS = {
    "cluster": "for Redis Cluster write redis+cluster://host:port[,host:port...]",
    "socket_timeout": "set SIDECAR_REDIS_TIMEOUT_MS instead",
    "socket_connect_timeout": "set SIDECAR_REDIS_TIMEOUT_MS instead",
    "timeout": "set SIDECAR_REDIS_TIMEOUT_MS instead",
    "password": "write it in the URL: redis://user:password@host:port",
}


@dataclass(frozen=True)
class RedisTarget:
    kind: Kind
    nodes: tuple[tuple[str, int], ...]  # the server, the cluster's seeds, or the Sentinels
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service: str | None = None  # the master's name in Sentinel
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """Where it points, without credentials (for logs and messages)."""
        nodes = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"{self.kind} {nodes}" + (f" ({self.service})" if self.service else "")


def _fail(problem: str) -> BackendConfigError:
    return BackendConfigError(f"SIDECAR_REDIS_URL: {problem}")


def _node(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _fail(f"a host is missing in {text!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise _fail(f"the port in {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise _fail(f"the port in {text!r} is out of range")
    return host, port


def parse_redis_url(url: str) -> RedisTarget:
    """Raises BackendConfigError saying what is wrong (and never the password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise _fail(f"the scheme must be one of: {FORMS}")
    kind, tls = _SCHEMES[scheme.lower()]
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        if not colon:
            raise _fail(
                "a user name without a password: write redis://:password@host "
                "or redis://user:password@host"
            )
        username, password = unquote(user) or None, unquote(secret)
    node_texts = [n.strip() for n in hosts.split(",")]
    if kind == "single" and len(node_texts) > 1:
        raise _fail("several hosts need redis+cluster:// (or redis+sentinel://)")
    nodes = tuple(_node(n, _DEFAULT_PORT[kind]) for n in node_texts)
    parts = [p for p in path.split("/") if p]
    service = None
    if kind == "sentinel":
        if not parts:
            raise _fail("name the master: redis+sentinel://host:port/<service>[/db]")
        service = unquote(parts.pop(0))
    if len(parts) > 1:
        raise _fail(f"unexpected path /{path}")
    try:
        db = int(parts[0]) if parts else 0
    except ValueError:
        raise _fail(f"the database /{parts[0]} is not a number") from None
    if fragment:
        raise _fail("a URL fragment (#...) means nothing here")
    options = _options(query, kind, tls)
    db = options.pop("db", db)
    if kind == "cluster" and db != 0:
        raise _fail("Redis Cluster has only database 0")
    return RedisTarget(kind, nodes, tls, username, password, db, service, options)


def _options(query: str, kind: Kind, tls: bool) -> dict[str, Any]:
    allowed: dict[str, Callable[[str], Any]] = {**_COMMON, "db": _positive}
    if tls:
        allowed.update(_TLS)
    if kind == "sentinel":
        allowed.update(_SENTINEL)
    out: dict[str, Any] = {}
    for name, text in parse_qsl(query, keep_blank_values=True):
        parse = allowed.get(name)
        if parse is None:
            if name in _TLS:
                hint = "TLS options need rediss://"
            else:
                hint = _HINTS.get(name) or f"known options: {', '.join(sorted(allowed))}"
            raise _fail(f"unknown option {name!r} ({hint})")
        try:
            out[name] = parse(text)
        except ValueError as err:
            shown = "..." if "password" in name else repr(text)
            raise _fail(f"option {name}={shown}: {err}") from None
    return out
