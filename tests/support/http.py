"""A small HTTP client for tests (urllib: no extra dependency, no connection reuse)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Response:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(
                resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
            )
    except urllib.error.HTTPError as err:
        return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def get(url: str, headers: Mapping[str, str] | None = None) -> Response:
    return http("GET", url, headers)


def try_get(url: str, headers: Mapping[str, str] | None = None) -> Response | None:
    try:
        return get(url, headers)
    except OSError:
        return None


def get_from(source: str, url: str, headers: Mapping[str, str] | None = None) -> Response:
    """GET `url` from the local address `source`: on loopback, 127.0.0.2 stands for a client
    on another host."""
    parts = urllib.parse.urlsplit(url)
    conn = HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=5.0, source_address=(source, 0)
    )
    try:
        conn.request("GET", parts.path or "/", headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
