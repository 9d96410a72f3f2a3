from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainRequest(_message.Message):
    __slots__ = ("method", "path", "headers", "claims_json")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_JSON_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    headers: _containers.ScalarMap[str, str]
    claims_json: str
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., claims_json: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "verdict", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    verdict: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., verdict: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("version", "route", "service", "policy_json", "steps", "status", "reason", "message", "would_deny")
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
    def __init__(self, version: _Optional[str] = ..., route: _Optional[str] = ..., service: _Optional[str] = ..., policy_json: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., would_deny: _Optional[int] = ...) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TypeState(_message.Message):
    __slots__ = ("type", "state", "acked_version", "current_version", "error")
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
    def __init__(self, type: _Optional[str] = ..., state: _Optional[str] = ..., acked_version: _Optional[str] = ..., current_version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Proxy(_message.Message):
    __slots__ = ("node_id", "protocol", "authenticated", "types")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    protocol: str
    authenticated: bool
    types: _containers.RepeatedCompositeFieldContainer[TypeState]
    def __init__(self, node_id: _Optional[str] = ..., protocol: _Optional[str] = ..., authenticated: _Optional[bool] = ..., types: _Optional[_Iterable[_Union[TypeState, _Mapping]]] = ...) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("version", "proxies", "document_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    version: str
    proxies: _containers.RepeatedCompositeFieldContainer[Proxy]
    document_json: str
    def __init__(self, version: _Optional[str] = ..., proxies: _Optional[_Iterable[_Union[Proxy, _Mapping]]] = ..., document_json: _Optional[str] = ...) -> None: ...

class ValidateCatalogRequest(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: bytes
    def __init__(self, catalog: _Optional[bytes] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("path", "message")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    path: str
    message: str
    def __init__(self, path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Problems(_message.Message):
    __slots__ = ("valid", "problems", "version", "services")
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    problems: _containers.RepeatedCompositeFieldContainer[Problem]
    version: str
    services: int
    def __init__(self, valid: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., version: _Optional[str] = ..., services: _Optional[int] = ...) -> None: ...
