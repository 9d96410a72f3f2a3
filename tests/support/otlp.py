"""A real OTLP trace receiver for tests, over gRPC or over HTTP (`http/protobuf`, POST
/v1/traces): Envoy and our servers export to it; tests read the spans it received."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from sidecar_shared import otlp_proto
from tests.support.ports import free_port

otlp_proto.install()  # whichever copy of opentelemetry-proto's modules pip left on disk
from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)

GRPC = "grpc"
HTTP = "http/protobuf"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, str]


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                "",
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(
                        Span(
                            service,
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            {a.key: a.value.string_value for a in s.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(received)
            self.requests += 1


def _http_handler(collector: _Collector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def body(self) -> bytes:
            """With Content-Length, or chunked (Envoy's HTTP exporter sends it so)."""
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the chunk's CRLF
            while self.rfile.readline().strip():  # trailers, up to the empty line
                pass
            return b"".join(chunks)

        def do_POST(self) -> None:
            body = self.body()
            if self.path != "/v1/traces" or "protobuf" not in self.headers.get("Content-Type", ""):
                self.send_error(404)
                return
            collector.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class OtlpReceiver:
    """`protocol` is GRPC or HTTP; `endpoint` is the URL for OTEL_EXPORTER_OTLP_ENDPOINT."""

    def __init__(self, protocol: str = GRPC) -> None:
        self.protocol = protocol
        self.port = free_port()
        self._collector = _Collector()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if protocol == GRPC:
            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
                self._collector, self._grpc
            )
            self._grpc.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            self._http = ThreadingHTTPServer(
                ("127.0.0.1", self.port), _http_handler(self._collector)
            )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point an exporter here, over this receiver's protocol."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": self.protocol,
        }

    def start(self) -> OtlpReceiver:
        if self._grpc is not None:
            self._grpc.start()
        if self._http is not None:
            self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def spans(self) -> list[Span]:
        with self._collector.lock:
            return list(self._collector.spans)
