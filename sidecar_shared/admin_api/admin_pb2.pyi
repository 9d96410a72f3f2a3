from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainRequest(_message.Message):
    __slots__ = ("claims_json", "headers", "method", "path")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_JSON_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    headers: _containers.ScalarMap[str, str]
    claims_json: str
    def __init__(
        self,
        method: str | None = ...,
        path: str | None = ...,
        headers: _Mapping[str, str] | None = ...,
        claims_json: str | None = ...,
    ) -> None: ...

class Step(_message.Message):
    __slots__ = ("detail", "name", "verdict")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    verdict: str
    detail: str
    def __init__(
        self, name: str | None = ..., verdict: str | None = ..., detail: str | None = ...
    ) -> None: ...

class Decision(_message.Message):
    __slots__ = (
        "message",
        "policy_json",
        "reason",
        "route",
        "service",
        "status",
        "steps",
        "version",
        "would_deny",
    )
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WOULD_DENY_FIELD_NUMBER: _ClassVar[int]
    version: str
    route: str
    service: str
    policy_json: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    status: int
    reason: str
    message: str
    would_deny: int
    def __init__(
        self,
        version: str | None = ...,
        route: str | None = ...,
        service: str | None = ...,
        policy_json: str | None = ...,
        steps: _Iterable[Step | _Mapping] | None = ...,
        status: int | None = ...,
        reason: str | None = ...,
        message: str | None = ...,
        would_deny: int | None = ...,
    ) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TypeState(_message.Message):
    __slots__ = ("acked_version", "current_version", "error", "state", "type")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    type: str
    state: str
    acked_version: str
    current_version: str
    error: str
    def __init__(
        self,
        type: str | None = ...,
        state: str | None = ...,
        acked_version: str | None = ...,
        current_version: str | None = ...,
        error: str | None = ...,
    ) -> None: ...

class Proxy(_message.Message):
    __slots__ = ("authenticated", "node_id", "protocol", "types")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    protocol: str
    authenticated: bool
    types: _containers.RepeatedCompositeFieldContainer[TypeState]
    def __init__(
        self,
        node_id: str | None = ...,
        protocol: str | None = ...,
        authenticated: bool | None = ...,
        types: _Iterable[TypeState | _Mapping] | None = ...,
    ) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("document_json", "proxies", "version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    version: str
    proxies: _containers.RepeatedCompositeFieldContainer[Proxy]
    document_json: str
    def __init__(
        self,
        version: str | None = ...,
        proxies: _Iterable[Proxy | _Mapping] | None = ...,
        document_json: str | None = ...,
    ) -> None: ...

class ValidateCatalogRequest(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: bytes
    def __init__(self, catalog: bytes | None = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("message", "path")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    path: str
    message: str
    def __init__(self, path: str | None = ..., message: str | None = ...) -> None: ...

class Problems(_message.Message):
    __slots__ = ("problems", "services", "valid", "version")
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    problems: _containers.RepeatedCompositeFieldContainer[Problem]
    version: str
    services: int
    def __init__(
        self,
        valid: bool | None = ...,
        problems: _Iterable[Problem | _Mapping] | None = ...,
        version: str | None = ...,
        services: int | None = ...,
    ) -> None: ...
